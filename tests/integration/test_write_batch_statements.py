"""The write batch: a unit of work's new rows and keyed updates go out as ONE statement.

On the real PostgreSQL: the statements the engine sends are counted with SQLAlchemy's
``before_cursor_execute`` event and, for those a unit sends straight to the pooled asyncpg
connection, at asyncpg's query methods; everything is read back from other connections.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import asyncpg
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.repositories import AUDIT_LOG, IDEMPOTENCY_KEYS, OUTBOX, PAYMENTS
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.domain.audit import AuditEntry
from app.domain.money import Money
from app.domain.payments import Payment, PaymentStatus
from app.services.ports import ConcurrentUpdate, OutboxMessage, StoredAnswer
from tests.factories import MerchantFactory, PaymentFactory

UowFactory = Callable[[], SqlUnitOfWork]
MERCHANT = "merchant_00000"
KEY = "idem-key-1"


# -- helpers --------------------------------------------------------------------------


@dataclass
class Executed:
    """A statement the engine sent, and whether the connection was in a transaction after."""

    sql: str
    driver: Any = None
    in_transaction_after: bool | None = None


@contextmanager
def recorded_statements(engine: AsyncEngine) -> Iterator[list[Executed]]:
    """Every statement sent through ``engine`` while the block runs."""
    executed: list[Executed] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        executed.append(Executed(statement, conn.connection.driver_connection))

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # asyncpg's own view of the connection: is a transaction (BEGIN) open?
        executed[-1].in_transaction_after = executed[-1].driver.is_in_transaction()

    def on_driver(method: Any) -> Any:
        async def recorded(driver: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
            if query.split(None, 1)[0].upper().rstrip(";") in TRANSACTION_CONTROL:
                return await method(driver, query, *args, **kw)
            executed.append(Executed(query, driver))
            try:
                return await method(driver, query, *args, **kw)
            finally:
                executed[-1].in_transaction_after = driver.is_in_transaction()

        return recorded

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    try:
        with ExitStack() as patches:
            for name in ("execute", "fetch", "fetchrow", "fetchval"):
                method = getattr(asyncpg.Connection, name)
                patches.enter_context(
                    mock.patch.object(asyncpg.Connection, name, on_driver(method))
                )
            yield executed
    finally:
        event.remove(sync_engine, "before_cursor_execute", before)
        event.remove(sync_engine, "after_cursor_execute", after)


TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})
"""What asyncpg sends for SQLAlchemy's transactions: not statements of the unit."""


async def seed_merchant_and_claim(uow_factory: UowFactory, *, resource_id: str) -> None:
    """A merchant, and an in-progress idempotency claim for ``KEY`` (committed)."""
    async with uow_factory() as uow:
        uow.merchants.add(MerchantFactory(merchant_id=MERCHANT))
        await uow.commit()
    now = datetime.now(UTC)
    async with uow_factory() as uow:
        uow.idempotency.claim(
            merchant_id=MERCHANT,
            key=KEY,
            request_fingerprint="v2:" + "f" * 64,
            resource_id=resource_id,
            now=now,
            lock_for=timedelta(seconds=60),
            keep_for=timedelta(hours=24),
        )
        await uow.commit()


def new_event(aggregate_id: str, *, event_id: uuid.UUID | None = None) -> OutboxMessage:
    event_id = event_id or uuid.uuid4()
    return OutboxMessage(
        event_id=event_id,
        event_type="payment.captured",
        key=aggregate_id,
        payload={"event_id": str(event_id), "transaction_id": aggregate_id},
        headers={"correlation_id": "corr-staged"},
    )


def new_audit(resource_id: str, *, outcome: str = "success") -> AuditEntry:
    return AuditEntry(
        actor=f"merchant:{MERCHANT}",
        action="payment.process",
        resource_type="payment",
        resource_id=resource_id,
        outcome=outcome,  # type: ignore[arg-type]  # a bad one, in one test
        correlation_id="corr-staged",
        occurred_at=datetime.now(UTC),
        details={"status": "captured"},
    )


