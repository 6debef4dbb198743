"""Measure the Kafka outbox locally: relay throughput and commit-to-readable latency.

A throwaway measurement against the local stack, not a benchmark suite::

    uv run python scripts/measure_outbox.py \
        --database-url postgresql+asyncpg://payments@127.0.0.1:5432/payments_test

It needs a migrated database (``alembic upgrade head``) and the topic, and it publishes
synthetic ``payment.captured`` events (merchant ``merchant_measure``) to it; it deletes its
own outbox rows afterwards. Two measurements:

* drain: N pending rows committed at once, time until the relay has published and marked
  all of them (events per second); then a consumer checks that all of them are on the topic;
* latency: one event at a time, committed then published by the request path
  (``publish_committed``), time from the commit returning to a consumer reading the record
  (p50 / p90 / p99 over the samples).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import delete, func, select

from app.adapters.db.engine import build_engine, build_session_factory
from app.adapters.db.models import OutboxEvent
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.adapters.messaging import KafkaMessaging
from app.core.config import Settings
from app.services.ports.messaging import OutboxMessage

MERCHANT = "merchant_measure"


def synthetic_event(n: int) -> OutboxMessage:
    """A realistic ``payment.captured`` event (same size and shape as the real ones)."""
    event_id = uuid.uuid4()
    transaction_id = f"txn_{uuid.uuid4().hex}"
    correlation_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    payload = {
        "event_id": str(event_id),
        "event_type": "payment.captured",
        "event_version": 1,
        "occurred_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "transaction_id": transaction_id,
        "merchant_id": MERCHANT,
        "correlation_id": correlation_id,
        "data": {
            "amount": f"{n % 1000}.99",
            "currency": "USD",
            "status": "captured",
            "payment_method": "credit_card",
            "card_brand": "visa",
        },
    }
    headers = {
        "event_type": "payment.captured",
        "event_id": str(event_id),
        "correlation_id": correlation_id,
    }
    return OutboxMessage(
        event_id=event_id,
        event_type="payment.captured",
        key=transaction_id,
        payload=payload,
        headers=headers,
    )


class Reader:
    """Reads the topic from its end and notes when each event id was first seen."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self.seen: dict[str, float] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Assign every partition at its current end (reading starts with :meth:`start`)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            (description,) = await admin.describe_topics([self._topic])
        finally:
            await admin.close()
        partitions = [
            TopicPartition(self._topic, p["partition"]) for p in description["partitions"]
        ]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, fetch_max_wait_ms=100
        )
        await consumer.start()
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        self._consumer = consumer

    def start(self) -> None:
        """Start reading in the background, noting when each event is first seen."""
        assert self._consumer is not None
        self._task = asyncio.create_task(self._read(self._consumer))

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    event_id = dict(record.headers)["event_id"].decode()
                    self.seen.setdefault(event_id, now)

    async def wait_for(self, event_ids: set[str], timeout_s: float) -> float:
        deadline = time.perf_counter() + timeout_s
        while not event_ids <= self.seen.keys():
            if time.perf_counter() > deadline:
                missing = len(event_ids - self.seen.keys())
                raise TimeoutError(f"{missing} events not read within {timeout_s} s")
            await asyncio.sleep(0.005)
        return max(self.seen[e] for e in event_ids)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


