"""Every error is problem+json with a stable code (docs/api.md, "Errors"), through the real app."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.openapi import problem_examples
from app.api.routes import payments as payment_routes
from app.core.config import Settings
from app.core.logging import build_handler
from app.domain.errors import ERROR_CODES, BankUnavailable
from app.services import merchants
from app.services import payments as payment_services
from app.services import refunds as refund_services
from app.services.context import ServiceContext
from app.services.idempotency import Claim
from app.services.ports import (
    AuthorizationRequest,
    AuthorizationResult,
    BankGateway,
    BankRefundRequest,
    RefundResult,
)
from app.services.reconciliation import reconcile_once
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.api_calls import PROCESS, assert_problem, pay, payment_url, refund, refund_url
from tests.e2e.in_process_app import running_app

MAX_BODY = 64 * 1024

# docs/api.md, "Errors": the status each code is answered with.
STATUS_BY_CODE = {
    "malformed_json": 400,
    "unauthorized": 401,
    "merchant_mismatch": 403,
    "merchant_inactive": 403,
    "payment_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "payment_not_refundable": 409,
    "refund_exceeds_balance": 409,
    "payment_not_capturable": 409,
    "payment_not_voidable": 409,
    "idempotency_in_progress": 409,
    "payload_too_large": 413,
    "validation_error": 422,
    "currency_not_supported": 422,
    "idempotency_key_reused": 422,
    "internal_error": 500,
    "bank_unavailable": 503,
    "service_unavailable": 503,
}
# Codes of the admin CLI and of state-machine guards no API request can reach.
NOT_FROM_THE_API = {
    "merchant_not_found",
    "api_key_not_found",
    "invalid_transition",
    "webhook_endpoint_not_found",  # payments-admin only
    "webhook_target_refused",
}


async def count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(sql)) or 0)


UNREACHABLE_DATABASE = "postgresql+asyncpg://payments@127.0.0.1:9/payments"
"""Nothing listens on port 9 (discard): connecting is refused at once."""


class UnreachableBank:
    """A bank nobody can connect to: nothing it is asked ever reaches it."""

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        raise BankUnavailable(failure_code="bank_unreachable")

    async def aclose(self) -> None:
        return None

    circuit_state = "closed"


class CountingBank:
    """The app's bank, counting what it is asked."""

    def __init__(self, bank: BankGateway) -> None:
        self._bank = bank
        self.authorizations = 0
        self.refunds = 0

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        self.authorizations += 1
        return await self._bank.authorize(request)

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        self.refunds += 1
        return await self._bank.refund(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)


def counting_bank(client: httpx.AsyncClient) -> CountingBank:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    bank = CountingBank(runtime.services.bank)
    runtime.services = dataclasses.replace(runtime.services, bank=bank)
    return bank


class GatedBank:
    """The simulator, holding authorizations until the test opens the gate."""

    def __init__(self, bank: BankGateway) -> None:
        self._bank = bank
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        self.entered.set()
        await self.gate.wait()
        return await self._bank.authorize(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)


@dataclasses.dataclass
class Scene:
    """What a request producing an error needs."""

    client: httpx.AsyncClient
    merchant: MerchantCredentials
    create_merchant: Callable[..., Any]
    ctx: ServiceContext
    monkeypatch: pytest.MonkeyPatch

    async def captured(self, amount: str = "10.00") -> str:
        response = await pay(self.client, self.merchant, amount=amount)
        assert response.status_code == 200, response.text
        transaction_id: str = response.json()["transaction_id"]
        return transaction_id


