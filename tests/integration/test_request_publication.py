"""Requests publish their own events: reserved before the commit, sent right after it.

On the real PostgreSQL and the local stack's Kafka. The topic is read from where it ended
when each test began, and only this test's events are looked at.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.models import OutboxEvent
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.adapters.messaging import KafkaMessaging
from app.services.context import ServiceContext
from app.services.ports.messaging import Lease, OutboxMessage
from tests.integration.test_outbox_relay import (
    KAFKA,
    TopicTail,
    assert_valid_event,
    eventually,
    outbox_rows,
    started,
    tail_topic,
)
from tests.service_calls import pay, refund

pytestmark = pytest.mark.kafka

UowFactory = Callable[[], SqlUnitOfWork]
LEASE = timedelta(seconds=30)  # the relay's lease with a 3 s publish timeout (MIN_LEASE_S)


def new_event(aggregate_id: str) -> OutboxMessage:
    event_id = uuid.uuid4()
    return OutboxMessage(
        event_id=event_id,
        event_type="payment.captured",
        key=aggregate_id,
        payload={"event_id": str(event_id), "event_type": "payment.captured"},
        headers={"correlation_id": f"corr-{aggregate_id}"},
    )


async def commit_event(
    uow_factory: UowFactory, event: OutboxMessage, lease: Lease | None = None
) -> OutboxEvent:
    """Write the event as a request does (staged, one statement); return the stored row."""
    async with uow_factory() as uow:
        uow.outbox.add(event, lease=lease)
        await uow.commit()
    (row,) = await outbox_rows(uow_factory, event.key)
    return row


async def claim_as_another_publisher(uow_factory: UowFactory) -> list[OutboxMessage]:
    async with uow_factory() as uow:
        claimed = await uow.outbox.claim(claimer="other", lease=LEASE, limit=10)
        await uow.commit()
    return claimed


def holder(kafka: KafkaMessaging) -> str:
    """The prefix of every lease this process's publisher and relay take."""
    return kafka.claimers.prefix


class ProducerWhoseAcksStall(AIOKafkaProducer):  # type: ignore[misc]
    """Connects for real; while ``stalled``, a send is taken but never acknowledged (a broker
    that stopped answering), afterwards sends go through for real."""

    stalled = True

    async def send(self, topic: str, value: bytes, key: bytes, **kwargs: Any) -> Any:
        if type(self).stalled:
            return asyncio.get_running_loop().create_future()  # never resolved
        return await super().send(topic, value=value, key=key, **kwargs)


async def read_exactly_once(tail: TopicTail, event_ids: list[str]) -> list[str]:
    """Wait for the events, keep reading a little for late copies; the ids in topic order."""
    await tail.read_events(event_ids, timeout_s=15)
    await tail.read_for(0.5)
    return [record.event_id for record in tail.of(event_ids)]


# -- reserve and publish_committed ----------------------------------------------------


async def test_a_reserved_event_is_written_leased_left_alone_by_the_relay_and_published_once(
    uow_factory: UowFactory, relays: Callable[..., KafkaMessaging]
) -> None:
    # A background relay eager to take anything unleased, however fresh.
    relay = await started(relays(fresh_grace_s=0.0))
    event = new_event(f"txn_{uuid.uuid4().hex}")

    before = datetime.now(UTC)
    lease = relay.publisher.reserve(event)
    after = datetime.now(UTC)
    assert lease is not None
    assert lease.claimed_by.startswith(holder(relay))
    assert before + LEASE <= lease.claimed_until <= after + LEASE

    async with tail_topic() as tail:
        row = await commit_event(uow_factory, event, lease)
        assert (row.claimed_by, row.claimed_until) == (lease.claimed_by, lease.claimed_until)
        assert row.published_at is None
        assert await claim_as_another_publisher(uow_factory) == []

        await relay.publisher.publish_committed([event])
        (row,) = await outbox_rows(uow_factory, event.key)
        assert row.published_at is not None  # marked before publish_committed returned
        assert row.claimed_until is None
        assert (row.attempts, row.last_error) == (0, None)
        on_topic = await read_exactly_once(tail, [str(event.event_id)])
    assert on_topic == [str(event.event_id)]
    (record,) = tail.of(on_topic)
    assert record.key == event.key
    assert record.headers["correlation_id"] == f"corr-{event.key}"


