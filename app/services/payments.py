"""Payment use cases: process a card payment, and read one.

No money moves without a durable record (docs/api.md, "Payments and their statuses"):

1. **Record.** The payment is written ``processing`` -- with its audit row and, when the
   client sent one, the claim on its Idempotency-Key -- in one statement, before the bank
   is asked anything. If that write fails, the bank is never called.
2. **Ask the bank**, holding no database connection.
3. **Settle.** The outcome is written with its event, its audit row and the key's answer,
   in one statement that only applies while the payment is still ``processing`` (the
   reconciler may have settled it meanwhile). A bank that certainly never received the
   request makes the payment ``failed`` (503, key forgotten); an unknown answer leaves it
   ``processing`` for the reconciler (202, key remembered).

A process killed at any instant leaves a ``processing`` payment that the reconciler
(:mod:`app.services.reconciliation`) settles from the bank's status lookup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.core.jsoncodec import dump_json
from app.domain.audit import AuditEntry, AuditOutcome, merchant_actor
from app.domain.cards import DECLINE_MESSAGES, card_brand, is_expired, last4
from app.domain.errors import (
    BankUnavailable,
    IdempotencyInProgress,
    PaymentNotFound,
    PaymentServiceError,
)
from app.domain.ids import is_transaction_id, new_transaction_id
from app.domain.merchants import Merchant
from app.domain.money import Money
from app.domain.payments import (
    CaptureMethod,
    Card,
    Payment,
    PaymentMethod,
    PaymentStatus,
)
from app.services.context import ServiceContext
from app.services.events import outbox_message
from app.services.idempotency import (
    ACCEPTED,
    Answer,
    Claim,
    IdempotencyKey,
    RunAgain,
    answer_for_taken_key,
    new_claim,
)
from app.services.ports import (
    AuthorizationRequest,
    AuthorizationResult,
    BankAnswerUnknown,
    ConcurrentUpdate,
    OutboxMessage,
    UnitOfWork,
)
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
    capture_method: CaptureMethod = CaptureMethod.AUTOMATIC,
) -> Answer:
    """Take a card payment: record it, ask the bank, settle it; answers the payment.

    ``merchant`` is the API key's merchant, ``merchant_id`` the one the request names.
    Declines are answers (200). An unknown bank answer is a 202 with the payment
    ``processing``. With ``capture_method`` manual an approval only authorizes.

    Raises:
        BankUnavailable: The bank certainly did not receive the request; the payment is
            recorded ``failed`` (its id is in the error) and the key is not remembered.
    """
    with span(
        "payment.process",
        merchant_id=merchant.merchant_id,
        currency=amount.currency,
        card_brand=card_brand(card.number).value,
    ) as flow:
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
        attempt = _Attempt(
            ctx,
            merchant=merchant,
            amount=amount,
            payment_method=payment_method,
            capture_method=capture_method,
            card=card,
            description=description,
            metadata=metadata,
            correlation_id=correlation_id,
            flow=flow,
        )
        outcome = await attempt.run(
            new_claim(merchant.merchant_id, idempotency, new_transaction_id())
        )
        if not isinstance(outcome, _KeyTaken):
            return outcome
        assert idempotency is not None  # only a claimed key can be taken
        existing = await answer_for_taken_key(
            ctx,
            merchant_id=merchant.merchant_id,
            idempotency=idempotency,
            operation="payment",
            current=lambda transaction_id: current_answer(
                ctx, merchant_id=merchant.merchant_id, transaction_id=transaction_id
            ),
        )
        if not isinstance(existing, RunAgain):
            return existing
        again = await attempt.run(
            new_claim(merchant.merchant_id, idempotency, existing.resource_id)
        )
        if isinstance(again, _KeyTaken):  # pragma: no cover - the key was just taken over
            raise IdempotencyInProgress
        return again


class _KeyTaken:
    """The request's Idempotency-Key was already claimed: nothing was recorded."""


