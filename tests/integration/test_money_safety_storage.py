"""What the money-safety flow asks of the database, on the real PostgreSQL: a record and
a settlement of one statement each, claims that never overlap, bounded purges and
refusal counts."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.queries import SqlPaymentQueries
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.domain.payments import PaymentStatus, RefundStatus
from app.services.context import ServiceContext
from app.services.idempotency import IdempotencyKey
from app.services.ports import OutboxMessage
from tests.factories import MerchantFactory, PaymentFactory, RefundFactory
from tests.integration.test_write_batch_statements import recorded_statements
from tests.service_calls import pay

UowFactory = Callable[[], SqlUnitOfWork]


async def count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


async def test_a_payment_with_a_key_is_recorded_then_settled_one_statement_each(
    ctx: ServiceContext, merchant: Any, engine: AsyncEngine
) -> None:
    key = IdempotencyKey("two-statements", "v2:" + "c" * 64)
    with recorded_statements(engine) as executed:
        body = await pay(ctx, idempotency=key)

    assert body["status"] == "captured"
    writes = [e for e in executed if not e.sql.lstrip().upper().startswith("SELECT pg_")]
    assert len(writes) == 2, [e.sql[:80] for e in writes]
    record, settle = writes
    assert "INSERT INTO idempotency_keys" in record.sql  # the claim guards the record
    assert "INSERT INTO transactions" in record.sql
    assert "INSERT INTO audit_log" in record.sql
    assert "UPDATE transactions" in settle.sql
    assert "INSERT INTO outbox_events" in settle.sql
    assert "UPDATE idempotency_keys" in settle.sql
    assert record.in_transaction_after is False  # each runs on its own: no BEGIN/COMMIT
    assert settle.in_transaction_after is False


async def test_a_key_already_claimed_records_nothing_and_asks_no_bank(
    ctx: ServiceContext, merchant: Any, engine: AsyncEngine
) -> None:
    key = IdempotencyKey("claimed-once", "v2:" + "d" * 64)
    first = await pay(ctx, idempotency=key)
    asked: list[str] = []

    class Bank:
        async def authorize(self, request: Any) -> Any:
            asked.append(request.transaction_id)
            raise AssertionError("the bank must not be asked again")

    again = await pay(dataclasses.replace(ctx, bank=Bank()), idempotency=key)  # type: ignore[arg-type]

    assert again == first  # the replay
    assert asked == []
    assert await count(engine, "SELECT count(*) FROM transactions") == 1


async def test_concurrent_claims_of_unsettled_items_never_overlap(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    async with uow_factory() as uow:
        uow.merchants.add(MerchantFactory(merchant_id="merchant_00000"))
        await uow.commit()
    now = datetime.now(UTC)
    async with uow_factory() as uow:
        for _ in range(30):
            uow.payments.add(PaymentFactory(status=PaymentStatus.PROCESSING), reconcile_at=now)
        await uow.commit()

    async def claim() -> list[str]:
        async with uow_factory() as uow:
            claimed = await uow.payments.claim_unsettled(
                now=now + timedelta(seconds=1), lease=timedelta(seconds=60), limit=8
            )
        return [c.item.transaction_id for c in claimed]

    batches = await asyncio.gather(*(claim() for _ in range(6)))

    claimed = [t for batch in batches for t in batch]
    assert len(claimed) == 30
    assert len(set(claimed)) == 30  # nobody got an item twice
    assert (await claim()) == []  # leased: none is due again before the lease runs out
    assert (
        await count(engine, "SELECT count(*) FROM transactions WHERE reconcile_attempts = 1") == 30
    )


async def test_a_settled_item_is_never_claimed(uow_factory: UowFactory) -> None:
    async with uow_factory() as uow:
        uow.merchants.add(MerchantFactory(merchant_id="merchant_00000"))
        await uow.commit()
    payment = PaymentFactory(status=PaymentStatus.PROCESSING)
    refund = RefundFactory(transaction_id=payment.transaction_id, status=RefundStatus.SUCCEEDED)
    async with uow_factory() as uow:
        uow.payments.add(payment, reconcile_at=payment.created_at)
        await uow.commit()
    payment.approve(authorization_code="A1", at=datetime.now(UTC))
    async with uow_factory() as uow:
        uow.payments.update(payment, expected_status=PaymentStatus.PROCESSING)
        uow.refunds.add(refund)
        await uow.commit()
    later = datetime.now(UTC) + timedelta(days=1)
    async with uow_factory() as uow:
        assert await uow.payments.claim_unsettled(now=later, lease=timedelta(1), limit=10) == []
        assert await uow.refunds.claim_unsettled(now=later, lease=timedelta(1), limit=10) == []


async def test_purges_delete_in_bounded_batches_and_only_what_is_past_retention(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    async with uow_factory() as uow:
        uow.merchants.add(MerchantFactory(merchant_id="merchant_00000"))
        await uow.commit()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO idempotency_keys (merchant_id, idempotency_key, request_fingerprint,"
                " resource_id, state, locked_until, expires_at)"
                " SELECT 'merchant_00000', 'k' || n, 'v2:x', 'txn_' || n, 'in_progress',"
                " now(), now() + (CASE WHEN n <= 25 THEN -1 ELSE 1 END) * interval '1 hour'"
                " FROM generate_series(1, 30) AS n"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO outbox_events (event_id, event_type, aggregate_id, payload,"
                " published_at)"
                " SELECT gen_random_uuid(), 'payment.captured', 'txn_' || n, '{}'::jsonb,"
                " CASE WHEN n <= 12 THEN now() - interval '8 days'"
                " WHEN n <= 16 THEN now() - interval '1 day' END"
                " FROM generate_series(1, 20) AS n"
            )
        )
    now = datetime.now(UTC)
    async with uow_factory() as uow:
        first = await uow.idempotency.purge_expired(now=now, limit=10)
    async with uow_factory() as uow:
        rest = await uow.idempotency.purge_expired(now=now, limit=100)
    async with uow_factory() as uow:
        events = await uow.outbox.purge_published(before=now - timedelta(days=7), limit=100)

    assert (first, rest, events) == (10, 15, 12)
    assert await count(engine, "SELECT count(*) FROM idempotency_keys") == 5  # unexpired
    assert await count(engine, "SELECT count(*) FROM outbox_events") == 8  # recent + pending


async def test_a_purge_skips_rows_another_purge_is_deleting(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    async with uow_factory() as uow:
        uow.outbox.add(
            OutboxMessage(
                event_id=uuid.uuid4(),
                event_type="payment.captured",
                key="txn_x",
                payload={},
                headers={},
            )
        )
        await uow.commit()
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE outbox_events SET published_at = now() - interval '9 days'")
        )
    async with engine.connect() as holder:
        await holder.execute(text("SELECT id FROM outbox_events FOR UPDATE"))
        async with uow_factory() as uow:
            deleted = await asyncio.wait_for(
                uow.outbox.purge_published(before=datetime.now(UTC), limit=10), timeout=5
            )
        assert deleted == 0  # did not wait for the lock: skipped
        await holder.rollback()


async def test_refused_authentications_are_counted_per_minute_source_and_reason(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    at = datetime(2026, 12, 3, 12, 0, 5, tzinfo=UTC)

    async def refuse(source: str, reason: str, second: int, correlation_id: str) -> None:
        async with uow_factory() as uow:
            await uow.audit.count_refused_authentication(
                source=source,
                reason=reason,
                at=at.replace(second=second),
                correlation_id=correlation_id,
                details={"last_key_prefix": "sk_bad"},
            )

    for n in range(50):
        await refuse("203.0.113.9", "unknown_key", n % 60, f"c{n}")
    await refuse("203.0.113.9", "missing_or_malformed", 1, "other-reason")
    await refuse("198.51.100.7", "unknown_key", 2, "other-source")

    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT source, reason, attempts, last_correlation_id FROM auth_refusals"
                    " ORDER BY source, reason"
                )
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("198.51.100.7", "unknown_key", 1, "other-source"),
        ("203.0.113.9", "missing_or_malformed", 1, "other-reason"),
        ("203.0.113.9", "unknown_key", 50, "c49"),
    ]
    assert await count(engine, "SELECT count(*) FROM audit_log") == 0


async def test_the_unsettled_backlog_counts_processing_payments_and_pending_refunds(
    uow_factory: UowFactory, queries: SqlPaymentQueries
) -> None:
    empty = await queries.unsettled_backlog()
    assert (empty.payments, empty.refunds, empty.oldest_age_s) == (0, 0, 0)
    async with uow_factory() as uow:
        uow.merchants.add(MerchantFactory(merchant_id="merchant_00000"))
        await uow.commit()
    old = datetime.now(UTC) - timedelta(minutes=10)
    captured = PaymentFactory(amount_minor=5000)
    async with uow_factory() as uow:
        uow.payments.add(PaymentFactory(status=PaymentStatus.PROCESSING, created_at=old))
        uow.payments.add(PaymentFactory(status=PaymentStatus.PROCESSING))
        uow.payments.add(captured)
        await uow.commit()
    async with uow_factory() as uow:
        uow.refunds.add(
            RefundFactory(transaction_id=captured.transaction_id, status=RefundStatus.PENDING)
        )
        await uow.commit()

    backlog = await queries.unsettled_backlog()

    assert (backlog.payments, backlog.refunds) == (2, 1)
    assert 590 < backlog.oldest_age_s < 700

    # An authorization whose capture waits for the bank counts too, from its request.
    authorized = PaymentFactory(status=PaymentStatus.AUTHORIZED, created_at=old - timedelta(days=1))
    async with uow_factory() as uow:
        uow.payments.add(authorized)
        await uow.commit()
    assert (await queries.unsettled_backlog()).payments == 2
    requested = datetime.now(UTC) - timedelta(minutes=20)
    async with uow_factory() as uow:
        payment = await uow.payments.get_for_update(authorized.transaction_id, merchant_id=None)
        assert payment is not None
        payment.request_capture(operation_id="cap_backlog", amount=None, at=requested)
        uow.payments.update(payment, reconcile_at=requested)
        await uow.commit()

    with_capture = await queries.unsettled_backlog()

    assert (with_capture.payments, with_capture.refunds) == (3, 1)
    assert 1190 < with_capture.oldest_age_s < 1300
