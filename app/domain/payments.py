"""The Payment aggregate: its state machine, its money arithmetic and the events it emits.

A payment is recorded ``processing`` before the bank is asked, then moves once to the
bank's outcome (``authorized`` or ``captured``, ``declined``, ``failed``). An authorized
payment is captured, voided or expires; captured money is refunded, partially or in full.
Refunds belong to their payment: a refund first *reserves* its amount (``pending``), then
settles ``succeeded`` or ``failed``; succeeded plus pending refunds never exceed what was
captured. Every rule is here and nowhere else: services, responses, events, the API schema
and the database CHECK constraints all take their status sets from this module.

Every state change appends a :class:`~app.domain.events.DomainEvent`; the service takes
them with :meth:`Payment.pull_events` and writes them with the change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from app.domain.cards import CardBrand
from app.domain.errors import (
    InvalidAmount,
    InvalidTransition,
    PaymentNotCapturable,
    PaymentNotRefundable,
    PaymentNotVoidable,
    PaymentServiceError,
    RefundExceedsBalance,
)
from app.domain.events import DomainEvent, EventType
from app.domain.money import Money, format_minor
from app.domain.timestamps import iso


class PaymentStatus(StrEnum):
    """Where a payment stands (docs/api.md, "Payments and their statuses")."""

    PROCESSING = "processing"
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    DECLINED = "declined"
    FAILED = "failed"
    VOIDED = "voided"
    EXPIRED = "expired"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class RefundStatus(StrEnum):
    """Where a refund stands."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CaptureMethod(StrEnum):
    """Whether an approval captures at once or waits for an explicit capture."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"


class OperationKind(StrEnum):
    """What is asked of the bank about an authorization."""

    CAPTURE = "capture"
    VOID = "void"
    EXPIRE = "expire"
    """A void the service asks for itself, once ``AUTHORIZATION_TTL`` has passed."""


class PaymentMethod(StrEnum):
    """How the customer pays."""

    CREDIT_CARD = "credit_card"
    DEBIT_CARD = "debit_card"


PAYMENT_TRANSITIONS: Final[Mapping[PaymentStatus, frozenset[PaymentStatus]]] = MappingProxyType(
    {
        PaymentStatus.PROCESSING: frozenset(
            {
                PaymentStatus.AUTHORIZED,
                PaymentStatus.CAPTURED,
                PaymentStatus.DECLINED,
                PaymentStatus.FAILED,
            }
        ),
        PaymentStatus.AUTHORIZED: frozenset(
            {PaymentStatus.CAPTURED, PaymentStatus.VOIDED, PaymentStatus.EXPIRED}
        ),
        PaymentStatus.CAPTURED: frozenset(
            {PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
        ),
        PaymentStatus.PARTIALLY_REFUNDED: frozenset(
            {PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
        ),
        PaymentStatus.DECLINED: frozenset(),
        PaymentStatus.FAILED: frozenset(),
        PaymentStatus.VOIDED: frozenset(),
        PaymentStatus.EXPIRED: frozenset(),
        PaymentStatus.REFUNDED: frozenset(),
    }
)
"""Status -> the statuses a payment in it may move to."""

REFUND_TRANSITIONS: Final[Mapping[RefundStatus, frozenset[RefundStatus]]] = MappingProxyType(
    {
        RefundStatus.PENDING: frozenset({RefundStatus.SUCCEEDED, RefundStatus.FAILED}),
        RefundStatus.SUCCEEDED: frozenset(),
        RefundStatus.FAILED: frozenset(),
    }
)
"""Refund status -> the statuses a refund in it may move to."""

CAPTURED_STATUSES: Final = frozenset(
    {PaymentStatus.CAPTURED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)
"""Statuses in which money was captured (and may have been refunded since)."""

REFUNDABLE_STATUSES: Final = frozenset({PaymentStatus.CAPTURED, PaymentStatus.PARTIALLY_REFUNDED})
"""Statuses in which a payment may still have money to refund."""

REFUNDED_STATUSES: Final = frozenset({PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED})
"""Statuses that say some money was refunded."""

FINAL_STATUSES: Final = frozenset(status for status, nxt in PAYMENT_TRANSITIONS.items() if not nxt)
"""Statuses a payment never leaves."""

BANK_NO_RECORD: Final = "bank_no_record"
"""The failure code of an attempt the bank says it never received (found by the reconciler)."""

AUTHORIZATION_CODE_MAX_LENGTH: Final = 64
DECLINE_CODE_MAX_LENGTH: Final = 64
DECLINE_MESSAGE_MAX_LENGTH: Final = 255
FAILURE_CODE_MAX_LENGTH: Final = 64
BANK_REFERENCE_MAX_LENGTH: Final = 64
DESCRIPTION_MAX_LENGTH: Final = 500
REFUND_REASON_MAX_LENGTH: Final = 500
"""How long each text a payment keeps may be (the database columns have these sizes)."""


@dataclass(frozen=True, slots=True)
class Card:
    """What is kept of a card: never the number in clear, never the CVV.

    Attributes:
        brand: The network, from the number's prefix.
        last4: The number's last four digits.
        exp_month: Expiry month, 1-12.
        exp_year: Expiry year, four digits.
        fingerprint: Keyed digest of the number (the same card matches across payments).
        token: The number encrypted by the card vault.
    """

    brand: CardBrand
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str = field(repr=False)
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class PendingOperation:
    """A capture, void or expiry recorded before the bank is asked, until it settles.

    An authorized payment has at most one: the first one recorded wins, every other
    capture, void or expiry is refused until it has settled.
    """

    kind: OperationKind
    operation_id: str
    requested_at: datetime
    amount_minor: int | None = None
    """What a capture takes (the rest of the authorization is released)."""


@dataclass(eq=False, slots=True)
class Refund:
    """Money returned against a captured payment; owned by its :class:`Payment`."""

    refund_id: str
    transaction_id: str
    amount: Money
    status: RefundStatus
    reason: str | None
    metadata: dict[str, Any]
    correlation_id: str | None
    created_at: datetime
    updated_at: datetime
    bank_reference: str | None = None
    failure_code: str | None = None

    def _settle(self, new: RefundStatus, at: datetime) -> None:
        if new not in REFUND_TRANSITIONS[self.status]:
            raise InvalidTransition(f"Cannot move a {self.status} refund to {new}.")
        self.status = new
        self.updated_at = at


@dataclass(eq=False, slots=True)
class Payment:
    """A card payment and its refunds: the one place its rules are decided.

    Amounts are kept in minor units of the payment's currency: ``captured_minor`` is what
    was captured, ``refunded_minor`` what refunds returned, ``pending_refund_minor`` what
    pending refunds have reserved.
    """

    transaction_id: str
    merchant_id: str
    amount: Money
    payment_method: PaymentMethod
    capture_method: CaptureMethod
    card: Card
    status: PaymentStatus
    created_at: datetime
    updated_at: datetime
    captured_minor: int = 0
    refunded_minor: int = 0
    pending_refund_minor: int = 0
    authorization_code: str | None = None
    decline_code: str | None = None
    decline_message: str | None = None
    failure_code: str | None = None
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    pending_operation: PendingOperation | None = None
    refunds: list[Refund] = field(default_factory=list)
    _events: list[DomainEvent] = field(default_factory=list, repr=False)

    @classmethod
    def start(
        cls,
        *,
        transaction_id: str,
        merchant_id: str,
        amount: Money,
        payment_method: PaymentMethod,
        capture_method: CaptureMethod,
        card: Card,
        description: str | None,
        metadata: dict[str, Any],
        correlation_id: str | None,
        at: datetime,
    ) -> Payment:
        """A new payment, ``processing``: recorded before the bank is asked."""
        return cls(
            transaction_id=transaction_id,
            merchant_id=merchant_id,
            amount=amount,
            payment_method=payment_method,
            capture_method=capture_method,
            card=card,
            status=PaymentStatus.PROCESSING,
            description=description,
            metadata=metadata,
            correlation_id=correlation_id,
            created_at=at,
            updated_at=at,
        )

    # -- what the payment's numbers say --------------------------------------------------

    @property
    def currency(self) -> str:
        """The payment's ISO 4217 currency."""
        return self.amount.currency

    @property
    def captured(self) -> Money:
        """What was captured (zero until the payment is captured)."""
        return Money(self.captured_minor, self.currency)

    @property
    def refunded(self) -> Money:
        """What succeeded refunds returned."""
        return Money(self.refunded_minor, self.currency)

    @property
    def refundable(self) -> Money:
        """What a new refund may still take: captured - succeeded - pending refunds."""
        if self.status not in REFUNDABLE_STATUSES:
            return Money.zero(self.currency)
        return Money(
            self.captured_minor - self.refunded_minor - self.pending_refund_minor, self.currency
        )

    @property
    def is_final(self) -> bool:
        """Whether the payment can never change again."""
        return self.status in FINAL_STATUSES

    def refund(self, refund_id: str) -> Refund | None:
        """The refund with this id among the loaded ones."""
        return next((r for r in self.refunds if r.refund_id == refund_id), None)

    # -- the bank's answer to the authorization -------------------------------------------

    def approve(self, *, authorization_code: str, at: datetime) -> None:
        """The bank approved: ``captured`` (automatic capture) or ``authorized`` (manual)."""
        if self.status is not PaymentStatus.PROCESSING:
            raise InvalidTransition(f"A {self.status} payment is not waiting for the bank.")
        if self.capture_method is CaptureMethod.AUTOMATIC:
            self._move(PaymentStatus.CAPTURED, at)
            self.captured_minor = self.amount.minor
            event = EventType.PAYMENT_CAPTURED
        else:
            self._move(PaymentStatus.AUTHORIZED, at)
            event = EventType.PAYMENT_AUTHORIZED
        self.authorization_code = authorization_code
        self._emit_payment_event(event, at)

    def decline(self, *, decline_code: str, decline_message: str | None, at: datetime) -> None:
        """The bank (or a pre-check) said no."""
        self._move(PaymentStatus.DECLINED, at)
        self.decline_code = decline_code
        self.decline_message = decline_message
        self._emit_payment_event(EventType.PAYMENT_DECLINED, at)

    def fail(self, *, failure_code: str, at: datetime) -> None:
        """A technical failure that certainly did not charge the card."""
        self._move(PaymentStatus.FAILED, at)
        self.failure_code = failure_code
        self._emit_payment_event(EventType.PAYMENT_FAILED, at)

    def outcome_unknown(self, *, at: datetime) -> None:
        """The bank's answer is unknown: the payment stays ``processing`` until it is
        reconciled, and says so in a ``payment.processing`` event."""
        if self.status is not PaymentStatus.PROCESSING:
            raise InvalidTransition(f"A {self.status} payment is not waiting for the bank.")
        self._emit_payment_event(EventType.PAYMENT_PROCESSING, at)

    # -- after an authorization: capture, void, expiry -----------------------------------

    def request_capture(
        self, *, operation_id: str, amount: Money | None, at: datetime
    ) -> PendingOperation:
        """Record a capture of the authorization, in full or part, before the bank is asked.

        Raises:
            PaymentNotCapturable: The payment is not ``authorized``, or a capture or void
                of it is already in progress.
            InvalidAmount: The amount is not positive, not in the payment's currency, or
                more than was authorized.
        """
        self._ensure_free_authorization(PaymentNotCapturable, "captured")
        captured = self._checked_amount(amount, limit=self.amount, what="authorized")
        return self._pend(OperationKind.CAPTURE, operation_id, at, amount_minor=captured.minor)

    def request_void(self, *, operation_id: str, at: datetime) -> PendingOperation:
        """Record a void of the authorization before the bank is asked.

        Raises:
            PaymentNotVoidable: The payment is not ``authorized``, or a capture or void of
                it is already in progress.
        """
        self._ensure_free_authorization(PaymentNotVoidable, "voided")
        return self._pend(OperationKind.VOID, operation_id, at)

    def request_expiry(self, *, operation_id: str, at: datetime) -> PendingOperation:
        """Record that an authorization left uncaptured too long is voided at the bank.

        Raises:
            InvalidTransition: The payment is not ``authorized``, or an operation is pending.
        """
        self._ensure_free_authorization(InvalidTransition, "expired")
        return self._pend(OperationKind.EXPIRE, operation_id, at)

    def complete_operation(self, *, succeeded: bool, at: datetime) -> None:
        """The bank's answer to the pending operation: a capture or void that succeeded
        moves the payment (``captured``/``voided``); one the bank refused leaves it
        ``authorized``. An expiry expires the payment whatever the bank says (an
        authorization lapses on its own)."""
        operation = self.pending_operation
        if operation is None:
            raise InvalidTransition("No capture, void or expiry is waiting for the bank.")
        self.pending_operation = None
        if operation.kind is OperationKind.EXPIRE:
            self._move(PaymentStatus.EXPIRED, at)
            self._emit_payment_event(EventType.PAYMENT_EXPIRED, at)
        elif not succeeded:
            self.updated_at = at
        elif operation.kind is OperationKind.CAPTURE:
            assert operation.amount_minor is not None
            self._move(PaymentStatus.CAPTURED, at)
            self.captured_minor = operation.amount_minor
            self._emit_payment_event(EventType.PAYMENT_CAPTURED, at)
        else:
            self._move(PaymentStatus.VOIDED, at)
            self._emit_payment_event(EventType.PAYMENT_VOIDED, at)

    def capture(self, *, amount: Money | None, at: datetime) -> None:
        """Capture an authorized payment at once (a capture the bank has accepted)."""
        self.request_capture(operation_id="immediate", amount=amount, at=at)
        self.complete_operation(succeeded=True, at=at)

    def void(self, *, at: datetime) -> None:
        """Void an authorized payment at once (a void the bank has accepted)."""
        self.request_void(operation_id="immediate", at=at)
        self.complete_operation(succeeded=True, at=at)

    def expire(self, *, at: datetime) -> None:
        """Expire an authorized payment at once."""
        self.request_expiry(operation_id="immediate", at=at)
        self.complete_operation(succeeded=True, at=at)

    def _ensure_free_authorization(self, error: type[PaymentServiceError], becoming: str) -> None:
        if self.status is not PaymentStatus.AUTHORIZED:
            raise error(f"A {self.status} payment cannot be {becoming}.")
        if self.pending_operation is not None:
            raise error(f"A {self.pending_operation.kind} of this payment is already in progress.")

    def _pend(
        self,
        kind: OperationKind,
        operation_id: str,
        at: datetime,
        *,
        amount_minor: int | None = None,
    ) -> PendingOperation:
        self.pending_operation = PendingOperation(kind, operation_id, at, amount_minor)
        self.updated_at = at
        return self.pending_operation

    # -- refunds ----------------------------------------------------------------------

    def request_refund(
        self,
        *,
        refund_id: str,
        amount: Money | None,
        reason: str | None,
        metadata: dict[str, Any],
        correlation_id: str | None,
        at: datetime,
    ) -> Refund:
        """Reserve a refund's amount; the refund is ``pending`` until the bank answers.

        Args:
            amount: What to refund; ``None`` takes everything still refundable.

        Raises:
            PaymentNotRefundable: The payment is not captured, or nothing remains.
            InvalidAmount: The amount is not positive or not in the payment's currency.
            RefundExceedsBalance: The amount is more than what remains refundable.
        """
        if self.status not in REFUNDABLE_STATUSES:
            raise PaymentNotRefundable(f"A {self.status} payment cannot be refunded.")
        remaining = self.refundable
        if remaining.is_zero:
            raise PaymentNotRefundable(
                "The payment has already been fully refunded."
                if self.pending_refund_minor == 0
                else "The rest of the payment is already being refunded."
            )
        if amount is None:
            amount = remaining
        else:
            self._check_currency(amount)
            if amount.minor <= 0:
                raise InvalidAmount("Amount must be greater than zero.")
            if amount > remaining:
                raise RefundExceedsBalance(requested=amount, refundable=remaining)
        refund = Refund(
            refund_id=refund_id,
            transaction_id=self.transaction_id,
            amount=amount,
            status=RefundStatus.PENDING,
            reason=reason,
            metadata=metadata,
            correlation_id=correlation_id,
            created_at=at,
            updated_at=at,
        )
        self.pending_refund_minor += amount.minor
        self.refunds.append(refund)
        self._check_balance()
        return refund

    def refund_outcome_unknown(self, refund: Refund, *, at: datetime) -> None:
        """The bank's answer to a refund is unknown: it stays ``pending`` (and reserved)
        until it is reconciled, and says so in a ``refund.pending`` event."""
        if refund.status is not RefundStatus.PENDING:
            raise InvalidTransition(f"A {refund.status} refund is not waiting for the bank.")
        self._emit_refund_event(EventType.REFUND_PENDING, refund, at)

    def settle_refund(
        self,
        refund: Refund,
        *,
        succeeded: bool,
        bank_reference: str | None,
        failure_code: str | None,
        at: datetime,
    ) -> None:
        """The bank's answer to a pending refund: the money is returned, or the
        reservation is released."""
        if refund.transaction_id != self.transaction_id:
            raise ValueError("the refund belongs to another payment")
        refund._settle(RefundStatus.SUCCEEDED if succeeded else RefundStatus.FAILED, at)
        refund.bank_reference = bank_reference
        self.pending_refund_minor -= refund.amount.minor
        if succeeded:
            self.refunded_minor += refund.amount.minor
            self._move(
                PaymentStatus.REFUNDED
                if self.refunded_minor == self.captured_minor
                else PaymentStatus.PARTIALLY_REFUNDED,
                at,
            )
            event = EventType.REFUND_SUCCEEDED
        else:
            refund.failure_code = failure_code
            event = EventType.REFUND_FAILED
        self._check_balance()
        self._emit_refund_event(event, refund, at)

    # -- events -----------------------------------------------------------------------

    def pull_events(self) -> list[DomainEvent]:
        """The events emitted since the last call, oldest first (and forget them)."""
        events, self._events = self._events, []
        return events

    def _emit_payment_event(self, event_type: EventType, at: datetime) -> None:
        data: dict[str, Any] = {
            "amount": self.amount.format(),
            "currency": self.currency,
            "status": self.status.value,
            "payment_method": self.payment_method.value,
            "card_brand": self.card.brand.value,
            "capture_method": self.capture_method.value,
            "captured_amount": self.captured.format(),
        }
        if self.decline_code:
            data["decline_code"] = self.decline_code
        if self.failure_code:
            data["failure_code"] = self.failure_code
        self._emit(event_type, self.correlation_id, at, data)

    def _emit_refund_event(self, event_type: EventType, refund: Refund, at: datetime) -> None:
        data: dict[str, Any] = {
            "refund_id": refund.refund_id,
            "amount": refund.amount.format(),
            "currency": refund.amount.currency,
            "status": refund.status.value,
            "payment_status": self.status.value,
            "refunded_amount": format_minor(self.refunded_minor, self.currency),
        }
        if refund.failure_code:
            data["failure_code"] = refund.failure_code
        self._emit(event_type, refund.correlation_id, at, data)

    def _emit(
        self, event_type: EventType, correlation_id: str | None, at: datetime, data: dict[str, Any]
    ) -> None:
        # The payment's updated_at: a webhook receiver discards deliveries older than
        # what it already has (SPEC §10).
        data["updated_at"] = iso(self.updated_at)
        self._events.append(
            DomainEvent(
                event_type=event_type,
                transaction_id=self.transaction_id,
                merchant_id=self.merchant_id,
                correlation_id=correlation_id,
                occurred_at=at,
                data=data,
            )
        )

    # -- invariants -------------------------------------------------------------------

    def _move(self, new: PaymentStatus, at: datetime) -> None:
        if new not in PAYMENT_TRANSITIONS[self.status]:
            raise InvalidTransition(f"Cannot move a {self.status} payment to {new}.")
        self.status = new
        self.updated_at = at

    def _check_currency(self, amount: Money) -> None:
        if amount.currency != self.currency:
            raise InvalidAmount(
                f"Amount currency {amount.currency} does not match the payment "
                f"currency {self.currency}."
            )

    def _checked_amount(self, amount: Money | None, *, limit: Money, what: str) -> Money:
        if amount is None:
            return limit
        self._check_currency(amount)
        if amount.minor <= 0:
            raise InvalidAmount("Amount must be greater than zero.")
        if amount > limit:
            raise InvalidAmount(f"Amount must not exceed the {what} {limit.format()}.")
        return amount

    def _check_balance(self) -> None:
        # Succeeded and pending refunds never exceed the capture: if this ever fails, a
        # caller bypassed request_refund, and nothing must be written.
        if not (
            self.refunded_minor >= 0
            and self.pending_refund_minor >= 0
            and self.refunded_minor + self.pending_refund_minor <= self.captured_minor
        ):
            raise AssertionError("refunds exceed the captured amount")
