"""GET /api/v1/payments through the real app (docs/api.md, "Listing payments").

Payments with chosen ``created_at`` values are written through the repositories (fast,
exact instants, ties on purpose); those the listing must show exactly as ``GET`` does are
made through the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.domain.ids import new_transaction_id
from app.domain.payments import PaymentStatus
from app.services import merchants
from app.services.context import ServiceContext
from tests.conftest import MerchantCredentials
from tests.e2e.api_calls import assert_problem, pay, payment_url, refund
from tests.factories import PaymentFactory

LIST = "/api/v1/payments"
T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
UowFactory = Callable[[], SqlUnitOfWork]
Query = Sequence[tuple[str, str | int]]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def z(instant: datetime) -> str:
    """An instant as a query parameter: ISO 8601 in UTC with a Z."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def seed(
    uow_factory: UowFactory, merchant_id: str, created: Sequence[datetime], **fields: Any
) -> list[str]:
    """One payment per instant of ``created`` (in that order), with ``fields``; their ids."""
    payments = [PaymentFactory(merchant_id=merchant_id, created_at=c, **fields) for c in created]
    async with uow_factory() as uow:
        for payment in payments:
            uow.payments.add(payment)
        await uow.commit()
    return [payment.transaction_id for payment in payments]


def newest_first(ids: Sequence[str], created: Sequence[datetime]) -> list[str]:
    """The ids in the listing's order: ``created_at`` descending, ties by id descending."""
    return [i for _, i in sorted(zip(created, ids, strict=True), reverse=True)]


async def listing(
    client: httpx.AsyncClient, merchant: MerchantCredentials, query: Query = ()
) -> httpx.Response:
    return await client.get(LIST, params=list(query), headers=merchant.headers)


async def page(
    client: httpx.AsyncClient, merchant: MerchantCredentials, query: Query = ()
) -> tuple[list[str], bool]:
    """A 200 page's ids and ``has_more``."""
    response = await listing(client, merchant, query)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["url"] == LIST
    return [payment["transaction_id"] for payment in body["data"]], body["has_more"]


async def walk(
    client: httpx.AsyncClient, merchant: MerchantCredentials, query: Query = ()
) -> list[list[str]]:
    """Every page, following ``has_more`` with ``starting_after``."""
    pages: list[list[str]] = []
    cursor: list[tuple[str, str | int]] = []
    for _ in range(100):
        ids, has_more = await page(client, merchant, [*query, *cursor])
        pages.append(ids)
        if not has_more:
            return pages
        cursor = [("starting_after", ids[-1])]
    raise AssertionError("the listing never ended")


def invalid_fields(response: httpx.Response) -> set[str]:
    body = assert_problem(response, 422, "validation_error")
    return {entry["field"] for entry in body["errors"]}


# -- the list object ----------------------------------------------------------------------


async def test_a_merchant_without_payments_gets_an_empty_list(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    response = await listing(client, merchant)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"object": "list", "data": [], "has_more": False, "url": LIST}


