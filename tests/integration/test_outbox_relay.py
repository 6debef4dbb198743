"""The transactional outbox and its Kafka relay, on real PostgreSQL and the real broker.

The tests that talk to Kafka are marked ``kafka``; the ones about what the outbox holds
and how events are claimed need only the database. Each Kafka test reads the topic from
where it ended when the test began, and only looks at events it produced itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from jsonschema import Draft202012Validator
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.bank.simulator import SimulatedBankGateway
from app.adapters.db.models import OutboxEvent
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.adapters.messaging import KafkaMessaging
from app.domain.errors import BankUnavailable, RefundExceedsBalance
from app.services.context import ServiceContext
from app.services.ports import (
    AuthorizationRequest,
    AuthorizationResult,
    BankAnswerUnknown,
    BankRefundRequest,
    OutboxMessage,
    RefundResult,
)
from tests.integration.test_write_batch_statements import recorded_statements
from tests.service_calls import pay, refund

KAFKA = "127.0.0.1:9092"
TOPIC = "payments.events"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "payment-event.schema.json"
EVENT_SCHEMA = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))

UowFactory = Callable[[], SqlUnitOfWork]


# -- reading the topic ----------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One record read back from the topic."""

    key: str
    value: bytes
    headers: dict[str, str]
    partition: int
    offset: int

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.value)
        return body

    @property
    def event_id(self) -> str:
        return self.headers["event_id"]

    @property
    def raw(self) -> bytes:
        """Everything the record carries, for searching card data in it."""
        header_bytes = b"".join(k.encode() + b"=" + v.encode() for k, v in self.headers.items())
        return self.key.encode() + b"\n" + self.value + b"\n" + header_bytes


class TopicTail:
    """The events topic from the offsets it had when opened: only what came after."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.records: list[Record] = []

    async def _poll(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=200)
        for messages in batches.values():
            for m in messages:
                self.records.append(
                    Record(
                        key=m.key.decode(),
                        value=m.value,
                        headers={k: v.decode() for k, v in m.headers},
                        partition=m.partition,
                        offset=m.offset,
                    )
                )

    async def read_until(
        self, done: Callable[[list[Record]], bool], *, timeout_s: float = 30.0
    ) -> list[Record]:
        """Read until ``done(records)`` holds; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not done(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"topic condition not met in {timeout_s} s; read {len(self.records)} records"
                )
            await self._poll()
        return self.records

    async def read_events(self, event_ids: Iterable[str], *, timeout_s: float = 30.0) -> None:
        """Read until every one of these event ids has arrived at least once."""
        wanted = set(event_ids)
        await self.read_until(
            lambda records: wanted <= {r.event_id for r in records}, timeout_s=timeout_s
        )

    async def read_for(self, seconds: float) -> list[Record]:
        """Keep reading for a while (to see duplicates that would arrive late)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self._poll()
        return self.records

    def of(self, event_ids: Iterable[str]) -> list[Record]:
        """The records of these events, in topic order per partition."""
        wanted = set(event_ids)
        return [r for r in self.records if r.event_id in wanted]


async def topic_partitions() -> list[TopicPartition]:
    """The topic's partitions, as the cluster describes them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([TOPIC])
    finally:
        await admin.close()
    return [TopicPartition(TOPIC, p["partition"]) for p in description["partitions"]]


@asynccontextmanager
async def tail_topic() -> AsyncIterator[TopicTail]:
    """Assign every partition by hand (no group, no rebalancing) and start at its end."""
    partitions = await topic_partitions()
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # resolve the end offset now, before the action
        yield TopicTail(consumer)
    finally:
        await consumer.stop()


def assert_valid_event(record: Record) -> None:
    """The record's value matches the JSON Schema and its key and headers match the value."""
    body = record.body
    errors = sorted(EVENT_SCHEMA.iter_errors(body), key=str)
    assert not errors, [e.message for e in errors]
    assert record.key == body["transaction_id"]
    assert record.headers == {
        "event_type": body["event_type"],
        "event_id": body["event_id"],
        "correlation_id": body["correlation_id"] or "",
    }


# -- waiting --------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.05)


# -- data -----------------------------------------------------------------------------


async def outbox_rows(uow_factory: UowFactory, *aggregate_ids: str) -> list[OutboxEvent]:
    """Outbox rows (of these transactions, if given), oldest first."""
    async with uow_factory() as uow:
        stmt = select(OutboxEvent).order_by(OutboxEvent.id)
        if aggregate_ids:
            stmt = stmt.where(OutboxEvent.aggregate_id.in_(aggregate_ids))
        rows = list((await uow.session.execute(stmt)).scalars())
        uow.session.expunge_all()  # keep them readable after the read-only rollback
        return rows


