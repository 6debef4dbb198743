"""Events on the real Kafka topic, through the real app: docs/events.md end to end.

The outage tests stop and restart the local stack's broker (``scripts/stack.sh down|up
kafka``) and always restart it, whatever happens. Only the events of this test's own
transactions are looked at: the topic is read from its end as it was when the test began.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.core.config import Settings
from app.services.context import ServiceContext
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.in_process_app import running_app
from tests.integration.test_outbox_relay import (
    KAFKA,
    Record,
    assert_valid_event,
    eventually,
    outbox_rows,
    pending_count,
    tail_topic,
)
from tests.service_calls import pay as pay_directly

REPO = Path(__file__).resolve().parents[2]
UowFactory = Callable[[], SqlUnitOfWork]

PAY = "/api/v1/payments/process"
MASTERCARD = "5555 5555 5555 4444"
CVV = "739"


@pytest.fixture
def app_settings() -> Settings:
    return make_settings(
        kafka_bootstrap_servers=KAFKA, outbox_relay_interval_s=0.1, kafka_publish_timeout_s=2.0
    )


class Broker:
    """The local stack's Kafka broker, stopped and started like an operator would."""

    def __init__(self) -> None:
        self.stopped = False

    @staticmethod
    def _stack(action: str) -> None:
        subprocess.run(
            ["bash", "scripts/stack.sh", action, "kafka"],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=180,
        )

    async def stop(self) -> None:
        self.stopped = True
        await asyncio.to_thread(self._stack, "down")

    async def start(self) -> None:
        await asyncio.to_thread(self._stack, "up")
        self.stopped = False


@pytest.fixture
def broker() -> Iterator[Broker]:
    """Stop and start the broker; it is always running again after the test."""
    handle = Broker()
    try:
        yield handle
    finally:
        if handle.stopped:
            Broker._stack("up")


async def kafka_health_is(client: httpx.AsyncClient, status: str) -> None:
    async def check() -> bool:
        body = (await client.get("/health")).json()
        return bool(body["checks"]["kafka"]["status"] == status)

    await eventually(check, timeout_s=30, what=f"/health kafka {status}")


