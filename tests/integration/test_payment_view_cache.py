"""The payment view cache never answers older than the last acknowledged write (SPEC §8).

Real PostgreSQL, real LISTEN/NOTIFY: each "worker" here is what a worker process has -- a
:class:`PaymentViewCache` and its own :class:`CacheInvalidationListener` connection -- and
writes go through the use cases on a separate unit of work, as another worker's would.
Loads are counted by wrapping the query port the cache loads through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.notifications import (
    PAYMENT_VIEWS_CHANNEL,
    CacheInvalidationListener,
    PaymentViewSubscriber,
    asyncpg_dsn,
)
from app.adapters.db.payment_views import PaymentViewCache
from app.core.config import Settings
from app.core.jsoncodec import dump_json
from app.domain.errors import PaymentNotFound
from app.domain.money import Money
from app.domain.payments import CaptureMethod, Payment, PaymentMethod
from app.services.authorizations import capture_payment
from app.services.context import ServiceContext
from app.services.payments import get_payment, process_payment
from app.services.ports import PaymentQueries
from app.services.responses import payment_response
from tests.conftest import MerchantCredentials
from tests.integration.test_outbox_relay import eventually
from tests.service_calls import MERCHANT, card, pay, refund

pytestmark = pytest.mark.usefixtures("merchant")

WAIT_S = 10.0  # a guard against hanging, never a measured limit


class CountingQueries:
    """The query port, counting the payment reads (the cache's loads)."""

    def __init__(self, inner: PaymentQueries) -> None:
        self._inner = inner
        self.payment_reads = 0

    async def payment(self, transaction_id: str, *, merchant_id: str) -> Payment | None:
        self.payment_reads += 1
        return await self._inner.payment(transaction_id, merchant_id=merchant_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclasses.dataclass
class Worker:
    """One worker's cache, listener and use-case context."""

    cache: PaymentViewCache
    listener: CacheInvalidationListener
    ctx: ServiceContext
    queries: CountingQueries

    @property
    def loads(self) -> int:
        return self.queries.payment_reads

    async def read(self, transaction_id: str) -> dict[str, Any]:
        body = await get_payment(self.ctx, merchant=MERCHANT, transaction_id=transaction_id)
        return dict(json.loads(body))

    def load_from_database(self, transaction_id: str) -> Callable[[], Awaitable[bytes | None]]:
        """The loader ``get_payment`` gives the cache, for calling the cache directly."""

        async def load() -> bytes | None:
            payment = await self.queries.payment(transaction_id, merchant_id=MERCHANT.merchant_id)
            assert payment is not None
            return dump_json(payment_response(payment, with_refunds=True)).encode()

        return load

    async def backend_pid(self) -> int | None:
        """The listener's server process: its LISTEN and its syncs name its private channel."""
        async with self.ctx_engine.connect() as conn:
            pids = (
                await conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                        "AND strpos(query, :channel) > 0"
                    ),
                    {"channel": self.listener.sync_channel},
                )
            ).scalars()
            found = list(pids)
        assert len(found) <= 1
        return found[0] if found else None

    ctx_engine: AsyncEngine = dataclasses.field(kw_only=True)


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(
    ctx: ServiceContext, settings: Settings, engine: AsyncEngine
) -> AsyncIterator[StartWorker]:
    listeners: list[CacheInvalidationListener] = []

    async def start(
        *,
        subscriber: Callable[[PaymentViewCache], PaymentViewSubscriber] | None = None,
        retry_s: float = 2.0,
        sync_timeout_s: float = 1.0,
    ) -> Worker:
        cache = PaymentViewCache(size=1000, ttl_s=600)
        listener = CacheInvalidationListener(
            settings.session_database_url,
            lambda: None,
            payment_views=cache if subscriber is None else subscriber(cache),
            retry_s=retry_s,
            sync_timeout_s=sync_timeout_s,
        )
        cache.listen_through(listener)
        listener.start()
        listeners.append(listener)
        await asyncio.wait_for(listener.listening.wait(), WAIT_S)
        queries = CountingQueries(ctx.queries)
        worker_ctx = dataclasses.replace(ctx, queries=queries, payment_views=cache)
        return Worker(cache, listener, worker_ctx, queries, ctx_engine=engine)

    yield start
    for listener in listeners:
        await listener.stop()


def _amount(value: Decimal) -> str:
    return f"{value:.2f}"


