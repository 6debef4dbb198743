"""A key whose first request stopped half-way: the retry answers what became of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.domain.errors import IdempotencyInProgress, IdempotencyKeyReused
from app.domain.ids import new_transaction_id
from app.services.context import ServiceContext
from app.services.idempotency import IdempotencyKey
from app.services.reconciliation import reconcile_once
from tests.service_calls import MERCHANT, pay

UowFactory = Callable[[], SqlUnitOfWork]
KEY = IdempotencyKey("stopped-half-way", "v2:" + "e" * 64, legacy_fingerprint="f" * 64)


async def leave_a_stale_claim(
    uow_factory: UowFactory, *, resource_id: str, fingerprint: str = KEY.fingerprint
) -> None:
    past = datetime.now(UTC) - timedelta(minutes=5)
    async with uow_factory() as uow:
        uow.idempotency.claim(
            merchant_id=MERCHANT.merchant_id,
            key=KEY.key,
            request_fingerprint=fingerprint,
            resource_id=resource_id,
            now=past,
            lock_for=timedelta(seconds=60),
            keep_for=timedelta(hours=24),
        )
        await uow.commit()


async def test_a_retry_after_the_first_request_died_answers_the_recorded_payment(
    ctx: ServiceContext, merchant: Any, engine: AsyncEngine
) -> None:
    # The first request recorded the payment, asked the bank (which approved: the simulator
    # remembers) and died before writing the outcome: its claim is left in progress.
    first = await pay(ctx, "4000000000000903")  # an unknown answer leaves it processing
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO idempotency_keys (merchant_id, idempotency_key, request_fingerprint,"
                " resource_id, state, locked_until, expires_at)"
                " VALUES (:m, :k, :f, :r, 'in_progress', now() - interval '1 minute',"
                " now() + interval '1 day')"
            ),
            {
                "m": MERCHANT.merchant_id,
                "k": KEY.key,
                "f": KEY.fingerprint,
                "r": first["transaction_id"],
            },
        )

    while_unsettled = await pay(ctx, "4000000000000903", idempotency=KEY)

    assert while_unsettled["transaction_id"] == first["transaction_id"]
    assert while_unsettled["status"] == "processing"
    later = datetime.now(UTC) + timedelta(seconds=11)
    await reconcile_once(dataclasses.replace(ctx, clock=lambda: later))
    settled = await pay(ctx, "4000000000000903", idempotency=KEY)
    assert settled["transaction_id"] == first["transaction_id"]
    assert settled["status"] == "captured"
    async with engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM transactions"))).scalar_one()
    assert count == 1  # nothing was charged again


async def test_a_claim_left_alone_by_an_older_release_is_run_again_as_the_same_payment(
    ctx: ServiceContext, merchant: Any, uow_factory: UowFactory, engine: AsyncEngine
) -> None:
    """Before records came first, a request could die after its claim and before any row;
    the retry runs it again under the same transaction id, which the bank deduplicates."""
    resource_id = new_transaction_id()
    await leave_a_stale_claim(
        uow_factory, resource_id=resource_id, fingerprint=str(KEY.legacy_fingerprint)
    )

    answer = await pay(ctx, idempotency=KEY)

    assert answer["transaction_id"] == resource_id
    assert answer["status"] == "captured"
    async with uow_factory() as uow:
        record = await uow.idempotency.get(merchant_id=MERCHANT.merchant_id, key=KEY.key)
    assert record is not None
    assert record.completed
    assert record.request_fingerprint == KEY.fingerprint  # stored the new way from now on
    async with engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM transactions"))).scalar_one()
    assert count == 1


async def test_a_claim_still_within_its_lock_is_in_progress_and_another_body_is_refused(
    ctx: ServiceContext, merchant: Any, uow_factory: UowFactory
) -> None:
    async with uow_factory() as uow:
        uow.idempotency.claim(
            merchant_id=MERCHANT.merchant_id,
            key=KEY.key,
            request_fingerprint=KEY.fingerprint,
            resource_id=new_transaction_id(),
            now=datetime.now(UTC),
            lock_for=timedelta(seconds=60),
            keep_for=timedelta(hours=24),
        )
        await uow.commit()

    with pytest.raises(IdempotencyInProgress):
        await pay(ctx, idempotency=KEY)
    with pytest.raises(IdempotencyKeyReused):
        await pay(ctx, idempotency=IdempotencyKey(KEY.key, "v2:" + "0" * 64))
