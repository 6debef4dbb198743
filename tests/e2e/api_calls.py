"""The calls a merchant's client makes in the end-to-end tests, and what every error answer
must look like.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import simplejson

from tests.conftest import MerchantCredentials, payment_body

PROCESS = "/api/v1/payments/process"
PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "code", "correlation_id"})
INVALIDATION_DEADLINE_S = 2.0
"""How soon a merchant or key change reaches every worker's auth cache (its TTL is 30 s)."""


def payment_url(transaction_id: str) -> str:
    return f"/api/v1/payments/{transaction_id}"


def refund_url(transaction_id: str) -> str:
    return f"/api/v1/payments/{transaction_id}/refund"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is a complete RFC 9457 problem with this status and code; its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_MEMBERS, body
    assert body["code"] == code
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["title"]
    assert body["detail"]
    assert body["correlation_id"] == response.headers["X-Correlation-ID"]
    return body


async def post_exact(
    client: httpx.AsyncClient, url: str, body: Any, headers: Mapping[str, str | bytes]
) -> httpx.Response:
    """POST JSON written exactly: a Decimal goes out as a JSON number with its own digits."""
    sent: dict[str, Any] = {**headers, "Content-Type": "application/json"}
    return await client.post(url, content=simplejson.dumps(body, use_decimal=True), headers=sent)


async def pay(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    *,
    key: str | None = None,
    headers: Mapping[str, str | bytes] | None = None,
    exact: bool = False,
    **overrides: Any,
) -> httpx.Response:
    """POST a valid payment as ``merchant``, with any field of ``payment_body`` overridden.

    ``key`` is sent as the Idempotency-Key; ``headers`` are added to (or replace) the
    merchant's; ``exact`` writes the body with ``post_exact`` instead of httpx's JSON.
    """
    merchant_id = overrides.pop("merchant_id", merchant.merchant_id)
    body = payment_body(merchant_id, **overrides)
    # A bytes value goes out as it is (a header that is not ASCII); httpx's annotations want str.
    sent: dict[str, Any] = {**merchant.headers}
    if key is not None:
        sent["Idempotency-Key"] = key
    sent.update(headers or {})
    if exact:
        return await post_exact(client, PROCESS, body, sent)
    return await client.post(PROCESS, json=body, headers=sent)


async def refund(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    transaction_id: str,
    amount: str | None = None,
    *,
    key: str | None = None,
    **body: Any,
) -> httpx.Response:
    """POST a refund as ``merchant``: of ``amount``, or of the whole balance without one.

    ``body`` holds any other field (reason, metadata); ``key`` is sent as the Idempotency-Key.
    """
    sent = body if amount is None else {"amount": amount, **body}
    headers = dict(merchant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(refund_url(transaction_id), json=sent, headers=headers)


async def eventually(
    request: Callable[[], Awaitable[httpx.Response]], done: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """Repeat a request until ``done`` holds, for at most the invalidation deadline."""
    deadline = time.monotonic() + INVALIDATION_DEADLINE_S
    while True:
        response = await request()
        if done(response) or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.05)