def stage_payment(
    uow: SqlUnitOfWork,
    txn: Payment,
    *,
    event: OutboxMessage | None = None,
    audit: AuditEntry | None = None,
) -> None:
    """What recording a payment stages: the payment, its event, its audit row, its answer."""
    uow.payments.add(txn)
    uow.outbox.add(event or new_event(txn.transaction_id))
    uow.audit.append(audit or new_audit(txn.transaction_id))
    uow.idempotency.complete(
        merchant_id=MERCHANT,
        key=KEY,
        answer=StoredAnswer(201, {"transaction_id": txn.transaction_id, "status": "captured"}),
    )


@dataclass(frozen=True)
class Stored:
    """What the database holds for one payment, read on a fresh connection."""

    payment: str | None
    events: list[uuid.UUID]
    audit_outcomes: list[str]
    idempotency: tuple[str, int | None, Any]


async def stored(engine: AsyncEngine, transaction_id: str) -> Stored:
    async with engine.connect() as conn:
        payment = (
            await conn.execute(
                select(PAYMENTS.c.status).where(PAYMENTS.c.transaction_id == transaction_id)
            )
        ).scalar_one_or_none()
        events = (
            await conn.execute(
                select(OUTBOX.c.event_id)
                .where(OUTBOX.c.aggregate_id == transaction_id)
                .order_by(OUTBOX.c.id)
            )
        ).scalars()
        outcomes = (
            await conn.execute(
                select(AUDIT_LOG.c.outcome).where(AUDIT_LOG.c.resource_id == transaction_id)
            )
        ).scalars()
        idempotency = (
            await conn.execute(
                select(
                    IDEMPOTENCY_KEYS.c.state,
                    IDEMPOTENCY_KEYS.c.response_status,
                    IDEMPOTENCY_KEYS.c.response_body,
                ).where(
                    IDEMPOTENCY_KEYS.c.merchant_id == MERCHANT,
                    IDEMPOTENCY_KEYS.c.idempotency_key == KEY,
                )
            )
        ).one()
        return Stored(
            payment=payment,
            events=list(events),
            audit_outcomes=list(outcomes),
            idempotency=(idempotency[0], idempotency[1], idempotency[2]),
        )


async def assert_nothing_kept(engine: AsyncEngine, transaction_id: str) -> None:
    """No payment, event or audit row, and the idempotency key still in progress."""
    after = await stored(engine, transaction_id)
    assert not after.payment
    assert after.events == []
    assert after.audit_outcomes == []
    assert after.idempotency == NOT_COMPLETED


def completed(txn: Payment) -> tuple[str, int, dict[str, str]]:
    return ("completed", 201, {"transaction_id": txn.transaction_id, "status": "captured"})


NOT_COMPLETED = ("in_progress", None, None)


# -- one statement, autocommitted -----------------------------------------------------


