"""The OpenAPI document, fit for generating clients and for stateful fuzzing.

This module owns what FastAPI does not derive from the routes by itself:

* operation ids: each route's ``name`` (``create_payment``, ``get_payment``, ...), so a
  new route needs only ``name="list_payments"`` to get a stable id;
* error responses: only ``application/problem+json``, one response per status a route
  can answer, each with one named example per ``code`` that status carries (the
  examples are rendered by the same code that renders the real answers);
* response headers: ``X-Correlation-ID`` on every response, ``Idempotent-Replayed`` on
  the answers of idempotent POSTs, ``Retry-After`` on 503, ``WWW-Authenticate`` on 401;
* links from a payment to the operations on it, so a client generator or a fuzzer can
  follow ``transaction_id`` from one answer to the next call;
* the servers the document is served for.

Routes declare what they can answer with :func:`problem_responses`,
:func:`idempotent_answer` and :func:`payment_links`; :func:`install_openapi` finishes the
document once, for ``/openapi.json``, ``/docs`` and ``make openapi``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.api import schemas as api_schemas
from app.api.middleware import CORRELATION_HEADER
from app.api.problems import (
    INTERNAL_ERROR_DETAIL,
    MALFORMED_JSON_DETAIL,
    PROBLEM_MEDIA_TYPE,
    STATUS_BY_CODE,
    VALIDATION_DETAIL,
    http_error_body,
    payload_too_large_body,
    problem_body,
    render_error,
)
from app.api.schemas import (
    EXAMPLE_CORRELATION_ID,
    EXAMPLE_TRANSACTION_ID,
    Problem,
)
from app.domain.errors import (
    ApiKeyNotFound,
    BankUnavailable,
    CurrencyNotSupported,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidTransition,
    MerchantInactive,
    MerchantMismatch,
    MerchantNotFound,
    PaymentNotCapturable,
    PaymentNotFound,
    PaymentNotRefundable,
    PaymentNotVoidable,
    PaymentServiceError,
    RefundExceedsBalance,
    ServiceUnavailable,
    Unauthorized,
    WebhookEndpointNotFound,
    WebhookTargetRefused,
)
from app.domain.money import Money

SERVERS: list[dict[str, str]] = [
    {
        "url": "/",
        "description": "The server that serves this document (relative: wherever it runs)",
    },
    {"url": "http://127.0.0.1:8000", "description": "`make run` on your machine"},
]
"""Relative first: Swagger UI, schemathesis and clients resolve it against the document's
own URL, so the document is right on any host and port; the absolute one is for tools
reading the committed docs/openapi.json."""

PROBLEM_REF = "#/components/schemas/Problem"
IDEMPOTENT_REPLAYED_HEADER = "Idempotent-Replayed"

HEADERS: dict[str, dict[str, Any]] = {
    CORRELATION_HEADER: {
        "description": (
            "The request's own `X-Correlation-ID` when it sent a valid one (1-128 characters "
            "of `A-Z a-z 0-9 . _ : -`), else a new UUID. Every log line of the request "
            "carries it: quote it when you report a problem."
        ),
        "required": True,
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"},
    },
    IDEMPOTENT_REPLAYED_HEADER: {
        "description": (
            "`true` when this is the stored answer to an earlier request with the same "
            "`Idempotency-Key` and body: nothing was done again."
        ),
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying; the same `Idempotency-Key` is safe.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with: `Bearer` (the merchant's API key).",
        "required": True,
        "schema": {"type": "string", "enum": ["Bearer"]},
    },
}

_HEADERS_BY_STATUS = {401: "WWW-Authenticate", 503: "Retry-After"}


def operation_id(route: APIRoute) -> str:
    """The route's ``name`` (``create_payment``): stable, short, a client method's name."""
    return route.name


def _header_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


# --- examples: one realistic problem per code ---------------------------------------------


def _example_errors() -> dict[str, PaymentServiceError]:
    """A domain error for each code a domain exception carries, as the API raises it."""
    usd = "USD"
    return {
        "unauthorized": Unauthorized(),
        "merchant_mismatch": MerchantMismatch(),
        "merchant_inactive": MerchantInactive(),
        "currency_not_supported": CurrencyNotSupported(
            "Merchant merchant_test_123 does not accept CHF; accepted: EUR, JPY, USD."
        ),
        "payment_not_found": PaymentNotFound(),
        "payment_not_refundable": PaymentNotRefundable("A refunded payment cannot be refunded."),
        "refund_exceeds_balance": RefundExceedsBalance(
            requested=Money.from_major("80.00", usd), refundable=Money.from_major("49.99", usd)
        ),
        "payment_not_capturable": PaymentNotCapturable("A captured payment cannot be captured."),
        "payment_not_voidable": PaymentNotVoidable("A captured payment cannot be voided."),
        "bank_unavailable": BankUnavailable().about(transaction_id=EXAMPLE_TRANSACTION_ID),
        "service_unavailable": ServiceUnavailable(),
        "idempotency_key_reused": IdempotencyKeyReused(),
        "idempotency_in_progress": IdempotencyInProgress(),
        "invalid_transition": InvalidTransition("A captured payment is not waiting for the bank."),
        "merchant_not_found": MerchantNotFound("No merchant merchant_test_999."),
        "api_key_not_found": ApiKeyNotFound(),
        "webhook_endpoint_not_found": WebhookEndpointNotFound(),
        "webhook_target_refused": WebhookTargetRefused("webhooks are delivered over HTTPS only"),
    }


def _example_http_errors() -> dict[str, dict[str, Any]]:
    """The problems the HTTP layer answers itself, as it answers them."""
    return {
        "validation_error": problem_body(
            code="validation_error",
            title="Validation failed",
            detail=VALIDATION_DETAIL,
            errors=[
                {"field": "amount", "message": "USD amounts have at most 2 decimal places."},
                {
                    "field": "card_data.expiry_month",
                    "message": "Input should be less than or equal to 12",
                },
            ],
        ),
        "malformed_json": problem_body(
            code="malformed_json", title="Malformed JSON", detail=MALFORMED_JSON_DETAIL
        ),
        "payload_too_large": payload_too_large_body(64 * 1024),
        "not_found": http_error_body(404, HTTPStatus.NOT_FOUND.phrase),
        "method_not_allowed": http_error_body(405, HTTPStatus.METHOD_NOT_ALLOWED.phrase),
        "internal_error": problem_body(
            code="internal_error", title="Internal server error", detail=INTERNAL_ERROR_DETAIL
        ),
    }


def problem_examples() -> dict[str, dict[str, Any]]:
    """One OpenAPI example per problem ``code``: the body the API answers with."""
    bodies = {code: render_error(error)[1] for code, error in _example_errors().items()}
    bodies.update(_example_http_errors())
    missing = set(STATUS_BY_CODE) ^ set(bodies)
    if missing:  # a code added to STATUS_BY_CODE needs its example here
        raise LookupError(f"problem examples out of step with STATUS_BY_CODE: {sorted(missing)}")
    examples: dict[str, dict[str, Any]] = {}
    for code in sorted(bodies):
        body = {**bodies[code], "correlation_id": EXAMPLE_CORRELATION_ID}
        examples[code] = {"summary": f"{body['status']} {code}: {body['title']}", "value": body}
    return examples


# --- what routes declare ------------------------------------------------------------------


def problem_responses(
    *codes: str, notes: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The error responses of a route that can answer ``codes``: one per status, each a
    problem+json with one example per code (``notes`` add a sentence to a status)."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(STATUS_BY_CODE[code], []).append(code)
    notes = notes or {}
    return {
        status: _problem_response(status, sorted(status_codes), notes.get(status))
        for status, status_codes in sorted(by_status.items())
    }


def _problem_response(status: int, codes: list[str], note: str | None) -> dict[str, Any]:
    listed = ", ".join(f"`{code}`" for code in codes)
    description = f"{HTTPStatus(status).phrase}: {listed}." + (f" {note}" if note else "")
    response: dict[str, Any] = {
        "description": description,
        "content": {
            PROBLEM_MEDIA_TYPE: {
                "schema": {"$ref": PROBLEM_REF},
                "examples": {code: {"$ref": f"#/components/examples/{code}"} for code in codes},
            }
        },
    }
    header = _HEADERS_BY_STATUS.get(status)
    if header is not None:
        response["headers"] = {header: _header_ref(header)}
    return response


def idempotent_answer(description: str | None = None) -> dict[str, Any]:
    """A 2xx answer of an idempotent POST: it may be a replay (``Idempotent-Replayed``)."""
    response: dict[str, Any] = {
        "headers": {IDEMPOTENT_REPLAYED_HEADER: _header_ref(IDEMPOTENT_REPLAYED_HEADER)}
    }
    if description is not None:
        response["description"] = description
    return response


_LINK_DESCRIPTIONS = {
    "get_payment": "Read the payment (its status and refunds).",
    "refund_payment": "Refund the payment, once captured.",
    "capture_payment": "Capture the payment, while authorized.",
    "void_payment": "Void the payment, while authorized.",
}


def payment_links(*operation_ids: str) -> dict[str, dict[str, Any]]:
    """OpenAPI links from an answer carrying ``transaction_id`` to operations on that payment."""
    return {
        op: {
            "operationId": op,
            "parameters": {"transaction_id": "$response.body#/transaction_id"},
            "description": _LINK_DESCRIPTIONS[op],
        }
        for op in operation_ids
    }


# --- finishing the document ---------------------------------------------------------------


def _problem_schemas() -> dict[str, Any]:
    schema = Problem.model_json_schema(
        ref_template="#/components/schemas/{model}", mode="serialization"
    )
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return {**definitions, "Problem": schema}


def _responses(document: Mapping[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    for methods in document.get("paths", {}).values():
        for operation in methods.values():
            yield from operation.get("responses", {}).items()


def _replace_framework_validation_errors(document: dict[str, Any]) -> None:
    """FastAPI documents a 422 ``HTTPValidationError`` (application/json) for a route with
    parameters and no 422 of its own; the API answers that 422 as a problem."""
    for methods in document.get("paths", {}).values():
        for operation in methods.values():
            response = operation.get("responses", {}).get("422")
            media = (response or {}).get("content", {}).get("application/json", {})
            if media.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                operation["responses"]["422"] = problem_responses("validation_error")[422]
    if "#/components/schemas/HTTPValidationError" not in set(_refs(document.get("paths", {}))):
        schemas = document.get("components", {}).get("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)  # FastAPI's, used by HTTPValidationError only


def _refs(value: object) -> Iterator[str]:
    """Every ``$ref`` in a part of the document."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _restore_examples(schemas: dict[str, Any]) -> None:
    """The models' examples as written: FastAPI drops their ``null`` members (``decline_code:
    null``), which leaves an example its own schema refuses."""
    for model in vars(api_schemas).values():
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        extra = model.model_config.get("json_schema_extra")
        if model.__name__ in schemas and isinstance(extra, dict) and "examples" in extra:
            schemas[model.__name__]["examples"] = copy.deepcopy(extra["examples"])


def finish_document(document: dict[str, Any]) -> dict[str, Any]:
    """Add what the routes cannot say themselves (in place; returns ``document``)."""
    _replace_framework_validation_errors(document)
    components = document.setdefault("components", {})
    _restore_examples(components.setdefault("schemas", {}))
    components["schemas"].update(_problem_schemas())
    components["examples"] = problem_examples()
    components["headers"] = HEADERS
    for _, response in _responses(document):
        headers = response.setdefault("headers", {})
        response["headers"] = {CORRELATION_HEADER: _header_ref(CORRELATION_HEADER), **headers}
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the finished document (``/openapi.json``, ``/docs``, ``app.openapi()``)."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    state: dict[str, Any] = {}

    def finished() -> dict[str, Any]:
        source = generate()  # FastAPI's, cached until the routes change
        if state.get("source") is not source:
            state["source"], state["document"] = source, finish_document(copy.deepcopy(source))
        document: dict[str, Any] = state["document"]
        return document

    app.openapi = finished  # type: ignore[method-assign]
