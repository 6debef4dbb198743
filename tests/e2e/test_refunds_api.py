"""POST /api/v1/payments/{id}/refund through the real app (docs/api.md, refunds)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.main import create_app
from tests.conftest import MerchantCredentials, make_settings
from tests.e2e.api_calls import assert_problem, pay, payment_url, refund, refund_url
from tests.e2e.in_process_app import closed_port


async def create_payment(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    amount: str = "99.99",
    currency: str = "USD",
    card_number: str = "4242 4242 4242 4242",
) -> dict[str, Any]:
    """Pay and return the payment (settled: 200, processing: 202), or the problem of a
    failed one (503)."""
    response = await pay(
        client, merchant, amount=amount, currency=currency, card_number=card_number
    )
    assert response.status_code in (200, 202, 503), response.text
    body: dict[str, Any] = response.json()
    return body


async def read(
    client: httpx.AsyncClient, merchant: MerchantCredentials, transaction_id: str
) -> dict[str, Any]:
    response = await client.get(payment_url(transaction_id), headers=merchant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_partial_then_full_refund(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    txn = (await create_payment(client, merchant, amount="99.99"))["transaction_id"]

    first = await refund(client, merchant, txn, "50.00", reason="customer request")
    second = await refund(client, merchant, txn, "49.99")

    assert first.status_code == 200, first.text
    assert first.json()["refund_id"].startswith("re_")
    assert first.json()["transaction_id"] == txn
    assert first.json()["amount"] == "50.00"
    assert first.json()["currency"] == "USD"
    assert first.json()["status"] == "succeeded"
    assert first.json()["reason"] == "customer request"
    assert first.json()["payment_status"] == "partially_refunded"
    assert first.json()["refunded_amount"] == "50.00"
    assert first.json()["refundable_amount"] == "49.99"
    assert second.status_code == 200, second.text
    assert second.json()["payment_status"] == "refunded"
    assert second.json()["refunded_amount"] == "99.99"
    assert second.json()["refundable_amount"] == "0.00"
    payment = await read(client, merchant, txn)
    assert payment["status"] == "refunded"
    assert payment["refunded_amount"] == "99.99"
    assert payment["refundable_amount"] == "0.00"


@pytest.mark.parametrize("body", [{}, None], ids=["empty-object", "no-body"])
async def test_refund_without_amount_refunds_the_whole_remaining_balance(
    client: httpx.AsyncClient, merchant: MerchantCredentials, body: dict[str, Any] | None
) -> None:
    txn = (await create_payment(client, merchant, amount="99.99"))["transaction_id"]
    await refund(client, merchant, txn, "30.00")

    response = await client.post(
        refund_url(txn),
        **({"json": body} if body is not None else {}),
        headers=merchant.headers,
    )

    assert response.status_code == 200, response.text
    assert response.json()["amount"] == "69.99"
    assert response.json()["payment_status"] == "refunded"
    assert response.json()["refunded_amount"] == "99.99"
    assert response.json()["refundable_amount"] == "0.00"


async def test_refund_cannot_exceed_captured_amount(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    txn = (await create_payment(client, merchant, amount="99.99"))["transaction_id"]
    await refund(client, merchant, txn, "50.00")

    response = await refund(client, merchant, txn, "80.00")

    problem = assert_problem(response, 409, "refund_exceeds_balance")
    assert problem["detail"] == "Refund of 80.00 USD exceeds the refundable 49.99 USD."
    payment = await read(client, merchant, txn)
    assert payment["refunded_amount"] == "50.00"
    assert payment["status"] == "partially_refunded"
    assert len(payment["refunds"]) == 1


async def test_refund_larger_than_a_fresh_payment_is_refused(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    txn = (await create_payment(client, merchant, amount="10.00"))["transaction_id"]

    response = await refund(client, merchant, txn, "10.01")

    problem = assert_problem(response, 409, "refund_exceeds_balance")
    assert problem["detail"] == "Refund of 10.01 USD exceeds the refundable 10.00 USD."
    assert (await read(client, merchant, txn))["status"] == "captured"


async def test_declined_payment_is_not_refundable(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    declined = await create_payment(client, merchant, card_number="4000000000000002")
    assert declined["status"] == "declined"

    response = await refund(client, merchant, declined["transaction_id"], "1.00")

    assert_problem(response, 409, "payment_not_refundable")


async def refunds_of(engine: AsyncEngine, transaction_id: str) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(*) FROM refunds WHERE transaction_id = :t"), {"t": transaction_id}
        )
    return int(count or 0)


async def test_failed_payment_is_not_refundable(
    migrated_database: str,
    create_merchant: Callable[..., Any],
    engine: AsyncEngine,
) -> None:
    # Only a bank that certainly never received the request fails a payment at once: a
    # refused connection (a closed port).
    settings = make_settings(
        bank_api_url=f"http://127.0.0.1:{closed_port()}",
        bank_timeout_s=0.2,
        bank_connect_timeout_s=0.2,
        bank_max_retries=1,
        bank_backoff_max_s=0.05,
    )
    merchant: MerchantCredentials = await create_merchant()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            failed = await create_payment(client, merchant)
            assert failed["code"] == "bank_unavailable"
            assert (await read(client, merchant, failed["transaction_id"]))["status"] == "failed"

            response = await refund(client, merchant, failed["transaction_id"])

    assert_problem(response, 409, "payment_not_refundable")
    assert await refunds_of(engine, failed["transaction_id"]) == 0


async def test_processing_payment_is_not_refundable_until_settled(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    # The timeout card: the bank's answer is unknown, the payment processing (the
    # reconciler's first lookup is 10 s away with the default settings).
    processing = await create_payment(client, merchant, card_number="4000000000000903")
    assert processing["status"] == "processing"

    with_amount = await refund(client, merchant, processing["transaction_id"], "0.01")
    without_amount = await refund(client, merchant, processing["transaction_id"])

    assert_problem(with_amount, 409, "payment_not_refundable")
    assert_problem(without_amount, 409, "payment_not_refundable")
    assert await refunds_of(engine, processing["transaction_id"]) == 0
    payment = await read(client, merchant, processing["transaction_id"])
    assert payment["status"] == "processing"
    assert payment["refunds"] == []


async def test_fully_refunded_payment_is_not_refundable(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    txn = (await create_payment(client, merchant))["transaction_id"]
    assert (await refund(client, merchant, txn)).status_code == 200

    with_amount = await refund(client, merchant, txn, "0.01")
    without_amount = await refund(client, merchant, txn)

    assert_problem(with_amount, 409, "payment_not_refundable")
    assert_problem(without_amount, 409, "payment_not_refundable")


async def test_unknown_and_other_merchants_payments_cannot_be_refunded(
    client: httpx.AsyncClient, merchant: MerchantCredentials, create_merchant: Callable[..., Any]
) -> None:
    other: MerchantCredentials = await create_merchant()
    theirs = (await create_payment(client, other))["transaction_id"]

    foreign = await refund(client, merchant, theirs, "1.00")
    missing = await refund(client, merchant, f"txn_{uuid.uuid4().hex}", "1.00")

    foreign_body = assert_problem(foreign, 404, "payment_not_found")
    missing_body = assert_problem(missing, 404, "payment_not_found")
    del foreign_body["correlation_id"], missing_body["correlation_id"]
    assert foreign_body == missing_body
    assert (await read(client, other, theirs))["refunded_amount"] == "0.00"


@pytest.mark.parametrize(
    ("currency", "payment_amount", "refund_amount"),
    [
        ("USD", "10.00", "1.001"),
        ("JPY", "1000", "1.5"),
        ("KWD", "10.000", "1.0001"),
    ],
)
async def test_refund_amount_with_more_decimals_than_the_currency_is_rejected(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    currency: str,
    payment_amount: str,
    refund_amount: str,
) -> None:
    txn = (await create_payment(client, merchant, payment_amount, currency))["transaction_id"]

    response = await refund(client, merchant, txn, refund_amount)

    problem = assert_problem(response, 422, "validation_error")
    assert "amount" in {entry["field"] for entry in problem["errors"]}
    assert (await read(client, merchant, txn))["refunds"] == []


@pytest.mark.parametrize("amount", ["0", "-1.00", "abc", True, [1]])
async def test_refund_amount_must_be_a_positive_number(
    client: httpx.AsyncClient, merchant: MerchantCredentials, amount: Any
) -> None:
    txn = (await create_payment(client, merchant))["transaction_id"]

    response = await client.post(refund_url(txn), json={"amount": amount}, headers=merchant.headers)

    problem = assert_problem(response, 422, "validation_error")
    assert "amount" in {entry["field"] for entry in problem["errors"]}


async def test_unknown_refund_fields_are_rejected(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    txn = (await create_payment(client, merchant))["transaction_id"]

    response = await refund(client, merchant, txn, "1.00", currency="EUR")

    assert_problem(response, 422, "validation_error")


async def test_refund_amounts_follow_the_payment_currency(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    yen = (await create_payment(client, merchant, "1000", "JPY"))["transaction_id"]
    dinar = (await create_payment(client, merchant, "10.000", "KWD"))["transaction_id"]

    yen_refund = await refund(client, merchant, yen, "250")
    dinar_refund = await refund(client, merchant, dinar, "0.5")

    assert yen_refund.json()["amount"] == "250"
    assert yen_refund.json()["refundable_amount"] == "750"
    assert dinar_refund.json()["amount"] == "0.500"
    assert dinar_refund.json()["refundable_amount"] == "9.500"


async def test_refund_reason_and_metadata_are_kept(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    txn = (await create_payment(client, merchant))["transaction_id"]

    response = await refund(
        client, merchant, txn, "5.00", reason="damaged", metadata={"ticket": "T-1", "n": [1]}
    )

    assert response.json()["reason"] == "damaged"
    assert response.json()["metadata"] == {"ticket": "T-1", "n": [1]}
    (listed,) = (await read(client, merchant, txn))["refunds"]
    assert listed["reason"] == "damaged"
    assert listed["metadata"] == {"ticket": "T-1", "n": [1]}
    assert listed["refund_id"] == response.json()["refund_id"]
    assert listed["status"] == "succeeded"


@pytest.mark.parametrize(
    ("field", "value"), [("reason", "broken\x00item"), ("metadata", {"note": "\x00"})]
)
async def test_refund_text_with_nul_characters_is_refused_or_kept_never_a_crash(
    client: httpx.AsyncClient, merchant: MerchantCredentials, field: str, value: Any
) -> None:
    txn = (await create_payment(client, merchant))["transaction_id"]

    response = await refund(client, merchant, txn, "1.00", **{field: value})

    if response.status_code == 200:
        assert response.json()[field] == value
    else:
        problem = assert_problem(response, 422, "validation_error")
        assert field in {entry["field"] for entry in problem["errors"]}
        assert (await read(client, merchant, txn))["refunded_amount"] == "0.00"


async def test_payment_lists_its_refunds_oldest_first(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    txn = (await create_payment(client, merchant, amount="100.00"))["transaction_id"]
    made = [
        (await refund(client, merchant, txn, amount)).json()["refund_id"]
        for amount in ("10.00", "20.00", "30.00")
    ]

    payment = await read(client, merchant, txn)

    assert [r["refund_id"] for r in payment["refunds"]] == made
    assert [r["amount"] for r in payment["refunds"]] == ["10.00", "20.00", "30.00"]
    assert payment["status"] == "partially_refunded"
    assert payment["refunded_amount"] == "60.00"
    assert payment["refundable_amount"] == "40.00"


async def test_concurrent_refunds_never_exceed_the_captured_amount(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    txn = (await create_payment(client, merchant, amount="100.00"))["transaction_id"]

    responses = await asyncio.gather(*(refund(client, merchant, txn, "10.00") for _ in range(20)))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 10, 409: 10}, [r.text for r in responses if r.status_code != 200]
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.json()["code"] in ("refund_exceeds_balance", "payment_not_refundable")
    payment = await read(client, merchant, txn)
    assert payment["refunded_amount"] == "100.00"
    assert payment["status"] == "refunded"
    assert len(payment["refunds"]) == 10
    async with engine.connect() as conn:
        refunded = await conn.scalar(
            text("SELECT sum(amount_minor) FROM refunds WHERE transaction_id = :t"), {"t": txn}
        )
    assert refunded == 10_000


async def test_a_full_refund_retried_with_its_key_is_replayed_not_refused(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    # The first request emptied the balance: the retry's key, not the balance, decides.
    txn = (await create_payment(client, merchant, amount="20.00"))["transaction_id"]
    first = await refund(client, merchant, txn, key="full-refund-1")

    again = await refund(client, merchant, txn, key="full-refund-1")
    other = await refund(client, merchant, txn, "1.00", key="full-refund-1")
    fresh = await refund(client, merchant, txn, key="full-refund-2")

    assert first.status_code == 200, first.text
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert_problem(other, 422, "idempotency_key_reused")
    assert_problem(fresh, 409, "payment_not_refundable")
