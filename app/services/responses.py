"""Response bodies: how a payment or refund is shown to its merchant (docs/api.md).

These dicts are the exact bodies the API answers with, and what an idempotent replay
returns, so they are built in one place, from the aggregate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from app.domain.money import format_minor
from app.domain.payments import Payment, Refund
from app.domain.timestamps import iso


def payment_response(payment: Payment, *, with_refunds: bool = False) -> dict[str, Any]:
    """The payment object; with its refunds (oldest first) for the status endpoint."""
    card = payment.card
    body: dict[str, Any] = {
        "transaction_id": payment.transaction_id,
        "merchant_id": payment.merchant_id,
        "status": payment.status.value,
        "amount": payment.amount.format(),
        "currency": payment.currency,
        "payment_method": payment.payment_method.value,
        "capture_method": payment.capture_method.value,
        "captured_amount": payment.captured.format(),
        "card": {
            "brand": card.brand.value,
            "last4": card.last4,
            "exp_month": card.exp_month,
            "exp_year": card.exp_year,
        },
        "card_last_four": card.last4,
        "authorization_code": payment.authorization_code,
        "decline_code": payment.decline_code,
        "decline_message": payment.decline_message,
        "failure_code": payment.failure_code,
        "refunded_amount": payment.refunded.format(),
        "refundable_amount": payment.refundable.format(),
        "description": payment.description,
        "metadata": payment.metadata,
        "created_at": iso(payment.created_at),
        "updated_at": iso(payment.updated_at),
    }
    if with_refunds:
        body["refunds"] = [refund_summary(refund) for refund in payment.refunds]
    return body


PAYMENTS_URL: Final = "/api/v1/payments"
"""Where a merchant's payments are listed: the ``url`` of the list object."""


def payment_list_response(payments: Sequence[Payment], *, has_more: bool) -> dict[str, Any]:
    """A page of payments, newest first, as the list object (each payment without its
    refunds, exactly as the single-payment answers show it otherwise)."""
    return {
        "object": "list",
        "data": [payment_response(payment) for payment in payments],
        "has_more": has_more,
        "url": PAYMENTS_URL,
    }


def refund_summary(refund: Refund) -> dict[str, Any]:
    """A refund as listed under its payment."""
    return {
        "refund_id": refund.refund_id,
        "amount": refund.amount.format(),
        "currency": refund.amount.currency,
        "status": refund.status.value,
        "reason": refund.reason,
        "metadata": refund.metadata,
        "created_at": iso(refund.created_at),
    }


def refund_response(refund: Refund, payment: Payment) -> dict[str, Any]:
    """The refund object, with its payment's balance after it."""
    return {
        "refund_id": refund.refund_id,
        "transaction_id": refund.transaction_id,
        "amount": refund.amount.format(),
        "currency": refund.amount.currency,
        "status": refund.status.value,
        "reason": refund.reason,
        "metadata": refund.metadata,
        "payment_status": payment.status.value,
        "refunded_amount": format_minor(payment.refunded_minor, payment.currency),
        "refundable_amount": payment.refundable.format(),
        "created_at": iso(refund.created_at),
    }
