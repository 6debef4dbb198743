"""/health shares its probes (it needs no authentication), reports what waits for the
reconciler, and readiness says draining from the moment SIGTERM arrives."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.deps import Runtime, drain_on_sigterm
from app.services.ports import BankGateway
from tests.conftest import MerchantCredentials, make_settings
from tests.e2e.api_calls import pay
from tests.e2e.in_process_app import running_app


class CountingPings:
    def __init__(self, bank: BankGateway) -> None:
        self._bank = bank
        self.pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        await asyncio.sleep(0.05)  # long enough for concurrent callers to overlap
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)


@pytest.fixture
async def shared_probes() -> AsyncIterator[tuple[httpx.AsyncClient, CountingPings]]:
    async with running_app(make_settings(health_probe_cache_s=5.0)) as client:
        runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
        bank = CountingPings(runtime.services.bank)
        runtime.services = dataclasses.replace(runtime.services, bank=bank)
        yield client, bank


async def test_many_health_calls_make_one_bank_probe(
    shared_probes: tuple[httpx.AsyncClient, CountingPings],
) -> None:
    client, bank = shared_probes

    answers = await asyncio.gather(*(client.get("/health") for _ in range(25)))

    assert {a.status_code for a in answers} == {200}
    assert {a.json()["checks"]["bank"]["status"] for a in answers} == {"up"}
    assert bank.pings == 1
    await client.get("/health")
    assert bank.pings == 1  # still within HEALTH_PROBE_CACHE_S


async def test_health_reports_what_waits_for_the_reconciler(
    merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    settings = make_settings(reconciler_enabled=False, reconcile_alert_after_s=60.0)
    async with running_app(settings) as client:
        unknown = await pay(client, merchant, card_number="4000000000000119")
        assert unknown.status_code == 202
        fresh = (await client.get("/health")).json()
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE transactions SET created_at = :old WHERE status = 'processing'"),
                {"old": datetime.now(UTC) - timedelta(minutes=5)},
            )
        stale = (await client.get("/health")).json()

    assert fresh["checks"]["reconciliation"]["status"] == "up"
    assert fresh["checks"]["reconciliation"]["payments_processing"] == 1
    assert fresh["checks"]["reconciliation"]["refunds_pending"] == 0
    assert fresh["status"] == "healthy"
    assert stale["checks"]["reconciliation"]["status"] == "down"
    assert stale["checks"]["reconciliation"]["oldest_age_s"] >= 299
    assert stale["status"] == "degraded"


def test_readiness_says_draining_as_soon_as_sigterm_arrives_and_the_server_still_stops() -> None:
    runtime = Runtime(
        settings=make_settings(),
        services=None,  # type: ignore[arg-type]
        database_ping=None,  # type: ignore[arg-type]
        authenticator=None,  # type: ignore[arg-type]
        fingerprint_secret=b"",
    )
    seen: list[int] = []

    def servers_own_handler(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    original = signal.signal(signal.SIGTERM, servers_own_handler)
    try:
        drain_on_sigterm(runtime)
        assert not runtime.draining

        signal.raise_signal(signal.SIGTERM)

        assert runtime.draining
        assert seen == [signal.SIGTERM]  # the server's shutdown still runs
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_readiness_answers_draining_with_503(merchant: MerchantCredentials) -> None:
    async with running_app(make_settings()) as client:
        runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
        before = await client.get("/health/ready")
        runtime.draining = True
        during = await client.get("/health/ready")

    assert before.status_code == 200
    assert during.status_code == 503
    assert during.json() == {"status": "draining"}
