"""Cross-process cache invalidation over PostgreSQL LISTEN/NOTIFY.

Admin operations NOTIFY in the transaction that changes a merchant or key; every worker
LISTENs and clears its auth cache when told, or when its listening connection drops (it
may have missed a message), so no worker serves a revoked key or a disabled merchant
from its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

CACHE_CHANNEL = "payments_cache_invalidation"


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL as a plain libpq DSN for asyncpg."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


class CacheInvalidationListener:
    """Keeps one LISTEN connection open and calls ``on_change`` for every notification."""

    def __init__(
        self, database_url: str, on_change: Callable[[], None], *, retry_s: float = 2.0
    ) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._on_change = on_change
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        """Begin listening in the background."""
        self._task = asyncio.create_task(self._run(), name="cache-invalidation-listener")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _notified(self, *_: Any) -> None:
        self._on_change()

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(CACHE_CHANNEL, self._notified)
                self._on_change()  # anything may have changed while we were not listening
                self.listening.set()
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening through database restarts
                logger.warning("cache invalidation listener down: %s", type(exc).__name__)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            self._on_change()
            await asyncio.sleep(self._retry_s)
