"""A merchant's webhook endpoint for tests: a real HTTP server on loopback that verifies
every delivery's signature with the ``standardwebhooks`` library, as a merchant would.

It can be taken down (its port closed: connections refused) and brought back on the same
port, or made to answer an error status, to drill retries.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver accepted (signature verified)."""

    webhook_id: str
    body: dict[str, Any]
    raw: bytes
    headers: dict[str, str]
    received_at: float
    """time.time() when it arrived."""

    @property
    def event_type(self) -> str:
        return str(self.body["event_type"])


@dataclass
class Receiver:
    """The endpoint; ``secrets`` are what it verifies with (any one must match)."""

    port: int = field(default_factory=free_port)
    secrets: list[str] = field(default_factory=list)
    status: int = 200
    delay_s: float = 0.0
    """How long each answer takes (a slow merchant)."""
    deliveries: list[Delivery] = field(default_factory=list)
    refused_signatures: int = 0
    failed_answers: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = False
        for secret in self.secrets:
            try:
                Webhook(secret).verify(raw, headers)
            except WebhookVerificationError:
                continue
            verified = True
            break
        if not verified:
            self.refused_signatures += 1
            return web.Response(status=401, text="bad signature")
        if self.status >= 300:
            self.failed_answers += 1
            return web.Response(status=self.status, text="not now")
        self.deliveries.append(
            Delivery(
                webhook_id=headers["webhook-id"],
                body=json.loads(raw),
                raw=raw,
                headers=headers,
                received_at=time.time(),
            )
        )
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for _ in range(50):
            try:
                await web.TCPSite(runner, "127.0.0.1", self.port).start()
                break
            except OSError:  # the port may linger a moment after a stop
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"port {self.port} stayed busy")
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- what arrived -------------------------------------------------------------------

    def ids(self) -> set[str]:
        return {d.webhook_id for d in self.deliveries}

    def of(self, transaction_id: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.body["transaction_id"] == transaction_id]

    def duplicates(self) -> int:
        """Deliveries that arrived more than once (at least once allows them)."""
        return sum(n - 1 for n in Counter(d.webhook_id for d in self.deliveries).values())

    def types(self) -> set[str]:
        return {d.event_type for d in self.deliveries}

    def has_all(self, event_ids: Sequence[str]) -> bool:
        return set(event_ids) <= self.ids()
