"""Outbox rows for payment and refund state changes (SPEC §6); no card data ever."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from app.adapters.db.models import OutboxEvent, Refund, Transaction
from app.domain.events import EVENT_VERSION, EventType
from app.domain.money import format_minor
from app.services.views import iso


def _envelope(
    *,
    event_type: EventType,
    transaction_id: str,
    merchant_id: str,
    correlation_id: str | None,
    occurred_at: datetime,
    data: dict[str, Any],
) -> OutboxEvent:
    event_id = uuid.uuid4()
    payload = {
        "event_id": str(event_id),
        "event_type": event_type.value,
        "event_version": EVENT_VERSION,
        "occurred_at": iso(occurred_at),
        "transaction_id": transaction_id,
        "merchant_id": merchant_id,
        "correlation_id": correlation_id,
        "data": data,
    }
    headers = {
        "event_type": event_type.value,
        "event_id": str(event_id),
        "correlation_id": correlation_id or "",
    }
    return OutboxEvent(
        event_id=event_id,
        event_type=event_type.value,
        aggregate_id=transaction_id,
        payload=payload,
        headers=headers,
        created_at=occurred_at,
    )


def payment_outcome_event(
    txn: Transaction, *, event_type: EventType, occurred_at: datetime
) -> OutboxEvent:
    """The event for a new payment's outcome: captured, declined or failed."""
    data: dict[str, Any] = {
        "amount": format_minor(txn.amount_minor, txn.currency),
        "currency": txn.currency,
        "status": txn.status,
        "payment_method": txn.payment_method,
        "card_brand": txn.card_brand,
    }
    if txn.decline_code:
        data["decline_code"] = txn.decline_code
    if txn.failure_code:
        data["failure_code"] = txn.failure_code
    return _envelope(
        event_type=event_type,
        transaction_id=txn.transaction_id,
        merchant_id=txn.merchant_id,
        correlation_id=txn.correlation_id,
        occurred_at=occurred_at,
        data=data,
    )


def refund_event(
    refund: Refund,
    txn: Transaction,
    *,
    event_type: EventType,
    occurred_at: datetime,
) -> OutboxEvent:
    """The event for a refund's outcome, with the payment's balance after it."""
    data: dict[str, Any] = {
        "refund_id": refund.refund_id,
        "amount": format_minor(refund.amount_minor, refund.currency),
        "currency": refund.currency,
        "status": refund.status,
        "payment_status": txn.status,
        "refunded_amount": format_minor(txn.refunded_minor, txn.currency),
    }
    if refund.failure_code:
        data["failure_code"] = refund.failure_code
    return _envelope(
        event_type=event_type,
        transaction_id=txn.transaction_id,
        merchant_id=txn.merchant_id,
        correlation_id=refund.correlation_id,
        occurred_at=occurred_at,
        data=data,
    )
