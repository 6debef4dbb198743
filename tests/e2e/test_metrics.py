"""Business metrics as a DogStatsD server receives them, from the real app.

A UDP socket on 127.0.0.1 stands in for the Datadog agent; the app's metrics point at it
(``METRICS_ENABLED``, ``DD_AGENT_HOST``, ``DD_DOGSTATSD_PORT``). Every datagram is parsed
and checked against the catalogue in :mod:`app.adapters.metrics`: only catalogued names,
only bounded tags (never a transaction, refund or merchant id).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.adapters.metrics import CATALOGUE, PREFIX
from app.core.config import Settings
from app.dispatcher import WebhookDispatcher, build_admin
from app.services import webhooks
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.in_process_app import running_app
from tests.e2e.test_events_kafka import kafka_health_is
from tests.e2e.test_webhooks import start_group_at_end
from tests.integration.test_outbox_relay import KAFKA
from tests.webhook_receiver import Receiver

PAY = "/api/v1/payments/process"
FAST_BANK_CALLS: dict[str, object] = {
    "bank_timeout_s": 0.2,
    "bank_connect_timeout_s": 0.2,
    "bank_max_retries": 1,
    "bank_backoff_max_s": 0.05,
}
FAST_RECONCILER: dict[str, object] = {
    **FAST_BANK_CALLS,
    "reconcile_first_delay_s": 0.2,
    "reconcile_interval_s": 0.2,
    "reconcile_max_interval_s": 0.5,
    "reconcile_no_record_after_s": 1.0,
    "reconcile_lease_s": 1.0,
}
SETTLE_WITHIN_S = 15.0


def unreachable_bank() -> dict[str, object]:
    """A bank on a loopback port nobody listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return {**FAST_BANK_CALLS, "bank_api_url": f"http://127.0.0.1:{port}"}


CATALOGUED = {spec.full_name: spec for spec in CATALOGUE}
STATSD_TYPES = {"c": "count", "g": "gauge", "d": "distribution"}


@dataclass(frozen=True)
class Metric:
    """One DogStatsD sample."""

    name: str
    value: float
    type: str
    tags: dict[str, str]


def parse_datagram(datagram: str) -> list[Metric]:
    """``name:value|type|@rate|#tag:v,tag:v|c:container`` lines (one per metric)."""
    metrics = []
    for line in datagram.splitlines():
        if not line:
            continue
        name, rest = line.split(":", 1)
        value, kind, *fields = rest.split("|")
        tags: dict[str, str] = {}
        for extra in fields:
            if extra.startswith("#"):
                for tag in extra[1:].split(","):
                    key, _, tag_value = tag.partition(":")
                    tags[key] = tag_value
        metrics.append(Metric(name, float(value), STATSD_TYPES.get(kind, kind), tags))
    return metrics


