"""Soak and fault drill of the payment service (``make soak``): bounded, a few minutes.

Starts the service like ``scripts/bench.py`` does (uvicorn, 2 workers, APP_ENV=production,
MockServer as the bank, Kafka, a dedicated database ``SOAK_DB``, default
``payments_soak``), drives a mixed load at a moderate rate from an asyncio httpx client
for ``SOAK_SECONDS`` (default 180), and meanwhile:

* restarts Kafka twice and PostgreSQL once (``scripts/stack.sh down X`` / ``up X``);
* makes the bank slow for ``SOAK_BANK_SLOW_S`` (default 15 s): a MockServer expectation,
  above the default ones, that answers every bank call after the app's bank timeout.

The load mixes new payments (approved and declined cards), status reads, partial refunds,
racing refunds of one payment, idempotent retries (the same request re-sent with the same
``Idempotency-Key``) and racing duplicates (the same new request twice at once). Every
response is recorded with its timestamps and status in ``.bench/soak-responses.jsonl``.

Afterwards it checks, from the database, the bank's request log, the topic and the
responses:

1. no payment charged twice for one idempotency key (each key maps to one transaction,
   each transaction to one key, every authorization the bank saw to a key's resource id,
   and every answer for one key names the same transaction);
2. no refund total above its capture (succeeded refunds <= amount, and = refunded_minor);
3. every committed state change on the topic at least once (every transaction and refund
   has its outbox event; the backlog drains; every outbox event_id is read back from the
   topic, from the offsets it had before the run);
4. idempotent replays repeat the first answer;
5. no 5xx (or no answer) outside the restart windows, except 503 ``bank_unavailable``;
6. the service is healthy again at the end (``/health`` healthy, possibly after degraded).

It prints those figures, RSS per worker at the end against after warm-up, writes
``.bench/soak-report.json`` and exits 1 if an invariant fails (2 if the drill itself could
not run).

Restarting PostgreSQL and Kafka disturbs everyone using the same local stack; on a shared
machine point ``STACK_SCRIPT`` (and POSTGRES_PORT, ZOOKEEPER_PORT, KAFKA_PORT,
MOCKSERVER_PORT) at a private copy of the stack, as ``docs/performance.md`` shows.

Environment (all optional): SOAK_SECONDS=180 SOAK_RATE=20 (requests/s) SOAK_WORKERS=2
SOAK_DB=payments_soak SOAK_BANK_SLOW_S=15 SOAK_DRAIN_TIMEOUT=120 SOAK_MAX_INFLIGHT=200
KAFKA_TOPIC=payments.events BANK_TIMEOUT_S=3 (must match the service's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import bench
import httpx
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

APPROVED_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
SLOW_EXPECTATION_ID = "soak-bank-slow"
REQUEST_TIMEOUT_S = 30.0
# How long after a dependency is back its restart may still show (pool reconnects,
# the relay's backoff, the bank circuit's reset).
POSTGRES_GRACE_S = 15.0
KAFKA_GRACE_S = 10.0


@dataclass
class SoakConfig:
    """The drill's settings (see the module docstring)."""

    seconds: float = field(default_factory=lambda: env_float("SOAK_SECONDS", 180))
    rate: float = field(default_factory=lambda: env_float("SOAK_RATE", 20))
    workers: int = field(default_factory=lambda: env_int("SOAK_WORKERS", 2))
    database: str = field(default_factory=lambda: env_str("SOAK_DB", "payments_soak"))
    bank_slow_s: float = field(default_factory=lambda: env_float("SOAK_BANK_SLOW_S", 15))
    drain_timeout_s: float = field(default_factory=lambda: env_float("SOAK_DRAIN_TIMEOUT", 120))
    max_inflight: int = field(default_factory=lambda: env_int("SOAK_MAX_INFLIGHT", 200))
    topic: str = field(default_factory=lambda: env_str("KAFKA_TOPIC", "payments.events"))
    bank_timeout_s: float = field(default_factory=lambda: env_float("BANK_TIMEOUT_S", 3))
    seed: int = field(default_factory=lambda: env_int("SOAK_SEED", 0) or secrets.randbelow(10**6))


