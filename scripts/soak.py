"""Soak and fault drill of the payment service (``make soak``): bounded, a few minutes.

Starts the service like ``scripts/bench.py`` does (uvicorn, 2 workers, APP_ENV=production,
MockServer as the bank, Kafka, a dedicated database ``SOAK_DB``, default
``payments_soak``), with short reconciliation windows (below), drives a mixed load at a
moderate rate from an asyncio httpx client for ``SOAK_SECONDS`` (default 180), and
meanwhile injects, at fixed fractions of the run:

* 15 %: Kafka restart (``stack.sh down kafka``, 5 s, ``up kafka``);
* 38 %: PostgreSQL restart (the same);
* 48 %: the webhook receiver's port closed for ``SOAK_RECEIVER_DOWN_S`` (default 5 s; 0:
  not at all): the dispatchers' POSTs are refused and retried (see "Webhooks" below);
* 58 %: the bank turns slow for ``SOAK_BANK_SLOW_S`` (default 15 s): MockServer
  expectations above the default ones answer every authorization and refund of this run
  after the service's bank timeout (approved ``SLOW01`` / declined for the declined card /
  500 for the error card / refund succeeded ``slow_refund_01``). The service's attempts
  time out, so these requests answer **202** (payment ``processing``, refund ``pending``)
  and the circuit opens (503 ``bank_unavailable``: the bank certainly was not asked);
* ``SOAK_KILL_AFTER_S`` (default 5 s) into the slow window: **SIGKILL of one uvicorn
  worker** (never the supervisor: uvicorn >= 0.30 replaces a dead worker, which the drill
  verifies; if no replacement appears within 30 s the whole service is killed and started
  again on the same port), while the bank holds requests of that worker;
* 78 %: Kafka restart again.

**Replicas** (``make soak-replicas``: SOAK_INSTANCES=2, SOAK_PGBOUNCER=1): the drill runs
SOAK_INSTANCES independent services, each its own uvicorn on its own port with SOAK_WORKERS
workers (each worker with its own outbox relay, reconciler and purger), all on the one
database, and spreads the load over them request by request, as a load balancer without
stickiness would: a retry or a racing duplicate often reaches another instance than its
first attempt. The worker SIGKILL hits the first instance; the other must answer
throughout. With SOAK_PGBOUNCER=1 every service connection goes through the stack's
PgBouncer in transaction pooling (DB_STATEMENT_CACHE_SIZE=0; worker pools of 20 + 30
overflow, as docs/deployment.md recommends behind PgBouncer), LISTEN and migrations direct
(DATABASE_DIRECT_URL), so the PostgreSQL restart hits PgBouncer's server connections; a
sampler of PgBouncer's SHOW POOLS reports how many clients waited for a server. The
invariants are the same; the report adds the requests by instance and how many idempotency
keys were used on more than one.

The load mixes new payments (approved, 5 % declined and 2 % "bank error" cards -- MockServer
answers 500 to 4000000000000119, so the reconciler must end them ``failed`` /
``bank_no_record``), status reads, partial refunds, racing refunds of one payment,
idempotent retries (the same request re-sent with the same ``Idempotency-Key``) and racing
duplicates (the same new request twice at once). Each request carries an
``X-Correlation-ID`` of this run (``soak-<run>-<n>``): the slow-bank expectations match
only this run's traffic, so a shared MockServer is slowed for nobody else. Every response is
recorded with its timestamps and status in ``.bench/soak-responses.jsonl``.

MockServer has no memory: its status lookups (``GET /v1/authorizations/{id}``,
``GET /v1/refunds/{id}``) answer 404 ``no_such_record`` unless told otherwise. The drill
plays **the bank's memory** (:class:`BankMemory`): every ``SOAK_BANK_MEMORY_INTERVAL_S``
(default 3 s), and once more after the load, it records what MockServer received from this
run and answered (``/mockserver/retrieve?type=REQUESTS`` and ``REQUEST_RESPONSES``), takes
the ids whose outcome the service does not know (payments ``processing`` and refunds
``pending`` in the database -- or, while PostgreSQL is down, those answered 202) and
registers the bank's decision as the lookup's answer for that id. Since MockServer 5.15
keeps only about heap/80 KB log entries (some 1,500 requests with the stack's -Xmx256m),
fewer than a full drill sends, the record is kept here and the run's entries MockServer no
longer needs are cleared from its log (the run's status lookups, and the requests of ids
whose bank calls are certainly over). It also samples, by SQL every 2 s, the refund
balance of every payment (:class:`RefundSampler`). After the load it waits
(``SOAK_SETTLE_TIMEOUT``, default 120 s) until nothing is ``processing`` or ``pending``.

**Webhooks.** Before the load the drill registers, with ``payments-admin add-webhook``, an
endpoint for its merchant (the run's only merchant: every merchant of the run is
registered) pointing at a receiver it runs itself: an aiohttp server on 127.0.0.1 in the
drill's event loop (:class:`WebhookReceiver`) that verifies every signature with
``standardwebhooks`` (``Webhook(secret).verify``), answers 204 and records webhook-id, body
and arrival time (``.bench/soak-webhooks-receipts.jsonl``). It starts
``SOAK_WEBHOOK_DISPATCHERS`` (default 2; 0: no webhook part) ``python -m app.dispatcher``
processes (logs in ``.bench/soak-webhooks-<n>.log``) in a consumer group of this run,
``soak-webhooks-<run>``, whose offsets it first commits at the topic's end before the run
(a new group would start at the earliest offset, among older runs' events); they
share the partitions. The drill's Kafka and PostgreSQL restarts hit them too: they must
run to the end and stop cleanly on SIGTERM.

The API runs with APP_ENV=production, which refuses http:// and loopback webhook targets
(SSRF protection; WEBHOOK_ALLOW_PRIVATE_TARGETS cannot be turned on in production). So
``add-webhook`` and the dispatchers run with the service's environment (same database,
Kafka, topic and vault keys: the dispatchers open the secret ``add-webhook`` sealed) but
APP_ENV=test and WEBHOOK_ALLOW_PRIVATE_TARGETS=true: APP_ENV changes nothing else in
those processes (it only selects the production-only start checks and the target rules),
and the service under test keeps its production profile. The dispatchers retry quickly,
WEBHOOK_RETRY_FIRST_S=1 and WEBHOOK_RETRY_MAX_INTERVAL_S=5 (unless the environment sets
them); the retry window stays 3 days, so nothing may be given up. After the settle wait it
waits (``SOAK_WEBHOOK_TIMEOUT``, default 60 s) until the outbox is drained and every event
committed for the registered merchants (``outbox_events`` whose ``payload->>'merchant_id'``
is registered; the outbox keeps them for OUTBOX_RETENTION_S, days) was received, then up to
15 s until no delivery is pending, and stops the dispatchers and then the receiver.

The service runs with RECONCILE_FIRST_DELAY_S=2, RECONCILE_INTERVAL_S=1,
RECONCILE_MAX_INTERVAL_S=5 and RECONCILE_NO_RECORD_AFTER_S = RECONCILE_LEASE_S = the
service's longest bank call (``Settings.longest_bank_call_s``, 16 s by default) + 5 s, unless
the environment sets them.

Afterwards it checks, from the database, MockServer's request log, the topic and the
responses:

1. no payment charged twice for one idempotency key (each key maps to one transaction and
   back -- a transaction failed before reaching the bank, whose key was released, excepted
   -- every authorization the bank saw belongs to a key, and every answer for one key
   except 503 ``bank_unavailable`` names the same transaction);
2. every bank decision recorded: each authorization and refund MockServer received has a
   row whose final status is the bank's decision (approved -> ``captured`` or a refunded
   status, declined -> ``declined``, refund succeeded -> ``succeeded``; only 5xx from the
   bank -> ``failed`` / ``bank_no_record``): "0 missing, 0 mismatched";
3. everything settled: no payment ``processing`` and no refund ``pending`` after the wait;
4. no refund total above its capture: succeeded + pending refunds <= the amount, and
   ``refunded_minor`` / ``refund_pending_minor`` are their sums -- at the end and in every
   sample taken during the run;
5. every committed state change on the topic at least once (every transaction and refund
   has its events, every settled one its settling event; the backlog drains; every outbox
   event_id is read back from the topic, from the offsets it had before the run);
6. every event of a registered merchant reached the receiver: committed - received is
   empty, no received event that was not committed, every body as committed, 0 signatures
   refused, 0 deliveries given up, no endpoint disabled, every dispatcher ran to the end
   and exited 0. Reported alongside: duplicates (at least once allows them), payments whose
   first receipts came out of occurred_at (or outbox) order, commit -> delivery latency
   p50/p95/p99 (first receipt - the event's occurred_at, both this machine's UTC clock; for
   all events, for those whose way crossed no fault window, and from the outbox row's
   published_at: the dispatchers' share), deliveries/s the receiver saw during the load
   (bounded by the events the load commits: not a capacity figure) and per dispatcher
   (from ``webhook_attempts``), failed attempts by cause, the warnings in the dispatchers'
   logs, and the drill's event-loop lag (the receiver's timestamps are that coarse);
7. idempotent replays repeat the stored answer (a remembered 202 replays as the same 202;
   a key whose request died answers the current state, which never goes from 200 back to
   202);
8. no 5xx and no silence outside the fault windows (503 ``bank_unavailable`` allowed
   anywhere; 202 is a normal answer), and inside them only what the fault explains: 503
   ``service_unavailable`` in the PostgreSQL window, no answer for requests the killed
   worker held; never a 500;
9. the service is healthy again at the end (``/health`` healthy, possibly after degraded);
10. the workers: only the killed one was replaced, by one new worker.

It prints those figures, RSS per worker at the end against after warm-up (and, if the
webhook invariant fails, the tail of the dispatchers' logs), writes
``.bench/soak-report.json`` and exits 1 if an invariant fails (2 if the drill itself could
not run).

Restarting PostgreSQL and Kafka disturbs everyone using the same local stack; on a shared
machine point ``STACK_SCRIPT`` (and POSTGRES_PORT, ZOOKEEPER_PORT, KAFKA_PORT,
MOCKSERVER_PORT) at a private copy of the stack, as ``docs/performance.md`` shows.

Environment (all optional): SOAK_SECONDS=180 SOAK_RATE=20 (requests/s) SOAK_WORKERS=2
SOAK_INSTANCES=1 SOAK_PGBOUNCER=0 (PGBOUNCER_PORT=6432)
SOAK_DB=payments_soak SOAK_BANK_SLOW_S=15 SOAK_KILL_WORKER=1 (0: no SIGKILL)
SOAK_KILL_AFTER_S=5 (into the slow window) SOAK_BANK_MEMORY=1 (0: no lookup answers, a
negative control: the reconciler then fails what the bank approved, and the bank-decision
invariant must fail) SOAK_BANK_MEMORY_INTERVAL_S=3 SOAK_SETTLE_TIMEOUT=120
SOAK_DRAIN_TIMEOUT=120 SOAK_MAX_INFLIGHT=200 SOAK_WEBHOOK_DISPATCHERS=2 (0: no webhooks)
SOAK_WEBHOOK_TIMEOUT=60 SOAK_RECEIVER_DOWN_S=5 (0: no receiver outage) SOAK_SEED (random)
KAFKA_TOPIC=payments.events; the service's BANK_TIMEOUT_S, BANK_CONNECT_TIMEOUT_S,
BANK_MAX_RETRIES, BANK_BACKOFF_MAX_S and RECONCILE_* (and the dispatchers'
WEBHOOK_RETRY_FIRST_S and WEBHOOK_RETRY_MAX_INTERVAL_S) are read from the environment too
(the drill's timings follow them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import bench
import httpx
import psycopg2
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from bench import (
    AppServer,
    BenchDatabase,
    Ports,
    Stack,
    create_merchant,
    env_float,
    env_int,
    env_str,
    log,
    out_dir,
    production_secrets,
    service_env,
)
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

APPROVED_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
ERROR_CARD = "4000000000000119"  # MockServer answers 500 every time: no bank decision
DECLINED_SHARE = 0.05
ERROR_SHARE = 0.02
SLOW_EXPECTATION_ID = "soak-bank-slow"
SLOW_EXPECTATION_IDS = [
    f"{SLOW_EXPECTATION_ID}-{suffix}" for suffix in ("declined", "error", "approved", "refund")
]
SLOW_AUTHORIZATION_CODE = "SLOW01"
SLOW_REFUND_REFERENCE = "slow_refund_01"
LOOKUP_PRIORITY = 1000  # like tests/mockserver_bank.py: above every committed expectation
REQUEST_TIMEOUT_S = 30.0
# How long after a dependency is back its restart may still show (pool reconnects,
# the relay's backoff, the bank circuit's reset).
POSTGRES_GRACE_S = 15.0
KAFKA_GRACE_S = 10.0
WORKER_GRACE_S = 5.0
WORKER_RESPAWN_TIMEOUT_S = 30.0
# Failures that say the bank certainly was not asked: the payment is failed, its key released.
NOT_SENT_FAILURES = ("circuit_open", "bank_unreachable", "processing_error")
BANK_NO_RECORD = "bank_no_record"
PAYMENT_DECISIONS = {
    "approved": {"captured", "authorized", "partially_refunded", "refunded"},
    "declined": {"declined"},
}
REFUND_DECISIONS = {"succeeded": {"succeeded"}, "failed": {"failed"}}
# The event a settled item must have on the topic, by its final status.
SETTLING_EVENTS = {
    "captured": "payment.captured",
    "partially_refunded": "payment.captured",
    "refunded": "payment.captured",
    "declined": "payment.declined",
    "failed": "payment.failed",
}
# What ``payments-admin add-webhook`` prints.
SIGNING_SECRET_LINE = re.compile(r"^signing_secret: (whsec_\S+)$", re.MULTILINE)
ENDPOINT_LINE = re.compile(r"^added webhook (\S+) for ", re.MULTILINE)


def longest_bank_call_s() -> float:
    """The service's longest logical bank call, by its own formula and this environment."""
    from app.core.config import Settings  # the editable install puts the repo on the path

    kinds = {
        "bank_timeout_s": float,
        "bank_connect_timeout_s": float,
        "bank_max_retries": int,
        "bank_backoff_max_s": float,
    }
    values = {
        name: kind(os.environ[name.upper()])
        for name, kind in kinds.items()
        if os.environ.get(name.upper(), "").strip()
    }
    return float(Settings.model_construct(**values).longest_bank_call_s)


def reconcile_settings() -> dict[str, str]:
    """Short reconciliation windows for the drill (the environment's own values win)."""
    beyond_bank = f"{longest_bank_call_s() + 5:g}"
    wanted = {
        "RECONCILE_FIRST_DELAY_S": "2",
        "RECONCILE_INTERVAL_S": "1",
        "RECONCILE_MAX_INTERVAL_S": "5",
        "RECONCILE_NO_RECORD_AFTER_S": beyond_bank,
        "RECONCILE_LEASE_S": beyond_bank,
    }
    return {name: os.environ.get(name, "").strip() or value for name, value in wanted.items()}


