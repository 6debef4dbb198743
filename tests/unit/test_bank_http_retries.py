"""The HTTP bank gateway's classification, retries, lookups and circuit breaker, no network.

Every test talks to an ``httpx.MockTransport``; waits and reset timeouts are milliseconds.
What the real transport (httpx-aiohttp) raises is pinned against MockServer in
``tests/integration/test_bank_mockserver.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

import aiohttp
import httpx
import pytest

from app.adapters.bank.http import (
    AUTHORIZATION_CODE_MAX_LENGTH,
    BANK_REFERENCE_MAX_LENGTH,
    DECLINE_CODE_MAX_LENGTH,
    DECLINE_MESSAGE_MAX_LENGTH,
    FAILURE_CODE_MAX_LENGTH,
    HttpBankGateway,
)
from app.domain.errors import BankUnavailable
from app.services.ports.bank import (
    AuthorizationRequest,
    AuthorizationResult,
    BankAnswerUnknown,
    BankRefundRequest,
    RefundResult,
)

CARD_NUMBER = "4242424242424242"
CVV = "987"

APPROVED = {"status": "approved", "authorization_code": "AUTH42"}
DECLINED = {
    "status": "declined",
    "decline_code": "insufficient_funds",
    "decline_message": "The card has insufficient funds.",
}

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]
BankError = BankUnavailable | BankAnswerUnknown


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


def ok(body: object) -> httpx.Response:
    return httpx.Response(200, json=body)


def status(code: int) -> httpx.Response:
    return httpx.Response(code, json={"error": "whatever"})


def caused_by(error: httpx.HTTPError, cause: BaseException) -> httpx.HTTPError:
    """``error`` chained from ``cause``, as httpx-aiohttp raises it."""
    error.__cause__ = cause
    return error


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


def refund(refund_id: str = "re_unit_1") -> BankRefundRequest:
    return BankRefundRequest(
        refund_id=refund_id,
        transaction_id="txn_unit_1",
        authorization_code="AUTH42",
        amount_minor=500,
        currency="EUR",
        correlation_id="corr-9",
    )


async def authorize_failure(gateway: HttpBankGateway) -> BankError:
    with pytest.raises((BankUnavailable, BankAnswerUnknown)) as caught:
        await gateway.authorize(authorization())
    return caught.value


async def not_received(gateway: HttpBankGateway) -> BankUnavailable:
    error = await authorize_failure(gateway)
    assert isinstance(error, BankUnavailable), f"expected BankUnavailable, got {error!r}"
    return error


async def unknown(gateway: HttpBankGateway) -> BankAnswerUnknown:
    error = await authorize_failure(gateway)
    assert isinstance(error, BankAnswerUnknown), f"expected BankAnswerUnknown, got {error!r}"
    return error


# -- the wire protocol -------------------------------------------------------------------


async def test_authorization_sends_the_wire_protocol(make_gateway: GatewayFactory) -> None:
    bank = Bank(ok(APPROVED))
    gateway = make_gateway(bank)

    result = await gateway.authorize(authorization("txn_wire"))

    assert result == AuthorizationResult(approved=True, authorization_code="AUTH42")
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
        "capture": True,
        "card": {
            "number": CARD_NUMBER,
            "cvv": CVV,
            "exp_month": 12,
            "exp_year": 2030,
            "holder_name": "Jane Doe",
        },
    }


async def test_a_manual_capture_authorization_says_so(make_gateway: GatewayFactory) -> None:
    bank = Bank(ok(APPROVED))
    gateway = make_gateway(bank)

    await gateway.authorize(dataclasses.replace(authorization(), capture=False))

    assert json.loads(bank.requests[0].content)["capture"] is False


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

    result = await gateway.refund(refund("re_42"))

    assert result == RefundResult(succeeded=True, bank_reference="bank_re_9")
    (sent,) = bank.requests
    assert sent.url.path == "/v1/refunds"
    assert sent.headers["Idempotency-Key"] == "re_42"
    assert sent.headers["X-Correlation-ID"] == "corr-9"
    assert json.loads(sent.content) == {
        "refund_id": "re_42",
        "transaction_id": "txn_unit_1",
        "authorization_code": "AUTH42",
        "amount_minor": 500,
        "currency": "EUR",
    }


async def test_a_failed_refund_is_an_answer(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(Bank(ok({"status": "failed", "failure_code": "account_closed"})))

    result = await gateway.refund(refund())

    assert result == RefundResult(succeeded=False, failure_code="account_closed")


# -- what the bank returns must fit the database ----------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>not json</html>"),
        httpx.Response(200, json=["a", "list"]),
        httpx.Response(204),
        httpx.Response(302, headers={"Location": "/elsewhere"}),
        ok({"status": "pending"}),
        ok({"status": "approved"}),
        ok({"status": "approved", "authorization_code": ""}),
        ok({"status": "approved", "authorization_code": 42}),
        ok({"status": "approved", "authorization_code": "A" * (AUTHORIZATION_CODE_MAX_LENGTH + 1)}),
        ok({"status": "approved", "authorization_code": "AUTH\x0042"}),
        ok({"status": "approved", "authorization_code": "AUTH\n42"}),
        httpx.Response(  # JSON may escape a lone surrogate; UTF-8 cannot store it
            200, content=b'{"status": "approved", "authorization_code": "AUTH\\ud80042"}'
        ),
        ok({"status": "declined"}),
        ok({"status": "declined", "decline_code": ""}),
        ok({"status": "declined", "decline_code": "x" * (DECLINE_CODE_MAX_LENGTH + 1)}),
        ok({"status": "declined", "decline_code": "card\x00declined"}),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "empty-204",
        "redirect",
        "unknown-status",
        "no-code",
        "empty-code",
        "code-not-a-string",
        "code-too-long",
        "code-with-nul",
        "code-with-newline",
        "code-with-lone-surrogate",
        "no-decline-code",
        "empty-decline-code",
        "decline-code-too-long",
        "decline-code-with-nul",
    ],
)
async def test_a_malformed_answer_is_unknown_without_retry(
    make_gateway: GatewayFactory, answer: httpx.Response
) -> None:
    bank = Bank(answer)
    gateway = make_gateway(bank)

    error = await unknown(gateway)

    assert error.failure_code == "processing_error"
    assert bank.calls == 1


async def test_longest_storable_codes_are_accepted(make_gateway: GatewayFactory) -> None:
    code = "A" * AUTHORIZATION_CODE_MAX_LENGTH
    decline = "d" * DECLINE_CODE_MAX_LENGTH
    gateway = make_gateway(
        Bank(
            ok({"status": "approved", "authorization_code": code}),
            ok({"status": "declined", "decline_code": decline}),
        )
    )

    assert (await gateway.authorize(authorization())).authorization_code == code
    assert (await gateway.authorize(authorization())).decline_code == decline


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Card\x00 declined\r\n by\tissuer\x7f\x9f", "Card declined byissuer"),
        ("m" * (DECLINE_MESSAGE_MAX_LENGTH + 50), "m" * DECLINE_MESSAGE_MAX_LENGTH),
        ("\x00\x01", "The card has insufficient funds."),
        ("", "The card has insufficient funds."),
        (None, "The card has insufficient funds."),
        (42, "The card has insufficient funds."),
    ],
    ids=["control-chars", "too-long", "only-control-chars", "empty", "null", "not-a-string"],
)
async def test_decline_message_is_cleaned_and_cut_to_fit(
    make_gateway: GatewayFactory, message: object, expected: str
) -> None:
    body = {"status": "declined", "decline_code": "insufficient_funds", "decline_message": message}
    gateway = make_gateway(Bank(ok(body)))

    result = await gateway.authorize(authorization())

    assert result.decline_message == expected
    assert result.decline_code == "insufficient_funds"


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("ref\x00_1\r\n", "ref_1"),
        ("r" * (BANK_REFERENCE_MAX_LENGTH + 10), "r" * BANK_REFERENCE_MAX_LENGTH),
        ("\x00", None),
        (None, None),
        (12345, None),
    ],
    ids=["control-chars", "too-long", "only-control-chars", "null", "not-a-string"],
)
async def test_refund_reference_is_cleaned_and_cut_to_fit(
    make_gateway: GatewayFactory, reference: object, expected: str | None
) -> None:
    gateway = make_gateway(Bank(ok({"status": "succeeded", "reference": reference})))

    result = await gateway.refund(refund())

    assert result == RefundResult(succeeded=True, bank_reference=expected)


@pytest.mark.parametrize(
    "failure_code",
    [None, "", 7, "f" * (FAILURE_CODE_MAX_LENGTH + 1), "bad\x00code", "bad\ncode"],
    ids=["missing", "empty", "not-a-string", "too-long", "nul", "newline"],
)
async def test_an_unusable_refund_failure_code_becomes_refund_failed(
    make_gateway: GatewayFactory, failure_code: object
) -> None:
    body: dict[str, object] = {"status": "failed", "reference": "ref_2"}
    if failure_code is not None:
        body["failure_code"] = failure_code
    gateway = make_gateway(Bank(ok(body)))

    result = await gateway.refund(refund())

    assert result == RefundResult(
        succeeded=False, bank_reference="ref_2", failure_code="refund_failed"
    )


@pytest.mark.parametrize(
    "answer",
    [ok({"status": "pending"}), httpx.Response(200, content=b"nope"), ok({"reference": "r"})],
    ids=["unknown-status", "not-json", "no-status"],
)
async def test_a_malformed_refund_answer_is_unknown(
    make_gateway: GatewayFactory, answer: httpx.Response
) -> None:
    bank = Bank(answer)
    gateway = make_gateway(bank)

    with pytest.raises(BankAnswerUnknown) as caught:
        await gateway.refund(refund())

    assert caught.value.failure_code == "processing_error"
    assert bank.calls == 1


# -- certainly not received: BankUnavailable ----------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("no route"),
        httpx.PoolTimeout("pool exhausted"),
        # What httpx-aiohttp raises (verified against a closed port, a bad host name, a
        # full listen backlog and a one-connection pool held by a slow call):
        caused_by(
            httpx.ConnectTimeout("refused"),
            aiohttp.ClientConnectorError(
                aiohttp.client_reqrep.ConnectionKey("bank.test", 80, False, True, None, None, None),
                ConnectionRefusedError(111, "Connection refused"),
            ),
        ),
        caused_by(
            httpx.ConnectTimeout("pool or connect"),
            aiohttp.ConnectionTimeoutError("Connection timeout to host"),
        ),
    ],
    ids=[
        "refused",
        "connect-timeout",
        "pool-timeout",
        "aiohttp-refused",
        "aiohttp-connect-timeout",
    ],
)
async def test_an_unreachable_bank_is_bank_unreachable_after_the_retries(
    make_gateway: GatewayFactory, failure: Exception
) -> None:
    bank = Bank(failure)
    gateway = make_gateway(bank, max_retries=2)

    error = await not_received(gateway)

    assert error.failure_code == "bank_unreachable"
    assert bank.calls == 3


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 422, 429])
async def test_a_client_error_is_not_received_without_retry(
    make_gateway: GatewayFactory, code: int
) -> None:
    bank = Bank(status(code))
    gateway = make_gateway(bank, breaker_fail_max=1)

    error = await not_received(gateway)

    assert error.failure_code == "processing_error"
    assert bank.calls == 1
    assert gateway.circuit_state == "closed"


async def test_refused_then_approved_is_approved(make_gateway: GatewayFactory) -> None:
    bank = Bank(httpx.ConnectError("refused"), ok(APPROVED))
    gateway = make_gateway(bank, max_retries=1)

    assert (await gateway.authorize(authorization())).approved
    assert bank.calls == 2


# -- maybe received: BankAnswerUnknown ----------------------------------------------------------


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


async def test_refund_retries_keep_the_refund_id_as_idempotency_key(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(httpx.ReadTimeout("slow"), status(502), ok({"status": "succeeded"}))
    gateway = make_gateway(bank, max_retries=2)

    assert (await gateway.refund(refund("re_retry"))).succeeded
    assert [request.headers["Idempotency-Key"] for request in bank.requests] == ["re_retry"] * 3


async def test_a_server_error_on_every_attempt_is_unknown(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(status(500))
    gateway = make_gateway(bank, max_retries=2)

    error = await unknown(gateway)

    assert error.failure_code == "processing_error"
    assert bank.calls == 3


@pytest.mark.parametrize(
    ("failure", "failure_code"),
    [
        (httpx.ReadTimeout("slow bank"), "bank_timeout"),
        (httpx.WriteTimeout("slow bank"), "bank_timeout"),
        (httpx.ReadError("reset"), "connection_lost"),
        (httpx.WriteError("broken pipe"), "connection_lost"),
        (httpx.RemoteProtocolError("server disconnected"), "connection_lost"),
        # What httpx-aiohttp raises (verified against MockServer):
        (
            caused_by(httpx.ReadTimeout("t"), aiohttp.SocketTimeoutError("read")),
            "bank_timeout",
        ),
        (
            # a connection dropped after the request was sent arrives as ConnectTimeout
            caused_by(httpx.ConnectTimeout("t"), aiohttp.ServerDisconnectedError()),
            "connection_lost",
        ),
        (
            caused_by(httpx.ReadError("t"), aiohttp.ClientPayloadError("truncated")),
            "connection_lost",
        ),
        (aiohttp.ServerDisconnectedError(), "connection_lost"),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "connection_lost"),
    ],
    ids=[
        "read-timeout",
        "write-timeout",
        "read-error",
        "write-error",
        "remote-protocol-error",
        "aiohttp-read-timeout",
        "aiohttp-dropped-as-connect-timeout",
        "aiohttp-truncated-body",
        "bare-aiohttp-disconnect",
        "bare-aiohttp-reset",
    ],
)
async def test_a_failure_after_sending_is_unknown_after_the_retries(
    make_gateway: GatewayFactory, failure: Exception, failure_code: str
) -> None:
    bank = Bank(failure)
    gateway = make_gateway(bank, max_retries=1)

    error = await unknown(gateway)

    assert error.failure_code == failure_code
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

    error = await unknown(gateway)

    assert error.failure_code == "bank_timeout"


async def test_timeout_then_success_is_approved(make_gateway: GatewayFactory) -> None:
    bank = Bank(httpx.ReadTimeout("slow"), ok(APPROVED))
    gateway = make_gateway(bank, max_retries=1)

    result = await gateway.authorize(authorization())

    assert result.approved
    assert bank.calls == 2


@pytest.mark.parametrize(
    ("answers", "failure_code"),
    [
        ((httpx.ReadTimeout("slow"), httpx.ConnectError("refused")), "bank_timeout"),
        ((status(500), httpx.ConnectError("refused")), "processing_error"),
        (
            (httpx.ConnectError("refused"), httpx.ReadError("reset"), httpx.ConnectError("r")),
            "connection_lost",
        ),
        ((status(503), status(409)), "processing_error"),
        ((httpx.ReadTimeout("slow"), status(400)), "bank_timeout"),
    ],
    ids=[
        "timeout-then-refused",
        "500-then-refused",
        "refused-lost-refused",
        "503-then-409",
        "timeout-then-400",
    ],
)
async def test_once_maybe_received_the_call_stays_unknown(
    make_gateway: GatewayFactory, answers: tuple[httpx.Response | Exception, ...], failure_code: str
) -> None:
    bank = Bank(*answers)
    gateway = make_gateway(bank, max_retries=len(answers) - 1)

    error = await unknown(gateway)

    assert error.failure_code == failure_code
    assert bank.calls == len(answers)


# -- status lookups ------------------------------------------------------------------------------


async def test_authorization_status_asks_the_lookup_endpoint(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(ok(APPROVED))
    gateway = make_gateway(bank)

    result = await gateway.authorization_status("txn_look/up 1", correlation_id="corr-l")

    assert result == AuthorizationResult(approved=True, authorization_code="AUTH42")
    (sent,) = bank.requests
    assert sent.method == "GET"
    assert sent.url.raw_path == b"/v1/authorizations/txn_look%2Fup%201"
    assert sent.headers["X-Correlation-ID"] == "corr-l"
    assert "Idempotency-Key" not in sent.headers
    assert not sent.content


async def test_authorization_status_reads_a_decline(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(Bank(ok(DECLINED)))

    result = await gateway.authorization_status("txn_1")

    assert result == AuthorizationResult(
        approved=False,
        decline_code="insufficient_funds",
        decline_message="The card has insufficient funds.",
    )


async def test_no_record_is_none(make_gateway: GatewayFactory) -> None:
    bank = Bank(httpx.Response(404, json={"error": "no_such_record"}))
    gateway = make_gateway(bank)

    assert await gateway.authorization_status("txn_none") is None
    assert await gateway.refund_status("re_none") is None
    assert bank.calls == 2
    assert [request.url.path for request in bank.requests] == [
        "/v1/authorizations/txn_none",
        "/v1/refunds/re_none",
    ]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404),  # MockServer's answer when nothing matches: a wrong URL
        httpx.Response(404, text="<html>Not Found</html>"),  # a proxy's page
        httpx.Response(404, json={"error": "something_else"}),
    ],
    ids=["bare-404", "html-404", "other-error-404"],
)
async def test_a_404_that_is_not_the_protocol_says_nothing_about_the_record(
    make_gateway: GatewayFactory, answer: httpx.Response
) -> None:
    """Only the bank's own "no record" may let the reconciler fail a payment."""
    gateway = make_gateway(Bank(answer))

    with pytest.raises(BankAnswerUnknown) as caught:
        await gateway.authorization_status("txn_none")
    assert caught.value.failure_code == "processing_error"


