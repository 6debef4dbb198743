"""The bank over HTTP: one pooled client, retries with backoff, and a circuit breaker.

Wire protocol (ours; MockServer simulates it in development):

- ``POST /v1/authorizations`` with the card, amount and ``capture`` (bool),
  ``Idempotency-Key: <transaction_id>`` → 200 ``{"status": "approved",
  "authorization_code": ...}`` or 200 ``{"status": "declined", "decline_code": ...,
  "decline_message": ...}``;
- ``POST /v1/refunds`` with ``Idempotency-Key: <refund_id>`` → 200
  ``{"status": "succeeded", "reference": ...}`` or 200 ``{"status": "failed",
  "failure_code": ..., "reference": ...}``;
- ``GET /v1/authorizations/{transaction_id}`` (the status lookup) → 200 with the same body
  the ``POST`` answered (approved or declined), or 404 ``{"error": "no_such_record"}`` when
  the bank has no record of that transaction;
- ``GET /v1/refunds/{refund_id}`` → 200 with the same body the refund ``POST`` answered,
  or 404 ``{"error": "no_such_record"}`` when the bank has no record of that refund (a
  404 without that body -- a wrong URL, a proxy's page -- is not an answer: unknown);
- ``POST /v1/captures`` (``capture_id``, ``transaction_id``, ``authorization_code``,
  ``amount_minor``, ``currency``) and ``POST /v1/voids`` (``void_id``, ``transaction_id``,
  ``authorization_code``), ``Idempotency-Key: <capture_id | void_id>`` → 200
  ``{"status": "succeeded"}`` or ``{"status": "failed", "failure_code": ...}``; their
  lookups ``GET /v1/captures/{capture_id}`` and ``GET /v1/voids/{void_id}`` answer the
  same, or 404 ``{"error": "no_such_record"}``;
- ``GET /health`` → 200.

Every request carries ``X-Correlation-ID``. Ids in lookup paths are percent-encoded.

How a logical call (all its attempts) ends:

- an answer: an approval, a decline, a refund result, or a lookup's 404 "no record";
- :class:`~app.domain.errors.BankUnavailable` when the bank **certainly did not receive**
  the request: the circuit is open (nothing attempted), every attempt failed before the
  request was sent (connection refused, DNS failure, connect or pool timeout), or the bank
  answered 4xx (it refused the request itself and did nothing);
- :class:`~app.services.ports.bank.BankAnswerUnknown` when **any** attempt may have
  reached the bank and no usable answer came back: a read/write timeout after connecting
  (``bank_timeout``), a 5xx (``processing_error``), the connection dropped after sending
  (``connection_lost``), or an answer that is not the protocol, including values the
  database could not store (``processing_error``).

Timeouts, 5xx and connection failures are retried (safe: the bank deduplicates on the
``Idempotency-Key``, the same on every attempt of one call); 4xx and malformed answers are
not. The circuit breaker counts exactly one outcome per logical call, after its retries:
a failure when the bank looked unwell (timeouts, 5xx, connection failures, malformed
answers), a success when it answered (a decline and a "no record" are answers), and
nothing for a 4xx rejection. Transport exceptions never leave this module, and card
number and CVV never appear in a log line or an exception.

The client is httpx (its API, timeouts and exceptions, and the tracer's httpx integration,
which carries the trace context to the bank) over aiohttp's connection pool
(``httpx-aiohttp``): httpx's own transport cost about 4 ms of CPU per call under
concurrency on the reference machine, this one under 1 ms (see docs/performance.md).
``httpx-aiohttp`` maps aiohttp's exceptions onto httpx's coarsely (a refused connection,
a DNS failure, a pool timeout *and* a connection the server dropped after receiving the
request all arrive as :class:`httpx.ConnectTimeout`), so :func:`_classify_transport_error`
decides from the aiohttp exception it chains as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import backoff
import httpx
from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerState
from aiobreaker.listener import CircuitBreakerListener
from aiobreaker.storage.memory import CircuitMemoryStorage
from httpx_aiohttp import AiohttpTransport

from app.domain.cards import DECLINE_MESSAGES
from app.domain.errors import BankUnavailable
from app.services.ports.bank import (
    AuthorizationRequest,
    AuthorizationResult,
    BankAnswerUnknown,
    BankCaptureRequest,
    BankRefundRequest,
    BankVoidRequest,
    OperationResult,
    RefundResult,
)
from app.services.ports.metrics import Metrics, NoMetrics

logger = logging.getLogger(__name__)

AUTHORIZATIONS_PATH: Final = "/v1/authorizations"
REFUNDS_PATH: Final = "/v1/refunds"
CAPTURES_PATH: Final = "/v1/captures"
VOIDS_PATH: Final = "/v1/voids"
HEALTH_PATH: Final = "/health"

BACKOFF_FACTOR_S: Final = 0.1
"""First retry waits up to this long; each further retry doubles it, up to backoff_max_s."""

PING_TIMEOUT_S: Final = 1.0
"""A health probe should not hold a readiness check for longer than this."""

# What the bank returns must fit the columns it is stored in; these mirror the column
# sizes of transactions.authorization_code/decline_code/decline_message/failure_code and
# refunds.bank_reference/failure_code (app/adapters/db/models.py).
AUTHORIZATION_CODE_MAX_LENGTH: Final = 64
DECLINE_CODE_MAX_LENGTH: Final = 64
DECLINE_MESSAGE_MAX_LENGTH: Final = 255
FAILURE_CODE_MAX_LENGTH: Final = 64
BANK_REFERENCE_MAX_LENGTH: Final = 64

REFUND_FAILED: Final = "refund_failed"
"""A failed refund's ``failure_code`` when the bank gave none we can store."""