@dataclass
class SoakConfig:
    """The drill's settings (see the module docstring)."""

    seconds: float = field(default_factory=lambda: env_float("SOAK_SECONDS", 180))
    rate: float = field(default_factory=lambda: env_float("SOAK_RATE", 20))
    workers: int = field(default_factory=lambda: env_int("SOAK_WORKERS", 2))
    instances: int = field(default_factory=lambda: max(1, env_int("SOAK_INSTANCES", 1)))
    pgbouncer: bool = field(default_factory=lambda: env_str("SOAK_PGBOUNCER", "0") != "0")
    database: str = field(default_factory=lambda: env_str("SOAK_DB", "payments_soak"))
    bank_slow_s: float = field(default_factory=lambda: env_float("SOAK_BANK_SLOW_S", 15))
    kill_worker: bool = field(default_factory=lambda: env_str("SOAK_KILL_WORKER", "1") != "0")
    kill_after_s: float = field(default_factory=lambda: env_float("SOAK_KILL_AFTER_S", 5))
    bank_memory: bool = field(default_factory=lambda: env_str("SOAK_BANK_MEMORY", "1") != "0")
    memory_interval_s: float = field(
        default_factory=lambda: env_float("SOAK_BANK_MEMORY_INTERVAL_S", 3)
    )
    settle_timeout_s: float = field(default_factory=lambda: env_float("SOAK_SETTLE_TIMEOUT", 120))
    drain_timeout_s: float = field(default_factory=lambda: env_float("SOAK_DRAIN_TIMEOUT", 120))
    max_inflight: int = field(default_factory=lambda: env_int("SOAK_MAX_INFLIGHT", 200))
    webhook_dispatchers: int = field(default_factory=lambda: env_int("SOAK_WEBHOOK_DISPATCHERS", 2))
    webhook_timeout_s: float = field(default_factory=lambda: env_float("SOAK_WEBHOOK_TIMEOUT", 60))
    receiver_down_s: float = field(default_factory=lambda: env_float("SOAK_RECEIVER_DOWN_S", 5))
    topic: str = field(default_factory=lambda: env_str("KAFKA_TOPIC", "payments.events"))
    bank_timeout_s: float = field(default_factory=lambda: env_float("BANK_TIMEOUT_S", 3))
    seed: int = field(default_factory=lambda: env_int("SOAK_SEED", 0) or secrets.randbelow(10**6))
    run_tag: str = field(default_factory=lambda: secrets.token_hex(3))

    @property
    def correlation_prefix(self) -> str:
        """Every request of this run carries an X-Correlation-ID starting with this."""
        return f"soak-{self.run_tag}-"


@dataclass
class Window:
    """A fault: from when it was injected to when the dependency was back."""

    name: str
    kind: str  # kafka | postgres | bank | worker
    start: float
    end: float | None = None
    grace_s: float = 0.0

    def covers(self, t0: float, t1: float) -> bool:
        """Whether a request in flight from t0 to t1 overlaps the window (plus grace)."""
        end = (self.end if self.end is not None else float("inf")) + self.grace_s
        return t0 <= end and t1 >= self.start

    def explains(self, record: Record) -> bool:
        """Whether this fault explains a failed request it covers."""
        if self.kind == "postgres":
            return record.status == 503 and record.code == "service_unavailable"
        if self.kind == "worker":
            # The request died with the worker, which belongs to the first instance.
            return record.status == 0 and record.instance == 0
        return False

    @property
    def label(self) -> str:
        """Name and start, to tell two windows of one kind apart."""
        return f"{self.name} @{self.start:.0f}s"


@dataclass
class Record:
    """One request and its answer."""

    op: str
    t0: float
    t1: float
    status: int  # 0: no answer (connection error or client timeout)
    code: str | None = None
    key: str | None = None
    transaction_id: str | None = None
    refund_id: str | None = None
    replayed: bool = False
    error: str | None = None
    instance: int = 0  # which service instance answered (SOAK_INSTANCES)

    @property
    def label(self) -> str:
        """'503 service_unavailable', '0 RemoteProtocolError', '202', ..."""
        return f"{self.status} {self.code or self.error or ''}".strip()


Answer = tuple[int, dict[str, Any] | None, bool]


@dataclass
class PaymentRequestState:
    """A payment request we sent, to retry it and check what came back."""

    key: str
    body: str
    answers: list[Answer] = field(default_factory=list)


@dataclass
class RefundRequestState:
    """A refund request we sent."""

    key: str
    transaction_id: str
    body: str
    answers: list[Answer] = field(default_factory=list)


class LoadClient:
    """Open-loop mixed load: one new task per tick, whatever the previous ones are doing."""

    def __init__(
        self,
        *,
        base_urls: list[str],
        api_key: str,
        merchant_id: str,
        config: SoakConfig,
        t0: float,
    ) -> None:
        self.base_urls = base_urls
        self.merchant_id = merchant_id
        self.config = config
        self.t0 = t0
        self.rng = random.Random(config.seed)
        # Each request goes to an instance of its own, as a load balancer without
        # stickiness would send it: a retry, or the twin of a racing duplicate, often
        # lands on another instance than the first. Its own generator, so the load mix
        # stays the seed's whatever the number of instances.
        self.balancer = random.Random(config.seed + 1)
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.records: list[Record] = []
        self.payments: list[PaymentRequestState] = []
        self.refunds: list[RefundRequestState] = []
        self.captured: list[str] = []
        self.known: list[str] = []
        self._captured_set: set[str] = set()
        self._known_set: set[str] = set()
        # Payment and refund ids answered 202: the bank's answer is unknown to the service.
        self.unknown_ids: set[str] = set()
        self.dropped = 0
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.client = httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT_S,
            # Idle connections are dropped before uvicorn's 5 s keep-alive timeout would
            # close them under a request being sent (a client-side "no answer").
            limits=httpx.Limits(
                max_connections=config.max_inflight,
                max_keepalive_connections=64,
                keepalive_expiry=3.0,
            ),
        )
        self.counter = 0
        self.requests_sent = 0

    def now(self) -> float:
        """Seconds since the drill started."""
        return time.monotonic() - self.t0

    async def run(self, seconds: float) -> None:
        """Send at the configured rate for ``seconds``, then wait for what is in flight."""
        interval = 1.0 / self.config.rate
        start = time.monotonic()
        tick = 0
        while True:
            due = start + tick * interval
            if due - start >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tick += 1
            if self.inflight >= self.config.max_inflight:
                self.dropped += 1
                continue
            task = asyncio.create_task(self._one())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=REQUEST_TIMEOUT_S + 5)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def _one(self) -> None:
        self.inflight += 1
        try:
            roll = self.rng.random()
            if roll < 0.42 or not self.captured:
                await self.new_payment()
            elif roll < 0.62:
                await self.read()
            elif roll < 0.76:
                await self.partial_refund()
            elif roll < 0.86:
                await self.retry_payment()
            elif roll < 0.91:
                await self.retry_refund()
            elif roll < 0.96:
                await self.duplicate_payment()
            else:
                await self.refund_race()
        finally:
            self.inflight -= 1

    # -- operations -----------------------------------------------------------------

    def _payment_body(self) -> str:
        roll = self.rng.random()
        if roll < DECLINED_SHARE:
            card = DECLINED_CARD
        elif roll < DECLINED_SHARE + ERROR_SHARE:
            card = ERROR_CARD
        else:
            card = APPROVED_CARD
        amount = Decimal(self.rng.randrange(1000, 20000)) / 100
        return json.dumps(
            {
                "merchant_id": self.merchant_id,
                "amount": f"{amount:.2f}",
                "currency": "USD",
                "payment_method": "credit_card",
                "card_data": {
                    "card_number": card,
                    "expiry_month": 12,
                    "expiry_year": 2030,
                    "cvv": "123",
                    "cardholder_name": "Soak Runner",
                },
                "description": "soak",
                "metadata": {"soak": True},
            }
        )

    def _key(self, prefix: str) -> str:
        self.counter += 1
        return f"soak-{prefix}-{self.config.seed}-{self.counter}"

    async def _send(
        self, op: str, method: str, path: str, *, body: str | None = None, key: str | None = None
    ) -> Answer:
        self.requests_sent += 1
        headers = dict(self.headers)
        headers["X-Correlation-ID"] = f"{self.config.correlation_prefix}{self.requests_sent}"
        if key is not None:
            headers["Idempotency-Key"] = key
        instance = self.balancer.randrange(len(self.base_urls))
        t0 = self.now()
        try:
            response = await self.client.request(
                method, self.base_urls[instance] + path, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            self.records.append(
                Record(
                    op=op,
                    t0=t0,
                    t1=self.now(),
                    status=0,
                    key=key,
                    error=type(exc).__name__,
                    instance=instance,
                )
            )
            return 0, None, False
        t1 = self.now()
        payload: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            decoded = response.json()
            payload = decoded if isinstance(decoded, dict) else None
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        self.records.append(
            Record(
                op=op,
                t0=t0,
                t1=t1,
                status=response.status_code,
                code=(payload or {}).get("code") if response.status_code >= 300 else None,
                key=key,
                transaction_id=(payload or {}).get("transaction_id"),
                refund_id=(payload or {}).get("refund_id"),
                replayed=replayed,
                instance=instance,
            )
        )
        return response.status_code, payload, replayed

    def _remember_payment(self, status: int, payload: dict[str, Any] | None) -> None:
        txn = (payload or {}).get("transaction_id")
        if status not in (200, 202) or not payload or not txn:
            return
        if status == 202:
            self.unknown_ids.add(txn)
        if txn not in self._known_set:
            self._known_set.add(txn)
            self.known.append(txn)
        refundable = payload.get("status") in {"captured", "partially_refunded"}
        if status == 200 and refundable and txn not in self._captured_set:
            self._captured_set.add(txn)
            self.captured.append(txn)

    async def new_payment(self, state: PaymentRequestState | None = None) -> None:
        """A new payment (or, with ``state``, a retry of one)."""
        if state is None:
            state = PaymentRequestState(key=self._key("pay"), body=self._payment_body())
            self.payments.append(state)
            op = "payment"
        else:
            op = "payment-retry"
        answer = await self._send(
            op, "POST", "/api/v1/payments/process", body=state.body, key=state.key
        )
        state.answers.append(answer)
        self._remember_payment(answer[0], answer[1])

    async def retry_payment(self) -> None:
        """Re-send an earlier payment request with its key."""
        await self.new_payment(self.rng.choice(self.payments))

    async def duplicate_payment(self) -> None:
        """The same new payment twice at once (a client retrying too early)."""
        state = PaymentRequestState(key=self._key("dup"), body=self._payment_body())
        self.payments.append(state)
        await asyncio.gather(self.new_payment(state), self.new_payment(state))

    async def read(self) -> None:
        """Read a payment we created."""
        txn = self.rng.choice(self.known)
        await self._send("read", "GET", f"/api/v1/payments/{txn}")

    def _refund_state(self, txn: str, amount: str | None) -> RefundRequestState:
        body: dict[str, Any] = {"reason": "soak"}
        if amount is not None:
            body["amount"] = amount
        state = RefundRequestState(key=self._key("ref"), transaction_id=txn, body=json.dumps(body))
        self.refunds.append(state)
        return state

    async def refund(self, state: RefundRequestState, op: str = "refund") -> None:
        """Send (or re-send) a refund request."""
        answer = await self._send(
            op,
            "POST",
            f"/api/v1/payments/{state.transaction_id}/refund",
            body=state.body,
            key=state.key,
        )
        state.answers.append(answer)
        refund_id = (answer[1] or {}).get("refund_id")
        if answer[0] == 202 and refund_id:
            self.unknown_ids.add(refund_id)

    async def partial_refund(self) -> None:
        """A small partial refund of a captured payment."""
        txn = self.rng.choice(self.captured)
        amount = Decimal(self.rng.randrange(1, 500)) / 100
        await self.refund(self._refund_state(txn, f"{amount:.2f}"))

    async def retry_refund(self) -> None:
        """Re-send an earlier refund request with its key."""
        if self.refunds:
            await self.refund(self.rng.choice(self.refunds), op="refund-retry")

    async def refund_race(self) -> None:
        """Three refunds of 45% of one payment at once, plus a full one: at most 2 fit."""
        txn = self.rng.choice(self.captured)
        status, payload, _ = await self._send("read", "GET", f"/api/v1/payments/{txn}")
        if status != 200 or not payload:
            return
        refundable = Decimal(str(payload.get("refundable_amount", "0")))
        amount = (Decimal(str(payload.get("amount", "0"))) * Decimal("0.45")).quantize(
            Decimal("0.01")
        )
        if refundable <= 0 or amount <= 0:
            return
        states = [self._refund_state(txn, f"{amount:.2f}") for _ in range(3)]
        states.append(self._refund_state(txn, None))
        await asyncio.gather(*(self.refund(s, op="refund-race") for s in states))


# ----------------------------------------------------------------------------- faults


async def stack_command(stack: Stack, *args: str) -> float:
    """Run stack.sh without blocking the load; returns how long it took."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(stack.script),
        *args,
        cwd=bench.REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        sys.stderr.write(output.decode(errors="replace"))
        raise RuntimeError(f"stack.sh {' '.join(args)} failed with {process.returncode}")
    return time.monotonic() - started


async def mockserver(ports: Ports, path: str, body: Any) -> int:
    """PUT to MockServer's control API."""
    async with httpx.AsyncClient(base_url=ports.bank_url, timeout=10) as client:
        response = await client.put(path, json=body)
        return response.status_code


async def clear_expectations(ports: Ports, ids: Iterable[str], *, parallel: int = 8) -> int:
    """Remove MockServer expectations by id; returns how many calls failed."""
    failed = 0
    queue = list(ids)
    async with httpx.AsyncClient(base_url=ports.bank_url, timeout=10) as client:

        async def worker() -> None:
            nonlocal failed
            while queue:
                expectation_id = queue.pop()
                try:
                    response = await client.put(
                        "/mockserver/clear",
                        params={"type": "EXPECTATIONS"},
                        json={"id": expectation_id},
                    )
                    failed += response.status_code >= 300
                except httpx.HTTPError:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(parallel)))
    return failed


def _json_action(status: int, body: dict[str, Any], delay_ms: int | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "statusCode": status,
        "headers": {"Content-Type": ["application/json"]},
        "body": {"type": "JSON", "json": body},
    }
    if delay_ms is not None:
        response["delay"] = {"timeUnit": "MILLISECONDS", "value": delay_ms}
    return response


def slow_bank_expectations(delay_ms: int, correlation_prefix: str) -> list[dict[str, Any]]:
    """This run's authorizations and refunds answer after ``delay_ms`` (above the service's
    bank timeout), each with a decision MockServer's log keeps: the bank decided, the
    service never heard it."""
    scope = {"X-Correlation-ID": [re.escape(correlation_prefix) + ".*"]}

    def expectation(
        suffix: str,
        priority: int,
        path: str,
        status: int,
        body: dict[str, Any],
        card: str | None = None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"method": "POST", "path": path, "headers": scope}
        if card is not None:
            request["body"] = {
                "type": "JSON",
                "json": {"card": {"number": card}},
                "matchType": "ONLY_MATCHING_FIELDS",
            }
        return {
            "id": f"{SLOW_EXPECTATION_ID}-{suffix}",
            "priority": priority,
            "httpRequest": request,
            "httpResponse": _json_action(status, body, delay_ms),
            "times": {"unlimited": True},
        }

    declined = {
        "status": "declined",
        "decline_code": "card_declined",
        "decline_message": "The card was declined.",
    }
    return [
        expectation("declined", 1002, "/v1/authorizations", 200, declined, DECLINED_CARD),
        expectation(
            "error", 1002, "/v1/authorizations", 500, {"error": "processing_error"}, ERROR_CARD
        ),
        expectation(
            "approved",
            1001,
            "/v1/authorizations",
            200,
            {"status": "approved", "authorization_code": SLOW_AUTHORIZATION_CODE},
        ),
        expectation(
            "refund",
            1001,
            "/v1/refunds",
            200,
            {"status": "succeeded", "reference": SLOW_REFUND_REFERENCE},
        ),
    ]