async def pay(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    *,
    card_number: str = MASTERCARD,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    body = payment_body(merchant.merchant_id, card_number=card_number)
    body["card_data"]["cvv"] = CVV
    headers = dict(merchant.headers)
    if correlation_id:
        headers["X-Correlation-ID"] = correlation_id
    response = await client.post(PAY, json=body, headers=headers)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def refund(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    transaction_id: str,
    amount: str,
    *,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    headers = dict(merchant.headers)
    if correlation_id:
        headers["X-Correlation-ID"] = correlation_id
    response = await client.post(
        f"/api/v1/payments/{transaction_id}/refund", json={"amount": amount}, headers=headers
    )
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def assert_no_card_data(record: Record, pan: str) -> None:
    digits = pan.replace(" ", "")
    forbidden = [
        digits,  # the number
        pan,  # as typed
        digits[:-4],  # everything but the last four
        digits[:6],  # the BIN
        digits[6:12],  # the middle digits
        f'"{CVV}"',  # the CVV as a JSON string
        "cvv",
        "card_number",
        "Jane Doe",
    ]
    for needle in forbidden:
        assert needle.encode() not in record.raw, f"{needle!r} found in an event"

    def values(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for value in node.values():
                yield from values(value)
        elif isinstance(node, list):
            for value in node:
                yield from values(value)
        else:
            yield node

    assert CVV not in {str(value) for value in values(record.body)}
    assert CVV not in record.headers.values()


def first_seen_order(records: list[Record]) -> dict[str, list[str]]:
    """Each transaction's event ids in topic order, repeats dropped (what a consumer keeps)."""
    seen: set[str] = set()
    order: dict[str, list[str]] = defaultdict(list)
    for record in records:
        if record.event_id not in seen:
            seen.add(record.event_id)
            order[record.key].append(record.event_id)
    return dict(order)


@pytest.mark.kafka
async def test_a_payment_and_a_partial_refund_publish_captured_then_refund_succeeded(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    await kafka_health_is(client, "up")
    async with tail_topic() as tail:
        paid = await pay(client, merchant, correlation_id="corr-e2e-pay")
        txn = paid["transaction_id"]
        await refund(client, merchant, txn, "30.00", correlation_id="corr-e2e-refund")
        rows = await outbox_rows(uow_factory, txn)
        assert all(row.published_at is not None for row in rows)  # before the answers
        event_ids = [str(row.event_id) for row in rows]
        await tail.read_events(event_ids, timeout_s=10)
        await tail.read_for(0.5)

    captured, refunded = tail.of(event_ids)  # exactly two: nothing published twice
    for record in (captured, refunded):
        assert_valid_event(record)
        assert_no_card_data(record, MASTERCARD)
        assert record.key == txn
        assert record.body["merchant_id"] == merchant.merchant_id
    assert (captured.partition, refunded.partition) == (captured.partition, captured.partition)
    assert captured.offset < refunded.offset
    assert captured.headers["event_type"] == "payment.captured"
    assert captured.headers["correlation_id"] == "corr-e2e-pay"
    assert captured.body["data"] == {
        "amount": "99.99",
        "currency": "USD",
        "status": "captured",
        "payment_method": "credit_card",
        "card_brand": "mastercard",
        "capture_method": "automatic",
        "captured_amount": "99.99",
        # The payment's updated_at: it was captured by this very change.
        "updated_at": captured.body["occurred_at"],
    }
    assert refunded.headers["event_type"] == "refund.succeeded"
    assert refunded.body["data"]["updated_at"] == refunded.body["occurred_at"]  # it moved
    assert refunded.headers["correlation_id"] == "corr-e2e-refund"
    assert refunded.body["data"]["amount"] == "30.00"
    assert refunded.body["data"]["refunded_amount"] == "30.00"
    assert refunded.body["data"]["payment_status"] == "partially_refunded"


@pytest.mark.kafka
async def test_a_declined_payment_publishes_payment_declined(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    await kafka_health_is(client, "up")
    async with tail_topic() as tail:
        declined = await pay(client, merchant, card_number="4000000000000002")
        assert declined["status"] == "declined"
        (row,) = await outbox_rows(uow_factory, declined["transaction_id"])
        await tail.read_events([str(row.event_id)], timeout_s=10)
    (record,) = tail.of([str(row.event_id)])
    assert_valid_event(record)
    assert_no_card_data(record, "4000000000000002")
    assert record.headers["event_type"] == "payment.declined"
    assert record.body["data"]["status"] == "declined"
    assert record.body["data"]["decline_code"] == "card_declined"


@pytest.mark.kafka
async def test_payments_keep_working_through_a_kafka_outage_and_no_event_is_lost(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    uow_factory: UowFactory,
    broker: Broker,
) -> None:
    await kafka_health_is(client, "up")
    async with tail_topic() as tail:
        before = await pay(client, merchant)

        await broker.stop()
        during = [await pay(client, merchant) for _ in range(3)]
        await refund(client, merchant, before["transaction_id"], "10.00")
        await refund(client, merchant, during[0]["transaction_id"], "99.99")
        assert await pending_count(uow_factory) > 0
        health = await client.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "degraded"
        assert body["checks"]["kafka"]["status"] == "down"
        assert body["checks"]["outbox"]["pending"] > 0

        await broker.start()
        await eventually(lambda: _backlog_is(uow_factory, 0), timeout_s=60, what="backlog drained")
        await kafka_health_is(client, "up")
        assert (await client.get("/health")).json()["status"] == "healthy"
        rows = await outbox_rows(uow_factory)
        event_ids = [str(row.event_id) for row in rows]
        await tail.read_events(event_ids, timeout_s=30)
        await tail.read_for(1.0)

    # Every committed state change is on the topic at least once, none missing.
    assert len(rows) == 1 + 3 + 2
    on_topic = Counter(record.event_id for record in tail.of(event_ids))
    assert set(on_topic) == set(event_ids)
    for record in tail.of(event_ids):
        assert_valid_event(record)
    # After dropping repeats, each transaction's events are in commit order.
    committed: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        committed[row.aggregate_id].append(str(row.event_id))
    assert first_seen_order(tail.of(event_ids)) == dict(committed)


@pytest.mark.kafka
async def test_the_service_starts_and_serves_with_kafka_down_then_publishes_when_it_returns(
    app_settings: Settings,
    merchant: MerchantCredentials,
    uow_factory: UowFactory,
    broker: Broker,
) -> None:
    async with tail_topic() as tail:
        await broker.stop()
        async with running_app(app_settings) as client:
            health = await client.get("/health")
            assert health.status_code == 200
            assert health.json()["checks"]["kafka"]["status"] == "down"
            paid = await pay(client, merchant)
            assert await pending_count(uow_factory) == 1

            await broker.start()
            await eventually(
                lambda: _backlog_is(uow_factory, 0), timeout_s=60, what="backlog drained"
            )
            (row,) = await outbox_rows(uow_factory, paid["transaction_id"])
            await tail.read_events([str(row.event_id)], timeout_s=30)
    assert_valid_event(tail.of([str(row.event_id)])[0])


@pytest.mark.kafka
async def test_events_committed_before_shutdown_are_on_the_topic_after_it(
    ctx: ServiceContext, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    settings = make_settings(
        kafka_bootstrap_servers=KAFKA, outbox_relay_interval_s=60.0, kafka_publish_timeout_s=2.0
    )
    async with tail_topic() as tail:
        async with running_app(settings) as client:
            await kafka_health_is(client, "up")
            await asyncio.sleep(0.3)  # past the relay's first poll: it now sleeps a minute
            # Committed by another process that died before publishing.
            for _ in range(5):
                await pay_directly(ctx, correlation_id=None)
            assert await pending_count(uow_factory) == 5
        assert await pending_count(uow_factory) == 0
        event_ids = [str(row.event_id) for row in await outbox_rows(uow_factory)]
        await tail.read_events(event_ids, timeout_s=10)
        await tail.read_for(0.5)
    assert sorted(Counter(r.event_id for r in tail.of(event_ids)).values()) == [1] * 5


async def test_without_kafka_events_wait_in_the_outbox_and_the_first_log_line_says_so(
    monkeypatch: pytest.MonkeyPatch, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    stdout = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)  # the JSON log handler writes here
    async with running_app(make_settings(kafka_bootstrap_servers=None)) as client:

        async def logged() -> bool:  # lines reach stdout from the log writer thread
            return bool(stdout.getvalue())

        await eventually(logged, timeout_s=5, what="a log line on stdout")
        first_line = json.loads(stdout.getvalue().splitlines()[0])
        assert first_line["level"] == "WARNING"
        assert first_line["message"].startswith("KAFKA_BOOTSTRAP_SERVERS is not set")
        assert (await client.get("/health")).json()["checks"]["kafka"]["status"] == "disabled"
        await pay(client, merchant)
        await asyncio.sleep(0.3)
        (row,) = await outbox_rows(uow_factory)
        assert row.published_at is None
        assert row.claimed_by is None  # nobody even tried


async def _backlog_is(uow_factory: UowFactory, expected: int) -> bool:
    return await pending_count(uow_factory) == expected
