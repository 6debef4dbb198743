"""Payment use cases: process a card payment, and read one.

The rules live in the :class:`~app.domain.payments.Payment` aggregate; this module orders
the steps, talks to the bank, and makes every state change durable together with its
audit row, its outbox event and, when the client sent one, its idempotency answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from app.domain.audit import AuditEntry, AuditOutcome, merchant_actor
from app.domain.cards import DECLINE_MESSAGES, card_brand, is_expired, last4
from app.domain.errors import BankUnavailable, PaymentNotFound, PaymentServiceError
from app.domain.ids import is_transaction_id, new_transaction_id
from app.domain.merchants import Merchant
from app.domain.money import Money
from app.domain.payments import CaptureMethod, Card, Payment, PaymentMethod
from app.services.context import ServiceContext
from app.services.events import outbox_message
from app.services.idempotency import Answer, Claim, IdempotencyKey, run_idempotently
from app.services.ports import AuthorizationRequest, OutboxMessage, UnitOfWork
from app.services.responses import payment_response
from app.services.telemetry import FlowSpan, span

logger = logging.getLogger(__name__)

EXPIRED_CARD = "expired_card"


@dataclass(frozen=True, slots=True)
class CardDetails:
    """The card as the customer entered it; the number and CVV never leave this object
    in clear (the CVV only goes to the bank)."""

    number: str = field(repr=False)
    cvv: str = field(repr=False)
    exp_month: int
    exp_year: int
    holder_name: str = field(repr=False)


async def record_refusal(
    ctx: ServiceContext,
    *,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: str | None,
    error: PaymentServiceError,
    correlation_id: str | None,
) -> None:
    """Append an audit row for a refused operation (its own transaction: nothing else changed)."""
    async with ctx.uow_factory() as uow:
        uow.audit.append(
            AuditEntry(
                actor=actor,
                action=action,
                resource_type=resource_type,
                resource_id=resource_id,
                outcome=AuditOutcome.DENIED,
                correlation_id=correlation_id,
                occurred_at=ctx.clock(),
                details={"code": error.code},
            )
        )
        await uow.commit()


def write_events(
    ctx: ServiceContext, uow: UnitOfWork, payment: Payment, *, publish_now: bool = True
) -> list[OutboxMessage]:
    """Stage the payment's new events in the outbox; those this process will publish
    right after the commit (``publish_now``) are leased to it."""
    messages = [outbox_message(event) for event in payment.pull_events()]
    for message in messages:
        uow.outbox.add(message, lease=ctx.publisher.reserve(message) if publish_now else None)
    return messages


async def process_payment(
    ctx: ServiceContext,
    *,
    merchant: Merchant,
    merchant_id: str,
    amount: Money,
    payment_method: PaymentMethod,
    card: CardDetails,
    description: str | None,
    metadata: dict[str, Any],
    correlation_id: str | None,
    idempotency: IdempotencyKey | None = None,
) -> Answer:
    """Authorize and record a payment; answers the payment.

    ``merchant`` is the API key's merchant, ``merchant_id`` the one the request names.
    Declines are answers, not errors. When the bank gives no answer the payment is
    recorded as ``failed`` and :class:`BankUnavailable` is raised after the commit,
    carrying the transaction id.
    """
    with span(
        "payment.process",
        merchant_id=merchant.merchant_id,
        currency=amount.currency,
        card_brand=card_brand(card.number).value,
    ) as flow:

        async def process(claim: Claim | None) -> Answer:
            try:
                with span("payment.validate_merchant"):
                    merchant.ensure_may_charge(merchant_id=merchant_id, currency=amount.currency)
            except PaymentServiceError as refusal:
                await record_refusal(
                    ctx,
                    actor=merchant_actor(merchant.merchant_id),
                    action="payment.process",
                    resource_type="payment",
                    resource_id=None,
                    error=refusal,
                    correlation_id=correlation_id,
                )
                raise
            return await _authorize_and_record(
                ctx,
                transaction_id=claim.resource_id if claim else new_transaction_id(),
                merchant=merchant,
                amount=amount,
                payment_method=payment_method,
                card=card,
                description=description,
                metadata=metadata,
                correlation_id=correlation_id,
                claim=claim,
                flow=flow,
            )

        return await run_idempotently(
            ctx,
            merchant_id=merchant.merchant_id,
            idempotency=idempotency,
            new_resource_id=new_transaction_id(),
            operation="payment",
            action=process,
        )


async def _authorize_and_record(
    ctx: ServiceContext,
    *,
    transaction_id: str,
    merchant: Merchant,
    amount: Money,
    payment_method: PaymentMethod,
    card: CardDetails,
    description: str | None,
    metadata: dict[str, Any],
    correlation_id: str | None,
    claim: Claim | None,
    flow: FlowSpan,
) -> Answer:
    flow.tag(transaction_id=transaction_id)
    with span("payment.vault"):
        kept = Card(
            brand=card_brand(card.number),
            last4=last4(card.number),
            exp_month=card.exp_month,
            exp_year=card.exp_year,
            fingerprint=ctx.vault.fingerprint(card.number),
            token=ctx.vault.encrypt(card.number, associated_data=transaction_id.encode()),
        )
    now = ctx.clock()
    payment = Payment.start(
        transaction_id=transaction_id,
        merchant_id=merchant.merchant_id,
        amount=amount,
        payment_method=payment_method,
        capture_method=CaptureMethod.AUTOMATIC,
        card=kept,
        description=description,
        metadata=metadata,
        correlation_id=correlation_id,
        at=now,
    )
    bank_error: BankUnavailable | None = None
    if is_expired(card.exp_month, card.exp_year, now.date()):
        payment.decline(
            decline_code=EXPIRED_CARD, decline_message=DECLINE_MESSAGES[EXPIRED_CARD], at=now
        )
    else:
        try:
            with span("payment.authorize") as authorization:
                result = await ctx.bank.authorize(
                    AuthorizationRequest(
                        transaction_id=transaction_id,
                        merchant_id=merchant.merchant_id,
                        amount_minor=amount.minor,
                        currency=amount.currency,
                        card_number=card.number,
                        cvv=card.cvv,
                        expiry_month=card.exp_month,
                        expiry_year=card.exp_year,
                        cardholder_name=card.holder_name,
                        correlation_id=correlation_id,
                    )
                )
                authorization.tag(
                    approved=str(result.approved).lower(), decline_code=result.decline_code
                )
        except BankUnavailable as exc:
            bank_error = exc.about(transaction_id=transaction_id)
            payment.fail(failure_code=exc.failure_code, at=now)
        else:
            if result.approved and result.authorization_code:
                payment.approve(authorization_code=result.authorization_code, at=now)
            else:
                payment.decline(
                    decline_code=result.decline_code or "card_declined",
                    decline_message=result.decline_message,
                    at=now,
                )
    body = payment_response(payment)
    with span("payment.persist"):
        async with ctx.uow_factory() as uow:
            uow.payments.add(payment)
            messages = write_events(ctx, uow, payment)
            uow.audit.append(_payment_audit(payment, outcome_failed=bank_error is not None))
            if claim is not None:
                claim.record(uow, body=body, error=bank_error, stored_error=ctx.stored_error)
            await uow.commit()
    flow.tag(
        status=payment.status.value,
        decline_code=payment.decline_code,
        failure_code=payment.failure_code,
    )
    ctx.metrics.payment_processed(
        status=payment.status.value,
        currency=payment.currency,
        amount_minor=payment.amount.minor,
        decline_code=payment.decline_code,
        failure_code=payment.failure_code,
    )
    logger.info(
        "payment %s for merchant %s: %s",
        transaction_id,
        merchant.merchant_id,
        payment.status.value,
        extra={"transaction_id": transaction_id, "status": payment.status.value},
    )
    with span("payment.publish"):
        await ctx.publisher.publish_committed(messages)
    if bank_error is not None:
        raise bank_error
    return Answer(body)


def _payment_audit(payment: Payment, *, outcome_failed: bool) -> AuditEntry:
    return AuditEntry(
        actor=merchant_actor(payment.merchant_id),
        action="payment.process",
        resource_type="payment",
        resource_id=payment.transaction_id,
        outcome=AuditOutcome.FAILURE if outcome_failed else AuditOutcome.SUCCESS,
        correlation_id=payment.correlation_id,
        occurred_at=payment.updated_at,
        details={
            "status": payment.status.value,
            "amount": payment.amount.format(),
            "currency": payment.currency,
            "decline_code": payment.decline_code,
            "failure_code": payment.failure_code,
            "card_brand": payment.card.brand.value,
            "card_last4": payment.card.last4,
        },
    )


async def get_payment(
    ctx: ServiceContext, *, merchant: Merchant, transaction_id: str
) -> dict[str, Any]:
    """The merchant's payment with its refunds; another merchant's is not found."""
    merchant.ensure_active()
    if not is_transaction_id(transaction_id):
        raise PaymentNotFound  # a malformed id is just an unknown one, answered without a query
    payment = await ctx.queries.payment(transaction_id, merchant_id=merchant.merchant_id)
    if payment is None:
        raise PaymentNotFound
    return payment_response(payment, with_refunds=True)