async def pending_count(uow_factory: UowFactory) -> int:
    async with uow_factory() as uow:
        return (await uow.outbox.backlog()).pending


async def insert_events(
    uow_factory: UowFactory, aggregates: list[str], *, per_aggregate: int = 1
) -> list[OutboxEvent]:
    """Raw outbox rows, interleaved: event n of every transaction, then event n + 1."""
    rows: list[OutboxEvent] = []
    async with uow_factory() as uow:
        for seq in range(per_aggregate):
            for aggregate in aggregates:
                event_id = uuid.uuid4()
                event_type = "payment.captured" if seq == 0 else "refund.succeeded"
                row = OutboxEvent(
                    event_id=event_id,
                    event_type=event_type,
                    aggregate_id=aggregate,
                    payload={"event_id": str(event_id), "event_type": event_type, "seq": seq},
                    headers={"correlation_id": f"corr-{aggregate}-{seq}"},
                )
                uow.session.add(row)  # through the ORM, so the rows get their ids
                rows.append(row)
            await uow.flush()
        await uow.commit()
    return rows


def new_aggregates(n: int) -> list[str]:
    return [f"txn_{uuid.uuid4().hex}" for _ in range(n)]


class RefundRefusingBank(SimulatedBankGateway):
    """Approves payments like the simulator, but refuses every refund request itself."""

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        raise BankUnavailable(failure_code="processing_error")


class RefundTimingOutBank(SimulatedBankGateway):
    """Approves payments like the simulator; a refund's answer never comes back."""

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        raise BankAnswerUnknown("bank_timeout")


class UnreachableBank(SimulatedBankGateway):
    """A bank nobody can connect to: nothing it is asked ever reaches it."""

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        raise BankUnavailable(failure_code="bank_unreachable")


class ProducerWhoseSendFails(AIOKafkaProducer):  # type: ignore[misc]
    """Connects for real, then fails every send: a process that dies before publishing."""

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        raise KafkaConnectionError("simulated: the process died before publishing")


class ProducerFailingOneTransaction(AIOKafkaProducer):  # type: ignore[misc]
    """Fails every send keyed by one transaction id; sends the others for real."""

    failing_key = b""

    async def send(self, topic: str, value: bytes, key: bytes, **kwargs: Any) -> Any:
        if key == self.failing_key:
            raise KafkaConnectionError("simulated: this partition is unavailable")
        return await super().send(topic, value=value, key=key, **kwargs)


# -- relays ---------------------------------------------------------------------------


async def started(kafka: KafkaMessaging) -> KafkaMessaging:
    """Start the Kafka side (relay included) and wait until its producer is connected."""
    await kafka.start()
    await eventually(kafka.producer.broker_available, what="producer connected")
    return kafka


# -- what the outbox holds ------------------------------------------------------------


async def test_every_state_change_writes_exactly_one_event_of_its_type(
    ctx: ServiceContext, merchant: Any, uow_factory: UowFactory
) -> None:
    captured = await pay(ctx, correlation_id="corr-capture")
    txn = captured["transaction_id"]
    await refund(ctx, txn, Decimal("30.00"), correlation_id="corr-refund")
    with pytest.raises(BankUnavailable):
        await refund(
            dataclasses.replace(ctx, bank=RefundRefusingBank()),
            txn,
            Decimal("10.00"),
            correlation_id="corr-refund-failed",
        )
    with pytest.raises(RefundExceedsBalance):
        await refund(ctx, txn, Decimal("500.00"), correlation_id=None)
    declined = await pay(ctx, "4000000000000002", correlation_id=None)
    with pytest.raises(BankUnavailable) as failed:
        await pay(dataclasses.replace(ctx, bank=UnreachableBank()), correlation_id=None)
    failed_txn = failed.value.extra["transaction_id"]
    unknown = await pay(ctx, "4000000000000119", correlation_id=None)  # the bank answers 500
    refund_unknown = await refund(
        dataclasses.replace(ctx, bank=RefundTimingOutBank()), txn, Decimal("5.00")
    )

    rows = await outbox_rows(uow_factory)
    by_txn: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_txn[row.aggregate_id].append(row.event_type)
        assert row.published_at is None  # nothing is published without a broker
        assert not list(EVENT_SCHEMA.iter_errors(json.loads(json.dumps(row.payload, default=str))))
        assert row.headers == {
            "event_type": row.event_type,
            "event_id": str(row.event_id),
            "correlation_id": row.payload["correlation_id"] or "",
        }
        assert row.payload["event_id"] == str(row.event_id)
    assert dict(by_txn) == {
        txn: ["payment.captured", "refund.succeeded", "refund.failed", "refund.pending"],
        declined["transaction_id"]: ["payment.declined"],
        failed_txn: ["payment.failed"],
        unknown["transaction_id"]: ["payment.processing"],
    }
    refund_rows = [r for r in rows if r.aggregate_id == txn][1:]
    assert refund_rows[0].payload["data"]["refunded_amount"] == "30.00"
    assert refund_rows[1].payload["data"]["failure_code"] == "processing_error"
    assert refund_rows[2].payload["data"]["refund_id"] == refund_unknown["refund_id"]
    assert refund_rows[2].payload["data"]["status"] == "pending"


