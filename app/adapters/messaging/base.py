"""What the services need from event publication."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from app.adapters.db.models import OutboxEvent


class EventPublisher(Protocol):
    """Publishes committed outbox events; never raises into the request that wrote them."""

    def reserve(self, event: OutboxEvent) -> bool:
        """Before the commit: mark the event as this process's to publish right after it."""
        ...

    async def publish_committed(self, events: Sequence[OutboxEvent]) -> None:
        """Try to publish the reserved, just-committed events now; the relay retries what fails."""
        ...

    @property
    def enabled(self) -> bool:
        """Whether a broker is configured at all."""
        ...

    async def broker_available(self) -> bool:
        """Whether the broker answers (for /health)."""
        ...


class OutboxOnlyPublisher:
    """No broker configured: events wait in the outbox until one is."""

    enabled = False

    def reserve(self, event: OutboxEvent) -> bool:
        """Nothing publishes now: the event stays pending."""
        return False

    async def publish_committed(self, events: Sequence[OutboxEvent]) -> None:
        """Leave the events pending."""

    async def broker_available(self) -> bool:
        """There is no broker to be available."""
        return False
