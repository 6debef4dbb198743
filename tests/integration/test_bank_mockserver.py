"""The real HTTP bank gateway against MockServer, which simulates the bank from the one table.

Needs MockServer from the local stack (``bash scripts/stack.sh up mockserver``) at
``BANK_API_URL`` (default ``http://127.0.0.1:1080``), loaded with
``deploy/mockserver/expectations.json``. Temporary expectations added here (through
``tests/mockserver_bank.py``) have unique ids and a high priority and are removed by id
afterwards, so other tests always see the committed file; nothing here resets MockServer.

What the real transport (httpx-aiohttp over aiohttp) raises for each way a call can fail
is pinned here, against MockServer and local sockets, not assumed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from app.adapters.bank.http import HttpBankGateway, _classify_transport_error
from app.domain.cards import (
    DECLINE_MESSAGES,
    TEST_CARDS,
    BankBehaviour,
    TestCard,
    luhn_check_digit,
)
from app.domain.errors import BankUnavailable
from app.services.ports.bank import (
    AuthorizationRequest,
    AuthorizationResult,
    BankAnswerUnknown,
    RefundResult,
)
from app.services.ports.bank import BankRefundRequest as RefundRequest
from tests.mockserver_bank import (
    clear_expectation,
    json_response,
    recorded_requests,
    register_authorization_status,
    register_expectation,
    register_lookup,
    register_refund_status,
)

pytestmark = pytest.mark.mockserver

BANK_URL = os.environ.get("BANK_API_URL") or "http://127.0.0.1:1080"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> ModuleType:
    path = REPO_ROOT / "scripts" / "generate_bank_expectations.py"
    spec = importlib.util.spec_from_file_location("generate_bank_expectations", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


@pytest.fixture(scope="module")
async def mockserver() -> AsyncIterator[httpx.AsyncClient]:
    """MockServer's control API; fails the module clearly when MockServer is not up."""
    async with httpx.AsyncClient(base_url=BANK_URL, timeout=5.0) as client:
        try:
            (await client.put("/mockserver/status")).raise_for_status()
        except httpx.HTTPError as exc:
            pytest.fail(
                f"MockServer is not answering at {BANK_URL} ({type(exc).__name__}); start it "
                "with `bash scripts/stack.sh up mockserver` or deselect with -m 'not mockserver'"
            )
        yield client


def _gateway(**overrides: Any) -> HttpBankGateway:
    settings: dict[str, Any] = {
        "base_url": BANK_URL,
        "timeout_s": 3.0,
        "connect_timeout_s": 1.0,
        "max_retries": 2,
        "backoff_max_s": 0.05,
        "breaker_fail_max": 100,
        "breaker_reset_s": 1.0,
        "max_connections": 10,
    }
    settings.update(overrides)
    return HttpBankGateway(**settings)


@pytest.fixture
async def bank(mockserver: httpx.AsyncClient) -> AsyncIterator[HttpBankGateway]:
    gateway = _gateway()
    yield gateway
    await gateway.aclose()


def _transaction_id() -> str:
    return f"txn_it_{uuid.uuid4().hex}"


def _authorization(card_number: str, transaction_id: str | None = None) -> AuthorizationRequest:
    return AuthorizationRequest(
        transaction_id=transaction_id or _transaction_id(),
        merchant_id="merchant_test_123",
        amount_minor=9999,
        currency="USD",
        card_number=card_number,
        cvv="1234" if card_number.startswith(("34", "37")) else "123",
        expiry_month=12,
        expiry_year=2030,
        cardholder_name="Jane Doe",
        correlation_id=f"corr-{uuid.uuid4().hex[:12]}",
    )


async def _recorded_authorizations(
    client: httpx.AsyncClient, request: AuthorizationRequest
) -> list[dict[str, Any]]:
    return await recorded_requests(
        client,
        method="POST",
        path_regex="/v1/authorizations",
        correlation_id=request.correlation_id,
    )