# -- how events are claimed -----------------------------------------------------------


async def test_a_claim_skips_events_whose_older_sibling_another_publisher_holds(
    uow_factory: UowFactory,
) -> None:
    a, b = new_aggregates(2)
    rows = await insert_events(uow_factory, [a, b], per_aggregate=2)  # a1 b1 a2 b2
    lease = timedelta(seconds=30)
    async with uow_factory() as first, uow_factory() as second:
        held = await first.outbox.claim(claimer="first", lease=lease, limit=1)  # a1, uncommitted
        taken = await second.outbox.claim(claimer="second", lease=lease, limit=10)
        await first.commit()
        await second.commit()
    assert [e.event_id for e in held] == [rows[0].event_id]
    # a1 was locked by the first claim: a2 must wait for it; b's events go together.
    assert [e.event_id for e in taken] == [rows[1].event_id, rows[3].event_id]

    async with uow_factory() as uow:
        assert await uow.outbox.claim(claimer="third", lease=lease, limit=10) == []
        await uow.outbox.mark_published([rows[0].event_id], at=datetime.now(UTC))
        await uow.commit()
    async with uow_factory() as uow:
        after = await uow.outbox.claim(claimer="third", lease=lease, limit=10)
        await uow.commit()
    assert [e.event_id for e in after] == [rows[2].event_id]


async def test_an_expired_lease_is_claimable_again_and_only_its_holder_releases_it(
    uow_factory: UowFactory,
) -> None:
    (row,) = await insert_events(uow_factory, new_aggregates(1))
    async with uow_factory() as uow:
        (claimed,) = await uow.outbox.claim(
            claimer="crashed", lease=timedelta(milliseconds=1), limit=10
        )
        await uow.commit()
    await asyncio.sleep(0.05)
    async with uow_factory() as uow:
        (reclaimed,) = await uow.outbox.claim(
            claimer="alive", lease=timedelta(seconds=30), limit=10
        )
        await uow.outbox.release([row.event_id], claimer="crashed", error="too late")
        await uow.commit()
    assert claimed.event_id == reclaimed.event_id == row.event_id
    (after,) = await outbox_rows(uow_factory)
    assert (after.claimed_by, after.attempts, after.last_error) == ("alive", 0, None)

    async with uow_factory() as uow:
        await uow.outbox.release([row.event_id], claimer="alive", error="broker down")
        await uow.commit()
    (after,) = await outbox_rows(uow_factory)
    assert (after.claimed_by, after.claimed_until) == (None, None)
    assert (after.attempts, after.last_error) == (1, "broker down")