async def test_refund_status_reads_both_outcomes(make_gateway: GatewayFactory) -> None:
    bank = Bank(
        ok({"status": "succeeded", "reference": "bank_re_1"}),
        ok({"status": "failed", "failure_code": "account_closed"}),
    )
    gateway = make_gateway(bank)

    assert await gateway.refund_status("re_a") == RefundResult(
        succeeded=True, bank_reference="bank_re_1"
    )
    assert await gateway.refund_status("re_b") == RefundResult(
        succeeded=False, failure_code="account_closed"
    )


@pytest.mark.parametrize(
    ("answer", "error_type", "failure_code", "calls"),
    [
        (status(500), BankAnswerUnknown, "processing_error", 3),
        (httpx.ReadTimeout("slow"), BankAnswerUnknown, "bank_timeout", 3),
        (
            ok({"status": "approved", "authorization_code": "A\x00"}),
            BankAnswerUnknown,
            "processing_error",
            1,
        ),
        (ok({"status": "pending"}), BankAnswerUnknown, "processing_error", 1),
        (httpx.ConnectError("refused"), BankUnavailable, "bank_unreachable", 3),
        (status(400), BankUnavailable, "processing_error", 1),
    ],
    ids=["500", "timeout", "unstorable-code", "unknown-status", "refused", "400"],
)
async def test_a_lookup_that_cannot_answer_raises_like_any_call(
    make_gateway: GatewayFactory,
    answer: httpx.Response | Exception,
    error_type: type[BankError],
    failure_code: str,
    calls: int,
) -> None:
    bank = Bank(answer)
    gateway = make_gateway(bank, max_retries=2)

    with pytest.raises(error_type) as caught:
        await gateway.authorization_status("txn_1")

    assert caught.value.failure_code == failure_code
    assert bank.calls == calls


