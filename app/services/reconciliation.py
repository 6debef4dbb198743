"""The reconciler: settles every payment and refund whose bank answer is unknown.

An item is unknown when its request was recorded and the bank was (or may have been)
asked, but no outcome was written: the bank timed out or answered 5xx, the connection
dropped, or the process or the database went away mid-request. Each round claims the
items due (``FOR UPDATE SKIP LOCKED`` with a lease, so every worker of every replica can
run it without two settling the same item), asks the bank's status lookup, and:

- the bank's decision settles the item -- a payment ``captured``/``authorized`` or
  ``declined``, a refund ``succeeded`` or ``failed`` -- with its event and audit row;
- "no record" long enough after the attempt (``RECONCILE_NO_RECORD_AFTER``, longer than
  any request's bank timeout) means the bank never received it: ``failed`` with
  ``bank_no_record`` (a refund's reservation is released);
- anything else (no answer, "no record" too early) asks again later, backing off up to
  ``RECONCILE_MAX_INTERVAL``; past ``RECONCILE_WINDOW`` the item is reported overdue and
  still asked about.

A capture or void pending on an authorization is settled the same way from its own
lookup (no record: it did not happen, the payment stays ``authorized``). An expiry is the
service's own decision, so its void is simply sent again (the bank's idempotency key is
the expiry's id) until the bank answers. Each round then expires the authorizations older
than ``AUTHORIZATION_TTL``: recorded first (claimed like the rest), voided, settled.

docs/runbook.md, "A payment is stuck, or its outcome is unknown", is the operator's view.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from app.domain.audit import RECONCILER_ACTOR
from app.domain.errors import BankUnavailable
from app.domain.payments import BANK_NO_RECORD, OperationKind, Payment, PendingOperation, Refund
from app.services.authorizations import ask_bank, settle_operation
from app.services.context import ServiceContext
from app.services.payments import (
    apply_authorization,
    payment_audit,
    report_outcome,
    settle_payment,
)
from app.services.ports import (
    BankAnswerUnknown,
    ConcurrentUpdate,
    OperationResult,
    RefundResult,
    Unsettled,
)
from app.services.refunds import settle_refund
from app.services.telemetry import span

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ReconcileReport:
    """What one round did."""

    settled: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(``payment``/``refund``, the outcome status) -> how many."""
    deferred: int = 0
    overdue: int = 0

    @property
    def claimed(self) -> int:
        """Items looked at in the round."""
        return sum(self.settled.values()) + self.deferred


async def reconcile_once(ctx: ServiceContext) -> ReconcileReport:
    """One round: claim what is due, ask the bank, settle or defer each item."""
    report = ReconcileReport()
    policy = ctx.reconcile
    now = ctx.clock()
    async with ctx.uow_factory() as uow:
        payments = await uow.payments.claim_unsettled(
            now=now, lease=policy.lease, limit=policy.batch_size
        )
    # The items of a batch are looked up side by side: the whole batch takes about one
    # bank call, well within the lease its claim holds.
    await asyncio.gather(*(_reconcile_payment(ctx, item, report) for item in payments))
    async with ctx.uow_factory() as uow:
        refunds = await uow.refunds.claim_unsettled(
            now=ctx.clock(), lease=policy.lease, limit=policy.batch_size
        )
    await asyncio.gather(*(_reconcile_refund(ctx, item, report) for item in refunds))
    await expire_authorizations(ctx, report)
    for (kind, outcome), count in report.settled.items():
        ctx.metrics.reconciliation_settled(kind=kind, outcome=outcome, count=count)
    if report.claimed:
        logger.info(
            "reconciliation: %d settled, %d asked again later (%d overdue)",
            sum(report.settled.values()),
            report.deferred,
            report.overdue,
            extra={
                "reconcile_settled": sum(report.settled.values()),
                "reconcile_deferred": report.deferred,
                "reconcile_overdue": report.overdue,
            },
        )
    return report


