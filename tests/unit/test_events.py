"""Event types published for payment and refund outcomes."""

import pytest

from app.domain.events import (
    EVENT_VERSION,
    EventType,
    event_type_for_payment,
    event_type_for_refund,
)
from app.domain.payments import PaymentStatus, RefundStatus


def test_event_types_are_the_spec_strings() -> None:
    assert [str(t) for t in EventType] == [
        "payment.captured",
        "payment.declined",
        "payment.failed",
        "refund.succeeded",
        "refund.failed",
    ]


def test_event_version_is_1() -> None:
    assert EVENT_VERSION == 1


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        (PaymentStatus.CAPTURED, EventType.PAYMENT_CAPTURED),
        (PaymentStatus.DECLINED, EventType.PAYMENT_DECLINED),
        (PaymentStatus.FAILED, EventType.PAYMENT_FAILED),
    ],
)
def test_new_payment_publishes_the_event_of_its_outcome(
    status: PaymentStatus, event_type: EventType
) -> None:
    assert event_type_for_payment(status) is event_type


@pytest.mark.parametrize("status", [PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED])
def test_refund_statuses_are_not_payment_outcomes(status: PaymentStatus) -> None:
    with pytest.raises(ValueError, match="not the outcome"):
        event_type_for_payment(status)


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        (RefundStatus.SUCCEEDED, EventType.REFUND_SUCCEEDED),
        (RefundStatus.FAILED, EventType.REFUND_FAILED),
    ],
)
def test_refund_publishes_the_event_of_its_outcome(
    status: RefundStatus, event_type: EventType
) -> None:
    assert event_type_for_refund(status) is event_type