async def test_a_payment_its_event_audit_row_and_idempotency_answer_are_written_by_one_statement(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    txn = PaymentFactory(merchant_id=MERCHANT)
    await seed_merchant_and_claim(uow_factory, resource_id=txn.transaction_id)
    event_row = new_event(txn.transaction_id)

    async with uow_factory() as uow:
        stage_payment(uow, txn, event=event_row)
        with recorded_statements(engine) as executed:
            await uow.commit()

    assert len(executed) == 1, [e.sql for e in executed]
    (statement,) = executed
    assert statement.sql.lstrip().upper().startswith("WITH")
    for table in ("transactions", "outbox_events", "audit_log", "idempotency_keys"):
        assert table in statement.sql
    # Nothing else happened in the unit: the statement ran on its own, no BEGIN/COMMIT.
    assert statement.in_transaction_after is False

    after = await stored(engine, txn.transaction_id)
    assert after.payment
    assert after.events == [event_row.event_id]
    assert after.audit_outcomes == ["success"]
    assert after.idempotency == completed(txn)
    async with uow_factory() as uow:  # and it reads back whole
        payment = await uow.payments.get_for_update(txn.transaction_id, merchant_id=MERCHANT)
        assert payment is not None
        assert (payment.amount, payment.status) == (Money(10_000, "USD"), PaymentStatus.CAPTURED)


# -- atomicity ------------------------------------------------------------------------


async def _existing_event_id(uow_factory: UowFactory) -> uuid.UUID:
    existing = new_event("txn_someone_else")
    async with uow_factory() as uow:
        uow.outbox.add(existing)
        await uow.commit()
    return existing.event_id


@pytest.mark.parametrize(
    ("broken_part", "constraint"),
    [
        ("outbox event_id already taken", "uq_outbox_events_event_id"),
        ("audit outcome invalid", "ck_audit_log_outcome_valid"),
        ("payment amount not positive", "ck_transactions_amount_positive"),
    ],
)
async def test_when_one_part_of_the_statement_violates_a_constraint_nothing_is_written(
    uow_factory: UowFactory, engine: AsyncEngine, broken_part: str, constraint: str
) -> None:
    txn = PaymentFactory(merchant_id=MERCHANT)
    await seed_merchant_and_claim(uow_factory, resource_id=txn.transaction_id)
    taken = await _existing_event_id(uow_factory)
    event_row = new_event(txn.transaction_id)
    audit = new_audit(txn.transaction_id)
    if broken_part.startswith("outbox"):
        event_row = new_event(txn.transaction_id, event_id=taken)
    elif broken_part.startswith("audit"):
        audit = new_audit(txn.transaction_id, outcome="maybe")
    else:
        txn.amount = Money(0, "USD")

    with pytest.raises(IntegrityError, match=constraint):
        async with uow_factory() as uow:
            stage_payment(uow, txn, event=event_row, audit=audit)
            with recorded_statements(engine) as executed:
                await uow.commit()
    assert len(executed) == 1  # the failing part was part of the one statement

    await assert_nothing_kept(engine, txn.transaction_id)
    async with engine.connect() as conn:  # the event it collided with is untouched
        count = (await conn.execute(text("SELECT count(*) FROM outbox_events"))).scalar_one()
    assert count == 1


async def test_an_autocommitted_unit_leaves_its_connection_transactional_for_the_next(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    """The switch to autocommit ends with the unit: the pooled connection is reset."""
    txn = PaymentFactory(merchant_id=MERCHANT)
    await seed_merchant_and_claim(uow_factory, resource_id=txn.transaction_id)
    async with uow_factory() as uow:
        uow.payments.add(PaymentFactory(merchant_id=MERCHANT))
        with recorded_statements(engine) as executed:
            await uow.commit()
    (autocommitted,) = executed
    assert autocommitted.in_transaction_after is False

    reused = False
    for _ in range(engine.sync_engine.pool.checkedin() + 1):  # the pool hands them out FIFO
        async with uow_factory() as uow:
            raw = await (await uow.session.connection()).get_raw_connection()
            if raw.driver_connection is not autocommitted.driver:
                continue
            reused = True
            stage_payment(uow, txn)
            with recorded_statements(engine) as executed:
                await uow.flush()
            assert executed[0].in_transaction_after is True
            # leaves without commit: everything flushed is rolled back
        break
    assert reused, "the autocommitted connection was never handed out again"
    await assert_nothing_kept(engine, txn.transaction_id)


# -- inside an open transaction -------------------------------------------------------


async def test_staged_writes_after_a_read_are_committed_together_in_the_open_transaction(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    txn = PaymentFactory(merchant_id=MERCHANT)
    await seed_merchant_and_claim(uow_factory, resource_id=txn.transaction_id)

    async with uow_factory() as uow:
        with recorded_statements(engine) as executed:
            assert await uow.merchants.get(MERCHANT) is not None  # opens the transaction
            stage_payment(uow, txn)
            await uow.commit()

    assert len(executed) == 2, [e.sql for e in executed]
    read, write = executed
    assert read.sql.lstrip().upper().startswith("SELECT")
    assert write.sql.lstrip().upper().startswith("WITH")
    assert write.in_transaction_after is True  # sent inside the read's transaction
    after = await stored(engine, txn.transaction_id)
    assert after.payment
    assert len(after.events) == 1
    assert after.audit_outcomes == ["success"]
    assert after.idempotency == completed(txn)


async def test_flushed_staged_writes_are_rolled_back_together_when_the_unit_exits_uncommitted(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    txn = PaymentFactory(merchant_id=MERCHANT)
    await seed_merchant_and_claim(uow_factory, resource_id=txn.transaction_id)

    async with uow_factory() as uow:
        assert await uow.merchants.get(MERCHANT) is not None
        stage_payment(uow, txn)
        await uow.flush()
        # Written inside this unit's transaction: visible here, nowhere else yet.
        assert await uow.payments.get_for_update(txn.transaction_id, merchant_id=MERCHANT)
        assert await uow.outbox.has_unpublished(txn.transaction_id)
        outside = await stored(engine, txn.transaction_id)
        assert not outside.payment
        assert outside.idempotency == NOT_COMPLETED

    await assert_nothing_kept(engine, txn.transaction_id)


async def test_flushed_staged_writes_are_rolled_back_when_the_unit_raises(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    txn = PaymentFactory(merchant_id=MERCHANT)
    await seed_merchant_and_claim(uow_factory, resource_id=txn.transaction_id)

    with pytest.raises(RuntimeError, match="after the flush"):
        async with uow_factory() as uow:
            stage_payment(uow, txn)
            await uow.flush()  # nothing read first: the flush itself opens the transaction
            raise RuntimeError("boom after the flush")

    await assert_nothing_kept(engine, txn.transaction_id)


# -- a guard decides the whole statement ---------------------------------------------


async def test_a_guarded_write_that_matches_writes_everything_in_one_statement(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    txn = PaymentFactory(merchant_id=MERCHANT, status=PaymentStatus.PROCESSING)
    await seed_merchant_and_claim(uow_factory, resource_id=txn.transaction_id)
    async with uow_factory() as uow:
        uow.payments.add(txn)
        await uow.commit()

    txn.approve(authorization_code="A1", at=datetime.now(UTC))
    async with uow_factory() as uow:
        uow.payments.update(txn, expected_status=PaymentStatus.PROCESSING)
        uow.outbox.add(new_event(txn.transaction_id))
        uow.audit.append(new_audit(txn.transaction_id))
        with recorded_statements(engine) as executed:
            await uow.commit()

    assert len(executed) == 1
    after = await stored(engine, txn.transaction_id)
    assert after.payment == "captured"
    assert len(after.events) == 1
    assert after.audit_outcomes == ["success"]


async def test_a_guarded_write_that_finds_the_row_changed_writes_nothing(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    txn = PaymentFactory(merchant_id=MERCHANT, status=PaymentStatus.PROCESSING)
    await seed_merchant_and_claim(uow_factory, resource_id=txn.transaction_id)
    async with uow_factory() as uow:
        uow.payments.add(txn)
        await uow.commit()
    settled_elsewhere = PaymentFactory(
        transaction_id=txn.transaction_id, merchant_id=MERCHANT, status=PaymentStatus.PROCESSING
    )
    settled_elsewhere.decline(decline_code="card_declined", decline_message=None, at=txn.created_at)
    async with uow_factory() as uow:
        uow.payments.update(settled_elsewhere, expected_status=PaymentStatus.PROCESSING)
        await uow.commit()

    txn.approve(authorization_code="A1", at=datetime.now(UTC))
    with pytest.raises(ConcurrentUpdate):
        async with uow_factory() as uow:
            uow.payments.update(txn, expected_status=PaymentStatus.PROCESSING)
            uow.outbox.add(new_event(txn.transaction_id))
            uow.audit.append(new_audit(txn.transaction_id))
            stage_payment_answer(uow, txn)
            await uow.commit()

    after = await stored(engine, txn.transaction_id)
    assert after.payment == "declined"  # the first writer's outcome stands
    assert after.events == []
    assert after.audit_outcomes == []
    assert after.idempotency == NOT_COMPLETED


def stage_payment_answer(uow: SqlUnitOfWork, txn: Payment) -> None:
    uow.idempotency.complete(
        merchant_id=MERCHANT,
        key=KEY,
        answer=StoredAnswer(
            201, {"transaction_id": txn.transaction_id, "status": txn.status.value}
        ),
    )
