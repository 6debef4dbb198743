"""Kill drill: SIGKILL the service while the bank holds requests; the restart settles them.

The service runs as a real uvicorn process against MockServer. MockServer holds the drill's
distinctive requests for a few seconds -- an authorization the bank approves, one it will
say it has no record of, and a refund of 40.00 of a captured payment; as soon as it has
*received* them, the whole process group is SIGKILLed: no shutdown, no settle write. What
was written before each bank call must already be in the database (the payments
``processing``, the refund ``pending`` with its amount reserved). The test then tells
MockServer what the bank's status lookups say and starts the service again: its reconciler
must settle every item from the lookups alone -- ``captured`` with the bank's code;
``failed``/``bank_no_record`` only once the no-record window has passed; the refund
``succeeded`` and the payment ``partially_refunded`` -- each with its event in the outbox
(and on the Kafka topic in the Kafka variant), and nothing sent to the bank twice.
Throughout, succeeded + pending refunds never exceed the capture (checked by SQL on every
poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from tests.conftest import MerchantCredentials, payment_body
from tests.e2e.refund_ledger import assert_refunds_within_capture
from tests.e2e.service_process import MOCKSERVER_URL, ServiceProcess, service_env
from tests.integration.test_outbox_relay import KAFKA, tail_topic
from tests.mockserver_bank import (
    clear_expectation,
    json_response,
    recorded_requests,
    register_authorization_status,
    register_expectation,
    register_lookup,
    register_refund_status,
)

pytestmark = pytest.mark.mockserver

BANK_HOLD_S = 3.0
"""How long MockServer holds the drill's request before answering (to a dead process)."""

NO_RECORD_AFTER_S = 15.0
"""Longer than a restart takes here (7-10 s), so the restarted reconciler first hears "no
record" too early to conclude anything, and must ask again."""

# The longest bank call is (0 retries + 1) * (1 s connect + 6 s timeout) = 7 s, so the
# reconciler's "no record" and lease windows must exceed 7 s (the settings validator
# insists).
DRILL_SETTINGS: dict[str, object] = {
    "BANK_TIMEOUT_S": 6,
    "BANK_CONNECT_TIMEOUT_S": 1,
    "BANK_MAX_RETRIES": 0,
    "BANK_BACKOFF_MAX_S": 0.1,
    "RECONCILE_INTERVAL_S": 0.5,
    "RECONCILE_FIRST_DELAY_S": 1,
    "RECONCILE_MAX_INTERVAL_S": 2,
    "RECONCILE_NO_RECORD_AFTER_S": NO_RECORD_AFTER_S,
    "RECONCILE_LEASE_S": 8,
    "OUTBOX_RELAY_INTERVAL_S": 0.2,
    "PURGER_ENABLED": "false",
    "DB_POOL_SIZE": 5,
    "DB_MAX_OVERFLOW": 5,
}
SETTLE_TIMEOUT_S = 30.0


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
async def mockserver() -> AsyncIterator[httpx.AsyncClient]:
    """MockServer's control API; every expectation registered through ``expect`` is removed
    by id at the end (MockServer is shared: never reset)."""
    async with httpx.AsyncClient(base_url=MOCKSERVER_URL, timeout=10.0) as client:
        try:
            (await client.put("/mockserver/status")).raise_for_status()
        except httpx.HTTPError as exc:
            pytest.fail(f"MockServer is not answering at {MOCKSERVER_URL}: {exc!r}")
        yield client


@pytest.fixture
async def expect(
    mockserver: httpx.AsyncClient,
) -> AsyncIterator[Callable[[Awaitable[str]], Awaitable[str]]]:
    """``await expect(register_...(mockserver, ...))``: registers and clears it afterwards."""
    registered: list[str] = []

    async def _expect(registration: Awaitable[str]) -> str:
        expectation_id = await registration
        registered.append(expectation_id)
        return expectation_id

    yield _expect
    for expectation_id in registered:
        with contextlib.suppress(httpx.HTTPError):
            await clear_expectation(mockserver, expectation_id)


