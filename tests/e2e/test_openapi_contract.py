"""/openapi.json is the contract (docs/openapi.json), and the app keeps it under fuzzing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.conftest import MerchantCredentials, make_settings

PROBLEM_REF = "#/components/schemas/Problem"
PAYMENT_ENDPOINTS = {
    ("/api/v1/payments", "get"): {401, 403, 422, 500, 503},
    ("/api/v1/payments/process", "post"): {400, 401, 403, 409, 413, 422, 500, 503},
    ("/api/v1/payments/{transaction_id}", "get"): {401, 403, 404, 422, 500},
    ("/api/v1/payments/{transaction_id}/refund", "post"): {
        400, 401, 403, 404, 409, 413, 422, 500, 503,
    },
    ("/api/v1/payments/{transaction_id}/capture", "post"): {
        400, 401, 403, 404, 409, 413, 422, 500, 503,
    },
    ("/api/v1/payments/{transaction_id}/void", "post"): {
        400, 401, 403, 404, 409, 413, 422, 500, 503,
    },
}  # fmt: skip
OTHER_ENDPOINTS = {
    ("/", "get"),
    ("/health", "get"),
    ("/health/live", "get"),
    ("/health/ready", "get"),
}


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


async def test_every_endpoint_is_documented(client: httpx.AsyncClient) -> None:
    documented = set(operations(await openapi(client)))

    assert documented == set(PAYMENT_ENDPOINTS) | OTHER_ENDPOINTS


@pytest.mark.parametrize(("path", "method"), list(PAYMENT_ENDPOINTS))
async def test_every_error_status_of_a_payment_endpoint_is_a_documented_problem(
    client: httpx.AsyncClient, path: str, method: str
) -> None:
    operation = operations(await openapi(client))[(path, method)]

    documented = {int(status) for status in operation["responses"] if status != "default"}
    assert PAYMENT_ENDPOINTS[(path, method)] <= documented
    for status in PAYMENT_ENDPOINTS[(path, method)]:
        response = operation["responses"][str(status)]
        assert response["description"], (path, status)
        schema = response["content"]["application/problem+json"]["schema"]
        assert schema == {"$ref": PROBLEM_REF}, (path, status)


async def test_every_documented_error_response_has_a_body_schema(
    client: httpx.AsyncClient,
) -> None:
    missing = [
        f"{method.upper()} {path} {status}"
        for (path, method), operation in operations(await openapi(client)).items()
        for status, response in operation["responses"].items()
        if int(status) >= 400
        and not any(media.get("schema") for media in response.get("content", {}).values())
    ]

    assert missing == []


async def test_payment_endpoints_document_bearer_authentication(
    client: httpx.AsyncClient,
) -> None:
    document = await openapi(client)
    schemes = document["components"]["securitySchemes"]

    for key in PAYMENT_ENDPOINTS:
        (requirement,) = operations(document)[key]["security"]
        (name,) = requirement
        assert schemes[name]["type"] == "http"
        assert schemes[name]["scheme"].lower() == "bearer"


async def test_schemas_carry_realistic_examples(client: httpx.AsyncClient) -> None:
    schemas = (await openapi(client))["components"]["schemas"]

    problem = schemas["Problem"]["examples"][0]
    assert problem["code"] == "refund_exceeds_balance"
    assert problem["status"] == 409
    payment_request = schemas["PaymentRequest"]["examples"][0]
    assert payment_request["card_data"]["card_number"] == "4242 4242 4242 4242"
    assert schemas["RefundRequest"]["examples"]
    for response_schema in ("PaymentResponse", "PaymentDetailResponse", "RefundResponse"):
        example = schemas[response_schema]["examples"][0]
        assert example["currency"] == "USD"
    page = schemas["PaymentList"]["examples"][0]
    assert page["object"] == "list"
    assert page["data"][0]["currency"] == "USD"


async def test_the_listing_documents_every_query_parameter(client: httpx.AsyncClient) -> None:
    listing = operations(await openapi(client))[("/api/v1/payments", "get")]
    parameters = {p["name"]: p for p in listing["parameters"]}

    assert listing["operationId"] == "list_payments"
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


async def test_the_idempotency_key_header_is_documented(
    client: httpx.AsyncClient,
) -> None:
    process = operations(await openapi(client))[("/api/v1/payments/process", "post")]

    (key,) = [p for p in process["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["in"] == "header"
    variants = key["schema"].get("anyOf", [key["schema"]])
    assert any(v.get("maxLength") == 255 and v.get("minLength") == 1 for v in variants)


# --- property-based: the app never answers outside its documented contract --------------


def in_process_schema() -> Any:
    """The app's own schema; schemathesis calls the app in-process and runs its lifespan."""
    app = create_app(make_settings())
    loaded = schemathesis.openapi.from_dict(app.openapi())
    loaded.app = app
    loaded.location = "/openapi.json"
    return loaded.include(path_regex=r"^/api/v1/payments")


schema = in_process_schema()


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
    case: Any, merchant: MerchantCredentials
) -> None:
    if isinstance(case.body, dict) and "merchant_id" in case.body:
        case.body["merchant_id"] = merchant.merchant_id  # get past the merchant check
    case.call_and_validate(
        headers=merchant.headers,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
