"""Benchmark of one webhook dispatcher (``make bench-webhooks``): the deliveries per second
it sustains, and the time from commit to delivery (p50/p95/p99), measured locally.

Run as ``uv run python scripts/bench_webhooks.py``. What runs:

* a dedicated database (``BENCH_WH_DB``, default ``payments_bench_webhooks``: dropped,
  recreated, ``alembic upgrade head``) on the stack's PostgreSQL, ``BENCH_WH_MERCHANTS``
  merchants (``payments-admin create-merchant``) with one endpoint each for every event
  type, registered with :func:`app.services.webhooks.add_endpoint` (as
  ``payments-admin add-webhook`` does);
* a receiver: an aiohttp server (uvloop) on 127.0.0.1 in a process of its own, one path
  per endpoint; it verifies the signature with ``standardwebhooks`` (every delivery, or
  every ``BENCH_WH_VERIFY_EVERY``-th), answers 204 and records ``webhook-id`` and the
  arrival time (its CPU is reported, to show it is not the bottleneck);
* one dispatcher: ``python -m app.dispatcher`` with ``APP_ENV=test``, the bench database,
  the stack's Kafka, ``WEBHOOK_CONSUMER_GROUP`` fresh per series (below),
  ``WEBHOOK_ALLOW_PRIVATE_TARGETS=true``, ``DD_TRACE_ENABLED=false``,
  ``METRICS_ENABLED=false``, ``WEBHOOK_BATCH_SIZE`` as below, and the defaults for every
  other setting (the bench removes any setting of the service from the environment it
  passes on; ``settings`` in the JSON lists what the dispatcher ran with);
* events produced by this script to the topic (``BENCH_WH_TOPIC``, default
  ``payments.events``) exactly as the service publishes them (``DomainEvent`` ->
  ``outbox_message`` -> ``kafka_record``: key = transaction_id, headers ``event_type``,
  ``event_id``, ``correlation_id``; an idempotent ``acks=all`` producer like the
  service's), with ``occurred_at`` = the moment of production: "commit". Transactions
  have one event, or (``BENCH_WH_FOLLOW_UPS``, default 0.2 of them) two produced back to
  back (processing -> captured, authorized -> captured, captured -> refund.succeeded),
  which the dispatcher delivers in order.

Each series starts from empty webhook tables, a consumer group committed at the topic's
end (older events on the topic do not count) and a warm-up: ``BENCH_WH_WARMUP`` events
(default 1000) at 250/s, delivered and not measured, then ``ANALYZE`` of the webhook
tables -- the statistics autovacuum would have on a dispatcher that has been running
(``BENCH_WH_ANALYZE=0`` leaves them to autovacuum). The claim's plan depends on them.

* ``rate-<r>``, one dispatcher with the first ``WEBHOOK_BATCH_SIZE`` of
  ``BENCH_WH_BATCH_SIZES``, for each r of ``BENCH_WH_RATES`` (default
  ``20,200,500,750,1000``): ``BENCH_WH_PHASE_S`` seconds (default 15) of events at r/s,
  open loop, then until all arrived. Commit->delivery latency = arrival - occurred_at
  (p50/p90/p95/p99/max; also for first events and follow-ups of a transaction apart),
  deliveries/s from the first event to the last arrival, the backlog left when
  production stopped. Before them, ``idle``: the dispatcher's CPU with nothing to do.
* ``burst-b<size>`` (backlog drain), for each size of ``BENCH_WH_BATCH_SIZES`` (default
  ``50,200``): ``BENCH_WH_BURST`` events (default 20000) produced as fast as possible
  *before* the dispatcher starts; it then joins and drains them, for at most
  ``BENCH_WH_BURST_TIMEOUT`` s (default 90). Deliveries/s between the first and the last
  arrival (joining is not counted), the best 5 s, the longest stall; CPU from the first
  arrival on.

For every phase: dispatcher CPU per delivery (utime + stime from ``/proc/<pid>/stat``),
statements the dispatcher sent per delivery and those run inside them (foreign-key
checks), the claim's mean time (``pg_stat_statements`` deltas on the bench database;
statements cancelled by the command timeout are not in them: see the dispatcher's
warnings, counted per phase from its log), the CPU of the receiver, of this script (the
producer), of PostgreSQL and Kafka (whole servers: others' work on them counts), busy
cores on the machine and the part of them none of those explain (``other``: a shared
machine's noise), a restart of PostgreSQL or Kafka during the phase (someone's drill),
duplicates (a webhook-id received twice) and missing deliveries. Results go to
``.bench/webhooks.json`` (and a timestamped copy, with HEAD and a digest of app/'s
uncommitted changes); a table goes to stdout; the dispatcher's log to
``.bench/webhooks-dispatcher.log``.

Environment (all optional):
  BENCH_WH_DB=payments_bench_webhooks  BENCH_WH_TOPIC=payments.events
  BENCH_WH_MERCHANTS=4  BENCH_WH_WARMUP=1000  BENCH_WH_ANALYZE=1
  BENCH_WH_RATES=20,200,500,750,1000 (0: no rate phases)  BENCH_WH_PHASE_S=15
  BENCH_WH_BURST=20000 (0: no burst phases)  BENCH_WH_BURST_TIMEOUT=90
  BENCH_WH_BATCH_SIZES=50,200
  BENCH_WH_FOLLOW_UPS=0.2  BENCH_WH_VERIFY_EVERY=1 (0: never verify)
  BENCH_WH_DRAIN_TIMEOUT=30 (s without a new arrival before a rate phase stops waiting)
  BENCH_WH_IDLE_S=3  BENCH_WH_PROFILE= (a phase name, e.g. burst-b50 or rate-1000: py-spy
  records the dispatcher during it, BENCH_WH_PROFILE_S=10 s at most)
  BENCH_OUT=.bench  POSTGRES_PORT / KAFKA_PORT / STACK_SCRIPT as scripts/bench.py reads them.

On a machine where none of PostgreSQL, ZooKeeper and Kafka runs, the bench starts them
(and leaves them running); if only some are down -- someone's drill -- it waits for them.
It stops only the processes it started. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import platform
import random
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from bench import (
    REPO,
    BenchDatabase,
    MachineCpu,
    Ports,
    Stack,
    create_merchant,
    env_float,
    env_int,
    env_str,
    free_port,
    interrupt_as_exception,
    log,
    out_dir,
    pyspy_command,
    read_proc_stat,
    summarize_profile,
    tree_cpu_seconds,
)
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.adapters.db.engine import build_engine, build_session_factory
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.adapters.messaging.sending import kafka_record
from app.core.config import Settings
from app.dispatcher import build_admin
from app.domain.events import DomainEvent, EventType
from app.domain.ids import new_refund_id, new_transaction_id
from app.services import webhooks
from app.services.events import outbox_message
from app.services.ports import UnitOfWork

THIS_SCRIPT = Path(__file__).resolve()
MERCHANT_PREFIX = "merchant_whbench_"
POLL_S = 0.05
STACK_WAIT_S = 180.0
WARMUP_RATE = 250.0
DISPATCHER_LOG = "webhooks-dispatcher.log"
CLAIM_STATEMENT = "WITH due AS MATERIALIZED"
"""How the dispatcher's claim of due deliveries starts (app/adapters/db/webhooks.py)."""
SINGLE_SHAPES = [("payment.captured",)] * 7 + [("payment.declined",)]
FOLLOW_UP_SHAPES = [
    ("payment.processing", "payment.captured"),
    ("payment.authorized", "payment.captured"),
    ("payment.captured", "refund.succeeded"),
]
# Settings of the service the dispatcher's environment must not inherit from ours, so
# that it runs with the defaults plus what the bench sets.
SETTINGS_PREFIXES = ("WEBHOOK_", "KAFKA_", "DB_", "DD_", "METRICS_", "PURGE_", "OUTBOX_")
SETTINGS_NAMES = {"DATABASE_URL", "APP_ENV", "SECRETS_DIR", "LOG_LEVEL", "BANK_API_URL"}