async def test_a_refund_through_one_worker_is_seen_at_once_by_another_workers_warm_cache(
    ctx: ServiceContext, start_worker: StartWorker
) -> None:
    a, b = await start_worker(), await start_worker()
    txn = (await pay(ctx, amount="99.99"))["transaction_id"]
    refunded = Decimal("0.00")
    for worker in (a, b):
        assert await worker.listener.sync()  # the payment's own notifications have landed
        await worker.read(txn)

    for i in range(30):
        first, second = (a, b) if i % 2 else (b, a)
        # Both caches hold the payment: a read now is answered without a query.
        loads = first.loads, second.loads
        assert (await first.read(txn))["refunded_amount"] == _amount(refunded)
        assert (await second.read(txn))["refunded_amount"] == _amount(refunded)
        assert (first.loads, second.loads) == loads

        await refund(ctx, txn, "0.01")  # acknowledged: committed by another unit of work
        refunded += Decimal("0.01")

        seen = await first.read(txn)
        assert seen["refunded_amount"] == _amount(refunded)
        assert [r["amount"] for r in seen["refunds"]] == ["0.01"] * (i + 1)
        assert (await second.read(txn))["refunded_amount"] == _amount(refunded)
        # Let late notifications of this round land, then warm both again.
        for worker in (a, b):
            assert await worker.listener.sync()
            await worker.read(txn)


async def test_a_capture_through_one_worker_is_seen_at_once_by_another_workers_warm_cache(
    ctx: ServiceContext, start_worker: StartWorker
) -> None:
    a, b = await start_worker(), await start_worker()
    for _ in range(10):
        answer = await process_payment(
            ctx,
            merchant=MERCHANT,
            merchant_id=MERCHANT.merchant_id,
            amount=Money.from_major("80.00", "EUR"),
            payment_method=PaymentMethod.CREDIT_CARD,
            card=card(),
            description=None,
            metadata={},
            correlation_id=None,
            idempotency=None,
            capture_method=CaptureMethod.MANUAL,
        )
        txn = answer.body["transaction_id"]
        for worker in (a, b, a, b):
            assert (await worker.read(txn))["status"] == "authorized"

        await capture_payment(
            ctx, merchant=MERCHANT, transaction_id=txn, amount=None, correlation_id=None
        )

        for worker in (b, a):
            seen = await worker.read(txn)
            assert (seen["status"], seen["captured_amount"]) == ("captured", "80.00")


class HeldViews:
    """A subscriber whose processing of ``payment_views`` waits until released: the
    listener is slow to process what PostgreSQL already delivered."""

    def __init__(self, cache: PaymentViewCache) -> None:
        self.cache = cache
        self.release = asyncio.Event()
        self.received: list[str] = []
        self.arrived = asyncio.Event()

    def payment_changed(self, transaction_id: str) -> Awaitable[None] | None:
        self.received.append(transaction_id)
        self.arrived.set()
        return self._later(transaction_id)

    async def _later(self, transaction_id: str) -> None:
        await self.release.wait()
        self.cache.payment_changed(transaction_id)

    def all_may_have_changed(self) -> None:
        self.cache.all_may_have_changed()


async def test_the_barrier_makes_a_hit_wait_for_the_eviction_of_an_acknowledged_write(
    ctx: ServiceContext, start_worker: StartWorker
) -> None:
    held: list[HeldViews] = []

    def subscriber(cache: PaymentViewCache) -> HeldViews:
        held.append(HeldViews(cache))
        return held[-1]

    # A generous sync timeout: the read must wait for the processing, not time out of it.
    worker = await start_worker(subscriber=subscriber, sync_timeout_s=60)
    views = held[0]
    txn = (await pay(ctx, amount="10.00"))["transaction_id"]
    views.release.set()
    await worker.read(txn)
    assert await worker.listener.sync()
    before = await worker.read(txn)
    assert before["refunded_amount"] == "0.00"
    loads = worker.loads
    views.release.clear()
    views.arrived.clear()

    await refund(ctx, txn, "2.50")  # acknowledged
    await asyncio.wait_for(views.arrived.wait(), WAIT_S)  # delivered, not yet processed

    # Negative control: the kept copy, read without the barrier, is stale.
    kept = worker.cache.peek(txn)
    assert kept is not None
    assert json.loads(kept)["refunded_amount"] == "0.00"

    # A read through the cache waits behind the held notification ...
    read = asyncio.create_task(worker.read(txn))
    await asyncio.sleep(0.3)
    assert not read.done()
    assert worker.loads == loads
    # ... and once it is processed, answers the refund, loaded afresh.
    views.release.set()
    after = await asyncio.wait_for(read, WAIT_S)
    assert after["refunded_amount"] == "2.50"
    assert worker.loads == loads + 1


