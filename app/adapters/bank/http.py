"""The bank over HTTP: one pooled client, retries with backoff, and a circuit breaker.

Wire protocol (ours; MockServer simulates it in development):

- ``POST /v1/authorizations`` with the card and amount, ``Idempotency-Key: <transaction_id>``
  → 200 ``{"status": "approved", "authorization_code": ...}`` or
  200 ``{"status": "declined", "decline_code": ..., "decline_message": ...}``;
- ``POST /v1/refunds`` with ``Idempotency-Key: <refund_id>`` → 200
  ``{"status": "succeeded", "reference": ...}``;
- ``GET /health`` → 200.

Any 5xx, timeout or connection failure is a *technical* failure: it is retried (safe,
because the bank deduplicates on the ``Idempotency-Key``) and counted by the circuit
breaker. A decline is a business answer and counts as a success. When no answer can be had
the gateway raises :class:`~app.domain.errors.BankUnavailable`; transport exceptions never
leave this module. Card number and CVV never appear in a log line or an exception.

The client is httpx (its API, timeouts and exceptions, and the tracer's httpx integration,
which carries the trace context to the bank) over aiohttp's connection pool
(``httpx-aiohttp``): httpx's own transport cost about 4 ms of CPU per call under
concurrency on the reference machine, this one under 1 ms (see docs/performance.md).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import backoff
import httpx
from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerState
from aiobreaker.listener import CircuitBreakerListener
from aiobreaker.storage.memory import CircuitMemoryStorage
from httpx_aiohttp import AiohttpTransport

from app.domain.cards import DECLINE_MESSAGES
from app.domain.errors import BankUnavailable
from app.services.ports import (
    AuthorizationRequest,
    AuthorizationResult,
    BankRefundRequest,
    Metrics,
    NoMetrics,
    RefundResult,
)

logger = logging.getLogger(__name__)

AUTHORIZATIONS_PATH: Final = "/v1/authorizations"
REFUNDS_PATH: Final = "/v1/refunds"
HEALTH_PATH: Final = "/health"

BACKOFF_FACTOR_S: Final = 0.1
"""First retry waits up to this long; each further retry doubles it, up to backoff_max_s."""

PING_TIMEOUT_S: Final = 1.0
"""A health probe should not hold a readiness check for longer than this."""


class _BankTechnicalError(Exception):
    """One attempt got no business answer (5xx, timeout, connection failure).

    Retried, and counted by the circuit breaker. Carries no request data: the transport
    exception (which holds the request body, card number included) is dropped here.
    """

    def __init__(self, failure_code: str, *, status_code: int | None = None) -> None:
        self.failure_code = failure_code
        self.status_code = status_code
        super().__init__(failure_code if status_code is None else f"{failure_code} ({status_code})")


class _BankRejectedError(Exception):
    """The bank refused the request itself (unexpected 4xx): neither retried nor counted."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(f"bank answered HTTP {status_code}")


class _MalformedAnswerError(Exception):
    """A 2xx answer that is not the JSON the protocol promises."""


@dataclass(slots=True)
class _BankCall:
    """One logical call to the bank, across all its attempts."""

    operation: str
    path: str
    reference: str
    payload: dict[str, Any] = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    attempts: int = 0