async def test_a_lookup_retries_then_answers(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(503), httpx.ReadTimeout("slow"), ok({"status": "succeeded"}))
    gateway = make_gateway(bank, max_retries=2)

    assert await gateway.refund_status("re_1") == RefundResult(succeeded=True)
    assert bank.calls == 3


# -- circuit breaker: one outcome per logical call -------------------------------------------------


async def test_one_logical_call_counts_once_however_many_attempts(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(status(500))
    gateway = make_gateway(bank, max_retries=5, breaker_fail_max=2, breaker_reset_s=30)

    error = await unknown(gateway)

    assert error.failure_code == "processing_error"
    assert bank.calls == 6, "every retry is made"
    assert gateway.circuit_state == "closed", "six failed attempts are one failed call"


async def test_failures_of_one_card_between_approvals_never_open_the_circuit(
    make_gateway: GatewayFactory,
) -> None:
    def bank(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["transaction_id"].startswith("txn_error"):
            return status(500)
        return ok(APPROVED)

    gateway = make_gateway(bank, max_retries=2, breaker_fail_max=2, breaker_reset_s=30)

    for round_ in range(10):
        with pytest.raises(BankAnswerUnknown):
            await gateway.authorize(authorization(f"txn_error_{round_}"))
        assert (await gateway.authorize(authorization(f"txn_ok_{round_}"))).approved

    assert gateway.circuit_state == "closed"


async def test_fail_max_unknown_outcomes_open_the_circuit_then_it_fails_fast(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(status(500))
    gateway = make_gateway(bank, max_retries=2, breaker_fail_max=3, breaker_reset_s=30)

    for _ in range(2):
        assert (await unknown(gateway)).failure_code == "processing_error"
        assert gateway.circuit_state == "closed"
    # The call that trips the breaker reports what happened to it.
    assert (await unknown(gateway)).failure_code == "processing_error"
    assert gateway.circuit_state == "open"
    assert bank.calls == 9

    error = await not_received(gateway)

    assert error.failure_code == "circuit_open"
    assert 1 <= error.retry_after_s <= 30
    assert bank.calls == 9, "an open circuit must not call the bank"
    for lookup in (gateway.authorization_status("txn_1"), gateway.refund_status("re_1")):
        with pytest.raises(BankUnavailable) as caught:
            await lookup
        assert caught.value.failure_code == "circuit_open"
    with pytest.raises(BankUnavailable):
        await gateway.refund(refund())
    assert bank.calls == 9


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok({"status": "pending"})],
    ids=["unreachable", "timeout", "malformed"],
)
async def test_every_kind_of_failure_counts(
    make_gateway: GatewayFactory, failure: httpx.Response | Exception
) -> None:
    gateway = make_gateway(Bank(failure), max_retries=1, breaker_fail_max=2, breaker_reset_s=30)

    await authorize_failure(gateway)
    await authorize_failure(gateway)

    assert gateway.circuit_state == "open"


async def test_lookups_go_through_the_same_breaker(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(500))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=2, breaker_reset_s=30)

    for _ in range(2):
        with pytest.raises(BankAnswerUnknown):
            await gateway.authorization_status("txn_1")

    assert gateway.circuit_state == "open"
    assert (await not_received(gateway)).failure_code == "circuit_open"


