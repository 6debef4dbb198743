"""Signed webhooks end to end (SPEC §10, docs/webhooks.md): the real app publishes to the
real Kafka topic, the real dispatcher (a consumer group) records deliveries in the real
PostgreSQL and POSTs them to a real HTTP receiver on loopback, which verifies every
signature with the ``standardwebhooks`` library.

Each test's dispatcher group starts at the topic's end as it was when the test began (the
topic holds other tests' events, some for merchants with the same ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app import cli
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.adapters.webhooks.sender import HttpWebhookSender
from app.core.config import Settings
from app.dispatcher import WebhookDispatcher, build_admin
from app.domain.webhooks import TargetRules
from app.services import webhooks
from tests.conftest import TEST_DATABASE_URL, MerchantCredentials, make_settings, payment_body
from tests.e2e.api_calls import PROCESS, payment_url, refund_url
from tests.e2e.in_process_app import running_app
from tests.e2e.test_admin_cli import admin
from tests.integration.test_outbox_relay import KAFKA, eventually, topic_partitions
from tests.mockserver_bank import (
    clear_expectation,
    json_response,
    register_authorization_status,
    register_expectation,
    register_refund_status,
)
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.kafka]

REPO = Path(__file__).resolve().parents[2]
BANK_URL = os.environ.get("BANK_API_URL") or "http://127.0.0.1:1080"
SECRET_LINE = re.compile(r"^signing_secret: (whsec_\S+)$", re.MULTILINE)
ENDPOINT_LINE = re.compile(r"^added webhook (we_[0-9a-f]{32}) ", re.MULTILINE)
APPROVED = "4242424242424242"
ALL_TYPES = {
    "payment.processing",
    "payment.authorized",
    "payment.captured",
    "payment.declined",
    "payment.failed",
    "payment.voided",
    "payment.expired",
    "refund.pending",
    "refund.succeeded",
    "refund.failed",
}


AddWebhook = Callable[..., Awaitable[webhooks.IssuedEndpoint]]


def webhook_settings(group: str, **overrides: Any) -> Settings:
    """Kafka on, short retries, loopback targets allowed (a test receiver is on 127.0.0.1)."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": KAFKA,
        "outbox_relay_interval_s": 0.1,
        "kafka_publish_timeout_s": 2.0,
        "webhook_consumer_group": group,
        "webhook_session_timeout_s": 6.0,
        "webhook_poll_interval_s": 0.1,
        "webhook_retry_first_s": 0.2,
        "webhook_retry_max_interval_s": 1.0,
        "webhook_timeout_s": 2.0,
        "webhook_connect_timeout_s": 0.5,
        "webhook_allow_private_targets": True,
    }
    return make_settings(**(values | overrides))


async def start_group_at_end(group: str) -> None:
    """Commit the group's offsets at the topic's current end: its dispatchers deliver
    what is published from now on, not the topic's history."""
    partitions = await topic_partitions()
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        await consumer.commit({tp: await consumer.position(tp) for tp in partitions})
    finally:
        await consumer.stop()


@pytest.fixture
async def group() -> str:
    name = f"webhooks-test-{uuid.uuid4().hex[:10]}"
    await start_group_at_end(name)
    return name


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@contextlib.asynccontextmanager
async def running_dispatcher(settings: Settings) -> AsyncIterator[WebhookDispatcher]:
    dispatcher = WebhookDispatcher(settings)
    await dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()


@pytest.fixture
def add_webhook(
    uow_factory: Callable[[], SqlUnitOfWork],
) -> Callable[..., Awaitable[webhooks.IssuedEndpoint]]:
    """Register an endpoint as ``payments-admin add-webhook`` does."""

    async def add(
        settings: Settings, merchant_id: str, url: str, events: tuple[str, ...] = ()
    ) -> webhooks.IssuedEndpoint:
        return await webhooks.add_endpoint(
            build_admin(settings, uow_factory), merchant_id=merchant_id, url=url, event_types=events
        )

    return add


