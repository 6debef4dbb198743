"""The access log's helpers and middleware on a bare ASGI app, its Datadog mapping, its
documentation, and uvicorn's own access log staying off."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from app.api.access_log import (
    ACCESS_LOGGER,
    OTHER_METHOD,
    AccessLogMiddleware,
    level_for,
    method_label,
    route_template,
    sampled,
)
from app.core.config import Settings
from app.core.logging import build_handler
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "deploy" / "datadog" / "pipelines" / "payment-service-logs.json"
ACCESS_FIELDS = (
    "http.method",
    "http.route",
    "http.status_code",
    "duration",
    "duration_ms",
    "merchant_id",
    "sample_rate",
)


# -- helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 499, 500, 503])
@pytest.mark.parametrize("rate", [0.0, 0.01, 1.0])
def test_errors_are_always_sampled(status: int, rate: float) -> None:
    assert sampled(status, rate, draw=lambda: 0.999999)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 301, 399])
def test_successes_follow_the_rate(status: int) -> None:
    assert sampled(status, 1.0, draw=lambda: 0.999999)
    assert not sampled(status, 0.0, draw=lambda: 0.0)
    assert sampled(status, 0.25, draw=lambda: 0.2)
    assert not sampled(status, 0.25, draw=lambda: 0.25)


def test_a_rate_of_0_or_1_draws_nothing() -> None:
    def draw() -> float:
        raise AssertionError("drew for a rate that needs no draw")

    assert sampled(200, 1.0, draw)
    assert not sampled(200, 0.0, draw)


@pytest.mark.parametrize(
    ("status", "level"),
    [(200, logging.INFO), (302, logging.INFO), (404, logging.WARNING), (500, logging.ERROR)],
)
def test_the_level_follows_the_status(status: int, level: int) -> None:
    assert level_for(status) == level


def test_methods_outside_the_standard_ones_are_not_logged_as_sent() -> None:
    assert method_label("GET") == "GET"
    assert method_label("PATCH") == "PATCH"
    assert method_label("4242424242424242") == OTHER_METHOD
    assert method_label("get") == OTHER_METHOD


def test_the_route_is_the_template_or_none() -> None:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    route = Route("/api/v1/payments/{transaction_id}/refund", endpoint)
    assert route_template({"route": route}) == "/api/v1/payments/{transaction_id}/refund"
    assert route_template({"path": "/api/v1/payments/txn_1"}) is None
    assert route_template({"route": object()}) is None


# -- the middleware on a bare ASGI app ----------------------------------------------------


def parsed(handler_stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in handler_stream.getvalue().splitlines()]


def http_scope(path: str = "/api/v1/payments/txn_1", method: str = "GET") -> Scope:
    return {"type": "http", "method": method, "path": path, "query_string": b"a=1", "headers": []}


async def call(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[Capture]:
    logger = logging.getLogger(ACCESS_LOGGER)
    capture = Capture()
    logger.addHandler(capture)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(previous)


def respond(status: int) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["merchant_id"] = "merchant_9"
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


async def test_one_record_with_the_status_and_the_merchant_the_app_noted(
    captured: Capture,
) -> None:
    middleware = AccessLogMiddleware(respond(201))

    sent = await call(middleware, http_scope(method="POST"))

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    (record,) = captured.records
    assert record.levelno == logging.INFO
    assert record.__dict__["http.status_code"] == 201
    assert record.__dict__["http.method"] == "POST"
    assert record.__dict__["http.route"] is None  # nothing routed it
    assert record.__dict__["merchant_id"] == "merchant_9"
    assert record.__dict__["sample_rate"] == 1.0
    assert isinstance(record.__dict__["duration"], int)
    assert "txn_1" not in record.getMessage()


async def test_an_exception_before_the_response_is_logged_as_a_500_and_raised(
    captured: Capture,
) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("defect")

    with pytest.raises(RuntimeError, match="defect"):
        await call(AccessLogMiddleware(broken, sample_rate=0.0), http_scope())

    (record,) = captured.records
    assert record.levelno == logging.ERROR
    assert record.__dict__["http.status_code"] == 500
    assert record.__dict__["merchant_id"] is None


async def test_an_exception_after_a_200_started_is_logged_as_a_500(captured: Capture) -> None:
    async def broken_midway(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("defect while streaming")

    with pytest.raises(RuntimeError):
        await call(AccessLogMiddleware(broken_midway, sample_rate=0.0), http_scope())

    (record,) = captured.records
    assert record.__dict__["http.status_code"] == 500


async def test_the_line_is_written_as_the_last_part_of_the_response_is_handed_on(
    captured: Capture,
) -> None:
    # The tracer closes the request's span on that last part: the line must precede it.
    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        await send({"type": "http.response.body", "body": b"}"})

    lines_seen: list[int] = []

    async def send(message: Message) -> None:
        lines_seen.append(len(captured.records))

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    await AccessLogMiddleware(streaming)(http_scope(), receive, send)

    assert lines_seen == [0, 0, 1]
    assert len(captured.records) == 1


async def test_a_failure_after_the_complete_response_adds_no_second_line(
    captured: Capture,
) -> None:
    async def fails_afterwards(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        raise RuntimeError("a background task failed")

    with pytest.raises(RuntimeError):
        await call(AccessLogMiddleware(fails_afterwards), http_scope())

    assert [r.__dict__["http.status_code"] for r in captured.records] == [200]


async def test_an_app_that_never_answers_is_logged_as_the_500_the_server_sends(
    captured: Capture,
) -> None:
    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    await call(AccessLogMiddleware(silent, sample_rate=0.0), http_scope())

    (record,) = captured.records
    assert record.__dict__["http.status_code"] == 500


async def test_sampled_out_successes_and_other_scopes_are_not_logged(captured: Capture) -> None:
    draws = iter([0.5, 0.05])
    middleware = AccessLogMiddleware(respond(200), sample_rate=0.1, draw=lambda: next(draws))

    await call(middleware, http_scope())  # 0.5: out
    await call(middleware, http_scope())  # 0.05: in
    await call(middleware, {"type": "lifespan", "state": {}})

    (record,) = captured.records
    assert record.__dict__["sample_rate"] == 0.1


async def test_nothing_is_built_when_the_level_is_off(captured: Capture) -> None:
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
    middleware = AccessLogMiddleware(respond(200))

    await call(middleware, http_scope())
    await call(AccessLogMiddleware(respond(404)), http_scope())

    assert [r.__dict__["http.status_code"] for r in captured.records] == [404]


# -- settings ---------------------------------------------------------------------------


def test_the_sample_rate_is_a_fraction() -> None:
    assert make_settings().access_log_enabled is True
    assert make_settings().access_log_sample_rate == 1.0
    for bad in (-0.1, 1.01):
        with pytest.raises(ValueError, match=r"access_log_sample_rate|ACCESS_LOG_SAMPLE_RATE"):
            make_settings(access_log_sample_rate=bad)


def test_the_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCESS_LOG_ENABLED", "false")
    monkeypatch.setenv("ACCESS_LOG_SAMPLE_RATE", "0.1")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.access_log_enabled is False
    assert settings.access_log_sample_rate == 0.1


# -- Datadog, docs, and uvicorn's own access log --------------------------------------------


async def real_access_line() -> dict[str, Any]:
    stream = io.StringIO()
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = build_handler(make_settings(), stream)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        await call(AccessLogMiddleware(respond(200)), http_scope())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    (line,) = parsed(stream)
    return line


async def test_the_log_pipeline_maps_the_route_template_never_a_raw_path() -> None:
    pipeline = json.loads(PIPELINE.read_text())
    processors = pipeline["processors"]
    names = [p.get("target") for p in processors]
    (access,) = [p for p in processors if p["type"] == "pipeline" and "app.access" in p["name"]]
    # Its filter reads logger.name, which the logger remapper before it writes.
    assert access["filter"]["query"] == f"@logger.name:{ACCESS_LOGGER}"
    assert names.index("logger.name") < processors.index(access)
    line = await real_access_line()
    for processor in access["processors"]:
        for source in processor["sources"]:
            assert source in line, f"the pipeline reads {source!r}, the access log lacks it"
    (path,) = [p for p in access["processors"] if p["target"] == "http.url_details.path"]
    assert path["sources"] == ["http.route"]
    assert path["override_on_conflict"] is True
    # Datadog's standard attributes, written by the app itself.
    assert line["http.method"] == "GET"
    assert line["http.status_code"] == 200
    assert isinstance(line["duration"], int)  # nanoseconds
    assert "http.url" not in line
    assert "http.url_details.path" not in line


async def test_every_access_log_field_is_documented() -> None:
    line = await real_access_line()
    text = (REPO / "docs" / "observability.md").read_text(encoding="utf-8")
    section = text[text.index("### Access log") :]
    section = section[: section.index("\n## ")]
    assert set(ACCESS_FIELDS) <= set(line)
    undocumented = [name for name in ACCESS_FIELDS if f"`{name}`" not in section]
    assert undocumented == []
    for variable in ("ACCESS_LOG_ENABLED", "ACCESS_LOG_SAMPLE_RATE"):
        assert f"`{variable}`" in section


@pytest.mark.parametrize("launcher", ["Dockerfile", "scripts/run_dev.sh"])
def test_uvicorn_s_own_access_log_stays_off(launcher: str) -> None:
    text = (REPO / launcher).read_text(encoding="utf-8")
    assert re.search(r"--no-access-log\b", text), f"{launcher} turned uvicorn's access log on"