async def test_payments_are_listed_newest_first_exactly_as_get_shows_them(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    ids = []
    for card in ("4242 4242 4242 4242", "4000000000000002", "5555555555554444"):
        ids.append((await pay(client, merchant, card_number=card)).json()["transaction_id"])
    assert (await refund(client, merchant, ids[2], "10.00")).status_code == 200

    response = await listing(client, merchant)

    shown = response.json()["data"]
    assert [payment["transaction_id"] for payment in shown] == ids[::-1]
    for payment in shown:
        detail = await client.get(payment_url(payment["transaction_id"]), headers=merchant.headers)
        assert payment == {k: v for k, v in detail.json().items() if k != "refunds"}
    assert [p["status"] for p in shown] == ["partially_refunded", "declined", "captured"]
    assert shown[0]["refunded_amount"] == "10.00"


async def test_the_default_page_holds_ten(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    created = [at(k) for k in range(12)]
    ids = await seed(uow_factory, merchant.merchant_id, created)

    shown, has_more = await page(client, merchant)

    assert shown == newest_first(ids, created)[:10]
    assert has_more is True


# -- pagination ---------------------------------------------------------------------------


async def test_starting_after_walks_every_page_once_in_order(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    # 25 payments, the middle ones sharing instants: ties are broken by transaction_id.
    created = [at(k // 3) for k in range(25)]
    expected = newest_first(await seed(uow_factory, merchant.merchant_id, created), created)

    pages = await walk(client, merchant, [("limit", 10)])

    assert pages == [expected[:10], expected[10:20], expected[20:]]


async def test_has_more_is_false_on_a_last_page_that_is_exactly_full(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    created = [at(k) for k in range(6)]
    expected = newest_first(await seed(uow_factory, merchant.merchant_id, created), created)

    first, more_after_first = await page(client, merchant, [("limit", 3)])
    second, more_after_second = await page(
        client, merchant, [("limit", 3), ("starting_after", first[-1])]
    )
    beyond, more_beyond = await page(
        client, merchant, [("limit", 3), ("starting_after", second[-1])]
    )

    assert (first, more_after_first) == (expected[:3], True)
    assert (second, more_after_second) == (expected[3:], False)
    assert (beyond, more_beyond) == ([], False)


@pytest.mark.parametrize(
    "query",
    [[], [("metadata[channel]", "web")], [("created[lte]", z(T0))]],
    ids=["read in index order", "sorted after a filter", "with a created bound"],
)
async def test_payments_created_at_the_same_instant_are_ordered_by_transaction_id(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    uow_factory: UowFactory,
    query: list[tuple[str, str]],
) -> None:
    # Written in an order that is neither the listing's nor its reverse.
    ids = sorted(new_transaction_id() for _ in range(7))
    for transaction_id in (ids[k] for k in (3, 0, 5, 1, 6, 2, 4)):
        await seed(
            uow_factory,
            merchant.merchant_id,
            [T0],
            transaction_id=transaction_id,
            metadata={"channel": "web"},
        )

    pages = await walk(client, merchant, [*query, ("limit", 3)])

    assert pages == [ids[::-1][i : i + 3] for i in (0, 3, 6)]


async def test_ending_before_gives_the_newer_page_right_before_the_cursor_newest_first(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    created = [at(k // 2) for k in range(25)]
    expected = newest_first(await seed(uow_factory, merchant.merchant_id, created), created)
    first, second, third = expected[:10], expected[10:20], expected[20:]

    back_to_second = await page(client, merchant, [("limit", 10), ("ending_before", third[0])])
    back_to_first = await page(client, merchant, [("limit", 10), ("ending_before", second[0])])
    nothing_newer = await page(client, merchant, [("limit", 10), ("ending_before", first[0])])
    just_before = await page(client, merchant, [("limit", 3), ("ending_before", third[0])])

    assert back_to_second == (second, True)
    assert back_to_first == (first, False)
    assert nothing_newer == ([], False)
    assert just_before == (second[-3:], True)


async def test_pages_stay_put_while_new_payments_arrive(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    now = datetime.now(UTC)
    created = [now - timedelta(minutes=30) + timedelta(seconds=k // 2) for k in range(30)]
    expected = newest_first(await seed(uow_factory, merchant.merchant_id, created), created)
    made: list[str] = []
    stop, paid = asyncio.Event(), asyncio.Event()

    async def keep_paying() -> None:
        while not stop.is_set():
            response = await pay(client, merchant)
            assert response.status_code == 200, response.text
            made.append(response.json()["transaction_id"])
            paid.set()

    first, has_more = await page(client, merchant, [("limit", 7)])
    pages = [first]
    paying = asyncio.create_task(keep_paying())
    try:
        while has_more:
            paid.clear()
            await asyncio.wait_for(paid.wait(), 10)  # a new payment between two pages
            ids, has_more = await page(
                client, merchant, [("limit", 7), ("starting_after", pages[-1][-1])]
            )
            pages.append(ids)
    finally:
        stop.set()
        await paying

    walked = [i for ids in pages for i in ids]
    assert walked == expected  # no duplicate, no gap, nothing shifted
    assert len(made) >= len(pages) - 1
    newest, _ = await page(client, merchant, [("limit", 100)])
    assert newest[: len(made)] == made[::-1]
    assert newest[len(made) :] == expected


# -- filters ------------------------------------------------------------------------------


async def test_status_filter_pages_through_only_that_status(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    created = [at(k) for k in range(20)]
    declined_at = created[::3]
    captured_at = [c for c in created if c not in declined_at]
    declined = await seed(
        uow_factory, merchant.merchant_id, declined_at, status=PaymentStatus.DECLINED
    )
    await seed(uow_factory, merchant.merchant_id, captured_at)

    pages = await walk(client, merchant, [("status", "declined"), ("limit", 3)])
    response = await listing(client, merchant, [("status", "declined")])

    assert pages == [newest_first(declined, declined_at)[i : i + 3] for i in (0, 3, 6)]
    assert {p["status"] for p in response.json()["data"]} == {"declined"}
    assert await page(client, merchant, [("status", "refunded")]) == ([], False)


@pytest.mark.parametrize(
    ("bound", "instant", "kept"),
    [
        ("created[gte]", at(3), range(3, 10)),
        ("created[gt]", at(3), range(4, 10)),
        ("created[lte]", at(3), range(0, 4)),
        ("created[lt]", at(3), range(0, 3)),
        ("created[gt]", at(3) - timedelta(microseconds=1), range(3, 10)),
        ("created[lt]", at(3) + timedelta(microseconds=1), range(0, 4)),
    ],
    ids=["gte", "gt", "lte", "lt", "gt-a-microsecond-before", "lt-a-microsecond-after"],
)
async def test_each_created_bound_keeps_exactly_its_side_of_an_instant(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    uow_factory: UowFactory,
    bound: str,
    instant: datetime,
    kept: range,
) -> None:
    created = [at(k) for k in range(10)]
    ids = await seed(uow_factory, merchant.merchant_id, created)

    shown, _ = await page(client, merchant, [(bound, z(instant)), ("limit", 100)])

    assert shown == [ids[k] for k in reversed(kept)]


async def test_created_bounds_combine_with_any_offset_and_with_pagination(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    created = [at(k) for k in range(10)]
    ids = await seed(uow_factory, merchant.merchant_id, created)
    window = [("created[gte]", "2026-03-01T11:00:02+01:00"), ("created[lt]", z(at(7)))]

    pages = await walk(client, merchant, [*window, ("limit", 2)])

    assert pages == [[ids[6], ids[5]], [ids[4], ids[3]], [ids[2]]]


async def test_metadata_filters_match_top_level_string_members_and_combine(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    kinds = {
        "web": {"order_id": "1234", "channel": "web"},
        "app": {"order_id": "1234", "channel": "app"},
        "number": {"order_id": 1234, "channel": "web"},
        "other order": {"order_id": "5678", "channel": "web"},
        "nested": {"cart": {"order_id": "1234"}},
        "odd key": {"weird key[0]": 'ünïcødé "q"'},
        "none": {},
    }
    ids = {}
    for k, (name, metadata) in enumerate(kinds.items()):
        (ids[name],) = await seed(uow_factory, merchant.merchant_id, [at(k)], metadata=metadata)

    async def shown(*query: tuple[str, str]) -> list[str]:
        found, _ = await page(client, merchant, query)
        return found

    assert await shown(("metadata[order_id]", "1234")) == [ids["app"], ids["web"]]
    assert await shown(("metadata[order_id]", "1234"), ("metadata[channel]", "web")) == [ids["web"]]
    assert await shown(("metadata[channel]", "web")) == [
        ids["other order"],
        ids["number"],
        ids["web"],
    ]
    assert await shown(("metadata[weird key[0]]", 'ünïcødé "q"')) == [ids["odd key"]]
    assert await shown(("metadata[order_id]", "12")) == []
    assert await shown(("metadata[missing]", "")) == []


async def test_metadata_and_status_filters_combine_with_pagination(
    client: httpx.AsyncClient, merchant: MerchantCredentials, uow_factory: UowFactory
) -> None:
    created = [at(k) for k in range(12)]
    web = {"channel": "web"}
    wanted = await seed(uow_factory, merchant.merchant_id, created[::2], metadata=web)
    await seed(
        uow_factory, merchant.merchant_id, created[::3], metadata=web, status=PaymentStatus.FAILED
    )
    await seed(uow_factory, merchant.merchant_id, created[1::2], metadata={"channel": "app"})

    pages = await walk(
        client,
        merchant,
        [("metadata[channel]", "web"), ("status", "captured"), ("limit", 4)],
    )

    assert pages == [wanted[::-1][:4], wanted[::-1][4:]]


# -- bad parameters -----------------------------------------------------------------------

LONG_KEY = "metadata[" + "k" * 101 + "]"
BAD_QUERIES: dict[str, tuple[Query, set[str]]] = {
    "limit 0": ([("limit", 0)], {"limit"}),
    "limit 101": ([("limit", 101)], {"limit"}),
    "limit not a number": ([("limit", "abc")], {"limit"}),
    "limit empty": ([("limit", "")], {"limit"}),
    "both cursors": (
        [("starting_after", "txn_" + "0" * 32), ("ending_before", "txn_" + "1" * 32)],
        {"starting_after", "ending_before"},
    ),
    "a starting_after that is no payment": (
        [("starting_after", "txn_" + "0" * 32)],
        {"starting_after"},
    ),
    "an ending_before that is not an id": ([("ending_before", "yesterday")], {"ending_before"}),
    "a date that is not a date": ([("created[gte]", "yesterday")], {"created[gte]"}),
    "a date-time without a timezone": ([("created[lt]", "2026-03-01T10:00:00")], {"created[lt]"}),
    "a date alone": ([("created[lte]", "2026-03-01")], {"created[lte]"}),
    "an instant out of range": ([("created[gt]", "0001-01-01T00:00:00+05:00")], {"created[gt]"}),
    "an unknown status": ([("status", "paid")], {"status"}),
    "an unknown parameter": ([("colour", "blue")], {"colour"}),
    "created without brackets": ([("created_gte", z(T0))], {"created_gte"}),
    "an unknown bound": ([("created[eq]", z(T0))], {"created[eq]"}),
    "metadata without a key": ([("metadata", "1234")], {"metadata"}),
    "too many metadata filters": ([(f"metadata[k{n}]", "v") for n in range(11)], {"metadata"}),
    "an empty metadata key": ([("metadata[]", "v")], {"metadata[]"}),
    "a metadata key too long": ([(LONG_KEY, "v")], {LONG_KEY}),
    "a metadata value too long": ([("metadata[k]", "v" * 501)], {"metadata[k]"}),
    "a NUL in a metadata value": ([("metadata[k]", "a\x00b")], {"metadata[k]"}),
    "a repeated parameter": ([("limit", 5), ("limit", 6)], {"limit"}),
    "a repeated status": ([("status", "captured"), ("status", "declined")], {"status"}),
    "a repeated metadata filter": ([("metadata[k]", "a"), ("metadata[k]", "b")], {"metadata[k]"}),
    "several at once": (
        [("limit", 0), ("status", "paid"), ("created[gt]", "soon"), ("x", "1")],
        {"limit", "status", "created[gt]", "x"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_QUERIES))
async def test_a_bad_parameter_is_a_422_naming_it(
    client: httpx.AsyncClient, merchant: MerchantCredentials, case: str
) -> None:
    query, fields = BAD_QUERIES[case]

    response = await listing(client, merchant, query)

    assert invalid_fields(response) == fields


async def test_a_cursor_of_another_merchant_is_answered_like_an_unknown_one(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
    uow_factory: UowFactory,
) -> None:
    other: MerchantCredentials = await create_merchant()
    (theirs,) = await seed(uow_factory, other.merchant_id, [at(0)])
    await seed(uow_factory, merchant.merchant_id, [at(1)])
    unknown = "txn_" + "f" * 32

    for name in ("starting_after", "ending_before"):
        foreign = await listing(client, merchant, [(name, theirs)])
        missing = await listing(client, merchant, [(name, unknown)])

        assert invalid_fields(foreign) == {name}
        assert foreign.json()["errors"] == missing.json()["errors"]
        assert foreign.json()["detail"] == missing.json()["detail"]
        assert theirs not in foreign.text


# -- who sees what ------------------------------------------------------------------------


async def test_a_merchant_sees_only_its_own_payments(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
    uow_factory: UowFactory,
) -> None:
    other: MerchantCredentials = await create_merchant()
    shared = {"order_id": "1234"}
    created = [at(k) for k in range(6)]
    mine = await seed(uow_factory, merchant.merchant_id, created[::2], metadata=shared)
    theirs = await seed(uow_factory, other.merchant_id, created[1::2], metadata=shared)

    assert await walk(client, merchant, [("limit", 2)]) == [mine[::-1][:2], mine[::-1][2:]]
    assert await walk(client, other, [("metadata[order_id]", "1234")]) == [theirs[::-1]]
    assert await walk(client, merchant, [("starting_after", mine[-1])]) == [mine[::-1][1:]]


async def test_listing_needs_a_valid_api_key_before_anything_else(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    missing = await client.get(LIST, params={"limit": 0})
    unknown = await client.get(LIST, headers={"Authorization": "Bearer sk_test_unknown_key_0000"})

    assert_problem(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert_problem(unknown, 401, "unauthorized")


async def test_a_disabled_merchant_cannot_list(
    client: httpx.AsyncClient, merchant: MerchantCredentials, ctx: ServiceContext
) -> None:
    await merchants.disable_merchant(ctx, merchant_id=merchant.merchant_id)

    assert_problem(await listing(client, merchant), 403, "merchant_inactive")
