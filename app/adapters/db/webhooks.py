"""The webhook tables (:class:`app.services.ports.webhooks.WebhookRepository`), over one
unit of work.

The dispatcher's statements are written as SQL text: each is one round trip over arrays
(``unnest``), whatever the batch size, and reads best as the SQL it is. Endpoints, which
only operators write, go through the unit's write batch like every other admin change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import RowMapping, Table, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters.db.models import WebhookEndpointRow
from app.adapters.db.write_batch import WriteBatch
from app.core.jsoncodec import dump_json
from app.domain.webhooks import DeliveryStatus, EndpointStatus, WebhookEndpoint
from app.services.ports.webhooks import (
    AttemptRecord,
    DueDelivery,
    EndpointBacklog,
    ReceivedEvent,
)

ENDPOINTS = cast(Table, WebhookEndpointRow.__table__)

CLAIM_WINDOW_FACTOR = 4
CLAIM_WINDOW_SLACK = 50
"""A claim of ``limit`` looks at the ``4 * limit + 50`` soonest due deliveries at most."""

_RECORD_EVENTS = text(
    """
WITH incoming AS (
    SELECT * FROM unnest(
        CAST(:event_ids AS uuid[]), CAST(:merchant_ids AS varchar[]),
        CAST(:transaction_ids AS varchar[]), CAST(:event_types AS varchar[]),
        CAST(:occurred_ats AS timestamptz[]), CAST(:bodies AS text[]),
        CAST(:traces AS text[])
    ) WITH ORDINALITY AS e(event_id, merchant_id, transaction_id, event_type, occurred_at,
                          body, trace_context, n)
),
targets AS (
    SELECT i.n, i.event_id, i.transaction_id, ep.endpoint_id, ep.status
    FROM incoming i
    JOIN webhook_endpoints ep
      -- A disabled endpoint's deliveries are recorded too: they wait until it is enabled.
      ON ep.merchant_id = i.merchant_id AND ep.status IN ('enabled', 'disabled')
     AND (cardinality(ep.event_types) = 0 OR i.event_type = ANY(ep.event_types))
),
kept AS (
    INSERT INTO webhook_events
        (event_id, merchant_id, transaction_id, event_type, occurred_at, body, trace_context)
    SELECT event_id, merchant_id, transaction_id, event_type, occurred_at,
           CAST(body AS jsonb), CAST(trace_context AS jsonb)
    FROM incoming WHERE event_id IN (SELECT event_id FROM targets)
    ON CONFLICT (event_id) DO NOTHING
)
-- Due now; not before an earlier pending delivery of the same payment to the endpoint
-- (order per payment); not at all (parked) while the endpoint is disabled.
INSERT INTO webhook_deliveries (event_id, endpoint_id, transaction_id, next_attempt_at)
SELECT t.event_id, t.endpoint_id, t.transaction_id,
       CASE WHEN t.status = 'enabled' THEN greatest(now(), (
           SELECT max(o.next_attempt_at) FROM webhook_deliveries o
           WHERE o.endpoint_id = t.endpoint_id AND o.transaction_id = t.transaction_id
             AND o.status = 'pending'
       )) END
FROM targets t ORDER BY t.n, t.endpoint_id
ON CONFLICT (event_id, endpoint_id) DO NOTHING
RETURNING id
"""
)

# Two steps, so a claim costs the same with a backlog of millions: a bounded window of the
# soonest due deliveries, walked in index order (ix_webhook_deliveries_due); then, for
# each, its endpoint and whether an earlier delivery of its payment is still pending (one
# probe of ix_webhook_deliveries_pending_order). A delivery held back that way is rarely in
# the window: it is scheduled no sooner than the one it waits for, and a disabled
# endpoint's deliveries are parked (no next attempt).
#
# Written so the plan holds when the statistics are stale -- a backlog grows faster than
# autovacuum re-analyzes, and then "nothing is pending" makes every partial index look
# free: "due" is ``next_attempt_at <= :now`` (only a pending delivery has a next attempt,
# by a CHECK), never ``status = 'pending'``, so the window walks the (full) due index and
# the second step finds its rows by primary key; only the order probe names the status,
# and only the pending-order index serves it.
_CLAIM_DUE = text(
    """