@dataclass
class Window:
    """A fault: from when it was injected to when the dependency was back."""

    name: str
    start: float
    end: float | None = None
    grace_s: float = 0.0
    restart: bool = True  # restart windows tolerate 5xx; the bank-slow one does not

    def covers(self, t0: float, t1: float) -> bool:
        """Whether a request in flight from t0 to t1 overlaps the window (plus grace)."""
        end = (self.end if self.end is not None else float("inf")) + self.grace_s
        return t0 <= end and t1 >= self.start


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
    replayed: bool = False
    error: str | None = None


@dataclass
class PaymentRequestState:
    """A payment request we sent, to retry it and check what came back."""

    key: str
    body: str
    answers: list[tuple[int, dict[str, Any] | None, bool]] = field(default_factory=list)


@dataclass
class RefundRequestState:
    """A refund request we sent."""

    key: str
    transaction_id: str
    body: str
    answers: list[tuple[int, dict[str, Any] | None, bool]] = field(default_factory=list)


class LoadClient:
    """Open-loop mixed load: one new task per tick, whatever the previous ones are doing."""

    def __init__(
        self, *, base_url: str, api_key: str, merchant_id: str, config: SoakConfig, t0: float
    ) -> None:
        self.base_url = base_url
        self.merchant_id = merchant_id
        self.config = config
        self.t0 = t0
        self.rng = random.Random(config.seed)
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.records: list[Record] = []
        self.payments: list[PaymentRequestState] = []
        self.refunds: list[RefundRequestState] = []
        self.captured: list[str] = []
        self.known: list[str] = []
        self._captured_set: set[str] = set()
        self._known_set: set[str] = set()
        self.dropped = 0
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.client = httpx.AsyncClient(
            base_url=base_url,
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
        card = DECLINED_CARD if self.rng.random() < 0.05 else APPROVED_CARD
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
    ) -> tuple[int, dict[str, Any] | None, bool]:
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        t0 = self.now()
        try:
            response = await self.client.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.records.append(
                Record(op=op, t0=t0, t1=self.now(), status=0, key=key, error=type(exc).__name__)
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
                replayed=replayed,
            )
        )
        return response.status_code, payload, replayed

    def _remember_payment(self, status: int, payload: dict[str, Any] | None) -> None:
        txn = (payload or {}).get("transaction_id")
        if status != 200 or not payload or not txn:
            return
        if txn not in self._known_set:
            self._known_set.add(txn)
            self.known.append(txn)
        refundable = payload.get("status") in {"captured", "partially_refunded"}
        if refundable and txn not in self._captured_set:
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


def slow_bank_expectation(delay_ms: int) -> dict[str, Any]:
    """Every bank call answers after ``delay_ms``: above the service's bank timeout."""
    return {
        "id": SLOW_EXPECTATION_ID,
        "priority": 1000,
        "httpRequest": {"method": "POST", "path": "/v1/.*"},
        "httpResponse": {
            "statusCode": 200,
            "headers": {"Content-Type": ["application/json"]},
            "body": {"type": "JSON", "json": {"status": "declined", "decline_code": "slow"}},
            "delay": {"timeUnit": "MILLISECONDS", "value": delay_ms},
        },
        "times": {"unlimited": True},
    }


