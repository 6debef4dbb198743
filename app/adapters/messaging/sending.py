"""One claim's trip to Kafka and back, shared by the relay and the request path.

What it owns: the record an :class:`OutboxMessage` becomes (key, JSON value, the headers
``event_type``, ``event_id``, ``correlation_id`` in that order); sending a claim in
per-key *waves* within one deadline -- every key's first event, then each key's second
once its first is acknowledged, and so on, a key's later events handed back unsent when
one fails -- so a key's events first reach Kafka in commit order; the
:class:`BatchResult` that says what became of each event; :func:`settle`, which records
that result (mark published, release the rest counting an attempt for failures); and the
lease holders' names (:class:`Claimers`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import backoff
from aiokafka import AIOKafkaProducer

from app.core.jsoncodec import dump_json
from app.services.ports.messaging import OutboxMessage, OutboxUnitOfWork

logger = logging.getLogger(__name__)

HEADER_NAMES = ("event_type", "event_id", "correlation_id")
"""The Kafka headers every event carries (docs/events.md, "The event"), in this order."""


def describe(exc: BaseException) -> str:
    """``Type: message`` (or just the type) for logs and ``last_error``."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def kafka_record(message: OutboxMessage) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """The key, value and headers an outbox message is published with."""
    values = {
        "event_type": message.event_type,
        "event_id": str(message.event_id),
        "correlation_id": str(message.headers.get("correlation_id") or ""),
    }
    return (
        message.key.encode(),
        dump_json(dict(message.payload)).encode(),
        [(name, values[name].encode()) for name in HEADER_NAMES],
    )


def waves(messages: Sequence[OutboxMessage]) -> list[list[OutboxMessage]]:
    """Split a claim (in commit order) by position within its key: firsts, seconds, ..."""
    seen: dict[str, int] = defaultdict(int)
    split: list[list[OutboxMessage]] = []
    for message in messages:
        rank = seen[message.key]
        seen[message.key] += 1
        if rank == len(split):
            split.append([])
        split[rank].append(message)
    return split


@dataclass(slots=True)
class BatchResult:
    """What happened to one claim, by ``event_id``."""

    claimed: int = 0
    published: list[uuid.UUID] = field(default_factory=list)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    deferred: list[uuid.UUID] = field(default_factory=list)


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    # A send we stopped waiting for may still fail later; mark its error as seen.
    if not future.cancelled():
        future.exception()


async def send_in_waves(
    producer: AIOKafkaProducer, topic: str, messages: Sequence[OutboxMessage], *, timeout_s: float
) -> BatchResult:
    """Send a claim wave by wave within ``timeout_s``; never raises."""
    loop = asyncio.get_running_loop()
    result = BatchResult(claimed=len(messages))
    deadline = loop.time() + timeout_s
    blocked: set[str] = set()
    for wave in waves(messages):
        futures: dict[uuid.UUID, asyncio.Future[Any]] = {}
        for message in wave:
            if message.key in blocked:
                result.deferred.append(message.event_id)
                continue
            key, value, headers = kafka_record(message)
            try:
                async with asyncio.timeout_at(deadline):
                    futures[message.event_id] = await producer.send(
                        topic, value=value, key=key, headers=headers
                    )
            except Exception as exc:
                result.failed[message.event_id] = describe(exc)
                blocked.add(message.key)
        if futures:
            await asyncio.wait(futures.values(), timeout=max(0.0, deadline - loop.time()))
        for message in wave:
            if (future := futures.get(message.event_id)) is None:
                continue
            if not future.done():
                future.add_done_callback(_retrieve_exception)
                result.failed[message.event_id] = f"no acknowledgement within {timeout_s:g} s"
            elif future.cancelled():
                result.failed[message.event_id] = "cancelled"
            elif (error := future.exception()) is not None:
                result.failed[message.event_id] = describe(error)
            else:
                result.published.append(message.event_id)
                continue
            blocked.add(message.key)
    return result


@backoff.on_exception(backoff.expo, Exception, max_tries=4, max_value=2, logger=logger)
async def settle(
    uow_factory: Callable[[], OutboxUnitOfWork],
    result: BatchResult,
    *,
    claimers: Mapping[uuid.UUID, str],
) -> None:
    """Mark what Kafka acknowledged as published and hand back the rest, in one unit.

    ``claimers`` names the lease each unpublished event is held under: a lease that ran
    out and was taken by another publisher is left alone. Failures count an attempt;
    deferred events (never sent) do not. Retried a few times: it only records facts.
    """
    released: dict[tuple[str, str | None], list[uuid.UUID]] = defaultdict(list)
    for event_id, error in result.failed.items():
        released[(claimers[event_id], error)].append(event_id)
    for event_id in result.deferred:
        released[(claimers[event_id], None)].append(event_id)
    async with uow_factory() as uow:
        for (claimer, attempt_error), event_ids in released.items():
            await uow.outbox.release(event_ids, claimer=claimer, error=attempt_error)
        # Last: alone in its unit, the database may record it without a transaction.
        await uow.outbox.mark_published(result.published, at=datetime.now(UTC))
        await uow.commit()


class Claimers:
    """Names for this process's leases: ``host:pid:random#n``, a new ``n`` per lease."""

    def __init__(self) -> None:
        self.prefix = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}#"
        self._numbers = itertools.count(1)

    def new(self) -> str:
        """A lease holder's name no other lease has had."""
        return f"{self.prefix}{next(self._numbers)}"
