"""The Kafka side of the outbox, part by part, without a broker or a database.

Producers, units of work and the parts a bundle holds are small fakes; the real broker and
database are exercised by tests/integration/test_outbox_relay.py and
tests/integration/test_request_publication.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import pytest

from app.adapters.messaging import KafkaMessaging, build_messaging
from app.adapters.messaging.producer import UNHEALTHY_BATCHES_BEFORE_RECONNECT, ProducerSupervisor
from app.adapters.messaging.publisher import KafkaEventPublisher
from app.adapters.messaging.sending import (
    BatchResult,
    Claimers,
    kafka_record,
    send_in_waves,
    settle,
    waves,
)
from app.services.ports.messaging import OutboxMessage, OutboxOnlyPublisher
from tests.conftest import make_settings

TOPIC = "payments.events"


def message(key: str, *, correlation_id: str | None = "corr-1") -> OutboxMessage:
    event_id = uuid.uuid4()
    headers = {"correlation_id": correlation_id} if correlation_id is not None else {}
    return OutboxMessage(
        event_id=event_id,
        event_type="payment.captured",
        key=key,
        payload={"event_id": str(event_id), "amount": "9.99"},
        headers=headers,
    )


# -- fakes ----------------------------------------------------------------------------


class FakeClient:
    def __init__(self, producer: FakeProducer) -> None:
        self._producer = producer

    async def force_metadata_update(self) -> bool:
        return self._producer.broker_answers


class FakeProducer:
    """Acknowledges every send at once, unless its key fails or is left unanswered."""

    def __init__(
        self, *, failing_keys: Sequence[bytes] = (), silent_keys: Sequence[bytes] = ()
    ) -> None:
        self.failing_keys = set(failing_keys)
        self.silent_keys = set(silent_keys)
        self.sent: list[bytes] = []
        self.broker_answers = True
        self.started = self.stopped = self.flushed = False
        self.client = FakeClient(self)

    async def start(self) -> None:
        self.started = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send(self, topic: str, *, value: bytes, key: bytes, headers: Any) -> Any:
        if key in self.failing_keys:
            raise ConnectionError("simulated: no leader for this partition")
        self.sent.append(key)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if key not in self.silent_keys:
            ack.set_result(None)
        return ack

    async def flush(self) -> None:
        self.flushed = True

    async def stop(self) -> None:
        self.stopped = True


class FakeOutbox:
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    async def release(
        self, event_ids: Sequence[uuid.UUID], *, claimer: str, error: str | None
    ) -> None:
        self.log.append(("release", sorted(event_ids), claimer, error))

    async def mark_published(self, event_ids: Sequence[uuid.UUID], *, at: datetime) -> None:
        if event_ids:  # as the database's: nothing to mark is no statement
            self.log.append(("mark_published", sorted(event_ids)))


class FakeUnitOfWork:
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.outbox = FakeOutbox(log)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def commit(self) -> None:
        self.log.append(("commit",))


# -- records and waves ----------------------------------------------------------------


def test_a_record_carries_the_key_the_json_payload_and_the_three_headers_in_order() -> None:
    event = message("txn_1", correlation_id=None)

    key, value, headers = kafka_record(event)

    assert key == b"txn_1"
    assert value == f'{{"event_id":"{event.event_id}","amount":"9.99"}}'.encode()
    assert headers == [
        ("event_type", b"payment.captured"),
        ("event_id", str(event.event_id).encode()),
        ("correlation_id", b""),
    ]


def test_waves_split_a_claim_by_position_within_each_key() -> None:
    a1, b1, a2, c1, a3, b2 = (message(k) for k in ("a", "b", "a", "c", "a", "b"))

    assert waves([a1, b1, a2, c1, a3, b2]) == [[a1, b1, c1], [a2, b2], [a3]]
    assert waves([]) == []


async def test_a_failed_send_holds_back_the_later_events_of_its_key_only() -> None:
    a1, b1, a2, b2 = (message(k) for k in ("a", "b", "a", "b"))
    producer = FakeProducer(failing_keys=[b"a"])

    result = await send_in_waves(producer, TOPIC, [a1, b1, a2, b2], timeout_s=1.0)

    assert result.claimed == 4
    assert result.published == [b1.event_id, b2.event_id]
    assert list(result.failed) == [a1.event_id]
    assert "simulated" in result.failed[a1.event_id]
    assert result.deferred == [a2.event_id]
    assert producer.sent == [b"b", b"b"]


async def test_an_unacknowledged_send_fails_at_the_deadline_and_its_key_waits() -> None:
    a1, b1, a2 = (message(k) for k in ("a", "b", "a"))
    producer = FakeProducer(silent_keys=[b"a"])

    result = await send_in_waves(producer, TOPIC, [a1, b1, a2], timeout_s=0.05)

    assert result.published == [b1.event_id]
    assert result.failed == {a1.event_id: "no acknowledgement within 0.05 s"}
    assert result.deferred == [a2.event_id]


async def test_settle_releases_failures_with_an_attempt_deferred_without_and_marks_the_rest() -> (
    None
):
    published, failed, deferred = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    log: list[tuple[Any, ...]] = []
    result = BatchResult(
        claimed=3, published=[published], failed={failed: "boom"}, deferred=[deferred]
    )

    await settle(
        lambda: FakeUnitOfWork(log),
        result,
        claimers={failed: "me#1", deferred: "me#1"},
    )

    assert log == [
        ("release", [failed], "me#1", "boom"),
        ("release", [deferred], "me#1", None),
        ("mark_published", [published]),
        ("commit",),
    ]


def test_claimer_names_share_the_process_prefix_and_never_repeat() -> None:
    claimers, other = Claimers(), Claimers()

    names = [claimers.new() for _ in range(3)]

    assert all(name.startswith(claimers.prefix) for name in names)
    assert len(set(names)) == 3
    assert claimers.prefix != other.prefix
    assert claimers.prefix.endswith("#")


# -- the producer supervisor ----------------------------------------------------------


def supervisor(*producers: FakeProducer) -> ProducerSupervisor:
    made = iter(producers)
    return ProducerSupervisor(
        bootstrap_servers="kafka:9092",
        topic=TOPIC,
        publish_timeout_s=0.5,
        retry_interval_s=0.01,
        producer_factory=lambda: next(made),
    )


def failed_batch() -> BatchResult:
    return BatchResult(claimed=1, failed={uuid.uuid4(): "boom"})


def test_the_producer_is_rebuilt_only_after_enough_failed_batches_in_a_row() -> None:
    producers = supervisor()
    partly_published = BatchResult(
        claimed=2, published=[uuid.uuid4()], failed={uuid.uuid4(): "boom"}
    )

    decisions = [
        producers.rebuild_due(batch)
        for batch in (
            *[failed_batch()] * (UNHEALTHY_BATCHES_BEFORE_RECONNECT - 1),
            partly_published,  # something got through: the count starts again
            *[failed_batch()] * (UNHEALTHY_BATCHES_BEFORE_RECONNECT - 1),
            BatchResult(),  # nothing pending: starts again too
            *[failed_batch()] * UNHEALTHY_BATCHES_BEFORE_RECONNECT,
            failed_batch(),  # and after a rebuild, from zero
        )
    ]

    assert decisions.count(True) == 1
    assert decisions.index(True) == len(decisions) - 2


async def test_the_supervisor_connects_in_the_background_retrying_until_it_works() -> None:
    class Refused(FakeProducer):
        async def start(self) -> None:
            raise ConnectionError("simulated: connection refused")

    good = FakeProducer()
    producers = supervisor(Refused(), Refused(), good)

    producers.start()
    assert producers.producer is None
    async with asyncio.timeout(5):
        await producers.wait_connected()

    assert producers.producer is good
    assert producers.healthy
    assert await producers.broker_available()
    await producers.close(grace_s=1.0)
    assert (good.flushed, good.stopped) == (True, True)
    assert producers.producer is None
    assert not await producers.broker_available()


async def test_batches_decide_health_and_a_rebuild_waits_for_a_broker_that_answers() -> None:
    first, second = FakeProducer(), FakeProducer()
    producers = supervisor(first, second)
    producers.start()
    async with asyncio.timeout(5):
        await producers.wait_connected()

    producers.record(failed_batch())
    assert not producers.healthy
    producers.record(BatchResult())  # nothing sent: no news
    assert not producers.healthy

    first.broker_answers = False  # the broker is away: a new producer would not help
    await producers.rebuild()
    assert producers.producer is first
    assert not first.stopped

    first.broker_answers = True  # the broker answers, yet batches fail: a stuck producer
    await producers.rebuild()
    assert first.stopped
    async with asyncio.timeout(5):
        await producers.wait_connected()
    assert producers.producer is second
    assert producers.healthy
    producers.record(BatchResult(claimed=1, published=[uuid.uuid4()]))
    assert producers.healthy
    await producers.close(grace_s=1.0)


# -- the request-path publisher -------------------------------------------------------


async def connected(producer: FakeProducer) -> ProducerSupervisor:
    producers = supervisor(producer)
    producers.start()
    async with asyncio.timeout(5):
        await producers.wait_connected()
    return producers


def publisher(producers: ProducerSupervisor, log: list[tuple[Any, ...]]) -> KafkaEventPublisher:
    return KafkaEventPublisher(
        uow_factory=lambda: FakeUnitOfWork(log),
        producer=producers,
        topic=TOPIC,
        lease=timedelta(seconds=30),
        claimers=Claimers(),
        publish_timeout_s=0.5,
    )


async def test_the_publisher_reserves_only_while_the_broker_is_healthy_and_not_stopping() -> None:
    producers = await connected(FakeProducer())
    log: list[tuple[Any, ...]] = []
    events = publisher(producers, log)

    before = datetime.now(UTC)
    lease = events.reserve(message("a"))
    assert lease is not None
    assert before + timedelta(seconds=30) <= lease.claimed_until
    assert lease.claimed_by != events.reserve(message("b"))  # one lease per event

    producers.record(failed_batch())
    assert events.reserve(message("c")) is None
    producers.record(BatchResult(claimed=1, published=[uuid.uuid4()]))
    assert events.reserve(message("d")) is not None
    events.stop_reserving()
    assert events.reserve(message("e")) is None
    await producers.close(grace_s=1.0)


async def test_the_publisher_publishes_only_what_it_reserved_and_only_once() -> None:
    producer = FakeProducer()
    producers = await connected(producer)
    log: list[tuple[Any, ...]] = []
    events = publisher(producers, log)
    mine, theirs = message("mine"), message("theirs")
    assert events.reserve(mine) is not None

    await events.publish_committed([mine, theirs])
    await events.publish_committed([mine])  # already published: not again

    assert producer.sent == [b"mine"]
    assert log == [("mark_published", [mine.event_id]), ("commit",)]
    await producers.close(grace_s=1.0)


async def test_publish_committed_keeps_its_caller_at_most_the_request_bound() -> None:
    producers = await connected(FakeProducer(silent_keys=[b"stuck"]))
    log: list[tuple[Any, ...]] = []
    events = KafkaEventPublisher(
        uow_factory=lambda: FakeUnitOfWork(log),
        producer=producers,
        topic=TOPIC,
        lease=timedelta(seconds=30),
        claimers=Claimers(),
        publish_timeout_s=0.5,
        request_wait_s=0.01,
    )
    stuck = message("stuck")
    lease = events.reserve(stuck)
    assert lease is not None

    loop = asyncio.get_running_loop()
    began = loop.time()
    await events.publish_committed([stuck])
    assert loop.time() - began < 0.5  # the publish timeout
    assert log == []  # still waiting for the acknowledgement, in the background

    await events.wait_for_publications(grace_s=5.0)  # what shutdown does
    assert log == [
        ("release", [stuck.event_id], lease.claimed_by, "no acknowledgement within 0.5 s"),
        ("commit",),
    ]
    await producers.close(grace_s=1.0)


async def test_reservations_never_published_are_forgotten_once_their_lease_runs_out() -> None:
    producer = FakeProducer()
    producers = await connected(producer)
    log: list[tuple[Any, ...]] = []
    events = KafkaEventPublisher(
        uow_factory=lambda: FakeUnitOfWork(log),
        producer=producers,
        topic=TOPIC,
        lease=timedelta(milliseconds=10),
        claimers=Claimers(),
    )
    rolled_back = message("rolled-back")
    assert events.reserve(rolled_back) is not None
    await asyncio.sleep(0.05)
    events.reserve(message("next"))  # reserving sweeps the expired ones

    await events.publish_committed([rolled_back])

    assert producer.sent == []
    assert len(events._reserved) == 1
    await producers.close(grace_s=1.0)


# -- the bundle -----------------------------------------------------------------------


class Part:
    """Stands in for one part of the bundle; notes each call in the shared log."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def note(self, method: str) -> None:
        self.calls.append(f"{self.name}.{method}")


