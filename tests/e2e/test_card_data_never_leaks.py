"""The card number and CVV are never logged, stored in clear, or returned (docs/api.md).

One scenario (a capture, a partial refund, a decline, a payment left processing by a bank
error and a Luhn-invalid request) runs with every log line captured at DEBUG; then every
log line, response and database row is searched for the card data that was sent.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.logging import build_handler
from app.main import build_vault
from tests.conftest import TABLES, MerchantCredentials, make_settings, payment_body

PROCESS = "/api/v1/payments/process"
CAPTURED_CARD = "378282246310005"  # Amex: 4-digit CVV
DECLINED_CARD = "4000000000009995"
INVALID_CARD = "4242424242424241"
BANK_ERROR_CARD = "4000000000000119"
CVV = "7391"  # four digits, checked as a standalone token so timestamps cannot match it
CVV_TOKEN = re.compile(rf"(?<![\w.:-]){CVV}(?![\w.:-])")
CARD_FORMS = [
    CAPTURED_CARD,
    "3782 822463 10005",
    "3782-822463-10005",
    DECLINED_CARD,
    "4000 0000 0000 9995",
    BANK_ERROR_CARD,
    INVALID_CARD,
    "4242 4242 4242 4241",
]


@pytest.fixture
def app_settings() -> Settings:
    return make_settings(log_level="DEBUG")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything the service's JSON stdout handler would write."""
    stream = io.StringIO()
    handler = build_handler(make_settings(log_level="DEBUG"), stream=stream)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def card(number: str, spaced: str | None = None) -> dict[str, Any]:
    return {
        "card_number": spaced or number,
        "expiry_month": 12,
        "expiry_year": 2030,
        "cvv": CVV,
        "cardholder_name": "Jane Doe",
    }


class Transcript:
    """Every response the scenario received, as text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def record(self, response: httpx.Response) -> httpx.Response:
        self.texts.append(response.text)
        self.texts.extend(f"{name}: {value}" for name, value in response.headers.multi_items())
        return response


def assert_no_card_data(where: str, texts: list[str]) -> None:
    for chunk in texts:
        for form in CARD_FORMS:
            assert form not in chunk, f"card number {form!r} found in {where}: {chunk[:300]}"
        match = CVV_TOKEN.search(chunk)
        assert match is None, (
            f"CVV found in {where}: ...{chunk[max(match.start() - 80, 0) : match.end() + 80]}..."
        )


async def all_rows(engine: AsyncEngine) -> dict[str, list[str]]:
    async with engine.connect() as conn:
        return {
            table: list(
                (await conn.execute(text(f"SELECT row_to_json(t)::text FROM {table} t"))).scalars()
            )
            for table in TABLES
        }


async def test_card_number_and_cvv_never_leave_the_request(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    engine: AsyncEngine,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    json_log: io.StringIO,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # every statement and parameter
    transcript = Transcript()
    headers = {**merchant.headers, "X-Correlation-ID": "leak-check-payment"}

    captured = transcript.record(
        await client.post(
            PROCESS,
            json=payment_body(
                merchant.merchant_id, card_data=card(CAPTURED_CARD, "3782 822463 10005")
            ),
            headers={**headers, "Idempotency-Key": "leak-check-1"},
        )
    )
    transaction_id = captured.json()["transaction_id"]
    refunded = transcript.record(
        await client.post(
            f"/api/v1/payments/{transaction_id}/refund",
            json={"amount": "10.00", "reason": "partial"},
            headers={**merchant.headers, "X-Correlation-ID": "leak-check-refund"},
        )
    )
    transcript.record(
        await client.get(f"/api/v1/payments/{transaction_id}", headers=merchant.headers)
    )
    declined = transcript.record(
        await client.post(
            PROCESS,
            json=payment_body(merchant.merchant_id, card_data=card(DECLINED_CARD)),
            headers=merchant.headers,
        )
    )
    # The bank answers 500: logged as an unknown answer, recorded processing (202).
    processing = transcript.record(
        await client.post(
            PROCESS,
            json=payment_body(merchant.merchant_id, card_data=card(BANK_ERROR_CARD)),
            headers=merchant.headers,
        )
    )
    invalid = transcript.record(
        await client.post(
            PROCESS,
            json=payment_body(merchant.merchant_id, card_data=card(INVALID_CARD)),
            headers=merchant.headers,
        )
    )
    rows = await all_rows(engine)

    assert captured.status_code == 200, captured.text
    assert refunded.status_code == 200, refunded.text
    assert declined.json()["status"] == "declined"
    assert processing.status_code == 202, processing.text
    assert processing.json()["status"] == "processing"
    assert invalid.status_code == 422
    assert caplog.records, "nothing was logged at DEBUG: the capture is not working"
    assert json_log.getvalue(), "the JSON handler wrote nothing"

    log_texts = [
        f"{record.getMessage()} {record.__dict__!r} {record.exc_text or ''}"
        for record in caplog.records
    ]
    assert_no_card_data("the log records", log_texts)
    assert_no_card_data("the JSON log output", json_log.getvalue().splitlines())
    assert_no_card_data("the responses", transcript.texts)
    for table, table_rows in rows.items():
        assert_no_card_data(f"table {table}", table_rows)
        assert all('"cvv"' not in row for row in table_rows), table

    # Not dropped: the number is kept, encrypted under the vault's key for this payment.
    vault = build_vault(settings)
    (stored,) = [json.loads(r) for r in rows["transactions"] if transaction_id in r]
    assert stored["card_ciphertext"].startswith("v1.")
    assert (
        vault.decrypt(stored["card_ciphertext"], associated_data=transaction_id.encode())
        == CAPTURED_CARD
    )
    assert stored["card_last4"] == "0005"
    assert stored["card_brand"] == "amex"

    # The payment and its refund are audited with the request's correlation id: recorded
    # (pending) before the bank is asked, then settled with the bank's answer.
    audit = [json.loads(r) for r in rows["audit_log"]]
    refund_id = refunded.json()["refund_id"]
    steps = [
        ("payment.process", transaction_id, "pending", "leak-check-payment"),
        ("payment.settle", transaction_id, "success", "leak-check-payment"),
        ("refund.create", refund_id, "pending", "leak-check-refund"),
        ("refund.settle", refund_id, "success", "leak-check-refund"),
    ]
    for step in steps:
        assert (
            sum(
                (a["action"], a["resource_id"], a["outcome"], a["correlation_id"]) == step
                for a in audit
            )
            == 1
        ), (step, audit)


async def test_the_same_card_has_the_same_fingerprint_and_different_ciphertexts(
    client: httpx.AsyncClient, merchant: MerchantCredentials, engine: AsyncEngine
) -> None:
    for _ in range(2):
        response = await client.post(
            PROCESS,
            json=payment_body(merchant.merchant_id, card_data=card(CAPTURED_CARD)),
            headers=merchant.headers,
        )
        assert response.status_code == 200

    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT card_fingerprint, card_ciphertext FROM transactions"))
        ).all()

    assert len({row.card_fingerprint for row in rows}) == 1
    assert len({row.card_ciphertext for row in rows}) == 2
