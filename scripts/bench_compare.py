"""Before/after tables of two ``make bench`` results (Markdown, for docs/performance.md).

Usage: python scripts/bench_compare.py BEFORE.json AFTER.json
       (``make bench-compare BEFORE=a.json AFTER=b.json``)

Every phase of either file gets one row, before -> after ("-" where a run has no such
phase or figure): requests/s, p50 / p99 latency, errors, service CPU, PostgreSQL CPU,
WAL bytes and SQL statements (sent by the service / executed by PostgreSQL) per request
and peak RSS per worker. Open-loop phases get a second table (target and achieved rates,
2xx throughput, latency percentiles), then issue 17's targets, evaluated on both runs
from their phases, and a line on each run's machine state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import bench_report

MISSING = "-"


def _phases(path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    data = json.loads(Path(path).read_text())
    return data, {phase["phase"]: phase for phase in data["phases"]}


def _get(phase: dict[str, Any] | None, *keys: str) -> Any:
    """A nested figure of a phase, or None."""
    value: Any = phase
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def _pg_cpu(phase: dict[str, Any] | None) -> Any:
    value = _get(phase, "pg_cpu_ms_per_request")
    if value is None and _get(phase, "deps_cpu_ms_per_request", "postgres") is not None:
        # Results from before the per-database figure: the whole server's CPU.
        return f"{phase['deps_cpu_ms_per_request']['postgres']}*"  # type: ignore[index]
    return value


def cell(before: Any, after: Any) -> str:
    """'before → **after**', a dash for a missing side."""
    left = MISSING if before is None else before
    right = MISSING if after is None else after
    return f"{left} → **{right}**"


COLUMNS: tuple[tuple[str, Any], ...] = (
    ("req/s", lambda p: _get(p, "rps")),
    ("p50 ms", lambda p: _get(p, "latency_ms", "p50")),
    ("p99 ms", lambda p: _get(p, "latency_ms", "p99")),
    ("errors", lambda p: _get(p, "errors")),
    ("service CPU ms/req", lambda p: _get(p, "app_cpu_ms_per_request")),
    ("PG CPU ms/req", _pg_cpu),
    ("WAL B/req", lambda p: _get(p, "wal", "bytes_per_request")),
    ("statements' WAL B/req", lambda p: _get(p, "wal", "statement_bytes_per_request")),
    ("SQL sent/req", lambda p: _get(p, "statements", "sent_per_request")),
    ("SQL executed/req", lambda p: _get(p, "statements", "per_request")),
    ("peak RSS/worker MB", lambda p: _get(p, "peak_rss_mb_per_worker")),
)

OPEN_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("sent/s", lambda p: _get(p, "open_loop", "achieved_rate")),
    ("2xx/s", lambda p: _get(p, "open_loop", "throughput")),
    ("p50 ms", lambda p: _get(p, "latency_ms", "p50")),
    ("p95 ms", lambda p: _get(p, "latency_ms", "p95")),
    ("p99 ms", lambda p: _get(p, "latency_ms", "p99")),
    ("errors", lambda p: _get(p, "errors")),
)


def _row(name: str, old: Any, new: Any, columns: tuple[tuple[str, Any], ...]) -> str:
    load = _get(new, "load") or _get(old, "load") or MISSING
    cells = " | ".join(cell(get(old), get(new)) for _, get in columns)
    return f"| {name} | {load} | {cells} |"


def _header(columns: tuple[tuple[str, Any], ...]) -> list[str]:
    names = ["phase", "load", *(name for name, _ in columns)]
    return ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]


def _mark(target: dict[str, Any] | None) -> str:
    if target is None or target["met"] is None:
        return MISSING
    return f"{target['reached']} ({'met' if target['met'] else 'missed'})"


def render(before_path: str, after_path: str) -> str:
    """The Markdown tables and a line on each run's machine state."""
    before_run, before = _phases(before_path)
    after_run, after = _phases(after_path)
    names = list(before) + [name for name in after if name not in before]
    lines = _header(COLUMNS)
    lines += [_row(name, before.get(name), after.get(name), COLUMNS) for name in names]
    if any(str(_pg_cpu(p)).endswith("*") for p in [*before.values(), *after.values()]):
        lines += ["", "\\* the whole PostgreSQL server's CPU (older results)."]
    open_names = [n for n in names if "open_loop" in (after.get(n) or before.get(n) or {})]
    if open_names:
        lines += ["", "Open loop (vegeta, fixed arrival rate):", ""]
        lines += _header(OPEN_COLUMNS)
        lines += [_row(n, before.get(n), after.get(n), OPEN_COLUMNS) for n in open_names]
    old_targets = bench_report.targets(
        list(before.values()), workers=_get(before_run, "config", "workers")
    )
    new_targets = bench_report.targets(
        list(after.values()), workers=_get(after_run, "config", "workers")
    )
    lines += ["", "| target (issue 17) | before | after |", "| --- | --- | --- |"]
    for old, new in zip(old_targets, new_targets, strict=True):
        lines.append(f"| {new['target']} | {_mark(old)} | {_mark(new)} |")
    for label, run in (("before", before_run), ("after", after_run)):
        machine = run["machine"]
        others = [p["other_busy_cores"] for p in run["phases"]] or [0]
        lines.append("")
        lines.append(
            f"*{label}*: {run['generated_at']}, HEAD {machine['git_head']} "
            f"(+{machine['app_files_changed_since_head']} files changed under app/), core speed "
            f"{machine['python_loop_ms']['start']}→{machine['python_loop_ms']['end']} ms, "
            f"other busy cores {min(others)} to {max(others)}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(render(sys.argv[1], sys.argv[2]))