@dataclass(slots=True)
class _Attempt:
    """One attempt at a payment, from the record to the answer."""

    ctx: ServiceContext
    merchant: Merchant
    amount: Money
    payment_method: PaymentMethod
    capture_method: CaptureMethod
    card: CardDetails
    description: str | None
    metadata: dict[str, Any]
    correlation_id: str | None
    flow: FlowSpan

    async def run(self, claim: Claim | None) -> Answer | _KeyTaken:
        ctx = self.ctx
        transaction_id = claim.resource_id if claim else new_transaction_id()
        self.flow.tag(transaction_id=transaction_id)
        payment = self._start(transaction_id)
        if is_expired(self.card.exp_month, self.card.exp_year, payment.created_at.date()):
            # Declined without asking the bank: recorded once, in its final state.
            payment.decline(
                decline_code=EXPIRED_CARD,
                decline_message=DECLINE_MESSAGES[EXPIRED_CARD],
                at=payment.created_at,
            )
            return await self._record_settled(payment, claim)
        try:
            with span("payment.record"):
                await _record(ctx, payment, claim)
        except ConcurrentUpdate:
            return _KeyTaken()
        try:
            with span("payment.authorize") as authorization:
                result = await ctx.bank.authorize(self._bank_request(payment))
                authorization.tag(
                    approved=str(result.approved).lower(), decline_code=result.decline_code
                )
        except BankUnavailable as exc:
            payment.fail(failure_code=exc.failure_code, at=ctx.clock())
            await self._settle(payment, claim)
            raise exc.about(transaction_id=transaction_id) from None
        except BankAnswerUnknown as exc:
            logger.warning(
                "payment %s: the bank's answer is unknown (%s); the reconciler settles it",
                transaction_id,
                exc.failure_code,
                extra={"transaction_id": transaction_id, "failure_code": exc.failure_code},
            )
            payment.outcome_unknown(at=ctx.clock())
            return await self._settle(payment, claim)
        apply_authorization(payment, result, at=ctx.clock())
        return await self._settle(payment, claim)

    def _start(self, transaction_id: str) -> Payment:
        card = self.card
        with span("payment.vault"):
            kept = Card(
                brand=card_brand(card.number),
                last4=last4(card.number),
                exp_month=card.exp_month,
                exp_year=card.exp_year,
                fingerprint=self.ctx.vault.fingerprint(card.number),
                token=self.ctx.vault.encrypt(card.number, associated_data=transaction_id.encode()),
            )
        return Payment.start(
            transaction_id=transaction_id,
            merchant_id=self.merchant.merchant_id,
            amount=self.amount,
            payment_method=self.payment_method,
            capture_method=self.capture_method,
            card=kept,
            description=self.description,
            metadata=self.metadata,
            correlation_id=self.correlation_id,
            at=self.ctx.clock(),
        )

    def _bank_request(self, payment: Payment) -> AuthorizationRequest:
        card = self.card
        return AuthorizationRequest(
            transaction_id=payment.transaction_id,
            merchant_id=payment.merchant_id,
            amount_minor=payment.amount.minor,
            currency=payment.currency,
            card_number=card.number,
            cvv=card.cvv,
            expiry_month=card.exp_month,
            expiry_year=card.exp_year,
            cardholder_name=card.holder_name,
            correlation_id=self.correlation_id,
            capture=payment.capture_method is CaptureMethod.AUTOMATIC,
        )

    async def _record_settled(self, payment: Payment, claim: Claim | None) -> Answer | _KeyTaken:
        answer = Answer(payment_response(payment))
        ctx = self.ctx
        try:
            async with ctx.uow_factory() as uow:
                if claim is not None:
                    claim.stage(ctx, uow, answer=answer)
                uow.payments.add(payment)
                messages = write_events(ctx, uow, payment)
                uow.audit.append(payment_audit(payment, action="payment.process"))
                await uow.commit()
        except ConcurrentUpdate:
            return _KeyTaken()
        report_outcome(ctx, payment)
        await ctx.publisher.publish_committed(messages)
        return answer

    async def _settle(self, payment: Payment, claim: Claim | None) -> Answer:
        """Write the outcome (or the unknown answer) of a recorded attempt."""
        ctx = self.ctx
        unknown = payment.status is PaymentStatus.PROCESSING
        answer = Answer(payment_response(payment), status=ACCEPTED if unknown else 200)
        try:
            with span("payment.persist"):
                messages = await settle_payment(
                    ctx,
                    payment,
                    audit=payment_audit(payment, action="payment.settle"),
                    answer_key=None
                    if claim is None or payment.status is PaymentStatus.FAILED
                    else (claim, answer),
                    release_key=claim if payment.status is PaymentStatus.FAILED else None,
                )
        except ConcurrentUpdate:
            # The reconciler settled it first, from the bank's own record: that stands.
            current = await current_answer(
                ctx, merchant_id=payment.merchant_id, transaction_id=payment.transaction_id
            )
            if current is None:  # pragma: no cover - a recorded payment is never deleted
                raise
            return current
        except Exception:
            # The outcome could not be written (the database went away after the bank
            # answered). The payment stays recorded as processing: the reconciler asks the
            # bank and settles it. The client hears exactly that.
            logger.exception(
                "payment %s: the outcome could not be recorded; the reconciler settles it",
                payment.transaction_id,
                extra={"transaction_id": payment.transaction_id},
            )
            return Answer(payment_response(_as_recorded(payment)), status=ACCEPTED)
        self.flow.tag(
            status=payment.status.value,
            decline_code=payment.decline_code,
            failure_code=payment.failure_code,
        )
        if not unknown:
            report_outcome(ctx, payment)
        with span("payment.publish"):
            await ctx.publisher.publish_committed(messages)
        return answer


