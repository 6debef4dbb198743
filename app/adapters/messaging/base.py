"""What the services need from event publication."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol


class EventPublisher(Protocol):
    """Publishes committed outbox events; never raises into the request that wrote them."""

    async def publish_committed(self, event_ids: Sequence[uuid.UUID]) -> None:
        """Try to publish these just-committed events now; the relay retries what fails."""
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

    async def publish_committed(self, event_ids: Sequence[uuid.UUID]) -> None:
        """Leave the events pending."""

    async def broker_available(self) -> bool:
        """There is no broker to be available."""
        return False
