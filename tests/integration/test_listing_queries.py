"""The listing's read (``SqlPaymentQueries.payment_page``) and its use case
(``list_payments``) on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.queries import SqlPaymentQueries, payment_page_statement
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.domain.errors import MerchantInactive, ValidationFailed
from app.domain.ids import new_transaction_id
from app.domain.merchants import MerchantStatus
from app.domain.payments import Payment
from app.services.context import ServiceContext
from app.services.listing import MAX_METADATA_FILTERS, MAX_PAGE_SIZE, list_payments
from app.services.ports import PageCursor, PaymentFilter
from tests.factories import MerchantFactory, PaymentFactory

UowFactory = Callable[[], SqlUnitOfWork]
T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)


async def seed(uow_factory: UowFactory, *payments: Payment) -> None:
    async with uow_factory() as uow:
        for merchant_id in sorted({p.merchant_id for p in payments}):
            uow.merchants.add(MerchantFactory(merchant_id=merchant_id))
        for payment in payments:
            uow.payments.add(payment)
        await uow.commit()


async def test_ties_are_ordered_by_the_statement_not_by_whichever_index_reads_them(
    engine: AsyncEngine, uow_factory: UowFactory
) -> None:
    ids = sorted(new_transaction_id() for _ in range(6))
    # Written in an order that is neither the listing's nor its reverse: a sort that
    # ignored transaction_id would give back some other order.
    written = [ids[k] for k in (2, 0, 4, 1, 5, 3)]
    await seed(uow_factory, *(PaymentFactory(transaction_id=i, created_at=T0) for i in written))
    statement = payment_page_statement(
        merchant_id="merchant_00000",
        filters=PaymentFilter(),
        limit=10,
        cursor=PageCursor(ids[-1]),  # the newest: the other five follow it
    )

    async with engine.connect() as conn:
        # A plan without an index: rows come in table order and must be sorted.
        await conn.execute(text("SET LOCAL enable_indexscan = off"))
        await conn.execute(text("SET LOCAL enable_bitmapscan = off"))
        await conn.execute(text("SET LOCAL enable_indexonlyscan = off"))
        rows = (await conn.execute(statement)).mappings().all()

    assert [row["transaction_id"] for row in rows] == ids[::-1][1:]


async def test_a_cursor_with_nothing_beyond_it_is_an_empty_page_not_an_unknown_cursor(
    uow_factory: UowFactory, queries: SqlPaymentQueries
) -> None:
    only = PaymentFactory(created_at=T0)
    await seed(uow_factory, only)

    older = await queries.payment_page(
        merchant_id=only.merchant_id,
        filters=PaymentFilter(),
        limit=5,
        cursor=PageCursor(only.transaction_id),
    )
    newer = await queries.payment_page(
        merchant_id=only.merchant_id,
        filters=PaymentFilter(),
        limit=5,
        cursor=PageCursor(only.transaction_id, newer=True),
    )

    assert older is not None and (older.payments, older.has_more) == ([], False)
    assert newer is not None and (newer.payments, newer.has_more) == ([], False)


@pytest.mark.parametrize("newer", [False, True])
async def test_a_cursor_of_another_merchant_is_no_cursor(
    uow_factory: UowFactory, queries: SqlPaymentQueries, newer: bool
) -> None:
    mine = PaymentFactory(merchant_id="merchant_a", created_at=T0)
    theirs = PaymentFactory(merchant_id="merchant_b", created_at=T0)
    await seed(uow_factory, mine, theirs)

    page = await queries.payment_page(
        merchant_id="merchant_a",
        filters=PaymentFilter(),
        limit=5,
        cursor=PageCursor(theirs.transaction_id, newer=newer),
    )

    assert page is None


async def test_a_page_holds_whole_payments_without_their_refunds(
    uow_factory: UowFactory, queries: SqlPaymentQueries
) -> None:
    payment = PaymentFactory(created_at=T0, metadata={"order_id": "1234", "items": [1, 2]})
    await seed(uow_factory, payment)

    page = await queries.payment_page(
        merchant_id=payment.merchant_id,
        filters=PaymentFilter(metadata={"order_id": "1234"}),
        limit=1,
    )

    assert page is not None
    (shown,) = page.payments
    assert shown.transaction_id == payment.transaction_id
    assert shown.metadata == payment.metadata
    assert shown.amount == payment.amount
    assert shown.card == payment.card
    assert shown.created_at == payment.created_at
    assert shown.refunds == []


# -- the use case keeps its own rules, whoever calls it ----------------------------------

USE_CASE_REFUSALS = {
    "no page": ({"limit": 0}, "limit"),
    "a page too long": ({"limit": MAX_PAGE_SIZE + 1}, "limit"),
    "too many metadata filters": (
        {
            "filters": PaymentFilter(
                metadata={f"k{n}": "v" for n in range(MAX_METADATA_FILTERS + 1)}
            )
        },
        "metadata",
    ),
    "a malformed cursor": ({"cursor": PageCursor("txn_nope")}, "starting_after"),
    "an unknown cursor": ({"cursor": PageCursor("txn_" + "0" * 32, newer=True)}, "ending_before"),
}


@pytest.mark.parametrize("case", list(USE_CASE_REFUSALS))
async def test_list_payments_refuses_what_no_page_can_answer(
    ctx: ServiceContext, uow_factory: UowFactory, case: str
) -> None:
    arguments, field = USE_CASE_REFUSALS[case]
    merchant = MerchantFactory()
    await seed(uow_factory, PaymentFactory(merchant_id=merchant.merchant_id, created_at=T0))

    with pytest.raises(ValidationFailed) as refused:
        await list_payments(ctx, merchant=merchant, **({"filters": PaymentFilter()} | arguments))

    assert refused.value.errors == [{"field": field, "message": refused.value.detail}]


async def test_list_payments_answers_the_list_object(
    ctx: ServiceContext, uow_factory: UowFactory
) -> None:
    merchant = MerchantFactory()
    older, newer = (
        PaymentFactory(merchant_id=merchant.merchant_id, created_at=T0.replace(second=s))
        for s in (1, 2)
    )
    await seed(uow_factory, older, newer)

    body = await list_payments(ctx, merchant=merchant, filters=PaymentFilter(), limit=1)

    assert body["object"] == "list"
    assert body["url"] == "/api/v1/payments"
    assert body["has_more"] is True
    assert [p["transaction_id"] for p in body["data"]] == [newer.transaction_id]
    assert "refunds" not in body["data"][0]


async def test_a_disabled_merchant_lists_nothing(ctx: ServiceContext) -> None:
    with pytest.raises(MerchantInactive):
        await list_payments(
            ctx,
            merchant=MerchantFactory(status=MerchantStatus.DISABLED),
            filters=PaymentFilter(),
        )
