"""The Kafka producer's life: connecting, knowing whether the broker is up, rebuilding, closing.

What it owns: one :class:`AIOKafkaProducer` (``acks="all"``, idempotent), started in the
background with exponential backoff so the service starts and answers without Kafka;
whether the broker is *healthy* (the last batch, from either path, got acknowledgements
rather than failures), which is what decides whether requests publish and whether the
relay claims or only probes; rebuilding a producer that keeps failing while the broker
answers metadata requests (its sender may be stuck in a state it cannot leave on its
own); flushing and closing it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

import backoff
from aiokafka import AIOKafkaProducer

from app.adapters.messaging.sending import BatchResult, describe

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0
"""Longest pause between attempts while Kafka is failing (the drain delay after it comes
back is at most about this long)."""

UNHEALTHY_BATCHES_BEFORE_RECONNECT = 3
"""Failed relay batches in a row, with the broker answering, before the producer is rebuilt."""


def backoff_delays(first_s: float, cap_s: float) -> Iterator[float]:
    """Exponential delays from ``first_s`` up to ``cap_s``, with jitter on their upper half."""
    waits = backoff.expo(base=2, factor=first_s, max_value=max(first_s, cap_s))
    next(waits)  # backoff's generators yield once before the first value
    for wait in waits:
        yield wait / 2 + backoff.full_jitter(wait / 2)


class ProducerSupervisor:
    """Keeps one Kafka producer connected, and knows whether the broker is healthy."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        client_id: str = "payment-service",
        publish_timeout_s: float = 5.0,
        retry_interval_s: float = 1.0,
        producer_factory: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        """Nothing connects until :meth:`start`; ``producer_factory`` replaces the default
        producer (tests substitute failing ones); ``retry_interval_s`` is the first
        reconnection delay."""
        self.bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._client_id = client_id
        self._timeout_s = publish_timeout_s
        self._retry_interval_s = retry_interval_s
        self._factory = producer_factory or self._default_producer
        self._producer: AIOKafkaProducer | None = None
        self._healthy = False
        self._failed_batches = 0
        self._connected = asyncio.Event()
        self._closed = False
        self._connecting: asyncio.Task[None] | None = None

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The connected producer, if any."""
        return self._producer

    @property
    def healthy(self) -> bool:
        """Connected, and the last batch was not a failure."""
        return self._producer is not None and self._healthy

    def start(self) -> None:
        """Start connecting in the background (with backoff); returns at once."""
        self._closed = False
        self._connect_in_background()

    async def wait_connected(self) -> None:
        """Return once a producer is connected."""
        await self._connected.wait()

    async def broker_available(self) -> bool:
        """Whether the producer is connected and a broker answers a metadata request."""
        if (producer := self._producer) is None:
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                return bool(await producer.client.force_metadata_update())
        except Exception:
            return False

    def record(self, result: BatchResult) -> None:
        """Learn the broker's health from a batch's outcome (relay or request)."""
        if result.published:
            self._healthy = True
        elif result.failed:
            self._healthy = False

    def rebuild_due(self, result: BatchResult) -> bool:
        """After each relay batch: whether enough failed in a row to rebuild the producer."""
        self._failed_batches = (
            self._failed_batches + 1 if result.failed and not result.published else 0
        )
        if self._failed_batches < UNHEALTHY_BATCHES_BEFORE_RECONNECT:
            return False
        self._failed_batches = 0
        return True

    async def rebuild(self) -> None:
        """Replace a producer that keeps failing while the broker answers; the new one
        connects in the background."""
        if not await self.broker_available():
            return  # the broker is away: a new producer would fail just the same
        logger.warning("Kafka producer keeps failing while the broker answers; reconnecting")
        producer, self._producer, self._healthy = self._producer, None, False
        self._connected.clear()
        if producer is not None:
            await self._close(producer)
        if not self._closed:
            self._connect_in_background()

    async def close(self, grace_s: float) -> None:
        """Stop connecting, flush what the producer holds (within ``grace_s``) and close it."""
        self._closed = True
        if (connecting := self._connecting) is not None and not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        producer, self._producer, self._healthy = self._producer, None, False
        self._connected.clear()
        if producer is None:
            return
        try:
            async with asyncio.timeout(grace_s):
                await producer.flush()
        except Exception as exc:
            logger.warning("Kafka producer flush failed on shutdown: %s", describe(exc))
        await self._close(producer)
        logger.info("Kafka producer flushed and closed")

    def _connect_in_background(self) -> None:
        if self._producer is None and (self._connecting is None or self._connecting.done()):
            self._connecting = asyncio.create_task(self._connect(), name="kafka-connect")

    def _default_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=max(1000, int(self._timeout_s * 1000)),
            # While the broker is away the sender retries unacknowledged batches (an
            # idempotent producer never drops them): every 0.5 s, not every 0.1 s.
            retry_backoff_ms=500,
        )

    async def _connect(self) -> None:
        """Start a producer, retrying with backoff until it connects (or is cancelled)."""
        delays = backoff_delays(self._retry_interval_s, MAX_BACKOFF_S)
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                producer = self._factory()
                await producer.start()
                async with asyncio.timeout(self._timeout_s):
                    await producer.partitions_for(self._topic)
            except (Exception, asyncio.CancelledError) as exc:
                if producer is not None:
                    await self._close(producer)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                delay = next(delays)
                logger.warning(
                    "Kafka not ready at %s (%s); events wait in the outbox, retrying in %.1f s",
                    self.bootstrap_servers,
                    describe(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self._producer, self._healthy = producer, True
            self._connected.set()
            logger.info("Kafka producer connected to %s", self.bootstrap_servers)
            return

    async def _close(self, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(self._timeout_s + 5.0):
                await producer.stop()
        except Exception as exc:
            logger.warning("Kafka producer did not close cleanly: %s", describe(exc))