# Control characters (PostgreSQL text refuses NUL) and lone surrogates (UTF-8 cannot
# encode them; JSON can carry them as \\ud800 escapes).
_UNSTORABLE_CATEGORIES: Final = frozenset({"Cc", "Cs"})


class _AttemptFailedError(Exception):
    """One attempt got no answer (5xx, timeout, connection failure): retried.

    Carries no request data: the transport exception (which holds the request body, card
    number included) is dropped before this is raised.

    Attributes:
        failure_code: ``bank_unreachable`` (not sent), ``bank_timeout``, ``connection_lost``
            or ``processing_error``.
        maybe_sent: Whether the request may have reached the bank.
        status_code: The HTTP status, when the bank answered one.
    """

    def __init__(
        self, failure_code: str, *, maybe_sent: bool, status_code: int | None = None
    ) -> None:
        self.failure_code = failure_code
        self.maybe_sent = maybe_sent
        self.status_code = status_code
        super().__init__(failure_code if status_code is None else f"{failure_code} ({status_code})")


class _BankRejectedError(Exception):
    """The bank refused the request itself (4xx): not retried, not counted by the breaker."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(f"bank answered HTTP {status_code}")


class _MalformedAnswerError(Exception):
    """An answer that is not what the protocol promises, or that could not be stored."""


class _BankUnwellError(Exception):
    """Reported to the circuit breaker for a logical call that ended in a failure."""


@dataclass(slots=True)
class _BankCall:
    """One logical call to the bank, across all its attempts."""

    operation: str
    method: str
    path: str
    reference: str
    headers: dict[str, str] = field(repr=False)
    payload: dict[str, Any] | None = field(default=None, repr=False)
    no_record_is_an_answer: bool = False
    attempts: int = 0
    maybe_sent: bool = False
    """Whether any attempt so far may have reached the bank."""
    unknown_code: str | None = None
    """Failure code of the last attempt that may have reached the bank."""


class HttpBankGateway:
    """A :class:`~app.services.ports.bank.BankGateway` that talks HTTP to the bank."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout_s: float,
        connect_timeout_s: float,
        max_retries: int,
        backoff_max_s: float,
        breaker_fail_max: int,
        breaker_reset_s: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Create the gateway and its connection pool (no connection is opened yet).

        Args:
            base_url: The bank API root, e.g. ``http://127.0.0.1:1080``.
            timeout_s: Read/write/pool timeout of one attempt.
            connect_timeout_s: TCP connect timeout of one attempt.
            max_retries: Retries after the first attempt for technical failures.
            backoff_max_s: Upper bound of one wait between attempts (before jitter).
            breaker_fail_max: Consecutive failed logical calls that open the circuit.
            breaker_reset_s: Seconds the circuit stays open before a trial call.
            max_connections: Size of the connection pool.
            transport: Replaces the network transport (tests use ``httpx.MockTransport``).
        """
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._breaker_reset = timedelta(seconds=breaker_reset_s)
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=limits,
            transport=transport or AiohttpTransport(limits=limits),
            headers={"Accept": "application/json"},
        )
        # Our own storage object, so the open-since time can be read without reaching
        # into the breaker's private attributes.
        self._breaker_storage = CircuitMemoryStorage(CircuitBreakerState.CLOSED)
        self._breaker = CircuitBreaker(
            fail_max=breaker_fail_max,
            timeout_duration=self._breaker_reset,
            state_storage=self._breaker_storage,
            name="bank",
        )
        self._metrics: Metrics = NoMetrics()
        self._send_with_retries = backoff.on_exception(
            backoff.expo,
            _AttemptFailedError,
            max_tries=1 + max_retries,
            # backoff stops retrying once an attempt that started after max_time fails, so
            # a large BANK_MAX_RETRIES cannot hold a client for minutes.
            max_time=2 * timeout_s + backoff_max_s,
            jitter=backoff.full_jitter,
            # Other calls opened the circuit meanwhile: stop adding load to an unwell bank.
            giveup=self._circuit_opened_meanwhile,
            on_backoff=self._log_retry,
            logger=None,
            factor=BACKOFF_FACTOR_S,
            max_value=backoff_max_s,
        )(self._send_once)

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        """Authorize (and capture unless ``request.capture`` is false); a decline is an answer.

        Raises:
            BankUnavailable: The bank certainly did not receive the request (circuit open,
                unreachable, or it refused the request with a 4xx).
            BankAnswerUnknown: It may have, and no usable answer came back.
        """
        call = _BankCall(
            operation="authorization",
            method="POST",
            path=AUTHORIZATIONS_PATH,
            reference=request.transaction_id,
            payload={
                "transaction_id": request.transaction_id,
                "merchant_id": request.merchant_id,
                "amount_minor": request.amount_minor,
                "currency": request.currency,
                "capture": request.capture,
                "card": {
                    "number": request.card_number,
                    "cvv": request.cvv,
                    "exp_month": request.expiry_month,
                    "exp_year": request.expiry_year,
                    "holder_name": request.cardholder_name,
                },
            },
            headers=self._headers(request.correlation_id, idempotency_key=request.transaction_id),
        )
        return self._answered(call, await self._call(call, _authorization_result))

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        """Refund an amount of a captured authorization; a failed refund is an answer.

        Raises:
            BankUnavailable | BankAnswerUnknown: As :meth:`authorize`.
        """
        call = _BankCall(
            operation="refund",
            method="POST",
            path=REFUNDS_PATH,
            reference=request.refund_id,
            payload={
                "refund_id": request.refund_id,
                "transaction_id": request.transaction_id,
                "authorization_code": request.authorization_code,
                "amount_minor": request.amount_minor,
                "currency": request.currency,
            },
            headers=self._headers(request.correlation_id, idempotency_key=request.refund_id),
        )
        return self._answered(call, await self._call(call, _refund_result))

    async def capture(self, request: BankCaptureRequest) -> OperationResult:
        """Capture (part of) an authorization; a refused capture is an answer.

        Raises:
            BankUnavailable | BankAnswerUnknown: As :meth:`authorize`.
        """
        call = _BankCall(
            operation="capture",
            method="POST",
            path=CAPTURES_PATH,
            reference=request.capture_id,
            payload={
                "capture_id": request.capture_id,
                "transaction_id": request.transaction_id,
                "authorization_code": request.authorization_code,
                "amount_minor": request.amount_minor,
                "currency": request.currency,
            },
            headers=self._headers(request.correlation_id, idempotency_key=request.capture_id),
        )
        return self._answered(call, await self._call(call, _operation_result))

    async def void(self, request: BankVoidRequest) -> OperationResult:
        """Release an authorization; a refused void is an answer.

        Raises:
            BankUnavailable | BankAnswerUnknown: As :meth:`authorize`.
        """
        call = _BankCall(
            operation="void",
            method="POST",
            path=VOIDS_PATH,
            reference=request.void_id,
            payload={
                "void_id": request.void_id,
                "transaction_id": request.transaction_id,
                "authorization_code": request.authorization_code,
            },
            headers=self._headers(request.correlation_id, idempotency_key=request.void_id),
        )
        return self._answered(call, await self._call(call, _operation_result))

    async def authorization_status(
        self, transaction_id: str, *, correlation_id: str | None = None
    ) -> AuthorizationResult | None:
        """What the bank decided for an authorization; ``None`` when it has no record.

        Raises:
            BankUnavailable | BankAnswerUnknown: The bank could not say; ask again later.
        """
        return await self._lookup(
            "authorization", AUTHORIZATIONS_PATH, transaction_id, correlation_id,
            _authorization_result,
        )  # fmt: skip

    async def refund_status(
        self, refund_id: str, *, correlation_id: str | None = None
    ) -> RefundResult | None:
        """What the bank decided for a refund; ``None`` when it has no record."""
        return await self._lookup("refund", REFUNDS_PATH, refund_id, correlation_id, _refund_result)

    async def capture_status(
        self, capture_id: str, *, correlation_id: str | None = None
    ) -> OperationResult | None:
        """What the bank decided for a capture; ``None`` when it has no record."""
        return await self._lookup(
            "capture", CAPTURES_PATH, capture_id, correlation_id, _operation_result
        )

    async def void_status(
        self, void_id: str, *, correlation_id: str | None = None
    ) -> OperationResult | None:
        """What the bank decided for a void; ``None`` when it has no record."""
        return await self._lookup("void", VOIDS_PATH, void_id, correlation_id, _operation_result)

    async def _lookup[T](
        self,
        operation: str,
        path: str,
        reference: str,
        correlation_id: str | None,
        parse: Callable[[dict[str, Any]], T],
    ) -> T | None:
        call = _BankCall(
            operation=f"{operation}_status",
            method="GET",
            path=f"{path}/{quote(reference, safe='')}",
            reference=reference,
            headers=self._headers(correlation_id),
            no_record_is_an_answer=True,
        )
        return await self._call(call, parse)

    def report_metrics_to(self, metrics: Metrics) -> None:
        """Report each call's latency and every circuit state change to ``metrics``."""
        self._metrics = metrics
        self._breaker.add_listener(_CircuitStateReporter(metrics))
        metrics.circuit_state(self.circuit_state)

    @property
    def circuit_state(self) -> str:
        """``closed``, ``open`` or ``half_open``.

        aiobreaker moves an open circuit to half-open only when the next call arrives;
        once the reset timeout has elapsed that call will be a trial, so it is reported
        as ``half_open`` already.
        """
        state = self._breaker.current_state
        if state is CircuitBreakerState.CLOSED:
            return "closed"
        if state is CircuitBreakerState.HALF_OPEN or self._open_for_s() is None:
            return "half_open"
        return "open"

    async def ping(self) -> bool:
        """Whether ``GET /health`` answers 200 (short timeout, no retry, no breaker)."""
        try:
            response = await self._client.get(
                HEALTH_PATH,
                timeout=httpx.Timeout(
                    min(PING_TIMEOUT_S, self._timeout_s), connect=self._connect_timeout_s
                ),
            )
        except (httpx.HTTPError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.info("bank health probe failed", extra={"error_type": type(exc).__name__})
            return False
        return response.status_code == httpx.codes.OK

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    # -- one logical call: breaker gate, attempts with retries, one breaker outcome ------

    async def _call[T](self, call: _BankCall, parse: Callable[[dict[str, Any]], T]) -> T | None:
        started = time.perf_counter()
        outcome = "processing_error"
        try:
            result = await self._exchange(call, parse)
            outcome = "answered" if result is not None else "no_record"
            return result
        except (BankUnavailable, BankAnswerUnknown) as exc:
            outcome = exc.failure_code or outcome
            raise
        finally:
            self._metrics.bank_call(
                operation=call.operation, outcome=outcome, seconds=time.perf_counter() - started
            )

    def _answered[T](self, call: _BankCall, result: T | None) -> T:
        if result is None:  # pragma: no cover - only lookups take a 404 as an answer
            raise self._malformed(call, "no record")
        return result

    async def _exchange[T](self, call: _BankCall, parse: Callable[[dict[str, Any]], T]) -> T | None:
        self._refuse_if_open(call)
        try:
            response = await self._send_with_retries(call)
        except _AttemptFailedError as exc:
            await self._record(healthy=False)
            raise self._no_answer(call, exc.failure_code, exc.status_code) from None
        except _BankRejectedError as exc:
            # The bank answered and said no: neither a sign of health nor of trouble.
            raise self._no_answer(call, "processing_error", exc.status_code) from None
        if response.status_code == httpx.codes.NOT_FOUND and _says_no_record(response):
            await self._record(healthy=True)  # a lookup's answer: the bank has no record
            return None
        try:
            result = self._parse(response, parse)
        except _MalformedAnswerError as exc:
            problem = str(exc)
        else:
            await self._record(healthy=True)
            return result
        # Raised here, outside the except block: a JSONDecodeError carries the whole body.
        await self._record(healthy=False)
        raise self._malformed(call, problem)

    @staticmethod
    def _parse[T](response: httpx.Response, parse: Callable[[dict[str, Any]], T]) -> T:
        if not response.is_success:
            raise _MalformedAnswerError(f"unexpected HTTP status {response.status_code}")
        try:
            answer: object = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise _MalformedAnswerError("body is not a JSON object")
        return parse(answer)

    async def _send_once(self, call: _BankCall) -> httpx.Response:
        call.attempts += 1
        # Failures are raised after the except blocks: an httpx exception holds the request,
        # card number included, and must not survive as the __context__ of ours.
        failure: tuple[str, bool] | None = None
        try:
            response = await self._client.request(
                call.method, call.path, json=call.payload, headers=call.headers
            )
        except (httpx.HTTPError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            failure = _classify_transport_error(exc)
        if failure is not None:
            failure_code, maybe_sent = failure
            raise self._attempt_failed(call, failure_code, maybe_sent=maybe_sent)
        status = response.status_code
        if response.is_server_error:
            raise self._attempt_failed(
                call, "processing_error", maybe_sent=True, status_code=status
            )
        if response.is_client_error and not (
            status == httpx.codes.NOT_FOUND and call.no_record_is_an_answer
        ):
            raise _BankRejectedError(status)
        return response

    @staticmethod
    def _attempt_failed(
        call: _BankCall, failure_code: str, *, maybe_sent: bool, status_code: int | None = None
    ) -> _AttemptFailedError:
        if maybe_sent:
            call.maybe_sent = True
            call.unknown_code = failure_code
        return _AttemptFailedError(failure_code, maybe_sent=maybe_sent, status_code=status_code)

    # -- the circuit breaker: one gate before, one outcome after each logical call -------

    def _refuse_if_open(self, call: _BankCall) -> None:
        if self._breaker.current_state is not CircuitBreakerState.OPEN:
            return
        if self._open_for_s() is not None:
            raise self._circuit_open(call)
        # The reset timeout has elapsed: this call is the trial.
        self._breaker.half_open()

    def _circuit_opened_meanwhile(self, _failure: Exception) -> bool:
        return (
            self._breaker.current_state is CircuitBreakerState.OPEN
            and self._open_for_s() is not None
        )

    async def _record(self, *, healthy: bool) -> None:
        """Count one logical call's outcome (aiobreaker: a success resets the count)."""
        # _BankUnwellError is the failure we reported; CircuitBreakerError says it opened
        # the circuit, or that other calls opened it while this one was in flight (then
        # this outcome is not counted).
        with contextlib.suppress(_BankUnwellError, CircuitBreakerError):
            await self._breaker.call_async(_healthy if healthy else _unwell)

    # -- errors and logs (transaction/refund id, status code, attempt; never card data) ---

    @staticmethod
    def _headers(
        correlation_id: str | None, *, idempotency_key: str | None = None
    ) -> dict[str, str]:
        headers = {"X-Correlation-ID": correlation_id or str(uuid.uuid4())}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    @staticmethod
    def _log_retry(details: Any) -> None:
        call: _BankCall = details["args"][0]
        failure = details.get("exception")
        logger.warning(
            "bank call failed, retrying",
            extra={
                "bank_operation": call.operation,
                "bank_reference": call.reference,
                "attempt": call.attempts,
                "failure_code": getattr(failure, "failure_code", None),
                "status_code": getattr(failure, "status_code", None),
                "maybe_sent": getattr(failure, "maybe_sent", None),
                "retry_in_s": round(details.get("wait", 0.0), 3),
            },
        )

    def _no_answer(
        self, call: _BankCall, failure_code: str, status_code: int | None
    ) -> BankUnavailable | BankAnswerUnknown:
        """The call ended without an answer: unknown if any attempt may have reached the bank."""
        error: BankUnavailable | BankAnswerUnknown
        if call.maybe_sent:
            error = BankAnswerUnknown(call.unknown_code or failure_code)
        else:
            error = BankUnavailable(failure_code=failure_code)
        logger.error(
            "bank call failed",
            extra={
                "bank_operation": call.operation,
                "bank_reference": call.reference,
                "attempt": call.attempts,
                "failure_code": error.failure_code,
                "last_failure_code": failure_code,
                "status_code": status_code,
                "bank_outcome": "unknown" if call.maybe_sent else "not_received",
                "circuit": self.circuit_state,
            },
        )
        return error

    def _malformed(self, call: _BankCall, problem: str) -> BankAnswerUnknown:
        logger.error(
            "bank answer malformed",
            extra={
                "bank_operation": call.operation,
                "bank_reference": call.reference,
                "attempt": call.attempts,
                "problem": problem,
                "bank_outcome": "unknown",
            },
        )
        return BankAnswerUnknown("processing_error")

    def _circuit_open(self, call: _BankCall) -> BankUnavailable:
        remaining = self._open_for_s()
        retry_after = max(1, math.ceil(remaining)) if remaining is not None else 1
        logger.warning(
            "bank circuit open, call not attempted",
            extra={"bank_operation": call.operation, "bank_reference": call.reference},
        )
        return BankUnavailable(failure_code="circuit_open", retry_after_s=retry_after)

    def _open_for_s(self) -> float | None:
        """Seconds until an open circuit allows a trial call, or None if it already does."""
        opened_at: datetime | None = self._breaker_storage.opened_at
        if opened_at is None:
            return None
        # aiobreaker stamps opened_at with naive UTC (datetime.utcnow()).
        now = datetime.now(UTC).replace(tzinfo=None)
        remaining = (opened_at + self._breaker_reset - now).total_seconds()
        return remaining if remaining > 0 else None


async def _healthy() -> None:
    return None


async def _unwell() -> None:
    raise _BankUnwellError


# aiohttp exceptions (chained by httpx-aiohttp as __cause__) raised before the request was
# written: the bank certainly did not receive it. ClientConnectorError covers refused
# connections, DNS failures and TLS handshake failures; ConnectionTimeoutError covers the
# connect timeout and the wait for a pooled connection.
_AIOHTTP_NOT_SENT: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)

# Without an aiohttp cause (another transport, or a test's httpx.MockTransport), httpx's
# own classes say it: these are raised before the request is sent.
_HTTPX_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _classify_transport_error(exc: BaseException) -> tuple[str, bool]:
    """``(failure_code, maybe_sent)`` for an exception from one HTTP attempt.

    Verified against MockServer through ``AiohttpTransport`` (httpx-aiohttp 0.2, aiohttp
    3.14): a refused connection and a DNS failure arrive as ``httpx.ConnectTimeout`` from
    ``ClientConnectorError``; a connect or pool timeout as ``httpx.ConnectTimeout`` from
    ``ConnectionTimeoutError``; a read timeout as ``httpx.ReadTimeout`` from
    ``SocketTimeoutError``; a connection dropped before the response as
    ``httpx.ConnectTimeout`` from ``ServerDisconnectedError``; one dropped inside the body
    as ``httpx.ReadError`` from ``ClientPayloadError``; bytes that are not HTTP as a bare
    ``aiohttp.ClientResponseError``. Anything not known to be "not sent" counts as maybe
    sent: the reconciler can settle an unknown outcome, nobody can undo a wrong "failed".
    """
    cause = exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        if isinstance(cause, _AIOHTTP_NOT_SENT):
            return "bank_unreachable", False
        if isinstance(cause, aiohttp.ServerTimeoutError):
            return "bank_timeout", True
        if isinstance(cause, aiohttp.ClientResponseError):
            return "processing_error", True  # the answer was not HTTP
        return "connection_lost", True
    if isinstance(exc, _HTTPX_NOT_SENT):
        return "bank_unreachable", False
    if isinstance(exc, httpx.TimeoutException | TimeoutError | asyncio.TimeoutError):
        return "bank_timeout", True
    return "connection_lost", True


_STATE_NAMES: Final = {
    CircuitBreakerState.CLOSED: "closed",
    CircuitBreakerState.OPEN: "open",
    CircuitBreakerState.HALF_OPEN: "half_open",
}


class _CircuitStateReporter(CircuitBreakerListener):  # type: ignore[misc]
    """Sends the circuit state to the metrics whenever the breaker changes state."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        # aiobreaker notifies before it stores the new state: read it from ``new``.
        self._metrics.circuit_state(_STATE_NAMES.get(new.state, "closed"))


# -- answers: parse and make sure the database can store them --------------------------------


def _storable(text: str) -> bool:
    return not any(unicodedata.category(char) in _UNSTORABLE_CATEGORIES for char in text)


def _without_unstorable(text: str) -> str:
    return "".join(
        char for char in text if unicodedata.category(char) not in _UNSTORABLE_CATEGORIES
    )


def _code(value: object, max_length: int) -> str | None:
    """``value`` if it is a non-empty storable string of at most ``max_length``, else None."""
    if isinstance(value, str) and value and len(value) <= max_length and _storable(value):
        return value
    return None


def _cleaned(value: object, max_length: int) -> str | None:
    """``value`` without unstorable characters, cut to ``max_length``; None if nothing is left."""
    if not isinstance(value, str):
        return None
    cleaned = _without_unstorable(value)[:max_length]
    return cleaned or None


def _authorization_result(answer: dict[str, Any]) -> AuthorizationResult:
    status = answer.get("status")
    if status == "approved":
        code = _code(answer.get("authorization_code"), AUTHORIZATION_CODE_MAX_LENGTH)
        if code is None:
            raise _MalformedAnswerError("approval without a usable authorization_code")
        return AuthorizationResult(approved=True, authorization_code=code)
    if status == "declined":
        decline_code = _code(answer.get("decline_code"), DECLINE_CODE_MAX_LENGTH)
        if decline_code is None:
            raise _MalformedAnswerError("decline without a usable decline_code")
        message = _cleaned(answer.get("decline_message"), DECLINE_MESSAGE_MAX_LENGTH)
        if message is None:
            message = DECLINE_MESSAGES.get(decline_code, DECLINE_MESSAGES["card_declined"])
        return AuthorizationResult(
            approved=False, decline_code=decline_code, decline_message=message
        )
    raise _MalformedAnswerError("unknown authorization status")


def _refund_result(answer: dict[str, Any]) -> RefundResult:
    status = answer.get("status")
    reference = _cleaned(answer.get("reference"), BANK_REFERENCE_MAX_LENGTH)
    if status == "succeeded":
        return RefundResult(succeeded=True, bank_reference=reference)
    if status == "failed":
        failure_code = _code(answer.get("failure_code"), FAILURE_CODE_MAX_LENGTH)
        return RefundResult(
            succeeded=False, bank_reference=reference, failure_code=failure_code or REFUND_FAILED
        )
    raise _MalformedAnswerError("unknown refund status")


def _operation_result(answer: dict[str, Any]) -> OperationResult:
    status = answer.get("status")
    if status == "succeeded":
        return OperationResult(succeeded=True)
    if status == "failed":
        failure_code = _code(answer.get("failure_code"), FAILURE_CODE_MAX_LENGTH)
        return OperationResult(succeeded=False, failure_code=failure_code or "operation_failed")
    raise _MalformedAnswerError("unknown capture or void status")


NO_SUCH_RECORD: Final = "no_such_record"
"""The ``error`` of a lookup's 404 that means "the bank has no record"."""


def _says_no_record(response: httpx.Response) -> bool:
    """Whether a 404 is the protocol's "no record", not a wrong URL or a proxy's page.

    Only the bank's own answer may let the reconciler conclude that nothing happened: a
    misrouted lookup must stay "unknown" (ask again), never become "failed".
    """
    try:
        body: object = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("error") == NO_SUCH_RECORD
