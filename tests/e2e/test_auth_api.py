"""API-key authentication and merchant validation through the real app (docs/api.md)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.services import merchants
from app.services.context import ServiceContext
from tests.conftest import TABLES, MerchantCredentials, payment_body
from tests.e2e.api_calls import PROCESS, assert_problem, pay, payment_url, refund, refund_url

INVALIDATION_DEADLINE_S = 2.0


def assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


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


async def denied_audit_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT actor, action, outcome, correlation_id, details FROM audit_log "
                "WHERE action = 'auth.authenticate' ORDER BY id"
            )
        )
        return [dict(row._mapping) for row in rows]


AUTHORIZATIONS = {
    "missing": None,
    "empty": "",
    "basic-scheme": "Basic dXNlcjpwYXNz",
    "bearer-without-key": "Bearer",
    "bearer-blank": "Bearer    ",
    "key-too-short": "Bearer sk_short",
    "key-with-bad-chars": "Bearer sk_test_key_<script>_0000",
    "unknown-key": "Bearer sk_unknown_key_0000000000000",
    "key-without-scheme": "sk_test_key_0001_abcdefghijkl",
}


@pytest.mark.parametrize("authorization", AUTHORIZATIONS.values(), ids=AUTHORIZATIONS.keys())
async def test_missing_malformed_or_unknown_keys_are_unauthorized(
    client: httpx.AsyncClient, merchant: MerchantCredentials, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    responses = [
        await client.post(PROCESS, json=payment_body(merchant.merchant_id), headers=headers),
        await client.get(payment_url("txn_00000000000000000000000000000abc"), headers=headers),
        await client.post(
            refund_url("txn_00000000000000000000000000000abc"), json={}, headers=headers
        ),
    ]

    for response in responses:
        assert_unauthorized(response)


async def test_authentication_comes_before_validation(client: httpx.AsyncClient) -> None:
    response = await client.post(PROCESS, json={"nonsense": True})

    assert_unauthorized(response)


async def test_the_bearer_scheme_is_case_insensitive(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    response = await pay(client, merchant, headers={"Authorization": f"bearer {merchant.api_key}"})

    assert response.status_code == 200, response.text


async def test_every_refused_authentication_is_audited(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    correlation_ids = [f"auth-refused-{n}" for n in range(3)]
    for cid, authorization in zip(
        correlation_ids, [None, "Basic abc", "Bearer sk_unknown_key_0000000000000"], strict=True
    ):
        headers = {"X-Correlation-ID": cid}
        if authorization:
            headers["Authorization"] = authorization
        assert_unauthorized(
            await client.get(payment_url("txn_00000000000000000000000000000abc"), headers=headers)
        )

    rows = await denied_audit_rows(engine)

    assert [row["correlation_id"] for row in rows] == correlation_ids
    assert {row["outcome"] for row in rows} == {"denied"}
    assert "sk_unknown_key_0000000000000" not in str(rows)


async def test_body_merchant_must_be_the_keys_merchant(
    client: httpx.AsyncClient, merchant: MerchantCredentials, create_merchant: Callable[..., Any]
) -> None:
    other: MerchantCredentials = await create_merchant()

    response = await pay(client, merchant, merchant_id=other.merchant_id)
    unknown = await pay(client, merchant, merchant_id="merchant_nobody")

    assert_problem(response, 403, "merchant_mismatch")
    assert_problem(unknown, 403, "merchant_mismatch")


async def test_a_disabled_merchant_is_refused_at_once(
    client: httpx.AsyncClient, merchant: MerchantCredentials, ctx: ServiceContext
) -> None:
    txn = (await pay(client, merchant)).json()["transaction_id"]  # the key is now cached

    await merchants.disable_merchant(ctx, merchant_id=merchant.merchant_id)

    payment = await eventually(lambda: pay(client, merchant), lambda r: r.status_code == 403)
    assert_problem(payment, 403, "merchant_inactive")
    read = await client.get(payment_url(txn), headers=merchant.headers)
    assert_problem(read, 403, "merchant_inactive")
    refunded = await refund(client, merchant, txn)
    assert_problem(refunded, 403, "merchant_inactive")


async def test_a_revoked_key_is_refused_at_once(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    ctx: ServiceContext,
    settings: Settings,
) -> None:
    pepper = settings.api_key_pepper.get_secret_value().encode()
    spare = await merchants.issue_key(
        ctx,
        merchant_id=merchant.merchant_id,
        api_key="sk_spare_key_for_merchant_123",
        pepper=pepper,
    )
    assert (await pay(client, merchant)).status_code == 200  # the key is now cached

    await merchants.revoke_key(ctx, api_key=merchant.api_key, pepper=pepper)

    response = await eventually(lambda: pay(client, merchant), lambda r: r.status_code == 401)
    assert_unauthorized(response)
    still_valid = MerchantCredentials(merchant.merchant_id, spare.api_key)
    assert (await pay(client, still_valid)).status_code == 200


async def test_a_new_key_works_at_once(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    ctx: ServiceContext,
    settings: Settings,
) -> None:
    pepper = settings.api_key_pepper.get_secret_value().encode()
    issued = await merchants.issue_key(
        ctx, merchant_id=merchant.merchant_id, api_key=None, pepper=pepper
    )

    response = await pay(client, MerchantCredentials(merchant.merchant_id, issued.api_key))

    assert response.status_code == 200, response.text


async def test_api_keys_are_stored_only_hashed(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    engine: AsyncEngine,
    create_merchant: Callable[..., Any],
) -> None:
    generated_key = f"sk_{uuid.uuid4().hex}{uuid.uuid4().hex}"
    other: MerchantCredentials = await create_merchant(api_key=generated_key)
    await pay(client, merchant)
    await pay(client, other)
    await client.get(payment_url("txn_x"), headers={"Authorization": f"Bearer {generated_key}x"})

    async with engine.connect() as conn:
        key_rows = (await conn.execute(text("SELECT key_hash FROM api_keys"))).scalars().all()
        everything = [
            row
            for table in TABLES
            for row in (
                await conn.execute(text(f"SELECT row_to_json(t)::text FROM {table} t"))
            ).scalars()
        ]

    assert len(key_rows) == 2
    assert all(len(digest) == 64 for digest in key_rows)
    for raw_key in (merchant.api_key, generated_key):
        assert raw_key not in key_rows
        assert not any(raw_key in row for row in everything)