@pytest.mark.parametrize(
    ("answer", "lookup"),
    [
        (ok(DECLINED), False),
        (httpx.Response(404, json={"error": "no_such_record"}), True),
    ],
    ids=["decline", "no-record"],
)
async def test_answers_reset_the_failure_count(
    make_gateway: GatewayFactory, answer: httpx.Response, lookup: bool
) -> None:
    bank = Bank(status(500), answer, status(500))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=2, breaker_reset_s=30)

    await unknown(gateway)
    if lookup:
        assert await gateway.authorization_status("txn_1") is None
    else:
        assert not (await gateway.authorize(authorization())).approved
    await unknown(gateway)

    assert gateway.circuit_state == "closed"


async def test_a_client_error_neither_counts_nor_resets(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(500), status(422), status(422), status(500))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=2, breaker_reset_s=30)

    await unknown(gateway)
    assert (await not_received(gateway)).failure_code == "processing_error"
    assert (await not_received(gateway)).failure_code == "processing_error"
    assert gateway.circuit_state == "closed"
    await unknown(gateway)

    assert gateway.circuit_state == "open", "the 4xx in between did not reset the count"


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


async def test_circuit_half_opens_after_the_reset_timeout_and_closes_on_success(
    make_gateway: GatewayFactory,
) -> None:
    bank = Bank(status(500), ok(APPROVED))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=1, breaker_reset_s=0.05)

    await unknown(gateway)
    assert gateway.circuit_state == "open"
    await asyncio.sleep(0.08)
    assert gateway.circuit_state == "half_open"

    result = await gateway.authorize(authorization())

    assert result.approved
    assert gateway.circuit_state == "closed"
    assert bank.calls == 2