class FaultDriver:
    """Injects the faults on a schedule proportional to the drill's length."""

    def __init__(self, *, stack: Stack, ports: Ports, config: SoakConfig, t0: float) -> None:
        self.stack = stack
        self.ports = ports
        self.config = config
        self.t0 = t0
        self.windows: list[Window] = []
        self.errors: list[str] = []

    def now(self) -> float:
        """Seconds since the drill started."""
        return time.monotonic() - self.t0

    async def _at(self, fraction: float) -> None:
        delay = fraction * self.config.seconds - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _restart(self, service: str, *, down_for_s: float, grace_s: float) -> None:
        window = Window(name=f"{service} restart", start=self.now(), grace_s=grace_s)
        self.windows.append(window)
        took = await stack_command(self.stack, "down", service)
        log(f"fault: {service} down at {window.start:.1f} s (stopping took {took:.1f} s)")
        await asyncio.sleep(down_for_s)
        took = await stack_command(self.stack, "up", service)
        window.end = self.now()
        log(f"fault: {service} back at {window.end:.1f} s (starting took {took:.1f} s)")

    async def _slow_bank(self) -> None:
        delay_ms = int((self.config.bank_timeout_s + 1.5) * 1000)
        # The circuit opens after a few timeouts and stays open for its reset period
        # (30 s by default) after the bank is fast again: 503 bank_unavailable meanwhile.
        window = Window(name="bank slow", start=self.now(), grace_s=35.0, restart=False)
        self.windows.append(window)
        status = await mockserver(
            self.ports, "/mockserver/expectation", [slow_bank_expectation(delay_ms)]
        )
        log(f"fault: bank answers after {delay_ms} ms from {window.start:.1f} s (HTTP {status})")
        await asyncio.sleep(self.config.bank_slow_s)
        status = await mockserver(
            self.ports, "/mockserver/clear?type=EXPECTATIONS", {"id": SLOW_EXPECTATION_ID}
        )
        window.end = self.now()
        log(f"fault: bank fast again at {window.end:.1f} s (HTTP {status})")

    async def run(self) -> None:
        """Kafka, PostgreSQL, the bank, Kafka again; errors are kept, not raised."""
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