async def test_a_load_that_an_invalidation_overtakes_is_answered_but_not_kept(
    ctx: ServiceContext, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    txn = (await pay(ctx, amount="10.00"))["transaction_id"]
    queried, release = asyncio.Event(), asyncio.Event()
    load = worker.load_from_database(txn)

    async def slow_load() -> bytes | None:
        body = await load()
        queried.set()
        await release.wait()
        return body

    reading = asyncio.create_task(
        worker.cache.view(txn, merchant_id=MERCHANT.merchant_id, load=slow_load)
    )
    await asyncio.wait_for(queried.wait(), WAIT_S)
    await refund(ctx, txn, "1.00")
    assert await worker.listener.sync()  # the eviction reached the cache while it loaded
    release.set()

    # Its reader began before the refund: the old view is its answer, but it is not kept.
    assert json.loads(await asyncio.wait_for(reading, WAIT_S))["refunded_amount"] == "0.00"
    assert worker.cache.peek(txn) is None
    assert (await worker.read(txn))["refunded_amount"] == "1.00"
    # Positive control: a load nothing overtook is kept.
    kept = worker.cache.peek(txn)
    assert kept is not None
    assert json.loads(kept)["refunded_amount"] == "1.00"


async def test_a_read_joining_a_load_begun_before_a_write_does_not_take_its_answer(
    ctx: ServiceContext, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    txn = (await pay(ctx, amount="10.00"))["transaction_id"]
    queried, release = asyncio.Event(), asyncio.Event()
    load = worker.load_from_database(txn)

    async def slow_load() -> bytes | None:
        body = await load()
        queried.set()
        await release.wait()
        return body

    first = asyncio.create_task(
        worker.cache.view(txn, merchant_id=MERCHANT.merchant_id, load=slow_load)
    )
    await asyncio.wait_for(queried.wait(), WAIT_S)
    await refund(ctx, txn, "3.00")  # acknowledged before the second read begins
    second = asyncio.create_task(worker.read(txn))
    await asyncio.sleep(0)  # the second read is now waiting on the first one's load
    release.set()

    assert json.loads(await first)["refunded_amount"] == "0.00"
    assert (await second)["refunded_amount"] == "3.00"


async def test_concurrent_misses_of_one_payment_share_one_query(
    ctx: ServiceContext, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    txn = (await pay(ctx))["transaction_id"]
    assert await worker.listener.sync()  # the payment's own notifications have landed

    seen = await asyncio.gather(*(worker.read(txn) for _ in range(25)))

    assert worker.loads == 1
    assert all(view == seen[0] for view in seen)
    assert seen[0]["transaction_id"] == txn
    # Hits that arrive together share their barrier too, and query nothing.
    again = await asyncio.gather(*(worker.read(txn) for _ in range(25)))
    assert again == seen
    assert worker.loads == 1


async def test_not_found_is_never_kept_and_another_merchant_never_gets_a_kept_view(
    ctx: ServiceContext, start_worker: StartWorker, create_merchant: Callable[..., Any]
) -> None:
    worker = await start_worker()
    other: MerchantCredentials = await create_merchant(merchant_id="merchant_other")
    other_merchant = dataclasses.replace(MERCHANT, merchant_id=other.merchant_id)
    txn = (await pay(ctx))["transaction_id"]
    assert await worker.listener.sync()
    unknown = "txn_" + "0" * 32

    for _ in range(2):
        with pytest.raises(PaymentNotFound):
            await worker.read(unknown)
    assert (worker.loads, len(worker.cache)) == (2, 0)

    await worker.read(txn)  # kept, for its merchant
    for _ in range(2):
        with pytest.raises(PaymentNotFound):
            await get_payment(worker.ctx, merchant=other_merchant, transaction_id=txn)
    assert worker.loads == 5  # each of the other merchant's reads asked the database
    assert worker.cache.peek(txn) is not None


async def test_losing_the_listener_clears_the_cache_and_reads_go_to_the_database(
    ctx: ServiceContext, start_worker: StartWorker, engine: AsyncEngine
) -> None:
    worker = await start_worker(retry_s=3600)  # stays down for the test
    txn = (await pay(ctx, amount="10.00"))["transaction_id"]
    assert await worker.listener.sync()
    await worker.read(txn)
    await worker.read(txn)
    assert (worker.loads, len(worker.cache)) == (1, 1)
    pid = await worker.backend_pid()
    assert pid is not None

    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    async def down() -> bool:
        return not worker.listener.listening.is_set()

    await eventually(down, what="listener down")
    assert len(worker.cache) == 0
    assert not await worker.listener.sync()
    await refund(ctx, txn, "1.00")  # its notification goes nowhere
    for _ in range(3):
        assert (await worker.read(txn))["refunded_amount"] == "1.00"
    assert worker.loads == 4
    assert len(worker.cache) == 0


async def test_a_listener_that_reconnects_starts_from_an_empty_cache(
    ctx: ServiceContext, start_worker: StartWorker, engine: AsyncEngine
) -> None:
    worker = await start_worker(retry_s=0.05)
    txn = (await pay(ctx, amount="10.00"))["transaction_id"]
    await worker.read(txn)
    pid = await worker.backend_pid()
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    async def back() -> bool:
        new = await worker.backend_pid()
        return new is not None and new != pid and worker.listener.listening.is_set()

    await eventually(back, what="listener back")
    assert len(worker.cache) == 0
    await worker.read(txn)
    await refund(ctx, txn, "4.00")
    assert (await worker.read(txn))["refunded_amount"] == "4.00"
    assert await worker.listener.sync()  # the refund's last notification has landed
    await worker.read(txn)
    loads = worker.loads
    assert (await worker.read(txn))["refunded_amount"] == "4.00"
    assert worker.loads == loads  # caching again


@pytest.fixture
async def payment_views_channel(settings: Settings) -> AsyncIterator[asyncio.Queue[str]]:
    """Every ``payment_views`` notification, on a LISTEN connection of the test's own."""
    received: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(asyncpg_dsn(settings.session_database_url))
    await conn.add_listener(PAYMENT_VIEWS_CHANNEL, lambda *args: received.put_nowait(args[3]))
    yield received
    await conn.close()


async def _notified(received: asyncio.Queue[str], engine: AsyncEngine) -> list[str]:
    """What was notified before now: a marker committed now arrives after all of it."""
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT pg_notify(:channel, 'marker')"), {"channel": "payment_views"}
        )
    payloads = []
    while (payload := await asyncio.wait_for(received.get(), WAIT_S)) != "marker":
        payloads.append(payload)
    return payloads


async def _run(engine: AsyncEngine, statement: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)


async def test_every_change_of_a_payments_view_notifies_its_id(
    ctx: ServiceContext, engine: AsyncEngine, payment_views_channel: asyncio.Queue[str]
) -> None:
    received = payment_views_channel
    txn = (await pay(ctx, amount="10.00"))["transaction_id"]  # recorded, then settled
    assert set(await _notified(received, engine)) == {txn}

    # The payment's row: a status change, any other change, and no change at all.
    await _run(
        engine,
        "UPDATE transactions SET status = 'partially_refunded', refunded_minor = 100 "
        "WHERE transaction_id = :t",
        t=txn,
    )
    assert await _notified(received, engine) == [txn]
    await _run(engine, "UPDATE transactions SET description = 'x' WHERE transaction_id = :t", t=txn)
    assert await _notified(received, engine) == [txn]
    await _run(
        engine, "UPDATE transactions SET description = description WHERE transaction_id = :t", t=txn
    )
    assert await _notified(received, engine) == []

    # Its refunds alone: inserted, settled, changed otherwise, removed.
    await _run(
        engine,
        "INSERT INTO refunds (refund_id, transaction_id, amount_minor, currency, status) "
        "VALUES ('ref_trigger_test', :t, 100, 'USD', 'pending')",
        t=txn,
    )
    assert await _notified(received, engine) == [txn]
    await _run(
        engine, "UPDATE refunds SET status = 'succeeded' WHERE refund_id = 'ref_trigger_test'"
    )
    assert await _notified(received, engine) == [txn]
    await _run(engine, "UPDATE refunds SET reason = 'late' WHERE refund_id = 'ref_trigger_test'")
    assert await _notified(received, engine) == [txn]
    await _run(engine, "DELETE FROM refunds WHERE refund_id = 'ref_trigger_test'")
    assert await _notified(received, engine) == [txn]

    # A rolled-back change tells no one.
    async with engine.connect() as conn:
        await conn.execute(
            text("UPDATE transactions SET description = 'y' WHERE transaction_id = :t"), {"t": txn}
        )
        await conn.rollback()
    assert await _notified(received, engine) == []

    # Through the use cases: a refund (reserved, then settled).
    await refund(ctx, txn, "1.00")
    assert set(await _notified(received, engine)) == {txn}
