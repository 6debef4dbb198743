"""When the reconciler asks the bank again, which settings may start, and which database
errors are a 503."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import sqlalchemy.exc

from app.adapters.db.engine import database_unavailable
from app.services.context import ReconcilePolicy
from tests.conftest import make_settings

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_lookups_back_off_exponentially_up_to_the_cap_with_jitter() -> None:
    policy = ReconcilePolicy(first_delay=timedelta(seconds=10), max_interval=timedelta(seconds=600))
    delays = [
        (policy.next_attempt(attempts=n, now=NOW) - NOW).total_seconds() for n in range(1, 12)
    ]
    for attempts, delay in enumerate(delays, start=1):
        nominal = min(10 * 2 ** (attempts - 1), 600)
        assert 0.75 * nominal <= delay <= 1.25 * nominal
    assert max(delays) <= 750


def test_no_record_may_only_mean_never_received_after_the_longest_bank_call() -> None:
    settings = make_settings()
    assert settings.reconcile_no_record_after_s > settings.longest_bank_call_s
    with pytest.raises(ValueError, match="RECONCILE_NO_RECORD_AFTER_S"):
        make_settings(bank_timeout_s=30.0, bank_max_retries=3)
    with pytest.raises(ValueError, match="RECONCILE_LEASE_S"):
        make_settings(reconcile_lease_s=5.0)


def test_the_longest_bank_call_counts_every_attempt_and_pause() -> None:
    settings = make_settings(
        bank_timeout_s=2.0, bank_connect_timeout_s=0.5, bank_max_retries=2, bank_backoff_max_s=1.0
    )
    assert settings.longest_bank_call_s == pytest.approx(3 * 2.5 + 2 * 1.0)


def _wrapped(orig: BaseException, *, invalidated: bool = False) -> sqlalchemy.exc.DBAPIError:
    return sqlalchemy.exc.DBAPIError("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        sqlalchemy.exc.TimeoutError("QueuePool limit reached"),
        _wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("closed")),
        _wrapped(asyncpg.exceptions.CannotConnectNowError("starting up")),
        _wrapped(Exception("lost"), invalidated=True),
        TimeoutError(),
    ],
    ids=["refused", "pool-exhausted", "connection-gone", "starting-up", "invalidated", "timeout"],
)
def test_an_unreachable_database_is_a_503(exc: BaseException) -> None:
    assert database_unavailable(exc)


def test_an_unreachable_database_is_found_through_the_exception_chain() -> None:
    wrapper = RuntimeError("while committing")
    wrapper.__cause__ = ConnectionResetError("reset by peer")
    assert database_unavailable(wrapper)


@pytest.mark.parametrize(
    "exc",
    [
        _wrapped(asyncpg.exceptions.UniqueViolationError("duplicate")),
        _wrapped(asyncpg.exceptions.NumericValueOutOfRangeError("out of range")),
        sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("check")),
        RuntimeError("a defect"),
        ValueError("bad"),
    ],
    ids=["unique", "out-of-range", "integrity", "defect", "value"],
)
def test_a_wrong_statement_or_a_defect_is_not_a_503(exc: BaseException) -> None:
    assert not database_unavailable(exc)
