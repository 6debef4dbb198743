"""Retention (docs/deployment.md, "Housekeeping"): what the service deletes, and when.

Idempotency keys go once their TTL has passed; outbox events once they have been
published for ``OUTBOX_RETENTION``. Each purge is a series of small ``DELETE`` statements
(a batch each, ``SKIP LOCKED``), so every worker of every replica can run it without
waiting for another or holding locks that requests need. Audit rows are never deleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.services.context import ServiceContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """Rows deleted in one round, by table."""

    idempotency_keys: int
    outbox_events: int


async def purge_once(ctx: ServiceContext, *, max_batches: int = 10) -> PurgeReport:
    """Delete what is past its retention, a batch at a time (at most ``max_batches`` per
    table and round, so a large backlog is worked off over several rounds)."""
    policy = ctx.retention
    now = ctx.clock()
    keys = events = 0
    for _ in range(max_batches):
        async with ctx.uow_factory() as uow:
            deleted = await uow.idempotency.purge_expired(now=now, limit=policy.batch_size)
        keys += deleted
        if deleted < policy.batch_size:
            break
    for _ in range(max_batches):
        async with ctx.uow_factory() as uow:
            deleted = await uow.outbox.purge_published(
                before=now - policy.outbox_retention, limit=policy.batch_size
            )
        events += deleted
        if deleted < policy.batch_size:
            break
    if keys:
        ctx.metrics.purged(table="idempotency_keys", rows=keys)
    if events:
        ctx.metrics.purged(table="outbox_events", rows=events)
    if keys or events:
        logger.info(
            "retention: deleted %d expired idempotency keys and %d published events",
            keys,
            events,
            extra={"purged_idempotency_keys": keys, "purged_outbox_events": events},
        )
    return PurgeReport(idempotency_keys=keys, outbox_events=events)
