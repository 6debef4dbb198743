"""The reconciler on the real database, with the in-process bank (which remembers what it
decided): every unknown outcome is settled once, from the bank's answer."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.bank.simulator import SimulatedBankGateway
from app.domain.errors import RefundExceedsBalance
from app.services import refunds as refund_services
from app.services.context import ReconcilePolicy, ServiceContext
from app.services.ports import (
    BankAnswerUnknown,
    BankRefundRequest,
    Lease,
    OutboxMessage,
    RefundResult,
)
from app.services.reconciliation import reconcile_once
from tests.e2e.refund_ledger import refund_ledger_violations
from tests.service_calls import pay, refund

TIMEOUT_CARD = "4000000000000903"  # the bank approves, answering too late
ERROR_CARD = "4000000000000119"  # the bank answers 500 and keeps no record


@pytest.fixture
def reconciling(ctx: ServiceContext) -> Callable[[float], ServiceContext]:
    """The context as the reconciler sees it ``seconds`` from now (windows as configured)."""
    policy = ReconcilePolicy(
        first_delay=timedelta(seconds=10),
        no_record_after=timedelta(seconds=120),
        lease=timedelta(seconds=60),
    )

    def at(seconds: float) -> ServiceContext:
        moment = datetime.now(UTC) + timedelta(seconds=seconds)
        return dataclasses.replace(ctx, reconcile=policy, clock=lambda: moment)

    return at


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def test_an_unknown_approval_is_settled_captured_once_the_first_delay_has_passed(
    ctx: ServiceContext,
    merchant: Any,
    engine: AsyncEngine,
    reconciling: Callable[[float], ServiceContext],
) -> None:
    unknown = await pay(ctx, TIMEOUT_CARD)
    assert unknown["status"] == "processing"

    early = await reconcile_once(reconciling(1))
    assert early.claimed == 0  # not due yet: its request may still hear from the bank

    report = await reconcile_once(reconciling(11))

    assert report.settled == {("payment", "captured"): 1}
    (row,) = await rows(
        engine,
        "SELECT status, authorization_code, next_reconcile_at, reconcile_attempts"
        " FROM transactions WHERE transaction_id = :id",
        id=unknown["transaction_id"],
    )
    assert row.status == "captured"
    assert row.authorization_code  # the code the bank decided, looked up
    assert row.next_reconcile_at is None  # settled: nothing more to ask
    assert row.reconcile_attempts == 1
    events = await rows(
        engine,
        "SELECT event_type FROM outbox_events WHERE aggregate_id = :id ORDER BY id",
        id=unknown["transaction_id"],
    )
    assert [e.event_type for e in events] == ["payment.processing", "payment.captured"]
    audit = await rows(
        engine,
        "SELECT action, outcome, actor FROM audit_log WHERE resource_id = :id ORDER BY id",
        id=unknown["transaction_id"],
    )
    assert [(a.action, a.outcome) for a in audit] == [
        ("payment.process", "pending"),
        ("payment.settle", "pending"),
        ("payment.settle", "success"),
    ]
    assert audit[-1].actor == "reconciler"
    assert (await reconcile_once(reconciling(3600))).claimed == 0


async def test_no_record_means_failed_only_after_the_no_record_window(
    ctx: ServiceContext,
    merchant: Any,
    engine: AsyncEngine,
    reconciling: Callable[[float], ServiceContext],
) -> None:
    unknown = await pay(ctx, ERROR_CARD)
    assert unknown["status"] == "processing"

    asked = await reconcile_once(reconciling(11))
    assert asked.settled == {}
    assert asked.deferred == 1  # no record yet, but the request might still be on its way
    (row,) = await rows(
        engine,
        "SELECT status, next_reconcile_at FROM transactions WHERE transaction_id = :id",
        id=unknown["transaction_id"],
    )
    assert row.status == "processing"
    assert row.next_reconcile_at > datetime.now(UTC)

    report = await reconcile_once(reconciling(3600))

    assert report.settled == {("payment", "failed"): 1}
    (row,) = await rows(
        engine,
        "SELECT status, failure_code FROM transactions WHERE transaction_id = :id",
        id=unknown["transaction_id"],
    )
    assert (row.status, row.failure_code) == ("failed", "bank_no_record")


async def test_reconcilers_running_at_once_settle_each_item_exactly_once(
    ctx: ServiceContext,
    merchant: Any,
    engine: AsyncEngine,
    reconciling: Callable[[float], ServiceContext],
) -> None:
    unknowns = [await pay(ctx, TIMEOUT_CARD) for _ in range(12)]
    later = reconciling(11)

    reports = await asyncio.gather(*(reconcile_once(later) for _ in range(4)))

    assert sum(report.settled["payment", "captured"] for report in reports) == 12
    ids = [u["transaction_id"] for u in unknowns]
    settle_events = await rows(
        engine,
        "SELECT aggregate_id, count(*) AS n FROM outbox_events"
        " WHERE event_type = 'payment.captured' AND aggregate_id = ANY(:ids)"
        " GROUP BY aggregate_id",
        ids=ids,
    )
    assert sorted(e.aggregate_id for e in settle_events) == sorted(ids)
    assert {e.n for e in settle_events} == {1}


class RefundsTimingOut(SimulatedBankGateway):
    """Refunds reach the bank (which remembers them) but the answers never come back."""

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        await super().refund(request)
        raise BankAnswerUnknown("bank_timeout")


class RefundsLost(SimulatedBankGateway):
    """Refund requests that never reached the bank, though the service could not tell."""

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        raise BankAnswerUnknown("connection_lost")


async def test_an_unknown_refund_stays_reserved_and_is_settled_from_the_bank(
    ctx: ServiceContext,
    merchant: Any,
    engine: AsyncEngine,
    reconciling: Callable[[float], ServiceContext],
) -> None:
    bank = RefundsTimingOut()
    with_bank = dataclasses.replace(ctx, bank=bank)
    captured = await pay(with_bank, amount="100.00")
    txn = captured["transaction_id"]

    pending = await refund(with_bank, txn, "60.00")

    assert pending["status"] == "pending"
    assert pending["refundable_amount"] == "40.00"  # reserved: 100 - 60 pending
    assert pending["payment_status"] == "captured"
    with pytest.raises(RefundExceedsBalance, match=r"exceeds the refundable 40\.00"):
        await refund(with_bank, txn, "50.00")

    report = await reconcile_once(dataclasses.replace(reconciling(11), bank=bank))

    assert report.settled == {("refund", "succeeded"): 1}
    (payment,) = await rows(
        engine,
        "SELECT status, refunded_minor, refund_pending_minor FROM transactions"
        " WHERE transaction_id = :id",
        id=txn,
    )
    assert (payment.status, payment.refunded_minor, payment.refund_pending_minor) == (
        "partially_refunded",
        6000,
        0,
    )


async def test_a_refund_the_bank_never_received_is_failed_and_its_reservation_released(
    ctx: ServiceContext,
    merchant: Any,
    engine: AsyncEngine,
    reconciling: Callable[[float], ServiceContext],
) -> None:
    lost = dataclasses.replace(ctx, bank=RefundsLost())
    txn = (await pay(lost, amount="100.00"))["transaction_id"]
    pending = await refund(lost, txn, None)
    assert pending["status"] == "pending"
    assert pending["refundable_amount"] == "0.00"

    report = await reconcile_once(dataclasses.replace(reconciling(3600), bank=RefundsLost()))

    assert report.settled == {("refund", "failed"): 1}
    (refund_row,) = await rows(
        engine,
        "SELECT status, failure_code FROM refunds WHERE refund_id = :id",
        id=pending["refund_id"],
    )
    assert (refund_row.status, refund_row.failure_code) == ("failed", "bank_no_record")
    again = await refund(ctx, txn, Decimal("100.00"))  # the whole capture is refundable again
    assert again["status"] == "succeeded"
    assert again["payment_status"] == "refunded"


class ReservingPublisher:
    """A broker that is up: every event offered is leased to this process."""

    enabled = True

    def __init__(self) -> None:
        self.reserved: list[str] = []

    def reserve(self, message: OutboxMessage) -> Lease | None:
        self.reserved.append(message.event_type)
        return Lease(claimed_by="here#1", claimed_until=datetime.now(UTC) + timedelta(seconds=60))

    async def publish_committed(self, messages: Any) -> None:
        return None

    async def broker_available(self) -> bool:
        return True


async def test_a_settlement_behind_an_unpublished_event_is_left_to_the_relay_in_order(
    ctx: ServiceContext,
    merchant: Any,
    engine: AsyncEngine,
    reconciling: Callable[[float], ServiceContext],
) -> None:
    unknown = await pay(ctx, TIMEOUT_CARD)  # its payment.processing waits in the outbox
    publisher = ReservingPublisher()

    await reconcile_once(dataclasses.replace(reconciling(11), publisher=publisher))

    assert publisher.reserved == []  # the relay sends both, oldest first
    events = await rows(
        engine,
        "SELECT event_type, claimed_by FROM outbox_events WHERE aggregate_id = :id ORDER BY id",
        id=unknown["transaction_id"],
    )
    assert [(e.event_type, e.claimed_by) for e in events] == [
        ("payment.processing", None),
        ("payment.captured", None),
    ]


async def test_a_refund_outcome_that_cannot_be_written_answers_202_and_stays_reserved(
    ctx: ServiceContext,
    merchant: Any,
    engine: AsyncEngine,
    reconciling: Callable[[float], ServiceContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    txn = (await pay(ctx, amount="100.00"))["transaction_id"]

    async def database_lost(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionResetError("simulated: the database went away after the bank")

    monkeypatch.setattr(refund_services, "settle_refund", database_lost)
    answer = await refund(ctx, txn, "30.00")
    monkeypatch.undo()

    assert answer["status"] == "pending"
    assert answer["refundable_amount"] == "70.00"
    report = await reconcile_once(reconciling(11))  # the simulator refunded it: it says so
    assert report.settled == {("refund", "succeeded"): 1}
    (payment,) = await rows(
        engine,
        "SELECT refunded_minor, refund_pending_minor FROM transactions WHERE transaction_id = :id",
        id=txn,
    )
    assert (payment.refunded_minor, payment.refund_pending_minor) == (3000, 0)


async def test_a_refund_settled_twice_at_once_moves_its_amount_once(
    ctx: ServiceContext, merchant: Any, engine: AsyncEngine
) -> None:
    # The request and the reconciler can settle one refund at the same moment (the soak
    # caught it: a slow bank, a reconciler round due meanwhile). Both wait for the
    # payment's row lock; the second must see the refund as the first left it, not as it
    # was when its statement started waiting.
    with_bank = dataclasses.replace(ctx, bank=RefundsTimingOut())
    txn = (await pay(with_bank, amount="100.00"))["transaction_id"]
    refund_id = (await refund(with_bank, txn, "60.00"))["refund_id"]
    succeeded = RefundResult(succeeded=True, bank_reference="bank-ref-1")

    async with engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM transactions WHERE transaction_id = :id FOR UPDATE"), {"id": txn}
        )
        settles = [
            asyncio.create_task(
                refund_services.settle_refund(
                    ctx, transaction_id=txn, refund_id=refund_id, result=succeeded
                )
            )
            for _ in range(2)
        ]
        await asyncio.sleep(0.5)  # both are waiting for the lock
        await holder.commit()
    await asyncio.gather(*settles)

    (payment,) = await rows(
        engine,
        "SELECT refunded_minor, refund_pending_minor FROM transactions WHERE transaction_id = :id",
        id=txn,
    )
    assert (payment.refunded_minor, payment.refund_pending_minor) == (6000, 0)
    assert await refund_ledger_violations(engine) == []