WITH window_ AS MATERIALIZED (
    SELECT d.id
    FROM webhook_deliveries d
    WHERE d.next_attempt_at <= :now
      AND (d.claimed_until IS NULL OR d.claimed_until < :now)
    ORDER BY d.next_attempt_at, d.id
    LIMIT :window
),
due AS MATERIALIZED (
    SELECT d.id
    FROM webhook_deliveries d
    JOIN webhook_endpoints ep ON ep.endpoint_id = d.endpoint_id
    -- By primary key, and one index probe per delivery (OFFSET 0 keeps the check a probe
    -- rather than a join over every pending delivery): whatever the statistics say.
    WHERE d.id = ANY(ARRAY(SELECT id FROM window_))
      AND ep.status = 'enabled' AND d.next_attempt_at <= :now
      AND (d.claimed_until IS NULL OR d.claimed_until < :now)
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries o
          WHERE o.endpoint_id = d.endpoint_id AND o.transaction_id = d.transaction_id
            AND o.status = 'pending' AND o.id < d.id AND o.attempts < :ordered_attempts
          OFFSET 0
      )
    ORDER BY d.next_attempt_at, d.id
    LIMIT :limit
    FOR UPDATE OF d SKIP LOCKED
),
claimed AS (
    UPDATE webhook_deliveries d SET claimed_by = :claimer, claimed_until = :until
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.event_id, d.endpoint_id, d.transaction_id, d.attempts, d.created_at
)
SELECT c.id AS delivery_id, c.event_id, c.transaction_id, c.attempts,
       c.created_at AS recorded_at,
       ev.event_type, ev.occurred_at, ev.body, ev.trace_context,
       ep.endpoint_id, ep.merchant_id, ep.url, ep.event_types, ep.status,
       ep.secret_ciphertext, ep.previous_secret_ciphertext, ep.previous_secret_expires_at,
       ep.failing_since, ep.disabled_reason, ep.created_at, ep.updated_at
FROM claimed c
JOIN webhook_events ev ON ev.event_id = c.event_id
JOIN webhook_endpoints ep ON ep.endpoint_id = c.endpoint_id
ORDER BY c.id
"""
)

_INSERT_ATTEMPTS = text(
    """
INSERT INTO webhook_attempts
    (delivery_id, attempt, attempted_at, status_code, error, latency_ms, dispatcher)
SELECT * FROM unnest(
    CAST(:delivery_ids AS bigint[]), CAST(:attempts AS integer[]),
    CAST(:attempted_ats AS timestamptz[]), CAST(:status_codes AS integer[]),
    CAST(:errors AS varchar[]), CAST(:latencies AS integer[]), CAST(:dispatchers AS varchar[])
)
"""
)

# A claim another dispatcher took over (the lease ran out) or a replay reset is left as
# it is: the attempt is recorded, the delivery is theirs now.
_MOVE_DELIVERIES = text(
    """
UPDATE webhook_deliveries d
SET status = r.status,
    attempts = r.attempt,
    -- Parked if its endpoint was disabled meanwhile.
    next_attempt_at = CASE WHEN ep.status = 'enabled' THEN r.next_attempt_at END,
    last_attempt_at = r.attempted_at,
    last_status_code = r.status_code,
    last_error = r.error,
    delivered_at = CASE WHEN r.status = 'delivered' THEN r.attempted_at END,
    finished_at = CASE WHEN r.status <> 'pending' THEN r.attempted_at END,
    claimed_by = NULL,
    claimed_until = NULL
FROM unnest(
    CAST(:delivery_ids AS bigint[]), CAST(:statuses AS varchar[]),
    CAST(:attempts AS integer[]), CAST(:next_attempt_ats AS timestamptz[]),
    CAST(:attempted_ats AS timestamptz[]), CAST(:status_codes AS integer[]),
    CAST(:errors AS varchar[]), CAST(:dispatchers AS varchar[])
) AS r(id, status, attempt, next_attempt_at, attempted_at, status_code, error, dispatcher),
     webhook_endpoints ep
