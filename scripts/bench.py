"""Load benchmark of the payment service (``make bench``; ``scripts/bench.sh`` runs this).

The service runs the way production runs it: ``uvicorn app.main:create_app --factory``
with ``BENCH_WORKERS`` workers (default 2), ``--no-access-log``, ``APP_ENV=production``
with freshly generated secrets and ``LOG_LEVEL=WARNING``, against a dedicated database
(``BENCH_DB``, default ``payments_bench``: dropped, recreated, ``alembic upgrade head``).
Its dependencies come from ``scripts/stack.sh``; the services this run had to start are
stopped at the end, the others are left alone.

Two modes, to separate the service's own cost from its dependencies':

* **full stack** -- PostgreSQL, MockServer as the bank (``BANK_API_URL``) and Kafka
  (``KAFKA_BOOTSTRAP_SERVERS``): payments at a fixed concurrency (wrk, closed loop: the
  maximum); ``BENCH_ROUNDS`` short rounds of the same (the spread of payments/s); status
  reads, 0.01 partial refunds and listing pages at the fixed concurrency; payments once
  more with tracing off, and right after it on a second service with ddtrace on
  (``DD_TRACE_ENABLED=true``, sending to the stack's test agent at the default sample
  rate; started while the first idles): the tracing cost. Then, each on a fresh service
  (one that could not keep up would still be busy with the backlog in the next phase),
  payments at ``BENCH_OPEN_RATE`` (default 300/s) and reads at
  ``BENCH_OPEN_READS_RATE`` (default 1,500/s) **open loop** (vegeta: a fixed arrival
  rate, latency includes queueing);
* **simulator** -- the in-process bank and no Kafka (events stay in the outbox):
  payments and then listing pages at the fixed concurrency.

* **floor** -- ``scripts/bench_floor.py``, a bare asyncio server doing the least a
  payment needs on the same stack (aiohttp, one asyncpg statement for the payment and
  its outbox row, one pooled aiohttp call to MockServer, one aiokafka ``acks=all`` send),
  under the same wrk payments phase: the service's figures are compared with it.

The wrk-paced phases of earlier runs ("payments-rate": ``BENCH_RATE_FULL`` on the full
stack, ``BENCH_RATE_SIM`` on the simulator) run only when ``BENCH_PHASES`` names them.

The listing phase pages through the thousands of payments the phases before it made:
``GET /api/v1/payments?limit=20`` in turn plain, with ``status=captured``, and with
``starting_after`` one of the captured ids (a cursor deep in the history).

Closed-loop load comes from ``wrk`` with the Lua scripts in ``scripts/bench/`` (see
``common.lua`` for how a closed-loop tool approximates a fixed rate), open-loop load from
vegeta (``scripts/bench_openloop.py``; built pinned into ``.stack/bin`` by bench.sh). For
every phase: requests/s, latency percentiles, non-2xx and socket errors, the service's
CPU time per request (utime + stime of the uvicorn supervisor and its workers, from
``/proc/<pid>/stat``), PostgreSQL's CPU per request (the bench database's backends and
the server's background processes, not other databases' backends), the dependencies'
and the load generator's CPU, peak RSS per worker (``VmHWM``), SQL statements per request
from ``pg_stat_statements`` deltas for the bench database -- *sent* (top-level: what the
service sends) and *executed* (with ``track = all``, also the statements PostgreSQL runs
inside them: foreign-key checks) --, WAL bytes per request (``pg_current_wal_lsn()``
before and after: the whole cluster's; and the bench database's statements' own
``wal_bytes``) and the checkpoints during the phase (``pg_stat_bgwriter``). CPU,
statements and WAL are divided by the requests the database served in the window.

Results go to ``.bench/results.json``, a self-contained ``.bench/report.html`` (latency
over time and throughput per second of every open-loop phase, throughput of every phase;
``scripts/bench_report.py`` redraws it), vegeta's raw results to
``.bench/open-<phase>.bin``; the phase table and the targets of issue 17 go to stdout.
``make bench-compare BEFORE=a.json AFTER=b.json`` renders two runs side by side.

Environment (all optional):
  BENCH_WORKERS=2  BENCH_CONNECTIONS=32  BENCH_THREADS=1  BENCH_DURATION=15 (s per phase)
  BENCH_WARMUP=3 (s, unmeasured, after each server start)  BENCH_RATE_FULL=150
  BENCH_RATE_SIM=300 (the opt-in wrk-paced phases)  BENCH_OPEN_RATE=300
  BENCH_OPEN_READS_RATE=1500 (open loop, requests/s)
  BENCH_ROUNDS=5  BENCH_ROUND_DURATION=8 (s)  BENCH_TRACING=1 (0: no tracing pair)
  BENCH_IDEMPOTENCY=1 (a fresh Idempotency-Key on every POST)
  BENCH_DB=payments_bench  BENCH_MODES=full,sim,floor  BENCH_PROFILE= (a phase name, e.g.
  sim-payments-concurrency: py-spy records one worker during it)  BENCH_OUT=.bench
  BENCH_PHASES= (phases to run, e.g. "listing" or "payments-open,reads"; all default
  phases when empty; the warm-up's payments are still made, so a listing alone has some
  to page through; "rounds" selects the stability rounds, "tracing" the tracing pair)
  POSTGRES_PORT / KAFKA_PORT / MOCKSERVER_PORT / TESTAGENT_PORT and STACK_SCRIPT
  (another stack.sh, e.g. a private copy on other ports) as scripts/stack.sh
  understands them.
  BENCH_APP=app.main:create_app (the ASGI factory uvicorn serves: experiments can wrap it)

Nothing is asserted: issue 17's targets (service CPU <= 1.5 ms and PostgreSQL CPU <=
0.8 ms per payment, <= 2 statements sent per payment, >= 600 payments/s with 2 workers,
reads <= 0.5 ms and >= 2,500/s, p99 < 50 ms at 300 payments/s open loop, tracing cost <=
15 %, the spread of 5 rounds within +-15 %) are printed next to what was reached and
stored in results.json.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_openloop
import bench_report
import httpx
import psycopg2
from psycopg2 import sql

REPO = Path(__file__).resolve().parent.parent
LUA_DIR = REPO / "scripts" / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_PREFIX = ["bench"]


def log(message: str) -> None:
    """One progress line on stderr (stdout carries the results table)."""
    print(f"[{LOG_PREFIX[0]}] {message}", file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    """An integer setting from the environment."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    """A number setting from the environment."""
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def env_str(name: str, default: str) -> str:
    """A string setting from the environment."""
    return os.environ.get(name, "").strip() or default


def out_dir() -> Path:
    """Where results, logs and scratch files go (git-ignored)."""
    path = Path(env_str("BENCH_OUT", str(REPO / ".bench")))
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------ processes


def read_proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds) of a live process, or None.

    The CPU seconds are its own utime + stime plus cutime + cstime, the CPU of children it
    has reaped: a PostgreSQL backend or a pool's overflow connection that ends during a
    phase keeps counting through the postmaster.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / CLK_TCK


def parent_map() -> dict[int, int]:
    """pid -> ppid of every process."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = read_proc_stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)] = stat[0]
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, ppid in parent_map().items():
        children[ppid].append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            tree.append(pid)
            todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int | None) -> float:
    """CPU seconds (user + system) used so far by a process tree's live members."""
    if root is None:
        return 0.0
    total = 0.0
    for pid in process_tree(root):
        stat = read_proc_stat(pid)
        if stat is not None:
            total += stat[1]
    return total


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cmdline(pid: int) -> str:
    """A process's command line, spaces for NULs."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class MachineCpu:
    """A /proc/stat sample: total and busy jiffies over all CPUs."""

    total: int
    busy: int

    @classmethod
    def sample(cls) -> MachineCpu:
        """Read the aggregate ``cpu`` line."""
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])  # guest time is already in user
        return cls(total=total, busy=total - idle)

    def busy_cores_since(self, earlier: MachineCpu) -> float:
        """Average number of busy cores between two samples."""
        total = self.total - earlier.total
        if total <= 0:
            return 0.0
        return (self.busy - earlier.busy) / total * (os.cpu_count() or 1)


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children (wrk, py-spy)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------- stack


@dataclass
class Ports:
    """The local stack's ports, overridable like scripts/stack.sh's."""

    postgres: int = field(default_factory=lambda: env_int("POSTGRES_PORT", 5432))
    kafka: int = field(default_factory=lambda: env_int("KAFKA_PORT", 9092))
    mockserver: int = field(default_factory=lambda: env_int("MOCKSERVER_PORT", 1080))
    testagent: int = field(default_factory=lambda: env_int("TESTAGENT_PORT", 8126))

    @property
    def bank_url(self) -> str:
        """MockServer as the bank."""
        return f"http://127.0.0.1:{self.mockserver}"

    @property
    def kafka_bootstrap(self) -> str:
        """The broker."""
        return f"127.0.0.1:{self.kafka}"


class Stack:
    """``scripts/stack.sh``, remembering which services this run started."""

    def __init__(self, script: Path | None = None) -> None:
        self.script = script or Path(env_str("STACK_SCRIPT", str(REPO / "scripts" / "stack.sh")))
        # stack.sh keeps its state in <its repo>/.stack.
        self.state_dir = self.script.parent.parent / ".stack"
        self.started: list[str] = []

    def run(self, *args: str, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        """Run stack.sh; with ``quiet`` its output is captured (and shown only on failure)."""
        result = subprocess.run(
            ["bash", str(self.script), *args],
            cwd=REPO,
            text=True,
            capture_output=quiet,
            check=False,
        )
        if result.returncode != 0:
            if quiet:
                sys.stderr.write((result.stdout or "") + (result.stderr or ""))
            raise RuntimeError(f"stack.sh {' '.join(args)} failed with {result.returncode}")
        return result

    def running(self) -> set[str]:
        """Services stack.sh reports as running."""
        result = self.run("status", quiet=True)
        names = set()
        for line in result.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "running":
                names.add(parts[0])
        return names

    def up(self, services: list[str]) -> None:
        """Start what is not running; remember it."""
        before = self.running()
        wanted = [s for s in services if s not in before]
        log(f"stack: {', '.join(services)} (starting: {', '.join(wanted) or 'nothing'})")
        self.run("up", *services, quiet=True)
        self.started.extend(s for s in wanted if s not in self.started)

    def stop_started(self) -> None:
        """Stop the services this run started, and only those."""
        if self.started:
            log(f"stack: stopping what this run started: {', '.join(self.started)}")
            self.run("down", *self.started, quiet=True)
            self.started = []

    def service_pid(self, name: str) -> int | None:
        """The main pid of a stack service (for CPU accounting), if running."""
        try:
            if name == "postgres":
                text = (self.state_dir / "pg" / "data" / "postmaster.pid").read_text()
            else:
                text = (self.state_dir / "run" / f"{name}.pid").read_text()
            pid = int(text.split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None


# ------------------------------------------------------------------------- database


class BenchDatabase:
    """A dedicated database on the stack's PostgreSQL, and its statement statistics."""

    def __init__(self, name: str, port: int) -> None:
        if not name.replace("_", "").isalnum() or not name.islower():
            raise ValueError(f"database name must be a plain lower-case identifier: {name}")
        self.name = name
        self.port = port
        self.url = f"postgresql+asyncpg://payments@127.0.0.1:{port}/{name}"
        self.stats_enabled = False

    def connect(self, *, dbname: str | None = None, user: str = "payments") -> Any:
        """A psycopg2 connection (autocommit) over TCP; trust auth on the local stack."""
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=user,
            dbname=dbname or self.name,
            connect_timeout=5,
            application_name="bench",
        )
        conn.autocommit = True
        return conn

    def recreate(self) -> None:
        """Drop and create the database, owned by ``payments``."""
        conn = self.connect(dbname="postgres")
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.name)
                    )
                )
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER payments").format(sql.Identifier(self.name))
                )
        finally:
            conn.close()

    def migrate(self, env: dict[str, str]) -> None:
        """``alembic upgrade head`` with DATABASE_URL pointing here."""
        subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
            cwd=out_dir(),
            env=env | {"DATABASE_URL": self.url},
            check=True,
            capture_output=True,
        )

    def enable_statement_stats(self) -> bool:
        """``CREATE EXTENSION pg_stat_statements`` here (needs the superuser, trusted locally)."""
        try:
            conn = self.connect(user="postgres")
        except psycopg2.Error as exc:
            log(f"statement counts off: cannot connect as postgres ({exc})".strip())
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                cur.execute("SELECT count(*) FROM pg_stat_statements")
            self.stats_enabled = True
        except psycopg2.Error as exc:
            log(f"statement counts off: {exc}".strip())
        finally:
            conn.close()
        return self.stats_enabled

    def statement_snapshot(self) -> dict[tuple[int, int, bool], tuple[str, int, float, int]]:
        """(queryid, userid, toplevel) -> (query, calls, total ms, WAL bytes) for this
        database."""
        if not self.stats_enabled:
            return {}
        conn = self.connect(user="postgres")
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT s.queryid, s.userid, s.toplevel, s.query, s.calls,"
                    " s.total_exec_time, s.wal_bytes FROM pg_stat_statements s"
                    " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
                    (self.name,),
                )
                rows = cur.fetchall()
        finally:
            conn.close()
        return {
            (r[0] or 0, r[1], bool(r[2])): (r[3], int(r[4]), float(r[5]), int(r[6] or 0))
            for r in rows
            # Not the bench's own queries.
            if "pg_stat_statements" not in r[3] and "/* bench */" not in r[3]
        }

    def row_counts(self) -> dict[str, int]:
        """Payments and refunds in the database: the requests a phase's database served are
        the rows it created, whatever SQL the service sends (wrk does not count the
        requests it abandons at the end of a phase)."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "/* bench */ SELECT (SELECT count(*) FROM transactions),"
                    " (SELECT count(*) FROM refunds),"
                    " to_regclass('floor_payments') IS NOT NULL"
                )
                payments, refunds, floor = cur.fetchone()
                if floor:  # scripts/bench_floor.py's payments
                    cur.execute("/* bench */ SELECT count(*) FROM floor_payments")
                    payments += cur.fetchone()[0]
        finally:
            conn.close()
        return {"payments": int(payments), "refunds": int(refunds)}

    def wal_snapshot(self) -> dict[str, Any]:
        """The cluster's WAL insert position and checkpoint counters right now."""
        conn = self.connect(user="postgres")
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "/* bench */ SELECT pg_current_wal_lsn()::text, checkpoints_timed,"
                    " checkpoints_req,"
                    " buffers_checkpoint FROM pg_stat_bgwriter"
                )
                lsn, timed, requested, buffers = cur.fetchone()
        finally:
            conn.close()
        return {
            "lsn": lsn,
            "checkpoints_timed": int(timed),
            "checkpoints_req": int(requested),
            "buffers_checkpoint": int(buffers),
        }