@pytest.mark.parametrize("state", ["never started", "stopped"])
async def test_a_relay_without_a_producer_reserves_nothing_and_publishes_nothing(
    uow_factory: UowFactory, relays: Callable[..., KafkaMessaging], state: str
) -> None:
    relay = relays()
    if state == "stopped":
        await started(relay)
        await relay.stop()
    event = new_event(f"txn_{uuid.uuid4().hex}")

    lease = relay.publisher.reserve(event)
    assert lease is None
    row = await commit_event(uow_factory, event, lease)
    assert (row.claimed_by, row.claimed_until) == (None, None)

    await relay.publisher.publish_committed([event])
    (row,) = await outbox_rows(uow_factory, event.key)
    assert (row.published_at, row.claimed_by, row.attempts, row.last_error) == (None, None, 0, None)
    # Unleased, so it is the background relay's to publish.
    assert [e.event_id for e in await claim_as_another_publisher(uow_factory)] == [event.event_id]


async def test_publish_committed_leaves_events_another_process_reserved(
    uow_factory: UowFactory, relays: Callable[..., KafkaMessaging]
) -> None:
    mine, theirs = await started(relays(interval_s=60.0)), await started(relays(interval_s=60.0))
    event = new_event(f"txn_{uuid.uuid4().hex}")
    lease = theirs.publisher.reserve(event)
    assert lease is not None
    await commit_event(uow_factory, event, lease)

    await mine.publisher.publish_committed([event])
    (row,) = await outbox_rows(uow_factory, event.key)
    assert row.published_at is None
    assert row.claimed_by == lease.claimed_by
    assert row.claimed_by is not None
    assert row.claimed_by.startswith(holder(theirs))
    assert not row.claimed_by.startswith(holder(mine))

    await theirs.publisher.publish_committed([event])
    (row,) = await outbox_rows(uow_factory, event.key)
    assert row.published_at is not None


# -- through the refund use case ------------------------------------------------------


async def test_a_refund_behind_an_unpublished_event_is_unreserved_and_the_relay_sends_both_in_order(
    ctx: ServiceContext,
    merchant: Any,
    uow_factory: UowFactory,
    relays: Callable[..., KafkaMessaging],
) -> None:
    request_relay = await started(relays(interval_s=60.0))  # its own polling stays out of it
    async with tail_topic() as tail:
        # No publisher: the payment's captured event stays pending in the outbox.
        view = await pay(ctx, correlation_id="corr-pay")
        txn = view["transaction_id"]
        await refund(
            dataclasses.replace(ctx, publisher=request_relay.publisher),
            txn,
            Decimal("30.00"),
            correlation_id="corr-refund",
        )
        captured, refunded = await outbox_rows(uow_factory, txn)
        assert (captured.event_type, refunded.event_type) == (
            "payment.captured",
            "refund.succeeded",
        )
        assert captured.published_at is None
        # Written without a reservation, so the request did not send it ahead of the capture.
        assert (refunded.claimed_by, refunded.claimed_until, refunded.published_at) == (
            None,
            None,
            None,
        )

        await started(relays(fresh_grace_s=0.0))  # the background relay takes both
        event_ids = [str(captured.event_id), str(refunded.event_id)]
        on_topic = await read_exactly_once(tail, event_ids)
    assert on_topic == event_ids  # once each, the capture first
    first, second = tail.of(event_ids)
    assert_valid_event(first)
    assert_valid_event(second)
    assert first.partition == second.partition
    assert first.offset < second.offset
    assert second.headers["correlation_id"] == "corr-refund"

    async def both_published() -> bool:
        rows = await outbox_rows(uow_factory, txn)
        return all(row.published_at is not None for row in rows)

    await eventually(both_published, what="both events marked published")


async def test_a_refund_after_a_published_event_is_reserved_and_published_by_its_request(
    ctx: ServiceContext,
    merchant: Any,
    uow_factory: UowFactory,
    relays: Callable[..., KafkaMessaging],
) -> None:
    relay = await started(relays(interval_s=60.0))  # only the requests publish here
    publishing = dataclasses.replace(ctx, publisher=relay.publisher)
    async with tail_topic() as tail:
        view = await pay(publishing, correlation_id="corr-pay")
        txn = view["transaction_id"]
        (captured,) = await outbox_rows(uow_factory, txn)
        assert captured.published_at is not None

        await refund(publishing, txn, Decimal("30.00"), correlation_id="corr-refund")
        captured, refunded = await outbox_rows(uow_factory, txn)
        assert refunded.event_type == "refund.succeeded"
        assert refunded.claimed_by is not None
        assert refunded.claimed_by.startswith(holder(relay))
        assert refunded.claimed_by != captured.claimed_by  # a lease of its own
        assert refunded.published_at is not None  # before refund_payment returned
        assert refunded.claimed_until is None
        event_ids = [str(captured.event_id), str(refunded.event_id)]
        on_topic = await read_exactly_once(tail, event_ids)
    assert on_topic == event_ids
    first, second = tail.of(event_ids)
    assert_valid_event(first)
    assert_valid_event(second)
    assert (first.partition, first.key) == (second.partition, second.key)
    assert first.offset < second.offset


