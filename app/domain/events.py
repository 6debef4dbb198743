"""The events a payment's state changes emit, and the envelope they are published in.

The aggregates in :mod:`app.domain.payments` emit a :class:`DomainEvent` for every state
change; the service layer writes each one to the outbox in the same transaction as the
change, and the relay publishes :meth:`DomainEvent.envelope` as the Kafka record's value
(docs/events.md). No card data is ever part of an event.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from app.domain.timestamps import iso

EVENT_VERSION: Final = 1
"""Schema version carried as ``event_version`` in every event."""


class EventType(StrEnum):
    """The ``event_type`` of a published event (docs/events.md)."""

    PAYMENT_PROCESSING = "payment.processing"
    PAYMENT_AUTHORIZED = "payment.authorized"
    PAYMENT_CAPTURED = "payment.captured"
    PAYMENT_DECLINED = "payment.declined"
    PAYMENT_FAILED = "payment.failed"
    PAYMENT_VOIDED = "payment.voided"
    PAYMENT_EXPIRED = "payment.expired"
    REFUND_PENDING = "refund.pending"
    REFUND_SUCCEEDED = "refund.succeeded"
    REFUND_FAILED = "refund.failed"


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """One state change of a payment or of one of its refunds.

    Attributes:
        event_type: What happened.
        transaction_id: The payment it happened to (the Kafka key: one partition per
            payment keeps its events in order).
        merchant_id: The payment's merchant.
        correlation_id: The request (or the reconciliation) that caused it.
        occurred_at: When the change was made.
        data: The event's ``data`` member: amounts as decimal strings, statuses, codes.
        event_id: Unique per event; consumers deduplicate on it.
    """

    event_type: EventType
    transaction_id: str
    merchant_id: str
    correlation_id: str | None
    occurred_at: datetime
    data: Mapping[str, Any]
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def envelope(self) -> dict[str, Any]:
        """The published JSON object (docs/events.md, "The event")."""
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type.value,
            "event_version": EVENT_VERSION,
            "occurred_at": iso(self.occurred_at),
            "transaction_id": self.transaction_id,
            "merchant_id": self.merchant_id,
            "correlation_id": self.correlation_id,
            "data": dict(self.data),
        }