@pytest.fixture
def service_factory(
    settings: Settings, migrated_database: str
) -> Iterator[Callable[..., ServiceProcess]]:
    """Build (not start) drill services; every one is stopped at the end, whatever happens."""
    built: list[ServiceProcess] = []

    def build(**overrides: object) -> ServiceProcess:
        env = service_env(settings.database_url, **{**DRILL_SETTINGS, **overrides})
        service = ServiceProcess(env, workers=1, name="kill-drill")
        built.append(service)
        return service

    yield build
    for service in built:
        service.stop()
        service.discard_log()


@pytest.fixture
async def drill_merchant(create_merchant: Callable[..., Any]) -> MerchantCredentials:
    """A merchant of its own: the drill's MockServer expectations match on its id."""
    creds: MerchantCredentials = await create_merchant(
        merchant_id=f"merchant_kill_{uuid.uuid4().hex[:12]}"
    )
    return creds


# -- helpers ----------------------------------------------------------------------------


def correlation_id(what: str) -> str:
    return f"kill-drill-{what}-{uuid.uuid4().hex}"


async def bank_received(
    mockserver: httpx.AsyncClient,
    engine: AsyncEngine,
    *,
    path: str,
    correlation: str,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Wait until MockServer has received the request ``correlation`` sent to ``path``
    (checking the refund invariant on every poll); its JSON body."""
    deadline = time.monotonic() + timeout_s
    while True:
        await assert_refunds_within_capture(engine)
        received = await recorded_requests(
            mockserver, method="POST", path_regex=path, correlation_id=correlation
        )
        if received:
            body: dict[str, Any] = received[0]["body"]["json"]
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"MockServer never received {path} for {correlation}")
        await asyncio.sleep(0.02)


async def died_mid_request(request: asyncio.Task[httpx.Response]) -> None:
    """The client's request was cut off by the kill: no answer ever came."""
    with pytest.raises(httpx.TransportError):
        await request


async def one_row(engine: AsyncEngine, sql: str, **params: Any) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(text(sql), params)).mappings().one()
    return dict(row)


async def payment_row(engine: AsyncEngine, transaction_id: str) -> dict[str, Any]:
    return await one_row(
        engine,
        "SELECT status, authorization_code, failure_code, refunded_minor, "
        "refund_pending_minor, amount_minor, created_at, updated_at FROM transactions "
        "WHERE transaction_id = :id",
        id=transaction_id,
    )


async def refund_row(engine: AsyncEngine, refund_id: str) -> dict[str, Any]:
    return await one_row(
        engine,
        "SELECT status, bank_reference, failure_code, amount_minor FROM refunds "
        "WHERE refund_id = :id",
        id=refund_id,
    )


async def events_of(engine: AsyncEngine, transaction_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT event_type, payload, published_at FROM outbox_events "
                    "WHERE aggregate_id = :id ORDER BY id"
                ),
                {"id": transaction_id},
            )
        ).mappings()
        return [dict(row) for row in rows]


async def settle_audit(engine: AsyncEngine, resource_id: str, action: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT actor, outcome FROM audit_log "
                    "WHERE resource_id = :id AND action = :action ORDER BY id"
                ),
                {"id": resource_id, "action": action},
            )
        ).mappings()
        return [dict(row) for row in rows]


