"""The HTTP bank gateway's retries, circuit breaker and error mapping, without a network.

Every test talks to an ``httpx.MockTransport``; waits and reset timeouts are milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

import httpx
import pytest

from app.adapters.bank.http import HttpBankGateway
from app.domain.errors import BankUnavailable
from app.services.ports import AuthorizationRequest, BankRefundRequest

CARD_NUMBER = "4242424242424242"
CVV = "987"

APPROVED = {"status": "approved", "authorization_code": "AUTH42"}
DECLINED = {
    "status": "declined",
    "decline_code": "insufficient_funds",
    "decline_message": "The card has insufficient funds.",
}

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class Bank:
    """A scripted bank: answers requests in order from a list, repeating the last one."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def calls(self) -> int:
        return len(self.requests)


def ok(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json=body)


def status(code: int) -> httpx.Response:
    return httpx.Response(code, json={"error": "whatever"})


class GatewayFactory(Protocol):
    def __call__(self, bank: Handler, **overrides: Any) -> HttpBankGateway: ...


@pytest.fixture
async def make_gateway() -> AsyncIterator[GatewayFactory]:
    gateways: list[HttpBankGateway] = []

    def make(bank: Handler, **overrides: Any) -> HttpBankGateway:
        settings: dict[str, Any] = {
            "base_url": "http://bank.test",
            "timeout_s": 0.5,
            "connect_timeout_s": 0.5,
            "max_retries": 2,
            "backoff_max_s": 0.001,
            "breaker_fail_max": 50,
            "breaker_reset_s": 0.05,
            "max_connections": 10,
        }
        settings.update(overrides)
        gateway = HttpBankGateway(**settings, transport=httpx.MockTransport(bank))
        gateways.append(gateway)
        return gateway

    yield make
    for gateway in gateways:
        await gateway.aclose()


def authorization(transaction_id: str = "txn_unit_1") -> AuthorizationRequest:
    return AuthorizationRequest(
        transaction_id=transaction_id,
        merchant_id="merchant_test_123",
        amount_minor=9999,
        currency="USD",
        card_number=CARD_NUMBER,
        cvv=CVV,
        expiry_month=12,
        expiry_year=2030,
        cardholder_name="Jane Doe",
        correlation_id="corr-123",
    )


async def authorize_failure(gateway: HttpBankGateway) -> BankUnavailable:
    with pytest.raises(BankUnavailable) as caught:
        await gateway.authorize(authorization())
    return caught.value


# -- the wire protocol -------------------------------------------------------------------


async def test_authorization_sends_the_wire_protocol(make_gateway: GatewayFactory) -> None:
    bank = Bank(ok(APPROVED))
    gateway = make_gateway(bank)

    result = await gateway.authorize(authorization("txn_wire"))

    assert result.approved
    assert result.authorization_code == "AUTH42"
    (sent,) = bank.requests
    assert sent.method == "POST"
    assert sent.url.path == "/v1/authorizations"
    assert sent.headers["Idempotency-Key"] == "txn_wire"
    assert sent.headers["X-Correlation-ID"] == "corr-123"
    assert json.loads(sent.content) == {
        "transaction_id": "txn_wire",
        "merchant_id": "merchant_test_123",
        "amount_minor": 9999,
        "currency": "USD",
        "card": {
            "number": CARD_NUMBER,
            "cvv": CVV,
            "exp_month": 12,
            "exp_year": 2030,
            "holder_name": "Jane Doe",
        },
    }


