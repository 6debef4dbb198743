"""The Kafka side of the transactional outbox: publishing committed events, at least once.

:class:`KafkaOutboxRelay` is the :class:`~app.adapters.messaging.base.EventPublisher` the
services call after they commit, and the background relay that publishes whatever is
still pending (Kafka was down, the process died between commit and publish).

Leases, not open transactions. A publisher first *claims* events in one short database
transaction (``UPDATE ... SET claimed_by, claimed_until WHERE id IN (SELECT ... FOR UPDATE
SKIP LOCKED) RETURNING``) and commits; it then talks to Kafka holding no lock and no open
transaction; a second short transaction marks what was acknowledged as published and gives
back the lease on the rest (counting the attempt). A lease that runs out (a crashed
worker) makes its events claimable again.

The request path takes its lease before the commit: :meth:`KafkaOutboxRelay.reserve` stamps
the new outbox row with this process's lease, so the row is written already claimed, in
the same statement as the change it describes. After the commit the request sends the
event it still holds in memory and marks it published with one statement -- no claim
transaction, no reload. The background relay leaves leased rows (and, by a short grace,
any very fresh row) alone, so in the normal case each event is published exactly once, by
its request, before the request answers. A request only reserves an event when no older
event of its transaction is still unpublished (``OutboxRepository.has_unpublished``, read
under the payment's row lock); otherwise the relay publishes it, in order.

Per-transaction order. Events are keyed by ``transaction_id`` (so all of a transaction's
events land on one partition), and a claim only takes an event when every older
unpublished event of the same transaction is in that same claim (see
``OutboxRepository.claim``): an event never leaves while an older one of its transaction
is held by another publisher, locked by a claim in progress, or still waiting. Within a
claim, events go out in waves -- the first event of each transaction, then the second
once the first is acknowledged, and so on -- and when one fails the later events of its
transaction are handed back unsent. So a transaction's events first reach Kafka in
commit order; a retry after a timeout may repeat an event (even after newer ones), but
no event's first copy is ever ahead of an older event's, and consumers that drop
repeated ``event_id``\\ s see each transaction's events in order.

Failures. The producer (``acks="all"``, idempotent) is started in the background with
``backoff`` retries, so the service starts and answers without Kafka. A failed or timed-out
publication (bounded by ``publish_timeout_s``) is logged and left to the relay, which backs
off exponentially with jitter and, while the broker is known to be down, only probes it
instead of claiming. Until the relay succeeds again, requests skip the attempt and answer
at once; their events wait in the outbox and drain when the broker is back.

Shutdown. :meth:`KafkaOutboxRelay.stop` lets the current batch finish (it is never
cancelled half-published, which would publish it twice), waits for publications started by
requests, publishes what is still pending for a bounded time, then flushes and closes the
producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import backoff
from aiokafka import AIOKafkaProducer
from sqlalchemy.exc import SQLAlchemyError

from app.adapters.db.models import OutboxEvent
from app.adapters.db.unit_of_work import UnitOfWork
from app.adapters.metrics import PaymentMetrics
from app.core.jsoncodec import dump_json

logger = logging.getLogger(__name__)

HEADER_NAMES = ("event_type", "event_id", "correlation_id")
"""The Kafka headers every event carries (SPEC §6), in this order."""

MIN_LEASE_S = 30.0
"""Shortest lease: long enough for a batch's publish timeout plus two database round trips."""

MAX_BACKOFF_S = 10.0
"""Longest pause between relay attempts while Kafka is failing (the drain delay after it
comes back is at most about this long)."""

FRESH_EVENT_GRACE_S = 2.0
"""The relay leaves events younger than this to the request that wrote them, which
publishes them itself right after its commit (so the two do not race for them)."""

