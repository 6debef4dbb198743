"""The event types published for every payment and refund state change (SPEC §6)."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from app.domain.payments import PaymentStatus, RefundStatus

EVENT_VERSION: Final = 1
"""Schema version carried as ``event_version`` in every event."""


class EventType(StrEnum):
    """The ``event_type`` of a published event."""

    PAYMENT_CAPTURED = "payment.captured"
    PAYMENT_DECLINED = "payment.declined"
    PAYMENT_FAILED = "payment.failed"
    REFUND_SUCCEEDED = "refund.succeeded"
    REFUND_FAILED = "refund.failed"


_PAYMENT_OUTCOME_EVENTS: Final = {
    PaymentStatus.CAPTURED: EventType.PAYMENT_CAPTURED,
    PaymentStatus.DECLINED: EventType.PAYMENT_DECLINED,
    PaymentStatus.FAILED: EventType.PAYMENT_FAILED,
}

_REFUND_EVENTS: Final = {
    RefundStatus.SUCCEEDED: EventType.REFUND_SUCCEEDED,
    RefundStatus.FAILED: EventType.REFUND_FAILED,
}


def event_type_for_payment(status: PaymentStatus) -> EventType:
    """Return the event type for a new payment's outcome.

    Raises:
        ValueError: For refund statuses, which publish ``refund.*`` events instead.
    """
    try:
        return _PAYMENT_OUTCOME_EVENTS[status]
    except KeyError:
        raise ValueError(f"{status} is not the outcome of a new payment") from None


def event_type_for_refund(status: RefundStatus) -> EventType:
    """Return the event type for a refund's outcome."""
    return _REFUND_EVENTS[status]