async def _reconcile_payment(
    ctx: ServiceContext, unsettled: Unsettled[Payment], report: ReconcileReport
) -> None:
    payment = unsettled.item
    if payment.pending_operation is not None:
        await _reconcile_operation(ctx, unsettled, payment.pending_operation, report)
        return
    with span("reconcile.payment", transaction_id=payment.transaction_id):
        try:
            answer = await ctx.bank.authorization_status(
                payment.transaction_id, correlation_id=payment.correlation_id
            )
        except (BankUnavailable, BankAnswerUnknown) as exc:
            await _defer_payment(ctx, unsettled, report, why=_why(exc))
            return
        now = ctx.clock()
        if answer is None:
            if now - payment.created_at < ctx.reconcile.no_record_after:
                await _defer_payment(ctx, unsettled, report, why="no record yet")
                return
            payment.fail(failure_code=BANK_NO_RECORD, at=now)
        else:
            apply_authorization(payment, answer, at=now)
        try:
            messages = await settle_payment(
                ctx,
                payment,
                audit=payment_audit(payment, action="payment.settle", actor=RECONCILER_ACTOR),
                after_earlier_events=True,
            )
        except ConcurrentUpdate:
            return  # its request settled it meanwhile, from the same bank
        report.settled["payment", payment.status.value] += 1
        report_outcome(ctx, payment)
        await ctx.publisher.publish_committed(messages)


async def _reconcile_operation(
    ctx: ServiceContext,
    unsettled: Unsettled[Payment],
    operation: PendingOperation,
    report: ReconcileReport,
) -> None:
    payment = unsettled.item
    with span(f"reconcile.{operation.kind}", transaction_id=payment.transaction_id):
        answer: OperationResult | None
        try:
            if operation.kind is OperationKind.EXPIRE:
                answer = await ask_bank(ctx, payment, operation, correlation_id=None)
            elif operation.kind is OperationKind.CAPTURE:
                answer = await ctx.bank.capture_status(
                    operation.operation_id, correlation_id=payment.correlation_id
                )
            else:
                answer = await ctx.bank.void_status(
                    operation.operation_id, correlation_id=payment.correlation_id
                )
        except (BankUnavailable, BankAnswerUnknown) as exc:
            await _defer_operation(ctx, unsettled, operation, report, why=_why(exc))
            return
        if answer is None:
            if ctx.clock() - operation.requested_at < ctx.reconcile.no_record_after:
                await _defer_operation(ctx, unsettled, operation, report, why="no record yet")
                return
            answer = OperationResult(succeeded=False, failure_code=BANK_NO_RECORD)
        now_payment, messages = await settle_operation(
            ctx,
            transaction_id=payment.transaction_id,
            operation_id=operation.operation_id,
            result=answer,
            actor=RECONCILER_ACTOR,
        )
        if now_payment.pending_operation is None:
            done = answer.succeeded or operation.kind is OperationKind.EXPIRE
            outcome = now_payment.status.value if done else "failed"
            report.settled[str(operation.kind), outcome] += 1
            logger.info(
                "reconciled the %s of payment %s: %s",
                operation.kind,
                payment.transaction_id,
                outcome,
                extra={"transaction_id": payment.transaction_id, "status": outcome},
            )
        await ctx.publisher.publish_committed(messages)


async def expire_authorizations(ctx: ServiceContext, report: ReconcileReport) -> None:
    """Void and expire the authorizations older than ``AUTHORIZATION_TTL``: each expiry is
    recorded (claimed, in one statement) before its void is sent, so a process that dies
    in between leaves it to the next round."""
    now = ctx.clock()
    async with ctx.uow_factory() as uow:
        expiring = await uow.payments.claim_expiring(
            now=now,
            authorized_before=now - ctx.reconcile.authorization_ttl,
            lease=ctx.reconcile.lease,
            limit=ctx.reconcile.batch_size,
        )
    await asyncio.gather(
        *(
            _reconcile_operation(ctx, Unsettled(payment, 0), operation, report)
            for payment in expiring
            if (operation := payment.pending_operation) is not None
        )
    )


