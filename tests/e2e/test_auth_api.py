"""API-key authentication and merchant validation through the real app (docs/api.md)."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.services import merchants
from app.services.context import ServiceContext
from tests.conftest import TABLES, MerchantCredentials, payment_body
from tests.e2e.api_calls import (
    PROCESS,
    assert_problem,
    eventually,
    pay,
    payment_url,
    refund,
    refund_url,
)


def assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def denied_audit_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT actor, action, outcome, correlation_id, details FROM audit_log "
                "WHERE action = 'auth.authenticate' OR outcome = 'denied' ORDER BY id"
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


async def refusal_rows(engine: AsyncEngine, *sources: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT window_start, source, reason, attempts, first_seen_at, last_seen_at, "
                "last_correlation_id, details FROM auth_refusals "
                "WHERE source = ANY(:sources) ORDER BY source, reason"
            ),
            {"sources": list(sources)},
        )
        return [dict(row._mapping) for row in rows]


async def wait_for_a_fresh_minute() -> None:
    """Refusals are counted per minute: start far enough from the next one."""
    into_minute = time.time() % 60
    if into_minute > 50:
        await asyncio.sleep(60.5 - into_minute)


async def test_refused_authentications_are_counted_per_source_reason_and_minute(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # Sources of this test only (documentation addresses, RFC 5737): the counts are not
    # emptied between tests, and the default test client is 127.0.0.1.
    knocker = f"203.0.113.{secrets.randbelow(254) + 1}"
    neighbour = f"198.51.100.{secrets.randbelow(254) + 1}"
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM auth_refusals WHERE source = ANY(:s)"), {"s": [knocker, neighbour]}
        )
    unknown_keys = ["sk_unknown_key_0000000000000", "sk_another_unknown_key_1111111"]
    attempts = [
        ("malformed-0", None),
        ("malformed-1", "Basic abc"),
        ("unknown-0", f"Bearer {unknown_keys[0]}"),
        ("malformed-2", "Bearer"),
        ("unknown-1", f"Bearer {unknown_keys[1]}"),
    ]
    app = client.app  # type: ignore[attr-defined]
    await wait_for_a_fresh_minute()

    for source, sent in ((knocker, attempts), (neighbour, attempts[:1])):
        transport = httpx.ASGITransport(app=app, client=(source, 40_000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            for cid, authorization in sent:
                headers = {"X-Correlation-ID": cid}
                if authorization:
                    headers["Authorization"] = authorization
                assert_unauthorized(
                    await http.get(
                        payment_url("txn_00000000000000000000000000000abc"), headers=headers
                    )
                )

    rows = await refusal_rows(engine, knocker, neighbour)

    # One row per (minute, source, reason), however many attempts it counts.
    assert [(r["source"], r["reason"], r["attempts"]) for r in rows] == [
        (neighbour, "missing_or_malformed", 1),
        (knocker, "missing_or_malformed", 3),
        (knocker, "unknown_key", 2),
    ]
    by_reason = {r["reason"]: r for r in rows if r["source"] == knocker}
    malformed, unknown = by_reason["missing_or_malformed"], by_reason["unknown_key"]
    assert malformed["last_correlation_id"] == "malformed-2"
    assert unknown["last_correlation_id"] == "unknown-1"
    assert rows[0]["last_correlation_id"] == "malformed-0"
    for row in rows:
        window = row["window_start"]
        assert (window.second, window.microsecond) == (0, 0)
        assert window == malformed["window_start"]
        assert window <= row["first_seen_at"] <= row["last_seen_at"] < window + timedelta(minutes=1)
    assert malformed["first_seen_at"] < malformed["last_seen_at"]
    # No key material beyond a six-character prefix (of the first unknown key of the
    # minute, docs/api.md "Audit log"); none at all for a missing or malformed header.
    assert malformed["details"] == {}
    assert unknown["details"] == {"last_key_prefix": unknown_keys[-1][:6]}
    for key in unknown_keys:
        assert key not in str(rows)
        assert key[:7] not in str(rows)
    # Refusals are not rows of the audit log any more.
    assert await denied_audit_rows(engine) == []


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