async def test_a_no_record_lookup_is_a_successful_trial(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(500), httpx.Response(404, json={"error": "no_such_record"}))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=1, breaker_reset_s=0.05)

    await unknown(gateway)
    await asyncio.sleep(0.08)

    assert await gateway.refund_status("re_1") is None
    assert gateway.circuit_state == "closed"


async def test_failed_trial_call_reopens_the_circuit(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(500))
    gateway = make_gateway(bank, max_retries=1, breaker_fail_max=1, breaker_reset_s=0.05)

    await unknown(gateway)
    await asyncio.sleep(0.08)

    trial = await unknown(gateway)

    assert trial.failure_code == "processing_error"
    assert gateway.circuit_state == "open"
    assert (await not_received(gateway)).failure_code == "circuit_open"
    assert bank.calls == 4


async def test_retries_stop_when_other_calls_open_the_circuit(
    make_gateway: GatewayFactory,
) -> None:
    async def bank(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["transaction_id"] == "txn_slow":
            slow_attempts.append(request)
            await asyncio.sleep(0.1)
        return status(500)

    slow_attempts: list[httpx.Request] = []
    gateway = make_gateway(bank, max_retries=5, breaker_fail_max=1, breaker_reset_s=30)

    slow = asyncio.create_task(gateway.authorize(authorization("txn_slow")))
    await asyncio.sleep(0.01)
    with pytest.raises(BankAnswerUnknown):
        await gateway.authorize(authorization("txn_fast"))
    assert gateway.circuit_state == "open"
    with pytest.raises(BankAnswerUnknown) as caught:
        await slow

    assert caught.value.failure_code == "processing_error"
    assert len(slow_attempts) == 1, "no retry into a circuit other calls opened"


async def test_a_success_resets_the_failure_count(make_gateway: GatewayFactory) -> None:
    bank = Bank(status(500), ok(APPROVED), status(500), ok(APPROVED))
    gateway = make_gateway(bank, max_retries=0, breaker_fail_max=2)

    await unknown(gateway)
    await gateway.authorize(authorization())
    await unknown(gateway)

    assert gateway.circuit_state == "closed"


# -- health probe --------------------------------------------------------------------------


async def test_ping_is_true_when_the_bank_answers_health(make_gateway: GatewayFactory) -> None:
    bank = Bank(ok({"status": "ok"}))
    gateway = make_gateway(bank)

    assert await gateway.ping()
    assert bank.requests[0].method == "GET"
    assert bank.requests[0].url.path == "/health"


@pytest.mark.parametrize(
    "answer",
    [status(503), httpx.ConnectError("refused"), aiohttp.ServerDisconnectedError()],
    ids=["503", "refused", "bare-aiohttp-error"],
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
    await unknown(gateway)

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
        caused_by(httpx.ConnectTimeout("t"), aiohttp.ServerDisconnectedError()),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        httpx.Response(200, content=f'{{"echo": "{CARD_NUMBER}", '.encode()),
        ok({"status": "approved", "authorization_code": f"{CARD_NUMBER}\x00"}),
    ],
    ids=[
        "500",
        "400",
        "timeout",
        "refused",
        "dropped",
        "bare-aiohttp",
        "malformed-echo",
        "unstorable-echo",
    ],
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
        assert not isinstance(link, httpx.HTTPError | aiohttp.ClientError), (
            "transport errors hold the request body"
        )
        text = f"{link!s} {link!r} {vars(link)!r}"
        assert CARD_NUMBER not in text
        assert f"'{CVV}'" not in text
        assert f'"{CVV}"' not in text
    for record in caplog.records:
        rendered = f"{record.getMessage()} {vars(record)!r}"
        assert CARD_NUMBER not in rendered
        assert f'"{CVV}"' not in rendered
    assert any(record.name == "app.adapters.bank.http" for record in caplog.records)
