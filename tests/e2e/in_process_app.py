"""Another instance of the real app, in this process, with settings of a test's choosing."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import httpx

from app.core.config import Settings
from app.main import create_app


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its whole lifespan (relay, reconciler, purger), ended with the block;
    the client's ``app`` attribute is the app, for tests that reach into its runtime."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


def closed_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
