"""Slow-bank refunds: 50 refunds the bank holds for 5 s do not starve anything else.

One service process (one worker, a pool of 5 connections and no overflow) against
MockServer, which answers the refunds of this test's payments after 5 s. 50 captured
payments are made first (fast path); then 50 refunds are fired at once while payments and
reads go on in loops. If a refund held a database connection across its bank call, the
pool would be exhausted for 5 s and payments and reads would fail (503) or queue behind
it; if it held its payment's row lock, a second refund of the same payment would wait
for the bank. The drill asserts that every refund succeeds, that no payment or read fails
meanwhile, and that an over-refund of a payment whose refund the bank holds is refused
before the bank answers. The latencies of payments and reads during the window (p50, p99,
max) are printed and attached to the test report (``record_property``); no threshold is
asserted on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from tests.conftest import MerchantCredentials, payment_body
from tests.e2e.refund_ledger import assert_refunds_within_capture
from tests.e2e.service_process import MOCKSERVER_URL, ServiceProcess, running_service, service_env
from tests.mockserver_bank import clear_expectation, json_response, register_expectation

pytestmark = pytest.mark.mockserver

BANK_REFUND_DELAY_S = 5.0
REFUNDS = 50
PAYERS = 3
READERS = 3
OVER_REFUNDS = 10

SERVICE_SETTINGS: dict[str, object] = {
    # A small pool, no overflow: 50 refunds holding connections would exhaust it at once.
    "DB_POOL_SIZE": 5,
    "DB_MAX_OVERFLOW": 0,
    "DB_POOL_TIMEOUT_S": 5,
    # The bank's 5 s is an answer, not a timeout; no retry.
    "BANK_TIMEOUT_S": 8,
    "BANK_CONNECT_TIMEOUT_S": 1,
    "BANK_MAX_RETRIES": 0,
    "BANK_BACKOFF_MAX_S": 0.1,
    "BANK_MAX_CONNECTIONS": 100,
    # Longer than the longest bank call (9 s); the reconciler's first lookup comes after
    # the refunds have settled themselves.
    "RECONCILE_NO_RECORD_AFTER_S": 10,
    "RECONCILE_LEASE_S": 10,
    "RECONCILE_FIRST_DELAY_S": 30,
    "PURGER_ENABLED": "false",
    "LOG_LEVEL": "WARNING",
}


@pytest.fixture
def service(settings: Settings, migrated_database: str) -> Iterator[ServiceProcess]:
    """The service, one worker, started for this test and always stopped."""
    env = service_env(settings.database_url, **SERVICE_SETTINGS)
    with running_service(env, workers=1, name="slow-bank") as process:
        yield process


@pytest.fixture
async def mockserver() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=MOCKSERVER_URL, timeout=10.0) as client:
        try:
            (await client.put("/mockserver/status")).raise_for_status()
        except httpx.HTTPError as exc:
            pytest.fail(f"MockServer is not answering at {MOCKSERVER_URL}: {exc!r}")
        yield client


@pytest.fixture
async def slow_bank(
    mockserver: httpx.AsyncClient, create_merchant: Callable[..., Any]
) -> AsyncIterator[tuple[MerchantCredentials, str]]:
    """A merchant of its own, whose payments MockServer approves at once with an
    authorization code of this test's, and whose refunds (recognised by that code) it
    answers after ``BANK_REFUND_DELAY_S``. The merchant and the code."""
    merchant: MerchantCredentials = await create_merchant(
        merchant_id=f"merchant_slow_{uuid.uuid4().hex[:12]}"
    )
    code = f"SLOW{uuid.uuid4().hex[:10].upper()}"
    approve = await register_expectation(
        mockserver,
        http_request={
            "method": "POST",
            "path": "/v1/authorizations",
            "body": {
                "type": "JSON",
                "json": {"merchant_id": merchant.merchant_id},
                "matchType": "ONLY_MATCHING_FIELDS",
            },
        },
        action=json_response(200, {"status": "approved", "authorization_code": code}),
        kind="slow-bank-authorization",
        reference=merchant.merchant_id,
    )
    hold = await register_expectation(
        mockserver,
        http_request={
            "method": "POST",
            "path": "/v1/refunds",
            "body": {
                "type": "JSON",
                "json": {"authorization_code": code},
                "matchType": "ONLY_MATCHING_FIELDS",
            },
        },
        action=json_response(
            200,
            {"status": "succeeded", "reference": f"slow_{code.lower()}"},
            delay_s=BANK_REFUND_DELAY_S,
        ),
        kind="slow-bank-refund",
        reference=merchant.merchant_id,
    )
    try:
        yield merchant, code
    finally:
        for expectation_id in (approve, hold):
            with contextlib.suppress(httpx.HTTPError):
                await clear_expectation(mockserver, expectation_id)


@dataclass
class Timings:
    """Latencies (seconds) and failures of one kind of request."""

    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile."""
        ranked = sorted(self.seconds)
        return ranked[max(0, math.ceil(p / 100 * len(ranked)) - 1)]

    def summary_ms(self) -> dict[str, float]:
        return {
            "count": len(self.seconds),
            "p50_ms": round(self.percentile(50) * 1000, 1),
            "p99_ms": round(self.percentile(99) * 1000, 1),
            "max_ms": round(max(self.seconds) * 1000, 1),
        }


