"""Unknown bank answers end to end: 202 -> processing -> the bank's answer -> settled -> on
Kafka. Real MockServer (the bank, over HTTP), real Kafka, real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.api_calls import PROCESS, assert_problem, payment_url, refund_url
from tests.e2e.in_process_app import running_app
from tests.integration.test_outbox_relay import KAFKA, eventually, tail_topic
from tests.mockserver_bank import (
    clear_expectation,
    json_response,
    recorded_requests,
    register_authorization_status,
    register_expectation,
    register_refund_status,
)

pytestmark = [pytest.mark.mockserver, pytest.mark.kafka]

BANK_URL = os.environ.get("BANK_API_URL") or "http://127.0.0.1:1080"
TIMEOUT_CARD = "4000000000000903"  # MockServer approves it after 10 s
ERROR_CARD = "4000000000000119"  # MockServer answers 500


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bank_api_url": BANK_URL,
        "kafka_bootstrap_servers": KAFKA,
        "bank_timeout_s": 1.0,
        "bank_connect_timeout_s": 0.5,
        "bank_max_retries": 0,
        "bank_backoff_max_s": 0.1,
        "bank_breaker_fail_max": 100,
        "reconcile_first_delay_s": 0.5,
        "reconcile_interval_s": 0.2,
        "reconcile_max_interval_s": 1.0,
        "reconcile_no_record_after_s": 3.0,
        "reconcile_lease_s": 3.0,
    }
    return make_settings(**(values | overrides))


@pytest.fixture
async def mockserver() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=BANK_URL, timeout=5.0) as client:
        yield client


@pytest.fixture
async def expectations(mockserver: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    """Ids of expectations a test registers; all cleared at the end."""
    ids: list[str] = []
    yield ids
    for expectation_id in ids:
        await clear_expectation(mockserver, expectation_id)


async def pay(
    client: httpx.AsyncClient, merchant: MerchantCredentials, card: str, correlation_id: str
) -> httpx.Response:
    return await client.post(
        PROCESS,
        json=payment_body(merchant.merchant_id, card_number=card),
        headers={**merchant.headers, "X-Correlation-ID": correlation_id},
    )


async def status_becomes(
    client: httpx.AsyncClient, merchant: MerchantCredentials, transaction_id: str, status: str
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def settled() -> bool:
        seen.update(
            (await client.get(payment_url(transaction_id), headers=merchant.headers)).json()
        )
        return seen["status"] == status

    await eventually(settled, timeout_s=30, what=f"{transaction_id} {status}")
    return seen


async def bank_received(
    mockserver: httpx.AsyncClient, path: str, correlation_id: str
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def received() -> bool:
        found[:] = await recorded_requests(
            mockserver, method="POST", path_regex=path, correlation_id=correlation_id
        )
        return bool(found)

    await eventually(received, timeout_s=15, what=f"the bank received {path}")
    return found


def event_types(records: list[Any], transaction_id: str) -> list[str]:
    return [r.body["event_type"] for r in records if r.key == transaction_id]


async def test_a_timed_out_approval_answers_202_and_is_captured_from_the_banks_answer(
    merchant: MerchantCredentials,
    mockserver: httpx.AsyncClient,
    expectations: list[str],
) -> None:
    correlation_id = f"unknown-{uuid.uuid4().hex[:8]}"
    async with tail_topic() as tail, running_app(settings()) as client:
        response = await pay(client, merchant, TIMEOUT_CARD, correlation_id)

        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "processing"
        transaction_id = body["transaction_id"]
        (request,) = await bank_received(mockserver, "/v1/authorizations", correlation_id)
        assert request["body"]["json"]["transaction_id"] == transaction_id
        # The bank's own record says approved: the test gives MockServer that answer.
        expectations.append(
            await register_authorization_status(
                mockserver, transaction_id, approved=True, authorization_code="LATE903"
            )
        )

        settled = await status_becomes(client, merchant, transaction_id, "captured")

        assert settled["authorization_code"] == "LATE903"
        assert settled["refundable_amount"] == settled["amount"]
        await tail.read_until(
            lambda records: "payment.captured" in event_types(records, transaction_id),
            timeout_s=15,
        )
    assert event_types(tail.records, transaction_id)[:2] == [
        "payment.processing",
        "payment.captured",
    ]


async def test_an_error_the_bank_kept_no_record_of_ends_failed_with_bank_no_record(
    merchant: MerchantCredentials,
) -> None:
    correlation_id = f"norecord-{uuid.uuid4().hex[:8]}"
    async with tail_topic() as tail, running_app(settings()) as client:
        response = await pay(client, merchant, ERROR_CARD, correlation_id)
        assert response.status_code == 202, response.text
        transaction_id = response.json()["transaction_id"]

        settled = await status_becomes(client, merchant, transaction_id, "failed")

        assert settled["failure_code"] == "bank_no_record"
        await tail.read_until(
            lambda records: "payment.failed" in event_types(records, transaction_id), timeout_s=15
        )
    assert event_types(tail.records, transaction_id)[:2] == ["payment.processing", "payment.failed"]


async def test_a_refund_with_an_unknown_answer_stays_reserved_until_the_bank_says_succeeded(
    merchant: MerchantCredentials,
    mockserver: httpx.AsyncClient,
    expectations: list[str],
) -> None:
    async with tail_topic() as tail, running_app(settings()) as client:
        captured = await pay(client, merchant, "4242424242424242", f"cap-{uuid.uuid4().hex[:6]}")
        assert captured.status_code == 200, captured.text
        transaction_id = captured.json()["transaction_id"]
        expectations.append(
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
        response = await client.post(
            refund_url(transaction_id), json={"amount": "40.00"}, headers=merchant.headers
        )
        assert response.status_code == 202, response.text
        pending = response.json()
        assert pending["status"] == "pending"
        assert pending["refundable_amount"] == "59.99"  # 99.99 captured, 40.00 reserved
        too_much = await client.post(
            refund_url(transaction_id), json={"amount": "60.00"}, headers=merchant.headers
        )
        assert_problem(too_much, 409, "refund_exceeds_balance")

        expectations.append(
            await register_refund_status(mockserver, pending["refund_id"], succeeded=True)
        )
        settled = await status_becomes(client, merchant, transaction_id, "partially_refunded")

        assert settled["refunded_amount"] == "40.00"
        assert [r["status"] for r in settled["refunds"]] == ["succeeded"]
        await tail.read_until(
            lambda records: "refund.succeeded" in event_types(records, transaction_id),
            timeout_s=15,
        )
    assert event_types(tail.records, transaction_id) == [
        "payment.captured",
        "refund.pending",
        "refund.succeeded",
    ]


async def test_one_cards_errors_among_approvals_never_open_the_circuit_consecutive_ones_do(
    merchant: MerchantCredentials,
) -> None:
    async def circuit(client: httpx.AsyncClient) -> str:
        return str((await client.get("/health")).json()["checks"]["bank"]["circuit"])

    async with running_app(settings(bank_breaker_fail_max=3, reconciler_enabled=False)) as client:
        for _ in range(4):  # merchant A's error card, interleaved with good payments
            assert (await pay(client, merchant, ERROR_CARD, "a-err")).status_code == 202
            assert (await pay(client, merchant, "4242424242424242", "b-ok")).status_code == 200
        assert await circuit(client) == "closed"

        for _ in range(3):  # three unknown outcomes in a row: the bank looks unwell
            assert (await pay(client, merchant, ERROR_CARD, "a-err")).status_code == 202
        assert await circuit(client) == "open"

        refused = await pay(client, merchant, "4242424242424242", "b-refused")
        problem = assert_problem(refused, 503, "bank_unavailable")
        assert int(refused.headers["Retry-After"]) >= 1
        failed = await client.get(payment_url(problem["transaction_id"]), headers=merchant.headers)
        assert failed.json()["status"] == "failed"
        assert failed.json()["failure_code"] == "circuit_open"
