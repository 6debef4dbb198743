"""What happens to an authorization (a payment taken with ``capture_method: manual``):
capture it, void it, or let it expire after ``AUTHORIZATION_TTL``.

Each follows the payments' rules (docs/api.md, "Capture and void"): the operation is
**recorded** on the payment, under its row lock, before the bank is asked -- only one at a
time, so a capture racing a void racing an expiry has exactly one winner on any number of
workers; the bank is asked holding no connection or lock; the answer is **settled** under
the lock again. An unknown answer leaves the operation pending (202) for the reconciler,
which asks the bank's lookup for it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from app.domain.audit import AuditEntry, AuditOutcome, merchant_actor
from app.domain.errors import (
    BankUnavailable,
    IdempotencyInProgress,
    PaymentNotFound,
    PaymentServiceError,
)
from app.domain.ids import is_transaction_id, new_operation_id
from app.domain.merchants import Merchant
from app.domain.money import Money
from app.domain.payments import OperationKind, Payment, PendingOperation
from app.services.context import ServiceContext
from app.services.idempotency import (
    ACCEPTED,
    Answer,
    Claim,
    IdempotencyKey,
    RunAgain,
    already_claimed,
    answer_for_taken_key,
    new_claim,
)
from app.services.payments import current_answer, record_refusal, write_events
from app.services.ports import (
    BankAnswerUnknown,
    BankCaptureRequest,
    BankVoidRequest,
    ConcurrentUpdate,
    OperationResult,
    OutboxMessage,
)
from app.services.responses import payment_response
from app.services.telemetry import span

logger = logging.getLogger(__name__)


async def capture_payment(
    ctx: ServiceContext,
    *,
    merchant: Merchant,
    transaction_id: str,
    amount: Decimal | None,
    correlation_id: str | None,
    idempotency: IdempotencyKey | None = None,
) -> Answer:
    """Capture an authorized payment, in full (``amount`` None) or part (the rest is
    released); answers the payment (202 while the bank's answer is unknown).

    Raises:
        PaymentNotCapturable: Not authorized, or a capture or void is in progress.
        BankUnavailable: The bank certainly did not receive it; nothing changed.
    """

    def pend(payment: Payment, operation_id: str) -> PendingOperation:
        requested = None if amount is None else Money.from_major(amount, payment.currency)
        return payment.request_capture(operation_id=operation_id, amount=requested, at=ctx.clock())

    return await _operate(
        ctx,
        kind=OperationKind.CAPTURE,
        merchant=merchant,
        transaction_id=transaction_id,
        pend=pend,
        correlation_id=correlation_id,
        idempotency=idempotency,
    )


async def void_payment(
    ctx: ServiceContext,
    *,
    merchant: Merchant,
    transaction_id: str,
    correlation_id: str | None,
    idempotency: IdempotencyKey | None = None,
) -> Answer:
    """Release an authorized payment without capturing it; answers the payment.

    Raises:
        PaymentNotVoidable: Not authorized, or a capture or void is in progress.
        BankUnavailable: The bank certainly did not receive it; nothing changed.
    """
    return await _operate(
        ctx,
        kind=OperationKind.VOID,
        merchant=merchant,
        transaction_id=transaction_id,
        pend=lambda payment, operation_id: payment.request_void(
            operation_id=operation_id, at=ctx.clock()
        ),
        correlation_id=correlation_id,
        idempotency=idempotency,
    )


async def _operate(
    ctx: ServiceContext,
    *,
    kind: OperationKind,
    merchant: Merchant,
    transaction_id: str,
    pend: Callable[[Payment, str], PendingOperation],
    correlation_id: str | None,
    idempotency: IdempotencyKey | None,
) -> Answer:
    merchant.ensure_active()
    if not is_transaction_id(transaction_id):
        raise PaymentNotFound

    async def attempt(claim: Claim | None) -> Answer | None:
        operation_id = claim.resource_id if claim else new_operation_id(kind)
        with span(f"payment.{kind}", transaction_id=transaction_id):
            try:
                payment, operation = await _record(
                    ctx,
                    merchant=merchant,
                    transaction_id=transaction_id,
                    operation_id=operation_id,
                    pend=pend,
                    claim=claim,
                    correlation_id=correlation_id,
                )
            except ConcurrentUpdate:
                return None
            except PaymentServiceError as refusal:
                if await already_claimed(ctx, claim):
                    return None
                await record_refusal(
                    ctx,
                    actor=merchant_actor(merchant.merchant_id),
                    action=f"payment.{kind}",
                    resource_type="payment",
                    resource_id=transaction_id,
                    error=refusal,
                    correlation_id=correlation_id,
                )
                raise
            try:
                result = await ask_bank(ctx, payment, operation, correlation_id=correlation_id)
            except BankUnavailable as exc:
                not_sent = OperationResult(succeeded=False, failure_code=exc.failure_code)
                await _settle_answered(ctx, payment, not_sent, claim, release_key=True)
                raise exc.about(transaction_id=transaction_id) from None
            except BankAnswerUnknown:
                return await _settle_answered(ctx, payment, None, claim)
            return await _settle_answered(ctx, payment, result, claim)

    answer = await attempt(new_claim(merchant.merchant_id, idempotency, new_operation_id(kind)))
    if answer is not None:
        return answer
    assert idempotency is not None  # only a claimed key can be taken
    existing = await answer_for_taken_key(
        ctx,
        merchant_id=merchant.merchant_id,
        idempotency=idempotency,
        operation=str(kind),
        current=lambda _operation_id: current_answer(
            ctx, merchant_id=merchant.merchant_id, transaction_id=transaction_id
        ),
    )
    if not isinstance(existing, RunAgain):
        return existing
    again = await attempt(new_claim(merchant.merchant_id, idempotency, existing.resource_id))
    if again is None:  # pragma: no cover - the key was just taken over
        raise IdempotencyInProgress
    return again


async def _record(
    ctx: ServiceContext,
    *,
    merchant: Merchant,
    transaction_id: str,
    operation_id: str,
    pend: Callable[[Payment, str], PendingOperation],
    claim: Claim | None,
    correlation_id: str | None,
) -> tuple[Payment, PendingOperation]:
    """The operation recorded on the payment, with its audit row and the key's claim."""
    async with ctx.uow_factory() as uow:
        payment = await uow.payments.get_for_update(
            transaction_id, merchant_id=merchant.merchant_id
        )
        if payment is None:
            raise PaymentNotFound
        operation = pend(payment, operation_id)
        if claim is not None:
            claim.stage(ctx, uow)
        uow.payments.update(payment, reconcile_at=ctx.clock() + ctx.reconcile.first_delay)
        uow.audit.append(_audit(payment, operation, correlation_id, outcome=AuditOutcome.PENDING))
        await uow.commit()
    return payment, operation


async def ask_bank(
    ctx: ServiceContext,
    payment: Payment,
    operation: PendingOperation,
    *,
    correlation_id: str | None,
) -> OperationResult:
    """Send the pending operation to the bank (a void for an expiry)."""
    with span(f"payment.{operation.kind}.bank", transaction_id=payment.transaction_id):
        if operation.kind is OperationKind.CAPTURE:
            assert operation.amount_minor is not None
            return await ctx.bank.capture(
                BankCaptureRequest(
                    capture_id=operation.operation_id,
                    transaction_id=payment.transaction_id,
                    authorization_code=payment.authorization_code,
                    amount_minor=operation.amount_minor,
                    currency=payment.currency,
                    correlation_id=correlation_id,
                )
            )
        return await ctx.bank.void(
            BankVoidRequest(
                void_id=operation.operation_id,
                transaction_id=payment.transaction_id,
                authorization_code=payment.authorization_code,
                correlation_id=correlation_id,
            )
        )


async def _settle_answered(
    ctx: ServiceContext,
    payment: Payment,
    result: OperationResult | None,
    claim: Claim | None,
    *,
    release_key: bool = False,
) -> Answer:
    """Settle the operation the request recorded with the bank's answer (``None``:
    unknown, left pending for the reconciler); the request's answer."""
    operation = payment.pending_operation
    assert operation is not None
    try:
        settled = await settle_operation(
            ctx,
            transaction_id=payment.transaction_id,
            operation_id=operation.operation_id,
            result=result,
            claim=claim,
            release_key=release_key,
        )
    except Exception:
        logger.exception(
            "payment %s: the %s's outcome could not be recorded; the reconciler settles it",
            payment.transaction_id,
            operation.kind,
            extra={"transaction_id": payment.transaction_id},
        )
        return Answer(payment_response(payment), status=ACCEPTED)
    now_payment, messages = settled
    await ctx.publisher.publish_committed(messages)
    pending = now_payment.pending_operation is not None
    return Answer(payment_response(now_payment), status=ACCEPTED if pending else 200)


async def settle_operation(
    ctx: ServiceContext,
    *,
    transaction_id: str,
    operation_id: str,
    result: OperationResult | None,
    claim: Claim | None = None,
    release_key: bool = False,
    actor: str | None = None,
) -> tuple[Payment, list[OutboxMessage]]:
    """Settle a pending operation with the bank's answer (``None``: still unknown) under
    the payment's row lock; an operation already settled is left as it is."""
    async with ctx.uow_factory() as uow:
        payment = await uow.payments.get_for_update(transaction_id, merchant_id=None)
        if payment is None:  # pragma: no cover - a recorded payment is never deleted
            raise PaymentNotFound
        operation = payment.pending_operation
        if operation is None or operation.operation_id != operation_id:
            return payment, []
        now = ctx.clock()
        if result is None:
            uow.payments.update(payment, reconcile_at=now + ctx.reconcile.first_delay)
            outcome = AuditOutcome.PENDING
        else:
            payment.complete_operation(succeeded=result.succeeded, at=now)
            uow.payments.update(payment)
            outcome = AuditOutcome.SUCCESS if result.succeeded else AuditOutcome.FAILURE
        publish_now = not await uow.outbox.has_unpublished(transaction_id)
        messages = write_events(ctx, uow, payment, publish_now=publish_now)
        details = {"failure_code": result.failure_code} if result and result.failure_code else {}
        uow.audit.append(
            _audit(
                payment,
                operation,
                payment.correlation_id,
                outcome=outcome,
                actor=actor,
                settle=True,
                **details,
            )
        )
        if claim is not None:
            if release_key:
                claim.release(uow)
            else:
                status = ACCEPTED if payment.pending_operation is not None else 200
                claim.complete(uow, Answer(payment_response(payment), status=status))
        await uow.commit()
    if result is not None:
        _report(ctx, payment, operation, result)
    return payment, messages


def _report(
    ctx: ServiceContext, payment: Payment, operation: PendingOperation, result: OperationResult
) -> None:
    outcome = "succeeded" if result.succeeded else "failed"
    ctx.metrics.authorization_settled(
        operation=str(operation.kind),
        outcome=outcome,
        currency=payment.currency,
        failure_code=result.failure_code,
    )
    logger.info(
        "payment %s: %s %s, the payment is %s",
        payment.transaction_id,
        operation.kind,
        outcome,
        payment.status.value,
        extra={
            "transaction_id": payment.transaction_id,
            "operation": str(operation.kind),
            "status": payment.status.value,
        },
    )


def _audit(
    payment: Payment,
    operation: PendingOperation,
    correlation_id: str | None,
    *,
    outcome: AuditOutcome,
    actor: str | None = None,
    settle: bool = False,
    **details: Any,
) -> AuditEntry:
    return AuditEntry(
        actor=actor or merchant_actor(payment.merchant_id),
        action=f"payment.{operation.kind}" + (".settle" if settle else ""),
        resource_type="payment",
        resource_id=payment.transaction_id,
        outcome=outcome,
        correlation_id=correlation_id,
        occurred_at=payment.updated_at,
        details={
            "operation_id": operation.operation_id,
            "status": payment.status.value,
            "amount": None
            if operation.amount_minor is None
            else Money(operation.amount_minor, payment.currency).format(),
            "currency": payment.currency,
            **details,
        },
    )


ExpiryRun = Callable[[], Awaitable[int]]