async def _record(ctx: ServiceContext, payment: Payment, claim: Claim | None) -> None:
    """The payment ``processing``, its audit row and the key's claim, in one statement."""
    async with ctx.uow_factory() as uow:
        if claim is not None:
            claim.stage(ctx, uow)
        uow.payments.add(payment, reconcile_at=payment.created_at + ctx.reconcile.first_delay)
        uow.audit.append(payment_audit(payment, action="payment.process"))
        await uow.commit()


def apply_authorization(payment: Payment, result: AuthorizationResult, *, at: datetime) -> None:
    """The bank's business answer, applied to a processing payment."""
    if result.approved and result.authorization_code:
        payment.approve(authorization_code=result.authorization_code, at=at)
    else:
        payment.decline(
            decline_code=result.decline_code or "card_declined",
            decline_message=result.decline_message,
            at=at,
        )


async def settle_payment(
    ctx: ServiceContext,
    payment: Payment,
    *,
    audit: AuditEntry,
    answer_key: tuple[Claim, Answer] | None = None,
    release_key: Claim | None = None,
    after_earlier_events: bool = False,
) -> list[OutboxMessage]:
    """Write a processing payment's outcome with its events and audit row, only if it is
    still processing (else :class:`ConcurrentUpdate`, nothing written); returns the
    events to publish after the commit.

    ``after_earlier_events``: the payment may have events still waiting for the broker
    (the reconciler settles payments whose ``payment.processing`` went out first); its new
    ones are then left to the relay when an older one is unpublished, so they reach the
    broker in order.
    """
    async with ctx.uow_factory() as uow:
        publish_now = not (
            after_earlier_events and await uow.outbox.has_unpublished(payment.transaction_id)
        )
        uow.payments.update(
            payment,
            expected_status=PaymentStatus.PROCESSING,
            reconcile_at=ctx.clock() + ctx.reconcile.first_delay,
        )
        messages = write_events(ctx, uow, payment, publish_now=publish_now)
        uow.audit.append(audit)
        if answer_key is not None:
            claim, answer = answer_key
            claim.complete(uow, answer)
        if release_key is not None:
            release_key.release(uow)
        await uow.commit()
    return messages


def _as_recorded(payment: Payment) -> Payment:
    """The payment as its first write recorded it: processing, no outcome yet."""
    payment.pull_events()
    return Payment.start(
        transaction_id=payment.transaction_id,
        merchant_id=payment.merchant_id,
        amount=payment.amount,
        payment_method=payment.payment_method,
        capture_method=payment.capture_method,
        card=payment.card,
        description=payment.description,
        metadata=payment.metadata,
        correlation_id=payment.correlation_id,
        at=payment.created_at,
    )


def report_outcome(ctx: ServiceContext, payment: Payment) -> None:
    """Count and log a payment that reached its outcome."""
    ctx.metrics.payment_processed(
        status=payment.status.value,
        currency=payment.currency,
        amount_minor=payment.amount.minor,
        decline_code=payment.decline_code,
        failure_code=payment.failure_code,
    )
    logger.info(
        "payment %s for merchant %s: %s",
        payment.transaction_id,
        payment.merchant_id,
        payment.status.value,
        extra={"transaction_id": payment.transaction_id, "status": payment.status.value},
    )


def payment_audit(payment: Payment, *, action: str, actor: str | None = None) -> AuditEntry:
    """The audit row of a payment's step: recorded (pending), settled, or unknown."""
    if payment.status is PaymentStatus.PROCESSING:
        outcome = AuditOutcome.PENDING
    elif payment.status is PaymentStatus.FAILED:
        outcome = AuditOutcome.FAILURE
    else:
        outcome = AuditOutcome.SUCCESS
    return AuditEntry(
        actor=actor or merchant_actor(payment.merchant_id),
        action=action,
        resource_type="payment",
        resource_id=payment.transaction_id,
        outcome=outcome,
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


async def current_answer(
    ctx: ServiceContext, *, merchant_id: str, transaction_id: str
) -> Answer | None:
    """The payment as it stands: 202 while the bank's answer is unknown, else 200."""
    payment = await ctx.queries.payment(transaction_id, merchant_id=merchant_id)
    if payment is None:
        return None
    status = ACCEPTED if payment.status is PaymentStatus.PROCESSING else 200
    return Answer(payment_response(payment), status=status)


async def get_payment(ctx: ServiceContext, *, merchant: Merchant, transaction_id: str) -> bytes:
    """The merchant's payment with its refunds, as the JSON body of the answer; another
    merchant's is not found. From the payment view cache when it is known to be current."""
    merchant.ensure_active()
    if not is_transaction_id(transaction_id):
        raise PaymentNotFound  # a malformed id is just an unknown one, answered without a query
    merchant_id = merchant.merchant_id

    async def load() -> bytes | None:
        payment = await ctx.queries.payment(transaction_id, merchant_id=merchant_id)
        if payment is None:
            return None
        return dump_json(payment_response(payment, with_refunds=True)).encode()

    body = await ctx.payment_views.view(transaction_id, merchant_id=merchant_id, load=load)
    if body is None:
        raise PaymentNotFound
    return body