async def test_a_mark_alone_in_its_unit_needs_no_transaction_after_others_it_joins_theirs(
    uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    alone, joined = await insert_events(uow_factory, new_aggregates(2))
    with recorded_statements(engine) as executed:
        async with uow_factory() as uow:
            await uow.outbox.mark_published([alone.event_id], at=datetime.now(UTC))
            await uow.commit()
    (mark,) = executed
    assert mark.sql.startswith("UPDATE outbox_events SET published_at")
    assert mark.in_transaction_after is False  # one statement, no BEGIN/COMMIT

    async with uow_factory() as uow:  # after a claim: one transaction, rolled back here
        await uow.outbox.claim(claimer="me", lease=timedelta(seconds=30), limit=10)
        await uow.outbox.mark_published([joined.event_id], at=datetime.now(UTC))
    published = {row.event_id: row.published_at for row in await outbox_rows(uow_factory)}
    assert published[alone.event_id] is not None
    assert published[joined.event_id] is None


# -- publishing -----------------------------------------------------------------------


@pytest.mark.kafka
async def test_a_request_publishes_its_own_event_once_before_it_answers(
    ctx: ServiceContext,
    merchant: Any,
    uow_factory: UowFactory,
    relays: Callable[..., KafkaMessaging],
) -> None:
    kafka = await started(relays(interval_s=30.0))  # the relay itself stays out of the way
    publishing = dataclasses.replace(ctx, publisher=kafka.publisher)
    async with tail_topic() as tail:
        view = await pay(publishing, correlation_id="corr-1")
        (row,) = await outbox_rows(uow_factory, view["transaction_id"])
        assert row.published_at is not None  # marked before the request returned
        await tail.read_events([str(row.event_id)], timeout_s=10)
        await tail.read_for(0.5)
    (record,) = tail.of([str(row.event_id)])
    assert_valid_event(record)
    assert record.key == view["transaction_id"]
    assert record.headers["correlation_id"] == "corr-1"
    assert record.body["event_type"] == "payment.captured"


@pytest.mark.kafka
async def test_a_failed_publication_never_fails_the_request_and_the_relay_publishes_later(
    ctx: ServiceContext,
    merchant: Any,
    uow_factory: UowFactory,
    relays: Callable[..., KafkaMessaging],
) -> None:
    dying = await started(
        relays(
            producer_factory=lambda: ProducerWhoseSendFails(bootstrap_servers=KAFKA),
            interval_s=60.0,  # only the request tries: its own poll ran before the payment
        )
    )
    view = await pay(dataclasses.replace(ctx, publisher=dying.publisher), correlation_id=None)
    assert view["status"] == "captured"
    (row,) = await outbox_rows(uow_factory, view["transaction_id"])
    assert row.published_at is None
    assert row.attempts >= 1
    assert "simulated" in (row.last_error or "")
    await dying.stop()

    async with tail_topic() as tail:
        await started(relays())
        await tail.read_events([str(row.event_id)])
    assert_valid_event(tail.of([str(row.event_id)])[0])
    await eventually(lambda: _published(uow_factory, row.id), what="row marked published")


@pytest.mark.kafka
async def test_when_an_event_fails_the_later_events_of_its_transaction_wait_for_it(
    uow_factory: UowFactory, relays: Callable[..., KafkaMessaging]
) -> None:
    failing, healthy = new_aggregates(2)
    rows = await insert_events(uow_factory, [failing, healthy], per_aggregate=3)

    class Producer(ProducerFailingOneTransaction):
        failing_key = failing.encode()

    async with tail_topic() as tail:
        await started(
            relays(
                producer_factory=lambda: Producer(bootstrap_servers=KAFKA),
                interval_s=60.0,  # one batch, then a long sleep
                fresh_grace_s=0.0,
            )
        )
        healthy_ids = [str(r.event_id) for r in rows if r.aggregate_id == healthy]
        await tail.read_events(healthy_ids, timeout_s=10)
        await tail.read_for(0.5)
    settled = [r.id for r in rows if r.aggregate_id == healthy]
    for row_id in settled:  # the batch's outcome is recorded once Kafka has answered
        await eventually(lambda row_id=row_id: _published(uow_factory, row_id))

    assert [r.event_id for r in tail.records if r.key == failing] == []
    first, *later = await outbox_rows(uow_factory, failing)
    assert first.published_at is None
    assert (first.attempts, first.claimed_by) == (1, None)
    assert "simulated" in (first.last_error or "")
    for row in later:  # handed back unsent and without an attempt counted
        assert (row.published_at, row.attempts, row.claimed_by) == (None, 0, None)


@pytest.mark.kafka
async def test_events_left_behind_by_a_dead_process_are_published_by_the_relay(
    uow_factory: UowFactory, relays: Callable[..., KafkaMessaging]
) -> None:
    never_claimed, lease_expired, lease_running = await insert_events(
        uow_factory, new_aggregates(3)
    )
    async with uow_factory() as uow:
        await uow.session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id == lease_expired.id)
            .values(
                claimed_by="dead-worker", claimed_until=datetime.now(UTC) - timedelta(seconds=1)
            )
        )
        lease_end = datetime.now(UTC) + timedelta(seconds=2)
        await uow.session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id == lease_running.id)
            .values(claimed_by="dead-worker", claimed_until=lease_end)
        )
        await uow.commit()

    async with tail_topic() as tail:
        await started(relays())
        await tail.read_events([str(never_claimed.event_id), str(lease_expired.event_id)])
        await tail.read_events([str(lease_running.event_id)], timeout_s=15)
    await eventually(lambda: _backlog_is(uow_factory, 0), what="all three marked published")
    rows = {row.id: row for row in await outbox_rows(uow_factory)}
    published_at = rows[lease_running.id].published_at
    assert published_at is not None
    assert published_at >= lease_end