class Soak:
    """The whole drill: prepare, load + faults, checks, report."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.ports = Ports()
        self.stack = Stack()
        self.db = BenchDatabase(config.database, self.ports.postgres)
        self.secrets = production_secrets()
        self.merchant_id = "merchant_soak"
        self.api_key = "sk_soak_" + secrets.token_hex(20)
        self.server: AppServer | None = None
        self.checks: list[Check] = []
        self.report: dict[str, Any] = {"seed": config.seed}

    # -- set-up ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Stack, database, migrations, merchant, topic offsets, service."""
        self.stack.up(["postgres", "zookeeper", "kafka", "mockserver"])
        log(f"database {self.db.name}: drop, create, alembic upgrade head")
        self.db.recreate()
        env = service_env(
            database_url=self.db.url,
            bank_url=self.ports.bank_url,
            kafka=self.ports.kafka_bootstrap,
            secrets_env=self.secrets,
        )
        self.db.migrate(env)
        create_merchant(env, self.merchant_id, self.api_key)
        # Leftovers of an interrupted run would slow every bank call.
        asyncio.run(
            mockserver(
                self.ports, "/mockserver/clear?type=EXPECTATIONS", {"id": SLOW_EXPECTATION_ID}
            )
        )
        self.start_offsets = topic_end_offsets(self.ports.kafka_bootstrap, self.config.topic)
        log(f"topic {self.config.topic}: offsets before the run {self.start_offsets}")
        self.server = AppServer(
            env=env, workers=self.config.workers, log_path=out_dir() / "soak-app.log"
        )
        self.server.start()

    # -- the drill ------------------------------------------------------------------

    async def drive(self) -> LoadClient:
        """Load and faults together; samples RSS after warm-up."""
        assert self.server is not None
        t0 = time.monotonic()
        client = LoadClient(
            base_url=self.server.base_url,
            api_key=self.api_key,
            merchant_id=self.merchant_id,
            config=self.config,
            t0=t0,
        )
        faults = FaultDriver(stack=self.stack, ports=self.ports, config=self.config, t0=t0)
        self.faults = faults
        warmup_s = min(20.0, 0.1 * self.config.seconds)

        async def sample_warm() -> None:
            await asyncio.sleep(warmup_s)
            assert self.server is not None
            self.rss_warm = self.server.memory()
            log(f"after warm-up ({warmup_s:.0f} s): RSS {describe_rss(self.rss_warm)}")

        log(
            f"load: {self.config.rate:g} req/s for {self.config.seconds:g} s "
            f"(seed {self.config.seed}); faults at 15%, 38%, 58%, 78% of the run"
        )
        try:
            await asyncio.gather(client.run(self.config.seconds), faults.run(), sample_warm())
        finally:
            await client.aclose()
        self.rss_end = self.server.memory()
        return client

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
                cur.execute(
                    "SELECT t.transaction_id FROM transactions t WHERE t.merchant_id = %s"
                    " AND NOT EXISTS (SELECT 1 FROM idempotency_keys k"
                    " WHERE k.merchant_id = t.merchant_id AND k.resource_id = t.transaction_id)",
                    (self.merchant_id,),
                )
                keyless = [row[0] for row in cur.fetchall()]
                cur.execute(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'captured'),"
                    " count(*) FILTER (WHERE status = 'declined'),"
                    " count(*) FILTER (WHERE status = 'failed'),"
                    " count(*) FILTER (WHERE status LIKE '%%refunded')"
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
        answered: dict[str, set[str]] = defaultdict(set)
        for state in client.payments:
            for _, payload, _ in state.answers:
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
        if keyless:
            problems.append(f"{len(keyless)} transactions no key maps to: {keyless[:3]}")
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
        }
        warning = None
        if bank_auths is not None:
            # A claim committed, the bank asked, then the request died (e.g. PostgreSQL went
            # away) before the payment was stored: authorized at the bank, nothing recorded
            # here until a retry with the same key takes the claim over.
            unrecorded = [row[0] for row in keys if row[2] in bank_auths and row[3] == 0]
            figures["sent_to_bank_without_transaction"] = len(unrecorded)
            if unrecorded:
                warning = (
                    f"{len(unrecorded)} payments the bank was asked to authorize have no"
                    f" transaction recorded (keys still in progress, e.g. {unrecorded[:3]});"
                    " only a retry with the same key after the claim's lock expires"
                    " records them"
                )
            unknown = [txn for txn in bank_auths if txn not in resource_ids]
            figures["bank_authorization_requests"] = sum(bank_auths.values())
            figures["bank_distinct_transaction_ids"] = len(bank_auths)
            figures["bank_retried_transaction_ids"] = sum(1 for n in bank_auths.values() if n > 1)
            if unknown:
                problems.append(
                    f"{len(unknown)} transaction ids authorized at the bank that no key owns"
                )
        self.checks.append(
            Check(
                "no payment charged twice for one idempotency key",
                not problems,
                "; ".join(problems) or "each key maps to exactly one transaction and back",
                figures,
                warning,
            )
        )

    def check_refunds(self) -> None:
        """No refund total above its capture; refunded_minor is the sum."""
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT t.transaction_id, t.amount_minor, t.refunded_minor,"
                    " COALESCE(SUM(r.amount_minor) FILTER (WHERE r.status = 'succeeded'), 0)"
                    " FROM transactions t"
                    " LEFT JOIN refunds r ON r.transaction_id = t.transaction_id"
                    " WHERE t.merchant_id = %s GROUP BY t.transaction_id",
                    (self.merchant_id,),
                )
                rows = cur.fetchall()
                cur.execute(
                    "SELECT count(*), count(*) FILTER (WHERE r.status = 'succeeded')"
                    " FROM refunds r JOIN transactions t ON t.transaction_id = r.transaction_id"
                    " WHERE t.merchant_id = %s",
                    (self.merchant_id,),
                )
                refund_totals = cur.fetchone()
        finally:
            conn.close()
        over = [r[0] for r in rows if r[3] > r[1]]
        mismatch = [r[0] for r in rows if r[3] != r[2]]
        fully = sum(1 for r in rows if r[1] == r[2] and r[2] > 0)
        problems = []
        if over:
            problems.append(f"{len(over)} payments refunded above their capture: {over[:3]}")
        if mismatch:
            problems.append(f"{len(mismatch)} payments whose refunded_minor != sum: {mismatch[:3]}")
        self.checks.append(
            Check(
                "no refund total above its capture",
                not problems,
                "; ".join(problems) or "sum of succeeded refunds <= amount and = refunded_minor",
                {
                    "refunds": refund_totals[0] if refund_totals else 0,
                    "succeeded": refund_totals[1] if refund_totals else 0,
                    "fully_refunded_payments": fully,
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

    def check_replays(self, client: LoadClient) -> None:
        """Every stored answer for one key is the same, and all but the original are replays.

        Stored answers are 200s and 503 bank_unavailable (the claim completes with them);
        a 409 idempotency_in_progress or a 5xx during a restart is not stored.
        """
        compared = mismatched = 0
        examples: list[str] = []
        for states in (client.payments, client.refunds):
            for state in states:
                stored = [a for a in state.answers if a[0] in (200, 503) and a[1]]
                if len(stored) < 2:
                    continue
                compared += len(stored) - 1
                first_status, first_body, _ = stored[0]
                originals = sum(1 for a in stored if not a[2])
                different = sum(
                    1
                    for status, body, _ in stored[1:]
                    if status != first_status or _stable(body or {}) != _stable(first_body or {})
                )
                if different or originals > 1:
                    mismatched += max(different, originals - 1)
                    if len(examples) < 3:
                        statuses = [(a[0], "replayed" if a[2] else "original") for a in stored]
                        examples.append(f"{state.key}: {statuses}")
        self.checks.append(
            Check(
                "idempotent replays repeat the first answer",
                mismatched == 0,
                f"{mismatched} of {compared} replays differ: {examples}"
                if mismatched
                else f"{compared} replays identical",
                {"replays_compared": compared, "mismatched": mismatched},
            )
        )

    def check_errors(self, client: LoadClient) -> None:
        """No 5xx (or silence) outside the restart windows but 503 bank_unavailable."""
        windows = self.faults.windows
        restart_windows = [w for w in windows if w.restart]
        outside: Counter[str] = Counter()
        inside: dict[str, Counter[str]] = {w.name + f" @{w.start:.0f}s": Counter() for w in windows}
        examples: list[str] = []
        for record in client.records:
            failed = record.status >= 500 or record.status == 0
            label = f"{record.status} {record.code or record.error or ''}".strip()
            for window in windows:
                if window.covers(record.t0, record.t1):
                    inside[window.name + f" @{window.start:.0f}s"][label] += 1
            if not failed or (record.status == 503 and record.code == "bank_unavailable"):
                continue
            if any(w.covers(record.t0, record.t1) for w in restart_windows):
                continue
            outside[label] += 1
            if len(examples) < 5:
                examples.append(f"{record.op} at {record.t0:.1f}s: {label}")
        self.checks.append(
            Check(
                "no 5xx outside the restart windows (503 bank_unavailable allowed)",
                not outside,
                f"{sum(outside.values())} outside: {dict(outside)}; e.g. {examples}"
                if outside
                else "none",
                {
                    "outside_windows": dict(outside),
                    "per_window": {k: dict(v) for k, v in inside.items()},
                },
            )
        )

    def check_health(self) -> None:
        """/health is healthy again (degraded first is fine), within 90 s."""
        assert self.server is not None
        seen: list[str] = []
        deadline = time.monotonic() + 90
        status = "?"
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{self.server.base_url}/health", timeout=5)
                status = str(answer.json().get("status"))
                checks = answer.json().get("checks", {})
            except (httpx.HTTPError, ValueError):
                status, checks = "no answer", {}
            if not seen or seen[-1] != status:
                seen.append(status)
                log(f"health: {status} {json.dumps(checks)[:300]}")
            if status == "healthy":
                break
            time.sleep(2)
        self.checks.append(
            Check(
                "service healthy again at the end",
                status == "healthy",
                " -> ".join(seen),
                {"sequence": seen},
            )
        )

    def check_workers(self) -> None:
        """No worker died and was replaced during the drill (RSS figures ride along)."""
        warm = {m["pid"] for m in self.rss_warm}
        end = {m["pid"] for m in self.rss_end}
        growth = {
            str(m["pid"]): round((m["rss_kb"] - w["rss_kb"]) / 1024, 1)
            for m in self.rss_end
            for w in self.rss_warm
            if m["pid"] == w["pid"]
        }
        self.checks.append(
            Check(
                "workers survived (no restart)",
                warm == end,
                f"after warm-up {describe_rss(self.rss_warm)}; at the end "
                f"{describe_rss(self.rss_end)}; growth MB {growth}",
                {"after_warmup": self.rss_warm, "at_end": self.rss_end, "growth_mb": growth},
            )
        )

    def bank_authorizations(self) -> Counter[str] | None:
        """Idempotency-Key (transaction id) -> how many authorization calls the bank saw."""

        async def _retrieve() -> Any:
            async with httpx.AsyncClient(base_url=self.ports.bank_url, timeout=60) as client:
                response = await client.put(
                    "/mockserver/retrieve?type=REQUESTS&format=JSON",
                    json={"method": "POST", "path": "/v1/authorizations"},
                )
                response.raise_for_status()
                return response.json()

        try:
            requests = asyncio.run(_retrieve())
        except (httpx.HTTPError, ValueError) as exc:
            log(f"bank request log unavailable ({exc}); skipping the bank-side check")
            return None
        seen: Counter[str] = Counter()
        for request in requests:
            body = request.get("body", {})
            payload = body.get("json") if isinstance(body, dict) else None
            if isinstance(payload, str):
                with contextlib.suppress(ValueError):
                    payload = json.loads(payload)
            if not isinstance(payload, dict) or payload.get("merchant_id") != self.merchant_id:
                continue
            headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
            keys = headers.get("idempotency-key") or [""]
            seen[keys[0]] += 1
        return seen

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
        return {
            "requests": len(client.records),
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

    def run(self) -> int:
        """Everything; returns the exit code."""
        started = time.monotonic()
        try:
            self.prepare()
            client = asyncio.run(self.drive())
            records = self.write_records(client)
            self.report["load"] = self.summarize_load(client)
            log(f"responses recorded in {records}")
            self.check_idempotency(client, self.bank_authorizations())
            self.check_refunds()
            self.check_events()
            self.check_replays(client)
            self.check_errors(client)
            self.check_health()
            self.check_workers()
        finally:
            if self.server is not None:
                code = self.server.stop()
                log(f"service stopped, exit status {code}")
                self.report["service_exit_status"] = code
            with contextlib.suppress(Exception):
                asyncio.run(
                    mockserver(
                        self.ports,
                        "/mockserver/clear?type=EXPECTATIONS",
                        {"id": SLOW_EXPECTATION_ID},
                    )
                )
            self.stack.stop_started()
        self.report["elapsed_s"] = round(time.monotonic() - started, 1)
        self.report["checks"] = [c.__dict__ for c in self.checks]
        path = out_dir() / "soak-report.json"
        path.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        self.print_summary(path)
        return 0 if all(c.ok for c in self.checks) else 1

    def print_summary(self, path: Path) -> None:
        """The figures and verdicts on stdout."""
        load = self.report.get("load", {})
        print(f"\nsoak: {load.get('requests', 0)} requests in {self.config.seconds:g} s")
        for op, statuses in load.get("by_operation", {}).items():
            print(f"  {op:<14} {statuses}")
        for op, figures in load.get("latency_outside_faults", {}).items():
            print(f"  latency {op:<14} p50 {figures['p50_ms']} ms  p99 {figures['p99_ms']} ms")
        for window in load.get("windows", []):
            print(f"  fault {window['name']:<16} {window['start_s']} s -> {window['end_s']} s")
        print()
        for check in self.checks:
            print(f"  [{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
            if check.figures and check.name != "workers survived (no restart)":
                print(f"         {json.dumps(check.figures, default=str)[:400]}")
            if check.warning:
                print(f"  [warn] {check.warning}")
        print(f"\nreport: {path}")


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
        except (RuntimeError, OSError) as exc:
            log(f"the drill could not run: {exc}")
            return 2


if __name__ == "__main__":
    sys.exit(main())
