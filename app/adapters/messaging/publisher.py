"""The request path: a request publishes its own events right after its commit.

What it owns: :class:`KafkaEventPublisher`, the services' ``EventPublisher``. Before the
commit, :meth:`~KafkaEventPublisher.reserve` leases the new event to this process (only
while the broker is healthy and the service is not stopping), so its outbox row is
written already claimed, in the same statement as the change it describes, and the
background relay leaves it alone; the publisher remembers which events it reserved.
After the commit, :meth:`~KafkaEventPublisher.publish_committed` sends the events it
still holds in memory -- no claim transaction, no reload -- and marks them published; the
marks of requests finishing at the same time share one ``UPDATE``
(:class:`PublishedMarks`). The request waits for that at most a short bound
(``KAFKA_REQUEST_PUBLISH_WAIT_S``): past it, the request answers and the publication goes
on in the background, bounded by the publish timeout, and shutdown waits for it.
Whatever is not acknowledged is handed back to the relay at once. Services reserve an
event only when no older event of its key is unpublished, so the relay publishes that
one, in order.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from app.adapters.messaging.producer import ProducerSupervisor
from app.adapters.messaging.sending import BatchResult, Claimers, describe, send_in_waves, settle
from app.services.ports.messaging import Lease, OutboxMessage, OutboxUnitOfWork
from app.services.ports.metrics import Metrics, NoMetrics

logger = logging.getLogger(__name__)


class PublishedMarks:
    """Marks acknowledged events published with one ``UPDATE`` for every request that
    finishes meanwhile (group commit: while one ``UPDATE`` runs the next batch gathers; no
    timer, so a lone request waits for nothing extra)."""

    def __init__(self, uow_factory: Callable[[], OutboxUnitOfWork]) -> None:
        self._uow_factory = uow_factory
        self._due: list[tuple[list[uuid.UUID], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def mark(self, event_ids: list[uuid.UUID]) -> None:
        """Return once these events are marked published (or raise why not)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._due.append((event_ids, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_due())
        await done

    async def _write_due(self) -> None:
        while self._due:
            batch, self._due = self._due, []
            published = [event_id for event_ids, _ in batch for event_id in event_ids]
            try:
                await settle(self._uow_factory, BatchResult(published=published), claimers={})
            except Exception as exc:
                for _, done in batch:
                    done.set_exception(exc)
            else:
                for _, done in batch:
                    done.set_result(None)


class KafkaEventPublisher:
    """Publishes the events a request reserved, right after the request commits them."""

    enabled = True

    def __init__(
        self,
        *,
        uow_factory: Callable[[], OutboxUnitOfWork],
        producer: ProducerSupervisor,
        topic: str,
        lease: timedelta,
        claimers: Claimers,
        publish_timeout_s: float = 5.0,
        request_wait_s: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        """``request_wait_s`` bounds how long :meth:`publish_committed` keeps its caller."""
        self._uow_factory = uow_factory
        self._producer = producer
        self._topic = topic
        self._lease = lease
        self._claimers = claimers
        self._timeout_s = publish_timeout_s
        self._request_wait_s = request_wait_s
        self._metrics = metrics or NoMetrics()
        self._marks = PublishedMarks(uow_factory)
        self._reserved: dict[uuid.UUID, Lease] = {}  # in lease order: oldest first
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False

    def reserve(self, message: OutboxMessage) -> Lease | None:
        """Lease a not yet committed event to this process, if the broker is healthy."""
        if not self._producer.healthy or self._stopping:
            return None
        now = datetime.now(UTC)
        while self._reserved and next(iter(self._reserved.values())).claimed_until < now:
            del self._reserved[next(iter(self._reserved))]  # never committed, or never sent
        lease = Lease(claimed_by=self._claimers.new(), claimed_until=now + self._lease)
        self._reserved[message.event_id] = lease
        return lease

    async def publish_committed(self, messages: Sequence[OutboxMessage]) -> None:
        """Publish the just-committed events this publisher reserved, waiting for that at
        most the request bound; the publication goes on in the background (bounded by the
        publish timeout), also if the caller is cancelled. Never raises: what is not
        acknowledged is handed back to the relay."""
        claimers: dict[uuid.UUID, str] = {}
        for message in messages:
            if (lease := self._reserved.pop(message.event_id, None)) is not None:
                claimers[message.event_id] = lease.claimed_by
        mine = [message for message in messages if message.event_id in claimers]
        if not mine:
            return
        task = asyncio.create_task(self._publish(mine, claimers))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        await asyncio.wait({task}, timeout=self._request_wait_s)  # never cancels the task

    async def broker_available(self) -> bool:
        """Whether the producer is connected and a broker answers (for /health)."""
        return await self._producer.broker_available()

    def stop_reserving(self) -> None:
        """Reserve nothing more: from now on the relay publishes every new event."""
        self._stopping = True

    async def wait_for_publications(self, grace_s: float) -> None:
        """Wait (at most ``grace_s``) for the publications requests have started."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace_s)

    async def _publish(self, messages: list[OutboxMessage], claimers: dict[uuid.UUID, str]) -> None:
        producer = self._producer.producer
        try:
            if producer is None or not self._producer.healthy or self._stopping:
                # Kafka went away since the reservation: hand the events to the relay now
                # rather than when their lease runs out.
                ids = [message.event_id for message in messages]
                result = BatchResult(claimed=len(messages), deferred=ids)
            else:
                result = await send_in_waves(
                    producer, self._topic, messages, timeout_s=self._timeout_s
                )
            if result.failed or result.deferred:
                await settle(self._uow_factory, result, claimers=claimers)
            else:
                await self._marks.mark(result.published)
        except Exception as exc:
            logger.warning(
                "events not published after commit (%s); the outbox relay will retry",
                describe(exc),
            )
            return
        self._producer.record(result)
        self._metrics.outbox_published(
            path="request", published=len(result.published), failed=len(result.failed)
        )
        if result.failed:
            logger.warning(
                "%d event(s) not published after commit (%s); the outbox relay will retry",
                len(result.failed),
                next(iter(result.failed.values())),
            )
