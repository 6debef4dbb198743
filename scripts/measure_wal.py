"""Measure PostgreSQL's share of a payment: WAL bytes, where they go, CPU and statements.

Starts the service as production runs it (``uvicorn app.main:create_app --factory
--workers 2``, ``APP_ENV=production``, MockServer as the bank and Kafka on, tracing and
metrics off) on a database of its own (``WAL_DB``, default ``payments_wal``: dropped,
recreated and migrated to ``WAL_REVISION``, default ``head``), sends payments with
``wrk`` and ``scripts/bench/payments.lua`` (the bench's body, a fresh Idempotency-Key on
every POST) for ``WAL_ROUNDS`` rounds, and for each round reports:

* WAL bytes per payment: the ``pg_current_wal_lsn()`` delta over the round, divided by the
  payments the database recorded (rows of ``transactions``);
* where they go (``pg_walinspect``): by resource manager and record type
  (``pg_get_wal_stats``), and by relation -- table, index, TOAST -- from the first block
  reference of each record (``pg_get_wal_records_info``, relfilenodes mapped to names);
  the full-page-image share of both;
* PostgreSQL CPU per payment (utime + stime of the postmaster's process tree, from /proc,
  as scripts/bench.py measures it) and the service's;
* SQL statements per payment (``pg_stat_statements`` deltas for this database: sent by the
  service, and nested ones such as foreign-key checks);
* checkpoints (``pg_stat_bgwriter``), and per hot table the inserts, updates, HOT updates,
  dead tuples, autovacuum and autoanalyze runs (``pg_stat_user_tables``) during the round.

A physical replication slot (``measure_wal``, dropped at the end) keeps the round's WAL
from being recycled until it is inspected. On a cluster others use, ``pg_current_wal_lsn``
deltas and PostgreSQL's CPU include their work: run it on a private stack (docs/
performance.md, "Running the drills on a shared machine"), e.g. a PostgreSQL alone on
another port while MockServer and Kafka stay the shared ones::

    POSTGRES_PORT=15433 STACK_SCRIPT=$PWD/.bench/walstack/scripts/stack.sh \\
        timeout 900 uv run --frozen python scripts/measure_wal.py

The relation breakdown counts only this database's relations, so it stays right on a
shared cluster. Results: a table on stdout and ``.bench/wal-<label>.json``.

Environment (all optional): WAL_DB=payments_wal  WAL_REVISION=head  WAL_ROUNDS=3
WAL_DURATION=20 (s per round)  WAL_RATE=150 (payments/s; 0 = as fast as it goes)
WAL_CONNECTIONS=32  WAL_WORKERS=2  WAL_WARMUP=5 (s, unmeasured)  WAL_LABEL=run
WAL_PREFILL=0 (payments inserted by SQL before the rounds, for realistic index sizes)
WAL_CHECKPOINT=0 (1: a CHECKPOINT before every round, to measure the full-page images that
follow one when full_page_writes is on, as in production)
WAL_SETUP_SQL= (SQL run as the superuser after the migrations, for experiments, e.g.
"ALTER TABLE idempotency_keys SET (fillfactor = 70)")
POSTGRES_PORT=5432  KAFKA_PORT=9092  MOCKSERVER_PORT=1080  STACK_SCRIPT=scripts/stack.sh
BENCH_OUT=.bench
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench
import psycopg2
from bench import (
    LUA_DIR,
    REPO,
    AppServer,
    BenchDatabase,
    create_merchant,
    env_float,
    env_str,
    log,
    out_dir,
    production_secrets,
    service_env,
    tree_cpu_seconds,
)

bench.LOG_PREFIX[0] = "measure_wal"
SLOT = "measure_wal"
HOT_TABLES = (
    "transactions",
    "idempotency_keys",
    "outbox_events",
    "audit_log",
    "refunds",
)
MERCHANT = "merchant_wal"


# ------------------------------------------------------------------------ processes


def machine_busy() -> tuple[int, int]:
    """(total, busy) jiffies over all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])
    return total, total - values[3] - values[4]