def lsn_bytes(lsn: str) -> int:
    """A WAL position ('16/B374D848') as a byte offset (what pg_wal_lsn_diff subtracts)."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def wal_delta(before: dict[str, Any], after: dict[str, Any], requests: int) -> dict[str, Any]:
    """WAL written and checkpoints between two :meth:`BenchDatabase.wal_snapshot`s."""
    written = lsn_bytes(after["lsn"]) - lsn_bytes(before["lsn"])
    return {
        "bytes": written,
        "bytes_per_request": round(written / max(requests, 1)),
        "checkpoints_timed": after["checkpoints_timed"] - before["checkpoints_timed"],
        "checkpoints_req": after["checkpoints_req"] - before["checkpoints_req"],
        "buffers_checkpoint": after["buffers_checkpoint"] - before["buffers_checkpoint"],
    }


# PostgreSQL's shared background processes ("postgres: walwriter", ...): their CPU is
# the bench's too; other databases' backends are not.
PG_SHARED_PROCESSES = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
)


def pg_process_is_ours(title: str, database: str) -> bool:
    """Whether a PostgreSQL process title counts for ``database``: a shared background
    process, a backend or an autovacuum worker of that database."""
    rest = title.removeprefix("postgres: ").strip()
    if rest.startswith(PG_SHARED_PROCESSES):
        return True
    words = rest.split()
    if words[:2] == ["autovacuum", "worker"]:
        return words[2:3] == [database]
    return len(words) >= 2 and words[1] == database


def reaped_children_cpu_seconds(pid: int) -> float:
    """cutime + cstime of a live process: the CPU of the children it has reaped."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return sum(int(f) for f in fields[13:15]) / CLK_TCK


