"""A bare asyncio payment server: the floor ``make bench`` measures the service against.

The least a payment can cost on this stack: an aiohttp server that, for
``POST /api/v1/payments/process``, parses the JSON body, asks MockServer's authorization
expectation through one pooled aiohttp session, writes the payment row and its outbox
row with one asyncpg statement (a data-modifying CTE), sends the event with aiokafka
(``acks=all``) and answers 201 with a small JSON body. No framework, no ORM, no
validation beyond the JSON parse, no idempotency, no authentication: whatever the service
costs above this is its own. ``GET /health/ready`` answers 200 once the worker is up.

Usage (scripts/bench.py starts it the way it starts uvicorn):
  python scripts/bench_floor.py --port 8001 --workers 2 --database-url postgresql://...
      --bank-url http://127.0.0.1:1080 --kafka 127.0.0.1:9092 [--topic bench.floor]

The supervisor creates its two tables (``floor_payments``, ``floor_outbox``) and the
topic, then spawns the workers (multiprocessing, ``SO_REUSEPORT`` on one port); SIGTERM
stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import signal
import uuid
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_payments (
    payment_id text PRIMARY KEY,
    merchant_id text NOT NULL,
    amount_minor bigint NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    authorization_code text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS floor_outbox (
    event_id uuid PRIMARY KEY,
    payment_id text NOT NULL REFERENCES floor_payments (payment_id),
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

WRITE = """
WITH payment AS (
    INSERT INTO floor_payments
        (payment_id, merchant_id, amount_minor, currency, status, authorization_code)
    VALUES ($1, $2, $3, $4, $5, $6)
)
INSERT INTO floor_outbox (event_id, payment_id, payload) VALUES ($7, $1, $8)
"""


async def _no_reset(_: asyncpg.Connection) -> None:
    """A pool connection needs no cleaning between two payments."""


class Floor:
    """One worker's pools: PostgreSQL, the bank's HTTP session and the Kafka producer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pool: asyncpg.Pool | None = None
        self.bank: aiohttp.ClientSession | None = None
        self.producer: AIOKafkaProducer | None = None

    async def start(self, _: web.Application) -> None:
        # No reset on release (asyncpg's default sends four statements per checkout): the
        # floor leaves no session state behind.
        self.pool = await asyncpg.create_pool(
            self.args.database_url, min_size=10, max_size=20, reset=_no_reset
        )
        self.bank = aiohttp.ClientSession(
            base_url=self.args.bank_url,
            connector=aiohttp.TCPConnector(limit=100),
            timeout=aiohttp.ClientTimeout(total=5),
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=self.args.kafka, acks="all")
        await self.producer.start()

    async def stop(self, _: web.Application) -> None:
        if self.producer is not None:
            await self.producer.stop()
        if self.bank is not None:
            await self.bank.close()
        if self.pool is not None:
            await self.pool.close()

    async def process(self, request: web.Request) -> web.Response:
        """Authorize at the bank, record payment + outbox in one statement, publish."""
        pool, bank, producer = self.pool, self.bank, self.producer
        if pool is None or bank is None or producer is None:
            raise web.HTTPServiceUnavailable
        body: dict[str, Any] = await request.json()
        payment_id = f"txn_{uuid.uuid4().hex}"
        amount_minor = round(float(body["amount"]) * 100)
        async with bank.post(
            "/v1/authorizations",
            json={
                "transaction_id": payment_id,
                "amount": amount_minor,
                "currency": body["currency"],
                "card": {"number": body["card_data"]["card_number"]},
                "capture": True,
            },
            headers={"Idempotency-Key": payment_id},
        ) as answer:
            authorization = await answer.json()
        status = "captured" if authorization.get("status") == "approved" else "declined"
        event_id = uuid.uuid4()
        event = {
            "event_id": str(event_id),
            "type": f"payment.{status}",
            "payment_id": payment_id,
            "amount_minor": amount_minor,
            "currency": body["currency"],
        }
        payload = json.dumps(event)
        await pool.execute(
            WRITE,
            payment_id,
            body["merchant_id"],
            amount_minor,
            body["currency"],
            status,
            authorization.get("authorization_code"),
            event_id,
            payload,
        )
        await producer.send_and_wait(self.args.topic, payload.encode(), key=payment_id.encode())
        return web.json_response(
            {"transaction_id": payment_id, "status": status, "amount": body["amount"]},
            status=201,
        )


async def ready(_: web.Request) -> web.Response:
    """The worker is serving."""
    return web.json_response({"status": "ready"})


def serve(args: argparse.Namespace) -> None:
    """One worker: the aiohttp app on the shared port (SO_REUSEPORT)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    floor = Floor(args)
    app = web.Application()
    app.on_startup.append(floor.start)
    app.on_cleanup.append(floor.stop)
    app.router.add_post("/api/v1/payments/process", floor.process)
    app.router.add_get("/health/ready", ready)
    web.run_app(app, host="127.0.0.1", port=args.port, reuse_port=True, access_log=None, print=None)


async def prepare(args: argparse.Namespace) -> None:
    """The floor's tables and topic (idempotent)."""
    conn = await asyncpg.connect(args.database_url)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=args.kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(args.topic, num_partitions=3, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


def main() -> None:
    """Prepare, then run the workers until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--bank-url", required=True)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--topic", default="bench.floor")
    args = parser.parse_args()
    asyncio.run(prepare(args))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=serve, args=(args,)) for _ in range(args.workers)]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: Any) -> None:
        for worker in workers:
            if worker.pid is not None:
                worker.terminate()  # SIGTERM: aiohttp runs its cleanup and exits

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