UNHEALTHY_BATCHES_BEFORE_RECONNECT = 3
"""Failed batches, with the broker answering metadata requests, before the producer is
rebuilt (its sender may be stuck in a state it cannot leave on its own)."""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def kafka_record(event: OutboxEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """The key, value and headers an outbox row is published with."""
    headers = event.headers or {}
    values = {
        "event_type": event.event_type,
        "event_id": str(event.event_id),
        "correlation_id": str(headers.get("correlation_id") or ""),
    }
    return (
        event.aggregate_id.encode(),
        dump_json(event.payload).encode(),
        [(name, values[name].encode()) for name in HEADER_NAMES],
    )


def _waves(events: Sequence[OutboxEvent]) -> list[list[OutboxEvent]]:
    """Split a claim (in commit order) by position within its transaction: firsts, then
    seconds, and so on."""
    seen: dict[str, int] = defaultdict(int)
    waves: list[list[OutboxEvent]] = []
    for event in events:
        rank = seen[event.aggregate_id]
        seen[event.aggregate_id] += 1
        if rank == len(waves):
            waves.append([])
        waves[rank].append(event)
    return waves


@dataclass(slots=True)
class BatchResult:
    """What happened to one claim, by ``event_id``."""

    claimed: int = 0
    published: list[uuid.UUID] = field(default_factory=list)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    deferred: list[uuid.UUID] = field(default_factory=list)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("outbox relay stopped unexpectedly: %s", _describe(exc), exc_info=exc)


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    # A send we stopped waiting for may still fail later; mark its error as seen.
    if not future.cancelled():
        future.exception()


class KafkaOutboxRelay:
    """Publishes outbox events to Kafka: right after commit, and from a background relay."""

    enabled = True

    def __init__(
        self,
        *,
        uow_factory: Callable[[], UnitOfWork],
        bootstrap_servers: str,
        topic: str,
        client_id: str = "payment-service",
        publish_timeout_s: float = 5.0,
        interval_s: float = 1.0,
        batch_size: int = 100,
        lease_s: float | None = None,
        shutdown_drain_s: float | None = None,
        fresh_grace_s: float = FRESH_EVENT_GRACE_S,
        producer_factory: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        """Configure the relay; nothing connects until :meth:`start`.

        Args:
            uow_factory: Opens a unit of work on the outbox's database.
            bootstrap_servers: ``host:port[,host:port]`` of the Kafka cluster.
            topic: The events topic (it must exist: creating it belongs to deployment).
            client_id: Kafka client id.
            publish_timeout_s: Longest wait for Kafka's acknowledgements of one batch.
            interval_s: Pause between relay polls when nothing is pending.
            batch_size: Events claimed per relay batch.
            lease_s: How long a claim holds its events (default: at least 30 s and four
                publish timeouts); after that a crashed publisher's events are free again.
            shutdown_drain_s: How long :meth:`stop` keeps publishing what is pending
                (default: one publish timeout).
            fresh_grace_s: Age below which the background relay leaves an event to the
                request that wrote it.
            producer_factory: Builds the producer (tests substitute a failing one).
        """
        self._uow_factory = uow_factory
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._client_id = client_id
        self._publish_timeout_s = publish_timeout_s
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._lease = timedelta(seconds=lease_s or max(MIN_LEASE_S, 4 * publish_timeout_s))
        self._shutdown_drain_s = publish_timeout_s if shutdown_drain_s is None else shutdown_drain_s
        self._fresh_grace = timedelta(seconds=fresh_grace_s)
        self._backoff_max_s = max(interval_s, MAX_BACKOFF_S)
        self._producer_factory = producer_factory or self._default_producer
        self._instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._claims = itertools.count(1)
        self._producer: AIOKafkaProducer | None = None
        self._healthy = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._request_publications: set[asyncio.Task[None]] = set()
        self._marks_due: list[tuple[list[uuid.UUID], asyncio.Future[None]]] = []
        self._marker: asyncio.Task[None] | None = None
        self._metrics = PaymentMetrics.disabled()

    def report_metrics_to(self, metrics: PaymentMetrics) -> None:
        """Count what each batch published and what failed in ``metrics``."""
        self._metrics = metrics

    # -- EventPublisher ---------------------------------------------------------------

    def reserve(self, event: OutboxEvent) -> bool:
        """Lease a not yet committed event to the request writing it, if Kafka is up.

        The row is then written already claimed by this process, and the request publishes
        it right after its commit (:meth:`publish_committed`); the background relay only
        takes it if that lease runs out. Returns whether the event was reserved.
        """
        if self._producer is None or not self._healthy or self._stopping.is_set():
            return False
        event.claimed_by = self._new_claimer()
        event.claimed_until = datetime.now(UTC) + self._lease
        return True

    async def publish_committed(self, events: Sequence[OutboxEvent]) -> None:
        """Publish the just-committed events this process reserved, waiting at most the
        publish timeout.

        Never raises: anything not acknowledged in time stays pending for the relay.
        The publication continues even if the calling request is cancelled.
        """
        mine = [event for event in events if self._reserved_here(event)]
        if not mine:
            return
        task = asyncio.create_task(self._publish_now(mine))
        self._request_publications.add(task)
        task.add_done_callback(self._request_publications.discard)
        await asyncio.shield(task)

    async def broker_available(self) -> bool:
        """Whether the producer is connected and a broker answers a metadata request."""
        producer = self._producer
        if producer is None:
            return False
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                return bool(await producer.client.force_metadata_update())
        except Exception:
            return False

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting and relaying in the background; returns at once."""
        if self._task is not None:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")
        self._task.add_done_callback(_report_crash)
        logger.info(
            "outbox relay starting: topic %s on %s, every %.1f s, batches of %d",
            self._topic,
            self._bootstrap_servers,
            self._interval_s,
            self._batch_size,
        )

    async def stop(self) -> None:
        """Finish the batch in hand, publish what is pending (bounded), flush and close."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        # A batch is bounded by the publish timeout plus two short transactions.
        grace_s = 2 * self._publish_timeout_s + 5.0
        done, _ = await asyncio.wait({task}, timeout=grace_s)
        if not done:
            logger.warning("outbox relay did not finish its batch in %.0f s; cancelling", grace_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._request_publications:
            await asyncio.wait(set(self._request_publications), timeout=grace_s)
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if self._healthy:
            await self._drain_before_shutdown(producer)
        try:
            async with asyncio.timeout(grace_s):
                await producer.flush()
        except Exception as exc:
            logger.warning("Kafka producer flush failed on shutdown: %s", _describe(exc))
        await self._close(producer)
        self._healthy = False
        logger.info("outbox relay stopped: Kafka producer flushed and closed")

    # -- the background loop ----------------------------------------------------------

    async def _run(self) -> None:
        await self._connect()
        delays = self._backoff_delays()
        failed_while_reachable = 0
        while not self._stopping.is_set():
            delay = self._interval_s
            try:
                if not self._healthy and not await self.broker_available():
                    raise ConnectionError("Kafka broker not reachable")
                result = await self._relay_once(self._batch_size)
            except Exception as exc:
                delay = next(delays)
                logger.warning("outbox relay: %s; retrying in %.1f s", _describe(exc), delay)
            else:
                if result.failed and not result.published:
                    delay = next(delays)
                    failed_while_reachable += 1
                    if failed_while_reachable >= UNHEALTHY_BATCHES_BEFORE_RECONNECT:
                        failed_while_reachable = 0
                        await self._reconnect()
                else:
                    failed_while_reachable = 0
                    delays = self._backoff_delays()
                    if result.claimed >= self._batch_size:
                        delay = 0.0
            await self._pause(delay)

    async def _relay_once(self, limit: int) -> BatchResult:
        """Claim one batch of whatever is pending, publish it, record the outcome."""
        producer = self._producer
        if producer is None:
            return BatchResult()
        return await self._claim_and_publish(producer, limit=limit, min_age=self._fresh_grace)

    async def _publish_now(self, events: list[OutboxEvent]) -> None:
        producer = self._producer
        try:
            if producer is None or not self._healthy or self._stopping.is_set():
                # Kafka went away since the reservation: hand the events to the relay now
                # rather than when their lease runs out.
                result = BatchResult(claimed=len(events), deferred=[e.event_id for e in events])
            else:
                result = await self._send(producer, events)
            if result.failed or result.deferred:
                await self._settle(
                    result, claimers={e.event_id: e.claimed_by for e in events if e.claimed_by}
                )
            else:
                await self._mark_published_with_others(result.published)
        except Exception as exc:
            logger.warning(
                "events not published after commit (%s); the outbox relay will retry",
                _describe(exc),
            )
            return
        self._record_outcome(result)
        self._metrics.outbox_published(
            path="request", published=len(result.published), failed=len(result.failed)
        )
        if result.failed:
            logger.warning(
                "%d event(s) not published after commit (%s); the outbox relay will retry",
                len(result.failed),
                next(iter(result.failed.values())),
            )

    async def _mark_published_with_others(self, event_ids: list[uuid.UUID]) -> None:
        """Mark these acknowledged events published in one ``UPDATE`` with those of every
        other request that finishes meanwhile (group commit: while one ``UPDATE`` runs,
        the next batch gathers; no timer, so a lone request waits for nothing extra)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks_due.append((event_ids, done))
        if self._marker is None or self._marker.done():
            self._marker = asyncio.create_task(self._mark_due_events())
        await done

    async def _mark_due_events(self) -> None:
        while self._marks_due:
            batch, self._marks_due = self._marks_due, []
            try:
                await self._settle(
                    BatchResult(published=[e for event_ids, _ in batch for e in event_ids]),
                    claimers={},
                )
            except Exception as exc:
                for _, done in batch:
                    done.set_exception(exc)
            else:
                for _, done in batch:
                    done.set_result(None)

    async def _claim_and_publish(
        self,
        producer: AIOKafkaProducer,
        *,
        limit: int,
        min_age: timedelta | None = None,
    ) -> BatchResult:
        claimer = self._new_claimer()
        async with self._uow_factory() as uow:
            events = await uow.outbox.claim(
                claimer=claimer, lease=self._lease, limit=limit, min_age=min_age
            )
            await uow.commit()
        if not events:
            return BatchResult()
        started = time.perf_counter()
        result = await self._send(producer, events)
        await self._settle(result, claimers=dict.fromkeys((e.event_id for e in events), claimer))
        self._record_outcome(result)
        self._metrics.outbox_published(
            path="relay", published=len(result.published), failed=len(result.failed)
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info(
            "outbox: published %d of %d event(s) (%d failed, %d deferred) in %.1f ms",
            len(result.published),
            result.claimed,
            len(result.failed),
            len(result.deferred),
            elapsed_ms,
            extra={
                "outbox_claimed": result.claimed,
                "outbox_published": len(result.published),
                "outbox_failed": len(result.failed),
                "outbox_deferred": len(result.deferred),
                "outbox_publish_ms": round(elapsed_ms, 1),
            },
        )
        return result

    def _record_outcome(self, result: BatchResult) -> None:
        if result.published:
            self._healthy = True
        elif result.failed:
            self._healthy = False

    def _new_claimer(self) -> str:
        return f"{self._instance}#{next(self._claims)}"

    def _reserved_here(self, event: OutboxEvent) -> bool:
        return bool(event.claimed_by and event.claimed_by.startswith(f"{self._instance}#"))

    async def _send(self, producer: AIOKafkaProducer, events: list[OutboxEvent]) -> BatchResult:
        """Send a claim wave by wave within the publish timeout; never raises."""
        result = BatchResult(claimed=len(events))
        deadline = asyncio.get_running_loop().time() + self._publish_timeout_s
        blocked: set[str] = set()
        for wave in _waves(events):
            futures: dict[uuid.UUID, asyncio.Future[Any]] = {}
            for event in wave:
                if event.aggregate_id in blocked:
                    result.deferred.append(event.event_id)
                    continue
                key, value, headers = kafka_record(event)
                try:
                    async with asyncio.timeout_at(deadline):
                        futures[event.event_id] = await producer.send(
                            self._topic, value=value, key=key, headers=headers
                        )
                except Exception as exc:
                    result.failed[event.event_id] = _describe(exc)
                    blocked.add(event.aggregate_id)
            if futures:
                remaining = max(0.0, deadline - asyncio.get_running_loop().time())
                await asyncio.wait(futures.values(), timeout=remaining)
            for event in wave:
                future = futures.get(event.event_id)
                if future is None:
                    continue
                if not future.done():
                    future.add_done_callback(_retrieve_exception)
                    result.failed[event.event_id] = (
                        f"no acknowledgement within {self._publish_timeout_s:g} s"
                    )
                elif future.cancelled() or future.exception() is not None:
                    error = future.exception() if not future.cancelled() else None
                    result.failed[event.event_id] = _describe(error) if error else "cancelled"
                else:
                    result.published.append(event.event_id)
                    continue
                blocked.add(event.aggregate_id)
        return result

    @backoff.on_exception(
        backoff.expo, (SQLAlchemyError, OSError), max_tries=4, max_value=2, logger=logger
    )
    async def _settle(self, result: BatchResult, *, claimers: dict[uuid.UUID, str]) -> None:
        """Mark what Kafka acknowledged as published and hand back the rest.

        ``claimers`` names the lease each unpublished event is held under: a lease that
        ran out and was taken by another publisher is left alone.
        """
        released: dict[tuple[str, str | None], list[uuid.UUID]] = defaultdict(list)
        for event_id, error in result.failed.items():
            released[(claimers[event_id], error)].append(event_id)
        for event_id in result.deferred:
            released[(claimers[event_id], None)].append(event_id)
        async with self._uow_factory() as uow:
            if not released:
                await uow.without_transaction()  # one statement: no BEGIN/COMMIT needed
            await uow.outbox.mark_published(result.published, at=datetime.now(UTC))
            for (claimer, attempt_error), event_ids in released.items():
                await uow.outbox.release(event_ids, claimer=claimer, error=attempt_error)
            await uow.commit()

    async def _drain_before_shutdown(self, producer: AIOKafkaProducer) -> None:
        deadline = time.monotonic() + self._shutdown_drain_s
        while time.monotonic() < deadline:
            try:
                result = await self._claim_and_publish(producer, limit=self._batch_size)
            except Exception as exc:
                logger.warning("outbox drain on shutdown stopped: %s", _describe(exc))
                return
            if result.failed or result.claimed < self._batch_size:
                return

    # -- the producer -----------------------------------------------------------------

    def _default_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=max(1000, int(self._publish_timeout_s * 1000)),
            # While the broker is away the sender retries unacknowledged batches (an
            # idempotent producer never drops them): every 0.5 s, not every 0.1 s.
            retry_backoff_ms=500,
        )

    async def _connect(self) -> None:
        """Start a producer, retrying with backoff until it connects or the relay stops."""
        delays = self._backoff_delays()
        while not self._stopping.is_set():
            producer: AIOKafkaProducer | None = None
            try:
                producer = self._producer_factory()
                await producer.start()
                async with asyncio.timeout(self._publish_timeout_s):
                    await producer.partitions_for(self._topic)
            except Exception as exc:
                if producer is not None:
                    await self._close(producer)
                delay = next(delays)
                logger.warning(
                    "Kafka not ready at %s (%s); events wait in the outbox, retrying in %.1f s",
                    self._bootstrap_servers,
                    _describe(exc),
                    delay,
                )
                await self._pause(delay)
                continue
            self._producer = producer
            self._healthy = True
            logger.info("Kafka producer connected to %s", self._bootstrap_servers)
            return

    async def _reconnect(self) -> None:
        """Replace a producer that keeps failing while the broker answers."""
        if not await self.broker_available():
            return
        logger.warning("Kafka producer keeps failing while the broker answers; reconnecting")
        producer, self._producer = self._producer, None
        self._healthy = False
        if producer is not None:
            await self._close(producer)
        await self._connect()

    async def _close(self, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(self._publish_timeout_s + 5.0):
                await producer.stop()
        except Exception as exc:
            logger.warning("Kafka producer did not close cleanly: %s", _describe(exc))

    # -- pacing -----------------------------------------------------------------------

    def _backoff_delays(self) -> Iterator[float]:
        """Exponential delays from the poll interval up to the cap, with jitter."""
        waits = backoff.expo(base=2, factor=self._interval_s, max_value=self._backoff_max_s)
        next(waits)  # backoff's generators yield once before the first value
        for wait in waits:
            yield wait / 2 + backoff.full_jitter(wait / 2)

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early when the relay is asked to stop."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