class FaultDriver:
    """Injects the faults on a schedule proportional to the drill's length."""

    def __init__(
        self, *, stack: Stack, ports: Ports, config: SoakConfig, t0: float, server: AppServer
    ) -> None:
        self.stack = stack
        self.ports = ports
        self.config = config
        self.t0 = t0
        self.server = server
        self.windows: list[Window] = []
        self.errors: list[str] = []
        self.killed: dict[str, Any] = {}

    def now(self) -> float:
        """Seconds since the drill started."""
        return time.monotonic() - self.t0

    async def _at(self, fraction: float) -> None:
        delay = fraction * self.config.seconds - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _restart(self, service: str, *, down_for_s: float, grace_s: float) -> None:
        window = Window(name=f"{service} restart", kind=service, start=self.now(), grace_s=grace_s)
        self.windows.append(window)
        took = await stack_command(self.stack, "down", service)
        log(f"fault: {service} down at {window.start:.1f} s (stopping took {took:.1f} s)")
        await asyncio.sleep(down_for_s)
        took = await stack_command(self.stack, "up", service)
        window.end = self.now()
        log(f"fault: {service} back at {window.end:.1f} s (starting took {took:.1f} s)")

    async def _slow_bank(self) -> None:
        delay_ms = int((self.config.bank_timeout_s + 1.5) * 1000)
        # The circuit opens after a few timed-out calls and stays open for its reset period
        # (30 s by default) after the bank is fast again: 503 bank_unavailable meanwhile.
        window = Window(name="bank slow", kind="bank", start=self.now(), grace_s=35.0)
        self.windows.append(window)
        status = await mockserver(
            self.ports,
            "/mockserver/expectation",
            slow_bank_expectations(delay_ms, self.config.correlation_prefix),
        )
        log(f"fault: bank answers after {delay_ms} ms from {window.start:.1f} s (HTTP {status})")
        kill = None
        if self.config.kill_worker:
            kill = asyncio.create_task(self._kill_worker_after(self.config.kill_after_s))
        try:
            await asyncio.sleep(self.config.bank_slow_s)
        finally:
            statuses = [
                await mockserver(
                    self.ports, "/mockserver/clear?type=EXPECTATIONS", {"id": expectation_id}
                )
                for expectation_id in SLOW_EXPECTATION_IDS
            ]
            window.end = self.now()
            log(f"fault: bank fast again at {window.end:.1f} s (HTTP {statuses})")
            if kill is not None:
                await kill

    async def _kill_worker_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        try:
            await self._kill_worker()
        except Exception as exc:
            self.errors.append(f"worker kill: {type(exc).__name__}: {exc}")
            log(f"fault step failed: worker kill: {exc}")

    async def _kill_worker(self) -> None:
        """SIGKILL one uvicorn worker (never the supervisor) and wait for its replacement."""
        server = self.server
        supervisor = server.pid
        workers = server.worker_pids()
        if supervisor is None or not workers:
            raise RuntimeError("no worker to kill")
        victim = workers[-1]
        stat = bench.read_proc_stat(victim)
        if victim == supervisor or stat is None or stat[0] != supervisor:
            raise RuntimeError(f"pid {victim} is not a worker of the supervisor {supervisor}")
        window = Window(
            name="worker SIGKILL", kind="worker", start=self.now(), grace_s=WORKER_GRACE_S
        )
        self.windows.append(window)
        os.kill(victim, signal.SIGKILL)
        log(f"fault: SIGKILL to worker {victim} at {window.start:.1f} s (supervisor {supervisor})")
        self.killed = {"pid": victim, "supervisor": supervisor, "at_s": round(window.start, 1)}
        deadline = time.monotonic() + WORKER_RESPAWN_TIMEOUT_S
        replacement: list[int] = []
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            now_workers = server.worker_pids()
            replacement = [pid for pid in now_workers if pid not in workers]
            if (
                len(now_workers) == self.config.workers
                and replacement
                and victim not in now_workers
            ):
                break
        else:
            # The supervisor did not replace it: kill the whole service and start it again.
            log(
                f"fault: no replacement worker after {WORKER_RESPAWN_TIMEOUT_S:.0f} s:"
                " SIGKILL to the service, started again"
            )
            self.errors.append("uvicorn did not replace the killed worker; service restarted")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervisor, signal.SIGKILL)
            await asyncio.to_thread(self._restart_service)
            replacement = server.worker_pids()
            self.killed["service_restarted"] = True
        # The replacement serves once its lifespan startup is done: wait for it to answer.
        await asyncio.sleep(1.0)
        window.end = self.now()
        self.killed["replacement"] = replacement
        self.killed["replaced_after_s"] = round(window.end - window.start, 1)
        log(f"fault: worker {victim} replaced by {replacement} at {window.end:.1f} s")

    def _restart_service(self) -> None:
        process = self.server.process
        if process is not None:
            with contextlib.suppress(Exception):
                process.wait(timeout=10)
        self.server.process = None
        self.server.start()

    async def run(self) -> None:
        """Kafka, PostgreSQL, the bank (and a worker), Kafka again; errors are kept, not raised."""
        steps = [
            (0.15, lambda: self._restart("kafka", down_for_s=5, grace_s=KAFKA_GRACE_S)),
            (0.38, lambda: self._restart("postgres", down_for_s=5, grace_s=POSTGRES_GRACE_S)),
            (0.58, self._slow_bank),
            (0.78, lambda: self._restart("kafka", down_for_s=5, grace_s=KAFKA_GRACE_S)),
        ]
        for fraction, step in steps:
            await self._at(fraction)
            try:
                await step()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log(f"fault step failed: {exc}")


# ------------------------------------------------------------------- the bank's memory


@dataclass
class BankExchange:
    """One request MockServer received (an authorization or a refund) and its answer."""

    kind: str  # authorization | refund
    key: str  # the Idempotency-Key: the transaction id or the refund id
    merchant_id: str | None
    transaction_id: str | None
    status_code: int | None  # None: no answer logged
    body: dict[str, Any] | None
    delay_ms: int

    @property
    def decision(self) -> str | None:
        """approved / declined / succeeded / failed, or None (5xx, or nothing usable)."""
        if self.status_code != 200 or not self.body:
            return None
        status = self.body.get("status")
        valid = PAYMENT_DECISIONS if self.kind == "authorization" else REFUND_DECISIONS
        return status if status in valid else None

    @property
    def code(self) -> str | None:
        """The authorization code, decline code or refund reference the bank gave."""
        if not self.body:
            return None
        for name in ("authorization_code", "decline_code", "reference"):
            if self.body.get(name):
                return str(self.body[name])
        return None

    @classmethod
    def parse(cls, entry: dict[str, Any]) -> BankExchange | None:
        """From a REQUEST_RESPONSES (or REQUESTS) entry of MockServer's log."""
        request = entry.get("httpRequest", entry)
        path = request.get("path", "")
        kind = {"/v1/authorizations": "authorization", "/v1/refunds": "refund"}.get(path)
        headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
        key = (headers.get("idempotency-key") or [""])[0]
        if kind is None or not key:
            return None
        payload = _json_body(request.get("body"))
        response = entry.get("httpResponse")
        delay = (response or {}).get("delay") or {}
        delay_ms = int(delay.get("value", 0)) * (1000 if delay.get("timeUnit") == "SECONDS" else 1)
        return cls(
            kind=kind,
            key=key,
            merchant_id=(payload or {}).get("merchant_id"),
            transaction_id=(payload or {}).get("transaction_id"),
            status_code=response.get("statusCode", 200) if response else None,
            body=_json_body(response.get("body")) if response else None,
            delay_ms=delay_ms,
        )


def _json_body(body: Any) -> dict[str, Any] | None:
    """A MockServer log body as a dict: {"type": "JSON", "json": ...}, a bare object or text."""
    if isinstance(body, dict) and "json" in body and body.get("type") in ("JSON", None):
        body = body["json"]
    elif isinstance(body, dict) and body.get("type") == "STRING":
        body = body.get("string")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    return body if isinstance(body, dict) else None


async def retrieve_bank_log(
    http: httpx.AsyncClient, *, scope: dict[str, list[str]], kind: str = "REQUEST_RESPONSES"
) -> list[BankExchange]:
    """The authorizations and refunds in MockServer's log whose headers match ``scope``."""
    matcher = {"method": "POST", "path": "/v1/(authorizations|refunds)", "headers": scope}
    response = await http.put(
        "/mockserver/retrieve", params={"type": kind, "format": "JSON"}, json=matcher
    )
    response.raise_for_status()
    exchanges = []
    for entry in response.json():
        exchange = BankExchange.parse(
            entry if kind == "REQUEST_RESPONSES" else {"httpRequest": entry}
        )
        if exchange is not None:
            exchanges.append(exchange)
    return exchanges


