"""The webhook dispatcher's Kafka side: a consumer group on the events topic.

Each batch is handed to the recorder (which records its deliveries in one commit) and
only then are its offsets committed, so the group's committed offsets never run ahead of
what is recorded. A batch whose recording fails is read again (the consumer seeks back);
a batch recorded but not committed -- a killed dispatcher, a rebalance in between -- is
read again by whoever owns the partitions next, and recording it again changes nothing
(deliveries are unique per event and endpoint). Records that are not events are logged
and skipped, never allowed to hold the partition back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import backoff
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from app.core.jsoncodec import load_json
from app.services.ports.webhooks import ReceivedEvent

logger = logging.getLogger(__name__)

TRACE_HEADERS = frozenset(
    {
        "x-datadog-trace-id",
        "x-datadog-parent-id",
        "x-datadog-sampling-priority",
        "x-datadog-origin",
        "x-datadog-tags",
        "traceparent",
        "tracestate",
    }
)
"""Kafka headers that carry the publishing trace's context (ddtrace's aiokafka
integration writes them); a delivery's span links to that trace."""

MAX_BACKOFF_S = 30.0

Recorder = Callable[[Sequence[ReceivedEvent]], Awaitable[int]]


def _delays(first_s: float) -> Iterator[float]:
    waits = backoff.expo(base=2, factor=first_s, max_value=MAX_BACKOFF_S)
    next(waits)
    for wait in waits:
        yield wait / 2 + backoff.full_jitter(wait / 2)


def parse_event(record: ConsumerRecord[bytes, bytes]) -> ReceivedEvent | None:
    """The event a record carries, or None (logged) when it is not one."""
    try:
        body: dict[str, Any] = load_json(record.value or b"")
        event = ReceivedEvent(
            event_id=uuid.UUID(body["event_id"]),
            event_type=str(body["event_type"]),
            merchant_id=str(body["merchant_id"]),
            transaction_id=str(body["transaction_id"]),
            occurred_at=datetime.fromisoformat(body["occurred_at"]),
            body=body,
            trace_context={
                key: value.decode("ascii", "replace")
                for key, value in (record.headers or ())
                if key.lower() in TRACE_HEADERS and value is not None
            },
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.error(
            "skipping a record that is not an event at %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            type(exc).__name__,
        )
        return None
    if event.occurred_at.tzinfo is None:
        logger.error(
            "skipping a record whose occurred_at has no offset at %s[%d]@%d",
            record.topic,
            record.partition,
            record.offset,
        )
        return None
    return event


class _LoggedRebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    """Says which partitions this dispatcher reads, as the group assigns them."""

    def __init__(self, group_id: str) -> None:
        self._group_id = group_id

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            logger.info("webhook consumer gives back partitions %s", _names(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info(
            "webhook consumer joined group %s: partitions %s",
            self._group_id,
            _names(assigned) or "none (more dispatchers than partitions)",
        )


def _names(partitions: set[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in sorted(partitions))


class EventConsumer:
    """Reads the events topic in a consumer group and records deliveries, at least once."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        record: Recorder,
        batch_size: int = 500,
        session_timeout_s: float = 10.0,
        retry_interval_s: float = 1.0,
        client_id: str = "payments-webhooks",
        consumer_factory: Callable[[], AIOKafkaConsumer] | None = None,
    ) -> None:
        """Nothing connects until :meth:`start`."""
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._group_id = group_id
        self._record = record
        self._batch_size = batch_size
        self._session_timeout_ms = int(session_timeout_s * 1000)
        self._retry_interval_s = retry_interval_s
        self._client_id = client_id
        self._factory = consumer_factory or self._default_consumer
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _default_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            # A new group starts from the oldest event still on the topic: an event
            # published before the first dispatcher ever ran is delivered too.
            auto_offset_reset="earliest",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(1000, self._session_timeout_ms // 3),
            max_poll_records=self._batch_size,
        )
        consumer.subscribe([self._topic], listener=_LoggedRebalances(self._group_id))
        return consumer

    def start(self) -> None:
        """Start consuming in the background; returns at once."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="webhook-consumer")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Finish the batch in hand (record and commit), then leave the group."""
        task, self._task = self._task, None
        self._stopping.set()
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                logger.warning("webhook consumer did not finish its batch in %.0f s", grace_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close()

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _connect(self) -> AIOKafkaConsumer:
        delays = _delays(self._retry_interval_s)
        while True:
            consumer = self._factory()
            try:
                await consumer.start()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                delay = next(delays)
                logger.warning(
                    "Kafka not ready at %s (%s); webhook consumer retrying in %.1f s",
                    self._bootstrap,
                    type(exc).__name__,
                    delay,
                )
                await self._sleep(delay)
                if self._stopping.is_set():
                    raise asyncio.CancelledError from None
                continue
            logger.info("webhook consumer connected to %s", self._bootstrap)
            return consumer

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _run(self) -> None:
        try:
            self._consumer = await self._connect()
        except asyncio.CancelledError:
            return
        failures = _delays(self._retry_interval_s)
        while not self._stopping.is_set():
            consumer = self._consumer
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=self._batch_size)
            except KafkaError as exc:
                logger.warning("webhook consumer fetch failed: %s", type(exc).__name__)
                await self._sleep(next(failures))
                continue
            if not batch:
                continue
            if await self._handle(consumer, batch):
                failures = _delays(self._retry_interval_s)
            else:
                await self._sleep(next(failures))

    async def _handle(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> bool:
        """Record then commit one batch; whether it went through."""
        events = [
            event
            for records in batch.values()
            for record in records
            if (event := parse_event(record)) is not None
        ]
        try:
            await self._record(events)
        except Exception as exc:
            # Nothing committed: read the batch again after a pause.
            logger.warning(
                "recording %d webhook events failed (%s); reading them again",
                len(events),
                type(exc).__name__,
            )
            for partition, records in batch.items():
                with contextlib.suppress(IllegalStateError):
                    consumer.seek(partition, records[0].offset)
            return False
        offsets = {partition: records[-1].offset + 1 for partition, records in batch.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions: their next owner reads the batch again,
            # and recording it again changes nothing.
            logger.info("webhook offsets not committed (%s): partitions reassigned", exc)
        except KafkaError as exc:
            logger.warning("webhook offsets not committed: %s", type(exc).__name__)
        return True