def _authorization_for(card_number: str) -> dict[str, Any]:
    """MockServer request matcher: an authorization of this card number."""
    return {
        "method": "POST",
        "path": "/v1/authorizations",
        "body": {
            "type": "JSON",
            "json": {"card": {"number": card_number}},
            "matchType": "ONLY_MATCHING_FIELDS",
        },
    }


def _unique_card_number() -> str:
    """A Luhn-valid Visa number no other test uses, so a temporary expectation is ours."""
    partial = "4" + "".join(secrets.choice("0123456789") for _ in range(14))
    return partial + luhn_check_digit(partial)


# -- every row of the one table --------------------------------------------------------------


@pytest.mark.parametrize("card", TEST_CARDS, ids=lambda card: f"{card.number}-{card.behaviour}")
async def test_every_test_card_is_answered_as_the_table_says(
    mockserver: httpx.AsyncClient, card: TestCard
) -> None:
    transaction_id = _transaction_id()
    request = _authorization(card.number, transaction_id)
    # The timeout card answers after 10 s: a short client timeout and no retry keep it quick.
    slow = card.behaviour is BankBehaviour.TIMEOUT
    gateway = _gateway(timeout_s=0.5, max_retries=0) if slow else _gateway()
    started = time.monotonic()
    try:
        match card.behaviour:
            case BankBehaviour.APPROVE:
                result = await gateway.authorize(request)
                assert result.approved
                assert result.authorization_code == generator.DEFAULT_AUTHORIZATION_CODE
            case BankBehaviour.DECLINE:
                result = await gateway.authorize(request)
                assert not result.approved
                assert card.code is not None
                assert result.decline_code == card.code
                assert result.decline_message == DECLINE_MESSAGES[card.code]
            case BankBehaviour.ERROR | BankBehaviour.TIMEOUT:
                with pytest.raises(BankAnswerUnknown) as caught:
                    await gateway.authorize(request)
                assert caught.value.failure_code == card.code
    finally:
        await gateway.aclose()

    if slow:
        assert time.monotonic() - started < 3.0
    recorded = await _recorded_authorizations(mockserver, request)
    expected_attempts = 3 if card.behaviour is BankBehaviour.ERROR else 1
    assert len(recorded) == expected_attempts
    for seen in recorded:
        assert seen["headers"]["idempotency-key"] == [transaction_id]
        assert seen["headers"]["x-correlation-id"] == [request.correlation_id]


async def test_any_other_valid_card_is_approved(bank: HttpBankGateway) -> None:
    result = await bank.authorize(_authorization(_unique_card_number()))

    assert result.approved


async def test_refund_succeeds(bank: HttpBankGateway) -> None:
    result = await bank.refund(
        RefundRequest(
            refund_id=f"re_it_{uuid.uuid4().hex}",
            transaction_id=_transaction_id(),
            authorization_code=generator.DEFAULT_AUTHORIZATION_CODE,
            amount_minor=500,
            currency="USD",
        )
    )

    assert result.succeeded
    assert result.bank_reference == generator.REFUND_REFERENCE


async def test_ping_reaches_the_bank_health_endpoint(bank: HttpBankGateway) -> None:
    assert await bank.ping()
    assert bank.circuit_state == "closed"


async def test_mock_bank_refuses_calls_without_an_idempotency_key(
    mockserver: httpx.AsyncClient,
) -> None:
    body = {"card": {"number": "4242424242424242"}}

    response = await mockserver.post("/v1/authorizations", json=body)

    assert response.status_code == 404


# -- a retry through real HTTP ---------------------------------------------------------------