def postmaster_pid(port: int) -> int | None:
    """The pid of the postmaster listening on ``port`` (from the stack's postmaster.pid)."""
    script = Path(env_str("STACK_SCRIPT", str(REPO / "scripts" / "stack.sh")))
    try:
        pid = int((script.parent.parent / ".stack/pg/data/postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


# ------------------------------------------------------------------------- database


class Database:
    """The measured database on the stack's PostgreSQL."""

    def __init__(self, name: str, port: int) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name must be a plain lower-case identifier: {name}")
        self.name = name
        self.port = port
        self.url = f"postgresql+asyncpg://payments@127.0.0.1:{port}/{name}"
        self._connections: dict[str, Any] = {}

    def connect(self, *, dbname: str | None = None, user: str = "postgres") -> Any:
        """A psycopg2 connection in autocommit (trust auth on the local stack)."""
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=user,
            dbname=dbname or self.name,
            connect_timeout=5,
            application_name="measure_wal",
        )
        conn.autocommit = True
        return conn

    def query(self, statement: str, params: Any = None, *, dbname: str | None = None) -> Any:
        """All rows of one statement, on a connection kept open (a new backend per query
        would add its own fork and warm-up to PostgreSQL's CPU in the window)."""
        name = dbname or self.name
        conn = self._connections.get(name)
        if conn is None or conn.closed:
            conn = self._connections[name] = self.connect(dbname=name)
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        """Close the kept connections."""
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def recreate(self, env: dict[str, str], revision: str) -> None:
        """Drop, create (owned by ``payments``), migrate, add the inspection extensions."""
        self.close()
        BenchDatabase(self.name, self.port).recreate()
        subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", revision],
            cwd=out_dir(),
            env=env | {"DATABASE_URL": self.url},
            check=True,
            capture_output=True,
        )
        for extension in ("pg_stat_statements", "pg_walinspect"):
            self.query(f"CREATE EXTENSION IF NOT EXISTS {extension}")

    def snapshot(self) -> dict[str, Any]:
        """Counters whose deltas over a round are reported."""
        lsn = self.query("SELECT pg_current_wal_lsn()::text")[0][0]
        statements = {
            (r[0] or 0, r[1], bool(r[2])): (r[3], int(r[4]))
            for r in self.query(
                "SELECT s.queryid, s.userid, s.toplevel, s.query, s.calls FROM"
                " pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE d.datname = current_database()"
            )
            if "pg_stat_statements" not in r[3] and "pg_walinspect" not in r[3]
        }
        bgwriter = self.query(
            "SELECT checkpoints_timed, checkpoints_req, buffers_checkpoint, buffers_backend,"
            " buffers_clean FROM pg_stat_bgwriter"
        )[0]
        tables = {
            r[0]: {
                "ins": r[1],
                "upd": r[2],
                "hot_upd": r[3],
                "del": r[4],
                "dead": r[5],
                "autovacuum": r[6],
                "autoanalyze": r[7],
            }
            for r in self.query(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_dead_tup,"
                " autovacuum_count, autoanalyze_count FROM pg_stat_user_tables"
                " WHERE relname = ANY(%s)",
                (list(HOT_TABLES),),
            )
        }
        payments = self.query("SELECT count(*) FROM transactions", dbname=self.name)[0][0]
        # Sessions opened on this database: a pool that opens and closes connections under
        # load makes PostgreSQL fork and warm up a backend each time.
        sessions = self.query(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        )[0][0]
        return {
            "sessions": int(sessions),
            "lsn": lsn,
            "statements": statements,
            "bgwriter": bgwriter,
            "tables": tables,
            "payments": int(payments),
        }

    def relation_names(self) -> dict[int, str]:
        """relfilenode -> relation name (with its kind) for this database."""
        rows = self.query(
            "SELECT pg_relation_filenode(c.oid), c.relname, c.relkind,"
            " coalesce(t.relname, '') FROM pg_class c"
            " LEFT JOIN pg_class t ON c.relkind = 't' AND t.reltoastrelid = c.oid"
            " WHERE pg_relation_filenode(c.oid) IS NOT NULL"
        )
        names = {}
        for filenode, name, kind, owner in rows:
            if kind == "t":
                name = f"toast of {owner}"
            elif kind == "i" and name.startswith("pg_toast_"):
                name = f"toast index {name}"
            names[int(filenode)] = name + (" (index)" if kind == "i" else "")
        return names

    def wal_breakdown(self, start: str, end: str) -> dict[str, Any]:
        """The WAL between two LSNs: by record type and by relation of this database."""
        by_type = [
            {
                "record_type": r[0],
                "count": int(r[1]),
                "record_bytes": int(r[2]),
                "fpi_bytes": int(r[3]),
                "combined_bytes": int(r[4]),
            }
            for r in self.query(
                'SELECT "resource_manager/record_type", count, record_size, fpi_size, combined_size'
                " FROM pg_get_wal_stats(%s::pg_lsn, %s::pg_lsn, true)"
                " WHERE count > 0 ORDER BY combined_size DESC",
                (start, end),
            )
        ]
        oid = self.query("SELECT oid FROM pg_database WHERE datname = current_database()")[0][0]
        rows = self.query(
            "SELECT (m)[1]::oid AS db, (m)[2]::oid AS filenode, resource_manager,"
            " count(*), sum(record_length), sum(fpi_length)"
            " FROM (SELECT regexp_match(block_ref, 'rel \\d+/(\\d+)/(\\d+)') AS m,"
            "   resource_manager, record_length, fpi_length"
            "   FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)) r"
            " GROUP BY 1, 2, 3",
            (start, end),
        )
        names = self.relation_names()
        relations: dict[str, dict[str, int]] = defaultdict(
            lambda: {"records": 0, "bytes": 0, "fpi_bytes": 0}
        )
        for db, filenode, manager, count, length, fpi in rows:
            if db is None:
                label = f"no relation ({manager})"
            elif int(db) != int(oid):
                label = "other databases" if int(db) else "shared catalogs"
            else:
                label = names.get(int(filenode), f"relfilenode {filenode}")
            relations[label]["records"] += int(count)
            relations[label]["bytes"] += int(length or 0)
            relations[label]["fpi_bytes"] += int(fpi or 0)
        return {
            "by_record_type": by_type,
            "by_relation": dict(sorted(relations.items(), key=lambda kv: -kv[1]["bytes"])),
        }

    def settings(self) -> dict[str, str]:
        """The server settings that shape WAL volume and checkpoints."""
        names = [
            "full_page_writes",
            "fsync",
            "synchronous_commit",
            "wal_level",
            "wal_compression",
            "checkpoint_timeout",
            "max_wal_size",
            "autovacuum_vacuum_scale_factor",
            "autovacuum_vacuum_insert_scale_factor",
            "shared_buffers",
        ]
        rows = self.query(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", (names,)
        )
        return {r[0]: f"{r[1]}{r[2] or ''}" for r in rows}

    def indexes(self) -> dict[str, list[str]]:
        """Index names per hot table."""
        found: dict[str, list[str]] = defaultdict(list)
        for table, index in self.query(
            "SELECT tablename, indexname FROM pg_indexes WHERE tablename = ANY(%s) ORDER BY 1, 2",
            (list(HOT_TABLES),),
        ):
            found[table].append(index)
        return dict(found)

    def prefill(self, count: int) -> None:
        """Insert ``count`` payments by SQL (index sizes of a table with some history)."""
        log(f"prefill: {count} payments by SQL")
        self.query(
            """
            INSERT INTO transactions (transaction_id, merchant_id, amount_minor, currency,
              status, payment_method, card_brand, card_last4, card_exp_month,
              card_exp_year, card_fingerprint, card_ciphertext, authorization_code,
              description, metadata, created_at, updated_at, captured_minor)
            SELECT 'txn_' || md5(random()::text || g), %(merchant)s, 2500, 'USD',
              (ARRAY['captured', 'captured', 'captured', 'declined'])[1 + g %% 4],
              'credit_card', 'visa', '4242', 12, 2030, md5(g::text) || md5(g::text),
              'v1.k.' || md5(g::text), 'AUTH01', 'prefill', jsonb_build_object('run', 'prefill'),
              now() - make_interval(secs => (%(count)s - g) * 0.5),
              now() - make_interval(secs => (%(count)s - g) * 0.5), 2500
            FROM generate_series(1, %(count)s) g
            """,
            {"merchant": MERCHANT, "count": count},
            dbname=self.name,
        )
        self.query("VACUUM ANALYZE", dbname=self.name)


