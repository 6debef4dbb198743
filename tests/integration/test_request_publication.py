"""Requests publish their own events: reserved before the commit, sent right after it.

On the real PostgreSQL and the local stack's Kafka. The topic is read from where it ended
when each test began, and only this test's events are looked at.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.models import OutboxEvent
from app.adapters.db.unit_of_work import UnitOfWork
from app.adapters.messaging.kafka import KafkaOutboxRelay
from app.services.context import ServiceContext
from app.services.payments import RefundPayment, process_payment, refund_payment
from tests.integration.test_outbox_relay import (
    PRINCIPAL,
    TopicTail,
    assert_valid_event,
    eventually,
    outbox_rows,
    started,
    tail_topic,
)
from tests.integration.test_outbox_relay import payment as payment_command

pytestmark = pytest.mark.kafka

UowFactory = Callable[[], UnitOfWork]
LEASE = timedelta(seconds=30)  # the relay's lease with a 3 s publish timeout (MIN_LEASE_S)


def new_event(aggregate_id: str) -> OutboxEvent:
    event_id = uuid.uuid4()
    return OutboxEvent(
        event_id=event_id,
        event_type="payment.captured",
        aggregate_id=aggregate_id,
        payload={"event_id": str(event_id), "event_type": "payment.captured"},
        headers={"correlation_id": f"corr-{aggregate_id}"},
    )


async def commit_event(uow_factory: UowFactory, event: OutboxEvent) -> OutboxEvent:
    """Write the event as a request does (staged, one statement); return the stored row."""
    async with uow_factory() as uow:
        uow.outbox.add(event)
        await uow.commit()
    (row,) = await outbox_rows(uow_factory, event.aggregate_id)
    return row


async def claim_as_another_publisher(uow_factory: UowFactory) -> list[OutboxEvent]:
    async with uow_factory() as uow:
        claimed = await uow.outbox.claim(claimer="other", lease=LEASE, limit=10)
        await uow.commit()
    return claimed


def holder(relay: KafkaOutboxRelay) -> str:
    """The prefix of every lease this relay takes."""
    return f"{relay._instance}#"


async def read_exactly_once(tail: TopicTail, event_ids: list[str]) -> list[str]:
    """Wait for the events, keep reading a little for late copies; the ids in topic order."""
    await tail.read_events(event_ids, timeout_s=15)
    await tail.read_for(0.5)
    return [record.event_id for record in tail.of(event_ids)]


# -- reserve and publish_committed ----------------------------------------------------


async def test_a_reserved_event_is_written_leased_left_alone_by_the_relay_and_published_once(
    uow_factory: UowFactory, relays: Callable[..., KafkaOutboxRelay]
) -> None:
    # A background relay eager to take anything unleased, however fresh.
    relay = await started(relays(fresh_grace_s=0.0))
    event = new_event(f"txn_{uuid.uuid4().hex}")

    before = datetime.now(UTC)
    assert relay.reserve(event) is True
    after = datetime.now(UTC)
    assert event.claimed_by is not None
    assert event.claimed_by.startswith(holder(relay))
    assert event.claimed_until is not None
    assert before + LEASE <= event.claimed_until <= after + LEASE

    async with tail_topic() as tail:
        row = await commit_event(uow_factory, event)
        assert (row.claimed_by, row.claimed_until) == (event.claimed_by, event.claimed_until)
        assert row.published_at is None
        assert await claim_as_another_publisher(uow_factory) == []

        await relay.publish_committed([event])
        (row,) = await outbox_rows(uow_factory, event.aggregate_id)
        assert row.published_at is not None  # marked before publish_committed returned
        assert row.claimed_until is None
        assert (row.attempts, row.last_error) == (0, None)
        on_topic = await read_exactly_once(tail, [str(event.event_id)])
    assert on_topic == [str(event.event_id)]
    (record,) = tail.of(on_topic)
    assert record.key == event.aggregate_id
    assert record.headers["correlation_id"] == f"corr-{event.aggregate_id}"


@pytest.mark.parametrize("state", ["never started", "stopped"])
async def test_a_relay_without_a_producer_reserves_nothing_and_publishes_nothing(
    uow_factory: UowFactory, relays: Callable[..., KafkaOutboxRelay], state: str
) -> None:
    relay = relays()
    if state == "stopped":
        await started(relay)
        await relay.stop()
    event = new_event(f"txn_{uuid.uuid4().hex}")

    assert relay.reserve(event) is False
    assert (event.claimed_by, event.claimed_until) == (None, None)
    row = await commit_event(uow_factory, event)
    assert (row.claimed_by, row.claimed_until) == (None, None)

    await relay.publish_committed([event])
    (row,) = await outbox_rows(uow_factory, event.aggregate_id)
    assert (row.published_at, row.claimed_by, row.attempts, row.last_error) == (None, None, 0, None)
    # Unleased, so it is the background relay's to publish.
    assert [e.event_id for e in await claim_as_another_publisher(uow_factory)] == [event.event_id]


async def test_publish_committed_leaves_events_another_process_reserved(
    uow_factory: UowFactory, relays: Callable[..., KafkaOutboxRelay]
) -> None:
    mine, theirs = await started(relays(interval_s=60.0)), await started(relays(interval_s=60.0))
    event = new_event(f"txn_{uuid.uuid4().hex}")
    assert theirs.reserve(event) is True
    await commit_event(uow_factory, event)

    await mine.publish_committed([event])
    (row,) = await outbox_rows(uow_factory, event.aggregate_id)
    assert row.published_at is None
    assert row.claimed_by == event.claimed_by
    assert row.claimed_by is not None
    assert row.claimed_by.startswith(holder(theirs))
    assert not row.claimed_by.startswith(holder(mine))

    await theirs.publish_committed([event])
    (row,) = await outbox_rows(uow_factory, event.aggregate_id)
    assert row.published_at is not None


# -- through the refund use case ------------------------------------------------------


async def test_a_refund_behind_an_unpublished_event_is_unreserved_and_the_relay_sends_both_in_order(
    ctx: ServiceContext,
    merchant: Any,
    uow_factory: UowFactory,
    relays: Callable[..., KafkaOutboxRelay],
) -> None:
    request_relay = await started(relays(interval_s=60.0))  # its own polling stays out of it
    async with tail_topic() as tail:
        # No publisher: the payment's captured event stays pending in the outbox.
        view = await process_payment(
            ctx, merchant=PRINCIPAL, command=payment_command(), correlation_id="corr-pay"
        )
        txn = view["transaction_id"]
        await refund_payment(
            dataclasses.replace(ctx, publisher=request_relay),
            merchant=PRINCIPAL,
            command=RefundPayment(transaction_id=txn, amount=Decimal("30.00")),
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
    relays: Callable[..., KafkaOutboxRelay],
) -> None:
    relay = await started(relays(interval_s=60.0))  # only the requests publish here
    publishing = dataclasses.replace(ctx, publisher=relay)
    async with tail_topic() as tail:
        view = await process_payment(
            publishing, merchant=PRINCIPAL, command=payment_command(), correlation_id="corr-pay"
        )
        txn = view["transaction_id"]
        (captured,) = await outbox_rows(uow_factory, txn)
        assert captured.published_at is not None

        await refund_payment(
            publishing,
            merchant=PRINCIPAL,
            command=RefundPayment(transaction_id=txn, amount=Decimal("30.00")),
            correlation_id="corr-refund",
        )
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
    uow_factory: UowFactory, engine: AsyncEngine, relays: Callable[..., KafkaOutboxRelay]
) -> None:
    relay = await started(relays())
    events = [new_event(f"txn_{uuid.uuid4().hex}") for _ in range(20)]
    for new in events:
        assert relay.reserve(new)
        await commit_event(uow_factory, new)

    marks: list[str] = []

    def count_marks(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE outbox_events SET published_at"):
            marks.append(statement)

    sa_event.listen(engine.sync_engine, "before_cursor_execute", count_marks)
    try:
        async with tail_topic() as tail:
            await asyncio.gather(*(relay.publish_committed([e]) for e in events))
            on_topic = await read_exactly_once(tail, [str(e.event_id) for e in events])
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", count_marks)

    assert sorted(on_topic) == sorted(str(e.event_id) for e in events)
    for published in events:  # every one marked before its publish_committed returned
        (row,) = await outbox_rows(uow_factory, published.aggregate_id)
        assert row.published_at is not None
        assert row.claimed_until is None
    assert 1 <= len(marks) < len(events)  # grouped, not one UPDATE per request