@pytest.fixture
async def temporary_expectations(mockserver: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    """Ids appended here are cleared from MockServer after the test."""
    ids: list[str] = []
    yield ids
    for expectation_id in ids:
        await clear_expectation(mockserver, expectation_id)


async def test_one_server_error_is_retried_and_then_approved(
    mockserver: httpx.AsyncClient, temporary_expectations: list[str]
) -> None:
    card_number = _unique_card_number()
    expectation_id = await register_expectation(
        mockserver,
        http_request=_authorization_for(card_number),
        action={"httpResponse": {"statusCode": 500}},
        kind="retry",
        reference=card_number,
        times=1,  # only the first attempt fails
    )
    temporary_expectations.append(expectation_id)
    transaction_id = _transaction_id()
    request = _authorization(card_number, transaction_id)
    gateway = _gateway(max_retries=2)
    try:
        result = await gateway.authorize(request)
    finally:
        await gateway.aclose()

    assert result.approved
    assert result.authorization_code == generator.DEFAULT_AUTHORIZATION_CODE
    recorded = await _recorded_authorizations(mockserver, request)
    assert len(recorded) == 2, "one 500, then one approved retry"
    assert {seen["headers"]["idempotency-key"][0] for seen in recorded} == {transaction_id}


# -- how each failure reaches us through the real transport -----------------------------------


@pytest.fixture
async def closed_port() -> int:
    """A local port nothing listens on: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A local port whose listen backlog is full: a new connection never completes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port: int = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    server.close()


async def _register_card_answer(
    mockserver: httpx.AsyncClient, ids: list[str], action: dict[str, Any]
) -> str:
    """Answer authorizations of a fresh card number with ``action``; returns the number."""
    card_number = _unique_card_number()
    ids.append(
        await register_expectation(
            mockserver,
            http_request=_authorization_for(card_number),
            action=action,
            kind="card",
            reference=card_number,
        )
    )
    return card_number


DROP_CONNECTION: dict[str, Any] = {"httpError": {"dropConnection": True}}
NOT_HTTP: dict[str, Any] = {
    "httpError": {"dropConnection": True, "responseBytes": base64.b64encode(b"garbage").decode()}
}
TRUNCATED_BODY: dict[str, Any] = {
    "httpResponse": {
        "statusCode": 200,
        "body": '{"status": "approved", "authorization_code": "TRUNC1"}',
        "connectionOptions": {"contentLengthHeaderOverride": 1000, "closeSocket": True},
    }
}
SLOW_APPROVAL: dict[str, Any] = json_response(
    200, {"status": "approved", "authorization_code": "SLOW02"}, delay_s=2.0
)


async def _raised(client: httpx.AsyncClient, path: str) -> BaseException:
    with pytest.raises((httpx.HTTPError, aiohttp.ClientError)) as caught:
        await client.post(path, json={"card": {"number": "4242424242424242"}})
    return caught.value


@pytest.mark.parametrize(
    ("scenario", "raised", "cause", "classified"),
    [
        (
            "refused",
            httpx.ConnectTimeout,
            aiohttp.ClientConnectorError,
            ("bank_unreachable", False),
        ),
        ("dns", httpx.ConnectTimeout, aiohttp.ClientConnectorDNSError, ("bank_unreachable", False)),
        (
            "connect-timeout",
            httpx.ConnectTimeout,
            aiohttp.ConnectionTimeoutError,
            ("bank_unreachable", False),
        ),
        (
            "pool-timeout",
            httpx.ConnectTimeout,
            aiohttp.ConnectionTimeoutError,
            ("bank_unreachable", False),
        ),
        ("read-timeout", httpx.ReadTimeout, aiohttp.SocketTimeoutError, ("bank_timeout", True)),
        (
            "dropped",
            httpx.ConnectTimeout,
            aiohttp.ServerDisconnectedError,
            ("connection_lost", True),
        ),
        ("truncated-body", httpx.ReadError, aiohttp.ClientPayloadError, ("connection_lost", True)),
        ("not-http", aiohttp.ClientResponseError, None, ("processing_error", True)),
    ],
)
async def test_what_httpx_aiohttp_raises_and_how_it_is_classified(
    mockserver: httpx.AsyncClient,
    temporary_expectations: list[str],
    closed_port: int,
    unanswered_port: int,
    scenario: str,
    raised: type[BaseException],
    cause: type[BaseException] | None,
    classified: tuple[str, bool],
) -> None:
    """Pins the library behaviour _classify_transport_error relies on."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    def client(base_url: str, **timeouts: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(0.5, **timeouts),
            limits=limits,
            transport=AiohttpTransport(limits=limits),
        )

    path = "/v1/authorizations"
    if scenario in {"read-timeout", "dropped", "truncated-body", "not-http", "pool-timeout"}:
        action = {
            "read-timeout": SLOW_APPROVAL,
            "pool-timeout": SLOW_APPROVAL,
            "dropped": DROP_CONNECTION,
            "truncated-body": TRUNCATED_BODY,
            "not-http": NOT_HTTP,
        }[scenario]
        path = f"/transport-probe/{uuid.uuid4().hex}"
        temporary_expectations.append(
            await register_expectation(
                mockserver, http_request={"path": path}, action=action, kind="probe"
            )
        )
    base_url = {
        "refused": f"http://127.0.0.1:{closed_port}",
        "dns": "http://bank.invalid",
        "connect-timeout": f"http://127.0.0.1:{unanswered_port}",
    }.get(scenario, BANK_URL)

    async with client(base_url, connect=0.3, pool=0.3) as http:
        if scenario == "pool-timeout":
            # The one connection is held by a slow request; the next waits for the pool.
            holder = asyncio.create_task(http.post(path, json={}, timeout=5.0))
            await asyncio.sleep(0.2)
            error = await _raised(http, path)
            holder.cancel()
            with contextlib.suppress(BaseException):
                await holder
        else:
            error = await _raised(http, path)

    assert type(error) is raised
    if cause is not None:
        assert isinstance(error.__cause__, cause)
    assert _classify_transport_error(error) == classified


