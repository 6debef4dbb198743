"""Invariants that must hold across worker processes: uvicorn with two workers, real HTTP.

Each worker has its own pools and caches; PostgreSQL is what they share. These tests run
the service the way production does and hit it concurrently over loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.services import merchants
from app.services.context import ServiceContext
from app.services.reconciliation import ReconcileReport, expire_authorizations
from tests.conftest import MerchantCredentials, payment_body


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(settings: Settings, migrated_database: str) -> Iterator[str]:
    """The app under uvicorn with two worker processes, on the test database."""
    port = _free_port()
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "DB_POOL_SIZE": "15",
        "DB_MAX_OVERFLOW": "10",
        "LOG_LEVEL": "WARNING",
    }
    for var in ("BANK_API_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--no-access-log",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base_url}/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"uvicorn did not become ready: {err[-2000:]}")
        time.sleep(0.2)
    try:
        yield base_url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=40)
    async with httpx.AsyncClient(base_url=server, timeout=30, limits=limits) as client:
        yield client


async def _warm_auth_caches(http: httpx.AsyncClient, headers: dict[str, str], n: int = 40) -> None:
    # Warm every worker's auth cache: with two workers, 40 requests reach both.
    await asyncio.gather(
        *(http.get("/api/v1/payments/txn_warmup", headers=headers) for _ in range(n))
    )


async def test_concurrent_refunds_across_workers_never_exceed_the_capture(
    http: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    paid = await http.post(
        "/api/v1/payments/process",
        json=payment_body(merchant.merchant_id, amount="100.00"),
        headers=merchant.headers,
    )
    assert paid.status_code == 200, paid.text
    txn_id = paid.json()["transaction_id"]

    responses = await asyncio.gather(
        *(
            http.post(
                f"/api/v1/payments/{txn_id}/refund",
                json={"amount": "10.00"},
                headers=merchant.headers,
            )
            for _ in range(20)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 10 + [409] * 10
    assert {r.json()["code"] for r in responses if r.status_code == 409} <= {
        "payment_not_refundable",
        "refund_exceeds_balance",
    }
    async with engine.connect() as conn:
        refunded = (
            await conn.execute(
                text(
                    "SELECT t.refunded_minor, t.status, "
                    "(SELECT sum(amount_minor) FROM refunds r "
                    " WHERE r.transaction_id = t.transaction_id AND r.status = 'succeeded') "
                    "FROM transactions t WHERE transaction_id = :id"
                ),
                {"id": txn_id},
            )
        ).one()
    assert refunded == (10_000, "refunded", 10_000)


async def test_one_idempotency_key_charges_once_across_workers(
    http: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    headers = {**merchant.headers, "Idempotency-Key": "order-42-attempt"}
    body = payment_body(merchant.merchant_id, amount="42.00")
    responses = await asyncio.gather(
        *(http.post("/api/v1/payments/process", json=body, headers=headers) for _ in range(10))
    )
    ok = [r for r in responses if r.status_code == 200]
    assert ok, [r.text for r in responses]
    assert {r.json()["transaction_id"] for r in ok} == {ok[0].json()["transaction_id"]}
    assert all(
        r.status_code == 200 or r.json()["code"] == "idempotency_in_progress" for r in responses
    )
    async with engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM transactions"))).scalar_one()
    assert count == 1


async def test_revoked_key_is_refused_by_every_worker_at_once(
    http: httpx.AsyncClient,
    merchant: MerchantCredentials,
    ctx: ServiceContext,
    settings: Settings,
) -> None:
    await _warm_auth_caches(http, merchant.headers)
    await merchants.revoke_key(
        ctx, api_key=merchant.api_key, pepper=settings.api_key_pepper.get_secret_value().encode()
    )
    statuses: list[int] = []
    deadline = time.monotonic() + 2.0  # NOTIFY is delivered on commit; allow for scheduling
    while time.monotonic() < deadline:
        batch = await asyncio.gather(
            *(http.get("/api/v1/payments/txn_any", headers=merchant.headers) for _ in range(20))
        )
        statuses = [r.status_code for r in batch]
        if set(statuses) == {401}:
            break
        await asyncio.sleep(0.05)
    assert set(statuses) == {401}


async def test_disabled_merchant_is_refused_by_every_worker(
    http: httpx.AsyncClient,
    create_merchant: Callable[..., Any],
    ctx: ServiceContext,
) -> None:
    creds: MerchantCredentials = await create_merchant()
    await _warm_auth_caches(http, creds.headers)
    await merchants.disable_merchant(ctx, merchant_id=creds.merchant_id)
    deadline = time.monotonic() + 2.0
    codes: set[str] = set()
    while time.monotonic() < deadline:
        batch = await asyncio.gather(
            *(
                http.post(
                    "/api/v1/payments/process",
                    json=payment_body(creds.merchant_id),
                    headers=creds.headers,
                )
                for _ in range(10)
            )
        )
        codes = {r.json().get("code", "") for r in batch}
        if codes == {"merchant_inactive"}:
            break
        await asyncio.sleep(0.05)
    assert codes == {"merchant_inactive"}


async def test_capture_void_and_expiry_racing_across_workers_have_one_winner_each(
    http: httpx.AsyncClient,
    merchant: MerchantCredentials,
    engine: AsyncEngine,
    ctx: ServiceContext,
) -> None:
    await _warm_auth_caches(http, merchant.headers)
    authorized = await asyncio.gather(
        *(
            http.post(
                "/api/v1/payments/process",
                json=payment_body(merchant.merchant_id, capture_method="manual"),
                headers=merchant.headers,
            )
            for _ in range(10)
        )
    )
    ids = [r.json()["transaction_id"] for r in authorized]
    assert {r.json()["status"] for r in authorized} == {"authorized"}
    async with engine.begin() as conn:  # old enough to expire: a third contender
        await conn.execute(
            text(
                "UPDATE transactions SET created_at = now() - interval '8 days'"
                " WHERE transaction_id = ANY(:ids)"
            ),
            {"ids": ids},
        )

    async def expiry_rounds() -> None:  # as a third process's reconciler would
        for _ in range(5):
            await expire_authorizations(ctx, ReconcileReport())

    calls = [
        http.post(f"/api/v1/payments/{txn}/{action}", headers=merchant.headers)
        for txn in ids
        for action in ("capture", "void", "capture", "void")
    ]
    results = await asyncio.gather(expiry_rounds(), *calls)

    responses = [r for r in results if isinstance(r, httpx.Response)]
    assert {r.status_code for r in responses} <= {200, 409}, [r.text for r in responses]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT t.transaction_id, t.status, t.pending_operation,"
                    " array_agg(o.event_type ORDER BY o.id) AS events"
                    " FROM transactions t JOIN outbox_events o ON o.aggregate_id = t.transaction_id"
                    " WHERE t.transaction_id = ANY(:ids) GROUP BY t.transaction_id"
                ),
                {"ids": ids},
            )
        ).all()
    assert len(rows) == len(ids)
    for row in rows:
        assert row.pending_operation is None
        assert row.status in {"captured", "voided", "expired"}
        assert row.events == ["payment.authorized", f"payment.{row.status}"]
        won = [
            r
            for r in responses
            if row.transaction_id in r.request.url.path and r.status_code == 200
        ]
        assert len(won) == (0 if row.status == "expired" else 1)
