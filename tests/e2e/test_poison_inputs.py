"""Poison inputs: no 5xx is ever preceded by a bank call, and poison never reaches the bank.

The service runs as a uvicorn process against MockServer (the bank); every request carries
a unique ``X-Correlation-ID``, which the service forwards on its bank calls, so what
MockServer received for a request is known exactly (``recorded_requests``).

1. A schemathesis fuzz pass over the payment endpoints (the app's own OpenAPI document):
   after every 5xx, MockServer must hold no authorization and no refund of that
   correlation id. (A 503 ``bank_unavailable`` cannot happen: MockServer answers.) As a
   control, a 2xx charge or refund must have reached the bank.
2. Deliberate poison (hypothesis, with explicit examples): numbers PostgreSQL cannot store
   (``1e999999``, ``-1e999999``, ``1e-20000``, integers of thousands of digits), NUL
   characters, lone surrogates, metadata nested thousands deep, metadata and bodies just
   over their limits -- in a payment, and in a refund of a captured payment: each answers
   4xx (never 5xx), makes no bank call, and changes nothing.
3. The metadata limits themselves: exactly 16 KiB is a payment (and a refund) like any
   other; one byte more, or one key more than 50, is refused before the bank.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, text

from app.api.schemas import METADATA_MAX_BYTES, METADATA_MAX_KEYS
from app.core.config import Settings
from app.core.jsoncodec import dump_json
from app.main import create_app
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.service_process import MOCKSERVER_URL, ServiceProcess, running_service, service_env
from tests.mockserver_bank import recorded_requests

pytestmark = pytest.mark.mockserver

PROCESS = "/api/v1/payments/process"
BANK_WRITES = ("/v1/authorizations", "/v1/refunds")
VALID_CARD = "4242424242424242"

SERVICE_SETTINGS: dict[str, object] = {
    "BANK_TIMEOUT_S": 3,
    "BANK_CONNECT_TIMEOUT_S": 1,
    "BANK_MAX_RETRIES": 0,
    "BANK_BACKOFF_MAX_S": 0.1,
    # A refused request must never open the circuit for the rest of the run.
    "BANK_BREAKER_FAIL_MAX": 1000,
    "RECONCILE_NO_RECORD_AFTER_S": 10,
    "RECONCILE_LEASE_S": 10,
    "PURGER_ENABLED": "false",
    "LOG_LEVEL": "WARNING",
}


# -- the service and the bank ----------------------------------------------------------


@pytest.fixture(scope="module")
def service(settings: Settings, migrated_database: str) -> Iterator[ServiceProcess]:
    """The service for the whole module (its tables are emptied before each test)."""
    env = service_env(settings.database_url, **SERVICE_SETTINGS)
    with running_service(env, workers=1, name="poison") as process:
        yield process


@pytest.fixture
def http(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def poison_merchant(create_merchant: Callable[..., Any]) -> MerchantCredentials:
    """A merchant (and key) of this test's own: the module's service outlives the tables'
    contents, and its key cache must not confuse two tests' merchants."""
    suffix = uuid.uuid4().hex[:12]
    creds: MerchantCredentials = await create_merchant(
        merchant_id=f"merchant_poison_{suffix}", api_key=f"sk_test_poison_{suffix}_abcdefgh"
    )
    return creds


@pytest.fixture
async def captured(service: ServiceProcess, poison_merchant: MerchantCredentials) -> list[str]:
    """Three captured payments of 50,000.00 (through the service and MockServer)."""
    ids = []
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        for _ in range(3):
            response = await client.post(
                PROCESS,
                json=payment_body(poison_merchant.merchant_id, amount="50000.00"),
                headers=poison_merchant.headers,
            )
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "captured"
            ids.append(response.json()["transaction_id"])
    return ids