async def test_a_refused_connection_is_not_received(closed_port: int) -> None:
    gateway = _gateway(base_url=f"http://127.0.0.1:{closed_port}", max_retries=2)
    try:
        with pytest.raises(BankUnavailable) as caught:
            await gateway.authorize(_authorization("4242424242424242"))
    finally:
        await gateway.aclose()

    assert caught.value.failure_code == "bank_unreachable"


async def test_a_connect_timeout_is_not_received(unanswered_port: int) -> None:
    gateway = _gateway(
        base_url=f"http://127.0.0.1:{unanswered_port}", connect_timeout_s=0.2, max_retries=1
    )
    started = time.monotonic()
    try:
        with pytest.raises(BankUnavailable) as caught:
            await gateway.authorize(_authorization("4242424242424242"))
    finally:
        await gateway.aclose()

    assert caught.value.failure_code == "bank_unreachable"
    assert time.monotonic() - started < 2.0


async def test_a_pool_timeout_is_not_received(
    mockserver: httpx.AsyncClient, temporary_expectations: list[str]
) -> None:
    slow_path = f"/pool-holder/{uuid.uuid4().hex}"
    temporary_expectations.append(
        await register_expectation(
            mockserver, http_request={"path": slow_path}, action=SLOW_APPROVAL, kind="holder"
        )
    )
    gateway = _gateway(timeout_s=0.3, max_connections=1, max_retries=1)
    request = _authorization(_unique_card_number())
    # Hold the gateway's only connection (reaching into its client: no public way to).
    holder = asyncio.create_task(gateway._client.get(slow_path, timeout=5.0))
    await asyncio.sleep(0.2)
    try:
        with pytest.raises(BankUnavailable) as caught:
            await gateway.authorize(request)
    finally:
        holder.cancel()
        with contextlib.suppress(BaseException):
            await holder
        await gateway.aclose()

    assert caught.value.failure_code == "bank_unreachable"
    assert await _recorded_authorizations(mockserver, request) == [], "nothing was sent"