-- Still this dispatcher's claim (only a pending delivery is ever claimed; finishing,
-- replaying or enabling clears the claim).
WHERE d.id = r.id AND d.claimed_by = r.dispatcher
  AND ep.endpoint_id = d.endpoint_id
  -- Found by primary key, not by a scan the row estimate of unnest() might suggest.
  AND d.id = ANY(CAST(:delivery_ids AS bigint[]))
"""
)

# A delivery retried later holds back the later deliveries of its payment to its endpoint
# (while it has fewer than WEBHOOK_ORDERED_ATTEMPTS attempts): they are not due before it.
_HOLD_BACK_FOLLOWERS = text(
    """
UPDATE webhook_deliveries s
SET next_attempt_at = r.next_attempt_at
FROM unnest(
    CAST(:endpoint_ids AS varchar[]), CAST(:transaction_ids AS varchar[]),
    CAST(:delivery_ids AS bigint[]), CAST(:next_attempt_ats AS timestamptz[])
) AS r(endpoint_id, transaction_id, id, next_attempt_at)
WHERE s.endpoint_id = r.endpoint_id AND s.transaction_id = r.transaction_id
  AND s.status = 'pending' AND s.id > r.id AND s.next_attempt_at < r.next_attempt_at
"""
)

_ENDPOINTS_SUCCEEDED = text(
    """
UPDATE webhook_endpoints SET failing_since = NULL
WHERE endpoint_id = ANY(CAST(:endpoint_ids AS varchar[])) AND failing_since IS NOT NULL
"""
)

_ENDPOINTS_FAILED = text(
    """
UPDATE webhook_endpoints SET failing_since = CAST(:at AS timestamptz)
WHERE endpoint_id = ANY(CAST(:endpoint_ids AS varchar[])) AND failing_since IS NULL
"""
)

_ENDPOINTS_TO_DISABLE = text(
    """
SELECT ep.endpoint_id, ep.merchant_id, ep.url, ep.event_types, ep.status,
       ep.secret_ciphertext, ep.previous_secret_ciphertext, ep.previous_secret_expires_at,
       ep.failing_since, ep.disabled_reason, ep.created_at, ep.updated_at
FROM webhook_endpoints ep
WHERE ep.status = 'enabled' AND ep.failing_since IS NOT NULL
  AND (
      (ep.endpoint_id = ANY(CAST(:failed AS varchar[])) AND ep.failing_since <= :since)
      OR EXISTS (
          SELECT 1
          FROM unnest(
              CAST(:given_up_endpoints AS varchar[]), CAST(:given_up_deliveries AS bigint[])
          ) AS g(endpoint_id, delivery_id)
          JOIN webhook_deliveries d ON d.id = g.delivery_id
          WHERE g.endpoint_id = ep.endpoint_id
            AND ep.failing_since <= (
                SELECT min(a.attempted_at) FROM webhook_attempts a
                WHERE a.delivery_id = d.id AND a.attempted_at >= d.created_at
            )
      )
  )
ORDER BY ep.endpoint_id
FOR UPDATE OF ep
"""
)

_REPLAY = text(
    """
WITH chosen AS (
    SELECT ev.event_id, ev.transaction_id, ep.endpoint_id, ep.status AS endpoint_status
    FROM webhook_events ev
    JOIN webhook_endpoints ep
      ON ep.merchant_id = ev.merchant_id AND ep.status IN ('enabled', 'disabled')
     AND (cardinality(ep.event_types) = 0 OR ev.event_type = ANY(ep.event_types))
     AND (CAST(:endpoint_id AS varchar) IS NULL OR ep.endpoint_id = :endpoint_id)
    WHERE ev.merchant_id = :merchant_id
      AND ev.occurred_at >= :since AND ev.occurred_at < :until
    ORDER BY ev.occurred_at, ev.event_id, ep.endpoint_id
)
INSERT INTO webhook_deliveries
    (event_id, endpoint_id, transaction_id, next_attempt_at, created_at)
