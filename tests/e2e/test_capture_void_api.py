"""Manual capture through the real app: authorize, capture (whole or part), void, expire,
and their races (docs/api.md, "Capture and void"). Real PostgreSQL; the in-process bank
simulator (tests/e2e/test_capture_void_bank.py drives the same paths over HTTP to
MockServer)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.services.context import ServiceContext
from app.services.reconciliation import ReconcileReport, expire_authorizations, reconcile_once
from tests.conftest import MerchantCredentials, make_settings
from tests.e2e.api_calls import assert_problem, pay, payment_url, refund

MANUAL = {"capture_method": "manual"}


@pytest.fixture
def app_settings() -> Settings:
    # The tests run the reconciler's rounds themselves, when they choose.
    return make_settings(reconciler_enabled=False)


async def authorize(
    client: httpx.AsyncClient, merchant: MerchantCredentials, amount: str = "100.00"
) -> str:
    response = await pay(client, merchant, amount=amount, **MANUAL)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "authorized"
    return str(body["transaction_id"])


async def capture(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    transaction_id: str,
    amount: str | None = None,
    *,
    key: str | None = None,
) -> httpx.Response:
    headers = dict(merchant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    body = {} if amount is None else {"amount": amount}
    return await client.post(f"{payment_url(transaction_id)}/capture", json=body, headers=headers)


async def void(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    transaction_id: str,
    *,
    key: str | None = None,
) -> httpx.Response:
    headers = dict(merchant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(f"{payment_url(transaction_id)}/void", headers=headers)


async def events_of(engine: AsyncEngine, transaction_id: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event_type FROM outbox_events WHERE aggregate_id = :id ORDER BY id"),
            {"id": transaction_id},
        )
        return [row.event_type for row in rows]


async def audit_of(engine: AsyncEngine, transaction_id: str) -> list[tuple[str, str]]:
    """The audit rows of what happened to the payment after it was authorized."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT action, outcome FROM audit_log WHERE resource_id = :id"
                " AND action NOT IN ('payment.process', 'payment.settle') ORDER BY id"
            ),
            {"id": transaction_id},
        )
        return [(row.action, row.outcome) for row in rows]