@pytest.mark.parametrize(
    ("action", "failure_code"),
    [
        (SLOW_APPROVAL, "bank_timeout"),
        (DROP_CONNECTION, "connection_lost"),
        (TRUNCATED_BODY, "connection_lost"),
        (NOT_HTTP, "processing_error"),
        (json_response(503, {"error": "busy"}), "processing_error"),
        (
            json_response(200, {"status": "approved", "authorization_code": "A" * 65}),
            "processing_error",
        ),
        (
            json_response(200, {"status": "declined", "decline_code": "lost\u0000card"}),
            "processing_error",
        ),
    ],
    ids=[
        "read-timeout",
        "dropped",
        "truncated-body",
        "not-http",
        "503",
        "code-too-long",
        "decline-code-with-nul",
    ],
)
async def test_a_call_that_reached_the_bank_without_an_answer_is_unknown(
    mockserver: httpx.AsyncClient,
    temporary_expectations: list[str],
    action: dict[str, Any],
    failure_code: str,
) -> None:
    card_number = await _register_card_answer(mockserver, temporary_expectations, action)
    request = _authorization(card_number)
    gateway = _gateway(timeout_s=0.5, max_retries=1)
    try:
        with pytest.raises(BankAnswerUnknown) as caught:
            await gateway.authorize(request)
    finally:
        await gateway.aclose()

    assert caught.value.failure_code == failure_code
    recorded = await _recorded_authorizations(mockserver, request)
    malformed = "httpResponse" in action and action["httpResponse"]["statusCode"] == 200
    assert len(recorded) >= 1, "the bank did receive the request"
    assert len(recorded) == (1 if malformed and failure_code == "processing_error" else 2)
    assert {seen["headers"]["idempotency-key"][0] for seen in recorded} == {request.transaction_id}


async def test_a_client_error_is_not_received_and_not_retried(
    mockserver: httpx.AsyncClient, temporary_expectations: list[str]
) -> None:
    card_number = await _register_card_answer(
        mockserver, temporary_expectations, json_response(422, {"error": "invalid_request"})
    )
    request = _authorization(card_number)
    gateway = _gateway(max_retries=2)
    try:
        with pytest.raises(BankUnavailable) as caught:
            await gateway.authorize(request)
    finally:
        await gateway.aclose()

    assert caught.value.failure_code == "processing_error"
    assert len(await _recorded_authorizations(mockserver, request)) == 1


# -- status lookups ---------------------------------------------------------------------------


