"""The OpenAPI machinery (app/api/openapi.py): what one more route gets without asking."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Query
from fastapi.routing import APIRoute

from app.api import openapi
from app.api.openapi import payment_links, problem_examples, problem_responses
from app.api.routes import health, payments
from app.main import create_app
from tests.conftest import make_settings


def test_every_route_is_documented_under_its_name() -> None:
    document = create_app(make_settings()).openapi()

    documented = {
        (path, method.upper()): operation["operationId"]
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    named = {
        (route.path, method): route.name
        for router in (health.router, payments.router)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }

    assert documented == named


def test_one_more_route_needs_only_its_name_and_gets_problem_errors() -> None:
    app = create_app(make_settings())
    router = APIRouter(prefix="/api/v1/refunds")

    @router.get("", name="list_refunds")
    async def refunds(limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
        return {}

    app.include_router(router)
    document = app.openapi()

    operation = document["paths"]["/api/v1/refunds"]["get"]
    assert operation["operationId"] == "list_refunds"
    # FastAPI's own 422 (application/json, HTTPValidationError) is answered as a problem.
    assert operation["responses"]["422"] == {
        **problem_responses("validation_error")[422],
        "headers": {"X-Correlation-ID": {"$ref": "#/components/headers/X-Correlation-ID"}},
    }
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert "ValidationError" not in document["components"]["schemas"]


def test_the_document_is_finished_once_and_again_when_the_routes_change() -> None:
    app = create_app(make_settings())

    first = app.openapi()
    assert app.openapi() is first

    app.include_router(APIRouter())
    router = APIRouter()

    @router.get("/extra", name="get_extra")
    async def extra() -> dict[str, str]:
        return {}

    app.include_router(router)
    again = app.openapi()
    assert again is not first
    assert again["paths"]["/extra"]["get"]["operationId"] == "get_extra"
    assert "X-Correlation-ID" in again["paths"]["/extra"]["get"]["responses"]["200"]["headers"]


def test_problem_responses_group_codes_by_status_with_their_headers() -> None:
    answers = problem_responses(
        "payment_not_found", "unauthorized", "bank_unavailable", "service_unavailable"
    )

    assert sorted(answers) == [401, 404, 503]
    assert set(answers[503]["content"]["application/problem+json"]["examples"]) == {
        "bank_unavailable",
        "service_unavailable",
    }
    assert answers[401]["headers"] == {
        "WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}
    }
    assert answers[503]["headers"] == {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    assert "headers" not in answers[404]
    assert answers[404]["description"].startswith("Not Found: `payment_not_found`")


def test_a_code_without_an_example_is_a_mistake_caught_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(openapi.STATUS_BY_CODE, "brand_new_code", 418)

    with pytest.raises(LookupError, match="brand_new_code"):
        problem_examples()


def test_a_link_carries_the_transaction_id_of_the_answer() -> None:
    assert payment_links("get_payment") == {
        "get_payment": {
            "operationId": "get_payment",
            "parameters": {"transaction_id": "$response.body#/transaction_id"},
            "description": "Read the payment (its status and refunds).",
        }
    }
