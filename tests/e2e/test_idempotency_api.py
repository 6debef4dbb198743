"""Idempotency-Key on both POST endpoints, through the real app (docs/api.md, "Idempotency")."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.services.ports import AuthorizationRequest, AuthorizationResult, BankGateway
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.api_calls import PROCESS, assert_problem, pay, payment_url, refund
from tests.e2e.in_process_app import closed_port, running_app


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


class SlowBank:
    """The simulator, answering authorizations only after a pause."""

    def __init__(self, bank: BankGateway, delay_s: float) -> None:
        self._bank = bank
        self._delay_s = delay_s
        self.authorizations = 0

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        self.authorizations += 1
        await asyncio.sleep(self._delay_s)
        return await self._bank.authorize(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)


class GatedBank:
    """The simulator, holding each authorization until the test opens the gate."""

    def __init__(self, bank: BankGateway) -> None:
        self._bank = bank
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        self.entered.set()
        await self.gate.wait()
        return await self._bank.authorize(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)


def use_bank[B](client: httpx.AsyncClient, wrap: Callable[[BankGateway], B]) -> B:
    """Swap the running app's bank for a wrapper around it (ServiceContext is frozen)."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    bank = wrap(runtime.services.bank)
    runtime.services = dataclasses.replace(runtime.services, bank=bank)
    return bank