def pg_cpu_snapshot(postmaster: int | None, database: str) -> dict[int, float]:
    """pid -> CPU seconds of the PostgreSQL processes that count for ``database``, and
    under the postmaster's pid the CPU of the backends it reaped: a connection closed
    during a phase (a pool's overflow, any database's) would otherwise take its CPU with
    it, and a pool that churns connections would look cheaper than one that keeps them."""
    if postmaster is None:
        return {}
    out = {postmaster: reaped_children_cpu_seconds(postmaster)}
    for pid in process_tree(postmaster):
        if pid != postmaster and pg_process_is_ours(cmdline(pid), database):
            stat = read_proc_stat(pid)
            if stat is not None:
                out[pid] = stat[1]
    return out


def pg_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two :func:`pg_cpu_snapshot`s (a process that exited in
    between counts through the postmaster's reaped-children CPU)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


# One statement that runs exactly once per request of a kind: counting it gives the
# number of requests the database actually served in a window, including those that
# wrk abandoned at the end of a phase (wrk only counts completed responses).
UNIT_STATEMENTS: dict[str, str | tuple[str, ...]] = {
    "payments": "INSERT INTO transactions ",
    "refunds": "INSERT INTO refunds ",
    # Not "reads": a read answered from the payment view cache runs no statement, so
    # reads divide by the requests wrk completed.
    # A page without a cursor, or with one (its rows come from the LATERAL "page").
    "listing": ("SELECT transactions.transaction_id,", "SELECT page.transaction_id,"),
}


def statement_delta(
    before: dict[tuple[int, int, bool], tuple[str, int, float, int]],
    after: dict[tuple[int, int, bool], tuple[str, int, float, int]],
    requests: int,
    *,
    kind: str,
    served: int | None = None,
) -> dict[str, Any]:
    """Statements per request between two snapshots, with the busiest ones.

    ``per_request`` counts every statement PostgreSQL executed (with ``track = all`` also
    those run inside another: foreign-key checks), ``sent_per_request`` only top-level
    ones, what the service sent. Both divide by ``served`` (rows the phase created, see
    :meth:`BenchDatabase.row_counts`) when given, else by the executions of the kind's
    unit statement when there are any (the requests the service really processed in the
    window), else by ``requests``. ``wal_bytes_per_request`` is the WAL the top-level
    statements wrote (their nested statements' included).
    """
    rows = []
    sent = 0
    wal = 0
    for key, (query, calls, total_ms, wal_bytes) in after.items():
        _, calls0, total0, wal0 = before.get(key, (query, 0, 0.0, 0))
        if calls - calls0 > 0:
            rows.append((query, calls - calls0, total_ms - total0))
            if key[2]:
                sent += calls - calls0
                wal += wal_bytes - wal0
    marker = UNIT_STATEMENTS.get(kind)
    units = sum(c for q, c, _ in rows if marker and q.startswith(marker))
    requests = served or units or requests
    total_calls = sum(r[1] for r in rows)
    by_kind: Counter[str] = Counter()
    for query, calls, _ in rows:
        by_kind[query.split(None, 1)[0].upper() if query.strip() else "?"] += calls
    per = max(requests, 1)
    top = sorted(rows, key=lambda r: r[1], reverse=True)[:15]
    return {
        "requests_served": requests,
        "per_request": round(total_calls / per, 2),
        "sent_per_request": round(sent / per, 2),
        "wal_bytes_per_request": round(wal / per),
        "by_kind_per_request": {k: round(v / per, 2) for k, v in by_kind.most_common()},
        "db_exec_ms_per_request": round(sum(r[2] for r in rows) / per, 3),
        "top": [
            {
                "query": " ".join(query.split())[:240],
                "per_request": round(calls / per, 3),
                "mean_ms": round(total / calls, 3) if calls else 0.0,
            }
            for query, calls, total in top
        ],
    }


# -------------------------------------------------------------------------- service


def production_secrets() -> dict[str, str]:
    """Fresh secrets, so the service can run with APP_ENV=production like in production."""

    def key() -> str:
        return base64.b64encode(secrets.token_bytes(32)).decode()

    return {
        "APP_ENV": "production",
        "CARD_ENCRYPTION_KEYS": f"bench-1:{key()}",
        "CARD_ENCRYPTION_CURRENT_KEY_ID": "bench-1",
        "CARD_FINGERPRINT_KEY": key(),
        "API_KEY_PEPPER": secrets.token_urlsafe(32),
    }


def service_env(
    *, database_url: str, bank_url: str | None, kafka: str | None, secrets_env: dict[str, str]
) -> dict[str, str]:
    """The service's environment: ours minus anything that would reconfigure it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"BANK_API_URL", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SECRETS_DIR"}
    }
    env |= secrets_env | {
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "DD_TRACE_ENABLED": "false",
        "METRICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if bank_url:
        env["BANK_API_URL"] = bank_url
    if kafka:
        env["KAFKA_BOOTSTRAP_SERVERS"] = kafka
    if not (bank_url and kafka):
        # Production refuses the in-process simulator and a missing broker; the
        # simulator-only phases measure our own cost under the test profile instead.
        env["APP_ENV"] = "test"
    return env


def tracing_env(agent_port: int) -> dict[str, str]:
    """ddtrace on, as in production but sending to the stack's test agent: the default
    sample rate, no telemetry or remote configuration (nothing to talk to here)."""
    return {
        "DD_TRACE_ENABLED": "true",
        "DD_TRACE_AGENT_URL": f"http://127.0.0.1:{agent_port}",
        "DD_ENV": "bench",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    }


def create_merchant(env: dict[str, str], merchant_id: str, api_key: str) -> None:
    """``payments-admin create-merchant`` (the CLI reads DATABASE_URL and the pepper)."""
    admin = Path(sys.executable).with_name("payments-admin")
    command = [str(admin)] if admin.exists() else [sys.executable, "-m", "app.cli"]
    subprocess.run(
        [*command, "create-merchant", merchant_id, "--api-key", api_key, "--currencies", "USD"],
        cwd=out_dir(),
        env=env,
        check=True,
        capture_output=True,
    )


class AppServer:
    """uvicorn with N workers, started in its own session so it can be stopped whole
    (or, with ``floor``, scripts/bench_floor.py: the same supervisor-and-workers shape)."""

    def __init__(
        self, *, env: dict[str, str], workers: int, log_path: Path, floor: list[str] | None = None
    ) -> None:
        self.env = env
        self.workers = workers
        self.port = free_port()
        self.log_path = log_path
        self.floor = floor
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The server's command line."""
        if self.floor is not None:
            script = str(REPO / "scripts" / "bench_floor.py")
            return [sys.executable, script, "--port", str(self.port), *self.floor]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            env_str("BENCH_APP", "app.main:create_app"),
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "20",
            "--app-dir",
            str(REPO),
        ]

    def start(self, *, timeout_s: float = 90.0) -> None:
        """Start and wait until every worker runs and /health/ready answers 200."""
        log_file = self.log_path.open("ab")
        # The repo is on the path through the editable install; cwd is .bench so that a
        # developer's .env does not reconfigure the service under test.
        self.process = subprocess.Popen(
            self.command(),
            cwd=out_dir(),
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        deadline = time.monotonic() + timeout_s
        ready_in_a_row = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"uvicorn exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                answer = httpx.get(f"{self.base_url}/health/ready", timeout=2.0)
                ready = answer.status_code == 200
            except httpx.HTTPError:
                ready = False
            ready_in_a_row = ready_in_a_row + 1 if ready else 0
            if ready_in_a_row >= 3 and len(self.worker_pids()) == self.workers:
                workers = ", ".join(str(pid) for pid in self.worker_pids())
                log(f"service up on {self.base_url} (pid {self.process.pid}, workers {workers})")
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"service not ready after {timeout_s:.0f} s; see {self.log_path}")

    @property
    def pid(self) -> int | None:
        """The uvicorn supervisor's pid."""
        return self.process.pid if self.process else None

    def worker_pids(self) -> list[int]:
        """The worker processes (multiprocessing children running the app)."""
        if self.pid is None:
            return []
        return sorted(
            pid
            for pid in process_tree(self.pid)
            if pid != self.pid and "spawn_main" in cmdline(pid)
        )

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the supervisor and its workers."""
        return tree_cpu_seconds(self.pid)

    def wait_until_idle(self, *, max_s: float = 30.0, busy_cores: float = 0.1) -> float:
        """Wait until the service uses under ``busy_cores`` over half a second (at most
        ``max_s``); returns the seconds waited."""
        started = time.monotonic()
        cpu = self.cpu_seconds()
        while time.monotonic() - started < max_s:
            time.sleep(0.5)
            now = self.cpu_seconds()
            if now - cpu < busy_cores * 0.5:
                break
            cpu = now
        return time.monotonic() - started

    def memory(self) -> list[dict[str, int]]:
        """Current and peak resident memory of each worker, in kB."""
        return [
            {
                "pid": pid,
                "rss_kb": proc_status_kb(pid, "VmRSS") or 0,
                "hwm_kb": proc_status_kb(pid, "VmHWM") or 0,
            }
            for pid in self.worker_pids()
        ]

    def stop(self, *, grace_s: float = 30.0) -> int | None:
        """SIGTERM the supervisor (graceful shutdown), SIGKILL our session if it hangs."""
        process = self.process
        if process is None:
            return None
        self.process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log(f"service did not stop in {grace_s:.0f} s: SIGKILL to its process group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        return process.returncode


# ------------------------------------------------------------------------------ wrk


def ensure_wrk() -> str:
    """The wrk binary, installed with apt-get when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk not found: apt-get install -y wrk")
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, check=False, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is still missing after apt-get install")
    return found


