"""The database unreachable: 503 service_unavailable, and the bank is never asked.

The app reaches PostgreSQL through a TCP relay the test can cut, as a network partition or
a stopped server would: connections are refused and open ones reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.main import create_app
from app.services.ports import AuthorizationRequest, AuthorizationResult, BankGateway
from tests.conftest import TEST_DATABASE_URL, MerchantCredentials, make_settings
from tests.e2e.api_calls import assert_problem, pay, payment_url


class TcpRelay:
    """Forwards 127.0.0.1:<port> to PostgreSQL until cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            self._server.close()  # no wait_closed(): it would wait for the open connections
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0.1)  # let both ends see the reset

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class CountingBank:
    def __init__(self, bank: BankGateway) -> None:
        self._bank = bank
        self.authorizations = 0

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        self.authorizations += 1
        return await self._bank.authorize(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)


@pytest.fixture
async def relay() -> AsyncIterator[TcpRelay]:
    url = make_url(TEST_DATABASE_URL)
    tcp = TcpRelay(url.host or "127.0.0.1", url.port or 5432)
    await tcp.start()
    yield tcp
    await tcp.cut()


@pytest.fixture
async def app_through_relay(
    relay: TcpRelay, migrated_database: str
) -> AsyncIterator[tuple[httpx.AsyncClient, CountingBank]]:
    url = make_url(TEST_DATABASE_URL).set(host="127.0.0.1", port=relay.port)
    settings = make_settings(
        database_url=url.render_as_string(hide_password=False),
        db_pool_timeout_s=1.0,
        db_command_timeout_s=2.0,
        reconciler_enabled=False,
        purger_enabled=False,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        bank = CountingBank(runtime.services.bank)
        runtime.services = dataclasses.replace(runtime.services, bank=bank)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http, bank


async def test_a_cached_merchant_is_not_charged_while_the_database_is_down(
    relay: TcpRelay,
    app_through_relay: tuple[httpx.AsyncClient, CountingBank],
    merchant: MerchantCredentials,
) -> None:
    client, bank = app_through_relay
    # Authenticated once: the key is in this worker's cache from now on.
    warm = await client.get(
        payment_url("txn_00000000000000000000000000000abc"), headers=merchant.headers
    )
    assert warm.status_code == 404

    await relay.cut()
    response = await pay(client, merchant, key="while-down")

    problem = assert_problem(response, 503, "service_unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    assert "transaction_id" not in problem  # nothing was recorded
    assert bank.authorizations == 0, "the bank was asked although nothing could be recorded"
    for secret in ("asyncpg", "Traceback", "127.0.0.1", "password"):
        assert secret not in response.text


async def test_reads_and_authentication_answer_503_while_the_database_is_down(
    relay: TcpRelay,
    app_through_relay: tuple[httpx.AsyncClient, CountingBank],
    merchant: MerchantCredentials,
) -> None:
    client, _ = app_through_relay
    await relay.cut()

    read = await client.get(
        payment_url("txn_00000000000000000000000000000abc"), headers=merchant.headers
    )
    health = await client.get("/health")
    ready = await client.get("/health/ready")

    assert_problem(read, 503, "service_unavailable")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert ready.status_code == 503
