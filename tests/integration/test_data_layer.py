"""The schema Alembic owns, the unit of work and the repositories, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import simplejson
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.engine import build_engine
from app.adapters.db.mapping import payment_values
from app.adapters.db.models import Base, MerchantRow, PaymentRow
from app.adapters.db.queries import SqlPaymentQueries
from app.adapters.db.repositories import AUDIT_LOG, PAYMENTS
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.core.config import Settings
from app.domain.audit import AuditEntry, AuditOutcome
from app.domain.money import Money
from app.domain.payments import PaymentStatus
from app.services.ports import ConcurrentUpdate
from tests.conftest import alembic_config
from tests.factories import ApiKeyFactory, MerchantFactory, PaymentFactory, RefundFactory

UowFactory = Callable[[], SqlUnitOfWork]


async def _seed_merchant(uow_factory: UowFactory, merchant_id: str = "merchant_00000") -> None:
    async with uow_factory() as uow:
        uow.merchants.add(MerchantFactory(merchant_id=merchant_id))
        await uow.commit()


def test_migrations_round_trip_and_match_the_models(migrated_database: str) -> None:
    cfg = alembic_config(migrated_database)
    command.downgrade(cfg, "base")
    engine = create_engine(migrated_database)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar_one()
        assert tables == 1  # only alembic_version is left
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == []
    finally:
        engine.dispose()


async def test_unit_of_work_commits_explicitly(uow_factory: UowFactory) -> None:
    await _seed_merchant(uow_factory, "merchant_commit")
    async with uow_factory() as uow:
        assert await uow.merchants.get("merchant_commit") is not None


async def test_unit_of_work_rolls_back_without_commit(uow_factory: UowFactory) -> None:
    async with uow_factory() as uow:
        uow.merchants.add(MerchantFactory(merchant_id="merchant_forgotten"))
        await uow.flush()
    async with uow_factory() as uow:
        assert await uow.merchants.get("merchant_forgotten") is None


async def test_unit_of_work_rolls_back_on_exception(uow_factory: UowFactory) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with uow_factory() as uow:
            uow.merchants.add(MerchantFactory(merchant_id="merchant_boom"))
            await uow.flush()
            raise RuntimeError("boom")
    async with uow_factory() as uow:
        assert await uow.merchants.get("merchant_boom") is None


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"amount_minor": 0}, "amount_positive"),
        ({"amount_minor": -5}, "amount_positive"),
        ({"refunded_minor": 20_000}, "refunded_within_amount"),
        ({"status": "pending"}, "status_(valid|matches_refunds)"),
        ({"status": "refunded", "refunded_minor": 5_000}, "status_matches_refunds"),
        ({"status": "captured", "refunded_minor": 5_000}, "status_matches_refunds"),
        ({"status": "processing", "refunded_minor": 5_000}, "status_matches_refunds"),
        ({"currency": "usd"}, "currency_iso4217"),
        ({"payment_method": "cash"}, "payment_method_valid"),
        ({"card_exp_month": 13}, "card_exp_month_valid"),
    ],
)
async def test_payment_constraints_make_bad_states_impossible(
    uow_factory: UowFactory,
    engine: AsyncEngine,
    overrides: dict[str, object],
    constraint: str,
) -> None:
    """The database refuses what the domain never produces, even from a buggy writer."""
    await _seed_merchant(uow_factory)
    with pytest.raises(IntegrityError, match=constraint):
        async with engine.begin() as conn:
            await conn.execute(
                insert(PAYMENTS).values(payment_values(PaymentFactory()) | overrides)
            )


@pytest.mark.parametrize("status", ["processing", "authorized", "voided", "expired"])
async def test_every_status_of_the_state_machine_can_be_stored(
    uow_factory: UowFactory, queries: SqlPaymentQueries, status: str
) -> None:
    await _seed_merchant(uow_factory)
    payment = PaymentFactory(status=PaymentStatus(status))
    async with uow_factory() as uow:
        uow.payments.add(payment)
        await uow.commit()
    stored = await queries.payment(payment.transaction_id, merchant_id="merchant_00000")
    assert stored is not None
    assert stored.status == status


async def test_payment_ids_are_unique(uow_factory: UowFactory) -> None:
    await _seed_merchant(uow_factory)
    async with uow_factory() as uow:
        uow.payments.add(PaymentFactory(transaction_id="txn_dup"))
        await uow.commit()
    with pytest.raises(IntegrityError, match="pk_transactions"):
        async with uow_factory() as uow:
            uow.payments.add(PaymentFactory(transaction_id="txn_dup"))
            await uow.flush()


async def test_refund_needs_an_existing_payment_and_a_positive_amount(
    uow_factory: UowFactory,
) -> None:
    await _seed_merchant(uow_factory)
    with pytest.raises(IntegrityError, match="fk_refunds_transaction_id_transactions"):
        async with uow_factory() as uow:
            uow.refunds.add(RefundFactory(transaction_id="txn_nowhere"))
            await uow.flush()
    async with uow_factory() as uow:
        uow.payments.add(PaymentFactory(transaction_id="txn_has_refund"))
        await uow.commit()
    with pytest.raises(IntegrityError, match="amount_positive"):
        async with uow_factory() as uow:
            uow.refunds.add(RefundFactory(transaction_id="txn_has_refund", amount_minor=0))
            await uow.flush()


async def _claim(uow_factory: UowFactory, **claim: Any) -> None:
    async with uow_factory() as uow:
        uow.idempotency.claim(**claim)
        await uow.commit()


async def test_idempotency_key_is_unique_per_merchant(uow_factory: UowFactory) -> None:
    await _seed_merchant(uow_factory, "merchant_a")
    await _seed_merchant(uow_factory, "merchant_b")
    now = datetime.now(UTC)
    args = {
        "key": "same-key",
        "request_fingerprint": "v2:" + "f" * 64,
        "now": now,
        "lock_for": timedelta(seconds=60),
        "keep_for": timedelta(hours=24),
    }
    await _claim(uow_factory, merchant_id="merchant_a", resource_id="txn_1", **args)
    with pytest.raises(ConcurrentUpdate):
        await _claim(uow_factory, merchant_id="merchant_a", resource_id="txn_2", **args)
    await _claim(uow_factory, merchant_id="merchant_b", resource_id="txn_3", **args)
    async with uow_factory() as uow:
        first = await uow.idempotency.get(merchant_id="merchant_a", key="same-key")
        other = await uow.idempotency.get(merchant_id="merchant_b", key="same-key")
    assert first is not None
    assert other is not None
    assert (first.resource_id, other.resource_id) == ("txn_1", "txn_3")
    assert not first.completed


async def test_a_claim_never_takes_a_key_before_it_expires_and_takes_it_after(
    uow_factory: UowFactory,
) -> None:
    await _seed_merchant(uow_factory)
    past = datetime.now(UTC) - timedelta(minutes=5)
    common = {
        "merchant_id": "merchant_00000",
        "key": "crashed",
        "request_fingerprint": "v2:" + "a" * 64,
        "lock_for": timedelta(seconds=60),
    }
    await _claim(
        uow_factory, resource_id="txn_first", now=past, keep_for=timedelta(hours=24), **common
    )
    # Stale (past its lock) but kept: its attempt may be recorded, so it is not taken.
    with pytest.raises(ConcurrentUpdate):
        await _claim(
            uow_factory,
            resource_id="txn_second",
            now=datetime.now(UTC),
            keep_for=timedelta(hours=24),
            **common,
        )
    # Expired (past its retention, not yet purged): claimed afresh.
    await _claim(
        uow_factory,
        resource_id="txn_old",
        now=past,
        keep_for=timedelta(minutes=1),
        **{**common, "key": "expired"},
    )
    await _claim(
        uow_factory,
        resource_id="txn_new",
        now=datetime.now(UTC),
        keep_for=timedelta(hours=24),
        **{**common, "key": "expired"},
    )
    async with uow_factory() as uow:
        record = await uow.idempotency.get(merchant_id="merchant_00000", key="expired")
    assert record is not None
    assert record.resource_id == "txn_new"


async def test_a_stale_claim_of_the_same_request_can_be_taken_over(
    uow_factory: UowFactory,
) -> None:
    await _seed_merchant(uow_factory)
    past = datetime.now(UTC) - timedelta(minutes=5)
    fingerprint = "v2:" + "b" * 64
    await _claim(
        uow_factory,
        merchant_id="merchant_00000",
        key="stale",
        request_fingerprint=fingerprint,
        resource_id="txn_first",
        now=past,
        lock_for=timedelta(seconds=60),
        keep_for=timedelta(hours=24),
    )
    async with uow_factory() as uow:
        now = datetime.now(UTC)
        other = await uow.idempotency.take_over(
            merchant_id="merchant_00000", key="stale", request_fingerprint="v2:x", now=now
        )
        taken = await uow.idempotency.take_over(
            merchant_id="merchant_00000", key="stale", request_fingerprint=fingerprint, now=now
        )
        again = await uow.idempotency.take_over(
            merchant_id="merchant_00000", key="stale", request_fingerprint=fingerprint, now=now
        )
    assert (other, taken, again) == (False, True, False)


@pytest.mark.parametrize(
    "metadata",
    [
        {"order_id": "1234", "items": [1, 2, [3, {"deep": True}]]},
        {"unicode": "Zoë — 東京 — 💳", "empty": {}, "null": None},
        {"big": 123456789012345678901234567890, "negative": -(2**70)},
        {"price": Decimal("19.990"), "rate": Decimal("0.000000000000000000001")},
    ],
)
async def test_jsonb_round_trips_exactly(
    uow_factory: UowFactory, queries: SqlPaymentQueries, metadata: dict[str, object]
) -> None:
    await _seed_merchant(uow_factory)
    txn = PaymentFactory(metadata=metadata)
    async with uow_factory() as uow:
        uow.payments.add(txn)
        await uow.commit()
    stored = await queries.payment(txn.transaction_id, merchant_id="merchant_00000")
    assert stored is not None
    assert stored.metadata == metadata
    # Same values with the same digits and types; JSONB orders keys its own way.
    assert simplejson.dumps(stored.metadata, sort_keys=True, use_decimal=True) == (
        simplejson.dumps(metadata, sort_keys=True, use_decimal=True)
    )


async def test_a_payment_reads_back_whole_with_its_refunds_oldest_first(
    uow_factory: UowFactory, queries: SqlPaymentQueries
) -> None:
    await _seed_merchant(uow_factory)
    payment = PaymentFactory(status=PaymentStatus.PARTIALLY_REFUNDED, refunded_minor=3_000)
    first = RefundFactory(transaction_id=payment.transaction_id, amount_minor=1_000)
    second = RefundFactory(
        transaction_id=payment.transaction_id,
        amount_minor=2_000,
        created_at=first.created_at + timedelta(seconds=1),
    )
    async with uow_factory() as uow:
        uow.payments.add(payment)
        uow.refunds.add(second)
        uow.refunds.add(first)
        await uow.commit()
    stored = await queries.payment(payment.transaction_id, merchant_id="merchant_00000")
    assert stored is not None
    assert [r.refund_id for r in stored.refunds] == [first.refund_id, second.refund_id]
    assert (stored.amount, stored.captured, stored.refunded) == (
        Money(10_000, "USD"),
        Money(10_000, "USD"),
        Money(3_000, "USD"),
    )
    assert stored.card == payment.card
    assert stored.created_at == payment.created_at


async def test_payment_lookup_is_scoped_to_its_merchant(
    uow_factory: UowFactory, queries: SqlPaymentQueries
) -> None:
    await _seed_merchant(uow_factory, "merchant_00000")
    await _seed_merchant(uow_factory, "merchant_other")
    txn = PaymentFactory()
    async with uow_factory() as uow:
        uow.payments.add(txn)
        uow.api_keys.add(ApiKeyFactory())
        await uow.commit()
    assert await queries.payment(txn.transaction_id, merchant_id="merchant_other") is None
    assert await queries.payment(txn.transaction_id, merchant_id="merchant_00000")
    async with uow_factory() as uow:
        assert await uow.payments.get_for_update(txn.transaction_id, merchant_id="nope") is None


async def test_for_update_lock_blocks_a_second_transaction(uow_factory: UowFactory) -> None:
    await _seed_merchant(uow_factory)
    txn = PaymentFactory()
    async with uow_factory() as uow:
        uow.payments.add(txn)
        await uow.commit()

    first_locked = asyncio.Event()
    release_first = asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        async with uow_factory() as uow:
            await uow.payments.get_for_update(txn.transaction_id, merchant_id="merchant_00000")
            first_locked.set()
            await release_first.wait()
            order.append("first-commit")
            await uow.commit()

    async def second() -> None:
        await first_locked.wait()
        async with uow_factory() as uow:
            await uow.payments.get_for_update(txn.transaction_id, merchant_id="merchant_00000")
            order.append("second-locked")

    first_task = asyncio.create_task(first())
    second_task = asyncio.create_task(second())
    await first_locked.wait()
    await asyncio.sleep(0.3)
    assert order == []  # the second transaction is still waiting for the row
    release_first.set()
    await asyncio.gather(first_task, second_task)
    assert order == ["first-commit", "second-locked"]


async def test_audit_log_is_append_only_in_the_database(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    async with uow_factory() as uow:
        uow.audit.append(
            AuditEntry(
                actor="admin-cli",
                action="merchant.create",
                resource_type="merchant",
                resource_id="m",
                outcome=AuditOutcome.SUCCESS,
                correlation_id=None,
                occurred_at=datetime.now(UTC),
                details={"k": "v"},
            )
        )
        await uow.commit()
    for statement in ("UPDATE audit_log SET outcome = 'failure'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    async with engine.connect() as conn:
        outcomes = (await conn.execute(select(AUDIT_LOG.c.outcome))).scalars().all()
    assert outcomes == ["success"]


async def test_merchant_must_accept_a_currency(uow_factory: UowFactory) -> None:
    with pytest.raises(IntegrityError, match="accepts_a_currency"):
        async with uow_factory() as uow:
            uow.merchants.add(MerchantFactory(currencies=frozenset()))
            await uow.flush()


def test_models_are_the_ones_alembic_sees() -> None:
    assert {"merchants", "transactions", "refunds", "audit_log"} <= set(Base.metadata.tables)
    assert PaymentRow.__table__.c.amount_minor.type.python_type is int
    assert MerchantRow.__table__.c.currencies is not None


async def test_pooled_connections_the_server_closed_are_replaced_without_an_error(
    settings: Settings, engine: AsyncEngine
) -> None:
    # What a PostgreSQL restart does to an idle pool: the server closes every connection.
    name = f"pool-restart-{uuid.uuid4().hex[:8]}"
    pool = build_engine(settings, application_name=name)
    try:
        held = [await pool.connect() for _ in range(3)]
        old_pids = {(await c.execute(text("SELECT pg_backend_pid()"))).scalar_one() for c in held}
        for connection in held:
            await connection.close()  # back to the pool, idle
        async with engine.connect() as admin:
            ended = await admin.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": name},
            )
            assert ended.scalar_one() == 3
        await asyncio.sleep(0.2)  # let the event loop read the end of those streams

        for _ in range(3):
            async with pool.connect() as connection:
                pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            assert pid not in old_pids
    finally:
        await pool.dispose()