def _run(coroutine: Any) -> Any:
    """Run a coroutine to completion from a synchronous test (on a thread of its own: the
    test session's event loop is not to be touched)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _bank_writes_async(correlation_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=MOCKSERVER_URL, timeout=10) as mockserver:
        found: list[dict[str, Any]] = []
        for path in BANK_WRITES:
            found += await recorded_requests(
                mockserver, method="POST", path_regex=path, correlation_id=correlation_id
            )
        return found


def bank_writes(correlation_id: str) -> list[dict[str, Any]]:
    """The authorizations and refunds MockServer received for this correlation id."""
    result: list[dict[str, Any]] = _run(_bank_writes_async(correlation_id))
    return result


def new_correlation_id(kind: str) -> str:
    return f"poison-{kind}-{uuid.uuid4().hex}"


def describe(method: str, path: str, status: int, body: str, correlation_id: str) -> str:
    return f"{method} {path} -> {status} (correlation {correlation_id}): {body[:500]}"


# -- 1. the fuzz pass --------------------------------------------------------------------


def _openapi_document() -> Any:
    app = create_app(make_settings(bank_api_url=MOCKSERVER_URL))
    return app.openapi()


schema = schemathesis.openapi.from_dict(_openapi_document()).include(
    path_regex=r"^/api/v1/payments"
)

FUZZ_EXAMPLES = 100


@dataclass
class FuzzTally:
    """What one operation's fuzz run saw; attached to the report."""

    statuses: Counter[int] = field(default_factory=Counter)
    reached_bank: int = 0
    """Requests whose bank call MockServer recorded (by correlation id)."""

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


@pytest.fixture
def fuzz_tally(record_property: Callable[[str, object], None]) -> Iterator[FuzzTally]:
    tally = FuzzTally()
    yield tally
    statuses = dict(sorted(tally.statuses.items()))
    record_property("fuzz_requests", tally.requests)
    record_property("fuzz_statuses", statuses)
    record_property("fuzz_reached_bank", tally.reached_bank)
    print(
        f"\nfuzz: {tally.requests} requests, {tally.reached_bank} reached the bank, "
        f"statuses {statuses}"
    )


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_is_ever_preceded_by_a_bank_call(
    case: Any,
    service: ServiceProcess,
    poison_merchant: MerchantCredentials,
    captured: list[str],
    fuzz_tally: FuzzTally,
) -> None:
    correlation_id = new_correlation_id("fuzz")
    n = fuzz_tally.requests
    body = case.body
    if isinstance(body, dict) and "merchant_id" in body:
        body["merchant_id"] = poison_merchant.merchant_id  # past the merchant check
    card = body.get("card_data") if isinstance(body, dict) else None
    if isinstance(card, dict) and n % 2 == 0:
        card["card_number"] = VALID_CARD  # past the card check, to the bank
    if "transaction_id" in (case.path_parameters or {}) and n % 3 != 2:
        case.path_parameters["transaction_id"] = captured[n % len(captured)]

    response = case.call(
        base_url=service.base_url,
        headers={**poison_merchant.headers, "X-Correlation-ID": correlation_id},
        timeout=30,
    )
    fuzz_tally.statuses[response.status_code] += 1
    what = describe(
        case.method, case.formatted_path, response.status_code, response.text, correlation_id
    )
    if response.status_code >= 500:
        assert bank_writes(correlation_id) == [], f"a bank call preceded a 5xx: {what}"
    elif response.status_code in (200, 202) and case.method.upper() == "POST":
        # The control: a charge or refund went to the bank with this correlation id --
        # unless it was an Idempotency-Key replay, or an expired card (declined unasked).
        replayed = response.headers.get("idempotent-replayed") == ["true"]
        expired_card = response.json().get("decline_code") == "expired_card"
        if not (replayed or expired_card):
            assert bank_writes(correlation_id), f"no bank call for {what}"
            fuzz_tally.reached_bank += 1


# -- 2. deliberate poison ----------------------------------------------------------------

