"""The refund use case: return part or all of a captured payment.

The payment row stays locked from the balance check to the commit, so concurrent refunds
on one payment (from any worker or replica) are decided one after another and their sum
never exceeds the capture.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.domain.audit import AuditEntry, AuditOutcome, merchant_actor
from app.domain.errors import BankUnavailable, PaymentNotFound, PaymentServiceError
from app.domain.ids import is_transaction_id, new_refund_id
from app.domain.merchants import Merchant
from app.domain.money import Money
from app.domain.payments import Payment, Refund, RefundStatus
from app.services.context import ServiceContext
from app.services.idempotency import Answer, Claim, IdempotencyKey, run_idempotently
from app.services.payments import record_refusal, write_events
from app.services.ports import BankRefundRequest
from app.services.responses import refund_response
from app.services.telemetry import FlowSpan, span


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
    answers the refund with the payment's balance after it."""
    merchant.ensure_active()
    if not is_transaction_id(transaction_id):
        raise PaymentNotFound

    async def refund(claim: Claim | None) -> Answer:
        refund_id = claim.resource_id if claim else new_refund_id()
        with span(
            "refund.process",
            merchant_id=merchant.merchant_id,
            transaction_id=transaction_id,
            refund_id=refund_id,
        ) as flow:
            try:
                return await _refund(
                    ctx,
                    merchant=merchant,
                    transaction_id=transaction_id,
                    refund_id=refund_id,
                    amount=amount,
                    reason=reason,
                    metadata=metadata,
                    correlation_id=correlation_id,
                    claim=claim,
                    flow=flow,
                )
            except BankUnavailable:
                raise
            except PaymentServiceError as refusal:
                await record_refusal(
                    ctx,
                    actor=merchant_actor(merchant.merchant_id),
                    action="refund.create",
                    resource_type="payment",
                    resource_id=transaction_id,
                    error=refusal,
                    correlation_id=correlation_id,
                )
                raise

    return await run_idempotently(
        ctx,
        merchant_id=merchant.merchant_id,
        idempotency=idempotency,
        new_resource_id=new_refund_id(),
        operation="refund",
        action=refund,
    )


async def _refund(
    ctx: ServiceContext,
    *,
    merchant: Merchant,
    transaction_id: str,
    refund_id: str,
    amount: Decimal | None,
    reason: str | None,
    metadata: dict[str, Any],
    correlation_id: str | None,
    claim: Claim | None,
    flow: FlowSpan,
) -> Answer:
    bank_error: BankUnavailable | None = None
    async with ctx.uow_factory() as uow:
        with span("refund.lock"):
            payment = await uow.payments.get_for_update(
                transaction_id, merchant_id=merchant.merchant_id
            )
            if payment is None:
                raise PaymentNotFound
            flow.tag(currency=payment.currency)
            refund = payment.request_refund(
                refund_id=refund_id,
                amount=None if amount is None else Money.from_major(amount, payment.currency),
                reason=reason,
                metadata=metadata,
                correlation_id=correlation_id,
                at=ctx.clock(),
            )
        try:
            with span("refund.authorize") as bank_refund:
                result = await ctx.bank.refund(
                    BankRefundRequest(
                        refund_id=refund_id,
                        transaction_id=transaction_id,
                        authorization_code=payment.authorization_code,
                        amount_minor=refund.amount.minor,
                        currency=payment.currency,
                        correlation_id=correlation_id,
                    )
                )
                bank_refund.tag(
                    succeeded=str(result.succeeded).lower(), failure_code=result.failure_code
                )
        except BankUnavailable as exc:
            bank_error = exc.about(transaction_id=transaction_id, refund_id=refund_id)
            payment.settle_refund(
                refund,
                succeeded=False,
                bank_reference=None,
                failure_code=exc.failure_code,
                at=ctx.clock(),
            )
        else:
            payment.settle_refund(
                refund,
                succeeded=result.succeeded,
                bank_reference=result.bank_reference,
                failure_code=result.failure_code,
                at=ctx.clock(),
            )
        with span("refund.persist"):
            body = refund_response(refund, payment)
            # Publish now only if no older event of the payment is still waiting (the row
            # lock keeps newer ones from being written meanwhile): per-payment order.
            publish_now = not await uow.outbox.has_unpublished(transaction_id)
            uow.refunds.add(refund)
            uow.payments.update(payment)
            messages = write_events(ctx, uow, payment, publish_now=publish_now)
            uow.audit.append(_refund_audit(refund, payment))
            if claim is not None:
                claim.record(uow, body=body, error=bank_error, stored_error=ctx.stored_error)
            await uow.commit()
    flow.tag(status=refund.status.value, failure_code=refund.failure_code)
    ctx.metrics.refund_processed(
        status=refund.status.value,
        currency=refund.amount.currency,
        amount_minor=refund.amount.minor,
        failure_code=refund.failure_code,
    )
    with span("refund.publish"):
        await ctx.publisher.publish_committed(messages)
    if bank_error is not None:
        raise bank_error
    return Answer(body)


def _refund_audit(refund: Refund, payment: Payment) -> AuditEntry:
    return AuditEntry(
        actor=merchant_actor(payment.merchant_id),
        action="refund.create",
        resource_type="refund",
        resource_id=refund.refund_id,
        outcome=(
            AuditOutcome.SUCCESS
            if refund.status is RefundStatus.SUCCEEDED
            else AuditOutcome.FAILURE
        ),
        correlation_id=refund.correlation_id,
        occurred_at=refund.updated_at,
        details={
            "transaction_id": payment.transaction_id,
            "amount": refund.amount.format(),
            "currency": refund.amount.currency,
            "payment_status": payment.status.value,
            "failure_code": refund.failure_code,
        },
    )
