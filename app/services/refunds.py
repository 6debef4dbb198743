"""The refund use case: return part or all of a captured payment.

1. **Reserve**, in a short transaction under the payment's row lock: the refund is
   recorded ``pending`` and its amount reserved (succeeded + pending refunds never exceed
   the capture, on any number of workers and replicas), with its audit row and the key's
   claim. A refusal (not refundable, more than remains) writes nothing but its audit row.
2. **Ask the bank**, holding no connection and no lock.
3. **Settle** under the row lock again: ``succeeded`` (the money is returned) or ``failed``
   (the reservation is released), with the events and the key's answer. An unknown
   answer leaves the refund ``pending`` and reserved for the reconciler (202).
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from app.domain.audit import AuditEntry, AuditOutcome, merchant_actor
from app.domain.errors import (
    BankUnavailable,
    IdempotencyInProgress,
    PaymentNotFound,
    PaymentServiceError,
)
from app.domain.ids import is_transaction_id, new_refund_id
from app.domain.merchants import Merchant
from app.domain.money import Money
from app.domain.payments import Payment, Refund, RefundStatus
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
from app.services.payments import record_refusal, write_events
from app.services.ports import (
    BankAnswerUnknown,
    BankRefundRequest,
    ConcurrentUpdate,
    OutboxMessage,
    RefundResult,
)
from app.services.responses import refund_response
from app.services.telemetry import FlowSpan, span

logger = logging.getLogger(__name__)


async def refund_payment(
    ctx: ServiceContext,
    *,
    merchant: Merchant,
    transaction_id: str,
    amount: Decimal | None,
    reason: str | None,
    metadata: dict[str, Any],
    correlation_id: str | None,
    idempotency: IdempotencyKey | None = None,
) -> Answer:
    """Refund ``amount`` (``None``: everything still refundable) of a captured payment;
    answers the refund with the payment's balance after it (202 while the bank's answer is
    unknown).

    Raises:
        BankUnavailable: The bank certainly did not receive the request: the refund is
            recorded ``failed``, its reservation released, the key not remembered.
    """
    merchant.ensure_active()
    if not is_transaction_id(transaction_id):
        raise PaymentNotFound

    async def attempt(claim: Claim | None) -> Answer | None:
        refund_id = claim.resource_id if claim else new_refund_id()
        with span(
            "refund.process",
            merchant_id=merchant.merchant_id,
            transaction_id=transaction_id,
            refund_id=refund_id,
        ) as flow:
            return await _Refunding(
                ctx,
                merchant=merchant,
                transaction_id=transaction_id,
                refund_id=refund_id,
                correlation_id=correlation_id,
                flow=flow,
            ).run(amount=amount, reason=reason, metadata=metadata, claim=claim)

    answer = await attempt(new_claim(merchant.merchant_id, idempotency, new_refund_id()))
    if answer is not None:
        return answer
    assert idempotency is not None  # only a claimed key can be taken
    existing = await answer_for_taken_key(
        ctx,
        merchant_id=merchant.merchant_id,
        idempotency=idempotency,
        operation="refund",
        current=lambda refund_id: current_answer(
            ctx,
            merchant_id=merchant.merchant_id,
            transaction_id=transaction_id,
            refund_id=refund_id,
        ),
    )
    if not isinstance(existing, RunAgain):
        return existing
    again = await attempt(new_claim(merchant.merchant_id, idempotency, existing.resource_id))
    if again is None:  # pragma: no cover - the key was just taken over
        raise IdempotencyInProgress
    return again


class _Refunding:
    """One attempt at a refund, from the reservation to the answer."""

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        merchant: Merchant,
        transaction_id: str,
        refund_id: str,
        correlation_id: str | None,
        flow: FlowSpan,
    ) -> None:
        self.ctx = ctx
        self.merchant = merchant
        self.transaction_id = transaction_id
        self.refund_id = refund_id
        self.correlation_id = correlation_id
        self.flow = flow

    async def run(
        self,
        *,
        amount: Decimal | None,
        reason: str | None,
        metadata: dict[str, Any],
        claim: Claim | None,
    ) -> Answer | None:
        """The answer, or ``None`` when the key was already claimed (nothing written)."""
        ctx = self.ctx
        try:
            payment, refund = await self._reserve(amount, reason, metadata, claim)
        except ConcurrentUpdate:
            return None
        except PaymentServiceError as refusal:
            if await already_claimed(ctx, claim):
                return None
            await record_refusal(
                ctx,
                actor=merchant_actor(self.merchant.merchant_id),
                action="refund.create",
                resource_type="payment",
                resource_id=self.transaction_id,
                error=refusal,
                correlation_id=self.correlation_id,
            )
            raise
        try:
            with span("refund.authorize") as bank_refund:
                result = await ctx.bank.refund(
                    BankRefundRequest(
                        refund_id=refund.refund_id,
                        transaction_id=self.transaction_id,
                        authorization_code=payment.authorization_code,
                        amount_minor=refund.amount.minor,
                        currency=refund.amount.currency,
                        correlation_id=self.correlation_id,
                    )
                )
                bank_refund.tag(
                    succeeded=str(result.succeeded).lower(), failure_code=result.failure_code
                )
        except BankUnavailable as exc:
            failed = RefundResult(succeeded=False, failure_code=exc.failure_code)
            await self._settle(failed, claim, payment, refund, release_key=True)
            raise exc.about(
                transaction_id=self.transaction_id, refund_id=refund.refund_id
            ) from None
        except BankAnswerUnknown:
            return await self._settle(None, claim, payment, refund)
        return await self._settle(result, claim, payment, refund)

    async def _reserve(
        self,
        amount: Decimal | None,
        reason: str | None,
        metadata: dict[str, Any],
        claim: Claim | None,
    ) -> tuple[Payment, Refund]:
        ctx = self.ctx
        async with ctx.uow_factory() as uow:
            with span("refund.reserve"):
                payment = await uow.payments.get_for_update(
                    self.transaction_id, merchant_id=self.merchant.merchant_id
                )
                if payment is None:
                    raise PaymentNotFound
                self.flow.tag(currency=payment.currency)
                now = ctx.clock()
                refund = payment.request_refund(
                    refund_id=self.refund_id,
                    amount=None if amount is None else Money.from_major(amount, payment.currency),
                    reason=reason,
                    metadata=metadata,
                    correlation_id=self.correlation_id,
                    at=now,
                )
                if claim is not None:
                    claim.stage(ctx, uow)
                uow.refunds.add(refund, reconcile_at=now + ctx.reconcile.first_delay)
                uow.payments.update(payment)
                uow.audit.append(refund_audit(refund, payment, action="refund.create"))
                await uow.commit()
        return payment, refund

    async def _settle(
        self,
        result: RefundResult | None,
        claim: Claim | None,
        reserved_payment: Payment,
        reserved: Refund,
        *,
        release_key: bool = False,
    ) -> Answer:
        """Write the bank's answer (``None``: unknown) under the payment's row lock."""
        ctx = self.ctx
        try:
            with span("refund.persist"):
                settled = await settle_refund(
                    ctx,
                    transaction_id=self.transaction_id,
                    refund_id=self.refund_id,
                    result=result,
                    claim=claim,
                    release_key=release_key,
                )
        except Exception:
            # The outcome could not be written (the database went away after the bank
            # answered): the refund stays pending and reserved, and the reconciler asks
            # the bank and settles it. The client hears exactly that.
            logger.exception(
                "refund %s: the outcome could not be recorded; the reconciler settles it",
                self.refund_id,
                extra={"refund_id": self.refund_id, "transaction_id": self.transaction_id},
            )
            return Answer(refund_response(reserved, reserved_payment), status=ACCEPTED)
        if settled is None:  # pragma: no cover - a reserved refund is never deleted
            raise PaymentNotFound
        payment, refund, messages = settled
        self.flow.tag(status=refund.status.value, failure_code=refund.failure_code)
        with span("refund.publish"):
            await ctx.publisher.publish_committed(messages)
        status = ACCEPTED if refund.status is RefundStatus.PENDING else 200
        return Answer(refund_response(refund, payment), status=status)


async def settle_refund(
    ctx: ServiceContext,
    *,
    transaction_id: str,
    refund_id: str,
    result: RefundResult | None,
    claim: Claim | None = None,
    release_key: bool = False,
    actor: str | None = None,
) -> tuple[Payment, Refund, list[OutboxMessage]] | None:
    """Settle a pending refund with the bank's answer (``None``: still unknown) under its
    payment's row lock. A refund already settled (by the reconciler, or its request) is
    left as it is. Returns the payment, the refund and the events to publish."""
    async with ctx.uow_factory() as uow:
        payment = await uow.payments.get_for_update(transaction_id, merchant_id=None)
        refund = None if payment is None else payment.refund(refund_id)
        if payment is None or refund is None:
            return None
        now = ctx.clock()
        if refund.status is not RefundStatus.PENDING:
            return payment, refund, []
        if result is None:
            payment.refund_outcome_unknown(refund, at=now)
            uow.refunds.update(refund, reconcile_at=now + ctx.reconcile.first_delay)
        else:
            payment.settle_refund(
                refund,
                succeeded=result.succeeded,
                bank_reference=result.bank_reference,
                failure_code=result.failure_code,
                at=now,
            )
            uow.refunds.update(refund)
            uow.payments.update(payment)
        # Published now only if no older event of the payment is still waiting (the row
        # lock keeps newer ones from being written meanwhile): per-payment order.
        publish_now = not await uow.outbox.has_unpublished(transaction_id)
        messages = write_events(ctx, uow, payment, publish_now=publish_now)
        uow.audit.append(refund_audit(refund, payment, action="refund.settle", actor=actor))
        if claim is not None:
            if release_key:
                claim.release(uow)
            else:
                status = ACCEPTED if refund.status is RefundStatus.PENDING else 200
                claim.complete(uow, Answer(refund_response(refund, payment), status=status))
        await uow.commit()
    if refund.status is not RefundStatus.PENDING:
        ctx.metrics.refund_processed(
            status=refund.status.value,
            currency=refund.amount.currency,
            amount_minor=refund.amount.minor,
            failure_code=refund.failure_code,
        )
    return payment, refund, messages


def refund_audit(
    refund: Refund, payment: Payment, *, action: str, actor: str | None = None
) -> AuditEntry:
    """The audit row of a refund's step: reserved (pending), succeeded or failed."""
    outcome = {
        RefundStatus.PENDING: AuditOutcome.PENDING,
        RefundStatus.SUCCEEDED: AuditOutcome.SUCCESS,
        RefundStatus.FAILED: AuditOutcome.FAILURE,
    }[refund.status]
    return AuditEntry(
        actor=actor or merchant_actor(payment.merchant_id),
        action=action,
        resource_type="refund",
        resource_id=refund.refund_id,
        outcome=outcome,
        correlation_id=refund.correlation_id,
        occurred_at=refund.updated_at,
        details={
            "transaction_id": payment.transaction_id,
            "amount": refund.amount.format(),
            "currency": refund.amount.currency,
            "status": refund.status.value,
            "payment_status": payment.status.value,
            "failure_code": refund.failure_code,
        },
    )


async def current_answer(
    ctx: ServiceContext, *, merchant_id: str, transaction_id: str, refund_id: str
) -> Answer | None:
    """The refund as it stands: 202 while the bank's answer is unknown, else 200."""
    payment = await ctx.queries.payment(transaction_id, merchant_id=merchant_id)
    refund = None if payment is None else payment.refund(refund_id)
    if payment is None or refund is None:
        return None
    status = ACCEPTED if refund.status is RefundStatus.PENDING else 200
    return Answer(refund_response(refund, payment), status=status)