async def age(engine: AsyncEngine, transaction_id: str, by: timedelta) -> None:
    """Make the payment look ``by`` older (the TTL counts from its creation)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE transactions SET created_at = created_at - make_interval(secs => :s)"
                " WHERE transaction_id = :id"
            ),
            {"s": by.total_seconds(), "id": transaction_id},
        )


async def test_a_manual_payment_is_authorized_and_nothing_is_refundable_until_captured(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    response = await pay(client, merchant, amount="100.00", **MANUAL)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "authorized"
    assert body["capture_method"] == "manual"
    assert body["captured_amount"] == "0.00"
    assert body["refundable_amount"] == "0.00"
    assert body["authorization_code"]
    assert_problem(
        await refund(client, merchant, body["transaction_id"], "1.00"),
        409,
        "payment_not_refundable",
    )
    assert await events_of(engine, body["transaction_id"]) == ["payment.authorized"]


async def test_an_automatic_payment_says_so_and_has_captured_its_amount(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    body = (await pay(client, merchant, amount="12.34")).json()

    assert body["status"] == "captured"
    assert body["capture_method"] == "automatic"
    assert body["captured_amount"] == "12.34"


async def test_capture_without_an_amount_captures_the_whole_authorization(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    transaction_id = await authorize(client, merchant, "100.00")

    response = await capture(client, merchant, transaction_id)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "captured"
    assert body["captured_amount"] == "100.00"
    assert body["refundable_amount"] == "100.00"
    read = (await client.get(payment_url(transaction_id), headers=merchant.headers)).json()
    assert read["status"] == "captured"
    assert read["captured_amount"] == "100.00"
    assert await events_of(engine, transaction_id) == ["payment.authorized", "payment.captured"]
    assert await audit_of(engine, transaction_id) == [
        ("payment.capture", "pending"),
        ("payment.capture.settle", "success"),
    ]


async def test_a_partial_capture_releases_the_rest_and_refunds_take_only_from_the_capture(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    transaction_id = await authorize(client, merchant, "100.00")

    response = await capture(client, merchant, transaction_id, "80.00")

    assert response.status_code == 200, response.text
    assert response.json()["captured_amount"] == "80.00"
    assert response.json()["refundable_amount"] == "80.00"
    assert response.json()["amount"] == "100.00"
    assert_problem(
        await refund(client, merchant, transaction_id, "80.01"), 409, "refund_exceeds_balance"
    )
    whole = await refund(client, merchant, transaction_id)
    assert whole.status_code == 200, whole.text
    assert whole.json()["amount"] == "80.00"
    assert whole.json()["payment_status"] == "refunded"
    assert whole.json()["refundable_amount"] == "0.00"


async def test_a_capture_is_taken_once(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    transaction_id = await authorize(client, merchant, "100.00")
    assert (await capture(client, merchant, transaction_id, "10.00")).status_code == 200

    again = await capture(client, merchant, transaction_id, "10.00")

    assert_problem(again, 409, "payment_not_capturable")
    assert_problem(await void(client, merchant, transaction_id), 409, "payment_not_voidable")


@pytest.mark.parametrize(
    ("amount", "field"),
    [("100.01", "amount"), ("0", "amount"), ("-1.00", "amount"), ("1.001", "amount")],
)
async def test_a_capture_amount_outside_the_authorization_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, merchant: MerchantCredentials, amount: str, field: str
) -> None:
    transaction_id = await authorize(client, merchant, "100.00")

    problem = assert_problem(
        await capture(client, merchant, transaction_id, amount), 422, "validation_error"
    )

    assert field in str(problem)
    read = (await client.get(payment_url(transaction_id), headers=merchant.headers)).json()
    assert read["status"] == "authorized"
    assert (await capture(client, merchant, transaction_id, "100.00")).status_code == 200


async def test_unknown_fields_in_a_capture_are_refused(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    transaction_id = await authorize(client, merchant)

    response = await client.post(
        f"{payment_url(transaction_id)}/capture",
        json={"amount": "1.00", "reason": "x"},
        headers=merchant.headers,
    )

    assert_problem(response, 422, "validation_error")


async def test_void_releases_the_authorization_for_good(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    transaction_id = await authorize(client, merchant)

    response = await void(client, merchant, transaction_id)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "voided"
    assert response.json()["captured_amount"] == "0.00"
    assert response.json()["refundable_amount"] == "0.00"
    assert_problem(await capture(client, merchant, transaction_id), 409, "payment_not_capturable")
    assert_problem(await void(client, merchant, transaction_id), 409, "payment_not_voidable")
    assert_problem(await refund(client, merchant, transaction_id), 409, "payment_not_refundable")
    assert await events_of(engine, transaction_id) == ["payment.authorized", "payment.voided"]


@pytest.mark.parametrize(
    ("card", "capture_method", "status"),
    [
        ("4242424242424242", "automatic", "captured"),
        ("4000000000000002", "manual", "declined"),
    ],
)
async def test_only_an_authorization_is_capturable_or_voidable(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    engine: AsyncEngine,
    card: str,
    capture_method: str,
    status: str,
) -> None:
    body = await pay(client, merchant, card_number=card, capture_method=capture_method)
    assert body.json()["status"] == status
    transaction_id = body.json()["transaction_id"]

    assert_problem(await capture(client, merchant, transaction_id), 409, "payment_not_capturable")
    assert_problem(await void(client, merchant, transaction_id), 409, "payment_not_voidable")
    assert await audit_of(engine, transaction_id) == [
        ("payment.capture", "denied"),
        ("payment.void", "denied"),
    ]


async def test_another_merchants_authorization_is_not_found(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
) -> None:
    transaction_id = await authorize(client, merchant)
    other: MerchantCredentials = await create_merchant()

    assert_problem(await capture(client, other, transaction_id), 404, "payment_not_found")
    assert_problem(await void(client, other, transaction_id), 404, "payment_not_found")
    assert_problem(await capture(client, other, "txn_nope"), 404, "payment_not_found")
    read = (await client.get(payment_url(transaction_id), headers=merchant.headers)).json()
    assert read["status"] == "authorized"


async def test_a_capture_retried_with_its_key_is_replayed_not_repeated(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    transaction_id = await authorize(client, merchant)
    first = await capture(client, merchant, transaction_id, "50.00", key="cap-1")

    again = await capture(client, merchant, transaction_id, "50.00", key="cap-1")
    other_amount = await capture(client, merchant, transaction_id, "60.00", key="cap-1")

    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert_problem(other_amount, 422, "idempotency_key_reused")
    assert (await events_of(engine, transaction_id)).count("payment.captured") == 1


async def test_a_void_retried_with_its_key_is_replayed(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    transaction_id = await authorize(client, merchant)
    first = await void(client, merchant, transaction_id, key="void-1")

    again = await void(client, merchant, transaction_id, key="void-1")

    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()


async def test_captures_and_voids_racing_on_one_authorization_have_exactly_one_winner(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    transaction_ids = [await authorize(client, merchant) for _ in range(5)]

    for transaction_id in transaction_ids:
        calls = [capture(client, merchant, transaction_id, "10.00") for _ in range(6)]
        calls += [void(client, merchant, transaction_id) for _ in range(6)]
        responses = await asyncio.gather(*calls)

        statuses = Counter(response.status_code for response in responses)
        assert statuses[200] == 1, [r.text for r in responses]
        assert statuses[409] == len(responses) - 1
        winner = next(r for r in responses if r.status_code == 200).json()["status"]
        events = await events_of(engine, transaction_id)
        assert events == ["payment.authorized", f"payment.{winner}"]
        codes = {r.json()["code"] for r in responses if r.status_code == 409}
        assert codes <= {"payment_not_capturable", "payment_not_voidable"}


async def test_an_authorization_older_than_the_ttl_is_voided_and_expires(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    engine: AsyncEngine,
    ctx: ServiceContext,
) -> None:
    old = await authorize(client, merchant)
    young = await authorize(client, merchant)
    captured = (await pay(client, merchant)).json()["transaction_id"]
    await age(engine, old, timedelta(days=7, minutes=1))
    await age(engine, captured, timedelta(days=30))

    report = await reconcile_once(ctx)

    assert report.settled["expire", "expired"] == 1
    statuses = {
        txn: (await client.get(payment_url(txn), headers=merchant.headers)).json()["status"]
        for txn in (old, young, captured)
    }
    assert statuses == {old: "expired", young: "authorized", captured: "captured"}
    assert await events_of(engine, old) == ["payment.authorized", "payment.expired"]
    assert await audit_of(engine, old) == [
        ("payment.expire.settle", "success"),
    ]
    assert_problem(await capture(client, merchant, old), 409, "payment_not_capturable")
    assert (await reconcile_once(ctx)).claimed == 0  # nothing left to expire


async def test_expiry_racing_captures_and_voids_has_exactly_one_winner(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    engine: AsyncEngine,
    ctx: ServiceContext,
) -> None:
    transaction_ids = [await authorize(client, merchant) for _ in range(8)]
    for transaction_id in transaction_ids:
        await age(engine, transaction_id, timedelta(days=8))

    async def expiries() -> None:
        for _ in range(3):
            await expire_authorizations(ctx, ReconcileReport())

    calls = [capture(client, merchant, txn) for txn in transaction_ids]
    calls += [void(client, merchant, txn) for txn in transaction_ids]
    results = await asyncio.gather(expiries(), expiries(), *calls)

    responses = [r for r in results if isinstance(r, httpx.Response)]
    for transaction_id in transaction_ids:
        status = (await client.get(payment_url(transaction_id), headers=merchant.headers)).json()[
            "status"
        ]
        assert status in {"captured", "voided", "expired"}
        events = await events_of(engine, transaction_id)
        assert events == ["payment.authorized", f"payment.{status}"]
        mine = [r for r in responses if transaction_id in r.request.url.path]
        won = [r for r in mine if r.status_code == 200]
        if status == "expired":
            assert won == []
        else:
            assert len(won) == 1 and won[0].json()["status"] == status
        assert all(r.status_code in (200, 409) for r in mine), [r.text for r in mine]