# ------------------------------------------------------------------------- receiver


def receiver_main(port: int, verify_every: int) -> int:
    """The receiver process: secrets as JSON on stdin ({path index: secret}), then serve
    until SIGTERM. ``GET /stats`` and ``GET /records?from=N`` report what arrived."""
    secrets = json.loads(sys.stdin.read())
    hooks = {key: Webhook(secret) for key, secret in secrets.items()}
    ids: list[str] = []
    arrivals: list[float] = []
    counts = {"requests": 0, "verified": 0, "refused": 0}

    async def hook(request: web.Request) -> web.Response:
        arrived = time.time()
        raw = await request.read()
        n = counts["requests"]
        counts["requests"] = n + 1
        if verify_every and n % verify_every == 0:
            try:
                hooks[request.match_info["n"]].verify(
                    raw, dict(request.headers.items()), json_parse=False
                )
            except (WebhookVerificationError, KeyError):
                counts["refused"] += 1
                return web.Response(status=401)
            counts["verified"] += 1
        ids.append(request.headers.get("webhook-id", ""))
        arrivals.append(arrived)
        return web.Response(status=204)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(counts | {"received": len(ids)})

    async def records(request: web.Request) -> web.Response:
        start = int(request.query.get("from", "0"))
        end = len(ids)
        lines = [f"{ids[i]} {arrivals[i]:.6f}" for i in range(start, end)]
        return web.Response(text="\n".join(lines), headers={"X-Next": str(end)})

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hooks/{n}", hook)
        app.router.add_get("/stats", stats)
        app.router.add_get("/records", records)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    try:
        import uvloop  # optional: the receiver must cost as little as it can

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())
    return 0


class ReceiverProcess:
    """The receiver, started as ``python scripts/bench_webhooks.py --receiver PORT``."""

    def __init__(self, secrets: dict[str, str], verify_every: int) -> None:
        self.port = free_port()
        self.secrets = secrets
        self.verify_every = verify_every
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"

    def url(self, index: int) -> str:
        """The endpoint URL of merchant ``index``."""
        return f"{self.base_url}/hooks/{index}"

    def launch(self) -> None:
        """Start it, and hand it the secrets."""
        log_file = (out_dir() / "webhooks-receiver.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(THIS_SCRIPT),
                "--receiver",
                str(self.port),
                "--verify-every",
                str(self.verify_every),
            ],
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=out_dir(),
        )
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(self.secrets).encode())
        self.process.stdin.close()

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Wait until it answers."""
        assert self.process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the receiver exited (see .bench/webhooks-receiver.log)")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.base_url}/stats") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError("the receiver did not start in 30 s")

    @property
    def pid(self) -> int | None:
        """Its pid while it runs."""
        return self.process.pid if self.process and self.process.poll() is None else None

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """Requests, verified, refused, received so far."""
        async with session.get(f"{self.base_url}/stats") as response:
            result: dict[str, int] = await response.json()
            return result

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        stop_process(self.process, "receiver")
        self.process = None


def stop_process(process: subprocess.Popen[bytes] | None, name: str, grace_s: float = 30) -> None:
    """Stop a child of ours by its handle: SIGTERM, wait, SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop in {grace_s:g} s after SIGTERM: killing it")
        process.kill()
        process.wait(timeout=10)


@dataclass
class Arrivals:
    """What the receiver recorded, fetched incrementally: first arrival per webhook-id."""

    first: dict[str, float] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)
    fetched: int = 0

    async def poll(self, session: aiohttp.ClientSession, base_url: str) -> int:
        """Fetch the records since the last poll; how many arrived."""
        async with session.get(f"{base_url}/records", params={"from": self.fetched}) as response:
            text = await response.text()
            self.fetched = int(response.headers["X-Next"])
        new = 0
        for line in text.splitlines():
            webhook_id, _, arrived = line.partition(" ")
            self.seen[webhook_id] += 1
            if webhook_id not in self.first:
                self.first[webhook_id] = float(arrived)
            new += 1
        return new


# --------------------------------------------------------------------------- events


