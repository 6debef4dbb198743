"""Domain events as outbox messages (docs/events.md); no card data ever."""

from __future__ import annotations

from app.domain.events import DomainEvent
from app.services.ports import OutboxMessage


def outbox_message(event: DomainEvent) -> OutboxMessage:
    """The message the outbox keeps and Kafka receives for a domain event."""
    return OutboxMessage(
        event_id=event.event_id,
        event_type=event.event_type.value,
        key=event.transaction_id,
        payload=event.envelope(),
        headers={
            "event_type": event.event_type.value,
            "event_id": str(event.event_id),
            "correlation_id": event.correlation_id or "",
        },
    )