async def wait_until_settled(
    engine: AsyncEngine,
    read: Callable[[], Awaitable[dict[str, Any]]],
    *,
    unsettled: str,
    service: ServiceProcess,
) -> dict[str, Any]:
    """Poll ``read`` until its status is no longer ``unsettled``, checking the refund
    invariant on every poll; the settled row."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        await assert_refunds_within_capture(engine)
        row = await read()
        if row["status"] != unsettled:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still {unsettled} {SETTLE_TIMEOUT_S} s after the restart: {row}\n"
                f"service log:\n{service.log_tail()}"
            )
        await asyncio.sleep(0.1)


async def pay_in_background(
    http: httpx.AsyncClient, merchant: MerchantCredentials, *, amount: str, correlation: str
) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(
        http.post(
            "/api/v1/payments/process",
            json=payment_body(merchant.merchant_id, amount=amount, metadata={"drill": "kill"}),
            headers={**merchant.headers, "X-Correlation-ID": correlation},
        )
    )


async def hold_authorizations(
    mockserver: httpx.AsyncClient,
    expect: Callable[[Awaitable[str]], Awaitable[str]],
    merchant: MerchantCredentials,
    amount_minor: int,
    *,
    authorization_code: str,
) -> None:
    """MockServer answers this merchant's authorizations of ``amount_minor`` (only) after
    ``BANK_HOLD_S``, approved with ``authorization_code``."""
    await expect(
        register_expectation(
            mockserver,
            http_request={
                "method": "POST",
                "path": "/v1/authorizations",
                "body": {
                    "type": "JSON",
                    "json": {"merchant_id": merchant.merchant_id, "amount_minor": amount_minor},
                    "matchType": "ONLY_MATCHING_FIELDS",
                },
            },
            action=json_response(
                200,
                {"status": "approved", "authorization_code": authorization_code},
                delay_s=BANK_HOLD_S,
            ),
            kind="kill-drill-authorization",
            reference=merchant.merchant_id,
        )
    )


async def hold_refunds(
    mockserver: httpx.AsyncClient,
    expect: Callable[[Awaitable[str]], Awaitable[str]],
    transaction_id: str,
    *,
    reference: str,
) -> str:
    """MockServer answers the refunds of this payment (only) after ``BANK_HOLD_S``,
    succeeded with ``reference``; the expectation's id."""
    return await expect(
        register_expectation(
            mockserver,
            http_request={
                "method": "POST",
                "path": "/v1/refunds",
                "body": {
                    "type": "JSON",
                    "json": {"transaction_id": transaction_id},
                    "matchType": "ONLY_MATCHING_FIELDS",
                },
            },
            action=json_response(
                200, {"status": "succeeded", "reference": reference}, delay_s=BANK_HOLD_S
            ),
            kind="kill-drill-refund",
            reference=transaction_id,
        )
    )


async def wait_until_all_settled(
    engine: AsyncEngine,
    service: ServiceProcess,
    items: dict[str, tuple[Callable[[], Awaitable[dict[str, Any]]], str]],
) -> dict[str, tuple[dict[str, Any], float]]:
    """Poll every item (``name -> (read its row, its unsettled status)``) until none is
    unsettled any more, checking the refund invariant on every poll; each settled row with
    the monotonic time it was first seen settled."""
    settled: dict[str, tuple[dict[str, Any], float]] = {}
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while len(settled) < len(items):
        await assert_refunds_within_capture(engine)
        for name, (read, unsettled) in items.items():
            if name not in settled:
                row = await read()
                if row["status"] != unsettled:
                    settled[name] = (row, time.monotonic())
        if time.monotonic() > deadline:
            waiting = sorted(set(items) - set(settled))
            raise AssertionError(
                f"{waiting} still unsettled {SETTLE_TIMEOUT_S} s after the restart\n"
                f"service log:\n{service.log_tail()}"
            )
        await asyncio.sleep(0.1)
    await assert_refunds_within_capture(engine)
    return settled


# -- the drills -------------------------------------------------------------------------


