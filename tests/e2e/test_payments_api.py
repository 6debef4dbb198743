"""POST /api/v1/payments/process and GET /api/v1/payments/{id} through the real app (docs/api.md).

The bank is the in-process simulator, which answers from the test-card table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import simplejson

from app.domain.cards import TEST_CARDS, BankBehaviour, TestCard
from app.services.ports import AuthorizationRequest, AuthorizationResult, BankGateway
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.api_calls import PROCESS, assert_problem, pay, payment_url, post_exact
from tests.e2e.in_process_app import closed_port, running_app

BRAND_BY_FIRST_DIGIT = {"4": "visa", "5": "mastercard", "3": "amex"}


async def pay_with_card(
    client: httpx.AsyncClient, merchant: MerchantCredentials, **card_changes: Any
) -> httpx.Response:
    """Pay with the valid card of ``payment_body``, these card fields changed or added."""
    card_data = {**payment_body()["card_data"], **card_changes}
    return await pay(client, merchant, exact=True, card_data=card_data)


def assert_invalid_field(response: httpx.Response, field: str) -> dict[str, Any]:
    body = assert_problem(response, 422, "validation_error")
    assert field in {entry["field"] for entry in body["errors"]}, body
    return body


def exact(value: Any) -> str:
    """A canonical JSON text that keeps every digit (1.10 stays 1.10)."""
    return str(simplejson.dumps(value, use_decimal=True, sort_keys=True, ensure_ascii=False))


def parse_exact(response: httpx.Response) -> Any:
    return simplejson.loads(response.text, use_decimal=True)


def last_month() -> tuple[int, int]:
    today = datetime.now(UTC).date()
    return (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)


class BankSpy:
    """Delegates to the real gateway and remembers which cards it was asked about."""

    def __init__(self, bank: BankGateway) -> None:
        self._bank = bank
        self.authorized: list[str] = []

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        self.authorized.append(request.transaction_id)
        return await self._bank.authorize(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)


def spy_on_bank(client: httpx.AsyncClient) -> BankSpy:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    spy = BankSpy(runtime.services.bank)
    runtime.services = dataclasses.replace(runtime.services, bank=spy)
    return spy


def card_id(card: TestCard) -> str:
    return f"{card.number}-{card.code or card.behaviour}"


FAST_BANK_CALLS: dict[str, Any] = {
    "bank_timeout_s": 0.2,
    "bank_connect_timeout_s": 0.2,
    "bank_max_retries": 1,
    "bank_backoff_max_s": 0.05,
}
"""A bank call given up on within a second (Settings.longest_bank_call_s is 0.85 s)."""

FAST_RECONCILER: dict[str, Any] = {
    **FAST_BANK_CALLS,
    "reconcile_first_delay_s": 0.2,
    "reconcile_interval_s": 0.2,
    "reconcile_max_interval_s": 0.5,
    "reconcile_no_record_after_s": 1.0,
    "reconcile_lease_s": 1.0,
}
"""A reconciler that asks the bank within a second and gives up on "no record" after one."""

SETTLE_WITHIN_S = 15.0


async def wait_until_settled(
    client: httpx.AsyncClient, merchant: MerchantCredentials, transaction_id: str
) -> dict[str, Any]:
    """GET the payment until it is no longer processing (fails after SETTLE_WITHIN_S)."""
    deadline = time.monotonic() + SETTLE_WITHIN_S
    while True:
        response = await client.get(payment_url(transaction_id), headers=merchant.headers)
        assert response.status_code == 200, response.text
        payment: dict[str, Any] = response.json()
        if payment["status"] != "processing":
            return payment
        assert time.monotonic() < deadline, f"still processing after {SETTLE_WITHIN_S:g} s"
        await asyncio.sleep(0.1)


# --- the test-card table ----------------------------------------------------------------


@pytest.mark.parametrize(
    "card", [c for c in TEST_CARDS if c.behaviour is BankBehaviour.APPROVE], ids=card_id
)
async def test_approved_test_cards_are_captured(
    client: httpx.AsyncClient, merchant: MerchantCredentials, card: TestCard
) -> None:
    response = await pay(client, merchant, exact=True, card_number=card.number, amount="99.99")

    assert response.status_code == 200, response.text
    payment = response.json()
    assert payment["transaction_id"].startswith("txn_")
    assert payment["merchant_id"] == merchant.merchant_id
    assert payment["status"] == "captured"
    assert payment["authorization_code"]
    assert payment["decline_code"] is None
    assert payment["decline_message"] is None
    assert payment["card"] == {
        "brand": BRAND_BY_FIRST_DIGIT[card.number[0]],
        "last4": card.number[-4:],
        "exp_month": 12,
        "exp_year": 2030,
    }
    assert payment["card_last_four"] == card.number[-4:]
    assert payment["amount"] == "99.99"
    assert payment["currency"] == "USD"
    assert payment["refunded_amount"] == "0.00"
    assert payment["refundable_amount"] == "99.99"
    assert payment["created_at"].endswith("Z")


@pytest.mark.parametrize(
    "card", [c for c in TEST_CARDS if c.behaviour is BankBehaviour.DECLINE], ids=card_id
)
async def test_declined_test_cards_answer_200_declined_with_their_code(
    client: httpx.AsyncClient, merchant: MerchantCredentials, card: TestCard
) -> None:
    response = await pay(client, merchant, exact=True, card_number=card.number)

    assert response.status_code == 200, response.text
    payment = response.json()
    assert payment["status"] == "declined"
    assert payment["decline_code"] == card.code
    assert isinstance(payment["decline_message"], str)
    assert payment["decline_message"]
    assert payment["authorization_code"] is None
    assert payment["refundable_amount"] == "0.00"
    # A decline is recorded like any other payment.
    stored = await client.get(payment_url(payment["transaction_id"]), headers=merchant.headers)
    assert stored.status_code == 200
    assert stored.json()["status"] == "declined"
    assert stored.json()["decline_code"] == card.code


@pytest.mark.parametrize(
    "card",
    [c for c in TEST_CARDS if c.behaviour in (BankBehaviour.ERROR, BankBehaviour.TIMEOUT)],
    ids=card_id,
)
async def test_an_unknown_bank_answer_is_202_with_the_payment_processing(
    client: httpx.AsyncClient, merchant: MerchantCredentials, card: TestCard
) -> None:
    # A 500 or a timeout may come after the bank received the request: the payment is
    # neither captured nor failed until the reconciler has asked the bank.
    response = await pay(client, merchant, exact=True, card_number=card.number)

    assert response.status_code == 202, response.text
    payment = response.json()
    assert payment["transaction_id"].startswith("txn_")
    assert payment["status"] == "processing"
    assert payment["authorization_code"] is None
    assert payment["decline_code"] is None
    assert payment["failure_code"] is None
    assert payment["refundable_amount"] == "0.00"
    stored = await client.get(payment_url(payment["transaction_id"]), headers=merchant.headers)
    assert stored.status_code == 200
    assert stored.json()["status"] == "processing"


async def test_an_unreachable_bank_answers_503_and_records_a_failed_payment(
    migrated_database: str, create_merchant: Callable[..., Any]
) -> None:
    # A refused connection: the bank certainly never received the request.
    settings = make_settings(bank_api_url=f"http://127.0.0.1:{closed_port()}", **FAST_BANK_CALLS)
    merchant: MerchantCredentials = await create_merchant()
    async with running_app(settings) as client:
        response = await pay(client, merchant, exact=True)

        problem = assert_problem(response, 503, "bank_unavailable")
        assert int(response.headers["Retry-After"]) > 0
        transaction_id = problem["transaction_id"]
        assert transaction_id.startswith("txn_")
        stored = await client.get(payment_url(transaction_id), headers=merchant.headers)

    assert stored.status_code == 200
    assert stored.json()["status"] == "failed"
    assert stored.json()["failure_code"] == "bank_unreachable"
    assert stored.json()["refundable_amount"] == "0.00"


@pytest.mark.parametrize(
    ("card_number", "settled"),
    [
        # The simulator approved the timeout card before "timing out": the lookup finds it.
        ("4000000000000903", {"status": "captured", "failure_code": None}),
        # The error card leaves no record: failed once "no record" has lasted long enough.
        ("4000000000000119", {"status": "failed", "failure_code": "bank_no_record"}),
    ],
    ids=["timeout-card-captured", "error-card-no-record"],
)
async def test_the_reconciler_settles_a_processing_payment_from_the_bank(
    migrated_database: str,
    create_merchant: Callable[..., Any],
    card_number: str,
    settled: dict[str, Any],
) -> None:
    merchant: MerchantCredentials = await create_merchant()
    async with running_app(make_settings(**FAST_RECONCILER)) as client:
        response = await pay(client, merchant, exact=True, card_number=card_number)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "processing"

        payment = await wait_until_settled(client, merchant, response.json()["transaction_id"])

    assert {key: payment[key] for key in settled} == settled
    if settled["status"] == "captured":
        assert payment["authorization_code"]
        assert payment["refundable_amount"] == payment["amount"]
    else:
        assert payment["authorization_code"] is None
        assert payment["refundable_amount"] == "0.00"
        # "No record" counts only once RECONCILE_NO_RECORD_AFTER_S has passed (earlier
        # lookups are deferred): the request might still have been on its way.
        waited = parse_time(payment["updated_at"]) - parse_time(payment["created_at"])
        assert waited.total_seconds() >= FAST_RECONCILER["reconcile_no_record_after_s"]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_any_other_luhn_valid_number_is_captured_with_its_brand(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    response = await pay(client, merchant, exact=True, card_number="6011-1111-1111-1117")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "captured"
    assert response.json()["card"]["brand"] == "discover"
    assert response.json()["card_last_four"] == "1117"


async def test_card_expired_last_month_is_declined_without_calling_the_bank(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    bank = spy_on_bank(client)
    year, month = last_month()

    response = await pay_with_card(client, merchant, expiry_month=month, expiry_year=year)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "declined"
    assert response.json()["decline_code"] == "expired_card"
    assert bank.authorized == []


async def test_card_expiring_this_month_is_still_accepted(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    today = datetime.now(UTC).date()

    response = await pay_with_card(
        client, merchant, expiry_month=today.month, expiry_year=today.year
    )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "captured"


async def test_debit_cards_are_accepted(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    response = await pay(client, merchant, exact=True, payment_method="debit_card")

    assert response.status_code == 200, response.text
    assert response.json()["payment_method"] == "debit_card"


# --- amounts and currencies -------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        ("1500", "JPY", "1500"),
        ("12.345", "KWD", "12.345"),
        ("1", "KWD", "1.000"),
        ("10", "USD", "10.00"),
        ("0.01", "USD", "0.01"),
        ("1000000", "USD", "1000000.00"),
    ],
)
async def test_amounts_are_shown_with_exactly_the_currency_decimals(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    amount: str,
    currency: str,
    shown: str,
) -> None:
    response = await pay(client, merchant, exact=True, amount=amount, currency=currency)

    assert response.status_code == 200, response.text
    assert response.json()["amount"] == shown
    assert response.json()["refundable_amount"] == shown
    assert response.json()["currency"] == currency


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("99.999", "USD"),
        ("1.5", "JPY"),
        ("1.2345", "KWD"),
        ("1000000.01", "USD"),
        ("1000001", "JPY"),
        ("0", "USD"),
        ("0.00", "USD"),
        ("-5.00", "USD"),
        ("abc", "USD"),
        ("NaN", "USD"),
        ("Infinity", "USD"),
        ("", "USD"),
    ],
)
async def test_amounts_breaking_the_rules_are_rejected_naming_the_amount(
    client: httpx.AsyncClient, merchant: MerchantCredentials, amount: str, currency: str
) -> None:
    response = await pay(client, merchant, exact=True, amount=amount, currency=currency)

    assert_invalid_field(response, "amount")


@pytest.mark.parametrize("amount", [True, None, [1], {"value": 1}])
async def test_amount_must_be_a_number_or_a_decimal_string(
    client: httpx.AsyncClient, merchant: MerchantCredentials, amount: Any
) -> None:
    response = await pay(client, merchant, exact=True, amount=amount)

    assert_invalid_field(response, "amount")


@pytest.mark.parametrize(
    ("raw_amount", "shown"),
    [
        ("0.1", "0.10"),
        ("99.99", "99.99"),
        ("1000000.00", "1000000.00"),
        ("999999.99", "999999.99"),
        ("5", "5.00"),
        ("1e2", "100.00"),
    ],
)
@pytest.mark.parametrize("as_string", [False, True], ids=["json-number", "json-string"])
async def test_json_numbers_and_decimal_strings_are_both_exact(
    client: httpx.AsyncClient,
    merchant: MerchantCredentials,
    raw_amount: str,
    shown: str,
    as_string: bool,
) -> None:
    body = simplejson.dumps(payment_body(merchant.merchant_id, amount="__AMOUNT__"))
    literal = f'"{raw_amount}"' if as_string else raw_amount
    response = await client.post(
        PROCESS,
        content=body.replace('"__AMOUNT__"', literal),
        headers={**merchant.headers, "Content-Type": "application/json"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["amount"] == shown
    stored = await client.get(
        payment_url(response.json()["transaction_id"]), headers=merchant.headers
    )
    assert stored.json()["amount"] == shown


@pytest.mark.parametrize(("sent", "shown"), [("usd", "USD"), ("Eur", "EUR"), ("jpy", "JPY")])
async def test_currency_is_accepted_in_any_case_and_answered_upper_case(
    client: httpx.AsyncClient, merchant: MerchantCredentials, sent: str, shown: str
) -> None:
    response = await pay(client, merchant, exact=True, amount="100", currency=sent)

    assert response.status_code == 200, response.text
    assert response.json()["currency"] == shown


@pytest.mark.parametrize("currency", ["XYZ", "US", "DOLLARS", "", "12$"])
async def test_unknown_currency_is_a_validation_error(
    client: httpx.AsyncClient, merchant: MerchantCredentials, currency: str
) -> None:
    response = await pay(client, merchant, exact=True, currency=currency)

    assert_invalid_field(response, "currency")


async def test_known_currency_the_merchant_does_not_accept_is_not_supported(
    client: httpx.AsyncClient, create_merchant: Callable[..., Any]
) -> None:
    usd_only: MerchantCredentials = await create_merchant(currencies=("USD",))

    response = await pay(client, usd_only, exact=True, currency="GBP")

    body = assert_problem(response, 422, "currency_not_supported")
    assert "GBP" in body["detail"]


# --- request shape ----------------------------------------------------------------------


async def test_unknown_top_level_fields_are_rejected(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    response = await pay(client, merchant, exact=True, surprise="field")

    assert_invalid_field(response, "surprise")


async def test_unknown_card_fields_are_rejected(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    response = await pay_with_card(client, merchant, pin="0000")

    assert_invalid_field(response, "card_data.pin")


@pytest.mark.parametrize(
    "number", ["4242 4242 4242 4241", "4242-4242-4242-4241", "4242424242424241"]
)
async def test_card_number_failing_luhn_is_rejected_without_echoing_it(
    client: httpx.AsyncClient, merchant: MerchantCredentials, number: str
) -> None:
    response = await pay_with_card(client, merchant, card_number=number)

    assert_invalid_field(response, "card_data.card_number")
    assert "4242424242424241" not in response.text
    assert number not in response.text
    assert "42424242" not in response.text


@pytest.mark.parametrize(
    "number",
    [
        "42424242424",
        "42424242424242424242",
        "4242 4242 abcd 4242",
        "",
        "\uff14\uff12" * 8,  # full-width digits: not ASCII digits
    ],
    ids=["11-digits", "20-digits", "letters", "empty", "full-width-digits"],
)
async def test_card_number_must_be_12_to_19_digits(
    client: httpx.AsyncClient, merchant: MerchantCredentials, number: str
) -> None:
    response = await pay_with_card(client, merchant, card_number=number)

    assert_invalid_field(response, "card_data.card_number")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cvv": "12"}, "card_data.cvv"),
        ({"cvv": "12345"}, "card_data.cvv"),
        ({"cvv": "12a"}, "card_data.cvv"),
        ({"cvv": 123}, "card_data.cvv"),
        ({"expiry_month": 0}, "card_data.expiry_month"),
        ({"expiry_month": 13}, "card_data.expiry_month"),
        ({"expiry_month": "12"}, "card_data.expiry_month"),
        ({"expiry_month": Decimal("11.5")}, "card_data.expiry_month"),
        ({"expiry_month": True}, "card_data.expiry_month"),
        ({"expiry_year": Decimal("1E+999999999")}, "card_data.expiry_year"),
        ({"cardholder_name": ""}, "card_data.cardholder_name"),
        ({"cardholder_name": "J" * 101}, "card_data.cardholder_name"),
    ],
)
async def test_card_fields_outside_their_limits_are_rejected(
    client: httpx.AsyncClient, merchant: MerchantCredentials, changes: dict[str, Any], field: str
) -> None:
    response = await pay_with_card(client, merchant, **changes)

    assert_invalid_field(response, field)


@pytest.mark.parametrize(
    "changes",
    [
        {"cvv": "123"},
        {"cvv": "1234"},
        {"expiry_month": 1},
        {"cardholder_name": "J"},
        {"cardholder_name": "J" * 100},
    ],
)
async def test_card_fields_at_their_limits_are_accepted(
    client: httpx.AsyncClient, merchant: MerchantCredentials, changes: dict[str, Any]
) -> None:
    response = await pay_with_card(client, merchant, **changes)

    assert response.status_code == 200, response.text


async def test_an_expiry_written_with_a_zero_fraction_is_that_whole_number(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    """JSON has one kind of number: 12.0 is the integer 12, as the schema's `integer` says."""
    response = await pay_with_card(
        client, merchant, expiry_month=Decimal("12.0"), expiry_year=Decimal("2030.00")
    )

    assert response.status_code == 200, response.text
    card = response.json()["card"]
    assert (card["exp_month"], card["exp_year"]) == (12, 2030)
    assert isinstance(card["exp_month"], int)