# -------------------------------------------------------------------------- service


def wal_service_env(database_url: str) -> dict[str, str]:
    """Production-like settings with fresh secrets, MockServer as the bank, Kafka on."""
    return service_env(
        database_url=database_url,
        bank_url=f"http://127.0.0.1:{env_str('MOCKSERVER_PORT', '1080')}",
        kafka=f"127.0.0.1:{env_str('KAFKA_PORT', '9092')}",
        secrets_env=production_secrets(),
    )


def run_wrk(url: str, *, api_key: str, run_id: str, duration_s: float, rate: float) -> None:
    """Payments with wrk and the bench's Lua script (a fresh Idempotency-Key each)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is missing (apt-get install wrk, or run make bench once)")
    connections = env_str("WAL_CONNECTIONS", "32")
    env = os.environ | {
        "BENCH_API_KEY": api_key,
        "BENCH_MERCHANT": MERCHANT,
        "BENCH_RUN_ID": run_id,
        "BENCH_IDEMPOTENCY": "1",
        "BENCH_RATE": f"{rate:g}",
        "BENCH_THREADS": "1",
        "BENCH_CONNECTIONS": connections,
    }
    command = [wrk, "-t", "1", "-c", connections, "-d", f"{duration_s:g}s", "--timeout", "15s"]
    command += ["-s", str(LUA_DIR / "payments.lua"), url]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stdout}\n{result.stderr}")
    summary = next(
        (line for line in result.stdout.splitlines() if line.startswith("BENCH_JSON ")), None
    )
    if summary:
        data = json.loads(summary.removeprefix("BENCH_JSON "))
        errors = {k: v for k, v in data.get("statuses", {}).items() if not k.startswith("2")}
        if errors:
            log(f"non-2xx answers: {errors}")


# -------------------------------------------------------------------------- rounds


def wait_quiet(db: Database, service: AppServer, *, settle_s: float = 2.0) -> None:
    """Let requests still in flight finish (no new payment row for ``settle_s``)."""
    last = -1
    while True:
        count = db.query("SELECT count(*) FROM transactions", dbname=db.name)[0][0]
        if count == last:
            return
        last = count
        time.sleep(settle_s)


def statement_figures(
    before: dict[Any, tuple[str, int]], after: dict[Any, tuple[str, int]], payments: int
) -> dict[str, Any]:
    """Statements per payment: sent by the service (top level) and nested, the busiest."""
    per = max(payments, 1)
    rows = []
    for key, (query, calls) in after.items():
        delta = calls - before.get(key, (query, 0))[1]
        if delta > 0:
            rows.append((key[2], " ".join(query.split()), delta))
    sent = sum(c for top, _, c in rows if top)
    nested = sum(c for top, _, c in rows if not top)
    return {
        "sent_per_payment": round(sent / per, 2),
        "nested_per_payment": round(nested / per, 2),
        "top": [
            {"toplevel": top, "per_payment": round(c / per, 3), "query": q[:160]}
            for top, q, c in sorted(rows, key=lambda r: -r[2])[:12]
        ],
    }


def round_figures(
    db: Database,
    before: dict[str, Any],
    after: dict[str, Any],
    cpu: dict[str, float],
    seconds: float,
) -> dict[str, Any]:
    """One round's figures per payment."""
    payments = after["payments"] - before["payments"]
    per = max(payments, 1)
    wal = int(db.query("SELECT %s::pg_lsn - %s::pg_lsn", (after["lsn"], before["lsn"]))[0][0])
    breakdown = db.wal_breakdown(before["lsn"], after["lsn"])
    fpi = sum(r["fpi_bytes"] for r in breakdown["by_record_type"])
    combined = sum(r["combined_bytes"] for r in breakdown["by_record_type"]) or 1
    b0, b1 = before["bgwriter"], after["bgwriter"]
    tables = {}
    for name, now in after["tables"].items():
        then = before["tables"].get(name, dict.fromkeys(now, 0))
        delta = {k: now[k] - then[k] for k in now if k != "dead"}
        tables[name] = delta | {
            "dead_after": now["dead"],
            "hot_share": round(delta["hot_upd"] / delta["upd"], 3) if delta["upd"] else None,
        }
    return {
        "payments": payments,
        "seconds": round(seconds, 1),
        "payments_per_s": round(payments / seconds, 1) if seconds else 0.0,
        "wal_bytes": wal,
        "wal_bytes_per_payment": round(wal / per),
        "fpi_share": round(fpi / combined, 3),
        "postgres_cpu_ms_per_payment": round(cpu["postgres"] * 1000 / per, 3),
        "service_cpu_ms_per_payment": round(cpu["service"] * 1000 / per, 3),
        "machine_busy_cores": round(cpu["busy_cores"], 2),
        "sessions_opened": after["sessions"] - before["sessions"],
        "statements": statement_figures(before["statements"], after["statements"], payments),
        "checkpoints": {
            "timed": b1[0] - b0[0],
            "requested": b1[1] - b0[1],
            "buffers_written": b1[2] - b0[2],
            "backend_buffers_written": b1[3] - b0[3],
        },
        "tables": tables,
        "wal_by_record_type_per_payment": [
            {
                "record_type": r["record_type"],
                "records": round(r["count"] / per, 2),
                "bytes": round(r["combined_bytes"] / per),
                "fpi_bytes": round(r["fpi_bytes"] / per),
            }
            for r in breakdown["by_record_type"][:15]
        ],
        "wal_by_relation_per_payment": {
            name: {
                "records": round(v["records"] / per, 2),
                "bytes": round(v["bytes"] / per),
                "fpi_bytes": round(v["fpi_bytes"] / per),
            }
            for name, v in breakdown["by_relation"].items()
            if v["bytes"] / per >= 1
        },
    }


