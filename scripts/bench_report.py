"""The figures of open-loop phases and the HTML report of a ``make bench`` run.

Pure functions over vegeta's per-request results (``vegeta encode --to csv``) and over
``.bench/results.json``: exact latency percentiles, per-second buckets (latency of the
requests sent in each second, requests completed in each second) and a self-contained
``report.html`` (inline SVG, no script, no CDN: it opens offline).

Usage: python scripts/bench_report.py [.bench/results.json]  -- (re)writes report.html
next to the JSON from the figures stored in it.
"""

from __future__ import annotations

import base64
import binascii
import csv
import html
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
_CODE = re.compile(rb'"code"\s*:\s*"([A-Za-z0-9_]+)"')
_REQUEST_PREFIX = re.compile(r'^[A-Za-z]+ "[^"]*": ')  # Go's url.Error: Get "url": ...
_SOCKET_PAIR = re.compile(r"(tcp|udp) [0-9.:\[\]]+->[0-9.:\[\]]+")


def error_kind(message: str) -> str:
    """A transport error without its request and socket addresses, so that errors of one
    kind count together ('Get "http://.../txn_1": read tcp a->b: read: connection reset
    by peer' -> 'read tcp: read: connection reset by peer')."""
    return _SOCKET_PAIR.sub(r"\1", _REQUEST_PREFIX.sub("", message.strip())) or "unknown"


@dataclass(frozen=True)
class Hit:
    """One request of an open-loop phase, as vegeta recorded it."""

    sent_ns: int  # when vegeta sent it (unix ns)
    latency_ns: int
    status: int  # 0 when no response (timeout, connection error)
    error: str = ""
    code: str = ""  # the problem+json "code" of a non-2xx answer, when there was one

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return 200 <= self.status < 300


def parse_vegeta_csv(lines: Iterable[str]) -> list[Hit]:
    """Hits from ``vegeta encode --to csv`` (timestamp, code, latency, bytes out, bytes in,
    error, base64 body, attack, seq, method, url, headers)."""
    hits = []
    for row in csv.reader(lines):
        if len(row) < 6 or not row[0].isdigit():
            continue
        code = ""
        status = int(row[1] or 0)
        if not 200 <= status < 300 and len(row) > 6 and row[6]:
            try:
                match = _CODE.search(base64.b64decode(row[6]))
            except (binascii.Error, ValueError):
                match = None
            code = match.group(1).decode() if match else ""
        hits.append(Hit(int(row[0]), int(row[2]), status, row[5], code))
    return hits


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ascending values; 0 if none."""
    if not sorted_values:
        return 0.0
    rank = math.ceil(p / 100 * len(sorted_values))
    return float(sorted_values[min(max(rank, 1), len(sorted_values)) - 1])


def latency_summary_ms(hits: Sequence[Hit]) -> dict[str, float]:
    """min, mean, p50, p90, p95, p99, p99.9 and max latency in ms, over every request
    (an open-loop latency includes the time a request queued before it was served)."""
    values = sorted(h.latency_ns / NS_PER_MS for h in hits)
    if not values:
        return dict.fromkeys(("min", "mean", "p50", "p90", "p95", "p99", "p999", "max"), 0.0)
    out = {"min": values[0], "mean": sum(values) / len(values)}
    for name, p in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("p999", 99.9)):
        out[name] = percentile(values, p)
    out["max"] = values[-1]
    return {k: round(v, 2) for k, v in out.items()}


def statuses(hits: Iterable[Hit]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(requests by HTTP status, "0" for no answer; non-2xx by error code; transport
    errors by message) of a phase."""
    by_status: Counter[str] = Counter()
    by_code: Counter[str] = Counter()
    transport: Counter[str] = Counter()
    for hit in hits:
        by_status[str(hit.status)] += 1
        if not hit.ok:
            by_code[hit.code or "none"] += 1
            if hit.status == 0:
                transport[error_kind(hit.error)] += 1
    return dict(by_status), dict(by_code), dict(transport)