def lookup_expectation(exchange: BankExchange) -> dict[str, Any]:
    """The status lookup of ``exchange``'s id answers what the bank answered its POST."""
    path = "/v1/authorizations/" if exchange.kind == "authorization" else "/v1/refunds/"
    return {
        "id": f"soak-lookup-{exchange.key}",
        "priority": LOOKUP_PRIORITY,
        "httpRequest": {"method": "GET", "path": path + exchange.key},
        "httpResponse": _json_action(200, exchange.body or {}),
        "times": {"unlimited": True},
    }


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BankMemory:
    """The bank's memory, which MockServer lacks.

    Every sweep it records what MockServer received from this run (the run's
    X-Correlation-ID prefix scopes it) and answered; registers, for every payment and
    refund whose outcome the service does not know, the lookup answer the bank's decision
    implies; and clears from MockServer's log the run's entries it no longer needs (status
    lookups, and requests of ids whose bank calls are certainly over): MockServer 5.15
    keeps only about heap/80 KB log entries (some 1,500 requests with -Xmx256m), fewer
    than a full drill sends, so a single read at the end would miss most of them.
    """

    def __init__(
        self,
        *,
        ports: Ports,
        db: BenchDatabase,
        merchant_id: str,
        unknown_ids: set[str],
        config: SoakConfig,
    ) -> None:
        self.ports = ports
        self.db = db
        self.merchant_id = merchant_id
        self.unknown_ids = unknown_ids  # the load client's 202s, shared
        self.interval_s = max(0.5, config.memory_interval_s)
        self.remember = config.bank_memory
        self.bank_timeout_ms = config.bank_timeout_s * 1000
        # Every bank call of an id is over this long after its first request reached the bank.
        self.final_after_s = longest_bank_call_s() + 10
        self.scope = {"X-Correlation-ID": [re.escape(config.correlation_prefix) + ".*"]}
        self.received: dict[str, list[BankExchange]] = {}  # id -> requests received
        self.answered: dict[str, list[BankExchange]] = {}  # id -> requests with their answer
        self.first_seen: dict[str, float] = {}
        self.forgotten: set[str] = set()  # ids whose log entries this drill cleared
        self.vanished: set[str] = set()  # ids whose entries left the log otherwise (its cap)
        self.registered: dict[str, str] = {}  # payment/refund id -> lookup expectation id
        self.by_kind: Counter[str] = Counter()
        self.late: Counter[str] = Counter()  # registered ids the bank answered too late
        self.sweeps = 0
        self.db_unreachable = 0
        self.errors: list[str] = []
        self.http = httpx.AsyncClient(base_url=ports.bank_url, timeout=60)

    def log(self) -> BankLog:
        """Everything recorded so far."""
        return BankLog(
            exchanges=[e for items in self.answered.values() for e in items],
            received=[e for items in self.received.values() for e in items],
        )

    async def record(self) -> None:
        """Read this run's authorizations and refunds from MockServer's log."""
        answered = _by_key(await retrieve_bank_log(self.http, scope=self.scope))
        received = _by_key(await retrieve_bank_log(self.http, scope=self.scope, kind="REQUESTS"))
        now = time.monotonic()
        for key in self.received.keys() - received.keys() - self.forgotten:
            self.vanished.add(key)
        for mine, seen in ((self.received, received), (self.answered, answered)):
            for key, items in seen.items():
                if len(items) >= len(mine.get(key, ())):
                    mine[key] = items
                else:
                    self.vanished.add(key)
        for key in received:
            self.first_seen.setdefault(key, now)

    def _unsettled_ids(self) -> set[str]:
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT transaction_id FROM transactions"
                    " WHERE merchant_id = %s AND status = 'processing'"
                    " UNION ALL SELECT r.refund_id FROM refunds r JOIN transactions t"
                    " ON t.transaction_id = r.transaction_id"
                    " WHERE t.merchant_id = %s AND r.status = 'pending'",
                    (self.merchant_id, self.merchant_id),
                )
                return {row[0] for row in cur.fetchall()}
        finally:
            conn.close()

    async def register(self) -> int:
        """Register the lookup answer of every decided id whose outcome the service lacks."""
        candidates = set(self.unknown_ids)
        try:
            candidates |= await asyncio.to_thread(self._unsettled_ids)
        except psycopg2.Error:
            self.db_unreachable += 1  # PostgreSQL is down: the 202s are all we know
        expectations = []
        for key in sorted(candidates - self.registered.keys()):
            decided = [e for e in self.answered.get(key, ()) if e.decision is not None]
            if not decided:
                continue  # not answered yet, or only 5xx: the bank has no record
            exchange = decided[0]
            if exchange.kind == "authorization" and exchange.merchant_id != self.merchant_id:
                continue
            expectations.append(lookup_expectation(exchange))
            self.by_kind[exchange.kind] += 1
            if all(e.delay_ms > self.bank_timeout_ms for e in decided):
                self.late[exchange.kind] += 1
        if expectations:
            response = await self.http.put("/mockserver/expectation", json=expectations)
            response.raise_for_status()
            for expectation in expectations:
                self.registered[expectation["id"].removeprefix("soak-lookup-")] = expectation["id"]
        return len(expectations)

    async def forget(self) -> None:
        """Clear from MockServer's log this run's lookups and its finished ids' requests."""
        now = time.monotonic()
        final = sorted(
            key
            for key, first in self.first_seen.items()
            if key not in self.forgotten
            and now - first > self.final_after_s
            and len(self.answered.get(key, ())) >= len(self.received.get(key, ()))
        )
        for chunk in _chunks(final, 80):
            matcher = {
                "method": "POST",
                "path": "/v1/(authorizations|refunds)",
                "headers": {"Idempotency-Key": ["^(" + "|".join(map(re.escape, chunk)) + ")$"]},
            }
            response = await self.http.put(
                "/mockserver/clear", params={"type": "LOG"}, json=matcher
            )
            response.raise_for_status()
            self.forgotten.update(chunk)
        lookups = {
            "method": "GET",
            "path": "/v1/(authorizations|refunds)/.*",
            "headers": self.scope,
        }
        response = await self.http.put("/mockserver/clear", params={"type": "LOG"}, json=lookups)
        response.raise_for_status()

    async def sweep(self, *, forget: bool = True) -> int:
        """Record, register, forget; returns how many lookups it registered."""
        self.sweeps += 1
        try:
            await self.record()
            registered = await self.register() if self.remember else 0
            if forget:
                await self.forget()
        except (httpx.HTTPError, ValueError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return 0
        return registered

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every interval until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            if not stop.is_set():
                await self.sweep()

    async def aclose(self) -> None:
        """Close the MockServer client (the expectations stay until the drill removes them)."""
        await self.http.aclose()

    def figures(self) -> dict[str, Any]:
        """What it did."""
        return {
            "lookups_registered": dict(self.by_kind),
            "registered_answered_only_after_the_service_gave_up": dict(self.late),
            "sweeps": self.sweeps,
            "sweeps_without_database": self.db_unreachable,
            "ids_cleared_from_mockserver_log": len(self.forgotten),
            "ids_lost_from_mockserver_log": len(self.vanished),
            "errors": self.errors[:5],
        }


def _by_key(exchanges: list[BankExchange]) -> dict[str, list[BankExchange]]:
    grouped: dict[str, list[BankExchange]] = defaultdict(list)
    for exchange in exchanges:
        grouped[exchange.key].append(exchange)
    return grouped


class PoolSampler:
    """Samples PgBouncer's pool of the drill's database (``SHOW POOLS`` on its admin
    console) during the run: how many clients waited for a server connection, and for how
    long, next to how many server connections were in use."""

    def __init__(self, port: int, database: str, interval_s: float = 1.0) -> None:
        self.port = port
        self.database = database
        self.interval_s = interval_s
        self.samples = 0
        self.failed_samples = 0
        self.max_waiting = 0
        self.max_wait_s = 0.0
        self.max_active = 0
        self.waiting_since: list[float] = []  # drill seconds of samples with clients waiting
        self.worst: dict[str, Any] = {}  # the pool's row when the most clients waited

    def sample(self) -> tuple[int, float, int, dict[str, Any]]:
        """(clients waiting, the longest wait in seconds, server connections active, the
        pool's row)."""
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="pgbouncer", connect_timeout=3
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SHOW POOLS")
                names = [column[0] for column in cur.description or ()]
                rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()
        ours = [row for row in rows if row.get("database") == self.database]
        waiting = sum(int(row["cl_waiting"]) for row in ours)
        wait_s = max(
            (int(row["maxwait"]) + int(row.get("maxwait_us", 0)) / 1e6 for row in ours),
            default=0.0,
        )
        row = {k: v for k, v in (ours[0] if ours else {}).items() if k.startswith(("cl_", "sv_"))}
        return waiting, wait_s, sum(int(row["sv_active"]) for row in ours), row

    async def run(self, stop: asyncio.Event, t0: float) -> None:
        """Sample every interval until ``stop``."""
        while not stop.is_set():
            try:
                waiting, wait_s, active, row = await asyncio.to_thread(self.sample)
            except psycopg2.Error:
                self.failed_samples += 1
            else:
                self.samples += 1
                if waiting > self.max_waiting:
                    self.worst = {"at_s": round(time.monotonic() - t0, 1), **row}
                self.max_waiting = max(self.max_waiting, waiting)
                self.max_wait_s = max(self.max_wait_s, wait_s)
                self.max_active = max(self.max_active, active)
                if waiting:
                    self.waiting_since.append(round(time.monotonic() - t0, 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)

    def figures(self) -> dict[str, Any]:
        """What the report keeps."""
        return {
            "samples": self.samples,
            "failed_samples": self.failed_samples,
            "max_clients_waiting": self.max_waiting,
            "max_wait_s": round(self.max_wait_s, 3),
            "max_server_connections_active": self.max_active,
            "samples_with_clients_waiting": len(self.waiting_since),
            "first_waits_at_s": self.waiting_since[:20],
            "when_most_waited": self.worst,
        }


class RefundSampler:
    """Samples, by SQL, every payment's refund balance during the run."""

    SQL = (
        "SELECT count(*),"
        " count(*) FILTER (WHERE COALESCE(s.succeeded, 0) + COALESCE(s.pending, 0)"
        "   > t.amount_minor),"
        " count(*) FILTER (WHERE t.refunded_minor + t.refund_pending_minor > t.amount_minor),"
        " count(*) FILTER (WHERE COALESCE(s.succeeded, 0) <> t.refunded_minor"
        "   OR COALESCE(s.pending, 0) <> t.refund_pending_minor),"
        " COALESCE(sum(s.pending_count), 0),"
        " (array_agg(t.transaction_id) FILTER (WHERE COALESCE(s.succeeded, 0)"
        "   + COALESCE(s.pending, 0) > t.amount_minor))[1:3]"
        " FROM transactions t JOIN (SELECT transaction_id,"
        "   sum(amount_minor) FILTER (WHERE status = 'succeeded') AS succeeded,"
        "   sum(amount_minor) FILTER (WHERE status = 'pending') AS pending,"
        "   count(*) FILTER (WHERE status = 'pending') AS pending_count"
        "   FROM refunds GROUP BY transaction_id) s ON s.transaction_id = t.transaction_id"
        " WHERE t.merchant_id = %s"
    )

    def __init__(self, db: BenchDatabase, merchant_id: str, interval_s: float = 2.0) -> None:
        self.db = db
        self.merchant_id = merchant_id
        self.interval_s = interval_s
        self.samples = 0
        self.failed_samples = 0
        self.over_capture = 0  # samples with a payment whose refunds exceed it
        self.columns_off = 0  # samples where refunded/pending columns disagree with the rows
        self.max_pending = 0
        self.examples: list[str] = []

    def sample(self) -> tuple[int, int, int, int, int, list[str]]:
        """(payments with refunds, over by rows, over by columns, columns off, pending, ids)."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(self.SQL, (self.merchant_id,))
                row = cur.fetchone()
        finally:
            conn.close()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), list(row[5] or [])

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every interval until ``stop``."""
        while not stop.is_set():
            try:
                _, over, over_columns, off, pending, ids = await asyncio.to_thread(self.sample)
            except psycopg2.Error:
                self.failed_samples += 1
            else:
                self.samples += 1
                self.max_pending = max(self.max_pending, pending)
                if over or over_columns:
                    self.over_capture += 1
                    self.examples.extend(ids[: 3 - len(self.examples)])
                if off:
                    self.columns_off += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)


# ---------------------------------------------------------------------------- webhooks


@dataclass(frozen=True)
class Receipt:
    """One delivery the receiver accepted (its signature verified)."""

    webhook_id: str
    body: dict[str, Any] | None  # None: the signed body is not a JSON object
    received_at: float  # time.time() once the body was read


class WebhookReceiver:
    """The merchants' endpoint: an aiohttp server on 127.0.0.1 in the drill's event loop.

    It verifies every delivery's signature with ``standardwebhooks`` (any of ``secrets``
    must match), as a merchant would, answers 204 and records the webhook-id, the body
    and when it arrived; a bad signature is answered 401 and counted. It can be taken
    down (its port closed: connections refused) and brought back on the same port.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.verifiers: list[Webhook] = []
        self.receipts: list[Receipt] = []
        self.refused_signatures = 0
        self.malformed = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """What the endpoints are registered with."""
        return f"http://127.0.0.1:{self.port}/hooks"

    @property
    def running(self) -> bool:
        """Whether the port is open."""
        return self._runner is not None

    def trust(self, secret: str) -> None:
        """Accept deliveries signed with ``secret`` (an endpoint's signing secret)."""
        self.verifiers.append(Webhook(secret))

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        received_at = time.time()
        headers = {k.lower(): v for k, v in request.headers.items()}
        for verifier in self.verifiers:
            try:
                verifier.verify(raw, headers, json_parse=False)
            except WebhookVerificationError:
                continue
            break
        else:
            self.refused_signatures += 1
            return web.Response(status=401, text="bad signature")
        body: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            decoded = json.loads(raw)
            body = decoded if isinstance(decoded, dict) else None
        if body is None:
            self.malformed += 1
        self.receipts.append(Receipt(headers.get("webhook-id", ""), body, received_at))
        return web.Response(status=204)

    async def start(self) -> None:
        """Open the port (retrying a moment if it lingers after a stop)."""
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for _ in range(50):
            try:
                await web.TCPSite(runner, "127.0.0.1", self.port).start()
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            await runner.cleanup()
            raise RuntimeError(f"webhook receiver: port {self.port} stayed busy")
        self._runner = runner

    async def stop(self) -> None:
        """Close the port and the open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


class DispatcherProcess:
    """One ``python -m app.dispatcher`` (``payments-webhooks``), in a session of its own,
    logging to ``.bench/soak-webhooks-<n>.log`` (this run's only)."""

    def __init__(self, *, env: dict[str, str], number: int) -> None:
        self.env = env
        self.number = number
        self.log_path = out_dir() / f"soak-webhooks-{number}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.exit_status: int | None = None
        self.alive_at_end: bool | None = None

    def start(self) -> None:
        """Start it (cwd .bench, like the service: no developer's .env)."""
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.dispatcher"],
                cwd=out_dir(),
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # The dispatcher names itself host:pid:suffix on its attempts.
        self.pid = self.process.pid

    def running(self) -> bool:
        """Whether it is still running."""
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        """Its whole log."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 25) -> str:
        """The end of its log, a JSON line as 'time level logger: message'."""
        shown = []
        for line in self.log_text().splitlines()[-lines:]:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                line = (
                    f"{entry.get('timestamp')} {entry.get('level')} {entry.get('logger')}:"
                    f" {entry.get('message')}"
                )
            shown.append(line)
        return "\n".join(shown)

    def warnings(self) -> Counter[str]:
        """WARNING and worse lines of its log, by level and message (digits as #)."""
        found: Counter[str] = Counter()
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if line.strip():
                    found[f"(not JSON) {re.sub(r'[0-9]+', '#', line.strip())[:100]}"] += 1
                continue
            if not isinstance(entry, dict):
                continue
            level = str(entry.get("level", ""))
            if level in ("WARNING", "ERROR", "CRITICAL"):
                message = re.sub(r"[0-9]+", "#", str(entry.get("message", "")))
                found[f"{level} {message[:120]}"] += 1
        return found

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM (it records and commits the batch in hand, finishes the deliveries in
        flight, leaves the group), SIGKILL if it hangs; its exit status."""
        process, self.process = self.process, None
        if process is None:
            return self.exit_status
        self.alive_at_end = process.poll() is None
        if self.alive_at_end:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log(f"webhook dispatcher {self.number} did not stop in {grace_s:.0f} s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.exit_status = process.returncode
        return self.exit_status


def add_webhook(env: dict[str, str], merchant_id: str, url: str) -> tuple[str, str]:
    """``payments-admin add-webhook MERCHANT URL``: (endpoint id, signing secret)."""
    admin = Path(sys.executable).with_name("payments-admin")
    command = [str(admin)] if admin.exists() else [sys.executable, "-m", "app.cli"]
    done = subprocess.run(
        [*command, "add-webhook", merchant_id, url],
        cwd=out_dir(),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    secret = SIGNING_SECRET_LINE.search(done.stdout)
    endpoint = ENDPOINT_LINE.search(done.stdout)
    if done.returncode != 0 or secret is None or endpoint is None:
        raise RuntimeError(
            f"payments-admin add-webhook {merchant_id} {url} exited {done.returncode}:"
            f" {(done.stderr or done.stdout).strip()[:300]}"
        )
    return endpoint[1], secret[1]


async def start_group_at(
    bootstrap: str, topic: str, group: str, offsets: dict[int, int]
) -> dict[int, int]:
    """Commit ``group``'s offsets at ``offsets`` (the topic's end before the run): a new
    group would otherwise start at the topic's earliest offset, among older runs' events."""
    tps = await topic_partitions(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        committed = {tp: offsets.get(tp.partition, 0) for tp in tps}
        await consumer.commit(committed)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in committed.items()}


def percentiles(values: list[float]) -> dict[str, Any]:
    """n, p50, p95, p99 and max (nearest rank), rounded."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)

    return {
        "n": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1], 1),
    }


def occurred_at(body: dict[str, Any]) -> float | None:
    """An event's occurred_at as a POSIX timestamp."""
    try:
        return datetime.fromisoformat(str(body["occurred_at"])).timestamp()
    except (KeyError, ValueError):
        return None


class WebhookDrill:
    """Webhooks during the drill: an endpoint per merchant of the run pointing at the
    drill's own receiver, ``SOAK_WEBHOOK_DISPATCHERS`` dispatcher processes in a consumer
    group of this run, the receiver taken down for a few seconds, and the wait until every
    committed event of the registered merchants has reached the receiver."""

    def __init__(
        self, *, config: SoakConfig, ports: Ports, db: BenchDatabase, merchant_ids: list[str]
    ) -> None:
        self.config = config
        self.ports = ports
        self.db = db
        self.merchant_ids = merchant_ids
        self.group = f"soak-webhooks-{config.run_tag}"
        self.receiver = WebhookReceiver(bench.free_port())
        self.dispatchers: list[DispatcherProcess] = []
        self.endpoints: dict[str, str] = {}  # merchant id -> endpoint id
        self.settings: dict[str, str] = {}
        self.group_offsets: dict[int, int] = {}
        self.outage: Window | None = None
        self.errors: list[str] = []
        self.wait: dict[str, Any] = {}
        self.t0 = 0.0  # time.monotonic() when the load started
        self.t0_wall = 0.0  # time.time() at the same moment
        self.lag_ms: list[float] = []

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.t0

    def env_for(self, service: dict[str, str]) -> dict[str, str]:
        """The dispatchers' (and add-webhook's) environment: the service's, but APP_ENV=test
        so that a loopback http:// target is allowed (production refuses it)."""
        wanted = {
            "WEBHOOK_RETRY_FIRST_S": "1",
            "WEBHOOK_RETRY_MAX_INTERVAL_S": "5",
        }
        self.settings = {
            name: os.environ.get(name, "").strip() or value for name, value in wanted.items()
        } | {
            "APP_ENV": "test",
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "WEBHOOK_CONSUMER_GROUP": self.group,
        }
        return service | self.settings | {"LOG_LEVEL": "INFO"}

    def prepare(self, service_env_: dict[str, str], start_offsets: dict[int, int]) -> None:
        """Group offsets at the topic's end, an endpoint per merchant, the dispatchers."""
        env = self.env_for(service_env_)
        self.group_offsets = asyncio.run(
            start_group_at(self.ports.kafka_bootstrap, self.config.topic, self.group, start_offsets)
        )
        log(f"webhooks: consumer group {self.group} starts at {self.group_offsets}")
        for merchant_id in self.merchant_ids:
            endpoint_id, secret = add_webhook(env, merchant_id, self.receiver.url)
            self.endpoints[merchant_id] = endpoint_id
            self.receiver.trust(secret)
            log(f"webhooks: endpoint {endpoint_id} of {merchant_id} -> {self.receiver.url}")
        for number in range(1, self.config.webhook_dispatchers + 1):
            dispatcher = DispatcherProcess(env=env, number=number)
            dispatcher.start()
            self.dispatchers.append(dispatcher)

    def wait_joined(self, timeout_s: float = 60.0) -> None:
        """Until every dispatcher has joined the group (it logs so)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [d for d in self.dispatchers if not d.running()]
            if dead:
                self.print_tails(dead)
                raise RuntimeError(f"webhook dispatcher {dead[0].number} exited at start")
            if all("joined group" in d.log_text() for d in self.dispatchers):
                pids = ", ".join(str(d.pid) for d in self.dispatchers)
                log(f"webhooks: {len(self.dispatchers)} dispatchers in {self.group} (pids {pids})")
                return
            time.sleep(0.3)
        self.print_tails(self.dispatchers)
        raise RuntimeError(f"webhook dispatchers not in the group after {timeout_s:.0f} s")

    def print_tails(self, dispatchers: list[DispatcherProcess] | None = None) -> None:
        """The end of the dispatchers' logs, on stdout."""
        for dispatcher in dispatchers if dispatchers is not None else self.dispatchers:
            print(f"--- {dispatcher.log_path} (tail) ---")
            for line in dispatcher.tail().splitlines():
                print(f"  {line[:400]}")

    async def start(self, t0: float) -> None:
        """Open the receiver; the load starts at ``t0`` (monotonic)."""
        self.t0 = t0
        self.t0_wall = time.time() - (time.monotonic() - t0)
        await self.receiver.start()

    async def receiver_outage(self) -> None:
        """Close the receiver's port for SOAK_RECEIVER_DOWN_S at 48 % of the run (between
        the PostgreSQL restart and the slow bank): the dispatchers retry."""
        down_s = self.config.receiver_down_s
        if down_s <= 0:
            return
        delay = 0.48 * self.config.seconds - self.now()
        if delay > 0:
            await asyncio.sleep(delay)
        window = Window(name="webhook receiver down", kind="receiver", start=self.now())
        self.outage = window
        try:
            await self.receiver.stop()
            log(f"fault: webhook receiver down at {window.start:.1f} s")
            await asyncio.sleep(down_s)
        finally:
            try:
                await self.receiver.start()
            except RuntimeError as exc:
                self.errors.append(str(exc))
            window.end = self.now()
            log(f"fault: webhook receiver back at {window.end:.1f} s")

    async def watch_loop(self, stop: asyncio.Event) -> None:
        """How late this event loop wakes (the receiver's timestamps are that coarse)."""
        while not stop.is_set():
            started = time.monotonic()
            await asyncio.sleep(0.1)
            self.lag_ms.append((time.monotonic() - started - 0.1) * 1000)

    def committed(self) -> tuple[set[str], int]:
        """(event ids of the registered merchants' committed events, unpublished events)."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT event_id::text FROM outbox_events"
                    " WHERE payload ->> 'merchant_id' = ANY(%s)",
                    (self.merchant_ids,),
                )
                ids = {row[0] for row in cur.fetchall()}
                cur.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NULL")
                row = cur.fetchone()
        finally:
            conn.close()
        return ids, int(row[0]) if row else 0

    def open_deliveries(self) -> int:
        """Deliveries still pending (a retry or a duplicate may still come)."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
                row = cur.fetchone()
        finally:
            conn.close()
        return int(row[0]) if row else 0

    async def wait_delivered(self) -> None:
        """Wait (SOAK_WEBHOOK_TIMEOUT) until the outbox is drained and every committed event
        of the registered merchants was received; then (15 s at most) until no delivery is
        pending."""
        started = time.monotonic()
        timeout_s = self.config.webhook_timeout_s
        missing, unpublished, committed = -1, -1, 0
        while True:
            try:
                ids, unpublished = await asyncio.to_thread(self.committed)
            except psycopg2.Error as exc:
                log(f"webhook wait: database error {exc}".strip())
            else:
                committed = len(ids)
                missing = len(ids - {r.webhook_id for r in self.receiver.receipts})
                if missing == 0 and unpublished == 0:
                    break
            if time.monotonic() - started > timeout_s:
                break
            await asyncio.sleep(1.0)
        waited = time.monotonic() - started
        pending = -1
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg2.Error):
                pending = await asyncio.to_thread(self.open_deliveries)
                if pending == 0:
                    break
            await asyncio.sleep(1.0)
        log(
            f"webhook wait: {committed - max(missing, 0)} of {committed} events received"
            f" ({unpublished} unpublished) after {waited:.1f} s; {pending} deliveries pending"
        )
        self.wait = {
            "waited_s": round(waited, 1),
            "missing_at_the_end": missing,
            "unpublished_at_the_end": unpublished,
            "deliveries_pending_after": pending,
            "ended_at_s": round(self.now(), 1),
        }

    async def shutdown(self) -> None:
        """Stop the dispatchers (while the receiver still answers), then the receiver."""
        await asyncio.to_thread(self.stop_dispatchers)
        await self.receiver.stop()

    def write_receipts(self) -> Path:
        """Every delivery the receiver accepted, one JSON object a line."""
        path = out_dir() / "soak-webhooks-receipts.jsonl"
        with path.open("w") as handle:
            for r in self.receiver.receipts:
                body = r.body or {}
                handle.write(
                    json.dumps(
                        {
                            "webhook_id": r.webhook_id,
                            "received_at": r.received_at,
                            "received_s": round(r.received_at - self.t0_wall, 3),
                            "event_type": body.get("event_type"),
                            "transaction_id": body.get("transaction_id"),
                            "occurred_at": body.get("occurred_at"),
                        }
                    )
                    + "\n"
                )
        return path

    def stop_dispatchers(self) -> None:
        """SIGTERM every dispatcher still running; idempotent."""
        for dispatcher in self.dispatchers:
            if dispatcher.process is not None:
                status = dispatcher.stop()
                log(f"webhook dispatcher {dispatcher.number} stopped, exit status {status}")


