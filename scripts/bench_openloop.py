"""Open-loop phases of ``make bench``: vegeta at a fixed arrival rate.

A closed-loop tool (wrk) sends a connection's next request only after the previous
answer, so a slow service is offered less load and its latency leaves out the queueing
(coordinated omission). vegeta sends on a fixed schedule whatever the answers do, with
as many in-flight requests as it takes: latency includes the time a request queued.

vegeta is built from its Go module, pinned (:data:`VEGETA_MODULE`), into ``.stack/bin``
by ``scripts/bench.sh``. Every request is a line of vegeta's JSON target format written
before the phase (its own headers, a base64 body), so each payment carries a fresh
Idempotency-Key and the same body as ``scripts/bench/payments.lua``. The per-request
results stay in ``.bench/open-<phase>.bin`` (``vegeta encode``, ``vegeta plot`` and
``vegeta report`` redraw from it).
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench_report

REPO = Path(__file__).resolve().parent.parent
VEGETA = REPO / ".stack" / "bin" / "vegeta"
VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.13.0"
# wrk's is 15 s; at a rate the service cannot keep up with, vegeta holds up to rate x
# timeout connections open (and the service as many), within the usual 20,000 files.
REQUEST_TIMEOUT_S = 10
MAX_BODY_BYTES = 512  # enough for a problem+json "code"; keeps reads' results small
RATE_SHORTFALL = 0.97  # below this share of the target rate, the generator fell behind


def vegeta() -> Path:
    """The pinned vegeta binary (scripts/bench.sh builds it)."""
    if not VEGETA.exists():
        raise RuntimeError(
            f"{VEGETA} is missing: run `make bench` (scripts/bench.sh builds {VEGETA_MODULE})"
        )
    return VEGETA


def payment_body(merchant: str, run_id: str, amount: str = "25.00") -> bytes:
    """The body of scripts/bench/payments.lua: the approved test card 4242..."""
    return (
        f'{{"merchant_id":"{merchant}","amount":{amount},"currency":"USD",'
        '"payment_method":"credit_card",'
        '"card_data":{"card_number":"4242424242424242","expiry_month":12,"expiry_year":2030,'
        '"cvv":"123","cardholder_name":"Bench Runner"},'
        f'"description":"load test","metadata":{{"run":"{run_id}"}}}}'
    ).encode()


def target_lines(
    *,
    kind: str,
    base_url: str,
    api_key: str,
    merchant: str,
    run_id: str,
    count: int,
    ids: Sequence[str] = (),
    idempotency: bool = True,
) -> list[str]:
    """``count`` lines of vegeta's JSON target format: payments (each with its own
    Idempotency-Key) or reads walking ``ids``."""
    auth = {"Authorization": [f"Bearer {api_key}"]}
    lines = []
    if kind == "payments":
        body = base64.b64encode(payment_body(merchant, run_id)).decode()
        for n in range(count):
            header = auth | {"Content-Type": ["application/json"]}
            if idempotency:
                header["Idempotency-Key"] = [f"{run_id}-open-{n}"]
            lines.append(
                json.dumps(
                    {
                        "method": "POST",
                        "url": f"{base_url}/api/v1/payments/process",
                        "body": body,
                        "header": header,
                    },
                    separators=(",", ":"),
                )
            )
    elif kind == "reads":
        if not ids:
            raise ValueError("reads need captured payment ids")
        for n in range(count):
            url = f"{base_url}/api/v1/payments/{ids[n % len(ids)]}"
            lines.append(
                json.dumps({"method": "GET", "url": url, "header": auth}, separators=(",", ":"))
            )
    else:
        raise ValueError(f"no open-loop targets for {kind}")
    return lines


def worker_limits(rate: float) -> tuple[int, int]:
    """(initial workers, max workers): enough that vegeta never caps the rate, since a
    worker holds at most one request for at most the request timeout."""
    return max(10, math.ceil(rate / 10)), math.ceil(rate * REQUEST_TIMEOUT_S) + 10


def attack(
    *, targets: Path, rate: float, duration_s: float, results: Path, name: str
) -> subprocess.CompletedProcess[bytes]:
    """``vegeta attack`` at a fixed rate; its per-request results go to ``results``."""
    workers, max_workers = worker_limits(rate)
    return subprocess.run(
        [
            str(vegeta()),
            "attack",
            f"-targets={targets}",
            "-format=json",
            f"-rate={rate:g}/s",
            f"-duration={duration_s:g}s",
            f"-timeout={REQUEST_TIMEOUT_S}s",
            f"-workers={workers}",
            f"-max-workers={max_workers}",
            f"-max-body={MAX_BODY_BYTES}",
            f"-name={name}",
            f"-output={results}",
        ],
        capture_output=True,
        timeout=duration_s + REQUEST_TIMEOUT_S + 60,
        check=False,
    )


def summarize(results: Path, *, target_rate: float) -> dict[str, Any]:
    """What a phase records from vegeta's results, in the shape of wrk's summary (latency
    in microseconds, statuses, socket errors) plus the open-loop figures and timeline."""
    binary = str(vegeta())
    report = json.loads(
        subprocess.run(
            [binary, "report", "-type=json", str(results)],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
    )
    encoded = subprocess.run(
        [binary, "encode", "--to", "csv", str(results)],
        capture_output=True,
        check=True,
        text=True,
        timeout=120,
    ).stdout
    hits = bench_report.parse_vegeta_csv(encoded.splitlines())
    by_status, by_code, transport = bench_report.statuses(hits)
    latency_ms = bench_report.latency_summary_ms(hits)
    span_ns = int(report.get("duration", 0)) + int(report.get("wait", 0))
    achieved = float(report.get("rate", 0.0))
    workers, max_workers = worker_limits(target_rate)
    timeouts = sum(n for error, n in transport.items() if "timeout" in error.lower())
    return {
        "requests": len(hits),
        "duration_us": span_ns / 1000,
        "latency_us": {k: v * 1000 for k, v in latency_ms.items()},
        "statuses": {k: v for k, v in by_status.items() if k != "0"},
        "codes": {k: v for k, v in by_code.items() if k != "none"},
        "socket_errors": {"timeout": timeouts, "other": sum(transport.values()) - timeouts},
        "pacing": "open loop (vegeta)",
        "target_rate": target_rate,
        "open_loop": {
            "generator": f"vegeta {VEGETA_MODULE.rsplit('@', 1)[1]}",
            "achieved_rate": round(achieved, 1),
            "throughput": round(float(report.get("throughput", 0.0)), 1),
            "generator_capped": achieved < RATE_SHORTFALL * target_rate,
            "workers": workers,
            "max_workers": max_workers,
            "transport_errors": transport,
            "results": str(results),
        },
        "timeline": bench_report.timeline(hits),
    }
