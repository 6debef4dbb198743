"""Give the MockServer bank the answers a test needs, and read what it received.

For tests and scripts, on an ``httpx.AsyncClient`` whose ``base_url`` is MockServer
(``BANK_API_URL``, by default ``http://127.0.0.1:1080``). MockServer is shared (by other
test runs, and by developers), so everything registered here has a unique id and a high
priority, and is removed by id (:func:`clear_expectation`); nothing here ever resets it.

The status lookups (``GET /v1/authorizations/{transaction_id}``,
``GET /v1/refunds/{refund_id}``, ``GET /v1/captures/{capture_id}``,
``GET /v1/voids/{void_id}``) answer 404 ``{"error": "no_such_record"}`` for ids nobody
registered: the committed expectations have a low-priority default for that. (MockServer's
own 404 for a request nothing matches has an empty body, which the gateway does *not* take
as "no record".)
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import httpx

from app.domain.cards import DECLINE_MESSAGES

LOOKUP_PRIORITY: Final = 1000
"""Wins over every committed expectation (those use -10 to 10)."""

DEFAULT_LOOKUP_AUTHORIZATION_CODE: Final = "LOOKUP01"
DEFAULT_LOOKUP_REFUND_REFERENCE: Final = "mock_refund_lookup_01"


def _expectation_id(kind: str, reference: str) -> str:
    return f"test-{kind}-{reference}-{uuid.uuid4().hex[:12]}"


async def register_expectation(
    client: httpx.AsyncClient,
    *,
    http_request: dict[str, Any],
    action: dict[str, Any],
    kind: str = "custom",
    reference: str = "any",
    priority: int = LOOKUP_PRIORITY,
    times: int | None = None,
) -> str:
    """Register one expectation (``action`` is e.g. ``{"httpResponse": {...}}`` or
    ``{"httpError": {"dropConnection": True}}``), for ``times`` matches or unlimited;
    returns its id."""
    expectation_id = _expectation_id(kind, reference)
    response = await client.put(
        "/mockserver/expectation",
        json=[
            {
                "id": expectation_id,
                "priority": priority,
                "httpRequest": http_request,
                "times": (
                    {"unlimited": True}
                    if times is None
                    else {"remainingTimes": times, "unlimited": False}
                ),
                **action,
            }
        ],
    )
    response.raise_for_status()
    return expectation_id


def json_response(
    status_code: int, body: object, *, delay_s: float | None = None
) -> dict[str, Any]:
    """An ``httpResponse`` action answering ``body`` as JSON, optionally after a delay."""
    response: dict[str, Any] = {
        "statusCode": status_code,
        "headers": {"Content-Type": ["application/json"]},
        "body": {"type": "JSON", "json": body},
    }
    if delay_s is not None:
        response["delay"] = {"timeUnit": "MILLISECONDS", "value": round(delay_s * 1000)}
    return {"httpResponse": response}


async def register_lookup(
    client: httpx.AsyncClient, path: str, action: dict[str, Any], *, reference: str
) -> str:
    """Answer ``GET path`` with ``action`` (any answer, malformed ones included)."""
    return await register_expectation(
        client,
        http_request={"method": "GET", "path": path},
        action=action,
        kind="lookup",
        reference=reference,
    )


async def register_authorization_status(
    client: httpx.AsyncClient,
    transaction_id: str,
    *,
    approved: bool,
    authorization_code: str | None = None,
    decline_code: str | None = None,
    decline_message: str | None = None,
) -> str:
    """Make ``GET /v1/authorizations/{transaction_id}`` say approved or declined.

    Defaults: authorization code ``LOOKUP01``; decline code ``card_declined`` with the
    test-card table's message for the code. Returns the expectation id.
    """
    body: dict[str, Any]
    if approved:
        body = {
            "status": "approved",
            "authorization_code": authorization_code or DEFAULT_LOOKUP_AUTHORIZATION_CODE,
        }
    else:
        code = decline_code or "card_declined"
        body = {
            "status": "declined",
            "decline_code": code,
            "decline_message": decline_message
            or DECLINE_MESSAGES.get(code, DECLINE_MESSAGES["card_declined"]),
        }
    return await register_lookup(
        client,
        f"/v1/authorizations/{transaction_id}",
        json_response(200, body),
        reference=transaction_id,
    )


async def register_refund_status(
    client: httpx.AsyncClient,
    refund_id: str,
    *,
    succeeded: bool,
    reference: str | None = None,
    failure_code: str | None = None,
) -> str:
    """Make ``GET /v1/refunds/{refund_id}`` say succeeded or failed.

    Defaults: reference ``mock_refund_lookup_01``; failure code ``refund_failed``.
    Returns the expectation id.
    """
    body: dict[str, Any]
    if succeeded:
        body = {"status": "succeeded", "reference": reference or DEFAULT_LOOKUP_REFUND_REFERENCE}
    else:
        body = {"status": "failed", "failure_code": failure_code or "refund_failed"}
        if reference is not None:
            body["reference"] = reference
    return await register_lookup(
        client, f"/v1/refunds/{refund_id}", json_response(200, body), reference=refund_id
    )


async def register_operation_status(
    client: httpx.AsyncClient,
    kind: str,
    operation_id: str,
    *,
    succeeded: bool,
    failure_code: str | None = None,
) -> str:
    """Make ``GET /v1/captures/{id}`` (``kind`` "capture") or ``GET /v1/voids/{id}``
    (``kind`` "void") say succeeded or failed (default code ``operation_failed``).
    Returns the expectation id."""
    body: dict[str, Any] = (
        {"status": "succeeded"}
        if succeeded
        else {"status": "failed", "failure_code": failure_code or "operation_failed"}
    )
    return await register_lookup(
        client, f"/v1/{kind}s/{operation_id}", json_response(200, body), reference=operation_id
    )


async def clear_expectation(client: httpx.AsyncClient, expectation_id: str) -> None:
    """Remove one expectation by id (the recorded requests stay)."""
    response = await client.put(
        "/mockserver/clear", params={"type": "EXPECTATIONS"}, json={"id": expectation_id}
    )
    response.raise_for_status()


async def recorded_requests(
    client: httpx.AsyncClient,
    *,
    method: str,
    path_regex: str,
    correlation_id: str | None = None,
) -> list[dict[str, Any]]:
    """The requests MockServer received that match, oldest first.

    ``correlation_id`` filters on the ``X-Correlation-ID`` header the gateway sends. Header
    names are lowered in the result (they are case-insensitive, RFC 9110).
    """
    matcher: dict[str, Any] = {"method": method, "path": path_regex}
    if correlation_id is not None:
        matcher["headers"] = {"X-Correlation-ID": [correlation_id]}
    response = await client.put(
        "/mockserver/retrieve", params={"type": "REQUESTS", "format": "JSON"}, json=matcher
    )
    response.raise_for_status()
    recorded: list[dict[str, Any]] = response.json()
    for request in recorded:
        request["headers"] = {
            name.lower(): value for name, value in request.get("headers", {}).items()
        }
    return recorded
