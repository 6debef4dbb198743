"""The background relay: publishes whatever the requests did not, at least once.

What it owns: the loop that *claims* a batch of pending events under a lease (one short
transaction, then no lock and no open transaction while Kafka is talked to), sends it
(:func:`~app.adapters.messaging.sending.send_in_waves`) and *settles* it (marks what was
acknowledged published and gives back the lease on the rest, counting the attempt); a
lease that runs out (a crashed worker) makes its events claimable again. A claim only
takes an event when every older unpublished event of its key is in the same claim
(``OutboxRepository.claim``), so one key's events never race each other. Events younger
than a short grace are left to the request that wrote them, which publishes them itself.

While batches fail it backs off exponentially with jitter, and while the broker is known
to be down it only probes it instead of claiming; after a few failed batches with the
broker answering it has the producer rebuilt. On shutdown :meth:`OutboxRelay.stop` lets
the batch in hand finish (never cancelled half-published, which would publish it twice)
and :meth:`OutboxRelay.drain` publishes what is pending for a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from app.adapters.messaging.producer import MAX_BACKOFF_S, ProducerSupervisor, backoff_delays
from app.adapters.messaging.sending import BatchResult, Claimers, describe, send_in_waves, settle
from app.services.ports.messaging import OutboxUnitOfWork
from app.services.ports.metrics import Metrics, NoMetrics

logger = logging.getLogger(__name__)

FRESH_EVENT_GRACE_S = 2.0
"""The relay leaves events younger than this to the request that wrote them, which
publishes them itself right after its commit (so the two do not race for them)."""


def _log_batch(result: BatchResult, elapsed_ms: float) -> None:
    counts = {
        "outbox_claimed": result.claimed,
        "outbox_published": len(result.published),
        "outbox_failed": len(result.failed),
        "outbox_deferred": len(result.deferred),
        "outbox_publish_ms": round(elapsed_ms, 1),
    }
    logger.info(
        "outbox: published %(outbox_published)d of %(outbox_claimed)d event(s) "
        "(%(outbox_failed)d failed, %(outbox_deferred)d deferred) in %(outbox_publish_ms).1f ms",
        counts,
        extra=counts,
    )


async def _pause(seconds: float, until: asyncio.Event) -> None:
    """Sleep, waking early when ``until`` is set."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await until.wait()


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("outbox relay stopped unexpectedly: %s", describe(exc), exc_info=exc)


class OutboxRelay:
    """Claims pending outbox events in batches and publishes them, in the background."""

    def __init__(
        self,
        *,
        uow_factory: Callable[[], OutboxUnitOfWork],
        producer: ProducerSupervisor,
        topic: str,
        lease: timedelta,
        claimers: Claimers,
        publish_timeout_s: float = 5.0,
        interval_s: float = 1.0,
        batch_size: int = 100,
        shutdown_drain_s: float | None = None,
        fresh_grace_s: float = FRESH_EVENT_GRACE_S,
        metrics: Metrics | None = None,
    ) -> None:
        """``interval_s`` is the pause when nothing is pending (and the first backoff),
        ``shutdown_drain_s`` how long :meth:`drain` publishes (default: a publish timeout)."""
        self._uow_factory = uow_factory
        self._producer = producer
        self._topic = topic
        self._lease = lease
        self._claimers = claimers
        self._timeout_s = publish_timeout_s
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._drain_s = publish_timeout_s if shutdown_drain_s is None else shutdown_drain_s
        self._fresh_grace = timedelta(seconds=fresh_grace_s)
        self._metrics = metrics or NoMetrics()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start relaying in the background (once a producer is connected)."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="outbox-relay")
            self._task.add_done_callback(_report_crash)
            logger.info(
                "outbox relay starting: topic %s on %s, every %.1f s, batches of %d",
                self._topic,
                self._producer.bootstrap_servers,
                self._interval_s,
                self._batch_size,
            )

    async def stop(self, grace_s: float) -> None:
        """Finish the batch in hand (cancelled only past ``grace_s``); relay no more."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=grace_s)
        if not done:
            logger.warning("outbox relay did not finish its batch in %.0f s; cancelling", grace_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self) -> None:
        """Publish what is pending, batch after batch, for at most the drain time."""
        deadline = time.monotonic() + self._drain_s
        while time.monotonic() < deadline and self._producer.healthy:
            try:
                result = await self.relay_once(min_age=None)
            except Exception as exc:
                logger.warning("outbox drain on shutdown stopped: %s", describe(exc))
                return
            if result.failed or result.claimed < self._batch_size:
                return

    async def relay_once(self, *, min_age: timedelta | None) -> BatchResult:
        """Claim one batch, publish it, record the outcome."""
        if (producer := self._producer.producer) is None:
            return BatchResult()
        claimer = self._claimers.new()
        async with self._uow_factory() as uow:
            messages = await uow.outbox.claim(
                claimer=claimer, lease=self._lease, limit=self._batch_size, min_age=min_age
            )
            await uow.commit()
        if not messages:
            return BatchResult()
        started = time.perf_counter()
        result = await send_in_waves(producer, self._topic, messages, timeout_s=self._timeout_s)
        claimers = dict.fromkeys((message.event_id for message in messages), claimer)
        await settle(self._uow_factory, result, claimers=claimers)
        self._producer.record(result)
        self._metrics.outbox_published(
            path="relay", published=len(result.published), failed=len(result.failed)
        )
        _log_batch(result, (time.perf_counter() - started) * 1000)
        return result

    async def _run(self) -> None:
        delays = backoff_delays(self._interval_s, MAX_BACKOFF_S)
        while await self._producer_connected():
            delay = self._interval_s
            try:
                if not self._producer.healthy and not await self._producer.broker_available():
                    raise ConnectionError("Kafka broker not reachable")
                result = await self.relay_once(min_age=self._fresh_grace)
            except Exception as exc:
                delay = next(delays)
                logger.warning("outbox relay: %s; retrying in %.1f s", describe(exc), delay)
            else:
                if result.failed and not result.published:
                    delay = next(delays)
                else:
                    delays = backoff_delays(self._interval_s, MAX_BACKOFF_S)
                    if result.claimed >= self._batch_size:
                        delay = 0.0
                if self._producer.rebuild_due(result):
                    await self._producer.rebuild()
            await _pause(delay, self._stopping)

    async def _producer_connected(self) -> bool:
        """Wait for a connected producer; False once the relay is stopping."""
        if self._producer.producer is None and not self._stopping.is_set():
            connected = asyncio.ensure_future(self._producer.wait_connected())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({connected, stopping}, return_when=asyncio.FIRST_COMPLETED)
            connected.cancel()
            stopping.cancel()
        return not self._stopping.is_set()