# JSON text fragments, written into a body as they are (most cannot be a Python value).
POISON_NUMBERS = [
    "1e999999",
    "-1e999999",
    "1e-20000",
    "1E131072",  # one digit more than a PostgreSQL numeric holds before the point
    "1e-16384",  # one digit more than it holds after it
    "9" * 4301,  # more digits than Python converts to an int by default
    "-" + "9" * 5000,
    "1" + "0" * 40_000,
    "0." + "0" * 16_383 + "1",
]
POISON_STRINGS = [
    '"\\u0000"',
    '"before\\u0000after"',
    '"\\ud800"',  # a lone surrogate: not UTF-8, not storable
    '"x\\udfffy"',
]
POISON_STRUCTURES = [
    '"' + "x" * METADATA_MAX_BYTES + '"',  # just over 16 KiB with its key
    "[" + ",".join(["1"] * 40_000) + "]",  # a big array, over the 64 KiB body limit
]
DEEP_NESTING = {
    # name: metadata value; all of them far smaller than 16 KiB except the last
    "arrays-600": "[" * 600 + "]" * 600,
    "arrays-1000": "[" * 1_000 + "]" * 1_000,
    "arrays-3000": "[" * 3_000 + "]" * 3_000,
    "objects-5000": '{"a":' * 5_000 + "1" + "}" * 5_000,
    "arrays-10000": "[" * 10_000 + "]" * 10_000,
}
POISON_KEYS = ['"k\\u0000"', '"\\ud83d"']
POISON_VALUES = POISON_NUMBERS + POISON_STRINGS + POISON_STRUCTURES

PLACEHOLDER = "__POISON_PLACEHOLDER__"
WRAPS = st.lists(st.sampled_from(["list", "dict"]), max_size=3)


def poisoned_body(body: dict[str, Any], where: str, fragment: str, wraps: list[str]) -> str:
    """``body`` as JSON text with ``fragment`` written as it is at ``where``: ``metadata``
    (a value, inside ``wraps`` lists/objects), ``metadata_key``, ``card_data.<field>``, or
    a top-level field."""
    value: Any = PLACEHOLDER
    if where == "metadata":
        for wrap in wraps:
            value = [value] if wrap == "list" else {"inner": value}
        body["metadata"] = {"order_id": "1234", "poison": value}
    elif where == "metadata_key":
        body["metadata"] = {"order_id": "1234", PLACEHOLDER: 1}
    elif where.startswith("card_data."):
        body["card_data"][where.removeprefix("card_data.")] = PLACEHOLDER
    else:
        body[where] = PLACEHOLDER
    text_body = json.dumps(body)
    assert text_body.count(f'"{PLACEHOLDER}"') == 1
    return text_body.replace(f'"{PLACEHOLDER}"', fragment)


def poison_cases(
    string_fields: list[str], number_fields: list[str]
) -> st.SearchStrategy[tuple[str, str, list[str]]]:
    """(where, fragment, wraps) for a body with these string and number fields."""
    return st.one_of(
        st.tuples(st.just("metadata"), st.sampled_from(POISON_VALUES), WRAPS),
        st.tuples(st.just("metadata_key"), st.sampled_from(POISON_KEYS), st.just([])),
        st.tuples(
            st.sampled_from(number_fields),
            st.sampled_from(POISON_NUMBERS + POISON_STRINGS),
            st.just([]),
        ),
        st.tuples(st.sampled_from(string_fields), st.sampled_from(POISON_STRINGS), st.just([])),
    )


def with_explicit_examples(
    string_fields: list[str], number_fields: list[str]
) -> Callable[[Any], Any]:
    """Every poison fragment at every place, as explicit hypothesis examples."""

    def decorate(test: Any) -> Any:
        cases: list[tuple[str, str, list[str]]] = [("metadata", f, []) for f in POISON_VALUES]
        cases += [("metadata", f, ["list", "dict"]) for f in POISON_NUMBERS[:3]]
        cases += [("metadata_key", f, []) for f in POISON_KEYS]
        cases += [(name, f, []) for name in number_fields for f in POISON_NUMBERS]
        cases += [(name, f, []) for name in string_fields for f in POISON_STRINGS]
        for case in cases:
            test = example(case=case)(test)
        return test

    return decorate