def measure_round(
    db: Database, service: AppServer, *, api_key: str, run_id: str, pg_pid: int | None
) -> dict[str, Any]:
    """Send payments for one round and measure it."""
    duration = env_float("WAL_DURATION", 20)
    if env_str("WAL_CHECKPOINT", "0") == "1":
        # The round starts right after a checkpoint: with full_page_writes on, the first
        # change of every page writes a full image of it (the post-checkpoint WAL spike).
        db.query("CHECKPOINT")
    before = db.snapshot()
    machine0, pg0, app0, t0 = (
        machine_busy(),
        tree_cpu_seconds(pg_pid),
        service.cpu_seconds(),
        time.monotonic(),
    )
    run_wrk(
        service.base_url,
        api_key=api_key,
        run_id=run_id,
        duration_s=duration,
        rate=env_float("WAL_RATE", 150),
    )
    load_s = time.monotonic() - t0
    wait_quiet(db, service)
    machine1, pg1, app1, t1 = (
        machine_busy(),
        tree_cpu_seconds(pg_pid),
        service.cpu_seconds(),
        time.monotonic(),
    )
    after = db.snapshot()
    busy = (machine1[1] - machine0[1]) / max(machine1[0] - machine0[0], 1) * (os.cpu_count() or 1)
    cpu = {"postgres": pg1 - pg0, "service": app1 - app0, "busy_cores": busy}
    figures = round_figures(db, before, after, cpu, t1 - t0)
    # The rate while wrk sent (the window above also holds the wait for stragglers).
    figures["payments_per_s"] = round(figures["payments"] / load_s, 1)
    return figures