async def produce(code: str, s: Scene) -> httpx.Response:
    """Make the API answer with ``code``, the way a client would run into it."""
    client, merchant = s.client, s.merchant
    match code:
        case "malformed_json":
            return await client.post(
                PROCESS,
                content=b'{"amount": ',
                headers={**merchant.headers, "Content-Type": "application/json"},
            )
        case "unauthorized":
            return await client.get(payment_url("txn_00000000000000000000000000000abc"))
        case "merchant_mismatch":
            return await pay(client, merchant, merchant_id="merchant_somebody_else")
        case "merchant_inactive":
            other: MerchantCredentials = await s.create_merchant()
            await merchants.disable_merchant(s.ctx, merchant_id=other.merchant_id)
            return await pay(client, other, merchant_id=other.merchant_id)
        case "payment_not_found":
            return await client.get(payment_url("txn_unknown"), headers=merchant.headers)
        case "not_found":
            return await client.get("/api/v1/nothing-here")
        case "method_not_allowed":
            return await client.put(PROCESS, json={}, headers=merchant.headers)
        case "payment_not_refundable":
            declined = await pay(client, merchant, card_number="4000000000000002")
            return await refund(client, merchant, declined.json()["transaction_id"])
        case "refund_exceeds_balance":
            return await refund(client, merchant, await s.captured("10.00"), "10.01")
        case "payment_not_capturable":
            captured = await s.captured("10.00")
            return await client.post(f"{payment_url(captured)}/capture", headers=merchant.headers)
        case "payment_not_voidable":
            captured = await s.captured("10.00")
            return await client.post(f"{payment_url(captured)}/void", headers=merchant.headers)
        case "idempotency_in_progress":
            runtime = client.app.state.runtime  # type: ignore[attr-defined]
            bank = GatedBank(runtime.services.bank)
            runtime.services = dataclasses.replace(runtime.services, bank=bank)
            first = asyncio.create_task(pay(client, merchant, key="in-progress"))
            await asyncio.wait_for(bank.entered.wait(), timeout=5)
            response = await pay(client, merchant, key="in-progress")
            bank.gate.set()
            await first
            return response
        case "payload_too_large":
            return await client.post(
                PROCESS,
                content=b" " * (MAX_BODY + 1),
                headers={**merchant.headers, "Content-Type": "application/json"},
            )
        case "validation_error":
            return await pay(client, merchant, amount="-1")
        case "currency_not_supported":
            return await pay(client, merchant, currency="GBP")
        case "idempotency_key_reused":
            await pay(client, merchant, key="reused", amount="1.00")
            return await pay(client, merchant, key="reused", amount="2.00")
        case "internal_error":

            async def broken(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("simulated defect")

            s.monkeypatch.setattr(payment_routes, "get_payment", broken)
            return await client.get(
                payment_url("txn_00000000000000000000000000000abc"), headers=merchant.headers
            )
        case "bank_unavailable":
            runtime = client.app.state.runtime  # type: ignore[attr-defined]
            runtime.services = dataclasses.replace(runtime.services, bank=UnreachableBank())
            return await pay(client, merchant)
        case "service_unavailable":
            settings = make_settings(database_url=UNREACHABLE_DATABASE, cache_ttl_s=0)
            async with running_app(settings) as down:
                return await pay(down, merchant)
    raise AssertionError(f"no request produces {code}")


def test_every_error_code_is_produced_by_some_request_or_unreachable_from_the_api() -> None:
    assert set(STATUS_BY_CODE) | NOT_FROM_THE_API == ERROR_CODES
    assert not set(STATUS_BY_CODE) & NOT_FROM_THE_API


@pytest.mark.parametrize("code", sorted(STATUS_BY_CODE))
async def test_the_api_answers_each_error_code_as_a_complete_problem(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
    ctx: ServiceContext,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
) -> None:
    scene = Scene(client, merchant, create_merchant, ctx, monkeypatch)

    response = await produce(code, scene)

    assert_problem(response, STATUS_BY_CODE[code], code)


@pytest.mark.parametrize("code", sorted(STATUS_BY_CODE))
async def test_the_documented_example_of_each_code_is_shaped_like_its_real_answer(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
    ctx: ServiceContext,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
) -> None:
    example = problem_examples()[code]["value"]
    scene = Scene(client, merchant, create_merchant, ctx, monkeypatch)

    response = await produce(code, scene)

    body = response.json()
    assert {k: type(v) for k, v in body.items()} == {k: type(v) for k, v in example.items()}
    assert (body["title"], body["status"]) == (example["title"], example["status"])
    headers = {name.lower() for name in response.headers}
    assert ("www-authenticate" in headers) == (response.status_code == 401)
    assert ("retry-after" in headers) == (response.status_code == 503)


# --- 400 / 404 / 405 / 413 --------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b'{"amount": ', b"not json", b'{"a": 1}{', b'{"amount": NaN}', b"\xff\xfe", b"{'a': 1}"],
    ids=["truncated", "text", "two-documents", "nan", "not-utf8", "single-quotes"],
)
async def test_malformed_json_is_a_400(
    client: httpx.AsyncClient, merchant: MerchantCredentials, content: bytes
) -> None:
    headers = {**merchant.headers, "Content-Type": "application/json"}

    payment = await client.post(PROCESS, content=content, headers=headers)
    refund = await client.post(
        refund_url("txn_00000000000000000000000000000abc"), content=content, headers=headers
    )

    assert_problem(payment, 400, "malformed_json")
    assert_problem(refund, 400, "malformed_json")