class StatsdListener:
    """A DogStatsD server on a free UDP port of 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.setblocking(False)
        self.port = int(self._socket.getsockname()[1])
        self.received: list[Metric] = []

    def drain(self) -> list[Metric]:
        while True:
            try:
                data = self._socket.recv(65535)
            except BlockingIOError:
                return self.received
            self.received.extend(parse_datagram(data.decode()))

    def clear(self) -> None:
        self.drain()
        self.received.clear()

    async def wait_for(
        self, predicate: Callable[[Metric], bool], what: str, timeout_s: float = 10.0
    ) -> Metric:
        deadline = time.monotonic() + timeout_s
        while True:
            for metric in self.drain():
                if predicate(metric):
                    return metric
            if time.monotonic() > deadline:
                names = sorted({m.name for m in self.received})
                raise AssertionError(f"no {what} within {timeout_s} s; received {names}")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self._socket.close()


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.close()


def metrics_settings(statsd: StatsdListener, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "metrics_enabled": True,
        "dogstatsd_host": "127.0.0.1",
        "dogstatsd_port": statsd.port,
        "metrics_report_interval_s": 0.1,
    }
    return make_settings(**(values | overrides))


@pytest.fixture
def app_settings(statsd: StatsdListener) -> Settings:
    statsd.clear()
    return metrics_settings(statsd)


def named(name: str, **tags: str) -> Callable[[Metric], bool]:
    full = f"{PREFIX}.{name}"

    def matches(metric: Metric) -> bool:
        return metric.name == full and all(metric.tags.get(k) == v for k, v in tags.items())

    return matches


def assert_catalogued_and_bounded(metrics: list[Metric], *ids: str) -> None:
    """Only catalogued names with their declared tags; no id of any kind in a tag."""
    for metric in metrics:
        spec = CATALOGUED.get(metric.name)
        assert spec is not None, f"{metric.name} is not in the catalogue"
        assert metric.type == spec.type, metric
        own_tags = set(metric.tags) - {"service", "env", "version"}
        assert own_tags <= set(spec.tags), (metric.name, own_tags)
        for value in metric.tags.values():
            assert not value.startswith(("txn_", "re_")), metric
            for forbidden in ids:
                assert forbidden not in value, metric


async def test_a_capture_a_decline_a_failure_and_a_refund_are_counted_with_their_amounts(
    client: httpx.AsyncClient, merchant: MerchantCredentials, statsd: StatsdListener
) -> None:
    paid = await client.post(
        PAY, json=payment_body(amount="99.99", currency="USD"), headers=merchant.headers
    )
    assert paid.status_code == 200
    captured = await statsd.wait_for(
        named("payments.processed", status="captured", currency="USD"), "capture count"
    )
    assert captured.value == 1
    assert captured.tags["service"] == "payment-service"
    assert captured.tags["env"] == "test"
    assert "decline_code" not in captured.tags
    amount = await statsd.wait_for(
        named("payments.amount", status="captured", currency="USD"), "capture amount"
    )
    assert amount.value == pytest.approx(99.99)

    declined = await client.post(
        PAY,
        json=payment_body(card_number="4000000000009995", amount="1000", currency="JPY"),
        headers=merchant.headers,
    )
    assert declined.json()["status"] == "declined"
    decline = await statsd.wait_for(
        named("payments.processed", status="declined", currency="JPY"), "decline count"
    )
    assert decline.tags["decline_code"] == "insufficient_funds"
    jpy = await statsd.wait_for(named("payments.amount", currency="JPY"), "JPY amount")
    assert jpy.value == 1000.0  # JPY has no minor unit

    # A failure the request itself decides: the bank refused the connection (closed port).
    async with running_app(metrics_settings(statsd, **unreachable_bank())) as down:
        failed = await down.post(PAY, json=payment_body(), headers=merchant.headers)
    assert failed.status_code == 503, failed.text
    assert failed.json()["code"] == "bank_unavailable"
    failure = await statsd.wait_for(named("payments.processed", status="failed"), "failure")
    assert failure.value == 1
    assert failure.tags["failure_code"] == "bank_unreachable"

    txn = paid.json()["transaction_id"]
    refunded = await client.post(
        f"/api/v1/payments/{txn}/refund", json={"amount": "10.00"}, headers=merchant.headers
    )
    assert refunded.status_code == 200
    await statsd.wait_for(
        named("refunds.processed", status="succeeded", currency="USD"), "refund count"
    )
    refund_amount = await statsd.wait_for(named("refunds.amount", currency="USD"), "refund")
    assert refund_amount.value == pytest.approx(10.0)

    assert_catalogued_and_bounded(statsd.received, merchant.merchant_id, txn)


async def test_a_processing_payment_is_counted_once_the_reconciler_settles_it(
    merchant: MerchantCredentials, statsd: StatsdListener
) -> None:
    statsd.clear()
    async with running_app(metrics_settings(statsd, **FAST_RECONCILER)) as http:
        # The bank's answer is unknown (500, timeout): no outcome yet, nothing counted.
        error = await http.post(
            PAY, json=payment_body(card_number="4000000000000119"), headers=merchant.headers
        )
        timeout = await http.post(
            PAY,
            json=payment_body(card_number="4000000000000903", currency="EUR"),
            headers=merchant.headers,
        )
        assert error.status_code == timeout.status_code == 202, (error.text, timeout.text)
        waiting = await statsd.wait_for(
            lambda m: named("reconciliation.waiting", kind="payment")(m) and m.value >= 1,
            "payments waiting for the reconciler",
        )
        assert waiting.type == "gauge"
        await statsd.wait_for(named("reconciliation.oldest_age_s"), "the oldest item's age")

        # The lookup finds the timeout card approved; the error card has no record and,
        # after RECONCILE_NO_RECORD_AFTER_S, fails.
        captured = await statsd.wait_for(
            named("payments.processed", status="captured", currency="EUR"),
            "the reconciled capture",
            timeout_s=SETTLE_WITHIN_S,
        )
        failed = await statsd.wait_for(
            named("payments.processed", status="failed", currency="USD"),
            "the reconciled failure",
            timeout_s=SETTLE_WITHIN_S,
        )
        await statsd.wait_for(
            named("reconciliation.settled", kind="payment", outcome="captured"),
            "a settled capture",
        )
        await statsd.wait_for(
            named("reconciliation.settled", kind="payment", outcome="failed"), "a settled failure"
        )
        await statsd.wait_for(
            lambda m: named("reconciliation.waiting", kind="payment")(m) and m.value == 0,
            "nothing left waiting",
        )

    assert captured.value == failed.value == 1
    assert failed.tags["failure_code"] == "bank_no_record"
    processed = [m for m in statsd.drain() if m.name == f"{PREFIX}.payments.processed"]
    assert sorted(m.tags["status"] for m in processed) == ["captured", "failed"]
    assert_catalogued_and_bounded(
        statsd.received,
        merchant.merchant_id,
        error.json()["transaction_id"],
        timeout.json()["transaction_id"],
    )


async def test_a_capture_and_a_void_of_authorizations_are_counted_as_operations(
    client: httpx.AsyncClient, merchant: MerchantCredentials, statsd: StatsdListener
) -> None:
    manual = payment_body(amount="50.00", currency="EUR", capture_method="manual")
    first = (await client.post(PAY, json=manual, headers=merchant.headers)).json()
    second = (await client.post(PAY, json=manual, headers=merchant.headers)).json()
    authorized = await statsd.wait_for(
        named("payments.processed", status="authorized", currency="EUR"), "authorization"
    )
    assert authorized.value == 1

    captured = await client.post(
        f"/api/v1/payments/{first['transaction_id']}/capture",
        json={"amount": "20.00"},
        headers=merchant.headers,
    )
    voided = await client.post(
        f"/api/v1/payments/{second['transaction_id']}/void", headers=merchant.headers
    )

    assert captured.json()["status"] == "captured"
    assert voided.json()["status"] == "voided"
    capture = await statsd.wait_for(
        named("authorizations.settled", operation="capture", outcome="succeeded"), "capture"
    )
    assert capture.tags["currency"] == "EUR"
    await statsd.wait_for(
        named("authorizations.settled", operation="void", outcome="succeeded"), "void"
    )
    # An authorization is one payment: its capture is not counted as another.
    processed = [m for m in statsd.drain() if m.name.endswith("payments.processed")]
    assert {m.tags["status"] for m in processed} == {"authorized"}
    assert_catalogued_and_bounded(
        statsd.received, merchant.merchant_id, first["transaction_id"], second["transaction_id"]
    )


async def test_an_idempotent_replay_is_counted(
    client: httpx.AsyncClient, merchant: MerchantCredentials, statsd: StatsdListener
) -> None:
    headers = {**merchant.headers, "Idempotency-Key": "metrics-replay-1"}
    first = await client.post(PAY, json=payment_body(), headers=headers)
    second = await client.post(PAY, json=payment_body(), headers=headers)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    replay = await statsd.wait_for(named("idempotency.replays", operation="payment"), "replay")
    assert replay.value == 1
    processed = [m for m in statsd.drain() if m.name.endswith("payments.processed")]
    assert len(processed) == 1  # the replay is not a second payment
    assert_catalogued_and_bounded(statsd.received, merchant.merchant_id)


async def test_the_outbox_backlog_and_the_circuit_state_are_reported_periodically(
    client: httpx.AsyncClient, merchant: MerchantCredentials, statsd: StatsdListener
) -> None:
    # No Kafka in these settings: the payment's event stays in the outbox.
    paid = await client.post(PAY, json=payment_body(), headers=merchant.headers)
    assert paid.status_code == 200
    await statsd.wait_for(
        lambda m: named("outbox.pending")(m) and m.value >= 1, "a pending outbox event"
    )
    age = await statsd.wait_for(
        lambda m: named("outbox.oldest_age_s")(m) and m.value > 0, "the oldest event's age"
    )
    assert age.type == "gauge"
    circuit = await statsd.wait_for(named("bank.circuit.open"), "circuit state")
    assert circuit.value == 0  # the in-process simulator has no circuit to open
    assert_catalogued_and_bounded(statsd.received, merchant.merchant_id)


@pytest.mark.mockserver
async def test_bank_latency_and_the_circuit_opening_are_reported(
    merchant: MerchantCredentials, statsd: StatsdListener
) -> None:
    statsd.clear()
    settings = metrics_settings(
        statsd,
        bank_api_url="http://127.0.0.1:1080",
        bank_max_retries=0,
        bank_breaker_fail_max=2,
        bank_breaker_reset_s=60.0,
        metrics_report_interval_s=60.0,
    )
    async with running_app(settings) as http:
        ok = await http.post(PAY, json=payment_body(), headers=merchant.headers)
        assert ok.status_code == 200
        latency = await statsd.wait_for(
            named("bank.latency", operation="authorization", outcome="answered"), "latency"
        )
        assert 0 < latency.value < 10_000  # milliseconds
        for _ in range(2):
            # A 500 is an unknown answer (202, processing) and a sign the bank is unwell.
            unknown = await http.post(
                PAY, json=payment_body(card_number="4000000000000119"), headers=merchant.headers
            )
            assert unknown.status_code == 202, unknown.text
            assert unknown.json()["status"] == "processing"
        await statsd.wait_for(
            named("bank.latency", outcome="processing_error"), "a failed call's latency"
        )
        opened = await statsd.wait_for(
            lambda m: named("bank.circuit.open")(m) and m.value == 1, "circuit open"
        )
        assert opened.type == "gauge"
        refused = await http.post(PAY, json=payment_body(), headers=merchant.headers)
        assert refused.status_code == 503
        assert refused.json()["code"] == "bank_unavailable"
        await statsd.wait_for(named("bank.latency", outcome="circuit_open"), "refused call")
        failure = await statsd.wait_for(
            named("payments.processed", status="failed"), "the refused payment's failure"
        )
        assert failure.tags["failure_code"] == "circuit_open"
    # Counted: the approval and the refused payment; the two processing ones are not (yet).
    statuses = [
        m.tags["status"] for m in statsd.drain() if m.name == f"{PREFIX}.payments.processed"
    ]
    assert sorted(statuses) == ["captured", "failed"]
    assert_catalogued_and_bounded(statsd.received, merchant.merchant_id)


@pytest.mark.kafka
async def test_events_published_to_kafka_are_counted(
    merchant: MerchantCredentials, statsd: StatsdListener
) -> None:
    statsd.clear()
    settings = metrics_settings(statsd, kafka_bootstrap_servers=KAFKA, outbox_relay_interval_s=0.1)
    async with running_app(settings) as http:
        await kafka_health_is(http, "up")
        paid = await http.post(PAY, json=payment_body(), headers=merchant.headers)
        assert paid.status_code == 200
        published = await statsd.wait_for(
            named("outbox.published", path="request", outcome="published"), "published event"
        )
        assert published.value == 1
        await statsd.wait_for(
            lambda m: named("outbox.pending")(m) and m.value == 0, "an empty outbox"
        )
    assert_catalogued_and_bounded(statsd.received, merchant.merchant_id)


def test_every_catalogued_metric_has_a_type_tags_and_a_description() -> None:
    names = [spec.full_name for spec in CATALOGUE]
    assert len(names) == len(set(names))
    for spec in CATALOGUE:
        assert spec.full_name.startswith(f"{PREFIX}.")
        assert spec.type in STATSD_TYPES.values()
        assert spec.description
        assert {"merchant_id", "transaction_id", "refund_id"}.isdisjoint(spec.tags)


async def test_the_webhook_dispatcher_counts_deliveries_and_reports_each_endpoints_backlog(
    merchant: MerchantCredentials,
    statsd: StatsdListener,
    uow_factory: Callable[[], SqlUnitOfWork],
) -> None:
    statsd.clear()
    group = f"webhooks-metrics-{uuid.uuid4().hex[:8]}"
    await start_group_at_end(group)
    settings = metrics_settings(
        statsd,
        kafka_bootstrap_servers=KAFKA,
        outbox_relay_interval_s=0.1,
        webhook_consumer_group=group,
        webhook_allow_private_targets=True,
        webhook_poll_interval_s=0.1,
        webhook_retry_first_s=0.2,
        webhook_retry_max_interval_s=0.5,
    )
    receiver = Receiver()
    await receiver.start()
    issued = await webhooks.add_endpoint(
        build_admin(settings, uow_factory), merchant_id=merchant.merchant_id, url=receiver.url
    )
    receiver.secrets = [issued.secret]
    dispatcher = WebhookDispatcher(settings)
    await dispatcher.start()
    try:
        async with running_app(settings) as http:
            await kafka_health_is(http, "up")
            paid = await http.post(PAY, json=payment_body(), headers=merchant.headers)
            assert paid.status_code == 200
            delivered = await statsd.wait_for(
                named("webhooks.deliveries", outcome="delivered", event_type="payment.captured"),
                "a delivered webhook",
                timeout_s=20,
            )
            assert delivered.value == 1
            await statsd.wait_for(named("webhooks.events", outcome="matched"), "a matched event")
            lag = await statsd.wait_for(named("webhooks.delivery_lag"), "commit to delivery")
            assert 0 < lag.value < 20_000
            await statsd.wait_for(named("webhooks.attempt.latency", outcome="delivered"), "latency")

            receiver.status = 503  # the merchant fails: a backlog builds up for its endpoint
            paid = await http.post(PAY, json=payment_body(), headers=merchant.headers)
            assert paid.status_code == 200
            await statsd.wait_for(
                named("webhooks.deliveries", outcome="retrying", error="http_503"), "a retry"
            )
            backlog = await statsd.wait_for(
                lambda m: (
                    named("webhooks.backlog.pending", endpoint_id=issued.endpoint.endpoint_id)(m)
                    and m.value == 1
                ),
                "the endpoint's backlog",
            )
            assert "merchant_id" not in backlog.tags
            age = await statsd.wait_for(
                lambda m: named("webhooks.backlog.oldest_age_s")(m) and m.value > 0, "its age"
            )
            assert age.tags["endpoint_id"] == issued.endpoint.endpoint_id
            # The total, untagged: every dispatcher's heartbeat (webhook-dispatcher-silent.json).
            total = await statsd.wait_for(
                lambda m: named("webhooks.backlog.total")(m) and m.value >= 1, "the total"
            )
            assert set(total.tags) == {"service", "env", "version"}
    finally:
        await dispatcher.stop()
        await receiver.stop()
    assert_catalogued_and_bounded(statsd.received, merchant.merchant_id)
