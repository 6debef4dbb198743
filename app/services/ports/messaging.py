"""Events on their way out: the outbox the use cases write to, and the publisher.

An event is written to the outbox as an :class:`OutboxMessage` in the same transaction as
the change it describes; a publisher then gets it onto the broker, at least once. A
request may :meth:`EventPublisher.reserve` its own events before the commit, so that it
can publish them itself right after (the background relay leaves leased rows alone).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """An event as the outbox keeps it and the broker receives it.

    Attributes:
        event_id: Unique per event; consumers deduplicate on it.
        event_type: E.g. ``payment.captured``.
        key: The partitioning key, the payment's ``transaction_id``.
        payload: The JSON envelope (docs/events.md).
        headers: ``event_type``, ``event_id`` and ``correlation_id``.
    """

    event_id: uuid.UUID
    event_type: str
    key: str
    payload: Mapping[str, Any]
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Lease:
    """A publisher's hold on an outbox row: nobody else sends it until ``claimed_until``."""

    claimed_by: str
    claimed_until: datetime


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """How far publication is behind."""

    pending: int
    oldest_pending_age_s: float


class OutboxRepository(Protocol):
    """The transactional outbox."""

    def add(self, message: OutboxMessage, *, lease: Lease | None = None) -> None:
        """Stage an event with the change it describes; with ``lease``, already claimed."""
        ...

    async def has_unpublished(self, key: str) -> bool:
        """Whether an event with this key is still waiting to be published."""
        ...

    async def claim(
        self, *, claimer: str, lease: timedelta, limit: int, min_age: timedelta | None = None
    ) -> list[OutboxMessage]:
        """Lease up to ``limit`` publishable events to ``claimer``, oldest first.

        Publishable: unpublished, not leased by anyone else, and every older unpublished
        event with the same key is in the same claim (so one key's events leave in order).
        With ``min_age``, only events at least that old.
        """
        ...

    async def release(
        self, event_ids: Sequence[uuid.UUID], *, claimer: str, error: str | None
    ) -> None:
        """Give back ``claimer``'s lease on unpublished events; ``error`` counts an attempt."""
        ...

    async def mark_published(self, event_ids: Sequence[uuid.UUID], *, at: datetime) -> None:
        """Record that the broker acknowledged these events (the first mark wins)."""
        ...

    async def backlog(self) -> OutboxBacklog:
        """Pending count and the age of the oldest pending event."""
        ...

    async def purge_published(self, *, before: datetime, limit: int) -> int:
        """At once: delete up to ``limit`` events published before ``before`` (rows another
        process is deleting are skipped); how many."""
        ...


class EventPublisher(Protocol):
    """Publishes committed outbox events; never raises into the request that wrote them."""

    @property
    def enabled(self) -> bool:
        """Whether a broker is configured at all."""
        ...

    def reserve(self, message: OutboxMessage) -> Lease | None:
        """Before the commit: lease the event to this process, to publish it right after.

        ``None`` when this process will not publish it (no broker, broker down, stopping):
        the relay will.
        """
        ...

    async def publish_committed(self, messages: Sequence[OutboxMessage]) -> None:
        """After the commit: publish the events this process reserved. Never raises; what
        is not acknowledged stays pending for the relay."""
        ...

    async def broker_available(self) -> bool:
        """Whether the broker answers (for /health)."""
        ...


class OutboxOnlyPublisher:
    """No broker configured: events wait in the outbox until one is."""

    enabled = False

    def reserve(self, message: OutboxMessage) -> Lease | None:
        """Nothing publishes now: the event stays pending."""
        return None

    async def publish_committed(self, messages: Sequence[OutboxMessage]) -> None:
        """Leave the events pending."""

    async def broker_available(self) -> bool:
        """There is no broker to be available."""
        return False


class OutboxUnitOfWork(Protocol):
    """The part of a unit of work a publisher needs: the outbox, in one transaction."""

    @property
    def outbox(self) -> OutboxRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None:
        """Make the staged changes durable."""
        ...