class EventFactory:
    """Events in the service's envelope, per transaction, for the bench merchants."""

    def __init__(self, merchants: list[str], follow_ups: float, seed: int = 7) -> None:
        self.merchants = merchants
        self.follow_ups = follow_ups
        self.rng = random.Random(seed)
        self.queue: list[tuple[str, str, str, str]] = []
        self.follow_up = False
        """Whether the last event made is its transaction's second."""

    def _next_step(self) -> tuple[str, str, str, str]:
        """(event type, transaction id, merchant id, amount) of the next event."""
        self.follow_up = bool(self.queue)
        if not self.queue:
            shapes = FOLLOW_UP_SHAPES if self.rng.random() < self.follow_ups else SINGLE_SHAPES
            shape = self.rng.choice(shapes)
            transaction_id = new_transaction_id()
            merchant = self.rng.choice(self.merchants)
            amount = f"{self.rng.randint(100, 99_999) / 100:.2f}"
            self.queue = [(kind, transaction_id, merchant, amount) for kind in shape]
        return self.queue.pop(0)

    def next_record(self) -> tuple[str, float, bytes, bytes, list[tuple[str, bytes]]]:
        """(event id, produced at, key, value, headers) of the next event, stamped now."""
        kind, transaction_id, merchant, amount = self._next_step()
        now = time.time()
        at = datetime.fromtimestamp(now, UTC)
        event = DomainEvent(
            event_type=EventType(kind),
            transaction_id=transaction_id,
            merchant_id=merchant,
            correlation_id=uuid.uuid4().hex,
            occurred_at=at,
            data=event_data(kind, amount, at),
        )
        key, value, headers = kafka_record(outbox_message(event))
        return str(event.event_id), now, key, value, headers


def event_data(kind: str, amount: str, at: datetime) -> dict[str, Any]:
    """The ``data`` member the service writes for this event type."""
    stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if kind.startswith("refund."):
        return {
            "refund_id": new_refund_id(),
            "amount": amount,
            "currency": "USD",
            "status": kind.removeprefix("refund."),
            "payment_status": "refunded",
            "refunded_amount": amount,
        }
    status = kind.removeprefix("payment.")
    data: dict[str, Any] = {
        "amount": amount,
        "currency": "USD",
        "status": status,
        "payment_method": "credit_card",
        "card_brand": "visa",
        "capture_method": "manual" if status == "authorized" else "automatic",
        "captured_amount": amount if status == "captured" else "0.00",
        "updated_at": stamp,
    }
    if status == "declined":
        data["decline_code"] = "insufficient_funds"
    return data


def check_against_schema(factory: EventFactory) -> None:
    """Validate one event of each shape against docs/schemas/payment-event.schema.json."""
    try:
        import jsonschema  # a dev dependency: skipped without it
    except ImportError:
        return
    schema = json.loads((REPO / "docs" / "schemas" / "payment-event.schema.json").read_text())
    probe = EventFactory(factory.merchants, follow_ups=0.5, seed=1)
    for _ in range(40):
        _, _, _, value, _ = probe.next_record()
        jsonschema.validate(json.loads(value), schema)


@dataclass
class Production:
    """What one phase produced."""

    sent: dict[str, float] = field(default_factory=dict)
    follow_ups: set[str] = field(default_factory=set)
    """Events that are their transaction's second (delivered after the first)."""
    first_at: float = 0.0
    last_at: float = 0.0
    failed: int = 0

    @property
    def count(self) -> int:
        """Events produced."""
        return len(self.sent)

    @property
    def rate(self) -> float:
        """Events per second actually produced."""
        span = self.last_at - self.first_at
        return self.count / span if span > 0 else 0.0


class Producer:
    """An idempotent ``acks=all`` producer, like the service's."""

    def __init__(self, bootstrap: str, topic: str, factory: EventFactory) -> None:
        self.topic = topic
        self.factory = factory
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="bench-webhooks",
            acks="all",
            enable_idempotence=True,
        )

    async def start(self) -> int:
        """Connect; the topic's partition count."""
        await self.producer.start()
        partitions = await self.producer.partitions_for(self.topic)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} does not exist (scripts/create_topics.py)")
        return len(partitions)

    async def stop(self) -> None:
        """Flush and close."""
        await self.producer.stop()

    async def _send(self, production: Production, futures: list[asyncio.Future[Any]]) -> None:
        event_id, at, key, value, headers = self.factory.next_record()
        futures.append(await self.producer.send(self.topic, value=value, key=key, headers=headers))
        production.sent[event_id] = at
        if self.factory.follow_up:
            production.follow_ups.add(event_id)
        if not production.first_at:
            production.first_at = at
        production.last_at = at

    async def _settle(self, production: Production, futures: list[asyncio.Future[Any]]) -> None:
        results = await asyncio.gather(*futures, return_exceptions=True)
        production.failed = sum(isinstance(r, BaseException) for r in results)

    async def burst(self, count: int) -> Production:
        """``count`` events as fast as the producer takes them."""
        production, futures = Production(), []
        for _ in range(count):
            await self._send(production, futures)
        await self._settle(production, futures)
        return production

    async def at_rate(self, rate: float, duration_s: float) -> Production:
        """``rate`` events per second for ``duration_s``, open loop: each event is due at
        its own time, whatever happened to the ones before."""
        production, futures = Production(), []
        total = max(1, round(rate * duration_s))
        started = time.monotonic()
        produced = 0
        while produced < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while produced < due:
                await self._send(production, futures)
                produced += 1
            wait = started + produced / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        await self._settle(production, futures)
        return production


async def start_group_at_end(bootstrap: str, topic: str, group: str, partitions: int) -> None:
    """Commit ``group``'s offsets at the topic's current end (as tests/e2e/test_webhooks.py
    does): its dispatcher delivers what is produced from now on, not the topic's history."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        await consumer.commit({tp: await consumer.position(tp) for tp in assigned})
    finally:
        await consumer.stop()


# ------------------------------------------------------------------------ dispatcher


def dispatcher_env(
    *, database_url: str, kafka: str, topic: str, group: str, batch_size: int
) -> dict[str, str]:
    """Ours minus every setting of the service, plus what the bench sets."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in SETTINGS_NAMES and not k.upper().startswith(SETTINGS_PREFIXES)
    }
    return env | dispatcher_overrides(
        database_url=database_url, kafka=kafka, topic=topic, group=group, batch_size=batch_size
    )


