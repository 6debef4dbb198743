"""Reads answered from the workers' payment view caches are never behind an acknowledged
write (SPEC §8): uvicorn with two workers, real HTTP, every GET on a new connection so
the two workers share the reads (and each keeps the payment in its cache)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx

from tests.conftest import MerchantCredentials, payment_body
from tests.e2e.test_multi_worker import http, server

__all__ = ["http", "server"]  # the two-worker service of test_multi_worker


async def _read_everywhere(
    http: httpx.AsyncClient, merchant: MerchantCredentials, transaction_id: str, n: int = 6
) -> list[httpx.Response]:
    headers = {**merchant.headers, "Connection": "close"}
    return await asyncio.gather(
        *(http.get(f"/api/v1/payments/{transaction_id}", headers=headers) for _ in range(n))
    )


async def test_a_refund_acknowledged_by_one_worker_is_shown_by_every_worker_at_once(
    http: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    paid = await http.post(
        "/api/v1/payments/process",
        json=payment_body(merchant.merchant_id, amount="50.00"),
        headers=merchant.headers,
    )
    assert paid.status_code == 200, paid.text
    transaction_id = paid.json()["transaction_id"]
    refunded = Decimal("0.00")

    for _ in range(25):
        for read in await _read_everywhere(http, merchant, transaction_id):  # warm both
            assert read.status_code == 200
            assert read.json()["refunded_amount"] == f"{refunded:.2f}"

        done = await http.post(
            f"/api/v1/payments/{transaction_id}/refund",
            json={"amount": "0.01"},
            headers={**merchant.headers, "Connection": "close"},
        )
        assert done.status_code == 200, done.text
        refunded += Decimal("0.01")

        for read in await _read_everywhere(http, merchant, transaction_id):
            body = read.json()
            assert body["refunded_amount"] == f"{refunded:.2f}"
            assert body["refunds"][-1]["refund_id"] == done.json()["refund_id"]