@pytest.mark.parametrize(
    "content", [b'{"amount": ', b"not json", b"\xff\xfe"], ids=["truncated", "text", "not-utf8"]
)
async def test_malformed_json_sent_to_void_with_an_idempotency_key_is_a_400(
    client: httpx.AsyncClient, merchant: MerchantCredentials, content: bytes
) -> None:
    """Void takes no body, but its Idempotency-Key covers whatever body is sent: one that is
    not JSON is refused like on every other POST, and nothing is voided."""
    authorized = await pay(client, merchant, capture_method="manual")
    transaction_id = authorized.json()["transaction_id"]

    response = await client.post(
        f"{payment_url(transaction_id)}/void",
        content=content,
        headers={**merchant.headers, "Content-Type": "application/json", "Idempotency-Key": "v1"},
    )

    assert_problem(response, 400, "malformed_json")
    payment = await client.get(payment_url(transaction_id), headers=merchant.headers)
    assert payment.json()["status"] == "authorized"


async def test_a_body_over_64_kib_is_refused(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    response = await pay(client, merchant, description="x" * (MAX_BODY + 1))

    body = assert_problem(response, 413, "payload_too_large")
    assert "x" * 100 not in response.text
    assert body["detail"]
    assert await count(engine, "SELECT count(*) FROM transactions") == 0


async def test_a_streamed_body_over_64_kib_is_refused_without_content_length(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 4096

    response = await client.post(
        PROCESS,
        content=chunks(),
        headers={**merchant.headers, "Content-Type": "application/json"},
    )

    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_problem(response, 413, "payload_too_large")


async def test_a_body_just_under_the_limit_is_accepted(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    body = json.dumps(payment_body(merchant.merchant_id)).encode()
    padded = body + b" " * (MAX_BODY - len(body))

    response = await client.post(
        PROCESS, content=padded, headers={**merchant.headers, "Content-Type": "application/json"}
    )

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/nowhere", "/api/v1/refunds", "/api/v1/payments/a/b/c"])
async def test_unknown_routes_are_a_404_problem(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", PROCESS),
        ("DELETE", payment_url("txn_00000000000000000000000000000abc")),
        ("GET", refund_url("txn_00000000000000000000000000000abc")),
    ],
)
async def test_wrong_methods_are_a_405_problem(
    client: httpx.AsyncClient, merchant: MerchantCredentials, method: str, path: str
) -> None:
    response = await client.request(method, path, headers=merchant.headers)

    assert_problem(response, 405, "method_not_allowed")
    assert response.headers.get("Allow")


# --- 500 --------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Any:
    """The service's JSON log lines, as its stdout handler would write them."""
    stream = io.StringIO()
    handler = build_handler(Settings(_env_file=None, environment="test"), stream=stream)  # type: ignore[call-arg]
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


LEAKY_MESSAGE = (
    "INSERT INTO transactions (card_number) VALUES ('4242424242424242') -- password=hunter2"
)


def assert_nothing_internal(response: httpx.Response) -> None:
    for secret in ("INSERT", "hunter2", "4242424242424242", "Traceback", "RuntimeError", ".py"):
        assert secret not in response.text


async def test_an_unexpected_failure_before_the_bank_is_a_500_that_keeps_nothing(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    json_log: io.StringIO,
) -> None:
    bank = counting_bank(client)
    stage = Claim.stage

    def stage_then_fail(self: Claim, ctx: Any, uow: Any, **kwargs: Any) -> None:
        stage(self, ctx, uow, **kwargs)

        async def flush_then_fail() -> None:
            await uow.flush()  # the record's rows are in the database, not committed
            raise RuntimeError(LEAKY_MESSAGE)

        uow.commit = flush_then_fail  # this unit of work only

    monkeypatch.setattr(Claim, "stage", stage_then_fail)
    correlation_id = f"defect-{uuid.uuid4().hex[:8]}"

    response = await pay(
        client, merchant, key="defect-1", headers={"X-Correlation-ID": correlation_id}
    )

    problem = assert_problem(response, 500, "internal_error")
    assert problem["correlation_id"] == correlation_id
    assert_nothing_internal(response)
    assert bank.authorizations == 0, "the bank was asked although nothing was recorded"
    for table in ("transactions", "outbox_events", "refunds", "idempotency_keys"):
        assert await count(engine, f"SELECT count(*) FROM {table}") == 0, table
    assert (
        await count(engine, "SELECT count(*) FROM audit_log WHERE action = 'payment.process'") == 0
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert errors, "the failure was not logged with its traceback"
    logged = [line for line in log_lines(json_log) if line["level"] == "ERROR"]
    assert any(line["correlation_id"] == correlation_id for line in logged), logged


async def test_an_outcome_that_cannot_be_written_answers_202_and_the_reconciler_settles_it(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bank = counting_bank(client)

    async def database_lost(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionResetError("simulated: the database went away after the bank")

    monkeypatch.setattr(payment_services, "settle_payment", database_lost)
    response = await pay(client, merchant, key="lost-outcome")
    monkeypatch.undo()

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "processing"
    assert bank.authorizations == 1  # the bank approved it: the record must not be lost
    assert await count(engine, "SELECT count(*) FROM transactions WHERE status = 'processing'") == 1
    assert any("could not be recorded" in r.getMessage() for r in caplog.records)

    # The reconciler's next round (its first lookup is due RECONCILE_FIRST_DELAY_S later).
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    later = datetime.now(UTC) + runtime.services.reconcile.first_delay + timedelta(seconds=1)
    report = await reconcile_once(dataclasses.replace(runtime.services, clock=lambda: later))
    assert report.settled == {("payment", "captured"): 1}
    settled = await client.get(payment_url(body["transaction_id"]), headers=merchant.headers)
    assert settled.json()["status"] == "captured"
    # The key's first request stopped before storing an answer: a retry gets the outcome.
    retried = await pay(client, merchant, key="lost-outcome")
    assert retried.status_code == 409  # still within its lock: the first request may be running


async def test_an_unexpected_failure_before_a_refund_reaches_the_bank_changes_no_balance(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    txn = (await pay(client, merchant, amount="50.00")).json()["transaction_id"]
    bank = counting_bank(client)
    audit = refund_services.refund_audit

    def broken_reservation(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("action") == "refund.create":
            raise RuntimeError(LEAKY_MESSAGE)
        return audit(*args, **kwargs)

    monkeypatch.setattr(refund_services, "refund_audit", broken_reservation)

    response = await refund(client, merchant, txn, "20.00")

    assert_problem(response, 500, "internal_error")
    assert_nothing_internal(response)
    monkeypatch.undo()
    assert bank.refunds == 0
    payment = (await client.get(payment_url(txn), headers=merchant.headers)).json()
    assert payment["status"] == "captured"
    assert payment["refunded_amount"] == "0.00"
    assert payment["refundable_amount"] == "50.00"  # nothing stays reserved
    assert payment["refunds"] == []
    assert await count(engine, "SELECT count(*) FROM refunds") == 0
    assert await count(engine, "SELECT count(*) FROM outbox_events") == 1  # the capture's only


async def test_a_500_without_a_correlation_id_still_carries_a_fresh_one(
    client: httpx.AsyncClient, merchant: MerchantCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(LEAKY_MESSAGE)

    monkeypatch.setattr(payment_routes, "get_payment", broken)

    response = await client.get(
        payment_url("txn_00000000000000000000000000000abc"), headers=merchant.headers
    )

    problem = assert_problem(response, 500, "internal_error")
    assert uuid.UUID(problem["correlation_id"])
    assert_nothing_internal(response)