class HttpBankGateway:
    """A :class:`~app.adapters.bank.base.BankGateway` that talks HTTP to the bank."""

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
            breaker_fail_max: Consecutive technical failures that open the circuit.
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
            exclude=[_BankRejectedError],
            state_storage=self._breaker_storage,
            name="bank",
        )
        self._metrics: Metrics = NoMetrics()
        self._send_with_retries = backoff.on_exception(
            backoff.expo,
            _BankTechnicalError,
            max_tries=1 + max_retries,
            # backoff stops retrying once an attempt that started after max_time fails, so
            # a large BANK_MAX_RETRIES cannot hold a client for minutes.
            max_time=2 * timeout_s + backoff_max_s,
            jitter=backoff.full_jitter,
            on_backoff=self._log_retry,
            logger=None,
            factor=BACKOFF_FACTOR_S,
            max_value=backoff_max_s,
        )(self._send_through_breaker)

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        """Authorize and capture; a decline is an answer, not an error.

        Raises:
            BankUnavailable: When the bank gives no business answer after the retries,
                or at once when the circuit is open.
        """
        call = _BankCall(
            operation="authorization",
            path=AUTHORIZATIONS_PATH,
            reference=request.transaction_id,
            payload={
                "transaction_id": request.transaction_id,
                "merchant_id": request.merchant_id,
                "amount_minor": request.amount_minor,
                "currency": request.currency,
                "card": {
                    "number": request.card_number,
                    "cvv": request.cvv,
                    "exp_month": request.expiry_month,
                    "exp_year": request.expiry_year,
                    "holder_name": request.cardholder_name,
                },
            },
            headers=self._headers(request.transaction_id, request.correlation_id),
        )
        answer = await self._call(call)
        try:
            return _authorization_result(answer)
        except _MalformedAnswerError as exc:
            raise self._malformed(call, str(exc)) from None

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        """Refund an amount of a captured authorization.

        Raises:
            BankUnavailable: When the bank gives no answer after the retries, or at once
                when the circuit is open.
        """
        call = _BankCall(
            operation="refund",
            path=REFUNDS_PATH,
            reference=request.refund_id,
            payload={
                "refund_id": request.refund_id,
                "transaction_id": request.transaction_id,
                "authorization_code": request.authorization_code,
                "amount_minor": request.amount_minor,
                "currency": request.currency,
            },
            headers=self._headers(request.refund_id, request.correlation_id),
        )
        answer = await self._call(call)
        try:
            return _refund_result(answer)
        except _MalformedAnswerError as exc:
            raise self._malformed(call, str(exc)) from None

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
        except httpx.HTTPError as exc:
            logger.info("bank health probe failed", extra={"error_type": type(exc).__name__})
            return False
        return response.status_code == httpx.codes.OK

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    # -- one call: retries around the breaker around one HTTP attempt --------------------

    async def _call(self, call: _BankCall) -> Mapping[str, Any]:
        started = time.perf_counter()
        outcome = "processing_error"
        try:
            answer = await self._exchange(call)
            outcome = "answered"
            return answer
        except BankUnavailable as exc:
            outcome = exc.failure_code or outcome
            raise
        finally:
            self._metrics.bank_call(
                operation=call.operation, outcome=outcome, seconds=time.perf_counter() - started
            )

    async def _exchange(self, call: _BankCall) -> Mapping[str, Any]:
        try:
            response = await self._send_with_retries(call)
        except CircuitBreakerError as exc:
            cause = exc.__cause__
            if isinstance(cause, _BankTechnicalError):
                # This call's own failure tripped the breaker: report what happened to it.
                raise self._unavailable(call, cause.failure_code, cause.status_code) from None
            raise self._circuit_open(call) from None
        except _BankTechnicalError as exc:
            raise self._unavailable(call, exc.failure_code, exc.status_code) from None
        except _BankRejectedError as exc:
            raise self._unavailable(call, "processing_error", exc.status_code) from None
        answer: object = None
        try:
            answer = response.json()
        except ValueError:
            # Reported below, outside this block: a JSONDecodeError carries the whole body.
            answer = None
        if not isinstance(answer, dict):
            raise self._malformed(call, "body is not a JSON object")
        return answer

    async def _send_through_breaker(self, call: _BankCall) -> httpx.Response:
        response: httpx.Response = await self._breaker.call_async(self._send_once, call)
        return response

    async def _send_once(self, call: _BankCall) -> httpx.Response:
        call.attempts += 1
        # Failures are raised after the except blocks: an httpx exception holds the request,
        # card number included, and must not survive as the __context__ of ours.
        failure_code: str | None = None
        try:
            response = await self._client.post(call.path, json=call.payload, headers=call.headers)
        except httpx.ConnectTimeout:
            # The request never reached the bank: as unreachable as a refused connection.
            failure_code = "bank_unreachable"
        except httpx.TimeoutException:
            failure_code = "bank_timeout"
        except httpx.TransportError:
            failure_code = "bank_unreachable"
        if failure_code is not None:
            raise _BankTechnicalError(failure_code)
        if response.is_server_error:
            raise _BankTechnicalError("processing_error", status_code=response.status_code)
        if not response.is_success:
            raise _BankRejectedError(response.status_code)
        return response

    # -- errors and logs (transaction/refund id, status code, attempt; never card data) ---

    @staticmethod
    def _headers(idempotency_key: str, correlation_id: str | None) -> dict[str, str]:
        return {
            "Idempotency-Key": idempotency_key,
            "X-Correlation-ID": correlation_id or str(uuid.uuid4()),
        }

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
                "retry_in_s": round(details.get("wait", 0.0), 3),
            },
        )

    def _unavailable(
        self, call: _BankCall, failure_code: str, status_code: int | None
    ) -> BankUnavailable:
        logger.error(
            "bank call failed",
            extra={
                "bank_operation": call.operation,
                "bank_reference": call.reference,
                "attempt": call.attempts,
                "failure_code": failure_code,
                "status_code": status_code,
                "circuit": self.circuit_state,
            },
        )
        return BankUnavailable(failure_code=failure_code)

    def _malformed(self, call: _BankCall, problem: str) -> BankUnavailable:
        logger.error(
            "bank answer malformed",
            extra={
                "bank_operation": call.operation,
                "bank_reference": call.reference,
                "attempt": call.attempts,
                "problem": problem,
            },
        )
        return BankUnavailable(failure_code="processing_error")

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


def _authorization_result(answer: Mapping[str, Any]) -> AuthorizationResult:
    status = answer.get("status")
    if status == "approved":
        code = answer.get("authorization_code")
        if not isinstance(code, str) or not code:
            raise _MalformedAnswerError("approval without authorization_code")
        return AuthorizationResult(approved=True, authorization_code=code)
    if status == "declined":
        decline_code = answer.get("decline_code")
        if not isinstance(decline_code, str) or not decline_code:
            raise _MalformedAnswerError("decline without decline_code")
        message = answer.get("decline_message")
        if not isinstance(message, str) or not message:
            message = DECLINE_MESSAGES.get(decline_code, DECLINE_MESSAGES["card_declined"])
        return AuthorizationResult(
            approved=False, decline_code=decline_code, decline_message=message
        )
    raise _MalformedAnswerError("unknown authorization status")


def _refund_result(answer: Mapping[str, Any]) -> RefundResult:
    status = answer.get("status")
    reference = answer.get("reference")
    if status == "succeeded":
        return RefundResult(
            succeeded=True, bank_reference=reference if isinstance(reference, str) else None
        )
    if status == "failed":
        failure_code = answer.get("failure_code")
        return RefundResult(
            succeeded=False,
            bank_reference=reference if isinstance(reference, str) else None,
            failure_code=failure_code if isinstance(failure_code, str) else "refund_failed",
        )
    raise _MalformedAnswerError("unknown refund status")