# -------------------------------------------------------------------------- report


def render(report: dict[str, Any]) -> str:
    """The rounds side by side, then the first round's breakdowns."""
    rounds = report["rounds"]
    lines = [
        f"# WAL per payment -- {report['label']} (revision {report['revision']},"
        f" {report['started_at']})",
        "",
        "| round | payments | /s | WAL B/payment | FPI share | PG CPU ms/payment |"
        " service CPU ms/payment | sent stmts/payment | nested | checkpoints | sessions opened"
        " | busy cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(rounds, 1):
        cp = r["checkpoints"]
        lines.append(
            f"| {i} | {r['payments']} | {r['payments_per_s']} | {r['wal_bytes_per_payment']} |"
            f" {r['fpi_share']:.1%} | {r['postgres_cpu_ms_per_payment']} |"
            f" {r['service_cpu_ms_per_payment']} | {r['statements']['sent_per_payment']} |"
            f" {r['statements']['nested_per_payment']} | {cp['timed']}+{cp['requested']} |"
            f" {r['sessions_opened']} | {r['machine_busy_cores']} |"
        )
    median = report["median"]
    lines += [
        "",
        f"median: {median['wal_bytes_per_payment']} WAL bytes/payment,"
        f" {median['postgres_cpu_ms_per_payment']} ms PostgreSQL CPU/payment",
        "",
        "## Hot tables during the rounds (sum)",
        "",
        "| table | inserts | updates | HOT updates | deletes | autovacuum | autoanalyze |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in HOT_TABLES:
        sums = {
            k: sum(r["tables"].get(name, {}).get(k, 0) for r in rounds)
            for k in ("ins", "upd", "hot_upd", "del", "autovacuum", "autoanalyze")
        }
        lines.append(
            f"| {name} | {sums['ins']} | {sums['upd']} | {sums['hot_upd']} | {sums['del']} |"
            f" {sums['autovacuum']} | {sums['autoanalyze']} |"
        )
    last = rounds[-1]
    lines += ["", "## WAL by relation, last round, per payment", ""]
    lines += ["| relation | records | bytes | FPI bytes |", "| --- | --- | --- | --- |"]
    for name, v in last["wal_by_relation_per_payment"].items():
        lines.append(f"| {name} | {v['records']} | {v['bytes']} | {v['fpi_bytes']} |")
    lines += ["", "## WAL by record type, last round, per payment", ""]
    lines += ["| record type | records | bytes | FPI bytes |", "| --- | --- | --- | --- |"]
    for r in last["wal_by_record_type_per_payment"]:
        lines.append(f"| {r['record_type']} | {r['records']} | {r['bytes']} | {r['fpi_bytes']} |")
    lines += ["", "## Statements per payment, last round", ""]
    for s in last["statements"]["top"]:
        lines.append(f"- {s['per_payment']} {'' if s['toplevel'] else '(nested) '}{s['query']}")
    return "\n".join(lines)


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    """The median of one figure over the rounds."""
    values = sorted(r[key] for r in rounds)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def main() -> int:
    """Prepare, warm up, measure the rounds, report."""
    port = int(env_str("POSTGRES_PORT", "5432"))
    db = Database(env_str("WAL_DB", "payments_wal"), port)
    revision = env_str("WAL_REVISION", "head")
    label = env_str("WAL_LABEL", "run")
    env = wal_service_env(db.url)
    log(f"database {db.name} on :{port}: recreate, alembic upgrade {revision}")
    db.recreate(env, revision)
    api_key = "sk_wal_" + secrets.token_hex(20)
    create_merchant(env, MERCHANT, api_key)
    prefill = int(env_float("WAL_PREFILL", 0))
    if prefill:
        db.prefill(prefill)
    experiment = env_str("WAL_SETUP_SQL", "")
    if experiment:
        log(f"experiment: {experiment}")
        db.query(experiment)
    pg_pid = postmaster_pid(port)
    if pg_pid is None:
        log("postmaster not found under STACK_SCRIPT's .stack: PostgreSQL CPU not measured")
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    service = AppServer(
        env=env,
        workers=int(env_float("WAL_WORKERS", 2)),
        log_path=out_dir() / "measure-wal-app.log",
    )
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    rounds = []
    with contextlib.suppress(psycopg2.Error):
        db.query("SELECT pg_drop_replication_slot(%s)", (SLOT,))
    db.query("SELECT pg_create_physical_replication_slot(%s, true)", (SLOT,))
    try:
        service.start()
        warmup = env_float("WAL_WARMUP", 5)
        if warmup > 0:
            run_wrk(
                service.base_url,
                api_key=api_key,
                run_id=f"{run_id}-warmup",
                duration_s=warmup,
                rate=env_float("WAL_RATE", 150),
            )
            wait_quiet(db, service)
        for number in range(1, int(env_float("WAL_ROUNDS", 3)) + 1):
            figures = measure_round(
                db, service, api_key=api_key, run_id=f"{run_id}-{number}", pg_pid=pg_pid
            )
            log(
                f"round {number}: {figures['payments']} payments,"
                f" {figures['wal_bytes_per_payment']} WAL B/payment,"
                f" PG CPU {figures['postgres_cpu_ms_per_payment']} ms/payment"
            )
            rounds.append(figures)
            # Free the inspected WAL: the slot keeps only what the next round needs.
            db.query("SELECT pg_drop_replication_slot(%s)", (SLOT,))
            db.query("SELECT pg_create_physical_replication_slot(%s, true)", (SLOT,))
    finally:
        service.stop()
        with contextlib.suppress(psycopg2.Error):
            db.query("SELECT pg_drop_replication_slot(%s)", (SLOT,))
    report = {
        "label": label,
        "revision": revision,
        "setup_sql": experiment,
        "checkpoint_before_each_round": env_str("WAL_CHECKPOINT", "0") == "1",
        "started_at": started_at,
        "database": db.name,
        "port": port,
        "rate": env_float("WAL_RATE", 150),
        "settings": db.settings(),
        "indexes": db.indexes(),
        "median": {
            key: median_of(rounds, key)
            for key in (
                "wal_bytes_per_payment",
                "postgres_cpu_ms_per_payment",
                "service_cpu_ms_per_payment",
                "payments_per_s",
            )
        },
        "rounds": rounds,
    }
    path = out_dir() / f"wal-{label}.json"
    path.write_text(json.dumps(report, indent=2))
    print(render(report))
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
