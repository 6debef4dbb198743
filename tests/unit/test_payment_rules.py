"""The payment state machine and the refund rules."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.errors import (
    InvalidAmount,
    InvalidTransition,
    PaymentNotRefundable,
    RefundExceedsBalance,
)
from app.domain.money import Money
from app.domain.payments import (
    ALLOWED_TRANSITIONS,
    REFUNDABLE_STATUSES,
    PaymentStatus,
    RefundStatus,
    decide_refund,
    refundable_minor,
    transition,
)

CAPTURED = PaymentStatus.CAPTURED
DECLINED = PaymentStatus.DECLINED
FAILED = PaymentStatus.FAILED
PARTIALLY_REFUNDED = PaymentStatus.PARTIALLY_REFUNDED
REFUNDED = PaymentStatus.REFUNDED

ALLOWED = {
    (None, CAPTURED),
    (None, DECLINED),
    (None, FAILED),
    (CAPTURED, PARTIALLY_REFUNDED),
    (CAPTURED, REFUNDED),
    (PARTIALLY_REFUNDED, PARTIALLY_REFUNDED),
    (PARTIALLY_REFUNDED, REFUNDED),
}
ALL_PAIRS = list(itertools.product([None, *PaymentStatus], PaymentStatus))


def test_statuses_are_the_api_strings() -> None:
    assert {str(s) for s in PaymentStatus} == {
        "captured", "declined", "failed", "partially_refunded", "refunded"
    }  # fmt: skip
    assert {str(s) for s in RefundStatus} == {"succeeded", "failed"}


def test_transition_table_covers_every_status() -> None:
    assert set(ALLOWED_TRANSITIONS) == {None, *PaymentStatus}
    assert {(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets} == ALLOWED


@pytest.mark.parametrize(
    ("current", "new"), sorted(ALLOWED, key=str), ids=lambda s: str(s) if s else "new"
)
def test_allowed_transition_returns_the_new_status(
    current: PaymentStatus | None, new: PaymentStatus
) -> None:
    assert transition(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    sorted((pair for pair in ALL_PAIRS if pair not in ALLOWED), key=str),
    ids=lambda s: str(s) if s else "new",
)
def test_forbidden_transition_is_refused(current: PaymentStatus | None, new: PaymentStatus) -> None:
    with pytest.raises(InvalidTransition) as caught:
        transition(current, new)
    assert caught.value.code == "invalid_transition"
    assert str(new) in caught.value.detail


@pytest.mark.parametrize("terminal", [DECLINED, FAILED, REFUNDED])
def test_declined_failed_and_refunded_payments_are_final(terminal: PaymentStatus) -> None:
    assert ALLOWED_TRANSITIONS[terminal] == frozenset()


def test_only_captured_and_partially_refunded_payments_are_refundable() -> None:
    assert frozenset({CAPTURED, PARTIALLY_REFUNDED}) == REFUNDABLE_STATUSES


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def test_refund_without_amount_refunds_the_whole_remaining_balance() -> None:
    decision = decide_refund(status=CAPTURED, captured=usd(9999), refunded_minor=0, requested=None)
    assert decision.amount == usd(9999)
    assert decision.new_status is REFUNDED
    assert decision.new_refunded_minor == 9999
    assert decision.refundable_after_minor == 0


def test_refund_without_amount_after_a_partial_refund_refunds_the_rest() -> None:
    decision = decide_refund(
        status=PARTIALLY_REFUNDED, captured=usd(9999), refunded_minor=5000, requested=None
    )
    assert decision.amount == usd(4999)
    assert decision.new_status is REFUNDED


def test_partial_refund_leaves_the_payment_partially_refunded() -> None:
    decision = decide_refund(
        status=CAPTURED, captured=usd(9999), refunded_minor=0, requested=usd(5000)
    )
    assert decision.amount == usd(5000)
    assert decision.new_status is PARTIALLY_REFUNDED
    assert decision.new_refunded_minor == 5000
    assert decision.refundable_after_minor == 4999


def test_refund_of_exactly_the_remaining_balance_fully_refunds_the_payment() -> None:
    decision = decide_refund(
        status=PARTIALLY_REFUNDED, captured=usd(9999), refunded_minor=5000, requested=usd(4999)
    )
    assert decision.new_status is REFUNDED
    assert decision.refundable_after_minor == 0


def test_refund_cannot_exceed_captured_amount() -> None:
    with pytest.raises(RefundExceedsBalance) as caught:
        decide_refund(status=CAPTURED, captured=usd(9999), refunded_minor=0, requested=usd(10000))
    assert caught.value.refundable == usd(9999)


def test_refund_cannot_exceed_the_remaining_balance() -> None:
    with pytest.raises(RefundExceedsBalance) as caught:
        decide_refund(
            status=PARTIALLY_REFUNDED, captured=usd(9999), refunded_minor=5000, requested=usd(8000)
        )
    error = caught.value
    assert error.code == "refund_exceeds_balance"
    assert error.detail == "Refund of 80.00 USD exceeds the refundable 49.99 USD."
    assert error.requested == usd(8000)
    assert error.refundable == usd(4999)


@pytest.mark.parametrize("status", [DECLINED, FAILED, REFUNDED])
def test_declined_failed_or_refunded_payment_is_not_refundable(status: PaymentStatus) -> None:
    with pytest.raises(PaymentNotRefundable) as caught:
        decide_refund(status=status, captured=usd(9999), refunded_minor=0, requested=None)
    assert caught.value.code == "payment_not_refundable"


def test_payment_with_nothing_left_to_refund_is_not_refundable() -> None:
    with pytest.raises(PaymentNotRefundable, match="fully refunded"):
        decide_refund(
            status=PARTIALLY_REFUNDED, captured=usd(9999), refunded_minor=9999, requested=usd(1)
        )


def test_refund_in_another_currency_is_rejected() -> None:
    with pytest.raises(InvalidAmount, match="EUR"):
        decide_refund(
            status=CAPTURED, captured=usd(9999), refunded_minor=0, requested=Money(100, "EUR")
        )


@pytest.mark.parametrize("minor", [0, -1])
def test_refund_of_zero_or_less_is_rejected(minor: int) -> None:
    with pytest.raises(InvalidAmount, match="greater than zero"):
        decide_refund(status=CAPTURED, captured=usd(9999), refunded_minor=0, requested=usd(minor))


def test_refundable_amount_is_captured_minus_refunded() -> None:
    assert refundable_minor(9999, 0) == 9999
    assert refundable_minor(9999, 5000) == 4999
    assert refundable_minor(9999, 9999) == 0


@pytest.mark.parametrize(("captured", "refunded"), [(100, 101), (-1, 0), (100, -1)])
def test_refundable_amount_refuses_data_that_breaks_the_invariant(
    captured: int, refunded: int
) -> None:
    with pytest.raises(ValueError, match=r"refunded|negative"):
        refundable_minor(captured, refunded)


@given(
    captured=st.integers(min_value=1, max_value=10**8),
    requests=st.lists(st.integers(min_value=1, max_value=10**8), max_size=20),
)
def test_successful_refunds_never_sum_to_more_than_the_captured_amount(
    captured: int, requests: list[int]
) -> None:
    status, refunded = CAPTURED, 0
    for minor in requests:
        try:
            decision = decide_refund(
                status=status, captured=usd(captured), refunded_minor=refunded, requested=usd(minor)
            )
        except (RefundExceedsBalance, PaymentNotRefundable):
            continue
        status, refunded = decision.new_status, decision.new_refunded_minor
        assert refunded <= captured
    assert (status is REFUNDED) == (refunded == captured)
