"""The payment state machine and the refund rules.

A payment is created in its outcome status (``captured``, ``declined`` or ``failed``);
only captured money can be refunded, partially or in full, and the sum of refunds never
exceeds the captured amount.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from app.domain.errors import (
    InvalidAmount,
    InvalidTransition,
    PaymentNotRefundable,
    RefundExceedsBalance,
)
from app.domain.money import Money


class PaymentStatus(StrEnum):
    """Where a payment stands."""

    CAPTURED = "captured"
    DECLINED = "declined"
    FAILED = "failed"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class RefundStatus(StrEnum):
    """The outcome of a refund."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


ALLOWED_TRANSITIONS: Mapping[PaymentStatus | None, frozenset[PaymentStatus]] = MappingProxyType(
    {
        None: frozenset({PaymentStatus.CAPTURED, PaymentStatus.DECLINED, PaymentStatus.FAILED}),
        PaymentStatus.CAPTURED: frozenset(
            {PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
        ),
        PaymentStatus.PARTIALLY_REFUNDED: frozenset(
            {PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
        ),
        PaymentStatus.DECLINED: frozenset(),
        PaymentStatus.FAILED: frozenset(),
        PaymentStatus.REFUNDED: frozenset(),
    }
)
"""Status -> the statuses it may move to; ``None`` is a payment being created."""

REFUNDABLE_STATUSES: frozenset[PaymentStatus] = frozenset(
    {PaymentStatus.CAPTURED, PaymentStatus.PARTIALLY_REFUNDED}
)
"""Statuses in which a payment still has money that can be refunded."""


def transition(current: PaymentStatus | None, new: PaymentStatus) -> PaymentStatus:
    """Return ``new`` if a payment in ``current`` may move to it.

    Args:
        current: The payment's status, or ``None`` for a payment being created.
        new: The status to move to.

    Raises:
        InvalidTransition: If the state machine forbids the move.
    """
    if new not in ALLOWED_TRANSITIONS[current]:
        origin = "a new payment" if current is None else f"a {current} payment"
        raise InvalidTransition(f"Cannot move {origin} to {new}.")
    return new


def refundable_minor(captured_minor: int, refunded_minor: int) -> int:
    """Return the minor amount still refundable.

    Raises:
        ValueError: If the amounts are negative or more was refunded than captured,
            which would mean the stored data breaks the refund invariant.
    """
    if captured_minor < 0 or refunded_minor < 0:
        raise ValueError("captured and refunded amounts must not be negative")
    if refunded_minor > captured_minor:
        raise ValueError("refunded amount exceeds the captured amount")
    return captured_minor - refunded_minor


@dataclass(frozen=True)
class RefundDecision:
    """What a valid refund does to its payment.

    Attributes:
        amount: The amount to refund.
        new_status: The payment's status once the refund succeeds.
        new_refunded_minor: The payment's total refunded minor amount afterwards.
        refundable_after_minor: What remains refundable afterwards.
    """

    amount: Money
    new_status: PaymentStatus
    new_refunded_minor: int
    refundable_after_minor: int


def decide_refund(
    *,
    status: PaymentStatus,
    captured: Money,
    refunded_minor: int,
    requested: Money | None,
) -> RefundDecision:
    """Decide whether and how a payment can be refunded.

    Args:
        status: The payment's current status.
        captured: The payment's captured amount.
        refunded_minor: What has been successfully refunded so far, in minor units.
        requested: The amount asked for; ``None`` refunds the whole remaining balance.

    Returns:
        The refund amount and the payment's state after it.

    Raises:
        PaymentNotRefundable: If the payment is not in a refundable status or nothing
            remains to refund.
        InvalidAmount: If the requested amount is not positive or not in the payment's
            currency.
        RefundExceedsBalance: If the requested amount is more than what remains.
    """
    if status not in REFUNDABLE_STATUSES:
        raise PaymentNotRefundable(f"A {status} payment cannot be refunded.")
    remaining = refundable_minor(captured.minor, refunded_minor)
    if remaining == 0:
        raise PaymentNotRefundable("The payment has already been fully refunded.")
    if requested is None:
        amount = Money(remaining, captured.currency)
    else:
        if requested.currency != captured.currency:
            raise InvalidAmount(
                f"Refund currency {requested.currency} does not match the payment "
                f"currency {captured.currency}."
            )
        if requested.minor <= 0:
            raise InvalidAmount("Amount must be greater than zero.")
        if requested.minor > remaining:
            raise RefundExceedsBalance(
                requested=requested, refundable=Money(remaining, captured.currency)
            )
        amount = requested
    new_refunded = refunded_minor + amount.minor
    new_status = (
        PaymentStatus.REFUNDED
        if new_refunded == captured.minor
        else PaymentStatus.PARTIALLY_REFUNDED
    )
    return RefundDecision(
        amount=amount,
        new_status=transition(status, new_status),
        new_refunded_minor=new_refunded,
        refundable_after_minor=captured.minor - new_refunded,
    )
