"""Errors as RFC 9457 problem+json: the one place where error codes meet HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from asgi_correlation_id.context import correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.core.jsoncodec import dump_json
from app.domain.errors import BankUnavailable, PaymentServiceError, ServiceUnavailable

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

STATUS_BY_CODE: dict[str, int] = {
    "validation_error": 422,
    "unauthorized": 401,
    "merchant_mismatch": 403,
    "merchant_inactive": 403,
    "currency_not_supported": 422,
    "payment_not_found": 404,
    "payment_not_refundable": 409,
    "refund_exceeds_balance": 409,
    "payment_not_capturable": 409,
    "payment_not_voidable": 409,
    "bank_unavailable": 503,
    "service_unavailable": 503,
    "idempotency_key_reused": 422,
    "idempotency_in_progress": 409,
    "invalid_transition": 409,
    "merchant_not_found": 404,
    "api_key_not_found": 404,
    "webhook_endpoint_not_found": 404,
    "webhook_target_refused": 422,
    "malformed_json": 400,
    "payload_too_large": 413,
    "not_found": 404,
    "method_not_allowed": 405,
    "internal_error": 500,
}

_TITLES = {
    "malformed_json": "Malformed JSON",
    "payload_too_large": "Payload too large",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "internal_error": "Internal server error",
    "validation_error": "Validation failed",
}

MALFORMED_JSON_DETAIL = "The request body is not valid JSON."
VALIDATION_DETAIL = "The request is not valid; see errors."
INTERNAL_ERROR_DETAIL = "An unexpected error occurred; it has been logged with the correlation id."


def problem_body(
    *,
    code: str,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A problem document; the correlation id is the current request's."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": STATUS_BY_CODE[code],
        "detail": detail,
        "code": code,
        "correlation_id": correlation_id.get(),
    }
    if errors:
        body["errors"] = errors
    if extra:
        for key, value in extra.items():
            body.setdefault(key, value)
    return body


def render_error(error: PaymentServiceError) -> tuple[int, dict[str, Any]]:
    """The (status, body) for a domain error: used for responses and idempotent replays."""
    extra = dict(error.extra)
    if isinstance(error, BankUnavailable):
        # Kept in the body so that a replay repeats the same Retry-After.
        extra["retry_after_s"] = error.retry_after_s
    body = problem_body(
        code=error.code,
        title=error.title,
        detail=error.detail,
        errors=error.errors,
        extra=extra,
    )
    return body["status"], body


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    """Serialize a problem document."""
    return Response(
        content=dump_json(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def retry_after_headers(body: dict[str, Any], error: PaymentServiceError | None) -> dict[str, str]:
    """``Retry-After`` for bank and database outages."""
    if isinstance(error, BankUnavailable | ServiceUnavailable):
        return {"Retry-After": str(error.retry_after_s)}
    if body.get("code") == "bank_unavailable":
        return {"Retry-After": str(body.get("retry_after_s", 30))}
    return {}


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        message = str(err.get("msg", "Invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            message = "Unknown query parameter." if loc[:1] == ("query",) else "Unknown field."
        # Never echo the offending input: it may be a card number or a CVV.
        entries.append({"field": _field_path(loc), "message": message})
    return entries


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PaymentServiceError)
    status, body = render_error(exc)
    headers = retry_after_headers(body, exc)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return problem_response(status, body, headers)


async def _on_request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if any(err.get("type") == "json_invalid" for err in exc.errors()):
        body = problem_body(
            code="malformed_json",
            title=_TITLES["malformed_json"],
            detail=MALFORMED_JSON_DETAIL,
        )
        return problem_response(400, body)
    body = problem_body(
        code="validation_error",
        title=_TITLES["validation_error"],
        detail=VALIDATION_DETAIL,
        errors=_validation_errors(exc),
    )
    return problem_response(422, body)


_CODE_BY_HTTP_STATUS = {
    400: "malformed_json",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def http_error_body(status: int, detail: object) -> dict[str, Any]:
    """The problem for an error the framework raises itself (no such route, wrong method)."""
    code = _CODE_BY_HTTP_STATUS.get(
        status, "validation_error" if 400 <= status < 500 else "internal_error"
    )
    body = problem_body(
        code=code, title=_TITLES[code], detail=detail if isinstance(detail, str) else _TITLES[code]
    )
    body["status"] = status
    return body


def payload_too_large_body(max_bytes: int) -> dict[str, Any]:
    """The problem for a request body over ``max_bytes``."""
    return problem_body(
        code="payload_too_large",
        title=_TITLES["payload_too_large"],
        detail=f"The request body exceeds {max_bytes // 1024} KiB.",
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    body = http_error_body(exc.status_code, exc.detail)
    return problem_response(exc.status_code, body, dict(exc.headers or {}))


UnavailablePredicate = Callable[[BaseException], bool]
"""Says whether an exception means "the database cannot be reached" (503, retry)."""


def _never(exc: BaseException) -> bool:
    return False


class UnexpectedErrors:
    """Answers an exception no handler knows: 503 when it says the database is
    unreachable (nothing was done; retry), else a 500; both logged with the correlation
    id, neither carrying anything internal."""

    def __init__(self, unavailable: UnavailablePredicate = _never, *, retry_after_s: int = 5):
        self._unavailable = unavailable
        self._retry_after_s = retry_after_s

    def response(self, exc: BaseException, *, method: str, path: str) -> Response:
        """Log ``exc`` and render its problem."""
        if self._unavailable(exc):
            logger.warning(
                "database unavailable on %s %s: %s",
                method,
                path,
                type(exc).__name__,
                extra={"error_type": type(exc).__name__},
            )
            error = ServiceUnavailable(retry_after_s=self._retry_after_s)
            status, body = render_error(error)
            return problem_response(status, body, retry_after_headers(body, error))
        logger.error("unhandled error on %s %s", method, path, exc_info=exc)
        body = problem_body(
            code="internal_error",
            title=_TITLES["internal_error"],
            detail=INTERNAL_ERROR_DETAIL,
        )
        return problem_response(500, body)


def install_problem_handlers(app: FastAPI, unexpected: UnexpectedErrors) -> None:
    """Map every error the app can raise to problem+json, once."""

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return unexpected.response(exc, method=request.method, path=request.url.path)

    app.add_exception_handler(PaymentServiceError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