def dispatcher_overrides(
    *, database_url: str, kafka: str, topic: str, group: str, batch_size: int
) -> dict[str, str]:
    """The settings the bench gives the dispatcher (the rest are the defaults)."""
    return {
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "KAFKA_TOPIC": topic,
        "WEBHOOK_CONSUMER_GROUP": group,
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "WEBHOOK_BATCH_SIZE": str(batch_size),
        "DD_TRACE_ENABLED": "false",
        "METRICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }


def effective_settings(overrides: dict[str, str]) -> dict[str, Any]:
    """The dispatcher's webhook, Kafka-consumer and pool settings as it runs them."""
    names = [
        name
        for name in Settings.model_fields
        if name.startswith("webhook_")
        or name in {"db_pool_size", "db_max_overflow", "purge_interval_s", "purge_batch_size"}
    ]
    values: dict[str, Any] = {}
    for name in names:
        default = Settings.model_fields[name].default
        values[name] = default
        env_name = name.upper()
        if env_name in overrides:
            values[name] = overrides[env_name]
    values["environment"] = overrides["APP_ENV"]
    values["tracing_enabled"] = overrides["DD_TRACE_ENABLED"]
    values["metrics_enabled"] = overrides["METRICS_ENABLED"]
    values["log_level"] = Settings.model_fields["log_level"].default
    return values


class DispatcherProcess:
    """``python -m app.dispatcher`` in its own session, stopped by its handle."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (joining the group and the first round happen in the background)."""
        log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.dispatcher"],
            env=self.env,
            cwd=out_dir(),  # a developer's .env in the repo does not reconfigure it
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """Its pid."""
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        """Raise if it has exited."""
        if self.process is None or self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the dispatcher exited; its log ends with:\n{tail}")

    def cpu_seconds(self) -> float:
        """utime + stime so far."""
        stat = read_proc_stat(self.pid)
        return stat[1] if stat else 0.0

    def rss_kb(self) -> int:
        """Peak RSS (VmHWM) so far."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def log_offset(self) -> int:
        """Where its log ends now."""
        return file_size(self.log_path)

    def warnings_since(self, offset: int) -> dict[str, int]:
        """Warnings and errors it logged after ``offset``, by message (numbers elided)."""
        counts: Counter[str] = Counter()
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                lines = handle.read().decode(errors="replace").splitlines()
        except OSError:
            return {}
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                if "Traceback" in line or "Error" in line:
                    counts[line.strip()[:120]] += 1
                continue
            if isinstance(entry, dict) and entry.get("level") in {"WARNING", "ERROR", "CRITICAL"}:
                message = re.sub(r"\d+(\.\d+)?", "N", str(entry.get("message", "")))[:120]
                counts[f"{entry['level']} {message}"] += 1
        return dict(counts.most_common(8))

    def stop(self) -> None:
        """SIGTERM (it finishes its batch and leaves the group), SIGKILL if it lingers."""
        stop_process(self.process, "dispatcher")
        self.process = None


# ---------------------------------------------------------------------------- bench


@dataclass
class Config:
    """The run's settings (see the module docstring)."""

    database: str = field(default_factory=lambda: env_str("BENCH_WH_DB", "payments_bench_webhooks"))
    topic: str = field(default_factory=lambda: env_str("BENCH_WH_TOPIC", "payments.events"))
    merchants: int = field(default_factory=lambda: env_int("BENCH_WH_MERCHANTS", 4))
    burst: int = field(default_factory=lambda: env_int("BENCH_WH_BURST", 20_000))
    burst_timeout_s: float = field(default_factory=lambda: env_float("BENCH_WH_BURST_TIMEOUT", 90))
    rates: list[float] = field(
        default_factory=lambda: [
            float(r)
            for r in env_str("BENCH_WH_RATES", "20,200,500,750,1000").split(",")
            if r.strip() and float(r) > 0
        ]
    )
    phase_s: float = field(default_factory=lambda: env_float("BENCH_WH_PHASE_S", 15))
    batch_sizes: list[int] = field(
        default_factory=lambda: [
            int(b) for b in env_str("BENCH_WH_BATCH_SIZES", "50,200").split(",") if b.strip()
        ]
    )
    follow_ups: float = field(default_factory=lambda: env_float("BENCH_WH_FOLLOW_UPS", 0.2))
    verify_every: int = field(default_factory=lambda: env_int("BENCH_WH_VERIFY_EVERY", 1))
    drain_timeout_s: float = field(default_factory=lambda: env_float("BENCH_WH_DRAIN_TIMEOUT", 30))
    idle_s: float = field(default_factory=lambda: env_float("BENCH_WH_IDLE_S", 3))
    warmup: int = field(default_factory=lambda: env_int("BENCH_WH_WARMUP", 1000))
    analyze: bool = field(default_factory=lambda: env_str("BENCH_WH_ANALYZE", "1") != "0")
    profile_phase: str = field(default_factory=lambda: env_str("BENCH_WH_PROFILE", ""))
    profile_s: float = field(default_factory=lambda: env_float("BENCH_WH_PROFILE_S", 10))


@dataclass
class CpuSample:
    """CPU seconds of everything the bench accounts for, at one moment."""

    at: float
    dispatcher: float
    receiver: float
    bench: float
    postgres: float
    kafka: float
    machine: MachineCpu

    def per_second(self, earlier: CpuSample) -> dict[str, float]:
        """Cores busy on average between two samples, per party, and the rest (other)."""
        wall = max(self.at - earlier.at, 1e-9)
        cores = {
            name: round((getattr(self, name) - getattr(earlier, name)) / wall, 3)
            for name in ("dispatcher", "receiver", "bench", "postgres", "kafka")
        }
        busy = self.machine.busy_cores_since(earlier.machine)
        cores["machine"] = round(busy, 2)
        cores["other"] = round(
            max(0.0, busy - sum(v for k, v in cores.items() if k != "machine")), 2
        )
        return cores


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list (0 when empty)."""
    if not ordered:
        return 0.0
    rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def file_size(path: Path) -> int:
    """A file's size, 0 if it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def peak_rate(ordered: list[float], window_s: float) -> float:
    """The most arrivals within any ``window_s`` (sorted times), per second."""
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] > window_s:
            start += 1
        best = max(best, end - start + 1)
    return best / window_s


def latency_summary(ordered: list[float]) -> dict[str, float]:
    """Percentiles of sorted latencies (ms)."""
    return {
        "n": len(ordered),
        "p50": round(percentile(ordered, 50), 1),
        "p90": round(percentile(ordered, 90), 1),
        "p95": round(percentile(ordered, 95), 1),
        "p99": round(percentile(ordered, 99), 1),
        "max": round(ordered[-1], 1) if ordered else 0.0,
    }