async def test_requests_finishing_together_mark_their_events_published_in_shared_updates(
    uow_factory: UowFactory, engine: AsyncEngine, relays: Callable[..., KafkaMessaging]
) -> None:
    relay = await started(relays())
    events = [new_event(f"txn_{uuid.uuid4().hex}") for _ in range(20)]
    for new in events:
        lease = relay.publisher.reserve(new)
        assert lease is not None
        await commit_event(uow_factory, new, lease)

    marks: list[str] = []

    def count_marks(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE outbox_events SET published_at"):
            marks.append(statement)

    sa_event.listen(engine.sync_engine, "before_cursor_execute", count_marks)
    try:
        async with tail_topic() as tail:
            await asyncio.gather(*(relay.publisher.publish_committed([e]) for e in events))
            on_topic = await read_exactly_once(tail, [str(e.event_id) for e in events])
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", count_marks)

    assert sorted(on_topic) == sorted(str(e.event_id) for e in events)
    for published in events:  # every one marked before its publish_committed returned
        (row,) = await outbox_rows(uow_factory, published.key)
        assert row.published_at is not None
        assert row.claimed_until is None
    assert 1 <= len(marks) < len(events)  # grouped, not one UPDATE per request


# -- a request never waits long for Kafka ---------------------------------------------


async def test_a_request_waits_for_an_unanswering_broker_only_its_bound_and_the_relay_publishes(
    ctx: ServiceContext,
    merchant: Any,
    uow_factory: UowFactory,
    relays: Callable[..., KafkaMessaging],
) -> None:
    class Producer(ProducerWhoseAcksStall):
        stalled = True

    publish_timeout_s = 3.0
    kafka = await started(
        relays(
            producer_factory=lambda: Producer(bootstrap_servers=KAFKA),
            publish_timeout_s=publish_timeout_s,
            request_wait_s=0.2,
        )
    )
    publishing = dataclasses.replace(ctx, publisher=kafka.publisher)
    async with tail_topic() as tail:
        began = time.monotonic()
        view = await pay(publishing, correlation_id="corr-pay")
        answered_after = time.monotonic() - began
        txn = view["transaction_id"]
        assert view["status"] == "captured"
        # The request answered without waiting out the publication, which goes on.
        assert answered_after < publish_timeout_s
        (captured,) = await outbox_rows(uow_factory, txn)
        request_lease = captured.claimed_by
        assert request_lease is not None
        assert request_lease.startswith(holder(kafka))
        assert captured.published_at is None

        # A refund behind the capture still in flight is left to the relay, after it.
        await refund(publishing, txn, Decimal("30.00"), correlation_id="corr-refund")
        captured, refunded = await outbox_rows(uow_factory, txn)
        assert (refunded.claimed_by, refunded.published_at) == (None, None)

        Producer.stalled = False  # the broker answers again
        event_ids = [str(captured.event_id), str(refunded.event_id)]
        on_topic = await read_exactly_once(tail, event_ids)
    assert on_topic == event_ids  # once each, the capture first
    first, second = tail.of(event_ids)
    assert_valid_event(first)
    assert_valid_event(second)
    assert (first.partition, first.key) == (second.partition, second.key)
    assert first.offset < second.offset

    async def both_published() -> bool:
        rows = await outbox_rows(uow_factory, txn)
        return all(row.published_at is not None for row in rows)

    await eventually(both_published, what="both events marked published")
    captured, refunded = await outbox_rows(uow_factory, txn)
    # The request's publication gave up after the publish timeout and handed the event
    # back, its attempt counted; the relay published it under a lease of its own.
    assert captured.attempts == 1
    assert f"no acknowledgement within {publish_timeout_s:g} s" in (captured.last_error or "")
    assert captured.claimed_by != request_lease
    assert (refunded.attempts, refunded.last_error) == (0, None)
