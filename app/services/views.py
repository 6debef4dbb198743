"""Read models: how a payment or refund is shown to its merchant.

These dicts are the exact response bodies, and what an idempotent replay returns, so they
are built in one place from the stored rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.adapters.db.models import Refund, Transaction
from app.domain.money import format_minor
from app.domain.payments import PaymentStatus, refundable_minor


def iso(ts: datetime) -> str:
    """RFC 3339 UTC timestamp with millisecond precision and a ``Z``."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payment_view(txn: Transaction, *, refunds: list[Refund] | None = None) -> dict[str, Any]:
    """The payment object of SPEC §2; with ``refunds`` for the status endpoint."""
    refundable = (
        refundable_minor(txn.amount_minor, txn.refunded_minor)
        if txn.status in (PaymentStatus.CAPTURED, PaymentStatus.PARTIALLY_REFUNDED)
        else 0
    )
    view: dict[str, Any] = {
        "transaction_id": txn.transaction_id,
        "merchant_id": txn.merchant_id,
        "status": txn.status,
        "amount": format_minor(txn.amount_minor, txn.currency),
        "currency": txn.currency,
        "payment_method": txn.payment_method,
        "card": {
            "brand": txn.card_brand,
            "last4": txn.card_last4,
            "exp_month": txn.card_exp_month,
            "exp_year": txn.card_exp_year,
        },
        "card_last_four": txn.card_last4,
        "authorization_code": txn.authorization_code,
        "decline_code": txn.decline_code,
        "decline_message": txn.decline_message,
        "failure_code": txn.failure_code,
        "refunded_amount": format_minor(txn.refunded_minor, txn.currency),
        "refundable_amount": format_minor(refundable, txn.currency),
        "description": txn.description,
        "metadata": txn.metadata_,
        "created_at": iso(txn.created_at),
        "updated_at": iso(txn.updated_at),
    }
    if refunds is not None:
        view["refunds"] = [refund_summary(refund) for refund in refunds]
    return view


def refund_summary(refund: Refund) -> dict[str, Any]:
    """A refund as listed under its payment."""
    return {
        "refund_id": refund.refund_id,
        "amount": format_minor(refund.amount_minor, refund.currency),
        "currency": refund.currency,
        "status": refund.status,
        "reason": refund.reason,
        "metadata": refund.metadata_,
        "created_at": iso(refund.created_at),
    }


def refund_view(refund: Refund, txn: Transaction) -> dict[str, Any]:
    """The refund response of SPEC §2, with the payment's balance after it."""
    return {
        "refund_id": refund.refund_id,
        "transaction_id": refund.transaction_id,
        "amount": format_minor(refund.amount_minor, refund.currency),
        "currency": refund.currency,
        "status": refund.status,
        "reason": refund.reason,
        "metadata": refund.metadata_,
        "payment_status": txn.status,
        "refunded_amount": format_minor(txn.refunded_minor, txn.currency),
        "refundable_amount": format_minor(
            refundable_minor(txn.amount_minor, txn.refunded_minor), txn.currency
        ),
        "created_at": iso(refund.created_at),
    }
