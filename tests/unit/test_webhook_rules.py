"""Webhook rules without I/O: retry schedule, targets, event types, signatures, secrets,
and how a Kafka record becomes an event (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.adapters.vault import VaultError
from app.adapters.webhooks.consumer import parse_event
from app.adapters.webhooks.sender import error_class, sign
from app.adapters.webhooks.targets import TargetRefusedError
from app.core.periodic import PeriodicTask
from app.domain.errors import ValidationFailed, WebhookTargetRefused
from app.domain.webhooks import (
    EVENT_TYPES,
    EndpointStatus,
    RetryPolicy,
    TargetRules,
    WebhookEndpoint,
    address_allowed,
    check_url_shape,
    parse_event_types,
)
from app.main import build_vault
from app.services.webhooks import generate_secret, secret_context
from tests.conftest import make_settings

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
PRODUCTION = TargetRules(https_only=True, public_only=True)
OPEN = TargetRules(https_only=False, public_only=False)


# -- retry schedule -----------------------------------------------------------------------


def test_the_pause_doubles_from_the_first_delay_up_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy(first_delay=timedelta(seconds=5), max_interval=timedelta(minutes=10))
    for attempts, base in ((1, 5), (2, 10), (3, 20), (4, 40), (8, 600), (60, 600)):
        for _ in range(50):
            pause = policy.delay_after(attempts).total_seconds()
            assert 0.75 * base <= pause <= 1.25 * base, (attempts, pause)


@given(attempts=st.integers(min_value=1, max_value=200), elapsed_s=st.floats(0, 4 * 86400))
def test_a_delivery_is_tried_until_the_windows_end_and_never_after(
    attempts: int, elapsed_s: float
) -> None:
    policy = RetryPolicy()
    now = T0 + timedelta(seconds=elapsed_s)
    at = policy.next_attempt(attempts=attempts, recorded_at=T0, now=now)
    if now >= T0 + policy.window:
        assert at is None
    else:
        assert at is not None and now < at <= T0 + policy.window


def test_the_default_schedule_spans_three_days_in_a_few_dozen_attempts() -> None:
    policy = RetryPolicy()
    now, attempts = T0, 0
    while (at := policy.next_attempt(attempts=attempts + 1, recorded_at=T0, now=now)) is not None:
        now, attempts = at, attempts + 1
    assert now == T0 + timedelta(days=3)  # the last attempt is at the window's end
    assert 15 <= attempts <= 30


# -- targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.100.100.200",
        "0.0.0.0",  # noqa: S104 - an address refused, not bound
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "ff02::1",
        "not an address",
    ],
)
def test_production_refuses_every_non_public_address(address: str) -> None:
    assert not address_allowed(address, PRODUCTION)
    assert address_allowed(address, OPEN)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(address, PRODUCTION)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/x", "HTTPS only"),
        ("ftp://hooks.example.com/x", "https://"),
        ("https:///x", "no host"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("https://hooks.example.com/#frag", "fragment"),
        ("https://hooks.example.com:99999/", "not valid"),
        ("https://hooks.example.com/" + "a" * 2100, "longer than"),
    ],
)
def test_url_shapes_that_never_receive_webhooks(url: str, reason: str) -> None:
    with pytest.raises(WebhookTargetRefused, match=reason) as refused:
        check_url_shape(url, PRODUCTION)
    assert "pw" not in str(refused.value)


def test_a_good_url_gives_its_host_and_port() -> None:
    assert check_url_shape("https://Hooks.Example.com/p?q=1", PRODUCTION) == (
        "hooks.example.com",
        443,
    )
    assert check_url_shape("http://127.0.0.1:8080/hooks", OPEN) == ("127.0.0.1", 8080)


def test_event_types_are_checked_and_empty_means_all() -> None:
    assert parse_event_types(["", " "]) == frozenset()
    assert parse_event_types(["payment.captured", " refund.failed "]) == {
        "payment.captured",
        "refund.failed",
    }
    with pytest.raises(ValidationFailed, match=r"payment\.paid"):
        parse_event_types(["payment.paid"])


def test_an_endpoint_wants_what_it_asked_for_and_signs_with_the_old_secret_during_grace() -> None:
    endpoint = WebhookEndpoint(
        endpoint_id="we_" + "0" * 32,
        merchant_id="m",
        url="https://x.example/",
        event_types=frozenset({"payment.captured"}),
        status=EndpointStatus.ENABLED,
        secret="new",
        created_at=T0,
        updated_at=T0,
        previous_secret="old",
        previous_secret_expires_at=T0 + timedelta(hours=1),
    )
    assert endpoint.wants("payment.captured") and not endpoint.wants("refund.failed")
    every = dataclasses.replace(endpoint, event_types=frozenset())
    assert all(every.wants(event_type) for event_type in EVENT_TYPES)
    assert endpoint.signing_secrets(T0) == ["new", "old"]
    assert endpoint.signing_secrets(T0 + timedelta(hours=2)) == ["new"]


# -- signatures and secrets ---------------------------------------------------------------


def test_every_secret_signs_and_a_receiver_with_any_one_of_them_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    body = json.dumps({"event_id": "e", "amount": "9.99"}).encode()
    now = datetime.now(UTC)
    header = sign(message_id="evt_1", timestamp=now, body=body, secrets=[new, old])
    assert len(header.split(" ")) == 2
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": header,
    }
    for secret in (old, new):
        Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body + b" ", headers)  # the body as sent, byte for byte


def test_a_generated_secret_has_the_standard_shape_and_is_fresh() -> None:
    secrets = {generate_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("whsec_") and len(s) == 6 + 32 for s in secrets)


def test_a_sealed_secret_opens_only_for_its_endpoint_and_is_never_a_card_token() -> None:
    vault = build_vault(make_settings())
    secret = generate_secret()
    sealed = vault.seal(secret, associated_data=secret_context("we_a"))
    assert secret not in sealed and sealed.startswith("v1.")
    assert vault.unseal(sealed, associated_data=secret_context("we_a")) == secret
    with pytest.raises(VaultError):
        vault.unseal(sealed, associated_data=secret_context("we_b"))
    card_token = vault.encrypt("4242424242424242", associated_data=b"we_a")
    with pytest.raises(VaultError):
        vault.unseal(card_token, associated_data=b"we_a")


def test_error_classes_never_carry_a_message() -> None:
    assert error_class(TimeoutError()) == "timeout"
    assert error_class(TargetRefusedError("secret-host resolves inside")) == "target_refused"
    assert error_class(WebhookTargetRefused("nope")) == "target_refused"
    assert error_class(ValueError("whsec_abc")) == "unexpected_error"


# -- records from the topic ---------------------------------------------------------------


def record(value: bytes, headers: list[tuple[str, bytes]] | None = None) -> ConsumerRecord:  # type: ignore[type-arg]
    return ConsumerRecord(
        topic="payments.events",
        partition=1,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=b"txn_1",
        value=value,
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=len(value),
        headers=headers or [],
    )


def test_a_record_becomes_an_event_with_its_trace_headers_only() -> None:
    event_id = uuid.uuid4()
    body = {
        "event_id": str(event_id),
        "event_type": "payment.captured",
        "event_version": 1,
        "occurred_at": "2026-12-04T12:00:00.123Z",
        "transaction_id": "txn_1",
        "merchant_id": "m1",
        "correlation_id": "c",
        "data": {"amount": "1.00"},
    }
    event = parse_event(
        record(
            json.dumps(body).encode(),
            [
                ("event_type", b"payment.captured"),
                ("x-datadog-trace-id", b"123"),
                ("x-datadog-parent-id", b"456"),
            ],
        )
    )
    assert event is not None
    assert (event.event_id, event.merchant_id, event.transaction_id) == (event_id, "m1", "txn_1")
    assert event.occurred_at == datetime(2026, 12, 4, 12, 0, 0, 123000, tzinfo=UTC)
    assert event.body == body
    assert event.trace_context == {"x-datadog-trace-id": "123", "x-datadog-parent-id": "456"}


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"[]",
        b'{"event_id": "x"}',
        json.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "event_type": "payment.captured",
                "occurred_at": "2026-12-04T12:00:00",  # no offset
                "transaction_id": "t",
                "merchant_id": "m",
            }
        ).encode(),
    ],
)
def test_a_record_that_is_not_an_event_is_skipped(value: bytes) -> None:
    assert parse_event(record(value)) is None


# -- the sender loop's wake-up ------------------------------------------------------------


async def test_a_woken_periodic_task_runs_at_once_instead_of_after_its_pause() -> None:
    runs: list[float] = []
    first_run = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def job() -> bool:
        runs.append(loop.time())
        first_run.set()
        return False

    task = PeriodicTask("test", job, interval_s=30.0)
    task.start()
    try:
        await asyncio.wait_for(first_run.wait(), 5)
        task.wake()
        for _ in range(100):
            if len(runs) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await task.stop()
    assert len(runs) == 2 and runs[1] - runs[0] < 1.0


def test_a_dispatcher_has_a_connection_for_every_post_in_flight() -> None:
    assert make_settings().webhook_max_connections >= make_settings().webhook_max_in_flight
    with pytest.raises(ValueError, match="WEBHOOK_MAX_CONNECTIONS"):
        make_settings(webhook_max_in_flight=300, webhook_max_connections=100)
