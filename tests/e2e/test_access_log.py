"""The access log (docs/observability.md, "Access log"), through the real app and database:
one ``app.access`` line per request, with the route template and never the raw path, the
query string or the body; the merchant once authenticated; the response's correlation id;
successes sampled, errors always.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.api.access_log import ACCESS_LOGGER
from app.api.routes import payments as payment_routes
from app.core.config import Settings
from app.core.logging import build_handler
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.api_calls import PROCESS, pay, payment_url
from tests.e2e.in_process_app import running_app

PAYMENT_ROUTE = "/api/v1/payments/{transaction_id}"
LIST_ROUTE = "/api/v1/payments"
UNKNOWN_TXN = "txn_00000000000000000000000000000abc"
ACCESS_FIELDS = {
    "http.method",
    "http.route",
    "http.status_code",
    "duration",
    "duration_ms",
    "merchant_id",
    "sample_rate",
    "correlation_id",
}


@dataclass
class Log:
    """Every record the app logged while the test ran: raw, and as the JSON lines its
    stdout handler writes."""

    settings: Settings
    records: list[logging.LogRecord] = field(default_factory=list)
    stream: io.StringIO = field(default_factory=io.StringIO)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]

    def access(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["logger"] == ACCESS_LOGGER]

    def texts(self) -> list[str]:
        """Every JSON line and every raw record's attributes, as text."""
        raw = [f"{r.getMessage()} {r.__dict__!r}" for r in self.records]
        return [*self.stream.getvalue().splitlines(), *raw]


class _Recorder(logging.Handler):
    def __init__(self, log: Log) -> None:
        super().__init__(logging.DEBUG)
        self._log = log
        self._json = build_handler(log.settings, stream=log.stream)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "httpx" and "http://testserver/" in record.getMessage():
            return  # the test's own client, not the service, logs its requests' URLs
        self._log.records.append(record)
        self._json.handle(record)


@contextlib.asynccontextmanager
async def app_and_log(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Log]]:
    """The real app with these settings, and what it logs once started."""
    settings = make_settings(**overrides)
    async with running_app(settings) as client:
        log = Log(settings)
        recorder = _Recorder(log)
        root = logging.getLogger()  # after start-up: configure_logging resets the root
        root.addHandler(recorder)
        try:
            yield client, log
        finally:
            root.removeHandler(recorder)