# ----------------------------------------------------------------------------- checks


@dataclass
class Check:
    """One invariant's verdict (``warning``: worth reading, but not a failed invariant)."""

    name: str
    ok: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None


async def topic_partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions, from the cluster's metadata."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        async with asyncio.timeout(30):
            partitions = await producer.partitions_for(topic)
    finally:
        await producer.stop()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


def topic_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Current end offset of every partition of the topic."""

    async def _read() -> dict[int, int]:
        tps = await topic_partitions(bootstrap, topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        try:
            ends = await consumer.end_offsets(tps)
            return {tp.partition: offset for tp, offset in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(_read())


async def read_topic_event_ids(
    bootstrap: str, topic: str, start: dict[int, int], timeout_s: float = 90.0
) -> Counter[str]:
    """event_id -> how many times it is on the topic, from ``start`` to the current end."""
    tps = await topic_partitions(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    seen: Counter[str] = Counter()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                break
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for messages in batches.values():
                for message in messages:
                    headers = dict(message.headers or [])
                    event_id = headers.get("event_id")
                    if event_id is None and message.value:
                        with contextlib.suppress(ValueError):
                            event_id = json.loads(message.value).get("event_id", "").encode()
                    if event_id:
                        seen[event_id.decode()] += 1
    finally:
        await consumer.stop()
    return seen


@dataclass
class BankLog:
    """What MockServer received for this run, read once after the settle wait."""

    exchanges: list[BankExchange]  # REQUEST_RESPONSES: requests with the answer given
    received: list[BankExchange]  # REQUESTS: every request received, answered or not

    def authorizations(self, merchant_id: str) -> Counter[str]:
        """Transaction id -> authorization requests received for this merchant."""
        return Counter(
            e.key
            for e in self.received
            if e.kind == "authorization" and e.merchant_id == merchant_id
        )


class Soak:
    """The whole drill: prepare, load + faults, settle, checks, report."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.ports = Ports()
        self.stack = Stack()
        self.db = BenchDatabase(config.database, self.ports.postgres)
        self.secrets = production_secrets()
        self.merchant_id = f"merchant_soak_{config.run_tag}"
        self.api_key = "sk_soak_" + secrets.token_hex(20)
        # SOAK_INSTANCES independent services (each uvicorn with SOAK_WORKERS workers,
        # each worker with its own relay, reconciler and purger); the faults aimed at
        # "the service" (the worker SIGKILL) hit the first.
        self.servers: list[AppServer] = []
        self.memory: BankMemory | None = None
        self.sampler: RefundSampler | None = None
        self.webhooks: WebhookDrill | None = None
        self.checks: list[Check] = []
        self.report: dict[str, Any] = {"seed": config.seed, "run": config.run_tag}
        self.rss_warm: list[dict[str, int]] = []
        self.rss_end: list[dict[str, int]] = []
        self.settlement: dict[str, Any] = {}
        self.bank: BankLog | None = None

    @property
    def server(self) -> AppServer | None:
        """The first instance: the one the worker SIGKILL hits."""
        return self.servers[0] if self.servers else None

    def database_env(self) -> dict[str, str]:
        """The database settings: direct, or (SOAK_PGBOUNCER) through the stack's
        PgBouncer in transaction pooling, LISTEN and migrations going direct."""
        if not self.config.pgbouncer:
            return {"DATABASE_URL": self.db.url}
        port = env_int("PGBOUNCER_PORT", 6432)
        return {
            "DATABASE_URL": f"postgresql+asyncpg://payments@127.0.0.1:{port}/{self.db.name}",
            "DATABASE_DIRECT_URL": self.db.url,
            "DB_STATEMENT_CACHE_SIZE": "0",
            # Behind PgBouncer a client connection is cheap and PgBouncer's pool bounds the
            # server's: the workers' pools are sized as docs/deployment.md recommends there
            # (a statement without the cache costs a round trip more, so a burst holds
            # connections longer), unless the environment says otherwise.
            "DB_POOL_SIZE": env_str("DB_POOL_SIZE", "20"),
            "DB_MAX_OVERFLOW": env_str("DB_MAX_OVERFLOW", "30"),
        }

    # -- set-up ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Stack, database, migrations, merchant, topic offsets, services."""
        services = ["postgres", "zookeeper", "kafka", "mockserver"]
        if self.config.pgbouncer:
            services.insert(1, "pgbouncer")
        self.stack.up(services)
        log(f"database {self.db.name}: drop, create, alembic upgrade head")
        self.db.recreate()
        env = service_env(
            database_url=self.db.url,
            bank_url=self.ports.bank_url,
            kafka=self.ports.kafka_bootstrap,
            secrets_env=self.secrets,
        )
        env |= self.database_env()
        self.report["topology"] = {
            "instances": self.config.instances,
            "workers_per_instance": self.config.workers,
            "webhook_dispatchers": self.config.webhook_dispatchers,
            "database": "pgbouncer (transaction pooling)" if self.config.pgbouncer else "direct",
        }
        log(
            f"topology: {self.config.instances} instance(s) x {self.config.workers} workers,"
            f" {self.config.webhook_dispatchers} webhook dispatcher(s), database"
            f" {self.report['topology']['database']}"
        )
        reconcile = reconcile_settings()
        env |= reconcile
        self.report["reconcile_settings"] = reconcile
        log("service reconciliation: " + " ".join(f"{k}={v}" for k, v in reconcile.items()))
        self.db.migrate(env)
        create_merchant(env, self.merchant_id, self.api_key)
        # Leftovers of an interrupted run would slow every bank call.
        asyncio.run(clear_expectations(self.ports, SLOW_EXPECTATION_IDS))
        self.start_offsets = topic_end_offsets(self.ports.kafka_bootstrap, self.config.topic)
        log(f"topic {self.config.topic}: offsets before the run {self.start_offsets}")
        if self.config.webhook_dispatchers > 0:
            self.webhooks = WebhookDrill(
                config=self.config, ports=self.ports, db=self.db, merchant_ids=[self.merchant_id]
            )
            self.webhooks.prepare(env, self.start_offsets)
        for n in range(self.config.instances):
            name = "soak-app.log" if n == 0 else f"soak-app-{n + 1}.log"
            server = AppServer(env=env, workers=self.config.workers, log_path=out_dir() / name)
            self.servers.append(server)
            server.start()
        if self.webhooks is not None:
            self.webhooks.wait_joined()

    # -- the drill ------------------------------------------------------------------

    async def drive(self) -> LoadClient:
        """Load, faults, the bank's memory and the refund sampler together; then the settle
        wait. Samples RSS after warm-up and after the load."""
        assert self.server is not None
        t0 = time.monotonic()
        client = LoadClient(
            base_urls=[server.base_url for server in self.servers],
            api_key=self.api_key,
            merchant_id=self.merchant_id,
            config=self.config,
            t0=t0,
        )
        faults = FaultDriver(
            stack=self.stack, ports=self.ports, config=self.config, t0=t0, server=self.server
        )
        self.faults = faults
        memory = BankMemory(
            ports=self.ports,
            db=self.db,
            merchant_id=self.merchant_id,
            unknown_ids=client.unknown_ids,
            config=self.config,
        )
        self.memory = memory
        sampler = RefundSampler(self.db, self.merchant_id)
        self.sampler = sampler
        warmup_s = min(20.0, 0.1 * self.config.seconds)

        async def sample_warm() -> None:
            await asyncio.sleep(warmup_s)
            assert self.server is not None
            self.rss_warm = self.memory_of_all()
            log(f"after warm-up ({warmup_s:.0f} s): RSS {describe_rss(self.rss_warm)}")

        log(
            f"load: {self.config.rate:g} req/s for {self.config.seconds:g} s "
            f"(seed {self.config.seed}, run {self.config.run_tag}); faults at 15%, 38%,"
            f" 58% (bank slow{', worker SIGKILL' if self.config.kill_worker else ''}), 78%"
        )
        stop = asyncio.Event()
        webhooks = self.webhooks
        if webhooks is not None:
            await webhooks.start(t0)
        background = [
            asyncio.create_task(sampler.run(stop)),
            asyncio.create_task(memory.run(stop)),
        ]
        if webhooks is not None:
            background.append(asyncio.create_task(webhooks.watch_loop(stop)))
        pools: PoolSampler | None = None
        if self.config.pgbouncer:
            pools = PoolSampler(env_int("PGBOUNCER_PORT", 6432), self.db.name)
            background.append(asyncio.create_task(pools.run(stop, t0)))
        if not self.config.bank_memory:
            log("bank memory OFF (SOAK_BANK_MEMORY=0): no lookup answers, decisions get lost")
        try:
            await asyncio.gather(
                client.run(self.config.seconds),
                faults.run(),
                sample_warm(),
                webhooks.receiver_outage() if webhooks is not None else asyncio.sleep(0),
            )
            self.rss_end = self.memory_of_all()
            registered = await memory.sweep()  # once more, now that every request is over
            log(f"load over at {client.now():.1f} s; bank memory: {registered} more lookups")
            self.settlement = await self.wait_settled(client)
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
            await memory.sweep(forget=False)  # the last requests, for the checks
            self.bank = memory.log()
            if webhooks is not None:
                await webhooks.wait_delivered()
        finally:
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
            if pools is not None:
                self.report["pgbouncer_pool"] = pools.figures()
                log(f"pgbouncer pool: {json.dumps(self.report['pgbouncer_pool'])}")
            if webhooks is not None:
                await webhooks.shutdown()
            await client.aclose()
            await memory.aclose()
        return client

    def memory_of_all(self) -> list[dict[str, int]]:
        """RSS of every worker of every instance."""
        return [m for server in self.servers for m in server.memory()]

    def unsettled_counts(self) -> tuple[int, int]:
        """(payments processing, refunds pending) of this run's merchant."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT (SELECT count(*) FROM transactions WHERE merchant_id = %s"
                    " AND status = 'processing'), (SELECT count(*) FROM refunds r JOIN"
                    " transactions t ON t.transaction_id = r.transaction_id"
                    " WHERE t.merchant_id = %s AND r.status = 'pending')",
                    (self.merchant_id, self.merchant_id),
                )
                row = cur.fetchone()
        finally:
            conn.close()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def wait_settled(self, client: LoadClient) -> dict[str, Any]:
        """Wait (bounded) until nothing is processing or pending; the memory keeps sweeping."""
        started = time.monotonic()
        first: tuple[int, int] | None = None
        counts = (-1, -1)
        while True:
            try:
                counts = await asyncio.to_thread(self.unsettled_counts)
            except psycopg2.Error as exc:
                log(f"settle wait: database error {exc}".strip())
            first = first or counts
            waited = time.monotonic() - started
            if counts == (0, 0) or waited > self.config.settle_timeout_s:
                break
            await asyncio.sleep(2.0)
        log(
            f"settle wait: {counts[0]} payments processing, {counts[1]} refunds pending after"
            f" {waited:.1f} s (at the start: {first[0]} and {first[1]})"
        )
        return {
            "processing_at_start": first[0],
            "pending_at_start": first[1],
            "processing": counts[0],
            "pending": counts[1],
            "waited_s": round(waited, 1),
            "ended_at_s": round(client.now(), 1),
        }

    # -- checks ---------------------------------------------------------------------

    def check_idempotency(self, client: LoadClient, bank_auths: Counter[str] | None) -> None:
        """No payment charged twice for one idempotency key."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT resource_id, count(*) FROM idempotency_keys"
                    " GROUP BY resource_id HAVING count(*) > 1"
                )
                shared_resources = cur.fetchall()
                cur.execute(
                    "SELECT k.idempotency_key, k.state, k.resource_id,"
                    " (SELECT count(*) FROM transactions t WHERE t.transaction_id = k.resource_id),"
                    " k.response_body ->> 'transaction_id'"
                    " FROM idempotency_keys k"
                    " WHERE k.merchant_id = %s AND k.resource_id LIKE 'txn%%'",
                    (self.merchant_id,),
                )
                keys = cur.fetchall()
                # A payment the bank certainly never saw is failed and its key released: a
                # retry with the key runs again. Any other payment has its key.
                cur.execute(
                    "SELECT t.transaction_id, t.status, t.failure_code FROM transactions t"
                    " WHERE t.merchant_id = %s AND NOT EXISTS (SELECT 1 FROM idempotency_keys k"
                    " WHERE k.merchant_id = t.merchant_id AND k.resource_id = t.transaction_id)",
                    (self.merchant_id,),
                )
                keyless = cur.fetchall()
                cur.execute(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'captured'),"
                    " count(*) FILTER (WHERE status = 'declined'),"
                    " count(*) FILTER (WHERE status = 'failed'),"
                    " count(*) FILTER (WHERE status LIKE '%%refunded'),"
                    " count(*) FILTER (WHERE status = 'processing')"
                    " FROM transactions WHERE merchant_id = %s",
                    (self.merchant_id,),
                )
                totals = cur.fetchone()
        finally:
            conn.close()
        resource_ids = {row[2] for row in keys}
        completed_without_txn = [row[0] for row in keys if row[1] == "completed" and row[3] != 1]
        body_mismatch = [
            row[0] for row in keys if row[1] == "completed" and row[4] and row[4] != row[2]
        ]
        released = [r for r in keyless if r[1] == "failed" and r[2] in NOT_SENT_FAILURES]
        unexplained_keyless = [r[0] for r in keyless if r not in released]
        answered: dict[str, set[str]] = defaultdict(set)
        for state in client.payments:
            for status, payload, _ in state.answers:
                if status == 503 and (payload or {}).get("code") == "bank_unavailable":
                    continue  # not sent: the key was released, a retry is a new payment
                if payload and payload.get("transaction_id"):
                    answered[state.key].add(payload["transaction_id"])
        keys_with_two_txns = [k for k, txns in answered.items() if len(txns) > 1]
        problems = []
        if shared_resources:
            problems.append(f"{len(shared_resources)} resource ids shared by several keys")
        if completed_without_txn:
            problems.append(f"{len(completed_without_txn)} completed keys without one transaction")
        if body_mismatch:
            problems.append(f"{len(body_mismatch)} stored answers naming another transaction")
        if unexplained_keyless:
            problems.append(
                f"{len(unexplained_keyless)} transactions no key maps to (and not failed before"
                f" the bank): {unexplained_keyless[:3]}"
            )
        if keys_with_two_txns:
            problems.append(f"{len(keys_with_two_txns)} keys answered with two transactions")
        figures: dict[str, Any] = {
            "payment_keys": len(keys),
            "keys_in_progress": sum(1 for row in keys if row[1] == "in_progress"),
            "transactions": totals[0] if totals else 0,
            "captured": totals[1] if totals else 0,
            "declined": totals[2] if totals else 0,
            "failed": totals[3] if totals else 0,
            "refunded_or_partially": totals[4] if totals else 0,
            "processing": totals[5] if totals else 0,
            "failed_before_the_bank_key_released": len(released),
        }
        if bank_auths is not None:
            unknown = [txn for txn in bank_auths if txn not in resource_ids]
            figures["bank_authorization_requests"] = sum(bank_auths.values())
            figures["bank_distinct_transaction_ids"] = len(bank_auths)
            figures["bank_retried_transaction_ids"] = sum(1 for n in bank_auths.values() if n > 1)
            if unknown:
                problems.append(
                    f"{len(unknown)} transaction ids authorized at the bank that no key owns:"
                    f" {unknown[:3]}"
                )
        self.checks.append(
            Check(
                "no payment charged twice for one idempotency key",
                not problems,
                "; ".join(problems)
                or "each key maps to exactly one transaction and back (payments failed before"
                " the bank excepted)",
                figures,
            )
        )

    def _rows(self) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
        """This run's transactions and refunds: id -> (status, code..., )."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT transaction_id, status, authorization_code, decline_code,"
                    " failure_code FROM transactions WHERE merchant_id = %s",
                    (self.merchant_id,),
                )
                payments = {row[0]: row[1:] for row in cur.fetchall()}
                cur.execute(
                    "SELECT r.refund_id, r.status, r.bank_reference, r.failure_code,"
                    " r.transaction_id FROM refunds r JOIN transactions t"
                    " ON t.transaction_id = r.transaction_id WHERE t.merchant_id = %s",
                    (self.merchant_id,),
                )
                refunds = {row[0]: row[1:] for row in cur.fetchall()}
        finally:
            conn.close()
        return payments, refunds

    def check_bank_decisions(self, bank: BankLog | None) -> None:
        """Every authorization and refund the bank received has a row with its decision."""
        name = "every bank decision recorded (MockServer's log vs the database)"
        if bank is None:
            self.checks.append(Check(name, False, "MockServer's request log is unavailable"))
            return
        payments, refunds = self._rows()
        ours = {
            e.key
            for e in bank.received
            if e.kind == "authorization" and e.merchant_id == self.merchant_id
        } | payments.keys()
        received: dict[str, dict[str, Any]] = {}
        for exchange in bank.received:
            if exchange.kind == "authorization" and exchange.merchant_id != self.merchant_id:
                continue
            if exchange.kind == "refund" and exchange.transaction_id not in ours:
                continue
            item = received.setdefault(
                exchange.key,
                {
                    "kind": exchange.kind,
                    "requests": 0,
                    "decisions": set(),
                    "codes": set(),
                    "errors": 0,
                    "late": 0,
                },
            )
            item["requests"] += 1
        for exchange in bank.exchanges:
            answered = received.get(exchange.key)
            if answered is None:
                continue
            if exchange.decision is not None:
                answered["decisions"].add(exchange.decision)
                if exchange.code:
                    answered["codes"].add(exchange.code)
            elif exchange.status_code is not None and exchange.status_code >= 500:
                answered["errors"] += 1
            if exchange.delay_ms > self.config.bank_timeout_s * 1000:
                answered["late"] += 1
        missing: list[str] = []
        mismatched: list[str] = []
        code_mismatched: list[str] = []
        ambiguous: list[str] = []
        figures: dict[str, Counter[str]] = {
            "authorization": Counter(),
            "refund": Counter(),
        }
        for key, item in received.items():
            kind = item["kind"]
            counts = figures[kind]
            counts["received_ids"] += 1
            counts["requests"] += item["requests"]
            counts["answered_late"] += item["late"] > 0
            row = (payments if kind == "authorization" else refunds).get(key)
            if row is None:
                missing.append(key)
                continue
            status = row[0]
            decisions = item["decisions"]
            if len(decisions) > 1:
                ambiguous.append(f"{key}: {sorted(decisions)}")
                continue
            if not decisions:
                # The bank never decided (5xx only): its lookup says "no record".
                counts["no_decision"] += 1
                if not (
                    status == "failed"
                    and row[3 if kind == "authorization" else 2] == BANK_NO_RECORD
                ):
                    mismatched.append(f"{key}: bank gave no decision, row {status}")
                continue
            decision = next(iter(decisions))
            counts[decision] += 1
            valid = (PAYMENT_DECISIONS if kind == "authorization" else REFUND_DECISIONS)[decision]
            if status not in valid:
                mismatched.append(f"{key}: bank {decision}, row {status}")
                continue
            if kind == "authorization":
                code = row[1] if decision == "approved" else row[2]
            else:
                code = row[1]
            if item["codes"] and code not in item["codes"]:
                code_mismatched.append(f"{key}: bank {sorted(item['codes'])}, row {code}")
        # The other way round: a row settled by a bank decision the bank has no request of.
        unbacked = [
            txn
            for txn, row in payments.items()
            if txn not in received
            and row[0] not in ("processing", "failed")
            and row[2] != "expired_card"
        ] + [rid for rid, row in refunds.items() if rid not in received and row[0] == "succeeded"]
        lost = self.memory.vanished if self.memory else set()
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (no row): {missing[:3]}")
        if mismatched:
            problems.append(f"{len(mismatched)} mismatched: {mismatched[:3]}")
        if code_mismatched:
            problems.append(f"{len(code_mismatched)} with another code: {code_mismatched[:3]}")
        if ambiguous:
            problems.append(f"{len(ambiguous)} the bank answered two ways: {ambiguous[:3]}")
        auths, refs = figures["authorization"], figures["refund"]
        detail = (
            f"{auths['received_ids']} authorizations ({auths['requests']} requests) and"
            f" {refs['received_ids']} refunds ({refs['requests']} requests) received:"
            f" {len(missing)} missing, {len(mismatched)} mismatched"
        )
        self.checks.append(
            Check(
                name,
                not problems,
                "; ".join([detail, *problems]),
                {
                    "authorizations": dict(auths),
                    "refunds": dict(refs),
                    "missing": len(missing),
                    "mismatched": len(mismatched),
                    "code_mismatched": len(code_mismatched),
                    "ambiguous": len(ambiguous),
                    "settled_without_a_bank_request": len(unbacked),
                    "bank_memory": self.memory.figures() if self.memory else {},
                },
                warning=_join(
                    f"{len(unbacked)} rows settled by a bank decision have no request in"
                    f" the record of MockServer's log: {unbacked[:3]}"
                    if unbacked
                    else None,
                    f"{len(lost)} ids left MockServer's log before the drill was done with"
                    f" them (its cap): their record may lack later requests: {sorted(lost)[:3]}"
                    if lost
                    else None,
                ),
            )
        )

    def check_settled(self) -> None:
        """Nothing processing or pending after the settle wait; what the reconciler did."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT action, outcome, count(*) FROM audit_log WHERE actor = 'reconciler'"
                    " GROUP BY action, outcome ORDER BY action, outcome"
                )
                reconciled = {f"{a} {o}": n for a, o, n in cur.fetchall()}
                cur.execute(
                    "SELECT count(*) FROM transactions WHERE merchant_id = %s"
                    " AND failure_code = %s",
                    (self.merchant_id, BANK_NO_RECORD),
                )
                row = cur.fetchone()
                no_record = int(row[0]) if row else 0
        finally:
            conn.close()
        processing, pending = (
            self.settlement.get("processing", -1),
            self.settlement.get("pending", -1),
        )
        ok = processing == 0 and pending == 0
        self.checks.append(
            Check(
                "everything settled (no payment processing, no refund pending)",
                ok,
                f"{processing} processing, {pending} pending after"
                f" {self.settlement.get('waited_s', '?')} s of settle wait;"
                f" reconciler settled {sum(reconciled.values())}",
                self.settlement
                | {"reconciler_settled": reconciled, "payments_failed_bank_no_record": no_record},
            )
        )

    def check_refunds(self) -> None:
        """No refund total above its capture (succeeded + pending), at the end and sampled."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT t.transaction_id, t.amount_minor, t.refunded_minor,"
                    " t.refund_pending_minor,"
                    " COALESCE(SUM(r.amount_minor) FILTER (WHERE r.status = 'succeeded'), 0),"
                    " COALESCE(SUM(r.amount_minor) FILTER (WHERE r.status = 'pending'), 0)"
                    " FROM transactions t"
                    " LEFT JOIN refunds r ON r.transaction_id = t.transaction_id"
                    " WHERE t.merchant_id = %s GROUP BY t.transaction_id",
                    (self.merchant_id,),
                )
                rows = cur.fetchall()
                cur.execute(
                    "SELECT count(*), count(*) FILTER (WHERE r.status = 'succeeded'),"
                    " count(*) FILTER (WHERE r.status = 'failed'),"
                    " count(*) FILTER (WHERE r.status = 'pending')"
                    " FROM refunds r JOIN transactions t ON t.transaction_id = r.transaction_id"
                    " WHERE t.merchant_id = %s",
                    (self.merchant_id,),
                )
                refund_totals = cur.fetchone()
        finally:
            conn.close()
        over = [r[0] for r in rows if r[4] + r[5] > r[1]]
        mismatch = [r[0] for r in rows if r[4] != r[2] or r[5] != r[3]]
        fully = sum(1 for r in rows if r[1] == r[2] and r[2] > 0)
        sampler = self.sampler
        problems = []
        if over:
            problems.append(f"{len(over)} payments refunded above their capture: {over[:3]}")
        if mismatch:
            problems.append(
                f"{len(mismatch)} payments whose refunded/pending columns != the refunds:"
                f" {mismatch[:3]}"
            )
        if sampler is not None and sampler.over_capture:
            problems.append(
                f"{sampler.over_capture} samples saw refunds above a capture: {sampler.examples}"
            )
        if sampler is not None and sampler.columns_off:
            problems.append(f"{sampler.columns_off} samples saw the columns disagree")
        self.checks.append(
            Check(
                "no refund total above its capture (succeeded + pending, sampled during the run)",
                not problems,
                "; ".join(problems)
                or "succeeded + pending <= amount and = refunded/pending columns, at the end"
                f" and in {sampler.samples if sampler else 0} samples",
                {
                    "refunds": refund_totals[0] if refund_totals else 0,
                    "succeeded": refund_totals[1] if refund_totals else 0,
                    "failed": refund_totals[2] if refund_totals else 0,
                    "pending": refund_totals[3] if refund_totals else 0,
                    "fully_refunded_payments": fully,
                    "samples": sampler.samples if sampler else 0,
                    "samples_without_database": sampler.failed_samples if sampler else 0,
                    "max_pending_refunds_in_a_sample": sampler.max_pending if sampler else 0,
                },
            )
        )

    def wait_outbox_drained(self) -> tuple[int, float]:
        """Wait (bounded) until no event is pending; returns (pending, waited seconds)."""
        started = time.monotonic()
        pending = -1
        while True:
            conn = self.db.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NULL")
                    row = cur.fetchone()
                    pending = int(row[0]) if row else 0
            finally:
                conn.close()
            waited = time.monotonic() - started
            if pending == 0 or waited > self.config.drain_timeout_s:
                return pending, waited
            time.sleep(1.0)

    def check_events(self) -> None:
        """Every committed state change on the topic at least once."""
        pending, waited = self.wait_outbox_drained()
        log(f"outbox: {pending} pending after waiting {waited:.1f} s")
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT event_id::text, event_type FROM outbox_events")
                outbox = dict(cur.fetchall())
                cur.execute(
                    "SELECT count(*) FROM transactions t WHERE NOT EXISTS (SELECT 1 FROM"
                    " outbox_events o WHERE o.aggregate_id = t.transaction_id"
                    " AND o.event_type LIKE 'payment.%%')"
                )
                row = cur.fetchone()
                payments_without_event = int(row[0]) if row else 0
                cur.execute(
                    "SELECT count(*) FROM refunds r WHERE NOT EXISTS (SELECT 1 FROM"
                    " outbox_events o WHERE o.payload ->> 'event_type' LIKE 'refund.%%'"
                    " AND o.payload -> 'data' ->> 'refund_id' = r.refund_id)"
                )
                row = cur.fetchone()
                refunds_without_event = int(row[0]) if row else 0
                # Settled items carry their settling event (reconciled ones included).
                cur.execute(
                    "SELECT t.transaction_id, t.status FROM transactions t"
                    " JOIN unnest(%s::text[], %s::text[]) AS e(status, event_type)"
                    " ON e.status = t.status WHERE NOT EXISTS (SELECT 1 FROM outbox_events o"
                    " WHERE o.aggregate_id = t.transaction_id AND o.event_type = e.event_type)",
                    (list(SETTLING_EVENTS), list(SETTLING_EVENTS.values())),
                )
                unsettled_events = [f"{r[0]} {r[1]}" for r in cur.fetchall()]
                cur.execute(
                    "SELECT r.refund_id, r.status FROM refunds r WHERE r.status <> 'pending'"
                    " AND NOT EXISTS (SELECT 1 FROM outbox_events o"
                    " WHERE o.event_type = 'refund.' || r.status"
                    " AND o.payload -> 'data' ->> 'refund_id' = r.refund_id)"
                )
                unsettled_events += [f"{r[0]} {r[1]}" for r in cur.fetchall()]
                cur.execute(
                    "SELECT max(attempts), count(*) FILTER (WHERE attempts > 0) FROM outbox_events"
                )
                attempts = cur.fetchone()
        finally:
            conn.close()
        seen = asyncio.run(
            read_topic_event_ids(self.ports.kafka_bootstrap, self.config.topic, self.start_offsets)
        )
        ours = {eid: n for eid, n in seen.items() if eid in outbox}
        missing = [eid for eid in outbox if eid not in seen]
        duplicates = sum(n - 1 for n in ours.values() if n > 1)
        problems = []
        if pending:
            problems.append(f"{pending} events still unpublished after {waited:.0f} s")
        if missing:
            problems.append(f"{len(missing)} outbox events not on the topic: {missing[:3]}")
        if payments_without_event:
            problems.append(f"{payments_without_event} payments without an event")
        if refunds_without_event:
            problems.append(f"{refunds_without_event} refunds without an event")
        if unsettled_events:
            problems.append(
                f"{len(unsettled_events)} settled items without their settling event:"
                f" {unsettled_events[:3]}"
            )
        self.checks.append(
            Check(
                "every committed state change on the topic at least once",
                not problems,
                "; ".join(problems) or "every outbox event_id was read back from the topic",
                {
                    "outbox_events": len(outbox),
                    "by_type": dict(Counter(outbox.values())),
                    "on_topic": len(ours),
                    "duplicates_on_topic": duplicates,
                    "drain_wait_s": round(waited, 1),
                    "events_with_failed_attempts": attempts[1] if attempts else 0,
                    "max_attempts": attempts[0] if attempts else 0,
                },
            )
        )

    def check_webhooks(self) -> None:
        """Every committed event of a registered merchant reached the receiver, signed."""
        drill = self.webhooks
        if drill is None:
            return
        load_from = datetime.fromtimestamp(drill.t0_wall, UTC)
        load_to = datetime.fromtimestamp(drill.t0_wall + self.config.seconds, UTC)
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT event_id::text, id, payload, extract(epoch FROM published_at)"
                    " FROM outbox_events WHERE payload ->> 'merchant_id' = ANY(%s) ORDER BY id",
                    (drill.merchant_ids,),
                )
                committed = {row[0]: (row[1], row[2], row[3]) for row in cur.fetchall()}
                cur.execute("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")
                deliveries = {str(status): int(n) for status, n in cur.fetchall()}
                cur.execute(
                    "SELECT COALESCE(max(attempts), 0), count(*) FILTER (WHERE attempts > 1)"
                    " FROM webhook_deliveries"
                )
                row = cur.fetchone()
                max_attempts, retried = (int(row[0]), int(row[1])) if row else (0, 0)
                cur.execute(
                    "SELECT endpoint_id, status, disabled_reason FROM webhook_endpoints"
                    " WHERE merchant_id = ANY(%s)",
                    (drill.merchant_ids,),
                )
                endpoints = cur.fetchall()
                cur.execute(
                    "SELECT dispatcher, count(*),"
                    " count(*) FILTER (WHERE status_code BETWEEN 200 AND 299),"
                    " count(*) FILTER (WHERE status_code BETWEEN 200 AND 299"
                    "   AND attempted_at >= %s AND attempted_at < %s)"
                    " FROM webhook_attempts GROUP BY dispatcher",
                    (load_from, load_to),
                )
                by_claimer = cur.fetchall()
                cur.execute(
                    "SELECT COALESCE(error, 'http_' || status_code), count(*) FROM webhook_attempts"
                    " WHERE status_code IS NULL OR status_code NOT BETWEEN 200 AND 299"
                    " GROUP BY 1 ORDER BY 2 DESC"
                )
                failed_attempts = {str(kind): int(n) for kind, n in cur.fetchall()}
        finally:
            conn.close()
        log(f"webhook receipts recorded in {drill.write_receipts()}")
        receipts = drill.receiver.receipts
        counts = Counter(r.webhook_id for r in receipts)
        first: dict[str, Receipt] = {}
        for receipt in receipts:  # in arrival order
            first.setdefault(receipt.webhook_id, receipt)
        missing = [eid for eid in committed if eid not in first]
        unknown = [eid for eid in first if eid not in committed]
        differing = sorted(
            {
                r.webhook_id
                for r in receipts
                if r.webhook_id in committed and r.body != committed[r.webhook_id][1]
            }
        )
        duplicates = sum(n - 1 for n in counts.values() if n > 1)

        # Commit -> delivery: first receipt - occurred_at (both this machine's UTC clock),
        # all events and those whose way did not cross a Kafka/PostgreSQL restart, the
        # worker's SIGKILL or the receiver's outage (plus their grace); and published ->
        # delivery (the outbox row's published_at: the dispatchers' share alone).
        def relative(wall: float) -> float:
            return wall - drill.t0_wall

        blocking = [w for w in self.faults.windows if w.kind in ("kafka", "postgres", "worker")]
        if drill.outage is not None:
            blocking.append(drill.outage)
        latencies: list[float] = []
        steady: list[float] = []
        from_topic: list[float] = []
        from_topic_steady: list[float] = []
        per_payment: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
        committed_during_load = 0
        for eid, (outbox_id, payload, published) in committed.items():
            occurred = occurred_at(payload)
            if occurred is None:
                continue
            committed_during_load += 0 <= relative(occurred) < self.config.seconds
            arrived = first.get(eid)
            if arrived is None:
                continue
            latency = (arrived.received_at - occurred) * 1000
            latencies.append(latency)
            quiet = not any(
                w.covers(relative(occurred), relative(arrived.received_at)) for w in blocking
            )
            if quiet:
                steady.append(latency)
            if published is not None:
                from_topic.append((arrived.received_at - float(published)) * 1000)
                if quiet:
                    from_topic_steady.append(from_topic[-1])
            per_payment[str(payload.get("transaction_id"))].append(
                (arrived.received_at, int(outbox_id), occurred)
            )
        # Per payment, were the first receipts in the order the events occurred / were
        # committed (outbox order, which is the topic's)? Reported, not judged.
        payments_with_several = 0
        out_of_occurred = out_of_outbox = 0
        for items in per_payment.values():
            if len(items) < 2:
                continue
            payments_with_several += 1
            items.sort()
            occurred_seq = [item[2] for item in items]
            outbox_seq = [item[1] for item in items]
            out_of_occurred += occurred_seq != sorted(occurred_seq)
            out_of_outbox += outbox_seq != sorted(outbox_seq)
        # Deliveries per second: what the receiver saw during the load (the offered
        # event rate bounds it: this is not the dispatchers' capacity), and per dispatcher.
        seconds = self.config.seconds
        per_second: Counter[int] = Counter(
            int(relative(r.received_at)) for r in receipts if 0 <= relative(r.received_at) < seconds
        )
        during_load = sum(per_second.values())
        peak_10s = max(
            (sum(per_second[s] for s in range(start, start + 10)) / 10 for start in per_second),
            default=0.0,
        )
        numbers = {str(d.pid): d for d in drill.dispatchers}
        per_dispatcher: dict[str, dict[str, Any]] = {}
        for claimer, attempts, delivered, in_load in by_claimer:
            parts = str(claimer).split(":")
            dispatcher = numbers.get(parts[-2]) if len(parts) >= 3 else None
            label = f"#{dispatcher.number}" if dispatcher else str(claimer)
            per_dispatcher[label] = {
                "attempts": int(attempts),
                "delivered": int(delivered),
                "delivered_per_s_during_load": round(int(in_load) / seconds, 2),
            }
        for dispatcher in drill.dispatchers:
            per_dispatcher.setdefault(f"#{dispatcher.number}", {}).update(
                {
                    "pid": dispatcher.pid,
                    "running_until_stopped": dispatcher.alive_at_end,
                    "exit_status": dispatcher.exit_status,
                    "log": str(dispatcher.log_path),
                    "log_warnings": dict(dispatcher.warnings().most_common(8)),
                }
            )
        lag = percentiles(drill.lag_ms)
        problems = []
        if missing:
            problems.append(f"{len(missing)} committed events never received: {missing[:3]}")
        if unknown:
            problems.append(f"{len(unknown)} received events nobody committed: {unknown[:3]}")
        if differing:
            problems.append(f"{len(differing)} received with another body: {differing[:3]}")
        if drill.receiver.refused_signatures:
            problems.append(f"{drill.receiver.refused_signatures} signatures refused")
        if drill.receiver.malformed:
            problems.append(f"{drill.receiver.malformed} signed bodies not a JSON object")
        if deliveries.get("failed"):
            problems.append(f"{deliveries['failed']} deliveries given up")
        not_enabled = [f"{e[0]} {e[1]} {e[2]}" for e in endpoints if e[1] != "enabled"]
        if not_enabled:
            problems.append(f"endpoints not enabled: {not_enabled}")
        broken = [
            f"#{d.number} {'exit ' + str(d.exit_status) if d.alive_at_end else 'died'}"
            for d in drill.dispatchers
            if not d.alive_at_end or d.exit_status != 0
        ]
        if broken:
            problems.append(f"dispatchers not running to the end or not stopping cleanly: {broken}")
        problems.extend(drill.errors)
        outage = drill.outage
        summary: dict[str, Any] = {
            "merchants": drill.merchant_ids,
            "endpoints": drill.endpoints,
            "receiver": drill.receiver.url,
            "group": drill.group,
            "group_started_at": drill.group_offsets,
            "dispatcher_settings": drill.settings,
            "committed_events": len(committed),
            "received_events": len(first) - len(unknown),
            "receipts": len(receipts),
            "missing": len(missing),
            "duplicates": duplicates,
            "unknown_received": len(unknown),
            "bodies_differing": len(differing),
            "refused_signatures": drill.receiver.refused_signatures,
            "deliveries": deliveries,
            "deliveries_retried": retried,
            "max_attempts": max_attempts,
            "failed_attempts": failed_attempts,
            "endpoints_not_enabled": not_enabled,
            "commit_to_delivery_ms": percentiles(latencies),
            "commit_to_delivery_outside_faults_ms": percentiles(steady),
            "published_to_delivery_ms": percentiles(from_topic),
            "published_to_delivery_outside_faults_ms": percentiles(from_topic_steady),
            "deliveries_per_s_during_load": round(during_load / seconds, 2),
            "events_committed_per_s_during_load": round(committed_during_load / seconds, 2),
            "peak_10s_deliveries_per_s": round(peak_10s, 2),
            "per_dispatcher": per_dispatcher,
            "order": {
                "payments_with_several_events": payments_with_several,
                "first_receipts_out_of_occurred_at_order": out_of_occurred,
                "first_receipts_out_of_outbox_order": out_of_outbox,
            },
            "receiver_outage": {
                "start_s": round(outage.start, 1),
                "end_s": round(outage.end, 1) if outage.end is not None else None,
            }
            if outage is not None
            else None,
            "wait": drill.wait,
            "soak_loop_lag_ms": lag,
        }
        self.report["webhooks"] = summary
        latency = summary["commit_to_delivery_ms"]
        self.checks.append(
            Check(
                "every event of a registered merchant reached the receiver (signature verified)",
                not problems,
                "; ".join(problems)
                or f"{len(committed)} committed events of {len(drill.merchant_ids)} merchant(s)"
                f" all received by {len(drill.dispatchers)} dispatchers ({duplicates} duplicates,"
                " 0 signatures refused, 0 given up)",
                {
                    k: summary[k]
                    for k in (
                        "committed_events",
                        "received_events",
                        "missing",
                        "duplicates",
                        "refused_signatures",
                        "deliveries",
                        "failed_attempts",
                    )
                }
                | {"p50_ms": latency.get("p50"), "p99_ms": latency.get("p99")},
                warning=_join(
                    f"{drill.wait.get('deliveries_pending_after')} deliveries still pending"
                    " after the wait"
                    if drill.wait.get("deliveries_pending_after")
                    else None,
                    f"{out_of_occurred} of {payments_with_several} payments' first receipts out"
                    f" of occurred_at order ({out_of_outbox} out of outbox order)"
                    if out_of_occurred or out_of_outbox
                    else None,
                ),
            )
        )

    def check_replays(self, client: LoadClient) -> None:
        """Every answer for a remembered key is the stored one (a 202 replays as the same
        202); a key whose request died answers its current state, never 200 then 202."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT idempotency_key, state, response_status, response_body"
                    " FROM idempotency_keys WHERE merchant_id = %s",
                    (self.merchant_id,),
                )
                stored = {row[0]: row[1:] for row in cur.fetchall()}
        finally:
            conn.close()
        compared = mismatched = replays = replayed_202 = went_back = 0
        examples: list[str] = []
        for states in (client.payments, client.refunds):
            for state in states:
                answers = [a for a in state.answers if a[0] in (200, 202) and a[1]]
                replays += sum(1 for a in answers if a[2])
                replayed_202 += sum(1 for a in answers if a[2] and a[0] == 202)
                row = stored.get(state.key)
                if row is not None and row[0] == "completed":
                    _, status, body = row
                    originals = sum(1 for a in answers if not a[2])
                    different = [
                        a for a in answers if a[0] != status or _stable(a[1] or {}) != _stable(body)
                    ]
                    compared += len(answers)
                    bad = len(different) + max(0, originals - 1)
                    if bad:
                        mismatched += bad
                        if len(examples) < 3:
                            seen = [(a[0], "replayed" if a[2] else "original") for a in answers]
                            examples.append(f"{state.key}: stored {status}, answered {seen}")
                    continue
                # In progress (its request died, or could not store the answer): the state.
                statuses = [a[0] for a in answers if a[2]]
                if 200 in statuses and 202 in statuses[statuses.index(200) :]:
                    went_back += 1
                    if len(examples) < 3:
                        examples.append(f"{state.key}: current state went back: {statuses}")
        problems = mismatched + went_back
        self.checks.append(
            Check(
                "idempotent replays repeat the stored answer",
                problems == 0,
                f"{mismatched} of {compared} answers of remembered keys differ, {went_back} keys"
                f" went from 200 back to 202: {examples}"
                if problems
                else f"{compared} answers of remembered keys identical ({replays} replays,"
                f" {replayed_202} of them a 202)",
                {
                    "answers_compared": compared,
                    "replays": replays,
                    "replayed_202": replayed_202,
                    "mismatched": mismatched,
                    "state_went_back": went_back,
                },
            )
        )

    def check_errors(self, client: LoadClient) -> None:
        """No 5xx (or silence) outside the fault windows but 503 bank_unavailable; inside
        them only what the fault explains; never a 500."""
        windows = self.faults.windows
        outside: Counter[str] = Counter()
        unexplained: Counter[str] = Counter()
        inside: dict[str, Counter[str]] = {w.label: Counter() for w in windows}
        statuses: Counter[str] = Counter()
        examples: list[str] = []
        for record in client.records:
            statuses[str(record.status)] += 1
            covering = [w for w in windows if w.covers(record.t0, record.t1)]
            for window in covering:
                inside[window.label][record.label] += 1
            failed = record.status >= 500 or record.status == 0
            if not failed or (record.status == 503 and record.code == "bank_unavailable"):
                continue
            if not covering:
                outside[record.label] += 1
            elif record.status == 500 or not any(w.explains(record) for w in covering):
                unexplained[record.label] += 1
            else:
                continue
            if len(examples) < 5:
                examples.append(f"{record.op} at {record.t0:.1f}-{record.t1:.1f}s: {record.label}")
        problems = []
        if outside:
            problems.append(f"{sum(outside.values())} outside the windows: {dict(outside)}")
        if unexplained:
            problems.append(
                f"{sum(unexplained.values())} inside a window it does not explain:"
                f" {dict(unexplained)}"
            )
        self.checks.append(
            Check(
                "no 5xx outside the fault windows (503 bank_unavailable allowed), inside them"
                " only what the fault explains",
                not problems,
                f"{'; '.join(problems)}; e.g. {examples}"
                if problems
                else f"none; {statuses.get('202', 0)} answers 202 (bank answer unknown)",
                {
                    "outside_windows": dict(outside),
                    "unexplained_inside": dict(unexplained),
                    "statuses": dict(statuses),
                    "per_window": {k: dict(v) for k, v in inside.items()},
                },
            )
        )

    def check_health(self) -> None:
        """/health of every instance is healthy again (degraded first is fine), within 90 s."""
        for n, server in enumerate(self.servers):
            name = "service" if len(self.servers) == 1 else f"instance {n + 1}"
            self.check_health_of(server, name)

    def check_health_of(self, server: AppServer, name: str) -> None:
        """One instance's /health is healthy again, within 90 s."""
        seen: list[str] = []
        deadline = time.monotonic() + 90
        status = "?"
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{server.base_url}/health", timeout=5)
                status = str(answer.json().get("status"))
                checks = answer.json().get("checks", {})
            except (httpx.HTTPError, ValueError):
                status, checks = "no answer", {}
            if not seen or seen[-1] != status:
                seen.append(status)
                log(f"health of {name}: {status} {json.dumps(checks)[:300]}")
            if status == "healthy":
                break
            time.sleep(2)
        self.checks.append(
            Check(
                f"{name} healthy again at the end",
                status == "healthy",
                " -> ".join(seen),
                {"sequence": seen},
            )
        )

    def killed_requests(self, client: LoadClient, bank: BankLog | None) -> dict[str, int]:
        """The requests that died with the worker: recorded? sent to the bank?"""
        windows = [w for w in self.faults.windows if w.kind == "worker"]
        died = [
            r
            for r in client.records
            if r.status == 0 and any(w.covers(r.t0, r.t1) for w in windows)
        ]
        keys = sorted({r.key for r in died if r.key})
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT k.resource_id FROM idempotency_keys k WHERE k.merchant_id = %s"
                    " AND k.idempotency_key = ANY(%s)",
                    (self.merchant_id, keys),
                )
                resources = {row[0] for row in cur.fetchall()}
        finally:
            conn.close()
        at_bank = {e.key for e in bank.received} if bank else set()
        return {
            "requests_without_answer": len(died),
            "recorded_payments_or_refunds": len(resources),
            "received_by_the_bank": len(resources & at_bank),
        }

    def check_workers(self, killed_requests: dict[str, int]) -> None:
        """Only the killed worker was replaced, by one new worker (RSS figures ride along)."""
        warm = {m["pid"] for m in self.rss_warm}
        end = {m["pid"] for m in self.rss_end}
        killed = self.faults.killed.get("pid")
        expected_survivors = warm - {killed}
        new = end - warm
        growth = {
            str(m["pid"]): round((m["rss_kb"] - w["rss_kb"]) / 1024, 1)
            for m in self.rss_end
            for w in self.rss_warm
            if m["pid"] == w["pid"]
        }
        if killed is None:
            ok = warm == end
            expectation = "no worker died"
        else:
            ok = (
                expected_survivors <= end
                and len(new) == 1
                and len(end) == self.config.workers * self.config.instances
            )
            expectation = (
                f"worker {killed} SIGKILLed, replaced by {sorted(new)} after"
                f" {self.faults.killed.get('replaced_after_s')} s; it took"
                f" {killed_requests['requests_without_answer']} requests with it"
                f" ({killed_requests['recorded_payments_or_refunds']} payments/refunds recorded,"
                f" {killed_requests['received_by_the_bank']} of them at the bank)"
            )
        self.checks.append(
            Check(
                "workers: none died but the one killed, which was replaced",
                ok,
                f"{expectation}; after warm-up {describe_rss(self.rss_warm)}; at the end "
                f"{describe_rss(self.rss_end)}; growth MB {growth}",
                {
                    "after_warmup": self.rss_warm,
                    "at_end": self.rss_end,
                    "growth_mb": growth,
                    "killed": self.faults.killed | {"requests": killed_requests},
                },
            )
        )

    # -- report ---------------------------------------------------------------------

    def summarize_load(self, client: LoadClient) -> dict[str, Any]:
        """Requests by operation and status, latency outside fault windows."""
        by_op: dict[str, Counter[str]] = defaultdict(Counter)
        latencies: dict[str, list[float]] = defaultdict(list)
        for record in client.records:
            by_op[record.op][str(record.status)] += 1
            if record.status and not any(
                w.covers(record.t0, record.t1) for w in self.faults.windows
            ):
                latencies[record.op].append((record.t1 - record.t0) * 1000)
        lat = {}
        for op, values in latencies.items():
            values.sort()
            lat[op] = {
                "n": len(values),
                "p50_ms": round(values[len(values) // 2], 1),
                "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
            }
        by_instance: Counter[int] = Counter(record.instance + 1 for record in client.records)
        instances_of_key: dict[str, set[int]] = defaultdict(set)
        for record in client.records:
            if record.key:
                instances_of_key[record.key].add(record.instance)
        return {
            "requests": len(client.records),
            "by_instance": dict(sorted(by_instance.items())),
            # Idempotency keys whose requests (retries, racing twins) reached several instances.
            "keys_across_instances": sum(1 for seen in instances_of_key.values() if len(seen) > 1),
            "answered_202": sum(1 for r in client.records if r.status == 202),
            "dropped_by_client": client.dropped,
            "by_operation": {op: dict(c) for op, c in sorted(by_op.items())},
            "latency_outside_faults": lat,
            "windows": [
                {
                    "name": w.name,
                    "start_s": round(w.start, 1),
                    "end_s": round(w.end, 1) if w.end is not None else None,
                    "grace_s": w.grace_s,
                }
                for w in self.faults.windows
            ],
            "fault_errors": self.faults.errors,
        }

    def write_records(self, client: LoadClient) -> Path:
        """Every response, one JSON object a line."""
        path = out_dir() / "soak-responses.jsonl"
        with path.open("w") as handle:
            for r in client.records:
                handle.write(json.dumps(r.__dict__) + "\n")
        return path

    def cleanup_bank(self) -> None:
        """Remove the slow-bank and lookup expectations this run registered."""
        ids = list(SLOW_EXPECTATION_IDS)
        if self.memory is not None:
            ids += list(self.memory.registered.values())
        with contextlib.suppress(Exception):
            failed = asyncio.run(clear_expectations(self.ports, ids))
            log(f"mockserver: {len(ids)} expectations of this run removed ({failed} failed)")

    def run(self) -> int:
        """Everything; returns the exit code."""
        started = time.monotonic()
        try:
            self.prepare()
            client = asyncio.run(self.drive())
            records = self.write_records(client)
            self.report["load"] = self.summarize_load(client)
            log(f"responses recorded in {records}")
            bank = self.bank
            self.check_idempotency(client, bank.authorizations(self.merchant_id) if bank else None)
            self.check_bank_decisions(bank)
            self.check_settled()
            self.check_refunds()
            self.check_events()
            self.check_webhooks()
            self.check_replays(client)
            self.check_errors(client)
            self.check_health()
            self.check_workers(self.killed_requests(client, bank))
        finally:
            if self.webhooks is not None:
                self.webhooks.stop_dispatchers()  # already stopped unless the drill broke off
            for n, server in enumerate(self.servers):
                code = server.stop()
                log(f"service instance {n + 1} stopped, exit status {code}")
                self.report.setdefault("service_exit_status", []).append(code)
            self.cleanup_bank()
            self.stack.stop_started()
        self.report["elapsed_s"] = round(time.monotonic() - started, 1)
        self.report["checks"] = [c.__dict__ for c in self.checks]
        path = out_dir() / "soak-report.json"
        path.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        self.print_summary(path)
        return 0 if self.checks and all(c.ok for c in self.checks) else 1

    def print_summary(self, path: Path) -> None:
        """The figures and verdicts on stdout."""
        load = self.report.get("load", {})
        print(
            f"\nsoak: {load.get('requests', 0)} requests in {self.config.seconds:g} s,"
            f" {load.get('answered_202', 0)} answered 202"
        )
        if "pgbouncer_pool" in self.report:
            print(f"  pgbouncer pool {self.report['pgbouncer_pool']}")
        if self.config.instances > 1:
            print(
                f"  topology {self.report.get('topology')}; requests by instance"
                f" {load.get('by_instance')}; {load.get('keys_across_instances')} idempotency"
                " keys used on more than one instance"
            )
        for op, statuses in load.get("by_operation", {}).items():
            print(f"  {op:<14} {statuses}")
        for op, figures in load.get("latency_outside_faults", {}).items():
            print(f"  latency {op:<14} p50 {figures['p50_ms']} ms  p99 {figures['p99_ms']} ms")
        for window in load.get("windows", []):
            print(f"  fault {window['name']:<16} {window['start_s']} s -> {window['end_s']} s")
        for error in load.get("fault_errors", []):
            print(f"  fault error: {error}")
        hooks = self.report.get("webhooks")
        if hooks:
            print(
                f"\nwebhooks: {hooks['committed_events']} events committed,"
                f" {hooks['received_events']} received ({hooks['receipts']} POSTs accepted,"
                f" {hooks['duplicates']} duplicates, {hooks['refused_signatures']} signatures"
                f" refused) through {len(self.webhooks.dispatchers) if self.webhooks else 0}"
                f" dispatchers in {hooks['group']}"
            )
            for label, key in (
                ("commit -> delivery, all events", "commit_to_delivery_ms"),
                ("commit -> delivery, outside faults", "commit_to_delivery_outside_faults_ms"),
                ("published -> delivery, all events", "published_to_delivery_ms"),
                (
                    "published -> delivery, outside faults",
                    "published_to_delivery_outside_faults_ms",
                ),
            ):
                f = hooks[key]
                if f.get("n"):
                    print(
                        f"  {label:<38} p50 {f['p50']} ms  p95 {f['p95']} ms"
                        f"  p99 {f['p99']} ms  max {f['max']} ms  (n {f['n']})"
                    )
            rates = ", ".join(
                f"{label} {d.get('delivered_per_s_during_load', 0)}/s"
                for label, d in hooks["per_dispatcher"].items()
            )
            print(
                f"  deliveries/s during the load {hooks['deliveries_per_s_during_load']}"
                f" (events committed {hooks['events_committed_per_s_during_load']}/s, best 10 s"
                f" {hooks['peak_10s_deliveries_per_s']}/s); per dispatcher: {rates}"
            )
            print(
                f"  deliveries {hooks['deliveries']}, {hooks['deliveries_retried']} retried"
                f" (max {hooks['max_attempts']} attempts), failed attempts"
                f" {hooks['failed_attempts']}; soak loop lag {hooks['soak_loop_lag_ms']} ms"
            )
        print()
        for check in self.checks:
            print(f"  [{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
            if check.figures and not check.name.startswith("workers"):
                print(f"         {json.dumps(check.figures, default=str)[:600]}")
            if check.warning:
                print(f"  [warn] {check.warning}")
        failed_hooks = any(not c.ok and c.name.startswith("every event of") for c in self.checks)
        if self.webhooks is not None and failed_hooks:
            print()
            self.webhooks.print_tails()
        print(f"\nreport: {path}")


def _join(*parts: str | None) -> str | None:
    present = [p for p in parts if p]
    return "; ".join(present) or None


def _stable(body: dict[str, Any]) -> dict[str, Any]:
    # A problem body's correlation_id is the request's own; everything else must match.
    return {k: v for k, v in body.items() if k != "correlation_id"}


def describe_rss(memory: list[dict[str, int]]) -> str:
    """'pid: rss MB (peak MB)' per worker."""
    return ", ".join(
        f"{m['pid']}: {m['rss_kb'] / 1024:.0f} MB (peak {m['hwm_kb'] / 1024:.0f})" for m in memory
    )


def main() -> int:
    """Run the drill."""
    bench.LOG_PREFIX[0] = "soak"
    config = SoakConfig()
    soak = Soak(config)
    with bench.interrupt_as_exception():
        try:
            return soak.run()
        except (RuntimeError, OSError, psycopg2.Error) as exc:
            log(f"the drill could not run: {exc}")
            return 2


if __name__ == "__main__":
    sys.exit(main())