async def _reconcile_refund(
    ctx: ServiceContext, unsettled: Unsettled[Refund], report: ReconcileReport
) -> None:
    refund = unsettled.item
    with span("reconcile.refund", refund_id=refund.refund_id):
        try:
            answer = await ctx.bank.refund_status(
                refund.refund_id, correlation_id=refund.correlation_id
            )
        except (BankUnavailable, BankAnswerUnknown) as exc:
            await _defer_refund(ctx, unsettled, report, why=_why(exc))
            return
        if answer is None:
            if ctx.clock() - refund.created_at < ctx.reconcile.no_record_after:
                await _defer_refund(ctx, unsettled, report, why="no record yet")
                return
            answer = RefundResult(succeeded=False, failure_code=BANK_NO_RECORD)
        settled = await settle_refund(
            ctx,
            transaction_id=refund.transaction_id,
            refund_id=refund.refund_id,
            result=answer,
            actor=RECONCILER_ACTOR,
        )
        if settled is None:  # pragma: no cover - a reserved refund is never deleted
            return
        _, now_refund, messages = settled
        if messages:
            report.settled["refund", now_refund.status.value] += 1
            logger.info(
                "reconciled refund %s: %s",
                now_refund.refund_id,
                now_refund.status.value,
                extra={"refund_id": now_refund.refund_id, "status": now_refund.status.value},
            )
        await ctx.publisher.publish_committed(messages)


async def _defer_payment(
    ctx: ServiceContext, unsettled: Unsettled[Payment], report: ReconcileReport, *, why: str
) -> None:
    item = unsettled.item
    at = _next_attempt(
        ctx, unsettled, item.created_at, report, why=why, item=f"payment {item.transaction_id}"
    )
    async with ctx.uow_factory() as uow:
        uow.payments.defer_reconciliation(item.transaction_id, at=at)
        await uow.commit()


async def _defer_operation(
    ctx: ServiceContext,
    unsettled: Unsettled[Payment],
    operation: PendingOperation,
    report: ReconcileReport,
    *,
    why: str,
) -> None:
    item = unsettled.item
    at = _next_attempt(
        ctx,
        unsettled,
        operation.requested_at,
        report,
        why=why,
        item=f"the {operation.kind} of payment {item.transaction_id}",
    )
    async with ctx.uow_factory() as uow:
        uow.payments.defer_reconciliation(
            item.transaction_id, at=at, operation_id=operation.operation_id
        )
        await uow.commit()


async def _defer_refund(
    ctx: ServiceContext, unsettled: Unsettled[Refund], report: ReconcileReport, *, why: str
) -> None:
    item = unsettled.item
    at = _next_attempt(
        ctx, unsettled, item.created_at, report, why=why, item=f"refund {item.refund_id}"
    )
    async with ctx.uow_factory() as uow:
        uow.refunds.defer_reconciliation(item.refund_id, at=at)
        await uow.commit()


def _next_attempt(
    ctx: ServiceContext,
    unsettled: Unsettled[Payment] | Unsettled[Refund],
    created_at: datetime,
    report: ReconcileReport,
    *,
    why: str,
    item: str,
) -> datetime:
    now = ctx.clock()
    report.deferred += 1
    if now - created_at > ctx.reconcile.window:
        report.overdue += 1
        logger.error(
            "%s has waited for the bank's answer longer than the reconcile window (%s)",
            item,
            why,
            extra={"reconcile_item": item, "reconcile_attempts": unsettled.attempts},
        )
    return ctx.reconcile.next_attempt(attempts=unsettled.attempts, now=now)


def _why(exc: BankUnavailable | BankAnswerUnknown) -> str:
    return exc.failure_code or type(exc).__name__