async def test_decline_is_a_business_answer(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(Bank(ok(DECLINED)))

    result = await gateway.authorize(authorization())

    assert not result.approved
    assert result.decline_code == "insufficient_funds"
    assert result.decline_message == "The card has insufficient funds."


async def test_decline_without_message_gets_the_tables_message(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(Bank(ok({"status": "declined", "decline_code": "lost_card"})))

    result = await gateway.authorize(authorization())

    assert result.decline_message == "The card has been reported lost."


async def test_refund_sends_the_refund_id_as_idempotency_key(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(ok({"status": "succeeded", "reference": "bank_re_9"}))
    gateway = make_gateway(bank)

    result = await gateway.refund(
        BankRefundRequest(
            refund_id="re_42",
            transaction_id="txn_42",
            authorization_code="AUTH42",
            amount_minor=500,
            currency="EUR",
            correlation_id="corr-9",
        )
    )

    assert result.succeeded
    assert result.bank_reference == "bank_re_9"
    (sent,) = bank.requests
    assert sent.url.path == "/v1/refunds"
    assert sent.headers["Idempotency-Key"] == "re_42"
    assert json.loads(sent.content) == {
        "refund_id": "re_42",
        "transaction_id": "txn_42",
        "authorization_code": "AUTH42",
        "amount_minor": 500,
        "currency": "EUR",
    }


# -- retries -------------------------------------------------------------------------------


async def test_server_errors_are_retried_with_the_same_idempotency_key(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(status(500), status(503), ok(APPROVED))
    gateway = make_gateway(bank, max_retries=2)

    result = await gateway.authorize(authorization("txn_retry"))

    assert result.approved
    assert bank.calls == 3
    assert {request.headers["Idempotency-Key"] for request in bank.requests} == {"txn_retry"}
    assert gateway.circuit_state == "closed"


async def test_server_error_on_every_attempt_is_a_processing_error(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(status(500))
    gateway = make_gateway(bank, max_retries=2)

    error = await authorize_failure(gateway)

    assert error.failure_code == "processing_error"
    assert bank.calls == 3


async def test_decline_is_not_retried_and_does_not_open_the_circuit(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(ok(DECLINED))
    gateway = make_gateway(bank, breaker_fail_max=2)

    for _ in range(5):
        result = await gateway.authorize(authorization())
        assert not result.approved

    assert bank.calls == 5
    assert gateway.circuit_state == "closed"


@pytest.mark.parametrize("code", [400, 404, 409, 422])
async def test_client_error_is_a_processing_error_without_retry(
    make_gateway: GatewayFactory, code: int
) -> None:
    bank = Bank(status(code))
    gateway = make_gateway(bank, breaker_fail_max=1)

    error = await authorize_failure(gateway)

    assert error.failure_code == "processing_error"
    assert bank.calls == 1
    assert gateway.circuit_state == "closed"


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>not json</html>"),
        httpx.Response(200, json=["a", "list"]),
        ok({"status": "pending"}),
        ok({"status": "approved"}),
        ok({"status": "declined", "decline_code": ""}),
    ],
    ids=["not-json", "not-an-object", "unknown-status", "no-code", "empty-decline-code"],
)
async def test_malformed_answer_is_a_processing_error_without_retry(
    make_gateway: GatewayFactory, answer: httpx.Response
) -> None:
    bank = Bank(answer)
    gateway = make_gateway(bank)

    error = await authorize_failure(gateway)

    assert error.failure_code == "processing_error"
    assert bank.calls == 1


async def test_read_timeouts_are_retried_then_reported_as_bank_timeout(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(httpx.ReadTimeout("slow bank"))
    gateway = make_gateway(bank, max_retries=1)

    error = await authorize_failure(gateway)

    assert error.failure_code == "bank_timeout"
    assert bank.calls == 2


async def test_a_slow_bank_times_out_as_bank_timeout(make_gateway: GatewayFactory) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return ok(APPROVED)

    # MockTransport does not enforce timeouts, so bound the handler the way httpx would.
    async def bounded(request: httpx.Request) -> httpx.Response:
        try:
            return await asyncio.wait_for(slow(request), timeout=0.05)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out", request=request) from None

    gateway = make_gateway(bounded, max_retries=0)

    error = await authorize_failure(gateway)

    assert error.failure_code == "bank_timeout"


async def test_timeout_then_success_is_approved(make_gateway: GatewayFactory) -> None:
    bank = Bank(httpx.ReadTimeout("slow"), ok(APPROVED))
    gateway = make_gateway(bank, max_retries=1)

    result = await gateway.authorize(authorization())

    assert result.approved
    assert bank.calls == 2


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("no route")],
    ids=["refused", "connect-timeout"],
)
async def test_unreachable_bank_is_bank_unreachable(
    make_gateway: GatewayFactory, failure: Exception
) -> None:
    bank = Bank(failure)
    gateway = make_gateway(bank, max_retries=2)

    error = await authorize_failure(gateway)

    assert error.failure_code == "bank_unreachable"
    assert bank.calls == 3


# -- circuit breaker ---------------------------------------------------------------------


async def test_circuit_opens_after_fail_max_failures_then_fails_fast(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(status(500))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=3, breaker_reset_s=30)

    for _ in range(3):
        error = await authorize_failure(gateway)
        assert error.failure_code == "processing_error"
    assert gateway.circuit_state == "open"

    error = await authorize_failure(gateway)

    assert error.failure_code == "circuit_open"
    assert bank.calls == 3, "an open circuit must not call the bank"
    assert 1 <= error.retry_after_s <= 30


async def test_retries_stop_when_the_circuit_opens(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(500))
    gateway = make_gateway(bank, max_retries=5, breaker_fail_max=2, breaker_reset_s=30)

    error = await authorize_failure(gateway)

    # The failure that tripped the breaker is what happened to this payment.
    assert error.failure_code == "processing_error"
    assert bank.calls == 2
    assert gateway.circuit_state == "open"


async def test_circuit_half_opens_after_the_reset_timeout_and_closes_on_success(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(status(500), ok(APPROVED))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=1, breaker_reset_s=0.05)

    await authorize_failure(gateway)
    assert gateway.circuit_state == "open"
    await asyncio.sleep(0.08)
    assert gateway.circuit_state == "half_open"

    result = await gateway.authorize(authorization())

    assert result.approved
    assert gateway.circuit_state == "closed"
    assert bank.calls == 2


async def test_failed_trial_call_reopens_the_circuit(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(500))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=1, breaker_reset_s=0.05)

    await authorize_failure(gateway)
    await asyncio.sleep(0.08)

    trial = await authorize_failure(gateway)

    assert trial.failure_code == "processing_error"
    assert gateway.circuit_state == "open"
    assert (await authorize_failure(gateway)).failure_code == "circuit_open"
    assert bank.calls == 2


async def test_a_success_resets_the_failure_count(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(500), ok(APPROVED), status(500), ok(APPROVED))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=2)

    await authorize_failure(gateway)
    await gateway.authorize(authorization())
    await authorize_failure(gateway)

    assert gateway.circuit_state == "closed"


# -- health probe --------------------------------------------------------------------------


async def test_ping_is_true_when_the_bank_answers_health(make_gateway: GatewayFactory) -> None:
    bank = Bank(ok({"status": "ok"}))
    gateway = make_gateway(bank)

    assert await gateway.ping()
    assert bank.requests[0].method == "GET"
    assert bank.requests[0].url.path == "/health"


@pytest.mark.parametrize(
    "answer", [status(503), httpx.ConnectError("refused")], ids=["503", "refused"]
)
async def test_ping_is_false_without_retry_when_the_bank_is_down(
    make_gateway: GatewayFactory, answer: httpx.Response | Exception
) -> None:
    bank = Bank(answer)
    gateway = make_gateway(bank, max_retries=3)

    assert not await gateway.ping()
    assert bank.calls == 1


async def test_ping_bypasses_the_breaker(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(500), ok({"status": "ok"}))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=1, breaker_reset_s=30)
    await authorize_failure(gateway)

    assert await gateway.ping()
    assert gateway.circuit_state == "open"


# -- card data never leaks -------------------------------------------------------------------


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend([current.__cause__, current.__context__])


@pytest.mark.parametrize(
    "answer",
    [
        status(500),
        status(400),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
        httpx.Response(200, content=f'{{"echo": "{CARD_NUMBER}", '.encode()),
    ],
    ids=["500", "400", "timeout", "refused", "malformed-echo"],
)
async def test_card_number_and_cvv_never_reach_errors_or_logs(
    make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
    answer: httpx.Response | Exception,
) -> None:
    gateway = make_gateway(Bank(answer), max_retries=1, breaker_fail_max=2)
    caplog.set_level(logging.DEBUG)

    error = await authorize_failure(gateway)

    for link in _exception_chain(error):
        assert not isinstance(link, httpx.HTTPError), "transport errors hold the request body"
        text = f"{link!s} {link!r} {vars(link)!r}"
        assert CARD_NUMBER not in text
        assert f"'{CVV}'" not in text
        assert f'"{CVV}"' not in text
    for record in caplog.records:
        rendered = f"{record.getMessage()} {vars(record)!r}"
        assert CARD_NUMBER not in rendered
        assert f'"{CVV}"' not in rendered
    assert any(record.name == "app.adapters.bank.http" for record in caplog.records)