def only(lines: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(lines) == 1, lines
    return lines[0]


def for_request(log: Log, response: httpx.Response) -> dict[str, Any]:
    """The one access line of this response (by its correlation id)."""
    cid = response.headers["X-Correlation-ID"]
    return only([line for line in log.access() if line["correlation_id"] == cid])


# -- what a line holds ------------------------------------------------------------------


async def test_one_line_per_request_with_the_route_template_and_nothing_of_the_url_or_body(
    merchant: MerchantCredentials,
) -> None:
    holder = "Zebulon Quaxwright"  # not card-shaped: the last-resort mask would not hide it
    query_marker = "qs-marker-5813"
    body = payment_body(merchant.merchant_id, card_number="4242424242424242")
    body["card_data"]["cardholder_name"] = holder
    async with app_and_log() as (client, log):
        paid = await client.post(
            PROCESS, json=body, headers={**merchant.headers, "Idempotency-Key": "access-log-1"}
        )
        assert paid.status_code == 200, paid.text
        txn = paid.json()["transaction_id"]
        read = await client.get(
            f"{payment_url(txn)}?expand={query_marker}", headers=merchant.headers
        )
        listed = await client.get(
            LIST_ROUTE, params={"metadata[order_id]": query_marker}, headers=merchant.headers
        )
        assert read.status_code == 200, read.text
        assert listed.status_code == 200, listed.text

    assert len(log.access()) == 3
    line = for_request(log, paid)
    assert set(line) >= ACCESS_FIELDS
    assert line["level"] == "INFO"
    assert line["http.method"] == "POST"
    assert line["http.route"] == PROCESS
    assert line["http.status_code"] == 200
    assert line["message"] == f"POST {PROCESS} 200"
    assert for_request(log, read)["http.route"] == PAYMENT_ROUTE
    assert for_request(log, listed)["http.route"] == LIST_ROUTE
    for access in log.access():
        assert isinstance(access["duration"], int)
        assert access["duration"] > 0
        assert access["duration_ms"] == pytest.approx(access["duration"] / 1e6, abs=0.001)
        assert txn not in json.dumps(access), access  # no raw path
    for text in log.texts():
        assert query_marker not in text
        assert "expand=" not in text
        assert holder not in text
        assert "4242424242424242" not in text
        assert "4242 4242 4242 4242" not in text


async def test_the_merchant_is_known_after_authentication_and_null_before(
    merchant: MerchantCredentials,
) -> None:
    async with app_and_log() as (client, log):
        authenticated = await client.get(payment_url(UNKNOWN_TXN), headers=merchant.headers)
        anonymous = await client.get(payment_url(UNKNOWN_TXN))
        bad_key = await client.get(
            payment_url(UNKNOWN_TXN), headers={"Authorization": "Bearer sk_nobody_0123456789"}
        )
        probe = await client.get("/health/live")

    assert authenticated.status_code == 404
    assert for_request(log, authenticated)["merchant_id"] == merchant.merchant_id
    for response, status in ((anonymous, 401), (bad_key, 401), (probe, 200)):
        line = for_request(log, response)
        assert line["http.status_code"] == status
        assert "merchant_id" in line
        assert line["merchant_id"] is None


async def test_the_correlation_id_is_the_one_the_response_carries(
    merchant: MerchantCredentials,
) -> None:
    chosen = f"access-{uuid.uuid4().hex[:8]}"
    async with app_and_log() as (client, log):
        sent = await client.get(
            payment_url(UNKNOWN_TXN), headers={**merchant.headers, "X-Correlation-ID": chosen}
        )
        generated = await client.get("/health/live")

    assert sent.headers["X-Correlation-ID"] == chosen
    assert (
        only([line for line in log.access() if line["http.route"] == PAYMENT_ROUTE])[
            "correlation_id"
        ]
        == chosen
    )
    line = only([line for line in log.access() if line["http.route"] == "/health/live"])
    assert line["correlation_id"] == generated.headers["X-Correlation-ID"]
    assert uuid.UUID(line["correlation_id"])


# -- sampling ---------------------------------------------------------------------------


async def test_at_sample_rate_0_errors_are_logged_and_successes_are_not(
    merchant: MerchantCredentials,
) -> None:
    async with app_and_log(access_log_sample_rate=0.0) as (client, log):
        successes = [
            await client.get("/health/live"),
            await client.get("/health/ready"),
            await pay(client, merchant),
            await client.get(LIST_ROUTE, headers=merchant.headers),
        ]
        errors = [
            await client.get(payment_url(UNKNOWN_TXN), headers=merchant.headers),  # 404
            await client.get(payment_url(UNKNOWN_TXN)),  # 401
            await client.delete(payment_url(UNKNOWN_TXN), headers=merchant.headers),  # 405
            await pay(client, merchant, amount="-1"),  # 422
            await client.get("/no/such/route/txn_123?x=1"),  # 404 without a route
        ]

    assert [r.status_code for r in successes] == [200, 200, 200, 200]
    assert [r.status_code for r in errors] == [404, 401, 405, 422, 404]
    lines = log.access()
    assert len(lines) == len(errors), lines
    assert [line["http.status_code"] for line in lines] == [404, 401, 405, 422, 404]
    assert [line["http.route"] for line in lines] == [
        PAYMENT_ROUTE,
        PAYMENT_ROUTE,
        PAYMENT_ROUTE,
        PROCESS,
        None,  # unmatched: null, never the raw path
    ]
    assert {line["level"] for line in lines} == {"WARNING"}
    assert {line["sample_rate"] for line in lines} == {1.0}
    assert "no/such" not in json.dumps(lines)


async def test_at_sample_rate_1_every_request_is_logged_once(
    merchant: MerchantCredentials,
) -> None:
    async with app_and_log(access_log_sample_rate=1.0) as (client, log):
        responses = [
            await client.get("/health/live"),
            await client.get("/health/ready"),
            await pay(client, merchant),
            await client.get(payment_url(UNKNOWN_TXN), headers=merchant.headers),
            await client.get("/nowhere"),
        ]

    lines = log.access()
    assert sorted(line["correlation_id"] for line in lines) == sorted(
        r.headers["X-Correlation-ID"] for r in responses
    )
    assert [line["http.status_code"] for line in lines] == [r.status_code for r in responses]
    assert [line["http.route"] for line in lines] == [
        "/health/live",
        "/health/ready",
        PROCESS,
        PAYMENT_ROUTE,
        None,
    ]


async def test_the_access_log_can_be_turned_off(merchant: MerchantCredentials) -> None:
    async with app_and_log(access_log_enabled=False) as (client, log):
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get(payment_url(UNKNOWN_TXN))).status_code == 401

    assert log.access() == []
    assert log.records == [] or all(r.name != ACCESS_LOGGER for r in log.records)


# -- failures ---------------------------------------------------------------------------


async def test_an_unhandled_exception_is_logged_as_a_500(
    merchant: MerchantCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated defect")

    monkeypatch.setattr(payment_routes, "get_payment", broken)
    async with app_and_log(access_log_sample_rate=0.0) as (client, log):
        response = await client.get(payment_url(UNKNOWN_TXN), headers=merchant.headers)

    assert response.status_code == 500
    line = for_request(log, response)
    assert line["level"] == "ERROR"
    assert line["http.status_code"] == 500
    assert line["http.route"] == PAYMENT_ROUTE
    assert line["merchant_id"] == merchant.merchant_id
    assert line["message"] == f"GET {PAYMENT_ROUTE} 500"


async def test_a_body_refused_before_routing_is_logged_without_a_route(
    merchant: MerchantCredentials,
) -> None:
    async with app_and_log(access_log_sample_rate=0.0) as (client, log):
        response = await client.post(
            PROCESS,
            content=b" " * (64 * 1024 + 1),
            headers={**merchant.headers, "Content-Type": "application/json"},
        )

    assert response.status_code == 413
    line = for_request(log, response)
    assert line["http.status_code"] == 413
    assert line["http.route"] is None
    assert line["merchant_id"] is None
