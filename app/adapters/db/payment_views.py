"""A per-worker cache of rendered payments that never answers older than the last write
acknowledged to any client, in any worker or replica (SPEC §8; docs/adr/0012).

What makes a cached view current enough:

- **Eviction.** Migration 0008's triggers NOTIFY ``payment_views`` with a payment's id on
  every change of what ``GET /api/v1/payments/{id}`` shows; the worker's listener
  (:class:`~app.adapters.db.notifications.CacheInvalidationListener`) evicts it here.
- **The barrier.** Delivery is asynchronous, so before answering from a copy a read waits
  for ``sync()``: every notification committed before the read began has then been
  processed. A view still here afterwards is current. Reads arriving together share one
  sync.
- **No stale store.** A load registers itself before it queries (its snapshot is taken
  later); an eviction of its payment while it runs marks it stale, and a stale load is
  answered but not kept. A read that joins a load begun before it (single-flight) uses
  its answer only if, after its own barrier, that very copy is still the cached one.
- **Listener down.** Every view and load is dropped when the listener loses or regains
  its connection (it may have missed notifications), and reads go to the database until
  it listens again.

Everything here runs on the worker's event loop, so a plain dict and the per-payment load
(the single-flight "lock") are all the locking needed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache

from app.services.ports import ViewLoader


class ViewBarrier(Protocol):
    """The listener as the cache sees it."""

    listening: asyncio.Event

    async def sync(self) -> bool:
        """True once every notification committed before the call has been processed."""
        ...


@dataclass(frozen=True, slots=True)
class _View:
    merchant_id: str
    body: bytes


@dataclass(slots=True, eq=False)
class _Load:
    merchant_id: str
    seq: int
    task: asyncio.Task[bytes | None] | None = None
    stale: bool = False
    kept: _View | None = None


class PaymentViewCache:
    """:class:`~app.services.ports.PaymentViews` kept current by a :class:`ViewBarrier`.

    Until :meth:`listen_through` gives it one, or while it is not listening, every read
    loads from the database and nothing is kept.
    """

    def __init__(self, *, size: int, ttl_s: float) -> None:
        if size < 1:
            raise ValueError("a payment view cache holds at least one view")
        self._views: TTLCache[str, _View] = TTLCache(maxsize=size, ttl=ttl_s)
        self._loads: dict[str, _Load] = {}
        self._started = 0  # loads begun so far: a load numbered above a read's began after it
        self._barrier: ViewBarrier | None = None

    def listen_through(self, barrier: ViewBarrier) -> None:
        """Use ``barrier`` (the worker's listener, subscribed to this cache)."""
        self._barrier = barrier

    def __len__(self) -> int:
        return len(self._views)

    def peek(self, transaction_id: str) -> bytes | None:
        """What is kept for the payment, unconfirmed by any barrier (diagnostics, tests)."""
        kept = self._views.get(transaction_id)
        return None if kept is None else kept.body

    def payment_changed(self, transaction_id: str) -> None:
        """Forget the payment's view, and keep no load of it already under way."""
        self._views.pop(transaction_id, None)
        running = self._loads.get(transaction_id)
        if running is not None:
            running.stale = True

    def all_may_have_changed(self) -> None:
        """Forget every view and keep no load under way."""
        self._views.clear()
        for running in self._loads.values():
            running.stale = True

    async def view(
        self, transaction_id: str, *, merchant_id: str, load: ViewLoader
    ) -> bytes | None:
        """The merchant's rendered payment, current as of the call (None: not found)."""
        began = self._started
        barrier = self._barrier
        if barrier is None or not barrier.listening.is_set():
            return await load()
        cached = self._views.get(transaction_id)
        if cached is not None and cached.merchant_id == merchant_id:
            if not await barrier.sync():
                return await load()
            cached = self._views.get(transaction_id)
            if cached is not None:
                return cached.body
            # Evicted while we waited: what was kept is behind; load it again.
        while (running := self._loads.get(transaction_id)) is not None:
            if running.merchant_id != merchant_id:
                return await load()  # someone else's payment: not found, nothing to share
            assert running.task is not None  # set as soon as the load is registered
            body = await asyncio.shield(running.task)
            if running.seq > began:
                return body  # it began after this read did: its snapshot is recent enough
            # It began first: usable only if nothing changed the payment since it began.
            kept = running.kept
            if (
                kept is not None
                and await barrier.sync()
                and self._views.get(transaction_id) is kept
            ):
                return body
            # Loads registered from now on began after this read: the loop ends next round.
        if not barrier.listening.is_set():
            return await load()
        return await self._load(transaction_id, merchant_id, load)

    async def _load(self, transaction_id: str, merchant_id: str, load: ViewLoader) -> bytes | None:
        self._started += 1
        mine = _Load(merchant_id, self._started)
        self._loads[transaction_id] = mine
        # A task of its own: a reader that goes away does not cancel the others' load.
        mine.task = asyncio.create_task(self._fill(transaction_id, mine, load))
        return await asyncio.shield(mine.task)

    async def _fill(self, transaction_id: str, mine: _Load, load: ViewLoader) -> bytes | None:
        try:
            body = await load()
        finally:
            if self._loads.get(transaction_id) is mine:
                del self._loads[transaction_id]
        if body is not None and not mine.stale:
            mine.kept = _View(mine.merchant_id, body)
            self._views[transaction_id] = mine.kept
        return body