SELECT event_id, endpoint_id, transaction_id,
       CASE WHEN endpoint_status = 'enabled' THEN CAST(:now AS timestamptz) END, :now
FROM chosen
ON CONFLICT (event_id, endpoint_id) DO UPDATE
SET status = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at,
    created_at = :now,
    claimed_by = NULL, claimed_until = NULL, delivered_at = NULL, finished_at = NULL,
    last_status_code = NULL, last_error = NULL
"""
)

_ABANDON_PENDING = text(
    """
UPDATE webhook_deliveries
SET status = 'failed', next_attempt_at = NULL, finished_at = :at,
    last_error = 'endpoint_removed', claimed_by = NULL, claimed_until = NULL
WHERE endpoint_id = :endpoint_id AND status = 'pending'
"""
)

_PARK_PENDING = text(
    """
UPDATE webhook_deliveries SET next_attempt_at = NULL
WHERE endpoint_id = :endpoint_id AND status = 'pending'
"""
)

_RESTART_PENDING = text(
    """
UPDATE webhook_deliveries
SET attempts = 0, next_attempt_at = :at, created_at = :at, claimed_by = NULL, claimed_until = NULL
WHERE endpoint_id = :endpoint_id AND status = 'pending'
"""
)

_BACKLOG = text(
    """
SELECT d.endpoint_id, count(*) AS pending,
       extract(epoch FROM now() - min(d.created_at)) AS oldest_age_s
FROM webhook_deliveries d
JOIN webhook_endpoints ep ON ep.endpoint_id = d.endpoint_id
WHERE d.status = 'pending' AND ep.status = 'enabled'
GROUP BY d.endpoint_id
ORDER BY d.endpoint_id
"""
)

_PURGE_DELIVERIES = text(
    """
WITH doomed AS MATERIALIZED (
    SELECT id FROM webhook_deliveries
    WHERE finished_at < :before ORDER BY finished_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM doomed)
"""
)

_PURGE_EVENTS = text(
    """
WITH doomed AS MATERIALIZED (
    SELECT event_id FROM webhook_events ev
    WHERE recorded_at < :before
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = ev.event_id)
    ORDER BY recorded_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