def statements_per_delivery(
    before: dict[tuple[int, int, bool], tuple[str, int, float]],
    after: dict[tuple[int, int, bool], tuple[str, int, float]],
    deliveries: int,
) -> dict[str, Any]:
    """SQL statements (and database execution time) per delivery between two snapshots."""
    rows = []
    for key, (query, calls, total_ms) in after.items():
        _, calls0, total0 = before.get(key, (query, 0, 0.0))
        if calls > calls0:
            rows.append((query, calls - calls0, total_ms - total0, key[2]))
    per = max(deliveries, 1)
    top = sorted(rows, key=lambda r: r[2], reverse=True)[:8]
    claims = [r for r in rows if " ".join(r[0].split()).startswith(CLAIM_STATEMENT)]
    claim_calls = sum(r[1] for r in claims)
    return {
        "claims": claim_calls,
        "claim_mean_ms": round(sum(r[2] for r in claims) / claim_calls, 2) if claim_calls else 0.0,
        # Statements the dispatcher sent (round trips, BEGIN and COMMIT included) ...
        "per_delivery": round(sum(r[1] for r in rows if r[3]) / per, 3),
        # ... and those PostgreSQL ran inside them (foreign-key checks, per row).
        "nested_per_delivery": round(sum(r[1] for r in rows if not r[3]) / per, 3),
        "db_exec_ms_per_delivery": round(sum(r[2] for r in rows if r[3]) / per, 4),
        "top_by_time": [
            {
                "query": " ".join(query.split())[:160],
                "calls": calls,
                "per_delivery": round(calls / per, 4),
                "mean_ms": round(total / calls, 3) if calls else 0.0,
            }
            for query, calls, total, _ in top
        ],
    }