class RecordingProducer(Part):
    def start(self) -> None:
        self.note("start")

    async def close(self, grace_s: float) -> None:
        await asyncio.sleep(0)
        self.note("close")


class RecordingRelay(Part):
    def start(self) -> None:
        self.note("start")

    async def stop(self, grace_s: float) -> None:
        await asyncio.sleep(0)
        self.note("stop")

    async def drain(self) -> None:
        await asyncio.sleep(0)
        self.note("drain")


class RecordingPublisher(Part):
    def stop_reserving(self) -> None:
        self.note("stop_reserving")

    async def wait_for_publications(self, grace_s: float) -> None:
        await asyncio.sleep(0)
        self.note("wait_for_publications")


async def test_stop_finishes_the_relay_then_requests_then_drains_then_closes_the_producer() -> None:
    calls: list[str] = []
    kafka = KafkaMessaging(
        producer=RecordingProducer("producer", calls),
        publisher=RecordingPublisher("publisher", calls),
        relay=RecordingRelay("relay", calls),
        claimers=Claimers(),
        grace_s=1.0,
    )

    await kafka.start()
    assert calls == ["producer.start", "relay.start"]
    calls.clear()
    await kafka.stop()

    assert calls == [
        "publisher.stop_reserving",  # new events are left to the relay from now on
        "relay.stop",  # the batch in hand finishes
        "publisher.wait_for_publications",  # requests' publications finish
        "relay.drain",  # what is pending goes out, bounded
        "producer.close",  # flushed and closed last
    ]


