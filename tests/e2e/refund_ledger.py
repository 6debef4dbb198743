"""The money invariant of refunds, checked by SQL on the real database.

For every payment: the refunds that succeeded plus those still pending (reserved) never
exceed what was captured, and the payment's own counters (``refunded_minor``,
``refund_pending_minor``) agree with its refund rows. Every snapshot must satisfy it --
during a refund's bank call, after a worker was killed, while the reconciler settles.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_VIOLATIONS = text(
    """
    SELECT t.transaction_id, t.status, t.amount_minor, t.refunded_minor,
           t.refund_pending_minor, r.succeeded_minor, r.pending_minor
    FROM transactions t
    LEFT JOIN LATERAL (
        SELECT coalesce(sum(amount_minor) FILTER (WHERE status = 'succeeded'), 0)
                   AS succeeded_minor,
               coalesce(sum(amount_minor) FILTER (WHERE status = 'pending'), 0)
                   AS pending_minor
        FROM refunds WHERE refunds.transaction_id = t.transaction_id
    ) r ON true
    WHERE r.succeeded_minor + r.pending_minor > t.amount_minor
       OR t.refunded_minor + t.refund_pending_minor > t.amount_minor
       OR t.refunded_minor <> r.succeeded_minor
       OR t.refund_pending_minor <> r.pending_minor
    """
)


async def refund_ledger_violations(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Payments (of the whole test database) breaking the invariant, as one snapshot."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_VIOLATIONS)).mappings().all()
    return [dict(row) for row in rows]


async def assert_refunds_within_capture(engine: AsyncEngine) -> None:
    """Succeeded + pending refunds never exceed the capture, and the counters agree."""
    violations = await refund_ledger_violations(engine)
    assert violations == [], f"refund ledger broken: {violations}"
