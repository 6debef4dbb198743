"""Capture, void and expiry against the bank over HTTP: every answer the bank can give
(done, refused, certainly not received, unknown) and how the reconciler settles the
unknown ones from the bank's lookups. Real MockServer, real Kafka, real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import MerchantCredentials, payment_body
from tests.e2e.api_calls import PROCESS, assert_problem, payment_url
from tests.e2e.in_process_app import closed_port, running_app
from tests.e2e.test_reconciliation import (
    bank_received,
    event_types,
    expectations,
    mockserver,
    settings,
    status_becomes,
)
from tests.integration.test_outbox_relay import eventually, tail_topic
from tests.mockserver_bank import json_response, register_expectation, register_operation_status

pytestmark = [pytest.mark.mockserver, pytest.mark.kafka]

__all__ = ["expectations", "mockserver"]  # fixtures shared with test_reconciliation


async def authorize(
    client: httpx.AsyncClient, merchant: MerchantCredentials, correlation_id: str
) -> str:
    response = await client.post(
        PROCESS,
        json=payment_body(merchant.merchant_id, amount="100.00", capture_method="manual"),
        headers={**merchant.headers, "X-Correlation-ID": correlation_id},
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "authorized"
    return str(response.json()["transaction_id"])


async def operate(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    transaction_id: str,
    action: str,
    correlation_id: str,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    return await client.post(
        f"{payment_url(transaction_id)}/{action}",
        json=body or {},
        headers={**merchant.headers, "X-Correlation-ID": correlation_id},
    )


async def answer_operations_with(
    mockserver: httpx.AsyncClient,
    expectations: list[str],
    kind: str,
    transaction_id: str,
    action: dict[str, Any],
) -> None:
    """Make the bank answer ``POST /v1/{kind}s`` for this payment with ``action``."""
    expectations.append(
        await register_expectation(
            mockserver,
            http_request={
                "method": "POST",
                "path": f"/v1/{kind}s",
                "body": {"type": "JSON", "json": {"transaction_id": transaction_id}},
            },
            action=action,
            kind=f"{kind}-answer",
            reference=transaction_id,
        )
    )


async def pending_operation(engine: AsyncEngine, transaction_id: str) -> tuple[Any, ...]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT status, pending_operation, pending_operation_id FROM transactions"
                    " WHERE transaction_id = :id"
                ),
                {"id": transaction_id},
            )
        ).one()
    return tuple(row)


async def test_a_capture_and_a_void_reach_the_bank_with_their_ids_and_settle_on_kafka(
    merchant: MerchantCredentials, mockserver: httpx.AsyncClient
) -> None:
    correlation_id = f"capvoid-{uuid.uuid4().hex[:8]}"
    async with tail_topic() as tail, running_app(settings()) as client:
        captured = await authorize(client, merchant, correlation_id)
        voided = await authorize(client, merchant, correlation_id)

        capture = await operate(
            client, merchant, captured, "capture", correlation_id, {"amount": "60.00"}
        )
        void = await operate(client, merchant, voided, "void", correlation_id)

        assert capture.status_code == 200, capture.text
        assert capture.json()["status"] == "captured"
        assert capture.json()["captured_amount"] == "60.00"
        assert void.status_code == 200, void.text
        assert void.json()["status"] == "voided"
        (sent_capture,) = await bank_received(mockserver, "/v1/captures", correlation_id)
        assert sent_capture["body"]["json"]["transaction_id"] == captured
        assert sent_capture["body"]["json"]["amount_minor"] == 6000
        assert sent_capture["body"]["json"]["currency"] == "USD"
        capture_id = sent_capture["body"]["json"]["capture_id"]
        assert capture_id.startswith("cap_")
        assert sent_capture["headers"]["idempotency-key"] == [capture_id]
        (sent_void,) = await bank_received(mockserver, "/v1/voids", correlation_id)
        assert sent_void["body"]["json"]["transaction_id"] == voided
        assert sent_void["body"]["json"]["void_id"].startswith("void_")
        await tail.read_until(
            lambda records: (
                "payment.voided" in event_types(records, voided)
                and "payment.captured" in event_types(records, captured)
            ),
            timeout_s=15,
        )
    assert event_types(tail.records, captured) == ["payment.authorized", "payment.captured"]
    assert event_types(tail.records, voided) == ["payment.authorized", "payment.voided"]
    (event,) = [r.body for r in tail.records if r.body["event_type"] == "payment.captured"]
    assert event["data"]["captured_amount"] == "60.00"


async def test_a_capture_the_bank_refuses_leaves_the_payment_authorized(
    merchant: MerchantCredentials, mockserver: httpx.AsyncClient, expectations: list[str]
) -> None:
    async with running_app(settings()) as client:
        transaction_id = await authorize(client, merchant, "refused")
        await answer_operations_with(
            mockserver,
            expectations,
            "capture",
            transaction_id,
            json_response(200, {"status": "failed", "failure_code": "authorization_expired"}),
        )

        response = await operate(client, merchant, transaction_id, "capture", "refused")

        assert response.status_code == 200, response.text
        assert response.json()["status"] == "authorized"
        assert response.json()["captured_amount"] == "0.00"
        # Nothing is pending: the merchant may void it.
        void = await operate(client, merchant, transaction_id, "void", "refused")
        assert void.status_code == 200, void.text
        assert void.json()["status"] == "voided"


async def test_a_bank_that_certainly_did_not_receive_the_capture_is_a_503_and_changes_nothing(
    merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    async with running_app(settings()) as client:
        transaction_id = await authorize(client, merchant, "down")
    unreachable = settings(bank_api_url=f"http://127.0.0.1:{closed_port()}")
    async with running_app(unreachable) as client:
        response = await operate(client, merchant, transaction_id, "capture", "down")

        problem = assert_problem(response, 503, "bank_unavailable")
        assert problem["transaction_id"] == transaction_id
        assert response.headers["Retry-After"]
    assert await pending_operation(engine, transaction_id) == ("authorized", None, None)
    async with running_app(settings()) as client:
        again = await operate(client, merchant, transaction_id, "capture", "down")
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "captured"


@pytest.mark.parametrize("kind", ["capture", "void"])
async def test_an_unknown_answer_is_a_202_and_the_reconciler_settles_it_from_the_lookup(
    merchant: MerchantCredentials,
    mockserver: httpx.AsyncClient,
    expectations: list[str],
    engine: AsyncEngine,
    kind: str,
) -> None:
    correlation_id = f"unknown-{kind}-{uuid.uuid4().hex[:8]}"
    async with tail_topic() as tail, running_app(settings()) as client:
        transaction_id = await authorize(client, merchant, correlation_id)
        await answer_operations_with(
            mockserver, expectations, kind, transaction_id, json_response(503, {"error": "busy"})
        )

        response = await operate(client, merchant, transaction_id, kind, correlation_id)

        assert response.status_code == 202, response.text
        assert response.json()["status"] == "authorized"
        status, pending, operation_id = await pending_operation(engine, transaction_id)
        assert (status, pending) == ("authorized", kind)
        # Another capture or void waits for this one to settle.
        for other in ("capture", "void"):
            assert_problem(
                await operate(client, merchant, transaction_id, other, correlation_id),
                409,
                {"capture": "payment_not_capturable", "void": "payment_not_voidable"}[other],
            )
        (sent,) = await bank_received(mockserver, f"/v1/{kind}s", correlation_id)
        assert sent["body"]["json"][f"{kind}_id"] == operation_id
        expectations.append(
            await register_operation_status(mockserver, kind, operation_id, succeeded=True)
        )

        done = "captured" if kind == "capture" else "voided"
        settled = await status_becomes(client, merchant, transaction_id, done)

        assert settled["captured_amount"] == ("100.00" if kind == "capture" else "0.00")
        await tail.read_until(
            lambda records: f"payment.{done}" in event_types(records, transaction_id),
            timeout_s=15,
        )
    assert await pending_operation(engine, transaction_id) == (done, None, None)
    assert event_types(tail.records, transaction_id) == ["payment.authorized", f"payment.{done}"]


async def test_a_capture_the_bank_has_no_record_of_did_not_happen(
    merchant: MerchantCredentials,
    mockserver: httpx.AsyncClient,
    expectations: list[str],
    engine: AsyncEngine,
) -> None:
    async with running_app(settings()) as client:
        transaction_id = await authorize(client, merchant, "lost")
        await answer_operations_with(
            mockserver,
            expectations,
            "capture",
            transaction_id,
            {"httpError": {"dropConnection": True}},
        )
        response = await operate(client, merchant, transaction_id, "capture", "lost")
        assert response.status_code == 202, response.text

        async def free_again() -> bool:
            return await pending_operation(engine, transaction_id) == ("authorized", None, None)

        # The default lookup answers "no record": after RECONCILE_NO_RECORD_AFTER_S (3 s
        # here) the capture is settled as not done, and the authorization is free again.
        await eventually(free_again, timeout_s=30, what="the lost capture settled as not done")
        for expectation_id in expectations:
            await mockserver.put(
                "/mockserver/clear", params={"type": "EXPECTATIONS"}, json={"id": expectation_id}
            )
        expectations.clear()
        again = await operate(client, merchant, transaction_id, "capture", "lost")
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "captured"
    async with engine.connect() as conn:
        audit = (
            await conn.execute(
                text(
                    "SELECT action, outcome, actor, details->>'failure_code' AS code"
                    " FROM audit_log WHERE resource_id = :id AND action LIKE 'payment.capture%'"
                    " ORDER BY id"
                ),
                {"id": transaction_id},
            )
        ).all()
    assert [tuple(row) for row in audit] == [
        ("payment.capture", "pending", f"merchant:{merchant.merchant_id}", None),
        ("payment.capture.settle", "pending", f"merchant:{merchant.merchant_id}", None),
        ("payment.capture.settle", "failure", "reconciler", "bank_no_record"),
        ("payment.capture", "pending", f"merchant:{merchant.merchant_id}", None),
        ("payment.capture.settle", "success", f"merchant:{merchant.merchant_id}", None),
    ]


async def test_an_expiry_whose_void_gets_no_answer_is_sent_again_until_it_expires(
    merchant: MerchantCredentials,
    mockserver: httpx.AsyncClient,
    expectations: list[str],
    engine: AsyncEngine,
) -> None:
    async with running_app(settings(reconciler_enabled=False)) as client:
        transaction_id = await authorize(client, merchant, "expiry")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE transactions SET created_at = created_at - interval '8 days'"
                " WHERE transaction_id = :id"
            ),
            {"id": transaction_id},
        )
    expectations.append(
        await register_expectation(
            mockserver,
            http_request={
                "method": "POST",
                "path": "/v1/voids",
                "body": {"type": "JSON", "json": {"transaction_id": transaction_id}},
            },
            action=json_response(500, {"error": "try later"}),
            kind="void-5xx",
            reference=transaction_id,
            times=2,
        )
    )
    # AUTHORIZATION_TTL_S at its default (7 days): the reconciler of a fresh app expires it.
    async with tail_topic() as tail, running_app(settings()):

        async def expired() -> bool:
            return (await pending_operation(engine, transaction_id))[0] == "expired"

        await eventually(expired, timeout_s=30, what="the authorization expired")
        await tail.read_until(
            lambda records: "payment.expired" in event_types(records, transaction_id),
            timeout_s=15,
        )
    voids = await mockserver.put(
        "/mockserver/retrieve",
        params={"type": "REQUESTS", "format": "JSON"},
        json={"method": "POST", "path": "/v1/voids"},
    )
    sent = [r for r in voids.json() if r["body"]["json"]["transaction_id"] == transaction_id]
    assert len(sent) == 3  # two 500s, then the bank's answer
    assert {r["body"]["json"]["void_id"] for r in sent} == {f"exp_{transaction_id[4:]}"}
    assert event_types(tail.records, transaction_id) == ["payment.expired"]
