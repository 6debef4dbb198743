"""The real HTTP bank gateway against MockServer, which simulates the bank from the one table.

Needs MockServer from the local stack (``bash scripts/stack.sh up mockserver``) at
``BANK_API_URL`` (default ``http://127.0.0.1:1080``), loaded with
``deploy/mockserver/expectations.json``. Temporary expectations added here are removed by
id afterwards, so other tests always see the committed file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from app.adapters.bank.http import HttpBankGateway
from app.domain.cards import (
    DECLINE_MESSAGES,
    TEST_CARDS,
    BankBehaviour,
    TestCard,
    luhn_check_digit,
)
from app.domain.errors import BankUnavailable
from app.services.ports import AuthorizationRequest, BankRefundRequest

pytestmark = pytest.mark.mockserver

BANK_URL = os.environ.get("BANK_API_URL") or "http://127.0.0.1:1080"
REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPORARY_PRIORITY = 100


def _load_generator() -> ModuleType:
    path = REPO_ROOT / "scripts" / "generate_bank_expectations.py"
    spec = importlib.util.spec_from_file_location("generate_bank_expectations", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


@pytest.fixture(scope="module")
async def mockserver() -> AsyncIterator[httpx.AsyncClient]:
    """MockServer's control API; fails the module clearly when MockServer is not up."""
    async with httpx.AsyncClient(base_url=BANK_URL, timeout=5.0) as client:
        try:
            (await client.put("/mockserver/status")).raise_for_status()
        except httpx.HTTPError as exc:
            pytest.fail(
                f"MockServer is not answering at {BANK_URL} ({type(exc).__name__}); start it "
                "with `bash scripts/stack.sh up mockserver` or deselect with -m 'not mockserver'"
            )
        yield client


def _gateway(**overrides: Any) -> HttpBankGateway:
    settings: dict[str, Any] = {
        "base_url": BANK_URL,
        "timeout_s": 3.0,
        "connect_timeout_s": 1.0,
        "max_retries": 2,
        "backoff_max_s": 0.05,
        "breaker_fail_max": 100,
        "breaker_reset_s": 1.0,
        "max_connections": 10,
    }
    settings.update(overrides)
    return HttpBankGateway(**settings)


@pytest.fixture
async def bank(mockserver: httpx.AsyncClient) -> AsyncIterator[HttpBankGateway]:
    gateway = _gateway()
    yield gateway
    await gateway.aclose()


def _transaction_id() -> str:
    return f"txn_it_{uuid.uuid4().hex}"


def _authorization(card_number: str, transaction_id: str | None = None) -> AuthorizationRequest:
    return AuthorizationRequest(
        transaction_id=transaction_id or _transaction_id(),
        merchant_id="merchant_test_123",
        amount_minor=9999,
        currency="USD",
        card_number=card_number,
        cvv="1234" if card_number.startswith(("34", "37")) else "123",
        expiry_month=12,
        expiry_year=2030,
        cardholder_name="Jane Doe",
        correlation_id=f"corr-{uuid.uuid4().hex[:12]}",
    )


async def _recorded_authorizations(
    client: httpx.AsyncClient, transaction_id: str
) -> list[dict[str, Any]]:
    response = await client.put(
        "/mockserver/retrieve",
        params={"type": "REQUESTS", "format": "JSON"},
        json={
            "method": "POST",
            "path": "/v1/authorizations",
            "body": {
                "type": "JSON",
                "json": {"transaction_id": transaction_id},
                "matchType": "ONLY_MATCHING_FIELDS",
            },
        },
    )
    response.raise_for_status()
    recorded: list[dict[str, Any]] = response.json()
    for request in recorded:  # header names are case-insensitive (RFC 9110): compare lowered
        request["headers"] = {name.lower(): value for name, value in request["headers"].items()}
    return recorded


def _unique_card_number() -> str:
    """A Luhn-valid Visa number no other test uses, so a temporary expectation is ours."""
    partial = "4" + "".join(secrets.choice("0123456789") for _ in range(14))
    return partial + luhn_check_digit(partial)


# -- every row of the one table --------------------------------------------------------------