def assert_refused_before_the_bank(
    response: httpx.Response,
    correlation_id: str,
    database: Engine,
    *,
    payments: int,
    refunded: str | None = None,
) -> None:
    """No bank call; nothing recorded (still ``payments`` payments, no refund, nothing
    refunded or reserved of ``refunded``); and a 4xx -- checked in that order."""
    what = describe("POST", response.url.path, response.status_code, response.text, correlation_id)
    assert bank_writes(correlation_id) == [], f"poison reached the bank: {what}"
    assert counts(database, refunded) == {
        "payments": payments,
        "refunds": 0,
        "refunded_or_reserved": None if refunded is None else 0,
    }, f"poison was recorded: {what}"
    assert 400 <= response.status_code < 500, (
        f"poison not refused with a 4xx (no bank call was made, nothing recorded): {what}"
    )


def post_raw(
    http: httpx.Client, path: str, body: str, merchant: MerchantCredentials, correlation_id: str
) -> httpx.Response:
    # surrogatepass: a lone surrogate goes out as the (invalid) UTF-8 a broken client sends
    return http.post(
        path,
        content=body.encode("utf-8", "surrogatepass"),
        headers={
            **merchant.headers,
            "Content-Type": "application/json",
            "X-Correlation-ID": correlation_id,
        },
    )


@pytest.fixture(scope="module")
def database(settings: Settings, migrated_database: str) -> Iterator[Engine]:
    """The test database for synchronous checks (hypothesis runs the tests synchronously)."""
    engine = create_engine(settings.sync_database_url)
    yield engine
    engine.dispose()


def counts(database: Engine, transaction_id: str | None = None) -> dict[str, Any]:
    """How many payments and refunds there are; with ``transaction_id``, that payment's
    refund counters."""
    with database.connect() as conn:
        row = (
            conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM transactions) AS payments, "
                    "(SELECT count(*) FROM refunds) AS refunds, "
                    "(SELECT refunded_minor + refund_pending_minor FROM transactions "
                    " WHERE transaction_id = :id) AS refunded_or_reserved"
                ),
                {"id": transaction_id},
            )
            .mappings()
            .one()
        )
    return dict(row)


POISON_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
PAYMENT_STRING_FIELDS = [
    "description",
    "merchant_id",
    "currency",
    "card_data.cardholder_name",
    "card_data.card_number",
    "card_data.cvv",
]
PAYMENT_NUMBER_FIELDS = ["amount", "card_data.expiry_month", "card_data.expiry_year"]
REFUND_STRING_FIELDS = ["reason"]
REFUND_NUMBER_FIELDS = ["amount"]


@pytest.fixture
def poison_tally(record_property: Callable[[str, object], None]) -> Iterator[Counter[str]]:
    """Counts one poison test's examples by where the poison was; attached to the report."""
    tally: Counter[str] = Counter()
    yield tally
    record_property("poison_examples", sum(tally.values()))
    record_property("poison_examples_by_place", dict(sorted(tally.items())))
    print(f"\npoison: {sum(tally.values())} examples, by place {dict(sorted(tally.items()))}")


@POISON_SETTINGS
@with_explicit_examples(PAYMENT_STRING_FIELDS, PAYMENT_NUMBER_FIELDS)
@given(case=poison_cases(PAYMENT_STRING_FIELDS, PAYMENT_NUMBER_FIELDS))
def test_a_poisoned_payment_is_refused_with_a_4xx_before_the_bank(
    case: tuple[str, str, list[str]],
    http: httpx.Client,
    poison_merchant: MerchantCredentials,
    database: Engine,
    poison_tally: Counter[str],
) -> None:
    where, fragment, wraps = case
    poison_tally[where] += 1
    correlation_id = new_correlation_id("payment")
    body = poisoned_body(
        payment_body(poison_merchant.merchant_id, card_number=VALID_CARD), where, fragment, wraps
    )
    response = post_raw(http, PROCESS, body, poison_merchant, correlation_id)
    assert_refused_before_the_bank(response, correlation_id, database, payments=0)


