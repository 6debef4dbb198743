"""Traces of the payment flow, as the Datadog agent receives them.

The service runs the way production runs it — uvicorn in its own process, ddtrace
configured from the environment (``DD_TRACE_ENABLED=true``, ``DD_TRACE_AGENT_URL``) — and
sends its traces to the Datadog APM test agent of the local stack (127.0.0.1:8126,
``scripts/stack.sh up testagent``). A subprocess keeps ddtrace's process-wide patching out
of the test process. Each server gets its own test-agent session token and its own
``DD_ENV``, so traces of concurrent runs never mix.

Checked: the span tree (request → flow spans → asyncpg, httpx to the bank, aiokafka
produce), service, resources and tags, errors on the spans of a failed bank call, trace
context reaching the bank (MockServer records the ``x-datadog-*`` headers) and Kafka (the
record's headers), log lines carrying the ids of the trace the agent got, and no card
number, CVV or cardholder name anywhere in any span.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.core.config import Settings
from app.dispatcher import build_admin
from app.services import webhooks
from tests.conftest import MerchantCredentials, make_settings, payment_body
from tests.e2e.test_webhooks import DispatcherProcess, start_group_at_end
from tests.integration.test_outbox_relay import KAFKA, tail_topic
from tests.webhook_receiver import Receiver

REPO = Path(__file__).resolve().parents[2]
TEST_AGENT = os.environ.get("DD_TEST_AGENT_URL", "http://127.0.0.1:8126")
MOCKSERVER = os.environ.get("MOCKSERVER_URL", "http://127.0.0.1:1080")
SERVICE = "payment-service"
VERSION = "9.9.9-tracing-test"

PAY = "/api/v1/payments/process"
VISA = "4242 4242 4242 4242"
DECLINED = "4000000000009995"  # insufficient_funds
BANK_ERROR = "4000000000000119"  # the bank answers 5xx: its answer is unknown
CVV = "947"
HOLDER = "Tracy Spanwell"

FLOW_STEPS = {
    "payment.process": [
        "payment.validate_merchant",
        "payment.vault",
        "payment.record",  # the first write: nothing reaches the bank unrecorded
        "payment.authorize",
        "payment.persist",
        "payment.publish",
    ],
    "refund.process": ["refund.reserve", "refund.authorize", "refund.persist", "refund.publish"],
}
"""The steps right under each flow span, in the order they start."""

Span = dict[str, Any]

TRACE_HEADERS = {
    "dd-pathway-ctx-base64",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "x-datadog-tags",
    "traceparent",
    "tracestate",
}
"""Kafka headers ddtrace adds to an event (trace context and the Data Streams pathway)."""


# -- the test agent -------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_agent() -> str:
    """The APM test agent's URL; fails the module clearly when it is not running."""
    try:
        httpx.get(f"{TEST_AGENT}/info", timeout=3).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(
            f"the Datadog APM test agent does not answer at {TEST_AGENT} ({exc!r}): "
            "start it with `bash scripts/stack.sh up testagent`"
        )
    return TEST_AGENT


