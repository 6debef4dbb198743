"""The service's database access through PgBouncer in transaction pooling (the local
stack's, 127.0.0.1:6432; TEST_PGBOUNCER_SERVER overrides it).

Behind a transaction pooler consecutive transactions of one client connection may run on
different server backends. With ``DB_STATEMENT_CACHE_SIZE=0`` the engine keeps no
prepared statement past its transaction and runs single statements in a transaction of
their own (``app.adapters.db.engine``); the same load with the default cache breaks, which
shows the load reaches the failure this guards against.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError

from app.adapters.db.engine import behind_transaction_pooler, build_engine, build_session_factory
from app.adapters.db.queries import SqlPaymentQueries
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.core.config import Settings
from app.domain.payments import PaymentStatus
from tests.conftest import DIRECT_DATABASE_URL, make_settings
from tests.factories import MerchantFactory, PaymentFactory

PGBOUNCER = os.environ.get("TEST_PGBOUNCER_SERVER", "postgresql+asyncpg://payments@127.0.0.1:6432")
UNITS = 200


def through_pgbouncer(**overrides: object) -> Settings:
    database = make_url(DIRECT_DATABASE_URL).database
    return make_settings(
        database_url=f"{PGBOUNCER}/{database}",
        database_direct_url=DIRECT_DATABASE_URL,
        db_pool_size=10,
        db_max_overflow=10,
        **overrides,
    )


async def single_statement_load(settings: Settings, *, source: str) -> list[BaseException]:
    """UNITS concurrent units, each one statement alone (a refusal counted, never
    committed by the caller) and one autocommit-style read; the errors they raised."""
    engine = build_engine(settings, application_name="payment-service-tests")
    sessions = build_session_factory(engine)
    queries = SqlPaymentQueries(engine)
    at = datetime.now(UTC)

    async def one(n: int) -> None:
        async with SqlUnitOfWork(sessions) as uow:
            await uow.audit.count_refused_authentication(
                source=source, reason=f"r{n % 7}", at=at, correlation_id=None, details={}
            )
        await queries.unsettled_backlog()

    try:
        outcomes = await asyncio.gather(*(one(n) for n in range(UNITS)), return_exceptions=True)
    finally:
        await engine.dispose()
    return [outcome for outcome in outcomes if isinstance(outcome, BaseException)]


def counted(source: str) -> int:
    engine = create_engine(DIRECT_DATABASE_URL.replace("+asyncpg", "+psycopg2"))
    try:
        with engine.connect() as conn:
            total = conn.execute(
                text("SELECT coalesce(sum(attempts), 0) FROM auth_refusals WHERE source = :s"),
                {"s": source},
            ).scalar_one()
    finally:
        engine.dispose()
    return int(total)


@pytest.mark.usefixtures("migrated_database")
async def test_single_statements_and_reads_work_and_last_through_a_transaction_pooler() -> None:
    settings = through_pgbouncer(db_statement_cache_size=0)
    assert settings.session_database_url == DIRECT_DATABASE_URL  # LISTEN and migrations

    errors = await single_statement_load(settings, source="pooled")

    assert errors == []
    # Each unit's one statement is durable although no caller committed: it ran in a
    # transaction of its own, committed at once, as it runs in autocommit without PgBouncer.
    assert counted("pooled") == UNITS


@pytest.mark.usefixtures("migrated_database")
async def test_the_statement_cache_breaks_behind_a_transaction_pooler() -> None:
    settings = through_pgbouncer(db_statement_cache_size=500)
    assert not behind_transaction_pooler(build_engine(settings))

    errors = await single_statement_load(settings, source="cached")

    assert errors, "the default statement cache survived transaction pooling"
    assert all(isinstance(error, DBAPIError) for error in errors), errors[:3]
    assert any("prepared statement" in str(error) for error in errors), errors[:3]


@pytest.mark.usefixtures("migrated_database")
async def test_staged_writes_sent_straight_to_the_driver_work_through_a_transaction_pooler() -> (
    None
):
    """A payment recorded with its key's claim, then settled under its guard: each unit's
    one statement goes to the pooled asyncpg connection without SQLAlchemy's execution,
    and behind PgBouncer it still runs (prepared and executed) on one server backend."""
    engine = build_engine(through_pgbouncer(db_statement_cache_size=0))
    sessions = build_session_factory(engine)
    merchant = MerchantFactory()
    now = datetime.now(UTC)
    payments = [
        PaymentFactory(merchant_id=merchant.merchant_id, status=PaymentStatus.PROCESSING)
        for _ in range(UNITS)
    ]

    async def record(n: int) -> None:
        async with SqlUnitOfWork(sessions) as uow:
            uow.idempotency.claim(
                merchant_id=merchant.merchant_id,
                key=f"pooled-{n}",
                request_fingerprint="v2:" + "a" * 64,
                resource_id=payments[n].transaction_id,
                now=now,
                lock_for=timedelta(seconds=60),
                keep_for=timedelta(hours=1),
            )
            uow.payments.add(payments[n])
            await uow.commit()

    async def settle(n: int) -> None:
        payments[n].approve(authorization_code="A1", at=datetime.now(UTC))
        async with SqlUnitOfWork(sessions) as uow:
            uow.payments.update(payments[n], expected_status=PaymentStatus.PROCESSING)
            await uow.commit()

    try:
        assert behind_transaction_pooler(engine)
        async with SqlUnitOfWork(sessions) as uow:
            uow.merchants.add(merchant)
            await uow.commit()
        for step in (record, settle):
            outcomes = await asyncio.gather(
                *(step(n) for n in range(UNITS)), return_exceptions=True
            )
            assert [o for o in outcomes if isinstance(o, BaseException)] == []
    finally:
        await engine.dispose()

    direct = create_engine(DIRECT_DATABASE_URL.replace("+asyncpg", "+psycopg2"))
    try:
        with direct.connect() as conn:
            captured, claims = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM transactions"
                    "        WHERE merchant_id = :m AND status = 'captured'),"
                    "       (SELECT count(*) FROM idempotency_keys WHERE merchant_id = :m)"
                ),
                {"m": merchant.merchant_id},
            ).one()
    finally:
        direct.dispose()
    assert (captured, claims) == (UNITS, UNITS)
