"""Payment use cases: process, refund and read, each in one unit of work.

The rules live in the domain (money, cards, the state machine); this module orders the
steps, talks to the bank, and makes every state change durable together with its audit
row, its outbox event and, when the client sent one, its idempotency record.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from app.adapters.bank.base import AuthorizationRequest, AuthorizationResult, RefundRequest
from app.adapters.db.models import Refund, Transaction
from app.adapters.db.unit_of_work import UnitOfWork
from app.domain.cards import DECLINE_MESSAGES, card_brand, is_expired, last4
from app.domain.errors import (
    BankUnavailable,
    CurrencyNotSupported,
    MerchantInactive,
    MerchantMismatch,
    PaymentNotFound,
    PaymentServiceError,
)
from app.domain.events import event_type_for_payment, event_type_for_refund
from app.domain.money import Money
from app.domain.payments import PaymentStatus, RefundStatus, decide_refund, transition
from app.services.audit import audit_entry, merchant_actor
from app.services.context import ServiceContext
from app.services.events import payment_outcome_event, refund_event
from app.services.idempotency import IdempotencyClaim
from app.services.telemetry import FlowSpan, span
from app.services.views import payment_view, refund_view

logger = logging.getLogger(__name__)

EXPIRED_CARD = "expired_card"


TRANSACTION_ID_SHAPE = re.compile(r"^txn_[0-9a-f]{32}$")
"""What every id from :func:`new_transaction_id` looks like."""


def new_transaction_id() -> str:
    """A fresh, unguessable transaction id."""
    return f"txn_{uuid.uuid4().hex}"


def new_refund_id() -> str:
    """A fresh, unguessable refund id."""
    return f"re_{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class MerchantPrincipal:
    """The merchant an API key authenticates, as the use cases need it."""

    merchant_id: str
    active: bool
    currencies: frozenset[str]


@dataclass(frozen=True, slots=True)
class CardDetails:
    """Card data from the request; the number and CVV never leave this object in clear."""

    number: str = field(repr=False)
    cvv: str = field(repr=False)
    exp_month: int
    exp_year: int
    holder_name: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ProcessPayment:
    """A validated request to take a payment."""

    merchant_id: str
    amount: Money
    payment_method: str
    card: CardDetails
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefundPayment:
    """A validated request to refund (part of) a payment; no amount means the rest."""

    transaction_id: str
    amount: Decimal | None = None
    reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def check_merchant(merchant: MerchantPrincipal, *, merchant_id: str, currency: str) -> None:
    """SPEC §1 merchant validation for a new payment.

    Raises:
        MerchantMismatch: The body names another merchant than the key's.
        MerchantInactive: The merchant is disabled.
        CurrencyNotSupported: The merchant does not accept the currency.
    """
    if merchant_id != merchant.merchant_id:
        raise MerchantMismatch
    if not merchant.active:
        raise MerchantInactive
    if currency not in merchant.currencies:
        raise CurrencyNotSupported(
            f"Merchant {merchant.merchant_id} does not accept {currency}; accepted: "
            + ", ".join(sorted(merchant.currencies))
            + "."
        )


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
            audit_entry(
                actor=actor,
                action=action,
                resource_type=resource_type,
                resource_id=resource_id,
                outcome="denied",
                correlation_id=correlation_id,
                occurred_at=ctx.clock(),
                details={"code": error.code},
            )
        )
        await uow.commit()


async def process_payment(
    ctx: ServiceContext,
    *,
    merchant: MerchantPrincipal,
    command: ProcessPayment,
    correlation_id: str | None,
    claim: IdempotencyClaim | None = None,
) -> dict[str, Any]:
    """Authorize and record a payment; returns the payment view.

    Declines are results, not errors. When the bank gives no answer the payment is
    recorded as ``failed`` and :class:`BankUnavailable` is raised after the commit,
    carrying the transaction id.
    """
    with span(
        "payment.process",
        merchant_id=merchant.merchant_id,
        currency=command.amount.currency,
        card_brand=card_brand(command.card.number).value,
    ) as flow:
        return await _process_payment(
            ctx,
            merchant=merchant,
            command=command,
            correlation_id=correlation_id,
            claim=claim,
            flow=flow,
        )


async def _process_payment(
    ctx: ServiceContext,
    *,
    merchant: MerchantPrincipal,
    command: ProcessPayment,
    correlation_id: str | None,
    claim: IdempotencyClaim | None,
    flow: FlowSpan,
) -> dict[str, Any]:
    try:
        with span("payment.validate_merchant"):
            check_merchant(
                merchant, merchant_id=command.merchant_id, currency=command.amount.currency
            )
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

    transaction_id = claim.resource_id if claim else new_transaction_id()
    flow.tag(transaction_id=transaction_id)
    card = command.card
    with span("payment.vault"):
        fingerprint = ctx.vault.fingerprint(card.number)
        ciphertext = ctx.vault.encrypt(card.number, associated_data=transaction_id.encode())
    now = ctx.clock()
    bank_error: BankUnavailable | None = None
    if is_expired(card.exp_month, card.exp_year, now.date()):
        result = AuthorizationResult(
            approved=False,
            decline_code=EXPIRED_CARD,
            decline_message=DECLINE_MESSAGES[EXPIRED_CARD],
        )
    else:
        try:
            with span("payment.authorize") as authorization:
                result = await ctx.bank.authorize(
                    AuthorizationRequest(
                        transaction_id=transaction_id,
                        merchant_id=merchant.merchant_id,
                        amount_minor=command.amount.minor,
                        currency=command.amount.currency,
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
            result = AuthorizationResult(approved=False)

    if bank_error is not None:
        status = PaymentStatus.FAILED
    elif result.approved:
        status = PaymentStatus.CAPTURED
    else:
        status = PaymentStatus.DECLINED
    status = transition(None, status)

    now = ctx.clock()
    txn = Transaction(
        transaction_id=transaction_id,
        merchant_id=merchant.merchant_id,
        amount_minor=command.amount.minor,
        refunded_minor=0,
        currency=command.amount.currency,
        status=status.value,
        payment_method=command.payment_method,
        card_brand=card_brand(card.number).value,
        card_last4=last4(card.number),
        card_exp_month=card.exp_month,
        card_exp_year=card.exp_year,
        card_fingerprint=fingerprint,
        card_ciphertext=ciphertext,
        authorization_code=result.authorization_code if result.approved else None,
        decline_code=result.decline_code if status is PaymentStatus.DECLINED else None,
        decline_message=result.decline_message if status is PaymentStatus.DECLINED else None,
        failure_code=bank_error.failure_code if bank_error else None,
        description=command.description,
        metadata_=command.metadata,
        correlation_id=correlation_id,
        created_at=now,
        updated_at=now,
    )
    event = payment_outcome_event(txn, event_type=event_type_for_payment(status), occurred_at=now)
    view = payment_view(txn)
    ctx.publisher.reserve(event)  # a new payment has no older event to wait for
    with span("payment.persist"):
        async with ctx.uow_factory() as uow:
            uow.payments.add(txn)
            uow.outbox.add(event)
            uow.audit.append(
                audit_entry(
                    actor=merchant_actor(merchant.merchant_id),
                    action="payment.process",
                    resource_type="payment",
                    resource_id=transaction_id,
                    outcome="failure" if bank_error else "success",
                    correlation_id=correlation_id,
                    occurred_at=now,
                    details={
                        "status": status.value,
                        "amount": command.amount.format(),
                        "currency": command.amount.currency,
                        "decline_code": txn.decline_code,
                        "failure_code": txn.failure_code,
                        "card_brand": txn.card_brand,
                        "card_last4": txn.card_last4,
                    },
                )
            )
            if claim is not None:
                claim.record(uow, body=view, error=bank_error)
            await uow.commit()
    flow.tag(status=status.value, decline_code=txn.decline_code, failure_code=txn.failure_code)
    ctx.metrics.payment_processed(
        status=status.value,
        currency=txn.currency,
        amount_minor=txn.amount_minor,
        decline_code=txn.decline_code,
        failure_code=txn.failure_code,
    )
    logger.info(
        "payment %s for merchant %s: %s",
        transaction_id,
        merchant.merchant_id,
        status.value,
        extra={"transaction_id": transaction_id, "status": status.value},
    )
    with span("payment.publish"):
        await ctx.publisher.publish_committed([event])
    if bank_error is not None:
        raise bank_error
    return view


async def _load_for_refund(
    uow: UnitOfWork, *, merchant_id: str, transaction_id: str
) -> Transaction:
    txn = await uow.payments.get_for_update(transaction_id, merchant_id=merchant_id)
    if txn is None:
        raise PaymentNotFound
    return txn


async def refund_payment(
    ctx: ServiceContext,
    *,
    merchant: MerchantPrincipal,
    command: RefundPayment,
    correlation_id: str | None,
    claim: IdempotencyClaim | None = None,
) -> dict[str, Any]:
    """Refund part or all of a captured payment; returns the refund view.

    The payment row stays locked from the balance check to the commit, so concurrent
    refunds on one payment (from any worker or replica) are decided one after another
    and their sum never exceeds the capture.
    """
    refund_id = claim.resource_id if claim else new_refund_id()
    with span(
        "refund.process",
        merchant_id=merchant.merchant_id,
        transaction_id=command.transaction_id,
        refund_id=refund_id,
    ) as flow:
        return await _refund_payment(
            ctx,
            merchant=merchant,
            command=command,
            correlation_id=correlation_id,
            claim=claim,
            refund_id=refund_id,
            flow=flow,
        )


async def _refund_payment(
    ctx: ServiceContext,
    *,
    merchant: MerchantPrincipal,
    command: RefundPayment,
    correlation_id: str | None,
    claim: IdempotencyClaim | None,
    refund_id: str,
    flow: FlowSpan,
) -> dict[str, Any]:
    actor = merchant_actor(merchant.merchant_id)
    bank_error: BankUnavailable | None = None
    try:
        async with ctx.uow_factory() as uow:
            with span("refund.lock"):
                txn = await _load_for_refund(
                    uow, merchant_id=merchant.merchant_id, transaction_id=command.transaction_id
                )
                flow.tag(currency=txn.currency)
                captured = Money(txn.amount_minor, txn.currency)
                requested = (
                    Money.from_major(command.amount, txn.currency)
                    if command.amount is not None
                    else None
                )
                decision = decide_refund(
                    status=PaymentStatus(txn.status),
                    captured=captured,
                    refunded_minor=txn.refunded_minor,
                    requested=requested,
                )
            try:
                with span("refund.authorize") as bank_refund:
                    bank_result = await ctx.bank.refund(
                        RefundRequest(
                            refund_id=refund_id,
                            transaction_id=txn.transaction_id,
                            authorization_code=txn.authorization_code,
                            amount_minor=decision.amount.minor,
                            currency=txn.currency,
                            correlation_id=correlation_id,
                        )
                    )
                    bank_refund.tag(
                        succeeded=str(bank_result.succeeded).lower(),
                        failure_code=bank_result.failure_code,
                    )
                succeeded = bank_result.succeeded
                bank_reference = bank_result.bank_reference
                failure_code = bank_result.failure_code
            except BankUnavailable as exc:
                bank_error = exc.about(transaction_id=txn.transaction_id, refund_id=refund_id)
                succeeded, bank_reference, failure_code = False, None, exc.failure_code

            with span("refund.persist"):
                now = ctx.clock()
                refund_status = RefundStatus.SUCCEEDED if succeeded else RefundStatus.FAILED
                if succeeded:
                    txn.status = decision.new_status.value
                    txn.refunded_minor = decision.new_refunded_minor
                    txn.updated_at = now
                    uow.payments.update_balance(txn)
                refund = Refund(
                    refund_id=refund_id,
                    transaction_id=txn.transaction_id,
                    amount_minor=decision.amount.minor,
                    currency=txn.currency,
                    status=refund_status.value,
                    reason=command.reason,
                    metadata_=command.metadata,
                    bank_reference=bank_reference,
                    failure_code=failure_code,
                    correlation_id=correlation_id,
                    created_at=now,
                )
                event = refund_event(
                    refund, txn, event_type=event_type_for_refund(refund_status), occurred_at=now
                )
                view = refund_view(refund, txn)
                # Publish it now only if it cannot overtake an older event of the payment
                # (the row lock keeps newer ones from being written meanwhile).
                if not await uow.outbox.has_unpublished(txn.transaction_id):
                    ctx.publisher.reserve(event)
                uow.refunds.add(refund)
                uow.outbox.add(event)
                uow.audit.append(
                    audit_entry(
                        actor=actor,
                        action="refund.create",
                        resource_type="refund",
                        resource_id=refund_id,
                        outcome="success" if succeeded else "failure",
                        correlation_id=correlation_id,
                        occurred_at=now,
                        details={
                            "transaction_id": txn.transaction_id,
                            "amount": decision.amount.format(),
                            "currency": txn.currency,
                            "payment_status": txn.status,
                            "failure_code": failure_code,
                        },
                    )
                )
                if claim is not None:
                    claim.record(uow, body=view, error=bank_error)
                await uow.commit()
    except PaymentServiceError as refusal:
        if refusal is bank_error:
            raise
        await record_refusal(
            ctx,
            actor=actor,
            action="refund.create",
            resource_type="payment",
            resource_id=command.transaction_id,
            error=refusal,
            correlation_id=correlation_id,
        )
        raise
    flow.tag(status=refund_status.value, failure_code=failure_code)
    ctx.metrics.refund_processed(
        status=refund_status.value,
        currency=refund.currency,
        amount_minor=refund.amount_minor,
        failure_code=failure_code,
    )
    with span("refund.publish"):
        await ctx.publisher.publish_committed([event])
    if bank_error is not None:
        raise bank_error
    return view


async def get_payment(
    ctx: ServiceContext, *, merchant: MerchantPrincipal, transaction_id: str
) -> dict[str, Any]:
    """The merchant's payment with its refunds; another merchant's is not found."""
    async with ctx.uow_factory() as uow:
        await uow.without_transaction()  # one statement: its own snapshot
        txn = await uow.payments.get(
            transaction_id, merchant_id=merchant.merchant_id, with_refunds=True
        )
        if txn is None:
            raise PaymentNotFound
        return payment_view(txn, refunds=list(txn.refunds))