async def pay(
    client: httpx.AsyncClient, merchant: MerchantCredentials, card: str = APPROVED, **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        PROCESS,
        json=payment_body(merchant.merchant_id, card_number=card, **extra),
        headers=merchant.headers,
    )
    assert response.status_code in (200, 201, 202), response.text
    body: dict[str, Any] = response.json()
    return body


async def outbox_event_ids(engine: AsyncEngine, merchant_id: str) -> dict[str, str]:
    """Every event the service committed for the merchant: event_id -> event_type."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT event_id::text, event_type FROM outbox_events "
                "WHERE payload->>'merchant_id' = :m"
            ),
            {"m": merchant_id},
        )
        return {row[0]: row[1] for row in rows}


async def deliveries(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT * FROM webhook_deliveries ORDER BY id"))
        return [dict(row) for row in rows.mappings()]


async def attempts(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT * FROM webhook_attempts ORDER BY id"))
        return [dict(row) for row in rows.mappings()]


def assert_first_receipts_in_commit_order(receiver: Receiver) -> None:
    """Per payment, the events first arrived in the order they occurred."""
    seen: dict[str, list[tuple[str, str]]] = {}
    for delivery in receiver.deliveries:
        order = seen.setdefault(delivery.body["transaction_id"], [])
        if delivery.webhook_id not in {event_id for event_id, _ in order}:
            order.append((delivery.webhook_id, delivery.body["occurred_at"]))
    for transaction_id, order in seen.items():
        times = [occurred for _, occurred in order]
        assert times == sorted(times), f"{transaction_id} arrived out of order: {order}"


# -- every event type ---------------------------------------------------------------------


@pytest.mark.mockserver
async def test_every_event_type_reaches_the_endpoint_signed_and_in_order_per_payment(
    merchant: MerchantCredentials,
    group: str,
    receiver: Receiver,
    engine: AsyncEngine,
    add_webhook: AddWebhook,
) -> None:
    settings = webhook_settings(
        group,
        bank_api_url=BANK_URL,
        bank_timeout_s=1.0,
        bank_connect_timeout_s=0.5,
        bank_max_retries=0,
        bank_backoff_max_s=0.1,
        bank_breaker_fail_max=100,
        reconcile_first_delay_s=0.5,
        reconcile_interval_s=0.2,
        reconcile_max_interval_s=1.0,
        reconcile_no_record_after_s=3.0,
        reconcile_lease_s=3.0,
        authorization_ttl_s=4.0,
    )
    issued = await add_webhook(settings, merchant.merchant_id, receiver.url)
    receiver.secrets = [issued.secret]
    expectation_ids: list[str] = []
    async with (
        httpx.AsyncClient(base_url=BANK_URL, timeout=5.0) as mockserver,
        running_dispatcher(settings),
        running_app(settings) as client,
    ):
        try:
            captured = await pay(client, merchant)  # payment.captured
            await pay(client, merchant, "4000000000000002")  # payment.declined
            await pay(client, merchant, "4000000000000119")  # payment.failed
            processing = await pay(client, merchant, "4000000000000903")  # payment.processing
            assert processing["status"] == "processing"
            expectation_ids.append(
                await register_authorization_status(
                    mockserver, processing["transaction_id"], approved=True
                )
            )
            voided = await pay(client, merchant, capture_method="manual")  # payment.authorized
            response = await client.post(
                f"{payment_url(voided['transaction_id'])}/void", headers=merchant.headers
            )
            assert response.status_code == 200, response.text  # payment.voided
            await pay(client, merchant, capture_method="manual")  # payment.expired, later

            transaction_id = captured["transaction_id"]
            expectation_ids.append(
                await register_expectation(
                    mockserver,
                    http_request={
                        "method": "POST",
                        "path": "/v1/refunds",
                        "body": {"type": "JSON", "json": {"transaction_id": transaction_id}},
                    },
                    action=json_response(503, {"error": "busy"}),
                    kind="refund-5xx",
                    reference=transaction_id,
                )
            )
            refunds = []
            for amount in ("10.00", "20.00"):  # refund.pending, twice
                response = await client.post(
                    refund_url(transaction_id), json={"amount": amount}, headers=merchant.headers
                )
                assert response.status_code == 202, response.text
                refunds.append(response.json()["refund_id"])
            expectation_ids.append(
                await register_refund_status(mockserver, refunds[0], succeeded=True)
            )
            expectation_ids.append(
                await register_refund_status(mockserver, refunds[1], succeeded=False)
            )

            await eventually(
                lambda: asyncio.sleep(0, receiver.types() >= ALL_TYPES),
                timeout_s=45,
                what=f"every event type delivered (so far {sorted(receiver.types())})",
            )
            committed = await outbox_event_ids(engine, merchant.merchant_id)
            await eventually(
                lambda: asyncio.sleep(0, receiver.has_all(list(committed))),
                timeout_s=20,
                what="every committed event delivered",
            )
        finally:
            for expectation_id in expectation_ids:
                await clear_expectation(mockserver, expectation_id)

    assert receiver.refused_signatures == 0
    assert receiver.ids() == set(committed)  # nothing but this merchant's events
    for delivery in receiver.deliveries:
        assert delivery.headers["webhook-id"] == delivery.body["event_id"]
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.body["data"]["updated_at"]
        assert delivery.body["merchant_id"] == merchant.merchant_id
        assert "4242" not in delivery.raw.decode()
    assert_first_receipts_in_commit_order(receiver)
    stored = await deliveries(engine)
    assert {row["status"] for row in stored} == {"delivered"}
    assert len(stored) == len(committed)
    tried = await attempts(engine)
    assert all(a["status_code"] == 204 and a["error"] is None for a in tried)
    assert all(a["latency_ms"] >= 0 for a in tried)


async def test_an_endpoint_gets_only_the_event_types_it_asked_for(
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
    group: str,
    receiver: Receiver,
    engine: AsyncEngine,
    add_webhook: AddWebhook,
) -> None:
    settings = webhook_settings(group)
    other = await create_merchant(merchant_id="merchant_other_hooks")
    declined_only = await add_webhook(
        settings, merchant.merchant_id, receiver.url, ("payment.declined",)
    )
    everything = Receiver()
    await everything.start()
    try:
        other_issued = await add_webhook(settings, other.merchant_id, everything.url)
        receiver.secrets = [declined_only.secret]
        everything.secrets = [other_issued.secret]
        async with running_dispatcher(settings), running_app(settings) as client:
            await pay(client, merchant)
            declined = await pay(client, merchant, "4000000000000002")
            mine = await pay(client, other)
            await eventually(
                lambda: asyncio.sleep(0, bool(receiver.deliveries) and bool(everything.deliveries)),
                timeout_s=20,
                what="both endpoints got their event",
            )
            await asyncio.sleep(1.0)  # anything wrongly matched would have arrived by now
    finally:
        await everything.stop()
    assert [d.body["transaction_id"] for d in receiver.deliveries] == [declined["transaction_id"]]
    assert [d.body["transaction_id"] for d in everything.deliveries] == [mine["transaction_id"]]
    # Events no endpoint wanted are not kept.
    async with engine.connect() as conn:
        kept = (await conn.execute(text("SELECT count(*) FROM webhook_events"))).scalar_one()
    assert kept == 2


# -- failures and retries ---------------------------------------------------------------


async def test_a_receiver_down_for_a_while_gets_every_event_once_it_is_back(
    merchant: MerchantCredentials, group: str, engine: AsyncEngine, add_webhook: AddWebhook
) -> None:
    settings = webhook_settings(group)
    receiver = Receiver()  # not started: connections are refused
    issued = await add_webhook(settings, merchant.merchant_id, receiver.url)
    receiver.secrets = [issued.secret]
    async with running_dispatcher(settings), running_app(settings) as client:
        payments = [await pay(client, merchant) for _ in range(12)]

        async def failed_twice() -> bool:
            rows = await deliveries(engine)
            return len(rows) == 12 and all(row["attempts"] >= 2 for row in rows)

        await eventually(failed_twice, timeout_s=30, what="every delivery failed twice")
        receiver.status = 503
        await receiver.start()  # up, but answering 503 for a while
        await eventually(
            lambda: asyncio.sleep(0, receiver.failed_answers >= 3), timeout_s=20, what="503s"
        )
        receiver.status = 200
        try:
            committed = await outbox_event_ids(engine, merchant.merchant_id)
            assert len(committed) == len(payments)
            await eventually(
                lambda: asyncio.sleep(0, receiver.has_all(list(committed))),
                timeout_s=30,
                what="every event delivered after the outage",
            )
        finally:
            await receiver.stop()
    duplicates = receiver.duplicates()
    print(f"receiver down then up: {len(committed)} events, {duplicates} duplicate deliveries")
    assert receiver.ids() == set(committed)
    stored = await deliveries(engine)
    assert {row["status"] for row in stored} == {"delivered"}
    errors = {a["error"] for a in await attempts(engine)}
    assert "connection_error" in errors
    assert any(a["status_code"] == 503 for a in await attempts(engine))
    async with engine.connect() as conn:
        failing = (
            await conn.execute(text("SELECT failing_since FROM webhook_endpoints"))
        ).scalar_one()
    assert failing is None  # a success ends the failing streak


async def test_an_endpoint_failing_for_the_whole_window_is_disabled_and_the_audit_log_says_so(
    merchant: MerchantCredentials,
    group: str,
    receiver: Receiver,
    engine: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
    add_webhook: AddWebhook,
) -> None:
    settings = webhook_settings(group, webhook_retry_window_s=2.0)
    issued = await add_webhook(settings, merchant.merchant_id, receiver.url)
    receiver.secrets = [issued.secret]
    receiver.status = 500
    async with running_dispatcher(settings), running_app(settings) as client:
        payment = await pay(client, merchant)

        async def disabled() -> bool:
            async with engine.connect() as conn:
                status = (
                    await conn.execute(text("SELECT status FROM webhook_endpoints"))
                ).scalar_one()
            return bool(status == "disabled")

        await eventually(disabled, timeout_s=30, what="the endpoint disabled")
    (row,) = await deliveries(engine)
    assert row["status"] == "failed" and row["finished_at"] is not None
    async with engine.connect() as conn:
        audit = (
            (
                await conn.execute(
                    text(
                        "SELECT actor, details FROM audit_log WHERE action = 'webhook.disable' "
                        "AND resource_type = 'merchant' AND resource_id = :m"
                    ),
                    {"m": merchant.merchant_id},
                )
            )
            .mappings()
            .all()
        )
    assert [a["actor"] for a in audit] == ["payments-webhooks"]
    assert audit[0]["details"]["endpoint_id"] == issued.endpoint.endpoint_id
    assert audit[0]["details"]["reason"] == "failing_for_retry_window"

    # The operator fixes the endpoint, enables it and replays: the event arrives.
    receiver.status = 200
    code, out, _ = await asyncio.to_thread(
        admin, capsys, "enable-webhook", issued.endpoint.endpoint_id, settings=settings
    )
    assert code == 0, out
    code, out, _ = await asyncio.to_thread(
        admin, capsys, "replay-webhooks", merchant.merchant_id, "--since", "1h", settings=settings
    )
    assert code == 0 and "queued 1 deliveries" in out, out
    async with running_dispatcher(settings):
        await eventually(
            lambda: asyncio.sleep(0, bool(receiver.deliveries)), timeout_s=15, what="the replay"
        )
    assert receiver.deliveries[0].body["transaction_id"] == payment["transaction_id"]


# -- rotation, replay, CLI ----------------------------------------------------------------


async def test_a_rotated_secret_signs_next_to_the_old_one_for_the_grace_period(
    merchant: MerchantCredentials,
    group: str,
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = webhook_settings(group, webhook_secret_grace_s=3600.0)
    code, out, _ = await asyncio.to_thread(
        admin, capsys, "add-webhook", merchant.merchant_id, receiver.url, settings=settings
    )
    assert code == 0, out
    (old,) = SECRET_LINE.findall(out)
    (endpoint_id,) = ENDPOINT_LINE.findall(out)
    receiver.secrets = [old]
    async with running_dispatcher(settings), running_app(settings) as client:
        await pay(client, merchant)
        await eventually(lambda: asyncio.sleep(0, len(receiver.deliveries) == 1), what="one")
        code, out, _ = await asyncio.to_thread(
            admin, capsys, "rotate-webhook-secret", endpoint_id, settings=settings
        )
        assert code == 0, out
        (new,) = SECRET_LINE.findall(out)
        assert new != old
        # A receiver that still knows only the old secret keeps accepting...
        await pay(client, merchant)
        await eventually(lambda: asyncio.sleep(0, len(receiver.deliveries) == 2), what="two")
        # ...and one that switched to the new secret accepts too.
        receiver.secrets = [new]
        await pay(client, merchant)
        await eventually(lambda: asyncio.sleep(0, len(receiver.deliveries) == 3), what="three")
    assert receiver.refused_signatures == 0
    first, second, third = receiver.deliveries
    assert len(first.headers["webhook-signature"].split(" ")) == 1
    for after_rotation in (second, third):
        signatures = after_rotation.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
        for secret in (old, new):
            Webhook(secret).verify(after_rotation.raw, after_rotation.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(first.raw, first.headers)
    # The secret was printed once, and never again.
    code, out, _ = await asyncio.to_thread(
        admin, capsys, "list-webhooks", merchant.merchant_id, "--json", settings=settings
    )
    assert code == 0 and old not in out and new not in out and "whsec_" not in out


async def test_once_the_grace_period_is_over_only_the_new_secret_signs(
    merchant: MerchantCredentials,
    group: str,
    receiver: Receiver,
    add_webhook: AddWebhook,
    uow_factory: Callable[[], SqlUnitOfWork],
) -> None:
    settings = webhook_settings(group, webhook_secret_grace_s=0.0)
    issued = await add_webhook(settings, merchant.merchant_id, receiver.url)
    rotated = await webhooks.rotate_secret(
        build_admin(settings, uow_factory), endpoint_id=issued.endpoint.endpoint_id
    )
    receiver.secrets = [issued.secret]  # the old one: refused from now on
    async with running_dispatcher(settings), running_app(settings) as client:
        await pay(client, merchant)
        await eventually(
            lambda: asyncio.sleep(0, receiver.refused_signatures >= 1), what="a refusal"
        )
        receiver.secrets = [rotated.secret]
        await eventually(
            lambda: asyncio.sleep(0, len(receiver.deliveries) == 1), what="the retry accepted"
        )
    assert len(receiver.deliveries[0].headers["webhook-signature"].split(" ")) == 1


async def test_replay_sends_a_time_range_again_and_fills_a_new_endpoint(
    merchant: MerchantCredentials,
    group: str,
    receiver: Receiver,
    engine: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
    add_webhook: AddWebhook,
) -> None:
    settings = webhook_settings(group)
    issued = await add_webhook(settings, merchant.merchant_id, receiver.url)
    receiver.secrets = [issued.secret]
    async with running_dispatcher(settings), running_app(settings) as client:
        paid = [await pay(client, merchant) for _ in range(3)]
        await eventually(lambda: asyncio.sleep(0, len(receiver.deliveries) == 3), what="three")
        late = Receiver()
        await late.start()
        try:
            code, out, _ = await asyncio.to_thread(
                admin, capsys, "add-webhook", merchant.merchant_id, late.url, settings=settings
            )
            assert code == 0, out
            late.secrets = SECRET_LINE.findall(out)
            code, out, err = await asyncio.to_thread(
                admin,
                capsys,
                "replay-webhooks",
                merchant.merchant_id,
                "--since",
                "10m",
                settings=settings,
            )
            assert code == 0, err
            assert "queued 6 deliveries" in out  # 3 events x 2 endpoints
            await eventually(
                lambda: asyncio.sleep(
                    0, len(receiver.deliveries) == 6 and len(late.deliveries) == 3
                ),
                what="the replay to both endpoints",
            )
            # A range before the payments replays nothing.
            code, out, _ = await asyncio.to_thread(
                admin,
                capsys,
                "replay-webhooks",
                merchant.merchant_id,
                "--since",
                "2h",
                "--until",
                "1h",
                settings=settings,
            )
            assert code == 0 and "queued 0 deliveries" in out
        finally:
            await late.stop()
    ids = {p["transaction_id"] for p in paid}
    assert {d.body["transaction_id"] for d in late.deliveries} == ids
    assert receiver.duplicates() == 3  # at least once: the receiver dedupes on webhook-id
    async with engine.connect() as conn:
        replayed = (
            (
                await conn.execute(
                    text(
                        "SELECT details FROM audit_log WHERE action = 'webhook.replay' ORDER BY id"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert [r["deliveries"] for r in replayed] == [6, 0]


async def test_the_cli_manages_endpoints_and_refuses_what_it_must(
    merchant: MerchantCredentials, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(webhook_allow_private_targets=True)
    code, out, _ = admin(
        capsys,
        "add-webhook",
        merchant.merchant_id,
        "https://hooks.example.test/payments",
        "--events",
        "payment.captured,refund.succeeded",
        settings=settings,
    )
    assert code == 0, out
    (endpoint_id,) = ENDPOINT_LINE.findall(out)
    assert len(SECRET_LINE.findall(out)) == 1
    code, out, _ = admin(capsys, "list-webhooks", merchant.merchant_id, settings=settings)
    assert code == 0 and endpoint_id in out and "payment.captured,refund.succeeded" in out
    assert "whsec_" not in out

    code, _, err = admin(
        capsys,
        "add-webhook",
        merchant.merchant_id,
        "https://x.test/",
        "--events",
        "payment.paid",
        settings=settings,
    )
    assert code == cli.EXIT_REFUSED and "unknown event type(s) payment.paid" in err
    code, _, err = admin(capsys, "add-webhook", "nobody", "https://x.test/", settings=settings)
    assert code == cli.EXIT_REFUSED and "nobody" in err
    with pytest.raises(SystemExit) as usage:
        admin(
            capsys,
            "replay-webhooks",
            merchant.merchant_id,
            "--since",
            "yesterday",
            settings=settings,
        )
    assert usage.value.code == cli.EXIT_USAGE
    assert "not an instant" in capsys.readouterr().err

    code, out, _ = admin(capsys, "remove-webhook", endpoint_id, settings=settings)
    assert code == 0 and f"removed webhook {endpoint_id}" in out
    code, out, _ = admin(capsys, "list-webhooks", merchant.merchant_id, settings=settings)
    assert out.strip() == "no webhooks"
    code, _, err = admin(capsys, "remove-webhook", endpoint_id, settings=settings)
    assert code == cli.EXIT_REFUSED and "No webhook endpoint" in err


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.test/payments",  # HTTPS only
        "https://127.0.0.1/hooks",  # loopback
        "https://localhost:8443/hooks",  # a name for loopback
        "https://[::1]/hooks",
        "https://[::ffff:127.0.0.1]/hooks",  # loopback, mapped into IPv6
        "https://10.1.2.3/hooks",  # private
        "https://192.168.0.10/hooks",
        "https://169.254.169.254/latest/meta-data",  # cloud metadata (link-local)
        "https://100.100.100.200/",  # shared address space (a cloud's metadata too)
        "https://0.0.0.0/",
        "https://user:password@hooks.example.test/",  # credentials in the URL
        "ftp://hooks.example.test/",
    ],
)
def test_production_rules_refuse_internal_and_insecure_targets(
    merchant: MerchantCredentials, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    settings = make_settings(webhook_allow_private_targets=False)
    code, out, err = admin(capsys, "add-webhook", merchant.merchant_id, url, settings=settings)
    assert code == cli.EXIT_REFUSED, out
    assert "whsec_" not in out + err
    assert "password" not in err
    code, out, _ = admin(capsys, "list-webhooks", merchant.merchant_id, settings=settings)
    assert out.strip() == "no webhooks"


def test_production_refuses_to_turn_ssrf_protection_off() -> None:
    with pytest.raises(ValueError, match="WEBHOOK_ALLOW_PRIVATE_TARGETS"):
        make_settings(environment="production", webhook_allow_private_targets=True)


# -- two dispatchers, one killed ----------------------------------------------------------


class DispatcherProcess:
    """``payments-webhooks`` in a process of its own (killable)."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self._env = {**os.environ, **env}
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.dispatcher"],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode


@contextlib.contextmanager
def dispatcher_processes(env: dict[str, str], count: int) -> Iterator[list[DispatcherProcess]]:
    processes = [DispatcherProcess(env, f"dispatcher-{n}") for n in range(count)]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.stop()
            process.log_path.unlink(missing_ok=True)


async def test_two_dispatchers_one_killed_mid_batch_lose_nothing(
    merchant: MerchantCredentials, group: str, engine: AsyncEngine, add_webhook: AddWebhook
) -> None:
    settings = webhook_settings(group)
    receiver = Receiver(delay_s=0.2)  # slow: deliveries are in flight when the kill comes
    await receiver.start()
    issued = await add_webhook(settings, merchant.merchant_id, receiver.url)
    receiver.secrets = [issued.secret]
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": TEST_DATABASE_URL,
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "DD_TRACE_ENABLED": "false",
        "METRICS_ENABLED": "false",
        "WEBHOOK_CONSUMER_GROUP": group,
        "WEBHOOK_SESSION_TIMEOUT_S": "6",
        "WEBHOOK_POLL_INTERVAL_S": "0.1",
        "WEBHOOK_RETRY_FIRST_S": "0.2",
        "WEBHOOK_RETRY_MAX_INTERVAL_S": "1",
        "WEBHOOK_TIMEOUT_S": "2",
        "WEBHOOK_CONNECT_TIMEOUT_S": "0.5",
        "WEBHOOK_BATCH_SIZE": "10",
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    }
    try:
        with dispatcher_processes(env, 2) as (doomed, survivor):
            async with running_app(settings) as client:

                async def both_joined() -> bool:
                    return all("joined group" in p.log() for p in (doomed, survivor))

                await eventually(both_joined, timeout_s=60, what="both dispatchers in the group")
                paid = [await pay(client, merchant) for _ in range(40)]
                await eventually(
                    lambda: asyncio.sleep(0, len(receiver.ids()) >= 8),
                    timeout_s=30,
                    what="deliveries under way",
                )
                doomed.kill()
                killed_at = time.monotonic()
                committed = await outbox_event_ids(engine, merchant.merchant_id)
                assert len(committed) == len(paid)

                async def all_delivered() -> bool:
                    # The killed one's claims come free when their lease runs out: a POST
                    # it made just before dying is then sent again (at least once).
                    rows = await deliveries(engine)
                    return receiver.has_all(list(committed)) and all(
                        row["status"] == "delivered" for row in rows
                    )

                try:
                    await eventually(
                        all_delivered, timeout_s=60, what="every event delivered by the survivor"
                    )
                except AssertionError:
                    print(survivor.log()[-4000:])
                    raise
                recovered_s = time.monotonic() - killed_at
    finally:
        await receiver.stop()
    print(
        f"two dispatchers, one SIGKILLed: {len(committed)} events all delivered "
        f"{recovered_s:.1f} s after the kill, {receiver.duplicates()} duplicates"
    )
    assert receiver.ids() == set(committed)
    assert receiver.refused_signatures == 0
    stored = await deliveries(engine)
    assert len(stored) == len(committed)
    assert {row["status"] for row in stored} == {"delivered"}
    senders = {a["dispatcher"] for a in await attempts(engine)}
    assert len(senders) == 2  # both delivered some before the kill