@POISON_SETTINGS
@with_explicit_examples(REFUND_STRING_FIELDS, REFUND_NUMBER_FIELDS)
@given(case=poison_cases(REFUND_STRING_FIELDS, REFUND_NUMBER_FIELDS))
def test_a_poisoned_refund_of_a_captured_payment_never_reaches_the_bank(
    case: tuple[str, str, list[str]],
    http: httpx.Client,
    poison_merchant: MerchantCredentials,
    captured: list[str],
    database: Engine,
    poison_tally: Counter[str],
) -> None:
    where, fragment, wraps = case
    poison_tally[where] += 1
    transaction_id = captured[0]
    correlation_id = new_correlation_id("refund")
    body = poisoned_body({"amount": "1.00", "reason": "poison"}, where, fragment, wraps)
    response = post_raw(
        http, f"/api/v1/payments/{transaction_id}/refund", body, poison_merchant, correlation_id
    )
    assert_refused_before_the_bank(
        response, correlation_id, database, payments=len(captured), refunded=transaction_id
    )


@pytest.mark.parametrize("kind", ["payment", "refund"])
@pytest.mark.parametrize("nesting", list(DEEP_NESTING))
def test_deeply_nested_metadata_is_refused_with_a_4xx_before_the_bank(
    kind: str,
    nesting: str,
    http: httpx.Client,
    poison_merchant: MerchantCredentials,
    captured: list[str],
    database: Engine,
) -> None:
    correlation_id = new_correlation_id(f"nested-{kind}")
    if kind == "payment":
        base = payment_body(poison_merchant.merchant_id, card_number=VALID_CARD)
        path = PROCESS
    else:
        base = {"amount": "1.00", "reason": "poison"}
        path = f"/api/v1/payments/{captured[2]}/refund"
    body = poisoned_body(base, "metadata", DEEP_NESTING[nesting], [])
    response = post_raw(http, path, body, poison_merchant, correlation_id)
    assert_refused_before_the_bank(
        response,
        correlation_id,
        database,
        payments=len(captured),
        refunded=captured[2] if kind == "refund" else None,
    )


# -- 3. the 16 KiB boundary ----------------------------------------------------------------


def metadata_of_exactly(size: int) -> dict[str, Any]:
    """Metadata whose compact JSON is exactly ``size`` bytes (multi-byte characters too)."""
    metadata: dict[str, Any] = {"order_id": "1234", "note": "é", "pad": ""}
    missing = size - len(dump_json(metadata).encode())
    metadata["pad"] = "x" * missing
    assert len(dump_json(metadata).encode()) == size
    return metadata


@pytest.mark.parametrize("kind", ["payment", "refund"])
def test_metadata_at_its_limits_is_taken_and_past_them_refused_before_the_bank(
    kind: str,
    http: httpx.Client,
    poison_merchant: MerchantCredentials,
    captured: list[str],
    database: Engine,
) -> None:
    def send(metadata: dict[str, Any], correlation_id: str) -> httpx.Response:
        headers = {**poison_merchant.headers, "X-Correlation-ID": correlation_id}
        if kind == "payment":
            body = payment_body(
                poison_merchant.merchant_id, card_number=VALID_CARD, metadata=metadata
            )
            return http.post(PROCESS, json=body, headers=headers)
        return http.post(
            f"/api/v1/payments/{captured[1]}/refund",
            json={"amount": "1.00", "metadata": metadata},
            headers=headers,
        )

    over = new_correlation_id(f"{kind}-over")
    refused = send(metadata_of_exactly(METADATA_MAX_BYTES + 1), over)
    assert refused.status_code == 422, refused.text
    assert bank_writes(over) == []
    too_many = new_correlation_id(f"{kind}-keys")
    refused = send({f"k{i}": i for i in range(METADATA_MAX_KEYS + 1)}, too_many)
    assert refused.status_code == 422, refused.text
    assert bank_writes(too_many) == []
    assert counts(database, captured[1])["refunds"] == 0

    at_limit = new_correlation_id(f"{kind}-limit")
    taken = send(metadata_of_exactly(METADATA_MAX_BYTES), at_limit)
    assert taken.status_code == 200, taken.text
    assert taken.json()["status"] in {"captured", "succeeded"}
    assert taken.json()["metadata"] == metadata_of_exactly(METADATA_MAX_BYTES)
    assert len(bank_writes(at_limit)) == 1
