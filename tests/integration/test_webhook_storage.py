"""The webhook tables on the real PostgreSQL: recording is idempotent, claims keep each
payment's order, leases keep two dispatchers off one delivery, and a dispatcher whose
lease was taken over cannot move the delivery on (app/adapters/db/webhooks.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.domain.webhooks import DeliveryStatus, EndpointStatus, WebhookEndpoint, new_endpoint_id
from app.services.ports.webhooks import AttemptRecord, AttemptResult, DueDelivery, ReceivedEvent
from tests.conftest import MerchantCredentials

UowFactory = Callable[[], SqlUnitOfWork]
LEASE = timedelta(seconds=30)


def endpoint(merchant_id: str, **changes: Any) -> WebhookEndpoint:
    now = datetime.now(UTC)
    made = WebhookEndpoint(
        endpoint_id=new_endpoint_id(),
        merchant_id=merchant_id,
        url="https://hooks.example.test/x",
        event_types=frozenset(),
        status=EndpointStatus.ENABLED,
        secret="v1.k.sealed",
        created_at=now,
        updated_at=now,
    )
    return dataclasses.replace(made, **changes)


def event(
    merchant_id: str, transaction_id: str = "txn_a", event_type: str = "payment.captured"
) -> ReceivedEvent:
    event_id = uuid.uuid4()
    return ReceivedEvent(
        event_id=event_id,
        event_type=event_type,
        merchant_id=merchant_id,
        transaction_id=transaction_id,
        occurred_at=datetime.now(UTC),
        body={"event_id": str(event_id), "event_type": event_type},
        trace_context={"x-datadog-trace-id": "1"},
    )


async def add(uow_factory: UowFactory, *endpoints: WebhookEndpoint) -> None:
    async with uow_factory() as uow:
        for made in endpoints:
            uow.webhooks.add_endpoint(made)
        await uow.commit()


async def record(uow_factory: UowFactory, *events: ReceivedEvent) -> int:
    async with uow_factory() as uow:
        created = await uow.webhooks.record_events(list(events))
        await uow.commit()
    return created


async def claim(
    uow_factory: UowFactory,
    claimer: str = "d1",
    *,
    at: datetime | None = None,
    limit: int = 50,
    ordered_attempts: int = 3,
) -> list[DueDelivery]:
    async with uow_factory() as uow:
        due = await uow.webhooks.claim_due(
            claimer=claimer,
            now=at or datetime.now(UTC),
            lease=LEASE,
            limit=limit,
            ordered_attempts=ordered_attempts,
        )
        await uow.commit()
    return due


def outcome(
    due: DueDelivery, *, delivered: bool, claimer: str = "d1", at: datetime | None = None
) -> AttemptRecord:
    now = at or datetime.now(UTC)
    return AttemptRecord(
        delivery_id=due.delivery_id,
        endpoint_id=due.endpoint.endpoint_id,
        transaction_id=due.transaction_id,
        result=AttemptResult(status_code=204 if delivered else 500, error=None, seconds=0.01),
        attempted_at=now,
        attempt=due.attempts + 1,
        status=DeliveryStatus.DELIVERED if delivered else DeliveryStatus.PENDING,
        next_attempt_at=None if delivered else now,
        dispatcher=claimer,
    )


async def store(
    uow_factory: UowFactory, *records: AttemptRecord, ordered_attempts: int = 3
) -> None:
    async with uow_factory() as uow:
        await uow.webhooks.record_attempts(list(records), ordered_attempts=ordered_attempts)
        await uow.commit()


async def rows(engine: AsyncEngine, sql: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(text(sql))).mappings()]


async def test_recording_an_event_twice_changes_nothing_and_unwanted_events_are_not_kept(
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
    uow_factory: UowFactory,
    engine: AsyncEngine,
) -> None:
    other = await create_merchant(merchant_id="merchant_without_hooks")
    everything = endpoint(merchant.merchant_id)
    refunds_only = endpoint(merchant.merchant_id, event_types=frozenset({"refund.succeeded"}))
    disabled = endpoint(merchant.merchant_id, status=EndpointStatus.DISABLED)
    removed = endpoint(merchant.merchant_id, status=EndpointStatus.REMOVED)
    await add(uow_factory, everything, refunds_only, disabled, removed)
    captured = event(merchant.merchant_id)
    refunded = event(merchant.merchant_id, event_type="refund.succeeded")
    unwanted = event(other.merchant_id)

    assert await record(uow_factory, captured, refunded, unwanted, captured) == 5
    assert await record(uow_factory, refunded, captured, unwanted) == 0  # a batch read again

    stored = await rows(engine, "SELECT event_id, endpoint_id FROM webhook_deliveries")
    assert {(r["event_id"], r["endpoint_id"]) for r in stored} == {
        (captured.event_id, everything.endpoint_id),
        (refunded.event_id, everything.endpoint_id),
        (refunded.event_id, refunds_only.endpoint_id),
        # A disabled endpoint's deliveries wait for it; a removed one gets none.
        (captured.event_id, disabled.endpoint_id),
        (refunded.event_id, disabled.endpoint_id),
    }
    # ...and they are not claimed while it is disabled.
    due = await claim(uow_factory)
    assert {d.endpoint.endpoint_id for d in due} == {
        everything.endpoint_id,
        refunds_only.endpoint_id,
    }
    kept = await rows(engine, "SELECT event_id, trace_context FROM webhook_events")
    assert {r["event_id"] for r in kept} == {captured.event_id, refunded.event_id}
    assert all(r["trace_context"] == {"x-datadog-trace-id": "1"} for r in kept)


async def test_a_payments_later_deliveries_wait_for_its_earlier_one(
    merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    hooks = endpoint(merchant.merchant_id)
    await add(uow_factory, hooks)
    first, second, third = (event(merchant.merchant_id, "txn_1") for _ in range(3))
    elsewhere = event(merchant.merchant_id, "txn_2")
    await record(uow_factory, first, second, third, elsewhere)

    due = await claim(uow_factory)
    assert {d.event_id for d in due} == {first.event_id, elsewhere.event_id}
    await store(uow_factory, *(outcome(d, delivered=True) for d in due))

    due = await claim(uow_factory)
    assert [d.event_id for d in due] == [second.event_id]
    # It fails, again and again: past ordered_attempts the third goes ahead of it.
    for attempt in range(1, 4):
        await store(uow_factory, outcome(due[0], delivered=False))
        due = await claim(uow_factory, ordered_attempts=3)
        expected = {second.event_id} | ({third.event_id} if attempt >= 3 else set())
        assert {d.event_id for d in due} == expected, attempt
        due = [d for d in due if d.event_id == second.event_id]


async def test_two_dispatchers_never_hold_one_delivery_and_a_lapsed_lease_frees_it(
    merchant: MerchantCredentials, uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    await add(uow_factory, endpoint(merchant.merchant_id))
    await record(uow_factory, *(event(merchant.merchant_id, f"txn_{n}") for n in range(40)))

    first, second = await asyncio.gather(
        claim(uow_factory, "d1", limit=25), claim(uow_factory, "d2", limit=25)
    )
    ids_1 = {d.delivery_id for d in first}
    ids_2 = {d.delivery_id for d in second}
    assert not ids_1 & ids_2
    assert len(ids_1 | ids_2) == 40
    assert await claim(uow_factory, "d3") == []  # all leased

    # d1 dies; once its lease runs out d3 takes its deliveries, and d1's late result for
    # them no longer moves them on.
    later = datetime.now(UTC) + LEASE + timedelta(seconds=1)
    taken = await claim(uow_factory, "d3", at=later)
    assert {d.delivery_id for d in taken} == ids_1 | ids_2
    await store(uow_factory, *(outcome(d, delivered=True, claimer="d1") for d in first))
    stored = await rows(engine, "SELECT status, claimed_by FROM webhook_deliveries")
    assert {(r["status"], r["claimed_by"]) for r in stored} == {("pending", "d3")}
    attempts = await rows(engine, "SELECT dispatcher FROM webhook_attempts")
    assert len(attempts) == len(first)  # the attempts happened: they are recorded
    await store(uow_factory, *(outcome(d, delivered=True, claimer="d3") for d in taken))
    stored = await rows(engine, "SELECT status, delivered_at FROM webhook_deliveries")
    assert all(r["status"] == "delivered" and r["delivered_at"] for r in stored)


async def test_failing_since_is_set_by_a_failure_and_cleared_by_a_success(
    merchant: MerchantCredentials, uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    hooks = endpoint(merchant.merchant_id)
    await add(uow_factory, hooks)
    await record(uow_factory, event(merchant.merchant_id, "txn_1"))
    (due,) = await claim(uow_factory)
    failed_at = datetime.now(UTC)
    await store(uow_factory, outcome(due, delivered=False, at=failed_at))
    (row,) = await rows(engine, "SELECT failing_since FROM webhook_endpoints")
    assert row["failing_since"] == failed_at

    async with uow_factory() as uow:
        young = await uow.webhooks.endpoints_to_disable(
            failed=[hooks.endpoint_id], given_up=[], since=failed_at - timedelta(seconds=1)
        )
        old = await uow.webhooks.endpoints_to_disable(
            failed=[hooks.endpoint_id], given_up=[], since=failed_at
        )
    assert young == [] and [e.endpoint_id for e in old] == [hooks.endpoint_id]

    (due,) = await claim(uow_factory)
    await store(uow_factory, outcome(due, delivered=True))
    (row,) = await rows(engine, "SELECT failing_since FROM webhook_endpoints")
    assert row["failing_since"] is None


async def test_finished_deliveries_are_purged_after_retention_pending_ones_never(
    merchant: MerchantCredentials, uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    await add(uow_factory, endpoint(merchant.merchant_id))
    await record(
        uow_factory, event(merchant.merchant_id, "txn_1"), event(merchant.merchant_id, "txn_2")
    )
    due = await claim(uow_factory)
    await store(uow_factory, outcome(due[0], delivered=True))
    async with uow_factory() as uow:
        none_yet = await uow.webhooks.purge_finished(
            before=datetime.now(UTC) - timedelta(days=1), limit=10
        )
        await uow.commit()
    async with uow_factory() as uow:
        purged = await uow.webhooks.purge_finished(
            before=datetime.now(UTC) + timedelta(seconds=1), limit=10
        )
        await uow.commit()
    assert none_yet == 0
    assert purged == 2  # the delivery (its attempt with it) and its event
    left = await rows(engine, "SELECT status FROM webhook_deliveries")
    assert [r["status"] for r in left] == ["pending"]
    assert len(await rows(engine, "SELECT 1 FROM webhook_events")) == 1
    assert await rows(engine, "SELECT 1 FROM webhook_attempts") == []


@pytest.mark.parametrize("grace", [True, False])
async def test_an_endpoint_update_keeps_its_secrets_sealed(
    merchant: MerchantCredentials, uow_factory: UowFactory, grace: bool
) -> None:
    hooks = endpoint(merchant.merchant_id)
    await add(uow_factory, hooks)
    expires = datetime.now(UTC) + timedelta(hours=1) if grace else None
    rotated = dataclasses.replace(
        hooks,
        secret="v1.k.newer",
        previous_secret="v1.k.sealed" if grace else None,
        previous_secret_expires_at=expires,
    )
    async with uow_factory() as uow:
        uow.webhooks.update_endpoint(rotated)
        await uow.commit()
    async with uow_factory() as uow:
        stored = await uow.webhooks.endpoint(hooks.endpoint_id)
    assert stored is not None
    assert (stored.secret, stored.previous_secret) == (
        "v1.k.newer",
        "v1.k.sealed" if grace else None,
    )
    assert stored.previous_secret_expires_at == expires


async def test_removing_an_endpoint_gives_up_its_pending_deliveries(
    merchant: MerchantCredentials, uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    kept, removed = endpoint(merchant.merchant_id), endpoint(merchant.merchant_id)
    await add(uow_factory, kept, removed)
    await record(uow_factory, event(merchant.merchant_id, "txn_1"))
    at = datetime.now(UTC)
    async with uow_factory() as uow:
        abandoned = await uow.webhooks.abandon_pending(removed.endpoint_id, at=at)
        await uow.commit()
    assert abandoned == 1
    stored = await rows(
        engine,
        "SELECT endpoint_id, status, last_error, finished_at FROM webhook_deliveries",
    )
    assert {(r["endpoint_id"], r["status"]) for r in stored} == {
        (kept.endpoint_id, "pending"),
        (removed.endpoint_id, "failed"),
    }
    (gone,) = [r for r in stored if r["endpoint_id"] == removed.endpoint_id]
    assert (gone["last_error"], gone["finished_at"]) == ("endpoint_removed", at)


async def test_enabling_an_endpoint_gives_what_waited_a_fresh_window(
    merchant: MerchantCredentials, uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    waiting = endpoint(merchant.merchant_id, status=EndpointStatus.DISABLED)
    await add(uow_factory, waiting)
    await record(uow_factory, event(merchant.merchant_id, "txn_1"))
    async with engine.begin() as conn:  # recorded four days ago, and tried twice since
        await conn.execute(
            text(
                "UPDATE webhook_deliveries SET created_at = now() - interval '4 days', "
                "attempts = 2, next_attempt_at = now() + interval '1 hour'"
            )
        )
    at = datetime.now(UTC)
    async with uow_factory() as uow:
        uow.webhooks.update_endpoint(dataclasses.replace(waiting, status=EndpointStatus.ENABLED))
        restarted = await uow.webhooks.restart_pending(waiting.endpoint_id, at=at)
        await uow.commit()
    assert restarted == 1
    (due,) = await claim(uow_factory)
    assert (due.attempts, due.recorded_at) == (0, at)


async def test_a_retried_delivery_holds_its_payments_later_ones_back_until_it_is_due(
    merchant: MerchantCredentials, uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    await add(uow_factory, endpoint(merchant.merchant_id))
    first = event(merchant.merchant_id, "txn_1")
    await record(uow_factory, first)
    (due,) = await claim(uow_factory)
    retry_at = datetime.now(UTC) + timedelta(minutes=5)
    failed = dataclasses.replace(outcome(due, delivered=False), next_attempt_at=retry_at)
    await store(uow_factory, failed)
    # Recorded after the failure: not due before the earlier one.
    later = event(merchant.merchant_id, "txn_1")
    await record(uow_factory, later)
    stored = await rows(engine, "SELECT event_id, next_attempt_at FROM webhook_deliveries")
    assert {r["event_id"]: r["next_attempt_at"] for r in stored} == {
        first.event_id: retry_at,
        later.event_id: retry_at,
    }
    assert await claim(uow_factory) == []

    # Recorded together, then the first fails: the later one is pushed behind it.
    second_payment = [event(merchant.merchant_id, "txn_2") for _ in range(2)]
    await record(uow_factory, *second_payment)
    (head,) = await claim(uow_factory)
    assert head.event_id == second_payment[0].event_id
    await store(
        uow_factory, dataclasses.replace(outcome(head, delivered=False), next_attempt_at=retry_at)
    )
    assert await claim(uow_factory) == []
    # When they are due, and past ordered_attempts, nobody is held back any more.
    due = await claim(uow_factory, at=retry_at + timedelta(seconds=1), ordered_attempts=1)
    assert {d.event_id for d in due} == {e.event_id for e in (first, later, *second_payment)}


async def test_a_disabled_endpoints_deliveries_are_parked_and_never_crowd_out_due_ones(
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
    uow_factory: UowFactory,
    engine: AsyncEngine,
) -> None:
    other = await create_merchant(merchant_id="merchant_busy_hooks")
    parked = endpoint(merchant.merchant_id, status=EndpointStatus.DISABLED)
    busy = endpoint(other.merchant_id)
    await add(uow_factory, parked, busy)
    # A backlog ten times the claim window for the disabled endpoint, recorded first...
    for start in range(0, 1000, 250):
        await record(
            uow_factory,
            *(event(merchant.merchant_id, f"txn_p{n}") for n in range(start, start + 250)),
        )
    # ...and, behind it, payments of another merchant whose first delivery is being retried.
    await record(uow_factory, *(event(other.merchant_id, f"txn_b{n}") for n in range(100)))
    heads = await claim(uow_factory, limit=100)
    assert len(heads) == 100
    retry_at = datetime.now(UTC) + timedelta(hours=1)
    await store(
        uow_factory,
        *(
            dataclasses.replace(outcome(d, delivered=False), next_attempt_at=retry_at)
            for d in heads
        ),
    )
    await record(uow_factory, *(event(other.merchant_id, f"txn_b{n}") for n in range(100)))
    fresh = [event(other.merchant_id, f"txn_new{n}") for n in range(5)]
    await record(uow_factory, *fresh)

    due = await claim(uow_factory, limit=5)
    assert {d.event_id for d in due} == {e.event_id for e in fresh}
    parked_rows = [
        r
        for r in await rows(engine, "SELECT endpoint_id, next_attempt_at FROM webhook_deliveries")
        if r["endpoint_id"] == parked.endpoint_id
    ]
    assert len(parked_rows) == 1000 and all(r["next_attempt_at"] is None for r in parked_rows)

    # Enabled again: everything that waited is due at once, with a fresh window.
    at = datetime.now(UTC)
    async with uow_factory() as uow:
        uow.webhooks.update_endpoint(dataclasses.replace(parked, status=EndpointStatus.ENABLED))
        assert await uow.webhooks.restart_pending(parked.endpoint_id, at=at) == 1000
        await uow.commit()
    assert len(await claim(uow_factory, limit=200)) == 200
    async with uow_factory() as uow:
        assert await uow.webhooks.park_pending(parked.endpoint_id) == 1000
        await uow.commit()