@pytest.mark.kafka
async def test_two_relays_publish_each_event_once_and_each_transactions_events_in_order(
    uow_factory: UowFactory,
    relays: Callable[..., KafkaMessaging],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for _ in range(2):
        await started(relays(batch_size=16, interval_s=0.02))
    aggregates = new_aggregates(60)
    async with tail_topic() as tail:
        with caplog.at_level("INFO", logger="app.adapters.messaging.relay"):
            rows = await insert_events(uow_factory, aggregates, per_aggregate=3)
            event_ids = [str(row.event_id) for row in rows]
            await tail.read_events(event_ids)
            await eventually(lambda: _backlog_is(uow_factory, 0), what="outbox drained")
            await tail.read_for(1.0)

    counts = Counter(record.event_id for record in tail.of(event_ids))
    assert set(counts) == set(event_ids)
    assert [eid for eid, n in counts.items() if n > 1] == []
    seqs_by_key: dict[str, list[int]] = defaultdict(list)
    for record in tail.of(event_ids):
        seqs_by_key[record.key].append(record.body["seq"])
    assert all(seqs == [0, 1, 2] for seqs in seqs_by_key.values())
    assert len(seqs_by_key) == len(aggregates)
    published = [r for r in caplog.records if r.getMessage().startswith("outbox: published")]
    assert sum(getattr(r, "outbox_published", 0) for r in published) == len(rows)
    holders = {(row.claimed_by or "").split("#")[0] for row in await outbox_rows(uow_factory)}
    assert len(holders) <= 2  # the last lease holder of each row is one of the two relays


@pytest.mark.kafka
async def test_the_relay_waits_for_a_producer_that_connects_late_then_publishes_the_backlog(
    uow_factory: UowFactory, relays: Callable[..., KafkaMessaging]
) -> None:
    built: list[AIOKafkaProducer] = []

    def late_producer() -> AIOKafkaProducer:  # nothing listens on port 1: start() fails
        servers = "127.0.0.1:1" if len(built) < 2 else KAFKA
        built.append(AIOKafkaProducer(bootstrap_servers=servers, request_timeout_ms=1000))
        return built[-1]

    rows = await insert_events(uow_factory, new_aggregates(3))
    kafka = relays(producer_factory=late_producer, fresh_grace_s=0.0)
    async with tail_topic() as tail:
        await kafka.start()
        probe = OutboxMessage(
            event_id=uuid.uuid4(),
            event_type="payment.captured",
            key="txn_x",
            payload={},
            headers={},
        )
        assert kafka.publisher.reserve(probe) is None  # not connected: left to the relay
        await tail.read_events([str(row.event_id) for row in rows], timeout_s=20)
    assert len(built) == 3  # two refused, the third connected
    await eventually(lambda: _backlog_is(uow_factory, 0), what="backlog published")


@pytest.mark.kafka
async def test_stop_publishes_what_is_pending_then_flushes_and_closes(
    uow_factory: UowFactory, relays: Callable[..., KafkaMessaging]
) -> None:
    kafka = await started(relays(interval_s=60.0))
    await asyncio.sleep(0.3)  # past the relay's first poll: it now sleeps for a minute
    rows = await insert_events(uow_factory, new_aggregates(30))
    async with tail_topic() as tail:
        await kafka.stop()
        assert not await kafka.publisher.broker_available()
        assert await pending_count(uow_factory) == 0
        event_ids = [str(row.event_id) for row in rows]
        await tail.read_events(event_ids, timeout_s=10)
        await tail.read_for(0.5)
    assert sorted(Counter(r.event_id for r in tail.of(event_ids)).values()) == [1] * len(rows)


async def _published(uow_factory: UowFactory, row_id: int) -> bool:
    async with uow_factory() as uow:
        row = await uow.session.get(OutboxEvent, row_id)
        return row is not None and row.published_at is not None


async def _backlog_is(uow_factory: UowFactory, expected: int) -> bool:
    return await pending_count(uow_factory) == expected