async def test_what_the_bank_held_at_a_sigkill_is_settled_by_the_restarted_service(
    mockserver: httpx.AsyncClient,
    expect: Callable[[Awaitable[str]], Awaitable[str]],
    service_factory: Callable[..., ServiceProcess],
    drill_merchant: MerchantCredentials,
    engine: AsyncEngine,
    record_property: Callable[[str, object], None],
) -> None:
    """Three requests in the bank's hands when the process dies: a payment the bank
    approved, a payment the bank has no record of, a refund of 40.00 the bank made."""
    service = service_factory()
    service.start()
    headers = drill_merchant.headers
    approved_code = f"KILL{uuid.uuid4().hex[:8].upper()}"
    refund_reference = f"kill_ref_{uuid.uuid4().hex[:12]}"
    await hold_authorizations(
        mockserver, expect, drill_merchant, 731_337, authorization_code=approved_code
    )
    # Its held answer goes to a dead socket; afterwards the bank's lookup says "no record".
    await hold_authorizations(
        mockserver, expect, drill_merchant, 424_242, authorization_code="NEVER01"
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
        paid = await http.post(
            "/api/v1/payments/process",
            json=payment_body(drill_merchant.merchant_id, amount="100.00"),
            headers=headers,
        )
        assert paid.status_code == 200, paid.text
        assert paid.json()["status"] == "captured"
        refunded_payment = paid.json()["transaction_id"]
        refund_hold = await hold_refunds(
            mockserver, expect, refunded_payment, reference=refund_reference
        )

        approved_correlation = correlation_id("approved")
        no_record_correlation = correlation_id("no-record")
        refund_correlation = correlation_id("refund")
        in_flight = [
            await pay_in_background(
                http, drill_merchant, amount="7313.37", correlation=approved_correlation
            ),
            await pay_in_background(
                http, drill_merchant, amount="4242.42", correlation=no_record_correlation
            ),
            asyncio.create_task(
                http.post(
                    f"/api/v1/payments/{refunded_payment}/refund",
                    json={"amount": "40.00", "reason": "kill drill"},
                    headers={**headers, "X-Correlation-ID": refund_correlation},
                )
            ),
        ]
        approved_sent, no_record_sent, refund_sent = await asyncio.gather(
            bank_received(
                mockserver, engine, path="/v1/authorizations", correlation=approved_correlation
            ),
            bank_received(
                mockserver, engine, path="/v1/authorizations", correlation=no_record_correlation
            ),
            bank_received(mockserver, engine, path="/v1/refunds", correlation=refund_correlation),
        )
        await assert_refunds_within_capture(engine)
        service.kill()
        killed_at = time.monotonic()
        for request in in_flight:
            await died_mid_request(request)

    approved = approved_sent["transaction_id"]
    no_record = no_record_sent["transaction_id"]
    refund_id = refund_sent["refund_id"]
    assert (refund_sent["transaction_id"], refund_sent["amount_minor"]) == (refunded_payment, 4000)

    # What was written before each bank call survived the kill, and nothing more.
    await assert_refunds_within_capture(engine)
    for transaction_id in (approved, no_record):
        recorded = await payment_row(engine, transaction_id)
        assert recorded["status"] == "processing", recorded
        assert recorded["authorization_code"] is None
        assert await events_of(engine, transaction_id) == []
    assert (await refund_row(engine, refund_id))["status"] == "pending"
    reserved = await payment_row(engine, refunded_payment)
    assert (reserved["status"], reserved["refunded_minor"], reserved["refund_pending_minor"]) == (
        "captured",
        0,
        4000,
    )

    # What the bank's status lookups say, then the restart.
    await expect(
        register_authorization_status(
            mockserver, approved, approved=True, authorization_code=approved_code
        )
    )
    await expect(
        register_lookup(
            mockserver,
            f"/v1/authorizations/{no_record}",
            json_response(404, {"error": "no_such_record"}),
            reference=no_record,
        )
    )
    await expect(
        register_refund_status(mockserver, refund_id, succeeded=True, reference=refund_reference)
    )
    await clear_expectation(mockserver, refund_hold)  # later refunds are answered at once
    service.start()
    restarted_at = time.monotonic()

    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
        # Settled or not yet, the 40.00 is spoken for.
        too_much = await http.post(
            f"/api/v1/payments/{refunded_payment}/refund", json={"amount": "60.01"}, headers=headers
        )
        assert too_much.status_code == 409, too_much.text
        assert too_much.json()["code"] == "refund_exceeds_balance"

        settled = await wait_until_all_settled(
            engine,
            service,
            {
                "approved payment": (lambda: payment_row(engine, approved), "processing"),
                "no-record payment": (lambda: payment_row(engine, no_record), "processing"),
                "refund": (lambda: refund_row(engine, refund_id), "pending"),
            },
        )

        # The approved payment: captured with the bank's code, once.
        captured, _ = settled["approved payment"]
        assert (captured["status"], captured["authorization_code"], captured["failure_code"]) == (
            "captured",
            approved_code,
            None,
        )
        assert [e["event_type"] for e in await events_of(engine, approved)] == ["payment.captured"]
        assert await settle_audit(engine, approved, "payment.settle") == [
            {"actor": "reconciler", "outcome": "success"}
        ]
        shown = await http.get(f"/api/v1/payments/{approved}", headers=headers)
        assert shown.status_code == 200, shown.text
        assert (shown.json()["status"], shown.json()["authorization_code"]) == (
            "captured",
            approved_code,
        )

        # The payment the bank never recorded: failed, only after the no-record window.
        failed, _ = settled["no-record payment"]
        assert (failed["status"], failed["failure_code"], failed["authorization_code"]) == (
            "failed",
            "bank_no_record",
            None,
        )
        waited = (failed["updated_at"] - failed["created_at"]).total_seconds()
        assert waited >= NO_RECORD_AFTER_S, waited
        no_record_lookups = await recorded_requests(
            mockserver, method="GET", path_regex=f"/v1/authorizations/{no_record}"
        )
        if restarted_at - killed_at + 1 < NO_RECORD_AFTER_S:
            # The restart came back inside the window: "no record" was heard, and waited out.
            assert len(no_record_lookups) >= 2, no_record_lookups
        assert [e["event_type"] for e in await events_of(engine, no_record)] == ["payment.failed"]
        assert await settle_audit(engine, no_record, "payment.settle") == [
            {"actor": "reconciler", "outcome": "failure"}
        ]

        # The refund: succeeded with the bank's reference; the payment partially refunded.
        refund, _ = settled["refund"]
        assert (refund["status"], refund["bank_reference"]) == ("succeeded", refund_reference)
        payment = await payment_row(engine, refunded_payment)
        assert (payment["status"], payment["refunded_minor"], payment["refund_pending_minor"]) == (
            "partially_refunded",
            4000,
            0,
        )
        assert await settle_audit(engine, refund_id, "refund.settle") == [
            {"actor": "reconciler", "outcome": "success"}
        ]
        assert [e["event_type"] for e in await events_of(engine, refunded_payment)] == [
            "payment.captured",
            "refund.succeeded",
        ]

        # The rest is refundable once, and not a cent more.
        rest = await http.post(
            f"/api/v1/payments/{refunded_payment}/refund", json={"amount": "60.00"}, headers=headers
        )
        assert rest.status_code == 200, rest.text
        assert (rest.json()["status"], rest.json()["payment_status"]) == ("succeeded", "refunded")
        more = await http.post(
            f"/api/v1/payments/{refunded_payment}/refund", json={"amount": "0.01"}, headers=headers
        )
        assert more.status_code == 409, more.text
    await assert_refunds_within_capture(engine)
    final = await payment_row(engine, refunded_payment)
    assert (final["status"], final["refunded_minor"], final["refund_pending_minor"]) == (
        "refunded",
        10_000,
        0,
    )

    # The restart asked the bank's lookups, and never sent anything twice.
    authorizations = await recorded_requests(
        mockserver, method="POST", path_regex="/v1/authorizations"
    )
    sent_ids = [r["body"]["json"].get("transaction_id") for r in authorizations]
    assert (sent_ids.count(approved), sent_ids.count(no_record)) == (1, 1)
    refunds = await recorded_requests(mockserver, method="POST", path_regex="/v1/refunds")
    assert [r["body"]["json"].get("refund_id") for r in refunds].count(refund_id) == 1
    assert await recorded_requests(
        mockserver, method="GET", path_regex=f"/v1/authorizations/{approved}"
    )
    assert await recorded_requests(mockserver, method="GET", path_regex=f"/v1/refunds/{refund_id}")

    for name, (_, at) in settled.items():
        key = name.replace(" ", "_").replace("-", "_")
        record_property(f"{key}_settled_after_restart_s", round(at - restarted_at, 2))
        record_property(f"{key}_settled_after_kill_s", round(at - killed_at, 2))
    print(
        f"\nkill drill: {len(no_record_lookups)} 'no record' lookups before failing; "
        + "; ".join(
            f"{name} settled {at - restarted_at:.2f} s after the restart was ready "
            f"({at - killed_at:.2f} s after the kill)"
            for name, (_, at) in settled.items()
        )
    )


@pytest.mark.kafka
async def test_a_payment_captured_after_a_sigkill_has_its_event_on_the_topic(
    mockserver: httpx.AsyncClient,
    expect: Callable[[Awaitable[str]], Awaitable[str]],
    service_factory: Callable[..., ServiceProcess],
    drill_merchant: MerchantCredentials,
    engine: AsyncEngine,
    record_property: Callable[[str, object], None],
) -> None:
    service = service_factory(KAFKA_BOOTSTRAP_SERVERS=KAFKA)
    service.start()
    code = f"KAFKA{uuid.uuid4().hex[:8].upper()}"
    await hold_authorizations(mockserver, expect, drill_merchant, 515_151, authorization_code=code)
    correlation = correlation_id("kafka")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
        request = await pay_in_background(
            http, drill_merchant, amount="5151.51", correlation=correlation
        )
        sent = await bank_received(
            mockserver, engine, path="/v1/authorizations", correlation=correlation
        )
        service.kill()
        killed_at = time.monotonic()
        await died_mid_request(request)
    transaction_id: str = sent["transaction_id"]
    assert (await payment_row(engine, transaction_id))["status"] == "processing"
    await expect(
        register_authorization_status(
            mockserver, transaction_id, approved=True, authorization_code=code
        )
    )

    async with tail_topic() as topic:
        service.start()
        restarted_at = time.monotonic()
        settled = await wait_until_all_settled(
            engine,
            service,
            {"payment": (lambda: payment_row(engine, transaction_id), "processing")},
        )
        row, settled_at = settled["payment"]
        assert (row["status"], row["authorization_code"]) == ("captured", code)
        records = await topic.read_until(
            lambda records: any(r.key == transaction_id for r in records), timeout_s=20
        )
        await topic.read_for(1.0)  # a duplicate would arrive now
        mine = [r.body for r in records if r.key == transaction_id]
    assert [body["event_type"] for body in mine] == ["payment.captured"]
    assert mine[0]["correlation_id"] == correlation

    # Marked published once the broker acknowledged it.
    deadline = time.monotonic() + 10
    while (await events_of(engine, transaction_id))[0]["published_at"] is None:
        assert time.monotonic() < deadline, "the published event is never marked published"
        await asyncio.sleep(0.1)
    record_property("settled_after_restart_s", round(settled_at - restarted_at, 2))
    print(
        f"\nkill drill (kafka): captured {settled_at - restarted_at:.2f} s after the restart "
        f"was ready ({settled_at - killed_at:.2f} s after the kill)"
    )


async def hold_operations(
    mockserver: httpx.AsyncClient,
    expect: Callable[[Awaitable[str]], Awaitable[str]],
    kind: str,
    transaction_id: str,
) -> None:
    """MockServer answers this payment's captures or voids (``kind``) succeeded, only after
    ``BANK_HOLD_S``."""
    await expect(
        register_expectation(
            mockserver,
            http_request={
                "method": "POST",
                "path": f"/v1/{kind}s",
                "body": {
                    "type": "JSON",
                    "json": {"transaction_id": transaction_id},
                    "matchType": "ONLY_MATCHING_FIELDS",
                },
            },
            action=json_response(200, {"status": "succeeded"}, delay_s=BANK_HOLD_S),
            kind=f"kill-drill-{kind}",
            reference=transaction_id,
        )
    )


async def operation_row(engine: AsyncEngine, transaction_id: str) -> dict[str, Any]:
    row = await one_row(
        engine,
        "SELECT status, captured_minor, pending_operation, pending_operation_id "
        "FROM transactions WHERE transaction_id = :id",
        id=transaction_id,
    )
    # "Settled" once nothing is pending: the status the drill helpers poll on.
    return {**row, "status": row["pending_operation"] or row["status"]}


async def test_a_capture_and_a_void_the_bank_held_at_a_sigkill_are_settled_after_the_restart(
    mockserver: httpx.AsyncClient,
    expect: Callable[[Awaitable[str]], Awaitable[str]],
    service_factory: Callable[..., ServiceProcess],
    drill_merchant: MerchantCredentials,
    engine: AsyncEngine,
) -> None:
    """A capture the bank made and a void it has no record of, in the bank's hands when the
    process dies: the capture ends ``captured`` with its amount, the void did not happen
    (the authorization is free again), and neither is sent twice."""
    service = service_factory()
    service.start()
    headers = drill_merchant.headers
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
        authorized = [
            await http.post(
                "/api/v1/payments/process",
                json=payment_body(
                    drill_merchant.merchant_id, amount="100.00", capture_method="manual"
                ),
                headers=headers,
            )
            for _ in range(2)
        ]
        assert [r.json()["status"] for r in authorized] == ["authorized", "authorized"]
        to_capture, to_void = (r.json()["transaction_id"] for r in authorized)
        await hold_operations(mockserver, expect, "capture", to_capture)
        await hold_operations(mockserver, expect, "void", to_void)
        capture_correlation = correlation_id("capture")
        void_correlation = correlation_id("void")
        in_flight = [
            asyncio.create_task(
                http.post(
                    f"/api/v1/payments/{to_capture}/capture",
                    json={"amount": "75.00"},
                    headers={**headers, "X-Correlation-ID": capture_correlation},
                )
            ),
            asyncio.create_task(
                http.post(
                    f"/api/v1/payments/{to_void}/void",
                    headers={**headers, "X-Correlation-ID": void_correlation},
                )
            ),
        ]
        capture_sent, void_sent = await asyncio.gather(
            bank_received(mockserver, engine, path="/v1/captures", correlation=capture_correlation),
            bank_received(mockserver, engine, path="/v1/voids", correlation=void_correlation),
        )
        service.kill()
        for request in in_flight:
            await died_mid_request(request)

    # Recorded before the bank was asked, and nothing more.
    capture_id, void_id = capture_sent["capture_id"], void_sent["void_id"]
    assert capture_sent["amount_minor"] == 7500
    assert await operation_row(engine, to_capture) == {
        "status": "capture",
        "captured_minor": 0,
        "pending_operation": "capture",
        "pending_operation_id": capture_id,
    }
    assert (await operation_row(engine, to_void))["pending_operation_id"] == void_id
    for transaction_id in (to_capture, to_void):
        assert [e["event_type"] for e in await events_of(engine, transaction_id)] == [
            "payment.authorized"
        ]

    await expect(
        register_lookup(
            mockserver,
            f"/v1/captures/{capture_id}",
            json_response(200, {"status": "succeeded"}),
            reference=capture_id,
        )
    )
    await expect(
        register_lookup(
            mockserver,
            f"/v1/voids/{void_id}",
            json_response(404, {"error": "no_such_record"}),
            reference=void_id,
        )
    )
    service.start()
    settled = await wait_until_all_settled(
        engine,
        service,
        {
            "capture": (lambda: operation_row(engine, to_capture), "capture"),
            "void": (lambda: operation_row(engine, to_void), "void"),
        },
    )

    captured, voided = settled["capture"][0], settled["void"][0]
    assert (captured["status"], captured["captured_minor"]) == ("captured", 7500)
    assert (voided["status"], voided["pending_operation"]) == ("authorized", None)
    assert [e["event_type"] for e in await events_of(engine, to_capture)] == [
        "payment.authorized",
        "payment.captured",
    ]
    assert [e["event_type"] for e in await events_of(engine, to_void)] == ["payment.authorized"]
    assert await settle_audit(engine, to_void, "payment.void.settle") == [
        {"actor": "reconciler", "outcome": "failure"}
    ]
    for path, correlation in (
        ("/v1/captures", capture_correlation),
        ("/v1/voids", void_correlation),
    ):
        sent = await recorded_requests(
            mockserver, method="POST", path_regex=path, correlation_id=correlation
        )
        assert len(sent) == 1, f"{path} was sent {len(sent)} times"
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
        again = await http.post(f"/api/v1/payments/{to_void}/void", headers=headers)
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "voided"