@pytest.fixture
async def lookup_ids(mockserver: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    ids: list[str] = []
    yield ids
    for expectation_id in ids:
        await clear_expectation(mockserver, expectation_id)


async def test_authorization_status_approved_and_declined(
    mockserver: httpx.AsyncClient, bank: HttpBankGateway, lookup_ids: list[str]
) -> None:
    approved, declined = _transaction_id(), _transaction_id()
    lookup_ids.append(
        await register_authorization_status(
            mockserver, approved, approved=True, authorization_code="LOOK42"
        )
    )
    lookup_ids.append(
        await register_authorization_status(
            mockserver, declined, approved=False, decline_code="stolen_card"
        )
    )

    assert await bank.authorization_status(approved) == AuthorizationResult(
        approved=True, authorization_code="LOOK42"
    )
    assert await bank.authorization_status(declined) == AuthorizationResult(
        approved=False,
        decline_code="stolen_card",
        decline_message=DECLINE_MESSAGES["stolen_card"],
    )


async def test_refund_status_succeeded_and_failed(
    mockserver: httpx.AsyncClient, bank: HttpBankGateway, lookup_ids: list[str]
) -> None:
    succeeded, failed = f"re_it_{uuid.uuid4().hex}", f"re_it_{uuid.uuid4().hex}"
    lookup_ids.append(
        await register_refund_status(mockserver, succeeded, succeeded=True, reference="bank_r1")
    )
    lookup_ids.append(
        await register_refund_status(mockserver, failed, succeeded=False, failure_code="closed")
    )

    assert await bank.refund_status(succeeded) == RefundResult(
        succeeded=True, bank_reference="bank_r1"
    )
    assert await bank.refund_status(failed) == RefundResult(succeeded=False, failure_code="closed")


async def test_no_record_is_none(
    mockserver: httpx.AsyncClient, bank: HttpBankGateway, lookup_ids: list[str]
) -> None:
    # Nothing registered: the committed low-priority default answers 404 no_such_record.
    assert await bank.authorization_status(_transaction_id()) is None
    assert await bank.refund_status(f"re_it_{uuid.uuid4().hex}") is None
    # The same body registered by id, as the tests that need it exactly do.
    transaction_id, refund_id = _transaction_id(), f"re_it_{uuid.uuid4().hex}"
    no_record = json_response(404, {"error": "no_such_record"})
    lookup_ids.append(
        await register_lookup(
            mockserver, f"/v1/authorizations/{transaction_id}", no_record, reference="none"
        )
    )
    lookup_ids.append(
        await register_lookup(mockserver, f"/v1/refunds/{refund_id}", no_record, reference="none")
    )

    assert await bank.authorization_status(transaction_id) is None
    assert await bank.refund_status(refund_id) is None
    assert bank.circuit_state == "closed"


async def test_a_404_that_is_not_the_banks_no_record_leaves_the_outcome_unknown(
    mockserver: httpx.AsyncClient, bank: HttpBankGateway
) -> None:
    # MockServer's own 404 for a path nothing matches stands for a misrouted lookup.
    response = await mockserver.get(f"/v1/nothing-here/{uuid.uuid4().hex}")
    assert response.status_code == 404
    assert response.content == b""
    misrouted = HttpBankGateway(
        base_url=f"{BANK_URL}/not-the-bank",
        timeout_s=2.0,
        connect_timeout_s=1.0,
        max_retries=0,
        backoff_max_s=0.05,
        breaker_fail_max=100,
        breaker_reset_s=1.0,
        max_connections=2,
    )
    try:
        with pytest.raises(BankAnswerUnknown):
            await misrouted.authorization_status(_transaction_id())
    finally:
        await misrouted.aclose()


@pytest.mark.parametrize(
    ("action", "error_type", "failure_code", "attempts"),
    [
        (json_response(500, {"error": "boom"}), BankAnswerUnknown, "processing_error", 3),
        (
            json_response(200, {"status": "approved"}, delay_s=2.0),
            BankAnswerUnknown,
            "bank_timeout",
            3,
        ),
        # aiohttp itself resends an idempotent GET once when the server drops it.
        (DROP_CONNECTION, BankAnswerUnknown, "connection_lost", 6),
        (json_response(200, {"status": "approved"}), BankAnswerUnknown, "processing_error", 1),
        (json_response(400, {"error": "bad_id"}), BankUnavailable, "processing_error", 1),
    ],
    ids=["500", "timeout", "dropped", "malformed", "400"],
)
async def test_a_lookup_that_cannot_answer_raises(
    mockserver: httpx.AsyncClient,
    lookup_ids: list[str],
    action: dict[str, Any],
    error_type: type[Exception],
    failure_code: str,
    attempts: int,
) -> None:
    transaction_id = _transaction_id()
    correlation_id = f"corr-{uuid.uuid4().hex[:12]}"
    lookup_ids.append(
        await register_lookup(
            mockserver, f"/v1/authorizations/{transaction_id}", action, reference=transaction_id
        )
    )
    gateway = _gateway(timeout_s=0.5, max_retries=2)
    try:
        with pytest.raises(error_type) as caught:
            await gateway.authorization_status(transaction_id, correlation_id=correlation_id)
    finally:
        await gateway.aclose()

    assert getattr(caught.value, "failure_code", None) == failure_code
    recorded = await recorded_requests(
        mockserver,
        method="GET",
        path_regex=f"/v1/authorizations/{transaction_id}",
        correlation_id=correlation_id,
    )
    assert len(recorded) == attempts


async def test_the_reconcilers_view_of_the_two_special_cards(
    mockserver: httpx.AsyncClient, lookup_ids: list[str]
) -> None:
    """The error card leaves no record; the timeout card's lookup says approved."""
    gateway = _gateway(timeout_s=0.5, max_retries=0)
    error_payment = _authorization("4000000000000119")
    slow_payment = _authorization("4000000000000903")
    try:
        with pytest.raises(BankAnswerUnknown):
            await gateway.authorize(error_payment)
        with pytest.raises(BankAnswerUnknown):
            await gateway.authorize(slow_payment)
        lookup_ids.append(
            await register_authorization_status(
                mockserver,
                slow_payment.transaction_id,
                approved=True,
                authorization_code=generator.SLOW_AUTHORIZATION_CODE,
            )
        )

        assert await gateway.authorization_status(error_payment.transaction_id) is None
        assert await gateway.authorization_status(
            slow_payment.transaction_id
        ) == AuthorizationResult(
            approved=True, authorization_code=generator.SLOW_AUTHORIZATION_CODE
        )
    finally:
        await gateway.aclose()


# -- the circuit breaker over real HTTP -------------------------------------------------------


ERROR_CARD = "4000000000000119"


async def test_the_error_card_between_approvals_never_opens_the_circuit(
    mockserver: httpx.AsyncClient,
) -> None:
    gateway = _gateway(max_retries=2, backoff_max_s=0.01, breaker_fail_max=2, breaker_reset_s=30)
    try:
        for _ in range(4):
            with pytest.raises(BankAnswerUnknown):
                await gateway.authorize(_authorization(ERROR_CARD))
            assert (await gateway.authorize(_authorization(_unique_card_number()))).approved
        assert gateway.circuit_state == "closed"
    finally:
        await gateway.aclose()


async def test_fail_max_unknown_outcomes_open_the_circuit_until_a_trial_succeeds(
    mockserver: httpx.AsyncClient,
) -> None:
    gateway = _gateway(max_retries=1, backoff_max_s=0.01, breaker_fail_max=3, breaker_reset_s=0.5)
    try:
        for _ in range(3):
            with pytest.raises(BankAnswerUnknown):
                await gateway.authorize(_authorization(ERROR_CARD))
        assert gateway.circuit_state == "open"

        refused = _authorization(_unique_card_number())
        with pytest.raises(BankUnavailable) as caught:
            await gateway.authorize(refused)
        assert caught.value.failure_code == "circuit_open"
        assert caught.value.retry_after_s >= 1
        assert await _recorded_authorizations(mockserver, refused) == [], "nothing was sent"
        with pytest.raises(BankUnavailable):
            await gateway.authorization_status(_transaction_id())

        await asyncio.sleep(0.6)
        assert gateway.circuit_state == "half_open"
        assert (await gateway.authorize(_authorization(_unique_card_number()))).approved
        assert gateway.circuit_state == "closed"
    finally:
        await gateway.aclose()


async def test_a_lookup_with_no_record_is_a_successful_trial(
    mockserver: httpx.AsyncClient,
) -> None:
    gateway = _gateway(max_retries=0, breaker_fail_max=1, breaker_reset_s=0.3)
    try:
        with pytest.raises(BankAnswerUnknown):
            await gateway.authorize(_authorization(ERROR_CARD))
        assert gateway.circuit_state == "open"
        await asyncio.sleep(0.4)

        assert await gateway.authorization_status(_transaction_id()) is None
        assert gateway.circuit_state == "closed"
    finally:
        await gateway.aclose()


# -- the committed expectations are the table ------------------------------------------------


def test_committed_expectations_match_the_test_card_table() -> None:
    assert generator.is_in_sync(), (
        "deploy/mockserver/expectations.json is stale: "
        "run `uv run python scripts/generate_bank_expectations.py`"
    )


def test_every_non_approving_card_has_an_expectation() -> None:
    committed = json.loads(generator.EXPECTATIONS_PATH.read_text(encoding="utf-8"))
    matched_numbers = {
        expectation["httpRequest"]["body"]["json"]["card"]["number"]
        for expectation in committed
        if "body" in expectation["httpRequest"]
    }

    assert matched_numbers == {
        card.number for card in TEST_CARDS if card.behaviour is not BankBehaviour.APPROVE
    }
    assert len({expectation["id"] for expectation in committed}) == len(committed)
