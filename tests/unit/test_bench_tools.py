"""The pure parts of ``make bench``: vegeta results, percentiles and per-second buckets,
the targets table, the HTML report, ``make bench-compare`` and the PostgreSQL figures."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench  # noqa: E402
import bench_compare  # noqa: E402
import bench_openloop  # noqa: E402
import bench_report  # noqa: E402
from bench_report import Hit  # noqa: E402

S = 1_000_000_000
MS = 1_000_000


def csv_line(sent_ns: int, status: int, latency_ns: int, error: str = "", body: bytes = b"") -> str:
    out = io.StringIO()
    row = [sent_ns, status, latency_ns, 120, 300, error, base64.b64encode(body).decode()]
    csv.writer(out).writerow([*row, "phase", 0, "GET", "http://x/", ""])
    return out.getvalue().rstrip("\r\n")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench_report.percentile(values, 50) == 50
    assert bench_report.percentile(values, 99) == 99
    assert bench_report.percentile(values, 99.9) == 100
    assert bench_report.percentile([7.0], 1) == 7
    assert bench_report.percentile([], 99) == 0


def test_vegeta_csv_gives_status_latency_and_the_problem_code_of_errors() -> None:
    lines = [
        csv_line(10 * S, 201, 12 * MS),
        csv_line(10 * S + 1, 409, 3 * MS, "409 Conflict", b'{"code": "idempotency_conflict"}'),
        csv_line(10 * S + 2, 0, 15 * S, 'Post "http://127.0.0.1:9/x": context deadline exceeded'),
        "not,a,result",
    ]
    hits = bench_report.parse_vegeta_csv(lines)
    assert hits == [
        Hit(10 * S, 12 * MS, 201),
        Hit(10 * S + 1, 3 * MS, 409, "409 Conflict", "idempotency_conflict"),
        Hit(10 * S + 2, 15 * S, 0, 'Post "http://127.0.0.1:9/x": context deadline exceeded'),
    ]
    by_status, by_code, transport = bench_report.statuses(hits)
    assert by_status == {"201": 1, "409": 1, "0": 1}
    assert by_code == {"idempotency_conflict": 1, "none": 1}
    assert transport == {"context deadline exceeded": 1}


def test_transport_errors_of_one_kind_count_together() -> None:
    kind = bench_report.error_kind
    assert kind(
        'Get "http://127.0.0.1:1/api/v1/payments/txn_1": read tcp 127.0.0.1:4->127.0.0.1:1:'
        " read: connection reset by peer"
    ) == kind(
        'Get "http://127.0.0.1:1/api/v1/payments/txn_2": read tcp 127.0.0.1:5->127.0.0.1:1:'
        " read: connection reset by peer"
    )
    assert kind("") == "unknown"


def test_timeline_buckets_latency_by_send_second_and_throughput_by_completion() -> None:
    start = 1_000 * S
    hits = [
        Hit(start, 10 * MS, 201),
        Hit(start + S // 2, 30 * MS, 201),
        Hit(start + S - MS, 2 * S, 201),  # sent in second 0, completes in second 2
        Hit(start + S, 50 * MS, 500),
        Hit(start + S + 1, 20 * MS, 201),
    ]
    buckets = bench_report.timeline(hits)
    assert [b["t"] for b in buckets] == [0, 1, 2]
    assert [b["sent"] for b in buckets] == [3, 2, 0]
    assert [b["ok_completed"] for b in buckets] == [2, 1, 1]
    assert [b["errors"] for b in buckets] == [0, 1, 0]
    assert buckets[0]["p50_ms"] == 30
    assert buckets[0]["p99_ms"] == 2000
    assert buckets[2]["p99_ms"] == 0
    assert bench_report.timeline([]) == []


def test_latency_summary_covers_every_request() -> None:
    hits = [Hit(0, ms * MS, 201) for ms in range(1, 201)]
    summary = bench_report.latency_summary_ms(hits)
    assert (summary["min"], summary["p50"], summary["p99"], summary["max"]) == (1, 100, 198, 200)
    assert summary["mean"] == 100.5


def test_spread_is_the_largest_deviation_from_the_median() -> None:
    result = bench_report.spread([100, 90, 110, 100, 120])
    assert result["median"] == 100
    assert result["max_deviation_pct"] == 20
    assert bench_report.spread([90, 110])["median"] == 100


def phase(name: str, **figures: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": name,
        "load": "c=32",
        "rps": 100.0,
        "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": 30.0},
        "errors": 0,
        "app_cpu_ms_per_request": 2.0,
        "pg_cpu_ms_per_request": 1.0,
        "peak_rss_mb_per_worker": 110.0,
        "other_busy_cores": 0.1,
        "statements": {"per_request": 5.0, "sent_per_request": 2.0},
        "wal": {"bytes_per_request": 8000, "statement_bytes_per_request": 7800},
    }
    return base | figures


def open_phase(name: str, p99: float, **figures: Any) -> dict[str, Any]:
    return phase(
        name,
        load="300/s open loop",
        target_rate=300,
        latency_ms={"p50": 5.0, "p95": 20.0, "p99": p99},
        open_loop={"achieved_rate": 299.9, "throughput": 299.0, "generator_capped": False},
        timeline=[
            {"t": 0, "sent": 300, "ok_completed": 299, "errors": 0, "p50_ms": 5, "p99_ms": p99}
        ],
        **figures,
    )


def full_run(*, p99: float = 40.0, traced_rps: float = 90.0) -> list[dict[str, Any]]:
    return [
        phase("full-payments-concurrency", rps=650.0, app_cpu_ms_per_request=1.4),
        *(phase(f"full-payments-round-{n}", rps=rps) for n, rps in enumerate((600, 640, 620), 1)),
        open_phase("full-payments-open", p99),
        phase("full-reads", rps=2600.0, app_cpu_ms_per_request=0.6),
        phase("full-payments-untraced", rps=100.0),
        phase("full-payments-traced", rps=traced_rps),
        phase("floor-payments-concurrency", rps=1300.0, app_cpu_ms_per_request=0.8),
    ]


def test_targets_set_what_was_reached_next_to_issue_17s_goals() -> None:
    rows = {
        row["target"].split(" (")[0]: row for row in bench_report.targets(full_run(), workers=2)
    }
    met = {name: row["met"] for name, row in rows.items()}
    assert met["service CPU <= 1.5 ms per payment"] is True
    assert met[">= 600 payments/s with 2 workers"] is True
    assert met["PostgreSQL CPU <= 0.8 ms per payment"] is False
    assert met["<= 2 SQL statements sent per payment"] is True
    assert met["reads: <= 0.5 ms service CPU per read"] is False
    assert met["reads: >= 2,500 reads/s"] is True
    assert met["p99 < 50 ms at 300 payments/s open loop"] is True
    assert met["tracing on"] is True
    assert rows["tracing on"]["value"] == 10.0
    assert met["payments/s across rounds within +-15 % of the median"] is True
    assert met["payments within 2x of the bare asyncio floor"] is True
    assert rows["payments within 2x of the bare asyncio floor"]["value"] == 1.75


def test_an_open_loop_p99_only_counts_when_the_generator_kept_the_rate() -> None:
    run = full_run()
    run[4]["open_loop"]["generator_capped"] = True
    rows = bench_report.targets(run, workers=2)
    assert next(r for r in rows if r["target"].startswith("p99"))["met"] is False
    slow = bench_report.targets(full_run(p99=51.0), workers=2)
    assert next(r for r in slow if r["target"].startswith("p99"))["met"] is False


def test_targets_without_a_figure_are_not_measured_rather_than_missed() -> None:
    rows = bench_report.targets([phase("sim-payments-concurrency")])
    assert {row["met"] for row in rows} == {None}
    assert {row["reached"] for row in rows} == {"not measured"}
    assert "not measured" in bench_report.render_targets(rows)


def test_html_report_is_self_contained_with_plots_per_open_loop_phase() -> None:
    document = {
        "generated_at": "2026-12-04T10:00:00+00:00",
        "machine": {"git_head": "abc1234", "cores": 2, "cpu": "EPYC"},
        "targets": bench_report.targets(full_run(), workers=2),
        "phases": [*full_run(), open_phase("full-reads-open", 20.0, phase="<b>x</b>")],
    }
    page = bench_report.render_html(document)
    assert "<script" not in page
    assert re.findall(r"https?://[^\s\"'<]+", page) == ["http://www.w3.org/2000/svg"] * page.count(
        "<svg "
    )
    # One throughput bar chart, then latency and throughput charts per open-loop phase.
    assert page.count("<svg ") == 1 + 2 * 2
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page


def test_axis_ticks_are_round_and_cover_the_maximum() -> None:
    assert bench_report.axis_ticks(17) == [0, 5, 10, 15, 20]
    assert bench_report.axis_ticks(0.3) == [0, 0.1, 0.2, 0.3]
    assert bench_report.axis_ticks(0) == [0, 1]


def write_run(path: Path, phases: list[dict[str, Any]]) -> str:
    path.write_text(
        json.dumps(
            {
                "generated_at": "2026-12-04T10:00:00+00:00",
                "config": {"workers": 2},
                "machine": {
                    "git_head": "abc1234",
                    "app_files_changed_since_head": 0,
                    "python_loop_ms": {"start": 100, "end": 110},
                },
                "phases": phases,
            }
        )
    )
    return str(path)


def test_compare_shows_every_phase_of_either_run_and_both_targets_columns(tmp_path: Path) -> None:
    old = phase("full-payments-concurrency", rps=150.0)
    # A result from before this tooling: no PostgreSQL, WAL or sent-statement figures.
    for key in ("pg_cpu_ms_per_request", "wal"):
        del old[key]
    old["statements"] = {"per_request": 4.4}
    old["deps_cpu_ms_per_request"] = {"postgres": 3.9}
    before = write_run(tmp_path / "before.json", [old, phase("full-payments-rate")])
    after = write_run(tmp_path / "after.json", full_run())
    table = bench_compare.render(before, after)
    assert "| full-payments-concurrency | c=32 | 150.0 → **650.0** |" in table
    assert "| 3.9* → **1.0** | - → **8000** | - → **7800** | - → **2.0** | 4.4 → **5.0** |" in table
    assert "| full-payments-rate | c=32 | 100.0 → **-** |" in table
    assert "| full-payments-open | 300/s open loop | - → **299.9** | - → **299.0** |" in table
    assert "| p99 < 50 ms at 300 payments/s open loop (MockServer + Kafka) | - | p99 40.0 ms" in (
        table
    )
    assert (
        "| >= 600 payments/s with 2 workers (full stack; 2 workers here) | 150.0/s (missed) |"
        in (table)
    )


def test_wal_bytes_are_the_lsn_difference_per_request() -> None:
    assert bench.lsn_bytes("1/0") - bench.lsn_bytes("0/FFFFFFFF") == 1
    before = {
        "lsn": "16/B3000000",
        "checkpoints_timed": 3,
        "checkpoints_req": 1,
        "buffers_checkpoint": 9,
    }
    after = {
        "lsn": "16/B3002710",
        "checkpoints_timed": 3,
        "checkpoints_req": 2,
        "buffers_checkpoint": 19,
    }
    delta = bench.wal_delta(before, after, 5)
    assert delta == {
        "bytes": 10_000,
        "bytes_per_request": 2_000,
        "checkpoints_timed": 0,
        "checkpoints_req": 1,
        "buffers_checkpoint": 10,
    }


def test_sent_statements_are_top_level_and_executed_ones_include_fk_checks() -> None:
    insert, check = (1, 10, True), (2, 10, False)
    before = {insert: ("WITH w0 AS (INSERT INTO transactions", 100, 5.0, 800_000)}
    after = {
        insert: ("WITH w0 AS (INSERT INTO transactions", 110, 6.0, 880_000),
        check: ('SELECT 1 FROM ONLY "public"."merchants" x FOR KEY SHARE OF x', 20, 0.2, 0),
    }
    delta = bench.statement_delta(before, after, 7, kind="payments", served=10)
    assert delta["requests_served"] == 10
    assert delta["sent_per_request"] == 1
    assert delta["per_request"] == 3
    assert delta["wal_bytes_per_request"] == 8_000
    # Without a row count: the requests the load generator counted.
    assert bench.statement_delta(before, after, 7, kind="payments")["requests_served"] == 7


@pytest.mark.parametrize(
    ("title", "ours"),
    [
        ("postgres: payments payments_bench 127.0.0.1(41234) idle", True),
        ("postgres: postgres payments_bench 127.0.0.1(41236) SELECT", True),
        ("postgres: payments test_gw0 127.0.0.1(41235) idle", False),
        ("postgres: walwriter ", True),
        ("postgres: checkpointer ", True),
        ("postgres: autovacuum worker payments_bench", True),
        ("postgres: autovacuum worker test_gw1", False),
    ],
)
def test_postgresql_cpu_counts_the_bench_database_and_shared_processes(
    title: str, ours: bool
) -> None:
    assert bench.pg_process_is_ours(title, "payments_bench") is ours


def test_open_loop_targets_carry_their_own_idempotency_key_and_the_lua_body() -> None:
    lines = bench_openloop.target_lines(
        kind="payments",
        base_url="http://127.0.0.1:8000",
        api_key="sk_x",
        merchant="merchant_bench",
        run_id="run1",
        count=3,
    )
    targets = [json.loads(line) for line in lines]
    keys = [t["header"]["Idempotency-Key"][0] for t in targets]
    assert len(set(keys)) == 3
    body = json.loads(base64.b64decode(targets[0]["body"]))
    assert body["card_data"]["card_number"] == "4242424242424242"
    assert body["merchant_id"] == "merchant_bench"
    assert targets[0]["header"]["Authorization"] == ["Bearer sk_x"]
    # The same body as scripts/bench/payments.lua sends.
    lua = (SCRIPTS / "bench" / "payments.lua").read_text()
    for fragment in ('"payment_method":"credit_card"', '"cvv":"123"', '"description":"load test"'):
        assert fragment in lua
        assert fragment.encode() in base64.b64decode(targets[0]["body"])
    reads = bench_openloop.target_lines(
        kind="reads",
        base_url="http://h",
        api_key="k",
        merchant="m",
        run_id="r",
        count=3,
        ids=["a", "b"],
    )
    assert [json.loads(line)["url"] for line in reads] == [
        "http://h/api/v1/payments/a",
        "http://h/api/v1/payments/b",
        "http://h/api/v1/payments/a",
    ]


def test_vegeta_may_hold_a_request_per_worker_for_the_whole_timeout() -> None:
    workers, max_workers = bench_openloop.worker_limits(300)
    assert workers <= max_workers
    assert max_workers >= 300 * bench_openloop.REQUEST_TIMEOUT_S