# -- the traced server ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TracedServer:
    """The app under uvicorn with tracing on, and what it sent to the test agent."""

    base_url: str
    token: str
    env: str
    log_path: Path
    traces_seen: list[list[Span]] = field(default_factory=list)

    def traces(self) -> list[list[Span]]:
        """This server's traces the test agent has received so far."""
        response = httpx.get(
            f"{TEST_AGENT}/test/session/traces",
            params={"test_session_token": self.token},
            timeout=10,
        )
        response.raise_for_status()
        return [
            trace
            for trace in response.json()
            if any(span.get("meta", {}).get("env") == self.env for span in trace)
        ]

    def wait_for_trace(self, predicate: Callable[[list[Span]], bool], what: str) -> list[Span]:
        """The first received trace matching ``predicate`` (the tracer flushes every 1 s)."""
        deadline = time.monotonic() + 30
        while True:
            for trace in self.traces():
                if predicate(trace):
                    return trace
            if time.monotonic() > deadline:
                names = [sorted({s["name"] for s in t}) for t in self.traces()]
                raise AssertionError(f"no trace with {what} within 30 s; got {names}")
            time.sleep(0.25)

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines the server has written to stdout."""
        lines = []
        for raw in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
        return lines


@pytest.fixture
def traced_server(
    test_agent: str, settings: Settings, migrated_database: str, tmp_path: Path
) -> Iterator[Callable[..., TracedServer]]:
    """Start the app under uvicorn with tracing on; stopped (SIGTERM) after the test."""
    started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(**extra_env: str) -> TracedServer:
        token = f"payment-tracing-{uuid.uuid4().hex[:12]}"
        env_name = f"tracing-test-{uuid.uuid4().hex[:8]}"
        httpx.get(
            f"{test_agent}/test/session/start", params={"test_session_token": token}, timeout=5
        ).raise_for_status()
        port = _free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DD_", "_DD_"))
            and key not in {"BANK_API_URL", "KAFKA_BOOTSTRAP_SERVERS", "METRICS_ENABLED"}
        }
        env.update(
            {
                "APP_ENV": "test",
                "DATABASE_URL": settings.database_url,
                "LOG_LEVEL": "INFO",
                "DD_TRACE_ENABLED": "true",
                "DD_TRACE_AGENT_URL": test_agent,
                "DD_SERVICE": SERVICE,
                "DD_ENV": env_name,
                "DD_VERSION": VERSION,
                "DD_DBM_PROPAGATION_MODE": "full",
                "DD_DATA_STREAMS_ENABLED": "true",
                "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
                "DD_REMOTE_CONFIGURATION_ENABLED": "false",
                "_DD_TRACE_WRITER_ADDITIONAL_HEADERS": f"X-Datadog-Test-Session-Token:{token}",
                **extra_env,
            }
        )
        log_path = tmp_path / f"server-{port}.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--no-access-log",
            ],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        started.append((proc, log_file))
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"traced uvicorn did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        return TracedServer(base_url=base_url, token=token, env=env_name, log_path=log_path)

    try:
        yield start
    finally:
        for proc, log_file in started:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log_file.close()


# -- reading spans --------------------------------------------------------------------


def by_name(trace: list[Span], name: str) -> list[Span]:
    return [span for span in trace if span["name"] == name]


def one(trace: list[Span], name: str) -> Span:
    spans = by_name(trace, name)
    assert len(spans) == 1, f"{len(spans)} spans named {name}"
    return spans[0]


def children(trace: list[Span], parent: Span) -> list[Span]:
    return [span for span in trace if span.get("parent_id") == parent["span_id"]]


def descendants(trace: list[Span], parent: Span) -> list[Span]:
    found: list[Span] = []
    frontier = [parent]
    while frontier:
        kids = [s for p in frontier for s in children(trace, p)]
        found.extend(kids)
        frontier = kids
    return found


def ancestors(trace: list[Span], span: Span) -> list[Span]:
    index = {s["span_id"]: s for s in trace}
    chain = []
    while span.get("parent_id") in index:
        span = index[span["parent_id"]]
        chain.append(span)
    return chain


def root(trace: list[Span]) -> Span:
    ids = {s["span_id"] for s in trace}
    roots = [s for s in trace if not s.get("parent_id") or s["parent_id"] not in ids]
    assert len(roots) == 1, [s["name"] for s in roots]
    return roots[0]


def queries_under(trace: list[Span], step: str) -> list[Span]:
    """The asyncpg query spans below the flow step ``step``."""
    return [s for s in descendants(trace, one(trace, step)) if s["name"] == "postgres.query"]


def has_span(name: str, **meta: str) -> Callable[[list[Span]], bool]:
    def matches(trace: list[Span]) -> bool:
        return any(
            s["name"] == name and all(s.get("meta", {}).get(k) == v for k, v in meta.items())
            for s in trace
        )

    return matches


def full_trace_id(trace: list[Span]) -> str:
    """The trace id the way ddtrace writes it into logs: 128-bit hex, else 64-bit decimal.

    The wire format carries the low 64 bits in ``trace_id`` and the high 64 bits, as hex,
    in the ``_dd.p.tid`` tag of the first span of the chunk.
    """
    highs = {s["meta"]["_dd.p.tid"] for s in trace if "_dd.p.tid" in s.get("meta", {})}
    assert len(highs) <= 1, highs
    low = int(trace[0]["trace_id"])
    return f"{highs.pop()}{low:016x}" if highs else str(low)


def assert_flow(trace: list[Span], flow: str) -> Span:
    """The request span is the root, the flow span under it, each step right under that."""
    request = root(trace)
    assert request["name"] == "fastapi.request"
    assert request["service"] == SERVICE
    flow_span = one(trace, flow)
    assert request in ancestors(trace, flow_span)
    steps = sorted(children(trace, flow_span), key=lambda s: s["start"])
    step_names = [s["name"] for s in steps]
    for step in FLOW_STEPS[flow]:
        assert step in step_names, f"{step} not under {flow}: {step_names}"
    assert [n for n in step_names if n in FLOW_STEPS[flow]] == FLOW_STEPS[flow], step_names
    for span in [flow_span, *descendants(trace, flow_span)]:
        assert span["meta"].get("env") is not None or span["service"] != SERVICE
    assert flow_span["service"] == SERVICE
    assert flow_span["resource"] == flow
    assert flow_span["meta"]["version"] == VERSION
    return flow_span


def assert_no_card_data(traces: list[list[Span]], *secrets: str) -> None:
    """No string in any span (name, resource, tags, error stack) carries card data."""
    texts: list[str] = []
    for trace in traces:
        for span in trace:
            texts += [str(span.get(k, "")) for k in ("name", "resource", "service", "type")]
            for key, value in span.get("meta", {}).items():
                texts += [key, str(value)]
            texts += list(span.get("metrics", {}))
    blob = "\n".join(texts)
    for secret in secrets:
        # A CVV is short: look for it as a token, not inside random hex ids.
        pattern = rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])"
        assert not re.search(pattern, blob), f"{secret!r} found in a span"
    assert "cvv" not in blob.lower()


def card(number: str) -> dict[str, Any]:
    return {
        "card_number": number,
        "expiry_month": 12,
        "expiry_year": 2030,
        "cvv": CVV,
        "cardholder_name": HOLDER,
    }


def secrets_of(*numbers: str) -> list[str]:
    plain = [n.replace(" ", "") for n in numbers]
    return [*plain, *numbers, CVV, HOLDER]


def pay(server: TracedServer, merchant: MerchantCredentials, number: str) -> httpx.Response:
    body = payment_body(merchant.merchant_id, card_number=number)
    body["card_data"] = card(number)
    return httpx.post(f"{server.base_url}{PAY}", json=body, headers=merchant.headers, timeout=30)


# -- the tests ------------------------------------------------------------------------


def test_payment_and_refund_are_traced_from_request_to_database(
    traced_server: Callable[..., TracedServer], merchant: MerchantCredentials
) -> None:
    server = traced_server()
    paid = pay(server, merchant, VISA)
    assert paid.status_code == 200, paid.text
    txn = paid.json()["transaction_id"]
    refunded = httpx.post(
        f"{server.base_url}/api/v1/payments/{txn}/refund",
        json={"amount": "10.00"},
        headers=merchant.headers,
        timeout=30,
    )
    assert refunded.status_code == 200, refunded.text

    payment_trace = server.wait_for_trace(
        has_span("payment.process", transaction_id=txn), "payment.process"
    )
    flow = assert_flow(payment_trace, "payment.process")
    assert root(payment_trace)["resource"] == "POST /api/v1/payments/process"
    assert flow["meta"]["merchant_id"] == merchant.merchant_id
    assert flow["meta"]["currency"] == "USD"
    assert flow["meta"]["card_brand"] == "visa"
    assert flow["meta"]["status"] == "captured"
    assert flow.get("error", 0) == 0
    assert one(payment_trace, "payment.authorize")["meta"]["approved"] == "true"
    # asyncpg under the record step (the payment inserted, processing, before the bank
    # is asked) and under the persist step (its outcome written), with the SQL
    # (placeholders, no values) as resource.
    recorded = queries_under(payment_trace, "payment.record")
    persisted = queries_under(payment_trace, "payment.persist")
    assert recorded, "no asyncpg span under payment.record"
    assert persisted, "no asyncpg span under payment.persist"
    assert any("INSERT INTO transactions" in s["resource"] for s in recorded)
    assert any("UPDATE transactions" in s["resource"] for s in persisted)
    assert not any("INSERT INTO transactions" in s["resource"] for s in persisted)
    assert all(s["meta"]["component"] == "asyncpg" for s in recorded + persisted)

    refund_trace = server.wait_for_trace(
        has_span("refund.process", transaction_id=txn), "refund.process"
    )
    refund_flow = assert_flow(refund_trace, "refund.process")
    assert root(refund_trace)["resource"] == "POST /api/v1/payments/{transaction_id}/refund"
    assert refund_flow["meta"]["status"] == "succeeded"
    assert refund_flow["meta"]["currency"] == "USD"
    assert refund_flow["meta"]["refund_id"] == refunded.json()["refund_id"]
    assert "refund.lock" not in {s["name"] for s in refund_trace}
    # The reservation and the settlement each take the payment's row lock, in their own
    # short transaction; the bank call between them holds none.
    reserved = queries_under(refund_trace, "refund.reserve")
    settled = queries_under(refund_trace, "refund.persist")
    assert any("FOR UPDATE" in s["resource"] for s in reserved)
    assert any("INSERT INTO refunds" in s["resource"] for s in reserved)
    assert any("FOR UPDATE" in s["resource"] for s in settled)
    assert queries_under(refund_trace, "refund.authorize") == []

    assert_no_card_data(server.traces(), *secrets_of(VISA))


def test_a_decline_is_tagged_and_an_unknown_bank_answer_marks_the_bank_call(
    traced_server: Callable[..., TracedServer], merchant: MerchantCredentials
) -> None:
    server = traced_server()
    declined = pay(server, merchant, DECLINED)
    assert declined.json()["status"] == "declined"
    unknown = pay(server, merchant, BANK_ERROR)
    assert unknown.status_code == 202, unknown.text
    unknown_txn = unknown.json()["transaction_id"]

    trace = server.wait_for_trace(
        has_span("payment.process", status="declined"), "a declined payment"
    )
    flow = assert_flow(trace, "payment.process")
    assert flow["meta"]["decline_code"] == "insufficient_funds"
    assert flow.get("error", 0) == 0
    assert one(trace, "payment.authorize")["meta"]["decline_code"] == "insufficient_funds"

    # A 500 from the bank: the bank call is an error, but the request is not -- the
    # payment is recorded processing and answered 202 (the reconciler settles it).
    trace = server.wait_for_trace(
        has_span("payment.process", transaction_id=unknown_txn), "a processing payment"
    )
    flow = assert_flow(trace, "payment.process")
    assert flow["meta"]["status"] == "processing"
    assert "failure_code" not in flow["meta"]
    assert flow.get("error", 0) == 0
    authorize = one(trace, "payment.authorize")
    assert authorize["error"] == 1
    assert authorize["meta"]["error.type"].endswith("BankAnswerUnknown")
    assert one(trace, "payment.record").get("error", 0) == 0
    assert one(trace, "payment.persist").get("error", 0) == 0  # recorded all the same
    assert root(trace)["meta"]["http.status_code"] == "202"
    assert root(trace).get("error", 0) == 0

    assert_no_card_data(server.traces(), *secrets_of(DECLINED, BANK_ERROR))


def test_a_bank_that_never_got_the_request_is_an_error(
    traced_server: Callable[..., TracedServer], merchant: MerchantCredentials
) -> None:
    # A refused connection (a closed port): the payment fails at once, the answer is 503.
    server = traced_server(
        BANK_API_URL=f"http://127.0.0.1:{_free_port()}",
        BANK_TIMEOUT_S="0.2",
        BANK_CONNECT_TIMEOUT_S="0.2",
        BANK_MAX_RETRIES="1",
        BANK_BACKOFF_MAX_S="0.05",
    )
    failed = pay(server, merchant, VISA)
    assert failed.status_code == 503, failed.text
    failed_txn = failed.json()["transaction_id"]

    trace = server.wait_for_trace(
        has_span("payment.process", transaction_id=failed_txn), "a failed payment"
    )
    flow = assert_flow(trace, "payment.process")
    assert flow["meta"]["status"] == "failed"
    assert flow["meta"]["failure_code"] == "bank_unreachable"
    assert flow["error"] == 1
    assert flow["meta"]["error.type"] == "app.domain.errors.BankUnavailable"
    assert one(trace, "payment.authorize")["error"] == 1
    assert one(trace, "payment.record").get("error", 0) == 0
    assert one(trace, "payment.persist").get("error", 0) == 0  # recorded all the same
    assert root(trace)["meta"]["http.status_code"] == "503"
    assert root(trace)["error"] == 1  # what the API 5xx-rate monitor counts

    assert_no_card_data(server.traces(), *secrets_of(VISA))


def test_log_lines_carry_the_ids_of_the_trace_the_agent_received(
    traced_server: Callable[..., TracedServer], merchant: MerchantCredentials
) -> None:
    server = traced_server()
    paid = pay(server, merchant, VISA)
    txn = paid.json()["transaction_id"]
    trace = server.wait_for_trace(has_span("payment.process", transaction_id=txn), "payment")
    flow = one(trace, "payment.process")

    lines = [line for line in server.log_lines() if txn in str(line.get("message"))]
    assert lines, "no log line about the payment"
    line = lines[0]
    assert line["dd.trace_id"] == full_trace_id(trace)
    # Logged inside payment.process, after its persist step closed.
    assert line["dd.span_id"] == str(flow["span_id"])
    assert line["dd.service"] == SERVICE
    assert line["dd.env"] == server.env
    assert line["dd.version"] == VERSION
    assert line["correlation_id"] == paid.headers["X-Correlation-ID"]
    # Outside any request, the ids are zero.
    startup = next(line for line in server.log_lines() if "APM tracing on" in line["message"])
    assert startup["dd.trace_id"] == "0"
    assert "Data Streams Monitoring on" in startup["message"]


def test_the_access_log_line_is_in_the_request_s_trace_under_uvicorn(
    traced_server: Callable[..., TracedServer], merchant: MerchantCredentials
) -> None:
    server = traced_server()
    paid = pay(server, merchant, VISA)
    txn = paid.json()["transaction_id"]
    trace = server.wait_for_trace(has_span("payment.process", transaction_id=txn), "payment")
    correlation_id = paid.headers["X-Correlation-ID"]

    deadline = time.monotonic() + 5
    while True:  # lines reach the file from the log writer thread
        lines = [
            line
            for line in server.log_lines()
            if line.get("logger") == "app.access" and line["correlation_id"] == correlation_id
        ]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    (line,) = lines
    assert line["dd.trace_id"] == full_trace_id(trace)
    assert line["http.route"] == PAY
    assert line["http.status_code"] == 200
    assert line["merchant_id"] == merchant.merchant_id  # through uvicorn's request state
    assert txn not in json.dumps(line)


@pytest.mark.mockserver
def test_trace_context_reaches_the_bank(
    traced_server: Callable[..., TracedServer], merchant: MerchantCredentials
) -> None:
    server = traced_server(BANK_API_URL=MOCKSERVER)
    paid = pay(server, merchant, VISA)
    assert paid.status_code == 200, paid.text
    txn = paid.json()["transaction_id"]

    trace = server.wait_for_trace(has_span("payment.process", transaction_id=txn), "payment")
    assert_flow(trace, "payment.process")
    calls = [
        s
        for s in descendants(trace, one(trace, "payment.authorize"))
        if s["meta"].get("component") == "httpx"
    ]
    assert len(calls) == 1, [s["name"] for s in trace]
    call = calls[0]
    assert call["meta"]["http.url"] == f"{MOCKSERVER}/v1/authorizations"
    assert call["meta"]["http.status_code"] == "200"

    recorded = httpx.put(
        f"{MOCKSERVER}/mockserver/retrieve",
        params={"type": "REQUESTS", "format": "JSON"},
        json={"path": "/v1/authorizations", "headers": {"Idempotency-Key": [txn]}},
        timeout=10,
    )
    recorded.raise_for_status()
    requests = recorded.json()
    assert len(requests) == 1
    headers = {name.lower(): values[0] for name, values in requests[0]["headers"].items()}
    assert headers["x-datadog-trace-id"] == str(call["trace_id"])
    assert headers["x-datadog-parent-id"] == str(call["span_id"])
    assert headers["traceparent"].split("-")[1] == full_trace_id(trace).rjust(32, "0")

    assert_no_card_data(server.traces(), *secrets_of(VISA))


@pytest.mark.kafka
async def test_events_carry_the_trace_context_and_the_data_streams_pathway(
    traced_server: Callable[..., TracedServer], merchant: MerchantCredentials
) -> None:
    server = traced_server(KAFKA_BOOTSTRAP_SERVERS=KAFKA, OUTBOX_RELAY_INTERVAL_S="0.2")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        deadline = time.monotonic() + 60
        while (await http.get("/health")).json()["checks"]["kafka"]["status"] != "up":
            assert time.monotonic() < deadline, "Kafka never became healthy for the server"
            await asyncio.sleep(0.2)
        async with tail_topic() as tail:
            body = payment_body(merchant.merchant_id, card_number=VISA)
            body["card_data"] = card(VISA)
            paid = await http.post(PAY, json=body, headers=merchant.headers)
            assert paid.status_code == 200, paid.text
            txn = paid.json()["transaction_id"]
            await tail.read_until(lambda records: any(r.key == txn for r in records))
            records = [r for r in tail.records if r.key == txn]

    trace = await asyncio.to_thread(
        server.wait_for_trace, has_span("payment.process", transaction_id=txn), "payment"
    )
    assert_flow(trace, "payment.process")
    produced = [
        s
        for s in descendants(trace, one(trace, "payment.publish"))
        if s["meta"].get("component") == "aiokafka"
    ]
    assert len(produced) == 1, [s["name"] for s in trace]
    produce = produced[0]
    assert produce["name"] == "kafka.produce"
    assert produce["meta"]["kafka.topic"] == "payments.events"
    assert produce["meta"]["span.kind"] == "producer"

    headers = records[0].headers
    assert headers["x-datadog-trace-id"] == str(produce["trace_id"])
    assert headers["x-datadog-parent-id"] == str(produce["span_id"])
    assert "dd-pathway-ctx-base64" in headers  # Data Streams Monitoring checkpoint
    # docs/events.md's three headers first and unchanged; the tracing headers after them.
    assert list(headers)[:3] == ["event_type", "event_id", "correlation_id"]
    assert set(headers) - {"event_type", "event_id", "correlation_id"} <= TRACE_HEADERS

    assert_no_card_data(server.traces(), *secrets_of(VISA))


async def test_a_webhook_delivery_is_a_span_linked_to_its_events_trace(
    traced_server: Callable[..., TracedServer],
    merchant: MerchantCredentials,
    uow_factory: Callable[[], SqlUnitOfWork],
) -> None:
    """The dispatcher (its own process, traced) opens a ``webhook.deliver`` span per POST,
    linked to the trace that published the event; no trace header reaches the merchant."""
    group = f"webhooks-tracing-{uuid.uuid4().hex[:8]}"
    await start_group_at_end(group)
    receiver = Receiver()
    await receiver.start()
    issued = await webhooks.add_endpoint(
        build_admin(make_settings(webhook_allow_private_targets=True), uow_factory),
        merchant_id=merchant.merchant_id,
        url=receiver.url,
    )
    receiver.secrets = [issued.secret]
    server = traced_server(KAFKA_BOOTSTRAP_SERVERS=KAFKA, OUTBOX_RELAY_INTERVAL_S="0.2")
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": make_settings().database_url,
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "WEBHOOK_CONSUMER_GROUP": group,
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "DD_TRACE_ENABLED": "true",
        "DD_TRACE_AGENT_URL": TEST_AGENT,
        "DD_SERVICE": SERVICE,
        "DD_ENV": server.env,
        "DD_VERSION": VERSION,
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "METRICS_ENABLED": "false",
        "_DD_TRACE_WRITER_ADDITIONAL_HEADERS": f"X-Datadog-Test-Session-Token:{server.token}",
    }
    dispatcher = DispatcherProcess(env, "traced-dispatcher")
    dispatcher.start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            deadline = time.monotonic() + 60
            while (await http.get("/health")).json()["checks"]["kafka"]["status"] != "up":
                assert time.monotonic() < deadline, "Kafka never became healthy for the server"
                await asyncio.sleep(0.2)
            async with tail_topic() as tail:
                body = payment_body(merchant.merchant_id, card_number=VISA)
                body["card_data"] = card(VISA)
                paid = await http.post(PAY, json=body, headers=merchant.headers)
                assert paid.status_code == 200, paid.text
                txn = paid.json()["transaction_id"]
                await tail.read_until(lambda records: any(r.key == txn for r in records))
                (record,) = [r for r in tail.records if r.key == txn]
            deadline = time.monotonic() + 30
            while not receiver.deliveries:
                assert time.monotonic() < deadline, dispatcher.log()[-3000:]
                await asyncio.sleep(0.1)
        delivery = await asyncio.to_thread(
            server.wait_for_trace,
            has_span("webhook.deliver", event_id=record.body["event_id"]),
            "a webhook delivery",
        )
    finally:
        await asyncio.to_thread(dispatcher.stop)
        dispatcher.log_path.unlink(missing_ok=True)
        await receiver.stop()

    span = one(delivery, "webhook.deliver")
    assert span["meta"]["outcome"] == "delivered"
    assert span["meta"]["http_status_code"] == "204"
    assert span["meta"]["endpoint_id"] == issued.endpoint.endpoint_id
    links = span_links(span)
    assert [(link["trace_id"], link["span_id"]) for link in links] == [
        (int(record.headers["x-datadog-trace-id"]), int(record.headers["x-datadog-parent-id"]))
    ]
    assert not {h for h in receiver.deliveries[0].headers if h.startswith(("x-datadog", "trace"))}
    assert_no_card_data(server.traces(), *secrets_of(VISA))


def span_links(span: Span) -> list[dict[str, int]]:
    """A span's links as ``trace_id``/``span_id`` (lower 64 bits), however they were sent."""
    raw = span.get("span_links") or json.loads(span.get("meta", {}).get("_dd.span_links", "[]"))
    links = []
    for link in raw:
        trace_id = link["trace_id"]
        trace_id = int(trace_id, 16) if isinstance(trace_id, str) else int(trace_id)
        span_id = link["span_id"]
        span_id = int(span_id, 16) if isinstance(span_id, str) else int(span_id)
        links.append({"trace_id": trace_id & (2**64 - 1), "span_id": span_id})
    return links