DELETE FROM webhook_events WHERE event_id IN (SELECT event_id FROM doomed)
"""
)


def endpoint_from_row(row: RowMapping) -> WebhookEndpoint:
    """A stored endpoint as the domain sees it (secrets still sealed)."""
    return WebhookEndpoint(
        endpoint_id=row["endpoint_id"],
        merchant_id=row["merchant_id"],
        url=row["url"],
        event_types=frozenset(row["event_types"] or ()),
        status=EndpointStatus(row["status"]),
        secret=row["secret_ciphertext"],
        previous_secret=row["previous_secret_ciphertext"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        failing_since=row["failing_since"],
        disabled_reason=row["disabled_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _endpoint_values(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "url": endpoint.url,
        "event_types": sorted(endpoint.event_types),
        "status": endpoint.status.value,
        "secret_ciphertext": endpoint.secret,
        "previous_secret_ciphertext": endpoint.previous_secret,
        "previous_secret_expires_at": endpoint.previous_secret_expires_at,
        "failing_since": endpoint.failing_since,
        "disabled_reason": endpoint.disabled_reason,
        "updated_at": endpoint.updated_at,
    }


def _rowcount(result: Any) -> int:
    """Rows a DML statement touched."""
    return int(getattr(result, "rowcount", 0) or 0)


def _json_text(value: Mapping[str, Any]) -> str:
    return dump_json(value)


class WebhookRepository:
    """Endpoints, recorded events, deliveries and attempts."""

    def __init__(self, session: AsyncSession, batch: WriteBatch) -> None:
        self._session = session
        self._batch = batch

    def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Stage a new endpoint."""
        self._batch.insert(
            ENDPOINTS,
            _endpoint_values(endpoint)
            | {
                "endpoint_id": endpoint.endpoint_id,
                "merchant_id": endpoint.merchant_id,
                "created_at": endpoint.created_at,
            },
        )

    async def endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint (removed ones too), or None."""
        statement = select(ENDPOINTS).where(ENDPOINTS.c.endpoint_id == endpoint_id)
        row = (await self._session.execute(statement)).mappings().first()
        return None if row is None else endpoint_from_row(row)

    async def endpoints_of(self, merchant_id: str) -> list[WebhookEndpoint]:
        """The merchant's endpoints that are not removed, oldest first."""
        statement = (
            select(ENDPOINTS)
            .where(
                ENDPOINTS.c.merchant_id == merchant_id,
                ENDPOINTS.c.status != EndpointStatus.REMOVED.value,
            )
            .order_by(ENDPOINTS.c.created_at, ENDPOINTS.c.endpoint_id)
        )
        rows = (await self._session.execute(statement)).mappings().all()
        return [endpoint_from_row(row) for row in rows]

    def update_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Stage writing the endpoint's URL, types, secrets, status and failing time."""
        self._batch.update(
            ENDPOINTS,
            where={"endpoint_id": endpoint.endpoint_id},
            values=_endpoint_values(endpoint),
        )

    async def record_events(self, events: Sequence[ReceivedEvent]) -> int:
        """One statement: the events some enabled endpoint wants, and their deliveries
        (an event or delivery recorded before is left alone). How many were new."""
        unique = list({event.event_id: event for event in events}.values())
        if not unique:
            return 0
        result = await self._session.execute(
            _RECORD_EVENTS,
            {
                "event_ids": [event.event_id for event in unique],
                "merchant_ids": [event.merchant_id for event in unique],
                "transaction_ids": [event.transaction_id for event in unique],
                "event_types": [event.event_type for event in unique],
                "occurred_ats": [event.occurred_at for event in unique],
                "bodies": [_json_text(event.body) for event in unique],
                "traces": [_json_text(event.trace_context) for event in unique],
            },
        )
        return len(result.all())

    async def claim_due(
        self,
        *,
        claimer: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        ordered_attempts: int,
    ) -> list[DueDelivery]:
        """Lease due deliveries, one per payment and endpoint at a time (see the port)."""
        rows = (
            (
                await self._session.execute(
                    _CLAIM_DUE,
                    {
                        "claimer": claimer,
                        "now": now,
                        "until": now + lease,
                        "limit": limit,
                        "window": CLAIM_WINDOW_FACTOR * limit + CLAIM_WINDOW_SLACK,
                        "ordered_attempts": ordered_attempts,
                    },
                )
            )
            .mappings()
            .all()
        )
        return [
            DueDelivery(
                delivery_id=row["delivery_id"],
                event_id=row["event_id"],
                event_type=row["event_type"],
                transaction_id=row["transaction_id"],
                endpoint=endpoint_from_row(row),
                body=row["body"],
                attempts=row["attempts"],
                recorded_at=row["recorded_at"],
                occurred_at=row["occurred_at"],
                trace_context=row["trace_context"] or {},
            )
            for row in rows
        ]

    async def record_attempts(
        self, records: Sequence[AttemptRecord], *, ordered_attempts: int
    ) -> None:
        """A few statements whatever the number of attempts: the attempts, the deliveries
        moved on, their payments' later deliveries held back behind a retry, the
        endpoints' failing time."""
        if not records:
            return
        common = {
            "delivery_ids": [r.delivery_id for r in records],
            "attempts": [r.attempt for r in records],
            "attempted_ats": [r.attempted_at for r in records],
            "status_codes": [r.result.status_code for r in records],
            "errors": [r.result.error for r in records],
            "dispatchers": [r.dispatcher for r in records],
        }
        await self._session.execute(
            _INSERT_ATTEMPTS,
            common | {"latencies": [round(r.result.seconds * 1000) for r in records]},
        )
        await self._session.execute(
            _MOVE_DELIVERIES,
            common
            | {
                "statuses": [r.status.value for r in records],
                "next_attempt_ats": [r.next_attempt_at for r in records],
            },
        )
        held = [
            r
            for r in records
            if r.status is DeliveryStatus.PENDING and r.attempt < ordered_attempts
        ]
        if held:
            await self._session.execute(
                _HOLD_BACK_FOLLOWERS,
                {
                    "endpoint_ids": [r.endpoint_id for r in held],
                    "transaction_ids": [r.transaction_id for r in held],
                    "delivery_ids": [r.delivery_id for r in held],
                    "next_attempt_ats": [r.next_attempt_at for r in held],
                },
            )
        succeeded = sorted({r.endpoint_id for r in records if r.result.delivered})
        failed = sorted({r.endpoint_id for r in records if not r.result.delivered} - set(succeeded))
        if succeeded:
            await self._session.execute(_ENDPOINTS_SUCCEEDED, {"endpoint_ids": succeeded})
        if failed:
            at = min(r.attempted_at for r in records if r.endpoint_id in failed)
            await self._session.execute(_ENDPOINTS_FAILED, {"endpoint_ids": failed, "at": at})

    async def endpoints_to_disable(
        self,
        *,
        failed: Sequence[str],
        given_up: Sequence[tuple[str, int]],
        since: datetime,
    ) -> list[WebhookEndpoint]:
        """The enabled endpoints failing for the whole window (see the port), locked."""
        if not failed and not given_up:
            return []
        rows = (
            (
                await self._session.execute(
                    _ENDPOINTS_TO_DISABLE,
                    {
                        "failed": list(failed),
                        "since": since,
                        "given_up_endpoints": [endpoint_id for endpoint_id, _ in given_up],
                        "given_up_deliveries": [delivery_id for _, delivery_id in given_up],
                    },
                )
            )
            .mappings()
            .all()
        )
        return [endpoint_from_row(row) for row in rows]

    async def replay(
        self,
        *,
        merchant_id: str,
        since: datetime,
        until: datetime,
        endpoint_id: str | None,
        now: datetime,
    ) -> int:
        """Queue the merchant's recorded events of ``[since, until)`` again (see the port)."""
        result = await self._session.execute(
            _REPLAY,
            {
                "merchant_id": merchant_id,
                "since": since,
                "until": until,
                "endpoint_id": endpoint_id,
                "now": now,
            },
        )
        return _rowcount(result)

    async def abandon_pending(self, endpoint_id: str, *, at: datetime) -> int:
        """Give up the endpoint's pending deliveries (it is removed); how many."""
        result = await self._session.execute(
            _ABANDON_PENDING, {"endpoint_id": endpoint_id, "at": at}
        )
        return _rowcount(result)

    async def park_pending(self, endpoint_id: str) -> int:
        """Unschedule the endpoint's pending deliveries (it is disabled); how many."""
        result = await self._session.execute(_PARK_PENDING, {"endpoint_id": endpoint_id})
        return _rowcount(result)

    async def restart_pending(self, endpoint_id: str, *, at: datetime) -> int:
        """Make the endpoint's pending deliveries due now, with a fresh retry window (it
        is enabled again); how many."""
        result = await self._session.execute(
            _RESTART_PENDING, {"endpoint_id": endpoint_id, "at": at}
        )
        return _rowcount(result)

    async def backlog(self) -> list[EndpointBacklog]:
        """Pending deliveries per enabled endpoint that has any, and the oldest's age."""
        rows = (await self._session.execute(_BACKLOG)).mappings().all()
        return [
            EndpointBacklog(
                endpoint_id=row["endpoint_id"],
                pending=int(row["pending"]),
                oldest_age_s=max(float(row["oldest_age_s"] or 0), 0.0),
            )
            for row in rows
        ]

    async def purge_finished(self, *, before: datetime, limit: int) -> int:
        """Delete finished deliveries (and their attempts) and events left without one."""
        params = {"before": before, "limit": limit}
        deliveries = await self._session.execute(_PURGE_DELIVERIES, params)
        events = await self._session.execute(_PURGE_EVENTS, params)
        return _rowcount(deliveries) + _rowcount(events)
