"""The Payment aggregate: its state machine, its refund arithmetic and the events it emits."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.errors import (
    InvalidAmount,
    InvalidTransition,
    PaymentNotCapturable,
    PaymentNotRefundable,
    PaymentNotVoidable,
    PaymentServiceError,
    RefundExceedsBalance,
)
from app.domain.events import EVENT_VERSION, EventType
from app.domain.money import Money
from app.domain.payments import (
    CAPTURED_STATUSES,
    FINAL_STATUSES,
    PAYMENT_TRANSITIONS,
    REFUND_TRANSITIONS,
    REFUNDABLE_STATUSES,
    CaptureMethod,
    Payment,
    PaymentStatus,
    RefundStatus,
)
from tests.factories import PaymentFactory

S = PaymentStatus
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(seconds=5)

ALLOWED = {
    (S.PROCESSING, S.AUTHORIZED),
    (S.PROCESSING, S.CAPTURED),
    (S.PROCESSING, S.DECLINED),
    (S.PROCESSING, S.FAILED),
    (S.AUTHORIZED, S.CAPTURED),
    (S.AUTHORIZED, S.VOIDED),
    (S.AUTHORIZED, S.EXPIRED),
    (S.CAPTURED, S.PARTIALLY_REFUNDED),
    (S.CAPTURED, S.REFUNDED),
    (S.PARTIALLY_REFUNDED, S.PARTIALLY_REFUNDED),
    (S.PARTIALLY_REFUNDED, S.REFUNDED),
}


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def payment(status: PaymentStatus = S.PROCESSING, **overrides: Any) -> Payment:
    """A USD 99.99 payment in ``status``, as if it had got there legitimately."""
    values: dict[str, Any] = {"status": status, "amount_minor": 9999, "created_at": T0}
    if status in (S.PARTIALLY_REFUNDED, S.REFUNDED):
        values["refunded_minor"] = 5000 if status is S.PARTIALLY_REFUNDED else 9999
    return PaymentFactory(**(values | overrides))


# -- the table ------------------------------------------------------------------------


def test_statuses_are_the_api_strings() -> None:
    assert {str(s) for s in PaymentStatus} == {
        "processing",
        "authorized",
        "captured",
        "declined",
        "failed",
        "voided",
        "expired",
        "partially_refunded",
        "refunded",
    }
    assert {str(s) for s in RefundStatus} == {"pending", "succeeded", "failed"}


def test_transition_table_is_exactly_the_documented_one() -> None:
    assert set(PAYMENT_TRANSITIONS) == set(PaymentStatus)
    assert {(a, b) for a, targets in PAYMENT_TRANSITIONS.items() for b in targets} == ALLOWED
    assert REFUND_TRANSITIONS[RefundStatus.PENDING] == {RefundStatus.SUCCEEDED, RefundStatus.FAILED}


def test_final_statuses_are_the_ones_nothing_leaves() -> None:
    assert {S.DECLINED, S.FAILED, S.VOIDED, S.EXPIRED, S.REFUNDED} == FINAL_STATUSES
    assert {S.CAPTURED, S.PARTIALLY_REFUNDED} == REFUNDABLE_STATUSES


# -- every operation from every status -----------------------------------------------

Operation = Callable[[Payment], None]
OPERATIONS: dict[str, tuple[Operation, PaymentStatus, PaymentStatus]] = {
    # name: (act, the one status it applies to, where it leads)
    "approve": (
        lambda p: p.approve(authorization_code="A1", at=LATER),
        S.PROCESSING,
        S.CAPTURED,
    ),
    "decline": (
        lambda p: p.decline(decline_code="card_declined", decline_message="no", at=LATER),
        S.PROCESSING,
        S.DECLINED,
    ),
    "fail": (
        lambda p: p.fail(failure_code="bank_unreachable", at=LATER),
        S.PROCESSING,
        S.FAILED,
    ),
    "capture": (lambda p: p.capture(amount=None, at=LATER), S.AUTHORIZED, S.CAPTURED),
    "void": (lambda p: p.void(at=LATER), S.AUTHORIZED, S.VOIDED),
    "expire": (lambda p: p.expire(at=LATER), S.AUTHORIZED, S.EXPIRED),
}


def test_every_allowed_transition_is_some_operation_or_a_refund() -> None:
    by_operations = {(source, target) for _, source, target in OPERATIONS.values()}
    by_refunds = {(s, t) for s, t in ALLOWED if t in (S.PARTIALLY_REFUNDED, S.REFUNDED)}
    processing_authorized = {(S.PROCESSING, S.AUTHORIZED)}  # approve with manual capture
    assert by_operations | by_refunds | processing_authorized == ALLOWED


@pytest.mark.parametrize(
    ("status", "operation"),
    list(itertools.product(PaymentStatus, OPERATIONS)),
    ids=lambda v: str(v),
)
def test_each_operation_moves_only_where_the_table_allows(
    status: PaymentStatus, operation: str
) -> None:
    act, source, target = OPERATIONS[operation]
    subject = payment(status)
    if status is source:
        act(subject)
        assert subject.status is target
        assert subject.updated_at == LATER
        (event,) = subject.pull_events()
        assert event.data["status"] == target.value
    else:
        expected: type[PaymentServiceError] = {
            "capture": PaymentNotCapturable,
            "void": PaymentNotVoidable,
        }.get(operation, InvalidTransition)
        with pytest.raises(expected):
            act(subject)
        assert subject.status is status
        assert subject.pull_events() == []


def test_manual_capture_approval_authorizes_and_a_capture_can_take_part_of_it() -> None:
    subject = payment(capture_method=CaptureMethod.MANUAL)
    subject.approve(authorization_code="A1B2", at=LATER)
    assert subject.status is S.AUTHORIZED
    assert subject.captured.is_zero
    assert subject.refundable.is_zero
    subject.capture(amount=usd(5000), at=LATER)
    assert subject.status is S.CAPTURED
    assert subject.captured == usd(5000)
    assert subject.refundable == usd(5000)
    types = [e.event_type for e in subject.pull_events()]
    assert types == [EventType.PAYMENT_AUTHORIZED, EventType.PAYMENT_CAPTURED]


@pytest.mark.parametrize(("minor", "currency"), [(0, "USD"), (10_000, "USD"), (100, "EUR")])
def test_a_capture_must_be_positive_in_currency_and_at_most_the_authorization(
    minor: int, currency: str
) -> None:
    subject = payment(S.AUTHORIZED)
    with pytest.raises(InvalidAmount):
        subject.capture(amount=Money(minor, currency), at=LATER)
    assert subject.status is S.AUTHORIZED


def test_an_unknown_bank_answer_keeps_the_payment_processing_and_says_so() -> None:
    subject = payment()
    subject.outcome_unknown(at=LATER)
    assert subject.status is S.PROCESSING
    (event,) = subject.pull_events()
    assert event.event_type is EventType.PAYMENT_PROCESSING
    with pytest.raises(InvalidTransition):
        payment(S.CAPTURED).outcome_unknown(at=LATER)


# -- refunds ----------------------------------------------------------------------------


def test_a_refund_reserves_its_amount_until_the_bank_answers() -> None:
    subject = payment(S.CAPTURED)
    refund = subject.request_refund(
        refund_id="re_1", amount=usd(4000), reason=None, metadata={}, correlation_id="c", at=LATER
    )
    assert refund.status is RefundStatus.PENDING
    assert subject.status is S.CAPTURED  # nothing returned yet
    assert subject.refundable == usd(5999)  # captured - succeeded - pending
    assert subject.pull_events() == []
    subject.settle_refund(refund, succeeded=True, bank_reference="ref", failure_code=None, at=LATER)
    assert refund.status is RefundStatus.SUCCEEDED
    assert subject.status is S.PARTIALLY_REFUNDED
    assert (subject.refunded, subject.refundable) == (usd(4000), usd(5999))
    (event,) = subject.pull_events()
    assert event.event_type is EventType.REFUND_SUCCEEDED
    assert event.data == {
        "refund_id": "re_1",
        "amount": "40.00",
        "currency": "USD",
        "status": "succeeded",
        "payment_status": "partially_refunded",
        "refunded_amount": "40.00",
        "updated_at": "2026-12-03T12:00:05.000Z",  # the payment's: it just moved
    }
    assert event.correlation_id == "c"


def test_a_failed_refund_releases_its_reservation() -> None:
    subject = payment(S.CAPTURED)
    refund = subject.request_refund(
        refund_id="re_1", amount=None, reason=None, metadata={}, correlation_id=None, at=LATER
    )
    assert subject.refundable.is_zero
    with pytest.raises(PaymentNotRefundable, match="already being refunded"):
        subject.request_refund(
            refund_id="re_2", amount=None, reason=None, metadata={}, correlation_id=None, at=LATER
        )
    subject.settle_refund(
        refund, succeeded=False, bank_reference=None, failure_code="refund_failed", at=LATER
    )
    assert (refund.status, refund.failure_code) == (RefundStatus.FAILED, "refund_failed")
    assert subject.status is S.CAPTURED
    assert subject.refundable == usd(9999)
    (event,) = subject.pull_events()
    assert event.event_type is EventType.REFUND_FAILED
    assert event.data["failure_code"] == "refund_failed"


def test_refund_without_amount_refunds_the_whole_remaining_balance() -> None:
    subject = payment(S.PARTIALLY_REFUNDED)
    refund = subject.request_refund(
        refund_id="re_1", amount=None, reason=None, metadata={}, correlation_id=None, at=LATER
    )
    assert refund.amount == usd(4999)
    subject.settle_refund(refund, succeeded=True, bank_reference=None, failure_code=None, at=LATER)
    assert subject.status is S.REFUNDED
    assert subject.refundable.is_zero


def test_refund_cannot_exceed_the_remaining_balance() -> None:
    subject = payment(S.PARTIALLY_REFUNDED)
    with pytest.raises(RefundExceedsBalance) as caught:
        subject.request_refund(
            refund_id="re_1",
            amount=usd(8000),
            reason=None,
            metadata={},
            correlation_id=None,
            at=LATER,
        )
    assert caught.value.detail == "Refund of 80.00 USD exceeds the refundable 49.99 USD."
    assert caught.value.refundable == usd(4999)
    assert subject.pending_refund_minor == 0


@pytest.mark.parametrize("status", sorted(set(PaymentStatus) - REFUNDABLE_STATUSES))
def test_only_captured_money_can_be_refunded(status: PaymentStatus) -> None:
    with pytest.raises(PaymentNotRefundable) as caught:
        payment(status).request_refund(
            refund_id="re_1", amount=None, reason=None, metadata={}, correlation_id=None, at=LATER
        )
    assert caught.value.code == "payment_not_refundable"


@pytest.mark.parametrize(("minor", "currency"), [(0, "USD"), (-1, "USD"), (100, "EUR")])
def test_a_refund_must_be_positive_and_in_the_payment_currency(minor: int, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        payment(S.CAPTURED).request_refund(
            refund_id="re_1",
            amount=Money(minor, currency),
            reason=None,
            metadata={},
            correlation_id=None,
            at=LATER,
        )


def test_a_refund_is_settled_once() -> None:
    subject = payment(S.CAPTURED)
    refund = subject.request_refund(
        refund_id="re_1", amount=usd(1), reason=None, metadata={}, correlation_id=None, at=LATER
    )
    subject.settle_refund(refund, succeeded=True, bank_reference=None, failure_code=None, at=LATER)
    with pytest.raises(InvalidTransition):
        subject.settle_refund(
            refund, succeeded=True, bank_reference=None, failure_code=None, at=LATER
        )
    assert subject.refunded == usd(1)


Step = tuple[str, int]


@given(
    captured=st.integers(min_value=1, max_value=10**8),
    steps=st.lists(
        st.tuples(st.sampled_from(["request", "succeed", "fail"]), st.integers(0, 10**8)),
        max_size=30,
    ),
)
def test_succeeded_and_pending_refunds_never_exceed_the_capture(
    captured: int, steps: list[Step]
) -> None:
    subject = payment(S.CAPTURED, amount_minor=captured)
    pending = []
    for n, (action, value) in enumerate(steps):
        if action == "request":
            with contextlib.suppress(RefundExceedsBalance, PaymentNotRefundable, InvalidAmount):
                pending.append(
                    subject.request_refund(
                        refund_id=f"re_{n}",
                        amount=usd(value) if value else None,
                        reason=None,
                        metadata={},
                        correlation_id=None,
                        at=LATER,
                    )
                )
        elif pending:
            refund = pending.pop(value % len(pending))
            subject.settle_refund(
                refund,
                succeeded=action == "succeed",
                bank_reference=None,
                failure_code=None,
                at=LATER,
            )
        assert subject.refunded_minor + subject.pending_refund_minor <= captured
        assert subject.pending_refund_minor == sum(r.amount.minor for r in pending)
        assert subject.refundable.minor == captured - subject.refunded_minor - (
            subject.pending_refund_minor
        )
    assert (subject.status is S.REFUNDED) == (subject.refunded_minor == captured)
    assert subject.status in CAPTURED_STATUSES


# -- events -----------------------------------------------------------------------------


def test_a_payment_event_names_its_outcome_and_carries_no_card_data() -> None:
    subject = payment()
    subject.decline(decline_code="insufficient_funds", decline_message="Not enough", at=LATER)
    (event,) = subject.pull_events()
    envelope = event.envelope()
    assert envelope == {
        "event_id": str(event.event_id),
        "event_type": "payment.declined",
        "event_version": EVENT_VERSION,
        "occurred_at": "2026-12-03T12:00:05.000Z",
        "transaction_id": subject.transaction_id,
        "merchant_id": subject.merchant_id,
        "correlation_id": "test-correlation",
        "data": {
            "amount": "99.99",
            "currency": "USD",
            "status": "declined",
            "payment_method": "credit_card",
            "card_brand": "visa",
            "capture_method": "automatic",
            "captured_amount": "0.00",
            "decline_code": "insufficient_funds",
            "updated_at": "2026-12-03T12:00:05.000Z",
        },
    }
    assert "4242" not in str(envelope)


def test_events_are_pulled_once_in_order() -> None:
    subject = payment(capture_method=CaptureMethod.MANUAL)
    subject.approve(authorization_code="A1", at=LATER)
    subject.void(at=LATER)
    assert [e.event_type for e in subject.pull_events()] == [
        EventType.PAYMENT_AUTHORIZED,
        EventType.PAYMENT_VOIDED,
    ]
    assert subject.pull_events() == []


# -- one operation at a time on an authorization ---------------------------------------


def test_a_capture_is_recorded_before_the_bank_and_settled_by_its_answer() -> None:
    subject = payment(S.AUTHORIZED)
    pending = subject.request_capture(operation_id="cap_1", amount=usd(5000), at=LATER)
    assert (pending.kind, pending.amount_minor) == ("capture", 5000)
    assert subject.status is S.AUTHORIZED  # nothing moved yet
    assert subject.pull_events() == []
    subject.complete_operation(succeeded=True, at=LATER)
    assert subject.status is S.CAPTURED
    assert subject.captured == usd(5000)
    assert subject.pending_operation is None
    assert [e.event_type for e in subject.pull_events()] == [EventType.PAYMENT_CAPTURED]


@pytest.mark.parametrize("first", ["capture", "void", "expire"])
@pytest.mark.parametrize("second", ["capture", "void", "expire"])
def test_while_one_operation_is_pending_every_other_is_refused(first: str, second: str) -> None:
    subject = payment(S.AUTHORIZED)
    request = {
        "capture": lambda: subject.request_capture(operation_id="a", amount=None, at=LATER),
        "void": lambda: subject.request_void(operation_id="b", at=LATER),
        "expire": lambda: subject.request_expiry(operation_id="c", at=LATER),
    }
    request[first]()
    expected: type[PaymentServiceError] = {
        "capture": PaymentNotCapturable,
        "void": PaymentNotVoidable,
    }.get(second, InvalidTransition)
    with pytest.raises(expected, match="already in progress"):
        request[second]()
    assert subject.pending_operation is not None
    assert subject.pending_operation.kind == first


def test_a_refused_capture_or_void_leaves_the_authorization_and_an_expiry_always_expires() -> None:
    refused = payment(S.AUTHORIZED)
    refused.request_void(operation_id="void_1", at=LATER)
    refused.complete_operation(succeeded=False, at=LATER)
    assert (refused.status, refused.pending_operation) == (S.AUTHORIZED, None)
    assert refused.pull_events() == []

    lapsed = payment(S.AUTHORIZED)
    lapsed.request_expiry(operation_id="exp_1", at=LATER)
    lapsed.complete_operation(succeeded=False, at=LATER)  # the bank had nothing to void
    assert lapsed.status is S.EXPIRED
    assert [e.event_type for e in lapsed.pull_events()] == [EventType.PAYMENT_EXPIRED]


def test_nothing_is_refundable_before_a_capture() -> None:
    subject = payment(S.AUTHORIZED)
    with pytest.raises(PaymentNotRefundable):
        subject.request_refund(
            refund_id="re_1", amount=None, reason=None, metadata={}, correlation_id=None, at=LATER
        )