async def test_every_bad_field_is_listed_in_one_422(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    body = payment_body(merchant.merchant_id, description="d" * 501)
    body["card_data"] = {**body["card_data"], "cvv": "1", "expiry_month": 14}

    response = await post_exact(client, PROCESS, body, merchant.headers)

    fields = {e["field"] for e in assert_problem(response, 422, "validation_error")["errors"]}
    assert {"description", "card_data.cvv", "card_data.expiry_month"} <= fields


async def test_description_is_limited_to_500_characters(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    accepted = await pay(client, merchant, exact=True, description="d" * 500)
    rejected = await pay(client, merchant, exact=True, description="d" * 501)

    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["description"] == "d" * 500
    assert_invalid_field(rejected, "description")


@pytest.mark.parametrize("method", ["cash", "", None])
async def test_payment_method_must_be_a_card(
    client: httpx.AsyncClient, merchant: MerchantCredentials, method: str | None
) -> None:
    response = await pay(client, merchant, exact=True, payment_method=method)

    assert_invalid_field(response, "payment_method")


@pytest.mark.parametrize("missing", ["merchant_id", "amount", "currency", "card_data"])
async def test_required_fields_are_required(
    client: httpx.AsyncClient, merchant: MerchantCredentials, missing: str
) -> None:
    body = payment_body(merchant.merchant_id)
    del body[missing]

    response = await post_exact(client, PROCESS, body, merchant.headers)

    assert_invalid_field(response, missing)


# --- metadata ---------------------------------------------------------------------------


async def test_metadata_is_limited_to_50_keys(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    fifty = {f"k{i}": i for i in range(50)}

    accepted = await pay(client, merchant, exact=True, metadata=fifty)
    rejected = await pay(client, merchant, exact=True, metadata={**fifty, "k50": 50})

    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["metadata"] == fifty
    assert_invalid_field(rejected, "metadata")


async def test_metadata_is_limited_to_16_kib(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    accepted = await pay(client, merchant, exact=True, metadata={"blob": "x" * (15 * 1024)})
    rejected = await pay(client, merchant, exact=True, metadata={"blob": "x" * (16 * 1024)})

    assert accepted.status_code == 200, accepted.text
    assert_invalid_field(rejected, "metadata")


@pytest.mark.parametrize("metadata", [[1, 2], "text", 5])
async def test_metadata_must_be_a_json_object(
    client: httpx.AsyncClient, merchant: MerchantCredentials, metadata: Any
) -> None:
    response = await pay(client, merchant, exact=True, metadata=metadata)

    assert_invalid_field(response, "metadata")


async def test_metadata_is_stored_and_returned_unchanged(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    from decimal import Decimal

    metadata = {
        "order_id": "1234",
        "items": [1, 2, [3, [4, {"deep": True}]]],
        "lines": [{"sku": "A-1", "qty": 2, "price": Decimal("1.10")}],
        "tiny": Decimal("0.000001"),
        "big": 123456789012345678901234567890,
        "negative": -7,
        "unicode": "Größe 日本 🎉 \u00e9",
        "empty": {},
        "nothing": None,
        "flag": False,
    }

    response = await pay(client, merchant, exact=True, metadata=metadata)

    assert response.status_code == 200, response.text
    assert exact(parse_exact(response)["metadata"]) == exact(metadata)
    assert '"price":1.10' in response.text.replace(" ", "")
    stored = await client.get(
        payment_url(response.json()["transaction_id"]), headers=merchant.headers
    )
    assert exact(parse_exact(stored)["metadata"]) == exact(metadata)
    assert '"price":1.10' in stored.text.replace(" ", "")


async def test_metadata_defaults_to_an_empty_object(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    body = payment_body(merchant.merchant_id)
    del body["metadata"]
    del body["description"]

    response = await post_exact(client, PROCESS, body, merchant.headers)

    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {}
    assert response.json()["description"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("description", "Order\x001234"),
        ("metadata", {"note": "a\x00b"}),
        ("metadata", {"key\x00": 1}),
        ("metadata", {"nested": [{"deep": "\x00"}]}),
    ],
    ids=["description", "metadata-value", "metadata-key", "metadata-nested"],
)
async def test_text_with_nul_characters_is_refused_or_kept_never_a_crash(
    client: httpx.AsyncClient, merchant: MerchantCredentials, field: str, value: Any
) -> None:
    response = await pay(client, merchant, exact=True, **{field: value})

    # NUL cannot be stored in PostgreSQL text or jsonb: a 422 naming the field is the
    # honest answer; keeping it unchanged would do too. A 500 is neither.
    if response.status_code == 200:
        assert response.json()[field] == value
    else:
        assert_invalid_field(response, field)


# --- reading payments -------------------------------------------------------------------


async def test_get_returns_the_payment_with_its_refunds(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    created = (await pay(client, merchant, exact=True)).json()

    response = await client.get(payment_url(created["transaction_id"]), headers=merchant.headers)

    assert response.status_code == 200
    assert response.json() == {**created, "refunds": []}


async def test_unknown_and_other_merchants_payments_are_not_found_alike(
    client: httpx.AsyncClient, merchant: MerchantCredentials, create_merchant: Callable[..., Any]
) -> None:
    other: MerchantCredentials = await create_merchant()
    theirs = (await pay(client, other, exact=True)).json()["transaction_id"]
    unknown = f"txn_{uuid.uuid4().hex}"

    foreign = await client.get(payment_url(theirs), headers=merchant.headers)
    missing = await client.get(payment_url(unknown), headers=merchant.headers)

    foreign_body = assert_problem(foreign, 404, "payment_not_found")
    missing_body = assert_problem(missing, 404, "payment_not_found")
    assert theirs not in foreign.text
    del foreign_body["correlation_id"], missing_body["correlation_id"]
    assert foreign_body == missing_body


# --- correlation ids --------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["req-123", "a", "A.b_c:d-9", "x" * 128])
async def test_a_valid_correlation_id_is_echoed(
    client: httpx.AsyncClient, merchant: MerchantCredentials, sent: str
) -> None:
    headers = {**merchant.headers, "X-Correlation-ID": sent}

    response = await pay(client, merchant, headers=headers)
    problem = await client.get(payment_url("txn_unknown"), headers=headers)

    assert response.status_code == 200, response.text
    assert response.headers["X-Correlation-ID"] == sent
    assert problem.headers["X-Correlation-ID"] == sent
    assert problem.json()["correlation_id"] == sent


@pytest.mark.parametrize(
    "sent",
    [None, "x" * 129, "y" * 200, "has space", "semi;colon", "slash/slash", "ümlaut", ""],
    ids=["absent", "129-chars", "200-chars", "space", "semicolon", "slash", "non-ascii", "empty"],
)
async def test_a_missing_or_invalid_correlation_id_is_replaced_by_a_new_uuid(
    client: httpx.AsyncClient, merchant: MerchantCredentials, sent: str | None
) -> None:
    headers: dict[str, str | bytes] = dict(merchant.headers)
    if sent is not None:
        headers["X-Correlation-ID"] = sent.encode()  # bytes: non-ASCII goes out as sent

    response = await pay(client, merchant, headers=headers)

    assert response.status_code == 200, response.text
    answered = response.headers["X-Correlation-ID"]
    assert answered != sent
    assert str(uuid.UUID(answered)) == answered


async def test_every_response_carries_a_correlation_id(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/"),
        await client.get("/health/live"),
        await client.get(payment_url("txn_x")),  # 401
        await client.get("/nowhere"),  # 404
    ):
        assert uuid.UUID(response.headers["X-Correlation-ID"])


# --- service information and health -----------------------------------------------------


async def test_root_describes_the_service_without_authentication(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/")

    assert response.status_code == 200
    body = response.json()
    assert body == {"service": "payment-service", "version": body["version"], "docs": "/docs"}
    assert isinstance(body["version"], str)
    assert body["version"]


async def test_deep_health_reports_each_dependency(
    client: httpx.AsyncClient, merchant: MerchantCredentials
) -> None:
    # Two events wait in the outbox (Kafka is not configured here): a captured payment's
    # and a processing one's, which waits for the reconciler (its first lookup is 10 s
    # away with the default settings).
    assert (await pay(client, merchant, exact=True)).status_code == 200
    processing = await pay(client, merchant, exact=True, card_number="4000000000000903")
    assert processing.status_code == 202, processing.text

    response = await client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] in ("healthy", "degraded")
    assert isinstance(body["version"], str)
    checks = body["checks"]
    assert set(checks) == {"database", "kafka", "bank", "outbox", "reconciliation"}
    assert checks["database"]["status"] == "up"
    assert checks["database"]["latency_ms"] >= 0
    assert checks["kafka"]["status"] in ("up", "down", "disabled")
    assert checks["bank"] == {"status": "up", "circuit": "closed"}
    assert checks["outbox"]["status"] == "up"
    assert checks["outbox"]["pending"] == 2
    assert checks["outbox"]["oldest_pending_age_s"] >= 0
    reconciliation = checks["reconciliation"]
    assert set(reconciliation) == {
        "status",
        "payments_processing",
        "refunds_pending",
        "oldest_age_s",
    }
    # Younger than RECONCILE_ALERT_AFTER_S: waiting is not (yet) a problem.
    assert reconciliation["status"] == "up"
    assert reconciliation["payments_processing"] == 1
    assert reconciliation["refunds_pending"] == 0
    assert 0 <= reconciliation["oldest_age_s"] < 60


async def test_liveness_and_readiness_answer_200_while_serving(
    client: httpx.AsyncClient,
) -> None:
    live = await client.get("/health/live")
    ready = await client.get("/health/ready")

    assert live.status_code == 200
    assert live.json() == {"status": "alive"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_readiness_answers_503_while_draining(client: httpx.AsyncClient) -> None:
    client.app.state.runtime.draining = True  # type: ignore[attr-defined]

    response = await client.get("/health/ready")

    assert response.status_code == 503