def timeline(hits: Sequence[Hit], *, bucket_s: float = 1.0) -> list[dict[str, float]]:
    """Per ``bucket_s`` from the first request: requests sent, 2xx answers completed (by
    completion time: the achieved throughput), errors sent, and the p50 / p99 latency of
    the requests sent in that bucket (ms)."""
    if not hits:
        return []
    start = min(h.sent_ns for h in hits)
    width = int(bucket_s * NS_PER_S)
    sent: dict[int, list[float]] = {}
    completed: Counter[int] = Counter()
    errors: Counter[int] = Counter()
    for hit in hits:
        index = (hit.sent_ns - start) // width
        sent.setdefault(index, []).append(hit.latency_ns / NS_PER_MS)
        if hit.ok:
            completed[(hit.sent_ns + hit.latency_ns - start) // width] += 1
        else:
            errors[index] += 1
    last = max(max(sent), max(completed, default=0))
    out = []
    for index in range(last + 1):
        latencies = sorted(sent.get(index, []))
        out.append(
            {
                "t": round(index * bucket_s, 3),
                "sent": len(latencies),
                "ok_completed": completed[index],
                "errors": errors[index],
                "p50_ms": round(percentile(latencies, 50), 2),
                "p99_ms": round(percentile(latencies, 99), 2),
            }
        )
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and the largest deviation from it, in % of the median, of a few rounds."""
    if not values:
        return {"median": 0.0, "max_deviation_pct": 0.0}
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    deviation = max(abs(v - median) for v in ordered) / median * 100 if median else 0.0
    return {
        "median": round(median, 1),
        "min": round(ordered[0], 1),
        "max": round(ordered[-1], 1),
        "max_deviation_pct": round(deviation, 1),
    }


def stability(phases: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The spread of payments/s across the full stack's stability rounds, if any ran."""
    rounds = [p for p in phases if p["phase"].startswith("full-payments-round-")]
    if not rounds:
        return None
    rates = [float(p["rps"]) for p in rounds]
    return {"rounds": len(rounds), "rps": rates} | spread(rates)


def tracing_cost(phases: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Throughput lost with tracing on, from the untraced and traced payment phases."""
    by = {p["phase"]: p for p in phases}
    off, on = by.get("full-payments-untraced"), by.get("full-payments-traced")
    if not off or not on or not off["rps"]:
        return None
    return {
        "rps_off": off["rps"],
        "rps_on": on["rps"],
        "cost_pct": round((off["rps"] - on["rps"]) / off["rps"] * 100, 1),
        "cpu_ms_off": off["app_cpu_ms_per_request"],
        "cpu_ms_on": on["app_cpu_ms_per_request"],
    }


def _pg_cpu(phase: dict[str, Any]) -> float | None:
    if "pg_cpu_ms_per_request" in phase:
        return float(phase["pg_cpu_ms_per_request"])
    # Results from before the per-database figure: the whole server's CPU.
    value = phase.get("deps_cpu_ms_per_request", {}).get("postgres")
    return None if value is None else float(value)


def targets(
    phases: Sequence[dict[str, Any]], *, workers: int | None = None
) -> list[dict[str, Any]]:
    """Issue 17's targets next to what a run reached (reported, never asserted).

    ``met`` is None where the run has no figure for a target.
    """
    by = {p["phase"]: p for p in phases}
    rows: list[dict[str, Any]] = []

    def add(target: str, value: float | None, met: bool | None, reached: str) -> None:
        rows.append(
            {
                "target": target,
                "value": value,
                "reached": reached if value is not None else "not measured",
                "met": met if value is not None else None,
            }
        )

    pay = by.get("full-payments-concurrency")
    stmts = (pay or {}).get("statements") or {}
    cpu = pay["app_cpu_ms_per_request"] if pay else None
    add(
        "service CPU <= 1.5 ms per payment (full stack, Idempotency-Key)",
        cpu,
        cpu is not None and cpu <= 1.5,
        f"{cpu} ms",
    )
    rps = pay["rps"] if pay else None
    add(
        f">= 600 payments/s with 2 workers (full stack; {workers or '?'} workers here)",
        rps,
        rps is not None and rps >= 600 and workers in (None, 2),
        f"{rps}/s",
    )
    pg = _pg_cpu(pay) if pay else None
    add("PostgreSQL CPU <= 0.8 ms per payment", pg, pg is not None and pg <= 0.8, f"{pg} ms")
    sent = stmts.get("sent_per_request")
    add(
        "<= 2 SQL statements sent per payment",
        sent,
        sent is not None and sent <= 2,
        f"{sent} sent ({stmts.get('per_request')} executed)",
    )
    reads = by.get("full-reads")
    rcpu = reads["app_cpu_ms_per_request"] if reads else None
    add(
        "reads: <= 0.5 ms service CPU per read",
        rcpu,
        rcpu is not None and rcpu <= 0.5,
        f"{rcpu} ms",
    )
    rrps = reads["rps"] if reads else None
    add("reads: >= 2,500 reads/s", rrps, rrps is not None and rrps >= 2500, f"{rrps}/s")
    open_pay = by.get("full-payments-open")
    p99 = open_pay["latency_ms"]["p99"] if open_pay else None
    if open_pay:
        target_rate = float(open_pay.get("target_rate") or 0)
        sent_rate = open_pay.get("open_loop", {}).get("achieved_rate", open_pay["rps"])
        met = (
            p99 is not None
            and p99 < 50
            and target_rate >= 300
            and not open_pay.get("open_loop", {}).get("generator_capped")
            and open_pay["errors"] == 0
        )
        reached = (
            f"p99 {p99} ms at {target_rate:g}/s (sent at {sent_rate}/s,"
            f" {open_pay['errors']} errors)"
        )
    else:
        met, reached = False, ""
    add("p99 < 50 ms at 300 payments/s open loop (MockServer + Kafka)", p99, met, reached)
    cost = tracing_cost(phases)
    pct = cost["cost_pct"] if cost else None
    add(
        "tracing on (default sample rate) costs <= 15 % of throughput",
        pct,
        pct is not None and pct <= 15,
        f"{pct} % ({cost['rps_off']} -> {cost['rps_on']} payments/s"
        + ("; faster traced: noise, not a measurement)" if pct is not None and pct < 0 else ")")
        if cost
        else "",
    )
    spread_ = stability(phases)
    dev = spread_["max_deviation_pct"] if spread_ else None
    add(
        "payments/s across rounds within +-15 % of the median",
        dev,
        dev is not None and dev <= 15,
        f"+-{dev} % (median {spread_['median']}/s, {spread_['min']}-{spread_['max']},"
        f" {spread_['rounds']} rounds)"
        if spread_
        else "",
    )
    floor = by.get("floor-payments-concurrency")
    ratio = None
    if pay and floor and floor["app_cpu_ms_per_request"]:
        ratio = round(pay["app_cpu_ms_per_request"] / floor["app_cpu_ms_per_request"], 2)
    add(
        "payments within 2x of the bare asyncio floor (service CPU per payment)",
        ratio,
        ratio is not None and ratio <= 2,
        f"{ratio}x ({pay['app_cpu_ms_per_request']} vs {floor['app_cpu_ms_per_request']} ms;"
        f" {pay['rps']} vs {floor['rps']} payments/s)"
        if pay and floor and ratio is not None
        else "",
    )
    return rows


def render_targets(rows: Sequence[dict[str, Any]]) -> str:
    """The targets as a plain-text table (stdout)."""
    width = max((len(r["target"]) for r in rows), default=10)
    lines = [f"{'target (issue 17)':<{width}}  {'met':<6} reached", "-" * (width + 40)]
    for r in rows:
        met = {True: "yes", False: "no", None: "-"}[r["met"]]
        lines.append(f"{r['target']:<{width}}  {met:<6} {r['reached']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ SVG

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def axis_ticks(value: float, *, count: int = 4) -> list[float]:
    """Round ticks from 0 to at or above ``value``, about ``count`` steps of 1, 2 or 5
    times a power of ten."""
    step = _nice_max(value / count) if value > 0 else 1.0
    ticks = [0.0]
    while ticks[-1] < value:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks if len(ticks) > 1 else [0.0, step]


def _fmt(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value:,.0f}"


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    y_label: str,
    x_label: str = "s since the phase started",
    width: int = 640,
    height: int = 240,
    bars: str | None = None,
) -> str:
    """An inline SVG chart of a few (x, y) series; the series named ``bars`` is drawn as
    bars (per-second counts), the others as lines."""
    left, right, top, bottom = 76, 120, 28, 40
    points = [p for values in series.values() for p in values]
    x_ticks = axis_ticks(max((x for x, _ in points), default=0.0) + 1)
    y_ticks = axis_ticks(max((y for _, y in points), default=0.0))
    x_max, y_max = x_ticks[-1], y_ticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + x / x_max * plot_w

    def py(y: float) -> float:
        return top + plot_h - min(y, y_max) / y_max * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="16" class="title">{html.escape(title)}</text>',
    ]
    for y in y_ticks:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            f'class="grid"/><text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">'
            f"{_fmt(y)}</text>"
        )
    for x in x_ticks:
        parts.append(
            f'<text x="{px(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_fmt(x)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
        f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    for n, (name, values) in enumerate(series.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        if name == bars:
            bar_w = max(1.0, plot_w / x_max * 0.8)
            for x, y in values:
                parts.append(
                    f'<rect x="{px(x):.1f}" y="{py(y):.1f}" width="{bar_w:.1f}" '
                    f'height="{top + plot_h - py(y):.1f}" fill="{colour}" opacity="0.6"/>'
                )
        elif values:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in values)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
        parts.append(
            f'<rect x="{width - right + 10}" y="{top + 16 * n}" width="10" height="10" '
            f'fill="{colour}"/><text x="{width - right + 24}" y="{top + 16 * n + 9}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(items: Sequence[tuple[str, float]], *, title: str, unit: str) -> str:
    """An inline SVG of horizontal bars, one per (label, value)."""
    left, right, row = 230, 90, 20
    width = 760
    height = 30 + row * len(items)
    v_max = max((v for _, v in items), default=1.0) or 1.0
    plot_w = width - left - right
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="4" y="16" class="title">{html.escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = 26 + i * row
        w = value / v_max * plot_w
        parts.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" '
            f'fill="{_COLOURS[0]}"/><text x="{left + w + 4:.1f}" y="{y + 13}">'
            f"{_fmt(round(value, 1))} {html.escape(unit)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------- HTML

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 20px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
svg { display: block; margin: 8px 0 16px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg .title { font-weight: 600; font-size: 13px; }
svg .grid { stroke: #e5e5e5; }
.met { color: #176117; } .missed { color: #a11; }
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def phase_row(phase: dict[str, Any]) -> list[Any]:
    """One phase's headline figures (shared by the HTML and the stdout table)."""
    lat = phase["latency_ms"]
    stmts = phase.get("statements") or {}
    wal = phase.get("wal") or {}
    return [
        phase["phase"],
        phase["load"],
        phase["rps"],
        lat["p50"],
        lat["p99"],
        phase["errors"],
        phase["app_cpu_ms_per_request"],
        phase.get("pg_cpu_ms_per_request", "-"),
        wal.get("bytes_per_request", "-"),
        wal.get("statement_bytes_per_request", "-"),
        wal.get("checkpoints_timed", 0) + wal.get("checkpoints_req", 0) if wal else "-",
        stmts.get("sent_per_request", "-"),
        stmts.get("per_request", "-"),
        phase["peak_rss_mb_per_worker"],
    ]


PHASE_HEADER = (
    "phase",
    "load",
    "req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "service CPU ms/req",
    "PG CPU ms/req",
    "WAL B/req",
    "statements' WAL B/req",
    "checkpoints",
    "SQL sent/req",
    "SQL executed/req",
    "peak RSS/worker MB",
)


def render_html(document: dict[str, Any]) -> str:
    """The whole report of one results.json document."""
    phases = document.get("phases", [])
    machine = document.get("machine", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>make bench report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>make bench</h1>",
        f"<p>{html.escape(str(document.get('generated_at', '')))}, HEAD "
        f"{html.escape(str(machine.get('git_head', '?')))}, "
        f"{machine.get('cores', '?')} cores ({html.escape(str(machine.get('cpu', '')))}), "
        f"run took {document.get('elapsed_s', '?')} s.</p>",
    ]
    if document.get("targets"):
        parts.append("<h2>Targets (issue 17)</h2>")
        rows = []
        for t in document["targets"]:
            met = t.get("met")
            mark = "met" if met else ("missed" if met is False else "")
            rows.append((t["target"], t["reached"], mark))
        table = _table(("target", "reached", ""), rows)
        table = table.replace("<td>met</td>", "<td class='met'>met</td>").replace(
            "<td>missed</td>", "<td class='missed'>missed</td>"
        )
        parts.append(table)
    parts.append("<h2>Phases</h2>")
    parts.append(_table(PHASE_HEADER, (phase_row(p) for p in phases)))
    if phases:
        parts.append(
            bar_chart(
                [(p["phase"], float(p["rps"])) for p in phases],
                title="Throughput per phase (2xx and errors, requests/s)",
                unit="/s",
            )
        )
    for phase in phases:
        points = phase.get("timeline")
        if not points:
            continue
        target = phase.get("target_rate")
        parts.append(f"<h2>{html.escape(phase['phase'])} (open loop, {target}/s)</h2>")
        open_loop = phase.get("open_loop", {})
        behind = "; the generator fell behind" if open_loop.get("generator_capped") else ""
        parts.append(
            f"<p>vegeta sent at {open_loop.get('achieved_rate', '?')}/s "
            f"(target {target}/s{behind}), "
            f"2xx throughput {open_loop.get('throughput', '?')}/s, "
            f"p50 {phase['latency_ms']['p50']} ms, p99 {phase['latency_ms']['p99']} ms, "
            f"errors {phase['errors']}. Raw results: "
            f"<code>{html.escape(str(open_loop.get('results', '')))}</code></p>"
        )
        parts.append(
            line_chart(
                {
                    "p50": [(b["t"], b["p50_ms"]) for b in points if b["sent"]],
                    "p99": [(b["t"], b["p99_ms"]) for b in points if b["sent"]],
                },
                title="Latency of the requests sent in each second",
                y_label="ms",
            )
        )
        parts.append(
            line_chart(
                {
                    "2xx done/s": [(b["t"], b["ok_completed"]) for b in points],
                    "sent/s": [(b["t"], b["sent"]) for b in points],
                    "errors/s": [(b["t"], b["errors"]) for b in points],
                },
                title="Achieved throughput per second",
                y_label="requests/s",
                bars="2xx done/s",
            )
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(results_path: Path) -> Path:
    """Write report.html next to a results.json."""
    document = json.loads(results_path.read_text())
    path = results_path.with_name("report.html")
    path.write_text(render_html(document))
    return path


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else ".bench/results.json")
    print(write_report(source))
