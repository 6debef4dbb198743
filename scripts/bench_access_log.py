"""Micro-benchmark of the access log (docs/observability.md, "Access log"), in process.

Calls a trivial route through the service's middleware stack (correlation id, body
limit, last-resort 500, and the access log or not) with the real JSON logging set up,
stdout sent to /dev/null. Reports CPU time per request: of the event loop's thread, and
of the whole process (the log writer thread included), so that other processes on the
machine do not skew it; medians of interleaved rounds.

    uv run --frozen python scripts/bench_access_log.py [requests per round]
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import statistics
import sys
import time
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI

from app.api.access_log import AccessLogMiddleware
from app.api.middleware import (
    BodySizeLimitMiddleware,
    UnexpectedErrorMiddleware,
    correlation_middleware_options,
)
from app.core.config import Settings
from app.core.logging import configure_logging, stop_log_writer

ROUNDS = 7
SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "GET",
    "path": "/api/v1/payments/txn_abc",
    "raw_path": b"/api/v1/payments/txn_abc",
    "query_string": b"",
    "headers": [(b"host", b"bench")],
    "root_path": "",
    "scheme": "http",
    "server": ("bench", 80),
    "client": ("127.0.0.1", 1),
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
}


def build(sample_rate: float | None, *, service_line: bool = False) -> FastAPI:
    """The middleware stack of app.main.create_app around one route (which logs a line
    like the payment use case's, for comparison, with ``service_line``)."""
    app = FastAPI()
    service_logger = logging.getLogger("app.services.payments")

    @app.get("/api/v1/payments/{transaction_id}")
    async def read(transaction_id: str) -> dict[str, str]:
        if service_line:
            service_logger.info(
                "payment %s for merchant %s: captured",
                transaction_id,
                "merchant_bench",
                extra={"transaction_id": transaction_id, "status": "captured"},
            )
        return {"transaction_id": transaction_id}

    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=64 * 1024)
    if sample_rate is not None:
        app.add_middleware(AccessLogMiddleware, sample_rate=sample_rate)
    app.add_middleware(CorrelationIdMiddleware, **correlation_middleware_options())  # type: ignore[arg-type]
    return app


async def run(app: FastAPI, requests: int) -> tuple[float, float]:
    """CPU µs per request: the loop's thread, all threads."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    thread, process = time.thread_time(), time.process_time()
    for _ in range(requests):
        await app(dict(SCOPE), receive, send)
    await asyncio.sleep(0.05)  # the writer thread drains; its CPU counts in process_time
    return (
        (time.thread_time() - thread) / requests * 1e6,
        (time.process_time() - process) / requests * 1e6,
    )


async def main(requests: int) -> str:
    configure_logging(Settings(_env_file=None, environment="test", log_level="INFO"))  # type: ignore[call-arg]
    cases = {
        "no access log": build(None),
        "access log, rate 1.0": build(1.0),
        "access log, rate 0.1": build(0.1),
        "access log, rate 0.0": build(0.0),
        "(no access log, 1 other line)": build(None, service_line=True),
    }
    for app in cases.values():
        await run(app, 500)  # warm up
    loop: dict[str, list[float]] = {name: [] for name in cases}
    total: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    for _ in range(ROUNDS):
        random.shuffle(order)  # no case always runs right after another
        for name, app in order:
            on_loop, all_threads = await run(app, requests)
            loop[name].append(on_loop)
            total[name].append(all_threads)
    stop_log_writer()
    base_loop = statistics.median(loop["no access log"])
    base_total = statistics.median(total["no access log"])
    lines = [
        f"CPU µs per request, median of {ROUNDS} rounds of {requests}",
        f"{'':30s} {'event loop':>18s} {'all threads':>18s}",
    ]
    for name in cases:
        on_loop, all_threads = statistics.median(loop[name]), statistics.median(total[name])
        lines.append(
            f"{name:30s} {on_loop:8.1f} ({on_loop - base_loop:+6.1f}) "
            f"{all_threads:8.1f} ({all_threads - base_total:+6.1f})"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    report = sys.stdout
    try:
        with open(os.devnull, "w") as sys.stdout:  # the JSON lines the log writer writes
            results = asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
    finally:
        sys.stdout = report
    print(results, end="")
