"""Cross-process cache invalidation over PostgreSQL LISTEN/NOTIFY.

Admin operations NOTIFY in the transaction that changes a merchant or key; every worker
LISTENs and clears its auth cache when told, or when its listening connection drops (it
may have missed a message), so no worker serves a revoked key or a disabled merchant
from its cache.

The same connection LISTENs on ``payment_views`` (triggers of migration 0008 send a
payment's id whenever its view changes) for the payment view cache, and answers its
*barrier* (:meth:`CacheInvalidationListener.sync`): NOTIFY a token on a channel private
to this listener and wait for it to come back. PostgreSQL queues notifications in commit
order and delivers them in queue order, each only once its transaction's commit is
visible; asyncpg hands them to the callbacks below in that order (``loop.call_soon``);
every notification is processed in that order here too, a slow (awaitable) one holding up
those behind it. So once the token is processed, so is every notification committed
before the token was sent (docs/adr/0012-coherent-payment-view-cache.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import asyncpg
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

CACHE_CHANNEL = "payments_cache_invalidation"
PAYMENT_VIEWS_CHANNEL = "payment_views"
"""Payload: the id of a payment whose view changed (migration 0008's triggers)."""
SYNC_CHANNEL_PREFIX = "payment_views_sync_"


class PaymentViewSubscriber(Protocol):
    """What the listener tells a payment view cache."""

    def payment_changed(self, transaction_id: str) -> Awaitable[None] | None:
        """This payment's view changed; an awaitable holds up the notifications behind it."""
        ...

    def all_may_have_changed(self) -> None:
        """Notifications may have been missed (the connection was lost, or is new)."""
        ...


_TOKEN = object()  # marks a barrier token among the notifications waiting to be processed


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL as a plain libpq DSN for asyncpg."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


class CacheInvalidationListener:
    """Keeps one LISTEN connection open and calls ``on_change`` for every notification on
    the auth channel; with ``payment_views``, also tells it of every payment view change
    and answers :meth:`sync`."""

    def __init__(
        self,
        database_url: str,
        on_change: Callable[[], None],
        *,
        payment_views: PaymentViewSubscriber | None = None,
        retry_s: float = 2.0,
        sync_timeout_s: float = 1.0,
    ) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._on_change = on_change
        self._views = payment_views
        self._retry_s = retry_s
        self._sync_timeout_s = sync_timeout_s
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        # Private to this listener: nobody else LISTENs on it, so its tokens wake no one else.
        self.sync_channel = SYNC_CHANNEL_PREFIX + uuid.uuid4().hex
        self._tokens = itertools.count()
        self._next_sync: asyncio.Future[bool] | None = None  # reads waiting for the next sync
        self._sync_wanted = asyncio.Event()
        self._in_flight: tuple[str, asyncio.Future[None], asyncio.Future[bool]] | None = None
        # Notifications behind one whose processing is awaited, in arrival order.
        self._backlog: deque[tuple[object, str]] = deque()
        self._draining: asyncio.Task[None] | None = None

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

    async def sync(self) -> bool:
        """Wait until every notification committed before this call has been processed.

        False when that cannot be known: not listening, or no answer within the sync
        timeout (the connection is then dropped and the caches cleared). Calls that arrive
        while a sync is in flight share the next one: at most one is in flight.
        """
        if self._views is None or not self.listening.is_set():
            return False
        waiting = self._next_sync
        if waiting is None:
            waiting = self._next_sync = asyncio.get_running_loop().create_future()
            self._sync_wanted.set()
        # Shielded: a caller that gives up (its client went away) must not cancel the others'.
        return await asyncio.shield(waiting)

    def _notified(self, *_: Any) -> None:
        self._on_change()

    def _payment_view_notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._dispatch(PAYMENT_VIEWS_CHANNEL, payload)

    def _token_notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._dispatch(_TOKEN, payload)

    def _dispatch(self, kind: object, payload: str) -> None:
        """Process a notification now, or behind those still waiting: in arrival order."""
        if self._draining is not None:
            self._backlog.append((kind, payload))
            return
        pending = self._process(kind, payload)
        if pending is not None:
            self._draining = asyncio.create_task(self._drain(pending))

    def _process(self, kind: object, payload: str) -> Awaitable[None] | None:
        if kind is _TOKEN:
            in_flight = self._in_flight
            if in_flight is not None and in_flight[0] == payload:
                _, arrived, readers = in_flight
                if not arrived.done():
                    arrived.set_result(None)
                if not readers.done():
                    readers.set_result(True)
            return None
        assert self._views is not None  # only subscribed with a subscriber
        return self._views.payment_changed(payload)

    async def _drain(self, pending: Awaitable[None]) -> None:
        try:
            await pending
            while self._backlog:
                kind, payload = self._backlog.popleft()
                later = self._process(kind, payload)
                if later is not None:
                    await later
        finally:
            self._draining = None

    def _views_may_have_changed(self) -> None:
        if self._views is not None:
            self._views.all_may_have_changed()

    async def _run_syncs(self, conn: asyncpg.Connection) -> None:
        """Send one token per group of waiting :meth:`sync` calls, one at a time."""
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted.clear()
            readers, self._next_sync = self._next_sync, None
            if readers is None:
                continue
            try:
                await self._round_trip(conn, str(next(self._tokens)), readers)
            except Exception as exc:  # timed out, or the connection is gone
                logger.warning("payment view sync failed (%s): reconnecting", type(exc).__name__)
                conn.terminate()  # what it may still deliver is late: start afresh
                return
            finally:
                if not readers.done():
                    readers.set_result(False)

    async def _round_trip(
        self, conn: asyncpg.Connection, token: str, readers: asyncio.Future[bool] | None = None
    ) -> None:
        """NOTIFY ``token`` on the private channel and wait until it has been processed."""
        loop = asyncio.get_running_loop()
        arrived: asyncio.Future[None] = loop.create_future()
        self._in_flight = (token, arrived, readers or loop.create_future())
        try:
            async with asyncio.timeout(self._sync_timeout_s):
                # Simple protocol, one round trip; both names are ours (no quoting needed).
                await conn.execute(f"NOTIFY {self.sync_channel}, '{token}'")
                await arrived
        finally:
            self._in_flight = None

    def _fail_syncs(self) -> None:
        for waiting in (self._next_sync, self._in_flight[2] if self._in_flight else None):
            if waiting is not None and not waiting.done():
                waiting.set_result(False)
        self._next_sync = None
        self._in_flight = None

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            syncs: asyncio.Task[None] | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(CACHE_CHANNEL, self._notified)
                if self._views is not None:
                    await conn.add_listener(PAYMENT_VIEWS_CHANNEL, self._payment_view_notified)
                    await conn.add_listener(self.sync_channel, self._token_notified)
                    # A token must come back before any read relies on one: a connection
                    # through a transaction pooler, say, would never deliver it.
                    await self._round_trip(conn, "probe")
                self._on_change()  # anything may have changed while we were not listening
                self._views_may_have_changed()
                self.listening.set()
                if self._views is not None:
                    syncs = asyncio.create_task(self._run_syncs(conn), name="payment-view-syncs")
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening through database restarts
                logger.warning("cache invalidation listener down: %s", type(exc).__name__)
            finally:
                self.listening.clear()
                self._views_may_have_changed()
                if syncs is not None:
                    syncs.cancel()
                self._fail_syncs()
                self._backlog.clear()
                if self._draining is not None:
                    self._draining.cancel()
                    self._draining = None
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            self._on_change()
            await asyncio.sleep(self._retry_s)