async def test_same_key_and_body_replays_the_first_response(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    first = await pay(client, merchant, key="order-1234")
    again = await pay(client, merchant, key="order-1234")

    assert first.status_code == 200, first.text
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await count(engine, "transactions") == 1


async def test_a_replayed_decline_is_the_same_decline(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    first = await pay(client, merchant, key="decline-1", card_number="4000000000009995")
    again = await pay(client, merchant, key="decline-1", card_number="4000000000009995")

    assert first.json()["decline_code"] == "insufficient_funds"
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await count(engine, "transactions") == 1


async def test_key_order_of_the_json_body_does_not_matter(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    body = payment_body(merchant.merchant_id)
    reordered = dict(reversed(list(body.items())))
    headers = {**merchant.headers, "Idempotency-Key": "reordered"}

    first = await client.post(PROCESS, json=body, headers=headers)
    again = await client.post(PROCESS, json=reordered, headers=headers)

    assert again.status_code == 200, again.text
    assert again.json()["transaction_id"] == first.json()["transaction_id"]


async def test_same_key_with_a_different_body_is_refused(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    await pay(client, merchant, key="order-1", amount="10.00")

    response = await pay(client, merchant, key="order-1", amount="20.00")

    assert_problem(response, 422, "idempotency_key_reused")
    assert await count(engine, "transactions") == 1


async def test_a_payment_key_cannot_be_reused_for_a_refund(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    txn = (await pay(client, merchant, key="shared-key")).json()["transaction_id"]

    response = await refund(client, merchant, txn, "10.00", key="shared-key")

    assert_problem(response, 422, "idempotency_key_reused")
    assert await count(engine, "refunds") == 0


async def test_concurrent_requests_with_one_key_make_exactly_one_payment(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    bank = use_bank(client, lambda real: SlowBank(real, delay_s=0.3))

    responses = await asyncio.gather(*(pay(client, merchant, key="burst") for _ in range(10)))

    ok = [r for r in responses if r.status_code == 200]
    assert ok, [r.text for r in responses]
    assert len({r.json()["transaction_id"] for r in ok}) == 1
    for other in (r for r in responses if r.status_code != 200):
        assert_problem(other, 409, "idempotency_in_progress")
    assert bank.authorizations == 1
    assert await count(engine, "transactions") == 1
    settled = await pay(client, merchant, key="burst")
    assert settled.status_code == 200
    assert settled.json()["transaction_id"] == ok[0].json()["transaction_id"]
    assert settled.headers["Idempotent-Replayed"] == "true"


async def test_a_retry_while_the_first_request_runs_is_told_it_is_in_progress(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    bank = use_bank(client, GatedBank)
    first = asyncio.create_task(pay(client, merchant, key="slow-one"))
    await asyncio.wait_for(bank.entered.wait(), timeout=5)

    retry = await pay(client, merchant, key="slow-one")
    bank.gate.set()
    original = await first

    problem = assert_problem(retry, 409, "idempotency_in_progress")
    assert problem["detail"]
    assert original.status_code == 200
    assert await count(engine, "transactions") == 1


async def test_keys_are_scoped_to_the_merchant(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    create_merchant: Callable[..., Any],
    engine: AsyncEngine,
) -> None:
    other: MerchantCredentials = await create_merchant()

    mine = await pay(client, merchant, key="same-key")
    theirs = await pay(client, other, key="same-key")

    assert mine.status_code == theirs.status_code == 200
    assert "Idempotent-Replayed" not in theirs.headers
    assert mine.json()["transaction_id"] != theirs.json()["transaction_id"]
    assert await count(engine, "transactions") == 2


async def test_requests_failing_validation_are_not_remembered(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    bad = payment_body(merchant.merchant_id)
    bad["card_data"] = {**bad["card_data"], "cvv": "1"}
    headers = {**merchant.headers, "Idempotency-Key": "fix-and-retry"}

    rejected = await client.post(PROCESS, json=bad, headers=headers)
    corrected = await pay(client, merchant, key="fix-and-retry")

    assert rejected.status_code == 422
    assert corrected.status_code == 200, corrected.text
    assert "Idempotent-Replayed" not in corrected.headers
    assert await count(engine, "transactions") == 1


async def test_requests_for_an_unaccepted_currency_are_not_remembered(
    client: httpx.AsyncClient, create_merchant: Callable[..., Any]
) -> None:
    usd_only: MerchantCredentials = await create_merchant(currencies=("USD",))

    rejected = await pay(client, usd_only, key="currency-retry", currency="EUR")
    corrected = await pay(client, usd_only, key="currency-retry", currency="USD")

    assert_problem(rejected, 422, "currency_not_supported")
    assert corrected.status_code == 200, corrected.text


async def test_requests_failing_authentication_are_not_remembered(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    wrong_key = MerchantCredentials(merchant.merchant_id, "sk_wrong_key_000000000000")

    refused = await pay(client, wrong_key, key="k1")
    accepted = await pay(client, merchant, key="k1")

    assert refused.status_code == 401
    assert accepted.status_code == 200, accepted.text
    assert "Idempotent-Replayed" not in accepted.headers
    assert await count(engine, "idempotency_keys") == 1


async def test_refund_with_the_same_key_refunds_once(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    txn = (await pay(client, merchant, amount="100.00")).json()["transaction_id"]

    first = await refund(client, merchant, txn, "10.00", key="refund-1")
    again = await refund(client, merchant, txn, "10.00", key="refund-1")

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["refunded_amount"] == "10.00"
    assert await count(engine, "refunds") == 1
    payment = await client.get(payment_url(txn), headers=merchant.headers)
    assert payment.json()["refunded_amount"] == "10.00"


async def test_a_refused_refund_is_not_remembered(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    txn = (await pay(client, merchant, amount="100.00")).json()["transaction_id"]

    too_much = await refund(client, merchant, txn, "150.00", key="refund-retry")
    fixed = await refund(client, merchant, txn, "150.00", key="refund-retry")

    # The balance did not change, so the same request is decided afresh (and refused again).
    assert_problem(too_much, 409, "refund_exceeds_balance")
    assert_problem(fixed, 409, "refund_exceeds_balance")
    assert "Idempotent-Replayed" not in fixed.headers


async def test_bank_unavailable_is_not_remembered_and_a_retry_runs_again(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    # A refused connection: the bank certainly never received the request, so the key is
    # forgotten with the failed payment and the same request may simply be sent again.
    unreachable = make_settings(
        bank_api_url=f"http://127.0.0.1:{closed_port()}",
        bank_timeout_s=0.2,
        bank_connect_timeout_s=0.2,
        bank_max_retries=1,
        bank_backoff_max_s=0.05,
    )
    async with running_app(unreachable) as down:
        first = await pay(down, merchant, key="bank-down")
        again = await pay(down, merchant, key="bank-down")

    first_problem = assert_problem(first, 503, "bank_unavailable")
    again_problem = assert_problem(again, 503, "bank_unavailable")
    assert int(first.headers["Retry-After"]) > 0
    assert "Idempotent-Replayed" not in again.headers
    # The retry ran again: a second attempt, a second failed payment.
    assert again_problem["transaction_id"] != first_problem["transaction_id"]
    for problem in (first_problem, again_problem):
        stored = await client.get(payment_url(problem["transaction_id"]), headers=merchant.headers)
        assert stored.json()["status"] == "failed"
        assert stored.json()["failure_code"] == "bank_unreachable"
    assert await count(engine, "transactions") == 2
    assert await count(engine, "idempotency_keys") == 0

    # Once the bank answers, the same request with the same key goes through.
    recovered = await pay(client, merchant, key="bank-down")

    assert recovered.status_code == 200, recovered.text
    assert "Idempotent-Replayed" not in recovered.headers
    assert recovered.json()["status"] == "captured"
    assert recovered.json()["transaction_id"] not in {
        first_problem["transaction_id"],
        again_problem["transaction_id"],
    }
    assert await count(engine, "transactions") == 3


async def test_an_unknown_bank_answer_is_remembered_and_replayed_as_202(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    # The timeout card: the bank may have approved it, so a retry must not pay again.
    first = await pay(client, merchant, key="bank-slow", card_number="4000000000000903")
    again = await pay(client, merchant, key="bank-slow", card_number="4000000000000903")

    assert first.status_code == 202, first.text
    assert first.json()["status"] == "processing"
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await count(engine, "transactions") == 1


@pytest.mark.parametrize(
    "key",
    ["k" * 256, b"tab\tkey", b"bell\x07", b"del\x7f", "caf\u00e9".encode("latin-1"), b""],
    ids=["256-chars", "tab", "control", "delete", "non-ascii", "empty"],
)
async def test_invalid_idempotency_keys_are_rejected(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine, key: str | bytes
) -> None:
    response = await pay(client, merchant, headers={"Idempotency-Key": key})

    assert_problem(response, 422, "validation_error")
    assert await count(engine, "transactions") == 0


async def test_the_longest_allowed_idempotency_key_works(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    key = "~!" + "k" * 252 + "}"

    first = await pay(client, merchant, key=key)
    again = await pay(client, merchant, key=key)

    assert first.status_code == 200, first.text
    assert again.headers["Idempotent-Replayed"] == "true"
