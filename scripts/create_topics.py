"""Create the service's Kafka topics idempotently, or just check that a broker answers.

Used by ``scripts/stack.sh`` (local stack) and usable against any cluster::

    uv run python scripts/create_topics.py --bootstrap 127.0.0.1:9092 \
        --topic payments.events --partitions 3
    uv run python scripts/create_topics.py --bootstrap 127.0.0.1:9092 --check

``--check`` succeeds only when a broker answers a metadata request, is registered in the
cluster and a controller is elected: a TCP connect alone says nothing about a broker that
is still loading its logs or registering in ZooKeeper. Creating a topic that already
exists with the requested partition count is a no-op; a different count is an error (it
is never changed silently, because that would remap message keys to partitions).

Exit codes: 0 ok, 1 broker not ready / unreachable before ``--timeout``, 2 topic error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

TOPIC_ALREADY_EXISTS = 36


class TopicError(Exception):
    """A topic exists with the wrong shape, or the broker refused to create it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="host:port[,host:port]")
    parser.add_argument("--topic", action="append", default=[], help="topic to create (repeatable)")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to keep retrying while the broker is not ready",
    )
    parser.add_argument(
        "--check", action="store_true", help="only check that the broker is ready, then exit"
    )
    args = parser.parse_args(argv)
    if not args.check and not args.topic:
        parser.error("give at least one --topic, or --check")
    if args.partitions < 1 or args.replication_factor < 1:
        parser.error("--partitions and --replication-factor must be >= 1")
    return args


async def broker_ready(admin: AIOKafkaAdminClient) -> dict[str, Any]:
    """Return the cluster description once a broker and a controller are known."""
    cluster = await admin.describe_cluster()
    if not cluster.get("brokers"):
        raise KafkaError("no broker registered yet")
    if cluster.get("controller_id", -1) < 0:
        raise KafkaError("no controller elected yet")
    return cluster


async def ensure_topic(
    admin: AIOKafkaAdminClient, name: str, partitions: int, replication: int
) -> str:
    """Create ``name`` unless it exists; verify its partition count either way."""
    response = await admin.create_topics(
        [NewTopic(name=name, num_partitions=partitions, replication_factor=replication)]
    )
    for entry in response.to_object()["topic_errors"]:
        code = entry["error_code"]
        if code not in (0, TOPIC_ALREADY_EXISTS):
            raise TopicError(f"{name}: broker error {code}: {entry.get('error_message')}")
        status = "created" if code == 0 else "exists"

    # Metadata may lag the creation by a moment: poll until the partitions show up.
    deadline = time.monotonic() + 15
    while True:
        (description,) = await admin.describe_topics([name])
        found = len(description["partitions"])
        if description["error_code"] == 0 and found:
            break
        if time.monotonic() > deadline:
            raise TopicError(f"{name}: not visible in metadata after creation")
        await asyncio.sleep(0.2)
    if found != partitions:
        raise TopicError(f"{name}: exists with {found} partitions, expected {partitions}")
    return f"{name}: {status} ({found} partitions)"


async def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=args.bootstrap, request_timeout_ms=5000, client_id="stack-admin"
        )
        try:
            await admin.start()
            cluster = await broker_ready(admin)
            if args.check:
                brokers = len(cluster["brokers"])
                print(f"broker ready: {brokers} broker(s), controller {cluster['controller_id']}")
                return 0
            for topic in args.topic:
                print(await ensure_topic(admin, topic, args.partitions, args.replication_factor))
            return 0
        except TopicError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (KafkaError, OSError, TimeoutError) as exc:
            last_error = exc
        finally:
            await admin.close()
        await asyncio.sleep(0.5)
    print(f"error: broker {args.bootstrap} not ready: {last_error!r}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    # aiokafka logs every refused connection at ERROR while the broker boots: noise here.
    logging.basicConfig(level=logging.CRITICAL)
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