async def timed(
    timings: Timings, call: Callable[[], Any], ok: Callable[[httpx.Response], bool]
) -> None:
    started = time.perf_counter()
    try:
        response: httpx.Response = await call()
    except httpx.HTTPError as exc:
        timings.failures.append(f"{type(exc).__name__}: {exc}")
        return
    timings.seconds.append(time.perf_counter() - started)
    if not ok(response):
        timings.failures.append(f"{response.status_code} {response.text[:300]}")


_RESERVED = text(
    "SELECT count(*) FROM refunds WHERE transaction_id = ANY(:ids) AND status = 'pending'"
)


async def wait_until_reserved(engine: AsyncEngine, transaction_ids: list[str]) -> None:
    """Until each payment has its refund recorded ``pending`` (the bank is holding it)."""
    deadline, pending = time.monotonic() + BANK_REFUND_DELAY_S, 0
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            pending = (await conn.execute(_RESERVED, {"ids": transaction_ids})).scalar_one()
        if pending == len(transaction_ids):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {pending} of {len(transaction_ids)} refunds were reserved")


async def test_fifty_refunds_the_bank_holds_starve_no_payment_and_no_read(
    service: ServiceProcess,
    slow_bank: tuple[MerchantCredentials, str],
    engine: AsyncEngine,
    record_property: Callable[[str, object], None],
) -> None:
    merchant, _ = slow_bank
    headers = merchant.headers
    limits = httpx.Limits(max_connections=REFUNDS + PAYERS + READERS + OVER_REFUNDS + 10)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30, limits=limits) as http:

        async def pay(amount: str = "10.00") -> httpx.Response:
            return await http.post(
                "/api/v1/payments/process",
                json=payment_body(merchant.merchant_id, amount=amount),
                headers=headers,
            )

        # 50 captured payments, on the fast path.
        payments: list[str] = []
        for _ in range(REFUNDS // 10):
            batch = await asyncio.gather(*(pay() for _ in range(10)))
            for response in batch:
                assert response.status_code == 200, response.text
                assert response.json()["status"] == "captured"
                payments.append(response.json()["transaction_id"])

        payment_timings, read_timings = Timings(), Timings()
        window_open = asyncio.Event()
        window_closed = asyncio.Event()

        async def payer() -> None:
            while not window_closed.is_set():
                measuring = window_open.is_set()
                sink = payment_timings if measuring else Timings()
                await timed(
                    sink,
                    pay,
                    lambda r: r.status_code == 200 and r.json()["status"] == "captured",
                )

        async def reader(offset: int) -> None:
            n = offset
            while not window_closed.is_set():
                transaction_id = payments[n % len(payments)]  # those being refunded
                n += 1
                sink = read_timings if window_open.is_set() else Timings()
                await timed(
                    sink,
                    functools.partial(
                        http.get, f"/api/v1/payments/{transaction_id}", headers=headers
                    ),
                    lambda r: r.status_code == 200,
                )

        async def refund(transaction_id: str) -> tuple[httpx.Response, float]:
            response = await http.post(
                f"/api/v1/payments/{transaction_id}/refund",
                json={"amount": "10.00", "reason": "slow bank drill"},
                headers=headers,
            )
            return response, time.monotonic()

        ledger_checks = 0

        async def ledger_watch() -> None:
            nonlocal ledger_checks
            while not window_closed.is_set():
                await assert_refunds_within_capture(engine)
                ledger_checks += 1
                await asyncio.sleep(0.25)

        background = [asyncio.create_task(payer()) for _ in range(PAYERS)]
        background += [asyncio.create_task(reader(i * 17)) for i in range(READERS)]
        background.append(asyncio.create_task(ledger_watch()))
        try:
            await asyncio.sleep(0.5)  # the loops are warm
            window_open.set()
            fired_at = time.monotonic()
            refunds = [asyncio.create_task(refund(t)) for t in payments]

            # While the bank holds them: a refund of what is reserved is refused at once,
            # so neither the payment's row lock nor a connection waits for the bank. Sent
            # once those refunds are reserved (on a loaded machine that can take longer
            # than a fixed pause, and an over-refund arriving first is rightly accepted).
            await wait_until_reserved(engine, payments[:OVER_REFUNDS])
            over_refunds = await asyncio.gather(
                *(
                    http.post(
                        f"/api/v1/payments/{t}/refund", json={"amount": "0.01"}, headers=headers
                    )
                    for t in payments[:OVER_REFUNDS]
                )
            )
            over_refused_at = time.monotonic()

            answered = await asyncio.gather(*refunds)
            window_closed.set()
            closed_at = time.monotonic()
        finally:
            window_open.set()
            window_closed.set()
            results = await asyncio.gather(*background, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result

    # Every refund succeeded, after the bank's 5 s.
    failed = [(r.status_code, r.text[:300]) for r, _ in answered if r.status_code != 200]
    assert failed == [], f"{len(failed)} refunds failed: {failed[:5]}\n{service.log_tail()}"
    assert {r.json()["status"] for r, _ in answered} == {"succeeded"}
    assert {r.json()["payment_status"] for r, _ in answered} == {"refunded"}
    first_answer = min(at for _, at in answered)
    assert first_answer - fired_at >= BANK_REFUND_DELAY_S - 0.1  # the bank did hold them

    # The over-refunds were refused while the bank still held the refunds.
    for response in over_refunds:
        assert response.status_code == 409, response.text
        assert response.json()["code"] in {"refund_exceeds_balance", "payment_not_refundable"}
    assert over_refused_at < first_answer

    # Nothing else failed meanwhile.
    assert payment_timings.failures == [], payment_timings.failures[:5]
    assert read_timings.failures == [], read_timings.failures[:5]
    assert payment_timings.seconds, "no payment was made during the window"
    assert read_timings.seconds, "no read was made during the window"
    await assert_refunds_within_capture(engine)
    assert ledger_checks > 0

    window_s = closed_at - fired_at
    payments_ms = payment_timings.summary_ms()
    reads_ms = read_timings.summary_ms()
    record_property("window_s", round(window_s, 2))
    record_property("payments_during_window", payments_ms)
    record_property("reads_during_window", reads_ms)
    record_property("payments_p99_ms", payments_ms["p99_ms"])
    record_property("reads_p99_ms", reads_ms["p99_ms"])
    print(
        f"\nslow bank: {REFUNDS} refunds held {BANK_REFUND_DELAY_S:g} s, window "
        f"{window_s:.2f} s; payments {payments_ms}; reads {reads_ms}"
    )
