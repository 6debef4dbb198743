"""/openapi.json is the contract (docs/openapi.json): fit for generating clients, and kept by
the app under fuzzing, one request at a time and along the links from payment to payment."""

from __future__ import annotations

import tomllib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.problems import STATUS_BY_CODE
from app.domain.money import CURRENCY_EXPONENTS
from app.main import create_app
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.api_calls import PROCESS, post_exact

REPO = Path(__file__).resolve().parents[2]
FUZZ_CONFIG = REPO / "scripts" / "schemathesis.toml"

PROBLEM = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
OPERATION_IDS = {
    ("/api/v1/payments", "get"): "list_payments",
    ("/api/v1/payments/process", "post"): "create_payment",
    ("/api/v1/payments/{transaction_id}", "get"): "get_payment",
    ("/api/v1/payments/{transaction_id}/refund", "post"): "refund_payment",
    ("/api/v1/payments/{transaction_id}/capture", "post"): "capture_payment",
    ("/api/v1/payments/{transaction_id}/void", "post"): "void_payment",
    ("/", "get"): "get_service_info",
    ("/health", "get"): "get_health",
    ("/health/live", "get"): "get_liveness",
    ("/health/ready", "get"): "get_readiness",
}
IDEMPOTENT = ("create_payment", "refund_payment", "capture_payment", "void_payment")
# The codes each payment operation may answer, by status (docs/api.md, "Errors").
_ALWAYS = {401: {"unauthorized"}, 403: {"merchant_inactive"}, 500: {"internal_error"}}
_ON_A_PAYMENT = {
    **_ALWAYS,
    400: {"malformed_json"},
    404: {"payment_not_found"},
    413: {"payload_too_large"},
    422: {"validation_error", "idempotency_key_reused"},
    503: {"bank_unavailable", "service_unavailable"},
}
PROBLEMS_BY_OPERATION: dict[str, dict[int, set[str]]] = {
    "create_payment": {
        **_ALWAYS,
        400: {"malformed_json"},
        403: {"merchant_mismatch", "merchant_inactive"},
        409: {"idempotency_in_progress"},
        413: {"payload_too_large"},
        422: {"validation_error", "currency_not_supported", "idempotency_key_reused"},
        503: {"bank_unavailable", "service_unavailable"},
    },
    # A GET validates no parameter FastAPI could refuse, but FastAPI documents a 422 for any
    # route with parameters; the app answers it as a problem like every other.
    "get_payment": {
        **_ALWAYS,
        404: {"payment_not_found"},
        422: {"validation_error"},
        503: {"service_unavailable"},
    },
    "list_payments": {**_ALWAYS, 422: {"validation_error"}, 503: {"service_unavailable"}},
    "refund_payment": {
        **_ON_A_PAYMENT,
        409: {"idempotency_in_progress", "payment_not_refundable", "refund_exceeds_balance"},
    },
    "capture_payment": {
        **_ON_A_PAYMENT,
        409: {"idempotency_in_progress", "payment_not_capturable"},
    },
    "void_payment": {**_ON_A_PAYMENT, 409: {"idempotency_in_progress", "payment_not_voidable"}},
}
# Not errors: the health document itself, answered 503 when the service is not usable.
HEALTH_503 = {("/health", "get"), ("/health/ready", "get")}


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def by_id(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {operation["operationId"]: operation for operation in operations(document).values()}


def responses(document: dict[str, Any]) -> Iterator[tuple[str, str, int, dict[str, Any]]]:
    for (path, method), operation in operations(document).items():
        for status, response in operation["responses"].items():
            yield path, method, int(status), response


def schema_validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``components/schemas/name``, its references resolved in the document."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


# --- what a client generator reads -------------------------------------------------------


async def test_every_operation_has_its_stable_operation_id(client: httpx.AsyncClient) -> None:
    documented = {key: op["operationId"] for key, op in operations(await openapi(client)).items()}

    assert documented == OPERATION_IDS


async def test_the_document_names_its_servers_relative_first(client: httpx.AsyncClient) -> None:
    servers = (await openapi(client))["servers"]

    assert [server["url"] for server in servers] == ["/", "http://127.0.0.1:8000"]
    assert all(server["description"] for server in servers)


@pytest.mark.parametrize("operation_id", sorted(PROBLEMS_BY_OPERATION))
async def test_each_error_status_is_a_problem_with_one_example_per_code(
    client: httpx.AsyncClient, operation_id: str
) -> None:
    document = await openapi(client)
    operation = by_id(document)[operation_id]
    expected = PROBLEMS_BY_OPERATION[operation_id]

    errors = {int(s): r for s, r in operation["responses"].items() if int(s) >= 400}
    assert set(errors) == set(expected)
    for status, response in errors.items():
        assert set(response["content"]) == {PROBLEM}, (operation_id, status)
        media = response["content"][PROBLEM]
        assert media["schema"] == {"$ref": PROBLEM_REF}
        assert set(media["examples"]) == expected[status], (operation_id, status)
        for code in expected[status]:
            assert media["examples"][code] == {"$ref": f"#/components/examples/{code}"}
            assert f"`{code}`" in response["description"]


async def test_no_error_is_documented_as_plain_json(client: httpx.AsyncClient) -> None:
    document = await openapi(client)

    plain = {
        (path, method, status)
        for path, method, status, response in responses(document)
        if status >= 400 and set(response.get("content", {})) != {PROBLEM}
    }

    assert plain == {(path, method, 503) for path, method in HEALTH_503}
    assert "HTTPValidationError" not in document["components"]["schemas"]


async def test_the_problem_code_is_an_enum_of_every_code_the_api_answers(
    client: httpx.AsyncClient,
) -> None:
    problem = (await openapi(client))["components"]["schemas"]["Problem"]

    assert problem["properties"]["code"]["enum"] == sorted(STATUS_BY_CODE)


async def test_every_code_has_a_realistic_example_problem(client: httpx.AsyncClient) -> None:
    document = await openapi(client)
    examples = document["components"]["examples"]
    validator = schema_validator(document, "Problem")

    assert set(examples) == set(STATUS_BY_CODE)
    for code, example in examples.items():
        body = example["value"]
        validator.validate(body)
        assert (body["code"], body["status"]) == (code, STATUS_BY_CODE[code])
        assert body["type"] == "about:blank"
        assert body["title"] and body["detail"] and body["correlation_id"]
        assert example["summary"].startswith(f"{STATUS_BY_CODE[code]} {code}")
    assert {e["field"] for e in examples["validation_error"]["value"]["errors"]} >= {"amount"}
    assert examples["bank_unavailable"]["value"]["transaction_id"].startswith("txn_")
    assert examples["bank_unavailable"]["value"]["retry_after_s"] > 0
    assert examples["refund_exceeds_balance"]["value"]["refundable_amount"] == "49.99"


async def test_every_response_documents_the_correlation_id(client: httpx.AsyncClient) -> None:
    document = await openapi(client)
    header = document["components"]["headers"]["X-Correlation-ID"]

    missing = [
        (path, method, status)
        for path, method, status, response in responses(document)
        if response.get("headers", {}).get("X-Correlation-ID")
        != {"$ref": "#/components/headers/X-Correlation-ID"}
    ]

    assert missing == []
    assert header["required"] is True
    assert header["schema"]["pattern"] == r"^[A-Za-z0-9._:-]{1,128}$"


async def test_status_specific_headers_are_documented(client: httpx.AsyncClient) -> None:
    document = await openapi(client)
    headers = document["components"]["headers"]

    for path, method, status, response in responses(document):
        names = set(response.get("headers", {}))
        operation_id = OPERATION_IDS[(path, method)]
        where = (operation_id, status)
        assert ("WWW-Authenticate" in names) == (status == 401), where
        assert ("Retry-After" in names) == (status == 503 and (path, method) not in HEALTH_503)
        replayable = operation_id in IDEMPOTENT and status in (200, 202)
        assert ("Idempotent-Replayed" in names) == replayable, where
    assert headers["WWW-Authenticate"]["schema"]["enum"] == ["Bearer"]
    assert headers["Retry-After"]["schema"]["type"] == "integer"
    assert headers["Idempotent-Replayed"]["schema"]["enum"] == ["true"]


async def test_every_timestamp_of_a_response_is_a_date_time(client: httpx.AsyncClient) -> None:
    schemas = (await openapi(client))["components"]["schemas"]

    timestamps = {
        (name, field): spec.get("format")
        for name, schema in schemas.items()
        if name.endswith(("Response", "Summary"))
        for field, spec in schema.get("properties", {}).items()
        if field.endswith("_at")
    }

    assert ("PaymentResponse", "created_at") in timestamps
    assert ("RefundSummary", "created_at") in timestamps
    assert set(timestamps.values()) == {"date-time"}


async def test_a_payment_links_to_the_operations_on_it(client: httpx.AsyncClient) -> None:
    document = await openapi(client)
    create = by_id(document)["create_payment"]

    for status in ("200", "202"):
        links = create["responses"][status]["links"]
        assert set(links) == {"get_payment", "refund_payment", "capture_payment", "void_payment"}
        for name, link in links.items():
            assert link["operationId"] == name
            assert link["parameters"] == {"transaction_id": "$response.body#/transaction_id"}


async def test_every_link_targets_an_operation_and_its_parameters(
    client: httpx.AsyncClient,
) -> None:
    document = await openapi(client)
    ops = by_id(document)

    for path, method, status, response in responses(document):
        for link in response.get("links", {}).values():
            target = ops[link["operationId"]]
            parameters = {p["name"] for p in target["parameters"] if p["in"] == "path"}
            assert set(link["parameters"]) == parameters, (path, method, status)


async def test_payment_endpoints_document_bearer_authentication(
    client: httpx.AsyncClient,
) -> None:
    document = await openapi(client)
    schemes = document["components"]["securitySchemes"]

    for operation_id in PROBLEMS_BY_OPERATION:
        (requirement,) = by_id(document)[operation_id]["security"]
        (name,) = requirement
        assert schemes[name]["type"] == "http"
        assert schemes[name]["scheme"].lower() == "bearer"


async def test_the_idempotency_key_header_is_documented(client: httpx.AsyncClient) -> None:
    document = await openapi(client)

    for operation_id in IDEMPOTENT:
        parameters = by_id(document)[operation_id]["parameters"]
        (key,) = [p for p in parameters if p["name"] == "Idempotency-Key"]
        assert key["in"] == "header"
        variants = key["schema"].get("anyOf", [key["schema"]])
        assert any(v.get("maxLength") == 255 and v.get("minLength") == 1 for v in variants)


async def test_the_transaction_id_is_documented_with_its_shape(client: httpx.AsyncClient) -> None:
    document = await openapi(client)

    for operation_id in ("get_payment", "refund_payment", "capture_payment", "void_payment"):
        (parameter,) = [p for p in by_id(document)[operation_id]["parameters"] if p["in"] == "path"]
        assert parameter["schema"]["pattern"] == "^txn_[0-9a-f]{32}$"


async def test_schemas_carry_realistic_examples(client: httpx.AsyncClient) -> None:
    document = await openapi(client)
    schemas = document["components"]["schemas"]
    create = by_id(document)["create_payment"]

    request_examples = create["requestBody"]["content"]["application/json"]["examples"]
    assert set(request_examples) == {"captured", "manual_capture", "declined"}
    for example in request_examples.values():
        schema_validator(document, "PaymentRequest").validate(example["value"])
    for name in (
        "PaymentResponse",
        "PaymentDetailResponse",
        "RefundResponse",
        "RefundRequest",
        "PaymentList",
    ):
        for example in schemas[name]["examples"]:
            schema_validator(document, name).validate(example)
    page = schemas["PaymentList"]["examples"][0]
    assert (page["object"], page["data"][0]["currency"]) == ("list", "USD")


async def test_the_listing_documents_every_query_parameter(client: httpx.AsyncClient) -> None:
    listing = by_id(await openapi(client))["list_payments"]
    parameters = {p["name"]: p for p in listing["parameters"]}

    assert set(parameters) == {
        "limit",
        "starting_after",
        "ending_before",
        "status",
        "created[gte]",
        "created[gt]",
        "created[lte]",
        "created[lt]",
        "metadata",
    }
    assert all(p["in"] == "query" and p["description"] for p in parameters.values())
    assert all(not p["required"] for p in parameters.values())
    limit = parameters["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 10)
    assert parameters["created[gte]"]["schema"]["format"] == "date-time"
    assert parameters["status"]["schema"] == {"$ref": "#/components/schemas/PaymentStatus"}
    assert (parameters["metadata"]["style"], parameters["metadata"]["explode"]) == (
        "deepObject",
        True,
    )


# --- the request schemas state what the API enforces -------------------------------------


async def test_request_bodies_refuse_unknown_fields(client: httpx.AsyncClient) -> None:
    schemas = (await openapi(client))["components"]["schemas"]

    for name in ("PaymentRequest", "CardRequest", "RefundRequest", "CaptureRequest"):
        assert schemas[name]["additionalProperties"] is False, name


def _card(**changes: Any) -> dict[str, Any]:
    return {**payment_body()["card_data"], **changes}


# Bodies the API refuses with a 422, each for a rule the schema states too.
REFUSED_BY_BOTH = {
    "unknown field": {"tip": 1},
    "amount zero": {"amount": "0.00"},
    "amount negative": {"amount": -5},
    "amount over a million": {"amount": "1000000.01"},
    "amount more than 4 decimals": {"amount": "1.00001"},
    "amount with separators": {"amount": "1_000"},
    "currency unknown": {"currency": "XYZ"},
    "card number with letters": {"card_data": _card(card_number="4242 4242 4242 424x")},
    "card number too short": {"card_data": _card(card_number="42424242424")},
    "card number too long": {"card_data": _card(card_number="4" * 20)},
    "cvv of 2 digits": {"card_data": _card(cvv="12")},
    "expiry month 13": {"card_data": _card(expiry_month=13)},
    "expiry month 11.5": {"card_data": _card(expiry_month=Decimal("11.5"))},
    "expiry year 2101": {"card_data": _card(expiry_year=2101)},
    "no cardholder": {"card_data": _card(cardholder_name="")},
    "metadata of 51 keys": {"metadata": {f"k{i}": i for i in range(51)}},
    "description of 501 characters": {"description": "x" * 501},
    "unknown payment method": {"payment_method": "cash"},
}
# Refused by the API and admitted by the schema: the rules JSON Schema cannot state, said
# in the fields' descriptions instead.
REFUSED_BY_THE_API_ONLY = {
    "card number failing Luhn": {"card_data": _card(card_number="4242424242424241")},
    "USD amount with 3 decimals": {"amount": "10.001"},
    "JPY amount with decimals": {"amount": "10.5", "currency": "JPY"},
}
ACCEPTED_BY_BOTH = {
    "amount as a number": {"amount": Decimal("99.99")},
    "amount with trailing zeros": {"amount": "10.5000"},
    "amount of a million": {"amount": 1000000},
    "KWD amount with 3 decimals": {"amount": "1.505", "currency": "KWD"},
    "card number with dashes": {"card_data": _card(card_number="4242-4242-4242-4242")},
    "amex with a 4-digit cvv": {"card_data": _card(card_number="378282246310005", cvv="1234")},
    "manual capture": {"capture_method": "manual"},
    "metadata of 50 keys": {"metadata": {f"k{i}": i for i in range(50)}},
    "expiry written 12.0": {"card_data": _card(expiry_month=Decimal("12.0"))},
}


def _as_json(value: Any) -> Any:
    """What the schema sees of a body: Decimals as JSON numbers."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


@pytest.fixture
async def every_currency_merchant(
    create_merchant: Callable[..., Any],
) -> MerchantCredentials:
    """merchant_test_123, the examples' merchant, accepting every currency of the schema."""
    creds: MerchantCredentials = await create_merchant(
        merchant_id="merchant_test_123", currencies=tuple(CURRENCY_EXPONENTS)
    )
    return creds


@pytest.mark.parametrize(
    ("changes", "schema_admits", "api_status"),
    [
        *[pytest.param(c, False, 422, id=name) for name, c in REFUSED_BY_BOTH.items()],
        *[pytest.param(c, True, 422, id=name) for name, c in REFUSED_BY_THE_API_ONLY.items()],
        *[pytest.param(c, True, 200, id=name) for name, c in ACCEPTED_BY_BOTH.items()],
    ],
)
async def test_the_payment_schema_and_the_api_agree_on_what_is_valid(
    client: httpx.AsyncClient,
    every_currency_merchant: MerchantCredentials,
    changes: dict[str, Any],
    schema_admits: bool,
    api_status: int,
) -> None:
    body = {**payment_body(every_currency_merchant.merchant_id), **changes}
    validator = schema_validator(await openapi(client), "PaymentRequest")

    response = await post_exact(client, PROCESS, body, every_currency_merchant.headers)

    assert validator.is_valid(_as_json(body)) is schema_admits
    assert response.status_code == api_status, response.text


# --- property-based: the app never answers outside its documented contract --------------


def fuzz_config() -> SchemathesisConfig:
    """`make fuzz`'s configuration (scripts/schemathesis.toml) without its two CLI-only
    settings: the key comes from the ``merchant`` fixture, and the hooks are the
    ``PaymentWorkflow`` methods below."""
    data = tomllib.loads(FUZZ_CONFIG.read_text(encoding="utf-8"))
    data.pop("auth")
    data.pop("hooks")
    return SchemathesisConfig.from_dict(data, base_dir=str(FUZZ_CONFIG.parent))


def in_process_schema() -> Any:
    """The app's own schema; schemathesis calls the app in-process and runs its lifespan."""
    app = create_app(make_settings())
    loaded = schemathesis.openapi.from_dict(app.openapi(), config=fuzz_config())
    loaded.app = app
    loaded.location = "/openapi.json"
    return loaded.include(path_regex=r"^/api/v1/payments")


schema = in_process_schema()
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def as_a_client_would_send(case: Any, merchant: MerchantCredentials) -> None:
    """The merchant's id in a body that names one, and one Idempotency-Key per request, as
    scripts/schemathesis_hooks.py does for `make fuzz`."""
    if isinstance(case.body, dict) and "merchant_id" in case.body:
        case.body["merchant_id"] = merchant.merchant_id
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"contract-{uuid.uuid4().hex}"


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_payment_endpoints_never_fail_or_answer_outside_their_schema(
    case: Any, every_currency_merchant: MerchantCredentials
) -> None:
    as_a_client_would_send(case, every_currency_merchant)
    case.call_and_validate(headers=every_currency_merchant.headers, checks=CHECKS)


# The workflows start from a payment: with the listing among the start operations (it has
# no link in), schemathesis' state machine picks it and the reads of unknown ids over
# creating a payment. The listing is fuzzed above and in `make fuzz`.
ON_A_PAYMENT = schema.exclude(operation_id="list_payments")


class PaymentWorkflow(ON_A_PAYMENT.as_state_machine()):  # type: ignore[misc]
    """Sequences of calls that follow the OpenAPI links: a payment, then reads, refunds,
    captures and voids of that payment, each answer checked against the schema."""

    merchant: ClassVar[MerchantCredentials]
    answers: ClassVar[Counter[tuple[str, int]]]

    def before_call(self, case: Any) -> None:
        as_a_client_would_send(case, self.merchant)

    def get_call_kwargs(self, case: Any) -> dict[str, Any]:
        return {"headers": self.merchant.headers}

    def after_call(self, response: Any, case: Any) -> None:
        operation_id = case.operation.definition.raw["operationId"]
        self.answers[(operation_id, response.status_code)] += 1

    def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
        case.validate_response(response, checks=CHECKS)


def test_payment_workflows_follow_the_links_within_the_contract(
    every_currency_merchant: MerchantCredentials,
) -> None:
    PaymentWorkflow.merchant = every_currency_merchant
    PaymentWorkflow.answers = Counter()

    PaymentWorkflow.run(
        settings=settings(
            max_examples=30,
            stateful_step_count=8,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )

    # The links were followed to payments that exist: each operation served one.
    served = {operation for operation, status in PaymentWorkflow.answers if status < 300}
    assert served >= {"create_payment", "get_payment", "refund_payment"}, str(
        sorted(PaymentWorkflow.answers.items())
    )
    assert served & {"capture_payment", "void_payment"}, PaymentWorkflow.answers