class WebhookBench:
    """One run: setup, the phases of every batch size, the report."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ports = Ports()
        self.stack = Stack()
        self.db = BenchDatabase(config.database, self.ports.postgres)
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.merchants = [f"{MERCHANT_PREFIX}{i}" for i in range(config.merchants)]
        self.factory = EventFactory(self.merchants, config.follow_ups)
        self.arrivals = Arrivals()
        self.results: list[dict[str, Any]] = []
        self.settings_used: dict[str, Any] = {}
        self.receiver: ReceiverProcess | None = None
        self.dispatcher: DispatcherProcess | None = None
        self.profiler: subprocess.Popen[bytes] | None = None

    # -- setup ------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Stack, database, merchants, and their endpoints on the receiver's port."""
        self.ensure_stack()
        log(f"database {self.db.name}: drop, create, alembic upgrade head")
        self.db.recreate()
        base_env = {
            k: v
            for k, v in os.environ.items()
            if k.upper() not in SETTINGS_NAMES and not k.upper().startswith(SETTINGS_PREFIXES)
        } | {"APP_ENV": "test", "DATABASE_URL": self.db.url}
        self.db.migrate(base_env)
        if not self.db.enable_statement_stats():
            log("SQL statements per delivery will not be reported")
        log(f"{len(self.merchants)} merchants, one endpoint each")
        for merchant in self.merchants:
            create_merchant(base_env, merchant, "sk_bench_" + uuid.uuid4().hex)
        await self.add_endpoints()

    def ensure_stack(self) -> None:
        """PostgreSQL and Kafka up. On a cold machine the bench starts them (and leaves
        them running); when only some are down -- someone's drill (scripts/soak.py stops
        and restarts them) -- it waits for them rather than getting in the drill's way."""
        needed = ["postgres", "zookeeper", "kafka"]
        if not set(needed) & self.stack.running():
            self.stack.up(needed)
            return
        deadline = time.monotonic() + STACK_WAIT_S
        while missing := [s for s in needed if s not in self.stack.running()]:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{', '.join(missing)} still down after {STACK_WAIT_S:g} s;"
                    " start it with: bash scripts/stack.sh up"
                )
            log(f"waiting for {', '.join(missing)} (stopped by someone else's drill?)")
            time.sleep(5)

    def stack_pids(self) -> dict[str, int | None]:
        """The PostgreSQL and Kafka pids: a change during a phase means a restart."""
        return {name: self.stack.service_pid(name) for name in ("postgres", "kafka")}

    async def add_endpoints(self) -> None:
        """Register one endpoint per merchant on the receiver's port (which is chosen now)."""
        self.receiver = ReceiverProcess({}, self.config.verify_every)
        settings = Settings(
            _env_file=None,
            environment="test",
            database_url=self.db.url,
            webhook_allow_private_targets=True,
            tracing_enabled=False,
            metrics_enabled=False,
        )
        engine = build_engine(settings, application_name="bench-webhooks")
        session_factory = build_session_factory(engine)

        def uow_factory() -> UnitOfWork:
            return SqlUnitOfWork(session_factory)

        admin = build_admin(settings, uow_factory)
        secrets: dict[str, str] = {}
        try:
            for index, merchant in enumerate(self.merchants):
                issued = await webhooks.add_endpoint(
                    admin, merchant_id=merchant, url=self.receiver.url(index)
                )
                secrets[str(index)] = issued.secret
        finally:
            await engine.dispose()
        self.receiver.secrets = secrets

    def empty_webhook_tables(self) -> None:
        """Deliveries, events and attempts of earlier phases go (the endpoints stay)."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("TRUNCATE webhook_attempts, webhook_deliveries, webhook_events")
        finally:
            conn.close()

    # -- measuring --------------------------------------------------------------------

    def cpu_sample(self) -> CpuSample:
        """CPU of the dispatcher, receiver, this script, PostgreSQL and Kafka, now."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        receiver_pid = self.receiver.pid if self.receiver else None
        receiver_stat = read_proc_stat(receiver_pid) if receiver_pid else None
        return CpuSample(
            at=time.monotonic(),
            dispatcher=self.dispatcher.cpu_seconds() if self.dispatcher else 0.0,
            receiver=receiver_stat[1] if receiver_stat else 0.0,
            bench=usage.ru_utime + usage.ru_stime,
            postgres=tree_cpu_seconds(self.stack.service_pid("postgres")),
            kafka=tree_cpu_seconds(self.stack.service_pid("kafka")),
            machine=MachineCpu.sample(),
        )

    async def wait_for(
        self,
        session: aiohttp.ClientSession,
        ids: dict[str, float],
        *,
        on_first: Any = None,
        cap_s: float | None = None,
        stall_s: float | None = None,
    ) -> tuple[int, bool]:
        """Poll the receiver until every id arrived, or nothing new came for the drain
        timeout; (arrived, complete). ``on_first`` runs once, when the first one is seen."""
        assert self.receiver is not None
        assert self.dispatcher is not None
        wanted = set(ids)
        missing = wanted - self.arrivals.first.keys()
        last_progress = started = time.monotonic()
        first_seen = False
        while missing:
            if cap_s is not None and time.monotonic() - started > cap_s:
                log(f"  {len(missing)} deliveries still missing after {cap_s:g} s; stopping here")
                return len(wanted) - len(missing), False
            self.dispatcher.check_alive()
            if await self.arrivals.poll(session, self.receiver.base_url):
                last_progress = time.monotonic()
                missing = {i for i in missing if i not in self.arrivals.first}
                if not first_seen and len(missing) < len(wanted):
                    first_seen = True
                    if on_first is not None:
                        on_first()
            elif time.monotonic() - last_progress > (stall_s or self.config.drain_timeout_s):
                log(f"  {len(missing)} deliveries still missing; giving up on them")
                return len(wanted) - len(missing), False
            await asyncio.sleep(POLL_S)
        return len(wanted), True

    def start_profile(self, phase: str, duration_s: float) -> Path | None:
        """py-spy on the dispatcher if this phase is the one to profile."""
        if phase != self.config.profile_phase or self.dispatcher is None:
            return None
        path = out_dir() / f"webhooks-profile-{phase}.txt"
        path.unlink(missing_ok=True)
        log(f"  py-spy records the dispatcher for {duration_s:.0f} s")
        self.profiler = subprocess.Popen(
            [
                *pyspy_command(),
                "record",
                "--pid",
                str(self.dispatcher.pid),
                "--duration",
                str(max(1, int(duration_s))),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(path),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return path

    def finish_profile(self, path: Path | None) -> dict[str, Any] | None:
        """Wait for py-spy and summarize what it saw."""
        profiler, self.profiler = self.profiler, None
        if path is None or profiler is None:
            return None
        try:
            _, err = profiler.communicate(timeout=self.config.profile_s + 60)
        except subprocess.TimeoutExpired:
            stop_process(profiler, "py-spy")
            return None
        if profiler.returncode != 0 or not path.exists():
            log(f"py-spy failed ({profiler.returncode}): {err.decode(errors='replace')[-400:]}")
            return None
        return summarize_profile(path, top=20) | {"raw": str(path)}

    def phase_result(
        self,
        *,
        name: str,
        kind: str,
        batch_size: int,
        production: Production,
        arrived: int,
        complete: bool,
        cpu0: CpuSample,
        cpu1: CpuSample,
        counted: int,
        stmts0: dict[tuple[int, int, bool], tuple[str, int, float]],
        offered: float | None,
        pids0: dict[str, int | None],
        log0: int,
    ) -> dict[str, Any]:
        """The figures of one phase."""
        sent = production.sent
        arrivals = [self.arrivals.first[i] for i in sent if i in self.arrivals.first]
        latencies = self.latencies(sent)
        firsts = self.latencies({i: t for i, t in sent.items() if i not in production.follow_ups})
        seconds = self.latencies({i: t for i, t in sent.items() if i in production.follow_ups})
        first_arrival = min(arrivals, default=0.0)
        last_arrival = max(arrivals, default=0.0)
        duplicates = sum(self.arrivals.seen[i] - 1 for i in sent if self.arrivals.seen[i] > 1)
        dispatcher_cpu = cpu1.dispatcher - cpu0.dispatcher
        if kind == "burst":
            window = last_arrival - first_arrival
            delivered_per_s = (arrived - 1) / window if window > 0 else 0.0
        else:
            window = last_arrival - production.first_at
            delivered_per_s = arrived / window if window > 0 else 0.0
        backlog_at_end = sum(1 for t in arrivals if t > production.last_at)
        arrivals.sort()
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        result: dict[str, Any] = {
            "phase": name,
            "kind": kind,
            "batch_size": batch_size,
            "offered_per_s": offered,
            "produced": production.count,
            "produced_per_s": round(production.rate, 1),
            "produce_failures": production.failed,
            "delivered": arrived,
            "complete": complete,
            "missing": production.count - arrived,
            "duplicates": duplicates,
            "delivered_per_s": round(delivered_per_s, 1),
            "window_s": round(window, 2),
            # The best 5 s of the phase, and the longest time nothing arrived.
            "peak_5s_per_s": round(peak_rate(arrivals, 5.0), 1),
            "longest_gap_s": round(max(gaps, default=0.0), 2),
            "latency_ms": latency_summary(latencies),
            # A transaction's second event waits for its first to be delivered.
            "latency_ms_first_events": latency_summary(firsts),
            "latency_ms_follow_ups": latency_summary(seconds),
            "backlog_when_production_ended": backlog_at_end,
            "drain_after_production_s": round(max(0.0, last_arrival - production.last_at), 2),
            "dispatcher_cpu_s": round(dispatcher_cpu, 3),
            "dispatcher_cpu_ms_per_delivery": round(dispatcher_cpu * 1000 / max(counted, 1), 3),
            "dispatcher_peak_rss_mb": round(
                (self.dispatcher.rss_kb() if self.dispatcher else 0) / 1024, 1
            ),
            "receiver_cpu_ms_per_delivery": round(
                (cpu1.receiver - cpu0.receiver) * 1000 / max(counted, 1), 3
            ),
            "busy_cores": cpu1.per_second(cpu0),
            "stack_restarted": [n for n, pid in self.stack_pids().items() if pids0.get(n) != pid],
            "dispatcher_warnings": self.dispatcher.warnings_since(log0) if self.dispatcher else {},
        }
        if self.db.stats_enabled:
            result["statements"] = statements_per_delivery(
                stmts0, self.db.statement_snapshot(), counted
            )
        if kind == "burst":
            result["latency_note"] = (
                "events were produced before the dispatcher started: latency includes that wait"
            )
        return result

    def latencies(self, sent: dict[str, float]) -> list[float]:
        """Arrival - production of what arrived, in ms, sorted."""
        first = self.arrivals.first
        return sorted((first[i] - t) * 1000 for i, t in sent.items() if i in first)

    def summary_line(self, r: dict[str, Any]) -> str:
        """One progress line for a phase."""
        lat = r["latency_ms"]
        sql = r.get("statements", {}).get("per_delivery", "-")
        return (
            f"  {r['delivered']}/{r['produced']} delivered, {r['delivered_per_s']}/s,"
            f" p50 {lat['p50']} ms, p99 {lat['p99']} ms,"
            f" dispatcher {r['dispatcher_cpu_ms_per_delivery']} ms CPU/delivery,"
            f" {sql} SQL/delivery, peak {r['peak_5s_per_s']}/s over 5 s,"
            f" longest gap {r['longest_gap_s']} s, dup {r['duplicates']}, missing {r['missing']}"
            + (
                f" (RESTARTED during the phase: {r['stack_restarted']})"
                if r["stack_restarted"]
                else ""
            )
            + (
                f"; dispatcher warnings: {r['dispatcher_warnings']}"
                if r["dispatcher_warnings"]
                else ""
            )
        )

    # -- phases -----------------------------------------------------------------------

    def start_dispatcher(self, group: str, batch_size: int) -> None:
        """A dispatcher process in ``group``."""
        overrides = dispatcher_overrides(
            database_url=self.db.url,
            kafka=self.ports.kafka_bootstrap,
            topic=self.config.topic,
            group=group,
            batch_size=batch_size,
        )
        self.settings_used[f"batch_size_{batch_size}"] = effective_settings(overrides)
        self.dispatcher = DispatcherProcess(
            dispatcher_env(
                database_url=self.db.url,
                kafka=self.ports.kafka_bootstrap,
                topic=self.config.topic,
                group=group,
                batch_size=batch_size,
            ),
            out_dir() / DISPATCHER_LOG,
        )
        self.dispatcher.start()
        log(f"  dispatcher pid {self.dispatcher.pid} (WEBHOOK_BATCH_SIZE={batch_size}) started")

    def stop_dispatcher(self) -> None:
        """Stop the dispatcher, if one runs."""
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None

    async def fresh_start(
        self,
        session: aiohttp.ClientSession,
        producer: Producer,
        *,
        partitions: int,
        batch_size: int,
        label: str,
        keep_running: bool,
    ) -> str:
        """Empty webhook tables, a consumer group at the topic's end, a warm-up (a dispatcher
        delivers a few events: tables and caches not empty, as on a running system), then
        ANALYZE as autovacuum would have done by then. The group's name."""
        self.empty_webhook_tables()
        group = f"bench-webhooks-{self.run_id}-{label}"
        await start_group_at_end(self.ports.kafka_bootstrap, self.config.topic, group, partitions)
        count = self.config.warmup
        if count > 0 or keep_running:
            self.start_dispatcher(group, batch_size)
        if count > 0:
            rate = WARMUP_RATE
            log(f"warm-up: {count} events at {rate:g}/s (not measured)")
            production = await producer.at_rate(rate, count / rate)
            arrived, _ = await self.wait_for(session, production.sent)
            log(f"  {arrived}/{production.count} delivered")
        if not keep_running:
            self.stop_dispatcher()
        self.analyze()
        return group

    def analyze(self) -> None:
        """ANALYZE the webhook tables (the claim's plan depends on their statistics)."""
        if self.config.analyze:
            conn = self.db.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "ANALYZE webhook_endpoints, webhook_events, webhook_deliveries,"
                        " webhook_attempts"
                    )
            finally:
                conn.close()

    async def burst_phase(
        self, session: aiohttp.ClientSession, producer: Producer, batch_size: int, group: str
    ) -> None:
        """Backlog first, then a fresh dispatcher drains it."""
        name = f"burst-b{batch_size}"
        log(f"{name}: producing {self.config.burst} events, dispatcher stopped")
        pids0 = self.stack_pids()
        log0 = file_size(out_dir() / DISPATCHER_LOG)
        production = await producer.burst(self.config.burst)
        log(f"  produced at {production.rate:.0f}/s ({production.failed} failures)")
        stmts0 = self.db.statement_snapshot()
        started = time.monotonic()
        self.start_dispatcher(group, batch_size)
        marks: dict[str, Any] = {}
        profile_path: list[Path | None] = [None]

        def first_arrival() -> None:
            marks["cpu"] = self.cpu_sample()
            marks["count"] = sum(1 for i in production.sent if i in self.arrivals.first)
            marks["stmts"] = self.db.statement_snapshot()
            marks["after_s"] = time.monotonic() - started
            profile_path[0] = self.start_profile(name, self.config.profile_s)

        arrived, complete = await self.wait_for(
            session,
            production.sent,
            on_first=first_arrival,
            cap_s=self.config.burst_timeout_s,
            stall_s=self.config.burst_timeout_s,
        )
        cpu1 = self.cpu_sample()
        result = self.phase_result(
            name=name,
            kind="burst",
            batch_size=batch_size,
            production=production,
            arrived=arrived,
            complete=complete,
            cpu0=marks.get("cpu", cpu1),
            cpu1=cpu1,
            counted=arrived - marks.get("count", 0),
            stmts0=marks.get("stmts", stmts0),
            offered=None,
            pids0=pids0,
            log0=log0,
        )
        result["first_delivery_after_start_s"] = round(marks.get("after_s", 0.0), 2)
        if profile := self.finish_profile(profile_path[0]):
            result["profile"] = profile
        self.results.append(result)
        log(self.summary_line(result))

    async def idle_phase(self) -> None:
        """The dispatcher's CPU while there is nothing to deliver."""
        if self.config.idle_s <= 0 or self.dispatcher is None:
            return
        before = self.dispatcher.cpu_seconds()
        await asyncio.sleep(self.config.idle_s)
        cpu = self.dispatcher.cpu_seconds() - before
        self.results.append(
            {
                "phase": "idle",
                "kind": "idle",
                "dispatcher_cpu_pct_of_a_core": round(cpu / self.config.idle_s * 100, 2),
            }
        )
        log(f"idle: dispatcher {cpu / self.config.idle_s * 100:.1f} % of a core")

    async def rate_phase(
        self, session: aiohttp.ClientSession, producer: Producer, batch_size: int, rate: float
    ) -> None:
        """Events at a fixed rate for the phase's duration, then until all arrived."""
        name = f"rate-{rate:g}"
        log(f"{name}: {rate:g} events/s for {self.config.phase_s:g} s")
        pids0 = self.stack_pids()
        log0 = self.dispatcher.log_offset() if self.dispatcher else 0
        stmts0 = self.db.statement_snapshot()
        cpu0 = self.cpu_sample()
        profile = self.start_profile(name, min(self.config.phase_s, self.config.profile_s))
        assert self.receiver is not None
        production_task = asyncio.create_task(producer.at_rate(rate, self.config.phase_s))
        while not production_task.done():
            await asyncio.sleep(0.2)
            await self.arrivals.poll(session, self.receiver.base_url)
        production = production_task.result()
        arrived, complete = await self.wait_for(session, production.sent)
        cpu1 = self.cpu_sample()
        result = self.phase_result(
            name=name,
            kind="rate",
            batch_size=batch_size,
            production=production,
            arrived=arrived,
            complete=complete,
            cpu0=cpu0,
            cpu1=cpu1,
            counted=arrived,
            stmts0=stmts0,
            offered=rate,
            pids0=pids0,
            log0=log0,
        )
        if summary := self.finish_profile(profile):
            result["profile"] = summary
        self.results.append(result)
        log(self.summary_line(result))

    async def run(self) -> None:
        """The rate phases (first batch size), then a burst per batch size, each series
        from empty tables, a fresh consumer group and a warm-up."""
        await self.prepare()
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            assert self.receiver is not None
            self.receiver.launch()
            await self.receiver.wait_ready(session)
            log(f"receiver pid {self.receiver.pid} on {self.receiver.base_url}")
            producer = Producer(self.ports.kafka_bootstrap, self.config.topic, self.factory)
            partitions = await producer.start()
            log(f"topic {self.config.topic}: {partitions} partitions")
            check_against_schema(self.factory)
            try:
                if self.config.rates:
                    batch_size = self.config.batch_sizes[0]
                    await self.fresh_start(
                        session,
                        producer,
                        partitions=partitions,
                        batch_size=batch_size,
                        label="rates",
                        keep_running=True,
                    )
                    await self.idle_phase()
                    for rate in self.config.rates:
                        await self.rate_phase(session, producer, batch_size, rate)
                    self.stop_dispatcher()
                for batch_size in self.config.batch_sizes if self.config.burst > 0 else []:
                    group = await self.fresh_start(
                        session,
                        producer,
                        partitions=partitions,
                        batch_size=batch_size,
                        label=f"b{batch_size}",
                        keep_running=False,
                    )
                    await self.burst_phase(session, producer, batch_size, group)
                    self.stop_dispatcher()
                stats = await self.receiver.stats(session)
            finally:
                self.stop_dispatcher()
                await producer.stop()
        self.receiver_stats = stats

    def cleanup(self) -> None:
        """Stop what this run started (by handle); the stack stays up."""
        if self.profiler is not None:
            stop_process(self.profiler, "py-spy")
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.receiver is not None:
            self.receiver.stop()

    # -- report -----------------------------------------------------------------------

    def report(self, started: float) -> None:
        """``.bench/webhooks.json`` (and a timestamped copy) and a table on stdout."""
        document = {
            "run_id": self.run_id,
            "git": git_state(),
            "host": {
                "cpus": os.cpu_count(),
                "load_avg_at_end": os.getloadavg(),
                "python": platform.python_version(),
            },
            "config": self.config.__dict__,
            "settings": self.settings_used,
            "receiver": getattr(self, "receiver_stats", {}),
            "duration_s": round(time.monotonic() - started, 1),
            "phases": self.results,
        }
        text = json.dumps(document, indent=2, default=str)
        (out_dir() / "webhooks.json").write_text(text)
        (out_dir() / f"webhooks-{self.run_id}.json").write_text(text)
        print(table(self.results))
        log(f"results: {out_dir() / 'webhooks.json'}")


def table(results: list[dict[str, Any]]) -> str:
    """The phases as a fixed-width table."""
    header = (
        f"{'phase':<11} {'offered':>7} {'deliv/s':>7} {'n':>6} {'p50':>7} {'p95':>7}"
        f" {'p99':>7} {'max':>7} {'p99 1st':>7} {'cpu ms':>6} {'rcv ms':>6} {'sql':>5}"
        f" {'claim':>7} {'dup':>3} {'miss':>5} {'disp':>4} {'other':>5}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r["kind"] == "idle":
            lines.append(f"{'idle':<11} dispatcher {r['dispatcher_cpu_pct_of_a_core']} % of a core")
            continue
        lat = r["latency_ms"]
        offered = f"{r['offered_per_s']:g}/s" if r["offered_per_s"] else "burst"
        statements = r.get("statements", {})
        restarted = " RESTART " + ",".join(r["stack_restarted"]) if r["stack_restarted"] else ""
        lines.append(
            f"{r['phase']:<11} {offered:>7} {r['delivered_per_s']:>7} {r['delivered']:>6}"
            f" {lat['p50']:>7} {lat['p95']:>7} {lat['p99']:>7} {lat['max']:>7}"
            f" {r['latency_ms_first_events']['p99']:>7}"
            f" {r['dispatcher_cpu_ms_per_delivery']:>6} {r['receiver_cpu_ms_per_delivery']:>6}"
            f" {statements.get('per_delivery', '-'):>5} {statements.get('claim_mean_ms', '-'):>7}"
            f" {r['duplicates']:>3} {r['missing']:>5} {r['busy_cores']['dispatcher']:>4}"
            f" {r['busy_cores']['other']:>5}{restarted}"
        )
    lines.append(
        "latency (ms) = arrival at the receiver - occurred_at (burst: includes the wait before"
        " the dispatcher started); p99 1st = p99 of events that are their transaction's first;"
        " cpu ms / rcv ms = dispatcher / receiver CPU per delivery; sql = statements the"
        " dispatcher sent per delivery; claim = mean ms of the claim statement; disp = cores"
        " the dispatcher kept busy; other = busy cores not explained by the bench, PostgreSQL"
        " or Kafka (someone else's work)"
    )
    return "\n".join(lines)


def git_state() -> dict[str, Any]:
    """HEAD, and what of app/ differs from it (the code measured is the working tree's)."""

    def git(*args: str) -> str:
        try:
            result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=False)
        except OSError:
            return ""
        return result.stdout.decode(errors="replace")

    diff = git("diff", "HEAD", "--", "app", "migrations")
    return {
        "head": git("rev-parse", "--short", "HEAD").strip(),
        "app_changed_files": git("diff", "HEAD", "--name-only", "--", "app", "migrations").split(),
        "app_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else None,
    }


@contextlib.contextmanager
def bench_log_prefix() -> Iterator[None]:
    """Progress lines say they are this bench's."""
    import bench  # the module whose helpers this one shares

    previous = bench.LOG_PREFIX[0]
    bench.LOG_PREFIX[0] = "bench-webhooks"
    try:
        yield
    finally:
        bench.LOG_PREFIX[0] = previous


def main() -> int:
    """Run the bench (or, with ``--receiver``, be the receiver process)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--verify-every", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        return receiver_main(args.receiver, args.verify_every)
    started = time.monotonic()
    bench_run = WebhookBench(Config())
    with bench_log_prefix(), interrupt_as_exception():
        try:
            asyncio.run(bench_run.run())
        finally:
            bench_run.cleanup()
            if bench_run.results:
                bench_run.report(started)
        log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