async def until(check: Callable[[], Awaitable[bool]], *, timeout_s: float, poll_s: float) -> None:
    """Poll ``check`` until it is true; TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(poll_s)


async def pending(uow_factory: Callable[[], SqlUnitOfWork]) -> int:
    async with uow_factory() as uow:
        return (await uow.outbox.backlog()).pending


async def measure_drain(
    uow_factory: Callable[[], SqlUnitOfWork], reader: Reader, args: argparse.Namespace
) -> None:
    kafka = KafkaMessaging.create(
        uow_factory=uow_factory,
        bootstrap_servers=args.bootstrap,
        topic=args.topic,
        interval_s=0.05,
        batch_size=args.batch_size,
        fresh_grace_s=0.0,  # measure the relay itself, not the grace it leaves requests
    )
    await kafka.start()
    await until(kafka.producer.broker_available, timeout_s=30, poll_s=0.05)
    rows = [synthetic_event(n) for n in range(args.events)]
    async with uow_factory() as uow:
        for row in rows:
            uow.outbox.add(row)
        await uow.commit()
    committed = time.perf_counter()

    async def drained_all() -> bool:
        return await pending(uow_factory) == 0

    await until(drained_all, timeout_s=120, poll_s=0.05)
    drained = time.perf_counter()
    await kafka.stop()
    # Read only now, so that the consumer does not compete with the relay for the loop.
    reader.start()
    await reader.wait_for({str(r.event_id) for r in rows}, timeout_s=60)
    async with uow_factory() as uow:
        first, last = (
            await uow.session.execute(
                select(
                    func.min(OutboxEvent.published_at), func.max(OutboxEvent.published_at)
                ).where(OutboxEvent.event_id.in_([r.event_id for r in rows]))
            )
        ).one()
    publishing_s = (last - first).total_seconds()
    print(
        f"drain: {args.events} events, batches of {args.batch_size}: "
        f"all marked published {drained - committed:.3f} s after the commit "
        f"({args.events / (drained - committed):,.0f} events/s), all {args.events} on the topic; "
        f"first to last published_at {publishing_s:.3f} s "
        f"({args.events / max(publishing_s, 1e-9):,.0f} events/s while publishing)"
    )


async def measure_latency(
    uow_factory: Callable[[], SqlUnitOfWork], reader: Reader, args: argparse.Namespace
) -> None:
    kafka = KafkaMessaging.create(
        uow_factory=uow_factory,
        bootstrap_servers=args.bootstrap,
        topic=args.topic,
        interval_s=1.0,
    )
    await kafka.start()
    await until(kafka.producer.broker_available, timeout_s=30, poll_s=0.05)
    await asyncio.sleep(0.2)
    to_readable: list[float] = []
    to_acknowledged: list[float] = []
    for n in range(args.samples):
        row = synthetic_event(n)
        lease = kafka.publisher.reserve(row)  # what a request does: lease, commit, publish
        async with uow_factory() as uow:
            uow.outbox.add(row, lease=lease)
            await uow.commit()
        committed = time.perf_counter()
        await kafka.publisher.publish_committed([row])
        to_acknowledged.append(time.perf_counter() - committed)
        read = await reader.wait_for({str(row.event_id)}, timeout_s=10)
        to_readable.append(read - committed)
    await kafka.stop()

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000

    for name, values in (("published+marked", to_acknowledged), ("readable", to_readable)):
        print(
            f"latency commit -> {name} over {len(values)} events: "
            f"p50 {pct(values, 50):.1f} ms, p90 {pct(values, 90):.1f} ms, "
            f"p99 {pct(values, 99):.1f} ms, max {max(values) * 1000:.1f} ms"
        )


async def main(args: argparse.Namespace) -> None:
    settings = Settings(database_url=args.database_url)
    engine = build_engine(settings, application_name="measure-outbox")
    session_factory = build_session_factory(engine)

    def uow_factory() -> SqlUnitOfWork:
        return SqlUnitOfWork(session_factory)

    reader = Reader(args.bootstrap, args.topic)
    await reader.open()
    try:
        if await pending(uow_factory):
            print("note: the outbox already has pending rows; the relay publishes them too")
        await measure_drain(uow_factory, reader, args)
        await measure_latency(uow_factory, reader, args)
    finally:
        await reader.stop()
        async with uow_factory() as uow:
            await uow.session.execute(
                delete(OutboxEvent).where(OutboxEvent.payload["merchant_id"].astext == MERCHANT)
            )
            await uow.commit()
        await engine.dispose()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=Settings().database_url)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="payments.events")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--samples", type=int, default=300)
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parse_args()))
