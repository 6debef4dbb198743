"""Before/after table of two ``make bench`` results (Markdown, for docs/performance.md).

Usage: python scripts/bench_compare.py BEFORE.json AFTER.json

Each phase present in both files gets one row: requests/s, p50 / p99 latency, service
CPU per request, SQL statements per request and peak RSS per worker, before -> after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _phases(path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    data = json.loads(Path(path).read_text())
    return data, {phase["phase"]: phase for phase in data["phases"]}


def _cell(before: float | str, after: float | str) -> str:
    return f"{before} → **{after}**"


def _statements(phase: dict[str, Any]) -> float | str:
    return phase["statements"]["per_request"] if phase.get("statements") else "-"


def render(before_path: str, after_path: str) -> str:
    """The Markdown table and a line on each run's machine state."""
    before_run, before = _phases(before_path)
    after_run, after = _phases(after_path)
    lines = [
        "| phase | load | req/s | p50 ms | p99 ms | errors | service CPU ms/req | SQL/req "
        "| peak RSS/worker MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            continue
        lines.append(
            f"| {name} | {new['load']} | {_cell(old['rps'], new['rps'])} "
            f"| {_cell(old['latency_ms']['p50'], new['latency_ms']['p50'])} "
            f"| {_cell(old['latency_ms']['p99'], new['latency_ms']['p99'])} "
            f"| {_cell(old['errors'], new['errors'])} "
            f"| {_cell(old['app_cpu_ms_per_request'], new['app_cpu_ms_per_request'])} "
            f"| {_cell(_statements(old), _statements(new))} "
            f"| {_cell(old['peak_rss_mb_per_worker'], new['peak_rss_mb_per_worker'])} |"
        )
    for label, run in (("before", before_run), ("after", after_run)):
        machine = run["machine"]
        others = [p["other_busy_cores"] for p in run["phases"]]
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