@pytest.mark.parametrize("card", TEST_CARDS, ids=lambda card: f"{card.number}-{card.behaviour}")
async def test_every_test_card_is_answered_as_the_table_says(
    mockserver: httpx.AsyncClient, card: TestCard
) -> None:
    transaction_id = _transaction_id()
    request = _authorization(card.number, transaction_id)
    # The timeout card answers after 10 s: a short client timeout and no retry keep it quick.
    slow = card.behaviour is BankBehaviour.TIMEOUT
    gateway = _gateway(timeout_s=0.5, max_retries=0) if slow else _gateway()
    started = time.monotonic()
    try:
        match card.behaviour:
            case BankBehaviour.APPROVE:
                result = await gateway.authorize(request)
                assert result.approved
                assert result.authorization_code == generator.DEFAULT_AUTHORIZATION_CODE
            case BankBehaviour.DECLINE:
                result = await gateway.authorize(request)
                assert not result.approved
                assert card.code is not None
                assert result.decline_code == card.code
                assert result.decline_message == DECLINE_MESSAGES[card.code]
            case BankBehaviour.ERROR | BankBehaviour.TIMEOUT:
                with pytest.raises(BankUnavailable) as caught:
                    await gateway.authorize(request)
                assert caught.value.failure_code == card.code
    finally:
        await gateway.aclose()

    if slow:
        assert time.monotonic() - started < 3.0
    recorded = await _recorded_authorizations(mockserver, transaction_id)
    expected_attempts = 3 if card.behaviour is BankBehaviour.ERROR else 1
    assert len(recorded) == expected_attempts
    for seen in recorded:
        assert seen["headers"]["idempotency-key"] == [transaction_id]
        assert seen["headers"]["x-correlation-id"] == [request.correlation_id]


async def test_any_other_valid_card_is_approved(bank: HttpBankGateway) -> None:
    result = await bank.authorize(_authorization(_unique_card_number()))

    assert result.approved


async def test_refund_succeeds(bank: HttpBankGateway) -> None:
    result = await bank.refund(
        BankRefundRequest(
            refund_id=f"re_it_{uuid.uuid4().hex}",
            transaction_id=_transaction_id(),
            authorization_code=generator.DEFAULT_AUTHORIZATION_CODE,
            amount_minor=500,
            currency="USD",
        )
    )

    assert result.succeeded
    assert result.bank_reference == generator.REFUND_REFERENCE


async def test_ping_reaches_the_bank_health_endpoint(bank: HttpBankGateway) -> None:
    assert await bank.ping()
    assert bank.circuit_state == "closed"


async def test_mock_bank_refuses_calls_without_an_idempotency_key(
    mockserver: httpx.AsyncClient,
) -> None:
    body = {"card": {"number": "4242424242424242"}}

    response = await mockserver.post("/v1/authorizations", json=body)

    assert response.status_code == 404


# -- a retry through real HTTP ---------------------------------------------------------------


@pytest.fixture
async def temporary_expectations(mockserver: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    """Ids appended here are cleared from MockServer after the test."""
    ids: list[str] = []
    yield ids
    for expectation_id in ids:
        cleared = await mockserver.put(
            "/mockserver/clear", params={"type": "EXPECTATIONS"}, json={"id": expectation_id}
        )
        cleared.raise_for_status()


async def test_one_server_error_is_retried_and_then_approved(
    mockserver: httpx.AsyncClient, temporary_expectations: list[str]
) -> None:
    card_number = _unique_card_number()
    expectation_id = f"test-retry-{uuid.uuid4().hex}"
    temporary_expectations.append(expectation_id)
    added = await mockserver.put(
        "/mockserver/expectation",
        json=[
            {
                "id": expectation_id,
                "priority": TEMPORARY_PRIORITY,
                "httpRequest": {
                    "method": "POST",
                    "path": "/v1/authorizations",
                    "body": {
                        "type": "JSON",
                        "json": {"card": {"number": card_number}},
                        "matchType": "ONLY_MATCHING_FIELDS",
                    },
                },
                "httpResponse": {"statusCode": 500},
                "times": {"remainingTimes": 1, "unlimited": False},
            }
        ],
    )
    added.raise_for_status()
    transaction_id = _transaction_id()
    gateway = _gateway(max_retries=2)
    try:
        result = await gateway.authorize(_authorization(card_number, transaction_id))
    finally:
        await gateway.aclose()

    assert result.approved
    assert result.authorization_code == generator.DEFAULT_AUTHORIZATION_CODE
    recorded = await _recorded_authorizations(mockserver, transaction_id)
    assert len(recorded) == 2, "one 500, then one approved retry"
    assert {seen["headers"]["idempotency-key"][0] for seen in recorded} == {transaction_id}


# -- the committed expectations are the table ------------------------------------------------


def test_committed_expectations_match_the_test_card_table() -> None:
    assert generator.is_in_sync(), (
        "deploy/mockserver/expectations.json is stale: "
        "run `uv run python scripts/generate_bank_expectations.py`"
    )


def test_every_non_approving_card_has_an_expectation() -> None:
    committed = json.loads(generator.EXPECTATIONS_PATH.read_text(encoding="utf-8"))
    matched_numbers = {
        expectation["httpRequest"]["body"]["json"]["card"]["number"]
        for expectation in committed
        if "body" in expectation["httpRequest"]
    }

    assert matched_numbers == {
        card.number for card in TEST_CARDS if card.behaviour is not BankBehaviour.APPROVE
    }
    assert len({expectation["id"] for expectation in committed}) == len(committed)