async def test_stopping_while_kafka_cannot_be_reached_does_not_wait_for_it() -> None:
    class Refused(FakeProducer):
        async def start(self) -> None:
            raise ConnectionError("simulated: connection refused")

    publish_timeout_s = 5.0
    kafka = KafkaMessaging.create(
        uow_factory=lambda: FakeUnitOfWork([]),
        bootstrap_servers="kafka:9092",
        topic=TOPIC,
        publish_timeout_s=publish_timeout_s,
        interval_s=0.01,
        producer_factory=Refused,
    )
    await kafka.start()
    await asyncio.sleep(0.05)  # a few refused attempts

    assert kafka.publisher.reserve(message("a")) is None  # events wait in the outbox
    assert not await kafka.publisher.broker_available()
    async with asyncio.timeout(publish_timeout_s):  # nothing to finish, drain or flush
        await kafka.stop()
    assert kafka.producer.producer is None


@pytest.mark.parametrize("configured", [False, True])
def test_build_messaging_picks_kafka_only_when_brokers_are_configured(configured: bool) -> None:
    settings = make_settings(kafka_bootstrap_servers="kafka:9092" if configured else None)

    built = build_messaging(settings, lambda: FakeUnitOfWork([]))

    assert isinstance(built, KafkaMessaging if configured else OutboxOnlyPublisher)