# -- DNS rebinding ------------------------------------------------------------------------


async def test_a_name_that_resolves_to_an_internal_address_at_delivery_is_refused(
    receiver: Receiver,
) -> None:
    """Registered while its name looked public, it resolves to loopback at delivery time
    (DNS rebinding): the client's resolver refuses the connection."""

    class Rebinding(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return [
                {
                    "hostname": host,
                    "host": "127.0.0.1",
                    "port": port,
                    "family": socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            ]

        async def close(self) -> None:
            return None

    receiver.secrets = ["whsec_" + "A" * 32]
    url = f"http://merchant.example:{receiver.port}/hooks"
    guarded = HttpWebhookSender(
        rules=TargetRules(https_only=False, public_only=True), resolver=Rebinding()
    )
    open_ = HttpWebhookSender(
        rules=TargetRules(https_only=False, public_only=False), resolver=Rebinding()
    )
    try:
        kwargs: dict[str, Any] = {
            "url": url,
            "message_id": str(uuid.uuid4()),
            "body": b'{"event_type":"payment.captured","transaction_id":"txn_x"}',
            "secrets": receiver.secrets,
            "timestamp": datetime.now(UTC),
        }
        refused = await guarded.send(**kwargs)
        allowed = await open_.send(**kwargs)
    finally:
        await guarded.aclose()
        await open_.aclose()
    assert (refused.status_code, refused.error) == (None, "target_refused")
    assert (allowed.status_code, allowed.error) == (204, None)  # the same name, rules off
    assert len(receiver.deliveries) == 1


async def test_events_wait_while_an_endpoint_is_disabled_and_go_out_once_it_is_enabled(
    merchant: MerchantCredentials,
    group: str,
    receiver: Receiver,
    add_webhook: AddWebhook,
    engine: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = webhook_settings(group)
    issued = await add_webhook(settings, merchant.merchant_id, receiver.url)
    receiver.secrets = [issued.secret]
    endpoint_id = issued.endpoint.endpoint_id
    code, out, _ = await asyncio.to_thread(
        admin, capsys, "disable-webhook", endpoint_id, settings=settings
    )
    assert code == 0 and f"disabled webhook {endpoint_id}" in out
    async with running_dispatcher(settings), running_app(settings) as client:
        paid = [await pay(client, merchant) for _ in range(3)]

        async def recorded() -> bool:
            return len(await deliveries(engine)) == 3

        await eventually(recorded, what="three deliveries recorded for the disabled endpoint")
        await asyncio.sleep(1.0)  # it would have been sent by now, were it enabled
        assert receiver.deliveries == []
        code, out, _ = await asyncio.to_thread(
            admin, capsys, "enable-webhook", endpoint_id, settings=settings
        )
        assert code == 0, out
        await eventually(lambda: asyncio.sleep(0, len(receiver.deliveries) == 3), what="sent")
    assert {d.body["transaction_id"] for d in receiver.deliveries} == {
        p["transaction_id"] for p in paid
    }
    code, out, _ = await asyncio.to_thread(
        admin, capsys, "remove-webhook", endpoint_id, settings=settings
    )
    assert code == 0, out


async def test_a_slow_endpoint_holds_back_nobody_else(
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
    group: str,
    add_webhook: AddWebhook,
) -> None:
    """A merchant whose endpoint takes seconds to answer holds only its own deliveries'
    places: another merchant's deliveries, recorded meanwhile, go out at once."""
    settings = webhook_settings(group, webhook_timeout_s=8.0)
    other = await create_merchant(merchant_id="merchant_fast_hooks")
    slow, fast = Receiver(delay_s=5.0), Receiver()
    await slow.start()
    await fast.start()
    try:
        slow.secrets = [(await add_webhook(settings, merchant.merchant_id, slow.url)).secret]
        fast.secrets = [(await add_webhook(settings, other.merchant_id, fast.url)).secret]
        async with running_dispatcher(settings) as dispatcher, running_app(settings) as client:
            await pay(client, merchant)
            await eventually(
                lambda: asyncio.sleep(0, len(dispatcher.in_flight) == 1),
                what="the slow delivery in flight",
            )
            started = time.monotonic()
            for _ in range(5):
                await pay(client, other)
            await eventually(
                lambda: asyncio.sleep(0, len(fast.deliveries) == 5), what="the fast ones"
            )
            fast_s = time.monotonic() - started
            assert slow.deliveries == [], "the fast deliveries waited for the slow one"
            await eventually(
                lambda: asyncio.sleep(0, len(slow.deliveries) == 1), what="the slow one"
            )
    finally:
        await slow.stop()
        await fast.stop()
    print(f"five deliveries to a fast endpoint in {fast_s:.2f} s beside a 5 s one")