def run_wrk(
    *,
    script: str,
    url: str,
    connections: int,
    threads: int,
    duration_s: float,
    lua_env: dict[str, str],
) -> dict[str, Any]:
    """Run wrk with one of our Lua scripts; returns the JSON its done() printed."""
    command = [
        ensure_wrk(),
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration_s:g}s",
        "--timeout",
        "15s",
        "-s",
        str(LUA_DIR / script),
        url,
    ]
    env = (
        os.environ
        | lua_env
        | {"BENCH_THREADS": str(threads), "BENCH_CONNECTIONS": str(connections)}
    )
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=duration_s + 120, check=False
    )
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            summary: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return summary
    raise RuntimeError(
        f"wrk gave no summary (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


# -------------------------------------------------------------------------- profile


def pyspy_command() -> list[str]:
    """py-spy from PATH, else through uv from PyPI."""
    found = shutil.which("py-spy")
    if found:
        return [found]
    uv = shutil.which("uv") or "uv"
    return [uv, "run", "--no-project", "--quiet", "--with", "py-spy", "py-spy"]


def start_profile(pid: int, duration_s: float, raw_path: Path) -> subprocess.Popen[bytes]:
    """py-spy record (collapsed stacks) of one worker, in the background."""
    return subprocess.Popen(
        [
            *pyspy_command(),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(duration_s)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(raw_path),
            "--nonblocking",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def summarize_profile(raw_path: Path, *, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        if frames:
            self_samples[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "share": round(n / total, 4)} for name, n in counter.most_common(top)
        ]

    return {"samples": total, "self": share(self_samples), "inclusive": share(inclusive)}


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/module.py:123)".
    name, _, location = frame.partition(" (")
    location = location.rstrip(")")
    path = location.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/app/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/app/":
                path = "app/" + path
            break
    return f"{name} ({path})" if path else name


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    """One measured load phase."""

    name: str
    script: str
    rate: float = 0.0  # 0 = fixed concurrency, as fast as the service answers
    open_loop: bool = False  # vegeta at ``rate``, instead of wrk
    duration_s: float | None = None  # else the run's BENCH_DURATION
    selector: str = ""  # the BENCH_PHASES name selecting it, when not its own name

    @property
    def kind(self) -> str:
        """payments, reads, refunds or listing."""
        return self.script.removesuffix(".lua")


@dataclass
class Config:
    """The run's settings (see the module docstring)."""

    workers: int = field(default_factory=lambda: env_int("BENCH_WORKERS", 2))
    connections: int = field(default_factory=lambda: env_int("BENCH_CONNECTIONS", 32))
    threads: int = field(default_factory=lambda: env_int("BENCH_THREADS", 1))
    duration_s: float = field(default_factory=lambda: env_float("BENCH_DURATION", 15))
    warmup_s: float = field(default_factory=lambda: env_float("BENCH_WARMUP", 3))
    rate_full: float = field(default_factory=lambda: env_float("BENCH_RATE_FULL", 150))
    rate_sim: float = field(default_factory=lambda: env_float("BENCH_RATE_SIM", 300))
    open_rate: float = field(default_factory=lambda: env_float("BENCH_OPEN_RATE", 300))
    open_reads_rate: float = field(default_factory=lambda: env_float("BENCH_OPEN_READS_RATE", 1500))
    rounds: int = field(default_factory=lambda: env_int("BENCH_ROUNDS", 5))
    round_duration_s: float = field(default_factory=lambda: env_float("BENCH_ROUND_DURATION", 8))
    tracing: bool = field(default_factory=lambda: env_str("BENCH_TRACING", "1") != "0")
    idempotency: bool = field(default_factory=lambda: env_str("BENCH_IDEMPOTENCY", "1") != "0")
    database: str = field(default_factory=lambda: env_str("BENCH_DB", "payments_bench"))
    modes: list[str] = field(
        default_factory=lambda: [
            m.strip() for m in env_str("BENCH_MODES", "full,sim,floor").split(",")
        ]
    )
    profile_phase: str = field(default_factory=lambda: env_str("BENCH_PROFILE", ""))
    phases: set[str] = field(
        default_factory=lambda: {
            p.strip() for p in env_str("BENCH_PHASES", "").split(",") if p.strip()
        }
    )
    read_ids: int = 2000

    def runs(self, phase: Phase, mode: str = "") -> bool:
        """Whether BENCH_PHASES selects this phase (every default phase when it is empty;
        the wrk-paced full-stack "payments-rate" only when named)."""
        name = phase.selector or phase.name
        if not self.phases:
            return f"{mode}-{name}" not in OPT_IN_PHASES
        return name in self.phases


MODE_NAMES = {
    "full": "full stack (MockServer + Kafka)",
    "sim": "simulator, Kafka off",
    "floor": "bare asyncio floor (aiohttp, asyncpg, aiokafka; MockServer + Kafka)",
}

# Phases run only when BENCH_PHASES names them: the open-loop phase replaced the
# wrk-paced ones in the default run (which has to stay within about 7 minutes).
OPT_IN_PHASES = {"full-payments-rate", "sim-payments-rate"}


class Bench:
    """Drives the phases of one run and collects their figures."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ports = Ports()
        self.stack = Stack()
        self.db = BenchDatabase(config.database, self.ports.postgres)
        self.secrets = production_secrets()
        self.merchant_id = "merchant_bench"
        self.api_key = "sk_bench_" + secrets.token_hex(20)
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.results: list[dict[str, Any]] = []
        self.loop_ms_start = python_loop_ms()

    def lua_env(self, *, run: str, rate: float, ids_file: Path | None = None) -> dict[str, str]:
        """What the Lua scripts read from the environment."""
        env = {
            "BENCH_API_KEY": self.api_key,
            "BENCH_MERCHANT": self.merchant_id,
            "BENCH_RUN_ID": run,
            "BENCH_IDEMPOTENCY": "1" if self.config.idempotency else "0",
            "BENCH_RATE": f"{rate:g}",
        }
        if ids_file is not None:
            env["BENCH_IDS_FILE"] = str(ids_file)
        return env

    def prepare(self) -> None:
        """Stack, database, migrations, merchant."""
        services = ["postgres"]
        if {"full", "floor"} & set(self.config.modes):
            services += ["zookeeper", "kafka", "mockserver"]
            services += ["testagent"] if self.config.tracing else []
        self.stack.up(services)
        log(f"database {self.db.name}: drop, create, alembic upgrade head")
        self.db.recreate()
        base_env = service_env(
            database_url=self.db.url, bank_url=None, kafka=None, secrets_env=self.secrets
        )
        self.db.migrate(base_env)
        self.db.enable_statement_stats()
        create_merchant(base_env, self.merchant_id, self.api_key)

    def start_server(self, mode: str, *, traced: bool = False) -> AppServer:
        """The service in one mode: 'full' (MockServer + Kafka) or 'sim'; with ``traced``,
        ddtrace on, sending to the stack's test agent at the default sample rate."""
        full = mode in {"full", "floor"}
        env = service_env(
            database_url=self.db.url,
            bank_url=self.ports.bank_url if full else None,
            kafka=self.ports.kafka_bootstrap if full else None,
            secrets_env=self.secrets,
        )
        if traced:
            env |= tracing_env(self.ports.testagent)
        suffix = "-traced" if traced else ""
        floor = None
        if mode == "floor":
            floor = [
                "--workers",
                str(self.config.workers),
                "--database-url",
                self.db.url.replace("postgresql+asyncpg://", "postgresql://"),
                "--bank-url",
                self.ports.bank_url,
                "--kafka",
                self.ports.kafka_bootstrap,
            ]
        server = AppServer(
            env=env,
            workers=self.config.workers,
            log_path=out_dir() / f"bench-app-{mode}{suffix}.log",
            floor=floor,
        )
        server.start()
        if self.config.warmup_s > 0:
            log(f"warm-up: {self.config.warmup_s:g} s of payments (not measured)")
            warmup = run_wrk(
                script="payments.lua",
                url=server.base_url,
                connections=self.config.connections,
                threads=self.config.threads,
                duration_s=self.config.warmup_s,
                lua_env=self.lua_env(run=f"{self.run_id}-{mode}-warmup", rate=0),
            )
            time.sleep(settle_seconds(warmup))
        return server

    def deps_cpu(self, mode: str, *, traced: bool = False) -> dict[str, float]:
        """CPU seconds so far of the dependencies this mode uses."""
        names = ["postgres"] + (["mockserver", "kafka"] if mode in {"full", "floor"} else [])
        names += ["testagent"] if traced else []
        return {name: tree_cpu_seconds(self.stack.service_pid(name)) for name in names}

    def captured_ids(self, path: Path) -> Path:
        """Write up to read_ids captured payments of the bench merchant to ``path``
        (the ids reads and refunds walk, and the listing's cursors)."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "/* bench */ SELECT transaction_id FROM transactions"
                    " WHERE merchant_id = %s AND status = 'captured'"
                    " ORDER BY created_at DESC LIMIT %s",
                    (self.merchant_id, self.config.read_ids),
                )
                ids = [row[0] for row in cur.fetchall()]
        finally:
            conn.close()
        if not ids:
            raise RuntimeError("no captured payments to read, refund or page from")
        path.write_text("\n".join(ids) + "\n")
        return path

    def run_phase(
        self,
        server: AppServer,
        mode: str,
        phase: Phase,
        ids_file: Path | None = None,
        *,
        traced: bool = False,
    ) -> dict[str, Any]:
        """Run one phase and measure it."""
        config = self.config
        label = f"{mode}-{phase.name}"
        duration_s = phase.duration_s or config.duration_s
        if phase.open_loop:
            load = f"{phase.rate:g}/s open loop"
        elif phase.rate:
            load = f"{phase.rate:g}/s"
        else:
            load = f"c={config.connections}"
        log(f"phase {label}: {phase.kind}, {load}, {duration_s:g} s")
        targets_path = None
        if phase.open_loop:
            # Written before the window: generating it is not the service's CPU.
            targets_path = out_dir() / f"open-{label}.targets.jsonl"
            ids = ids_file.read_text().split() if ids_file else []
            lines = bench_openloop.target_lines(
                kind=phase.kind,
                base_url=server.base_url,
                api_key=self.api_key,
                merchant=self.merchant_id,
                run_id=f"{self.run_id}-{label}",
                count=int(phase.rate * duration_s) + 1,
                ids=ids,
                idempotency=config.idempotency,
            )
            targets_path.write_text("\n".join(lines) + "\n")
        profile = None
        if config.profile_phase == label and server.worker_pids():
            profile_path = out_dir() / f"profile-{label}.txt"
            profile = (
                start_profile(server.worker_pids()[0], duration_s, profile_path),
                profile_path,
            )
        rows0 = self.db.row_counts()
        stmts0 = self.db.statement_snapshot()
        wal0 = self.db.wal_snapshot()
        postmaster = self.stack.service_pid("postgres")
        machine0, app0, deps0, gen0, pg0 = (
            MachineCpu.sample(),
            server.cpu_seconds(),
            self.deps_cpu(mode, traced=traced),
            children_cpu_seconds(),
            pg_cpu_snapshot(postmaster, self.db.name),
        )
        if targets_path is not None:
            results_path = out_dir() / f"open-{label}.bin"
            attack = bench_openloop.attack(
                targets=targets_path,
                rate=phase.rate,
                duration_s=duration_s,
                results=results_path,
                name=label,
            )
            if attack.returncode != 0:
                raise RuntimeError(
                    f"vegeta attack failed ({attack.returncode}):"
                    f" {attack.stderr.decode(errors='replace')[-400:]}"
                )
            # vegeta waits for every answer or its timeout. A service that could not keep up
            # still works through requests vegeta gave up on; its rows and CPU in the
            # window are counted alike, and the next phase runs on a fresh service.
            settle_s = 1.0 + server.wait_until_idle(max_s=5.0)
        else:
            summary = run_wrk(
                script=phase.script,
                url=server.base_url,
                connections=config.connections,
                threads=config.threads,
                duration_s=duration_s,
                lua_env=self.lua_env(
                    run=f"{self.run_id}-{label}", rate=phase.rate, ids_file=ids_file
                ),
            )
            # Let the requests wrk abandoned at the end finish inside the window, so the
            # CPU and statements they cost are counted with them.
            settle_s = settle_seconds(summary)
        time.sleep(settle_s)
        machine1, app1, deps1, gen1, pg1 = (
            MachineCpu.sample(),
            server.cpu_seconds(),
            self.deps_cpu(mode, traced=traced),
            children_cpu_seconds(),
            pg_cpu_snapshot(postmaster, self.db.name),
        )
        wal1 = self.db.wal_snapshot()
        stmts1 = self.db.statement_snapshot()
        rows1 = self.db.row_counts()
        memory = server.memory()
        if targets_path is not None:
            targets_path.unlink()
            summary = bench_openloop.summarize(results_path, target_rate=phase.rate)
        requests = int(summary["requests"])
        duration = summary["duration_us"] / 1e6
        statuses = {k: int(v) for k, v in summary["statuses"].items()}
        ok = sum(v for k, v in statuses.items() if k.startswith("2"))
        socket_errors = sum(int(v) for v in summary["socket_errors"].values())
        latency = {k: round(v / 1000, 2) for k, v in summary["latency_us"].items()}
        created = rows1.get(phase.kind, 0) - rows0.get(phase.kind, 0)
        statements = (
            statement_delta(stmts0, stmts1, requests, kind=phase.kind, served=created or None)
            if stmts1
            else None
        )
        served = statements["requests_served"] if statements else (created or requests)
        per_k = 1000 / max(served, 1)
        wal = wal_delta(wal0, wal1, served)
        if statements:
            wal["statement_bytes_per_request"] = statements["wal_bytes_per_request"]
        result: dict[str, Any] = {
            "phase": label,
            "mode": MODE_NAMES.get(mode, mode),
            "kind": phase.kind,
            "load": load,
            "loop": "open" if phase.open_loop else "closed",
            "target_rate": phase.rate or None,
            "tracing": traced,
            "pacing": summary["pacing"],
            "connections": None if phase.open_loop else config.connections,
            "duration_s": round(duration, 2),
            "requests": requests,
            # Open loop: the 2xx answers per second (what the service sustained), not the
            # rate vegeta sent at (open_loop.achieved_rate).
            "rps": (
                summary["open_loop"]["throughput"]
                if phase.open_loop
                else round(requests / duration, 1)
                if duration
                else 0.0
            ),
            "latency_ms": latency,
            "statuses": statuses,
            "error_codes": summary.get("codes", {}),
            "non_2xx": requests - ok - socket_errors if phase.open_loop else requests - ok,
            "socket_errors": summary["socket_errors"],
            "errors": requests - ok if phase.open_loop else requests - ok + socket_errors,
            "app_cpu_s": round(app1 - app0, 3),
            "app_cpu_ms_per_request": round((app1 - app0) * per_k, 3),
            "app_cpu_s_per_1000": round((app1 - app0) * per_k, 3),
            "pg_cpu_ms_per_request": round(pg_cpu_delta(pg0, pg1) * per_k, 3),
            "deps_cpu_ms_per_request": {
                name: round((deps1[name] - deps0[name]) * per_k, 3) for name in deps1
            },
            "loadgen_cpu_ms_per_request": round((gen1 - gen0) * per_k, 3),
            "machine_busy_cores": round(machine1.busy_cores_since(machine0), 2),
            "workers": memory,
            "peak_rss_mb_per_worker": round(
                max((m["hwm_kb"] for m in memory), default=0) / 1024, 1
            ),
            "requests_served": served,
            "statements": statements,
            "wal": wal,
        }
        if phase.open_loop:
            result["open_loop"] = summary["open_loop"]
            result["timeline"] = summary["timeline"]
        # What the machine was busy with besides the service, its dependencies and the
        # load generator: other people's work on a shared machine (noise).
        seconds = (duration + settle_s) or 1
        accounted = (
            (app1 - app0) + sum(deps1[n] - deps0[n] for n in deps1) + (gen1 - gen0)
        ) / seconds
        result["other_busy_cores"] = round(max(0.0, result["machine_busy_cores"] - accounted), 2)
        if profile is not None:
            process, profile_path = profile
            _, err = process.communicate(timeout=duration_s + 60)
            if process.returncode == 0 and profile_path.exists():
                result["profile"] = summarize_profile(profile_path) | {"raw": str(profile_path)}
            else:
                log(f"py-spy failed ({process.returncode}): {err.decode(errors='replace')[-400:]}")
        extra = ""
        if phase.open_loop:
            extra = f" (sent at {summary['open_loop']['achieved_rate']}/s)"
        log(
            f"  {result['rps']} req/s{extra}, p50 {latency['p50']} ms, p99 {latency['p99']} ms,"
            f" errors {result['errors']}, app CPU {result['app_cpu_ms_per_request']} ms/req,"
            f" PG CPU {result['pg_cpu_ms_per_request']} ms/req"
        )
        return result

    def run_mode(self, mode: str) -> None:
        """Start the service in one mode and run that mode's phases.

        Open-loop phases each get a service of their own, started after the others: at a
        rate above what the service sustains, it is still working through the requests
        vegeta gave up on long after the phase, and the next phase would measure that.
        """
        config = self.config
        if mode == "floor":
            # The same wrk phase against scripts/bench_floor.py.
            with self.serving(mode) as server:
                phase = Phase("payments-concurrency", "payments.lua")
                self.results.append(self.run_phase(server, mode, phase))
            return
        full = mode == "full"
        closed = [Phase("payments-concurrency", "payments.lua")]
        closed.append(
            Phase("payments-rate", "payments.lua", config.rate_full if full else config.rate_sim)
        )
        if full:
            closed += [
                Phase(
                    f"payments-round-{n}",
                    "payments.lua",
                    duration_s=config.round_duration_s,
                    selector="rounds",
                )
                for n in range(1, config.rounds + 1)
            ]
        on_ids = [Phase("listing", "listing.lua")]
        if full:
            on_ids[:0] = [Phase("reads", "reads.lua"), Phase("refunds", "refunds.lua")]
        open_loop = [
            Phase("payments-open", "payments.lua", config.open_rate, True),
            Phase("reads-open", "reads.lua", config.open_reads_rate, True),
        ]
        open_loop = [phase for phase in open_loop if full and config.runs(phase, mode)]
        untraced = Phase("payments-untraced", "payments.lua", selector="tracing")
        tracing = full and config.tracing and config.runs(untraced, mode)
        ids: Path | None = None
        with self.serving(mode) as server:
            for phase in closed:
                if config.runs(phase, mode):
                    self.results.append(self.run_phase(server, mode, phase))
            on_ids = [phase for phase in on_ids if config.runs(phase, mode)]
            if on_ids or any(phase.kind == "reads" for phase in open_loop):
                ids = self.captured_ids(out_dir() / "bench-ids.txt")
            for phase in on_ids:
                self.results.append(self.run_phase(server, mode, phase, ids))
            if tracing:
                # The traced service starts (and warms up) while this one idles, so the
                # traced phase runs right after the untraced one.
                with self.serving(mode, traced=True) as traced_server:
                    self.results.append(self.run_phase(server, mode, untraced))
                    traced = Phase("payments-traced", "payments.lua")
                    self.results.append(self.run_phase(traced_server, mode, traced, traced=True))
        for phase in open_loop:
            # After an overloaded phase the backlog is of no use: no graceful drain.
            with self.serving(mode, grace_s=5.0) as server:
                phase_ids = ids if phase.kind == "reads" else None
                self.results.append(self.run_phase(server, mode, phase, phase_ids))

    @contextlib.contextmanager
    def serving(
        self, mode: str, *, traced: bool = False, grace_s: float = 30.0
    ) -> Iterator[AppServer]:
        """A warmed-up service for a few phases, stopped afterwards whatever happens
        (SIGKILLed after ``grace_s``)."""
        server = self.start_server(mode, traced=traced)
        try:
            yield server
        finally:
            code = server.stop(grace_s=grace_s)
            log(f"service ({mode}{', traced' if traced else ''}) stopped, exit status {code}")

    def report(self, started: float) -> dict[str, Any]:
        """Write results.json and print the table."""
        document = {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - started, 1),
            "machine": machine_info()
            | {"python_loop_ms": {"start": self.loop_ms_start, "end": python_loop_ms()}},
            "config": {
                "workers": self.config.workers,
                "connections": self.config.connections,
                "wrk_threads": self.config.threads,
                "duration_s": self.config.duration_s,
                "warmup_s": self.config.warmup_s,
                "rate_full": self.config.rate_full,
                "rate_sim": self.config.rate_sim,
                "open_rate": self.config.open_rate,
                "open_reads_rate": self.config.open_reads_rate,
                "rounds": self.config.rounds,
                "round_duration_s": self.config.round_duration_s,
                "tracing_pair": self.config.tracing,
                "idempotency_keys": self.config.idempotency,
                "database": self.db.name,
                "phases": sorted(self.config.phases) or ["all"],
                "app_env": "production",
                "log_level": "WARNING",
            },
            "targets": bench_report.targets(self.results, workers=self.config.workers),
            "stability": bench_report.stability(self.results),
            "tracing_cost": bench_report.tracing_cost(self.results),
            "phases": self.results,
        }
        path = out_dir() / "results.json"
        path.write_text(json.dumps(document, indent=2) + "\n")
        report_path = bench_report.write_report(path)
        print(render_table(self.results))
        print()
        print(bench_report.render_targets(document["targets"]))
        loop = document["machine"]["python_loop_ms"]
        print(
            f"\n  core speed (a fixed Python loop, lower is faster): {loop['start']} ms at the"
            f" start, {loop['end']} ms at the end"
        )
        print(f"\nresults: {path}\nreport:  {report_path}")
        return document


def settle_seconds(summary: dict[str, Any]) -> float:
    """How long the requests still in flight when wrk stopped may take: about a p99."""
    p99_s = float(summary["latency_us"]["p99"]) / 1e6
    return min(15.0, max(1.0, 2 * p99_s))


def python_loop_ms() -> float:
    """Best of 5 timings of a fixed pure-Python loop: how fast a core is right now.

    On a shared or virtual machine a core's speed drifts with its neighbours' load, and
    CPU time per request drifts with it; this figure, taken at the start and the end of
    a run, lets two runs be compared.
    """
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        sum(i * i for i in range(1_000_000))
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "app"], capture_output=True, text=True)
    return {
        "git_head": head.stdout.strip(),
        "app_files_changed_since_head": len(dirty.stdout.splitlines()),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def render_table(results: list[dict[str, Any]]) -> str:
    """The stdout table of every phase (the columns of the HTML report, and "other")."""
    short = ("phase", "load", "req/s", "p50", "p99", "errors", "cpu ms", "pg ms", "WAL B")
    short += ("st WAL", "ckpt", "sql snt", "sql exe", "rss MB", "other")
    widths = (30, 16, 7, 8, 8, 6, 7, 7, 7, 7, 4, 7, 7, 7, 5)

    def line(cells: list[Any]) -> str:
        rest = (f"{c!s:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))
        return " ".join([f"{cells[0]!s:<{widths[0]}}", *rest])

    lines = [line(list(short)), "-" * (sum(widths) + len(widths) - 1)]
    lines += [line([*bench_report.phase_row(r), r["other_busy_cores"]]) for r in results]
    lines.append(
        "latency in ms (open loop: from the scheduled send, queueing included); cpu ms ="
        " service CPU (supervisor + workers) per request; pg ms = PostgreSQL CPU per request"
        " (the bench database's backends + background processes); WAL B = WAL bytes per"
        " request (whole cluster: other databases' writes too), st WAL = WAL the bench"
        " database's statements wrote per request; ckpt = checkpoints during the phase;"
        " sql snt / exe = statements sent by the service /"
        " executed by PostgreSQL (with FK checks) per request; rss = peak VmHWM of the"
        " largest worker; other = busy cores not ours (noise)"
    )
    return "\n".join(lines)


@contextlib.contextmanager
def interrupt_as_exception() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so cleanup runs."""

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    """Run every phase of every mode; clean up whatever happens."""
    started = time.monotonic()
    config = Config()
    ensure_wrk()
    bench = Bench(config)
    with interrupt_as_exception():
        try:
            bench.prepare()
            for mode in config.modes:
                bench.run_mode(mode)
            bench.report(started)
        finally:
            bench.stack.stop_started()
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
