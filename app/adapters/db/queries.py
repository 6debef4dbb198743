"""Reads that need no transaction: each is one statement, so one snapshot, in autocommit.

A read inside a unit of work costs ``BEGIN``, the statement and ``ROLLBACK``; these cost
the statement alone.
"""

from __future__ import annotations

import operator
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    asc,
    bindparam,
    desc,
    func,
    literal,
    select,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.adapters.db.engine import single_statement_options
from app.adapters.db.mapping import merchant_from_row, payment_from_row
from app.adapters.db.repositories import (
    API_KEYS,
    MERCHANTS,
    PAYMENTS,
    REFUNDS,
    payment_from_joined_rows,
    payment_with_refunds,
)
from app.domain.merchants import Merchant
from app.domain.payments import Payment, RefundStatus
from app.services.ports import PageCursor, PaymentFilter, PaymentPage, UnsettledBacklog

_PAYMENT = payment_with_refunds()
# Payments waiting for the bank: processing, or with a capture, void or expiry pending --
# exactly the rows with a reconciliation due (the partial index ix_transactions_reconcile_due).
_processing = select(
    func.count(),
    func.min(func.coalesce(PAYMENTS.c.pending_operation_at, PAYMENTS.c.created_at)),
).where(PAYMENTS.c.next_reconcile_at.is_not(None))
_pending = select(func.count(), func.min(REFUNDS.c.created_at)).where(
    REFUNDS.c.status == RefundStatus.PENDING.value
)
_processing_sq = _processing.subquery("p")
_pending_sq = _pending.subquery("r")
_UNSETTLED = select(
    _processing_sq.c[0].label("payments"),
    _pending_sq.c[0].label("refunds"),
    func.coalesce(
        func.extract(
            "epoch",
            func.now() - func.least(_processing_sq.c[1], _pending_sq.c[1]),
        ),
        0,
    ).label("oldest_age_s"),
).select_from(_processing_sq.join(_pending_sq, literal(True)))
"""Two partial indexes (reconciliation due / status = 'pending') serve these two counts."""
_MERCHANT_FOR_KEY = (
    select(MERCHANTS)
    .join(API_KEYS, API_KEYS.c.merchant_id == MERCHANTS.c.merchant_id)
    .where(API_KEYS.c.key_hash == bindparam("key_hash"), API_KEYS.c.revoked_at.is_(None))
)

_CREATED_BOUNDS = (
    ("created_gte", operator.ge),
    ("created_gt", operator.gt),
    ("created_lte", operator.le),
    ("created_lt", operator.lt),
)


def _matching(merchant_id: str, filters: PaymentFilter) -> list[ColumnElement[bool]]:
    """The merchant's payments that pass ``filters``: each condition is served by one of
    the listing's indexes (migration 0006)."""
    conditions = [PAYMENTS.c.merchant_id == merchant_id]
    if filters.status is not None:
        conditions.append(PAYMENTS.c.status == filters.status.value)
    for name, compare in _CREATED_BOUNDS:
        bound = getattr(filters, name)
        if bound is not None:
            conditions.append(compare(PAYMENTS.c.created_at, bound))
    if filters.metadata:
        conditions.append(PAYMENTS.c["metadata"].contains(dict(filters.metadata)))
    return conditions


def payment_page_statement(
    *, merchant_id: str, filters: PaymentFilter, limit: int, cursor: PageCursor | None
) -> Select[Any]:
    """One statement for one page, keyset-paginated (never OFFSET): ``limit + 1`` rows
    say whether there are more.

    With a cursor, its payment (looked up within the merchant's) is the anchor, and the
    page is a LATERAL subquery of the rows beyond it, outer-joined: no row at all means
    the cursor is not one of the merchant's payments, one row of NULLs an empty page.
    Newer pages are read oldest first (the rows right after the cursor), and turned
    around by the caller.
    """
    direction = asc if cursor is not None and cursor.newer else desc
    page = (
        select(PAYMENTS)
        .where(*_matching(merchant_id, filters))
        .order_by(direction(PAYMENTS.c.created_at), direction(PAYMENTS.c.transaction_id))
        .limit(limit + 1)
    )
    if cursor is None:
        return page
    anchor = (
        select(PAYMENTS.c.created_at, PAYMENTS.c.transaction_id)
        .where(
            PAYMENTS.c.transaction_id == cursor.transaction_id,
            PAYMENTS.c.merchant_id == merchant_id,
        )
        .subquery("anchor")
    )
    # The listing's order: ``transaction_id`` breaks ties of ``created_at``.
    key = tuple_(PAYMENTS.c.created_at, PAYMENTS.c.transaction_id)
    bound = tuple_(anchor.c.created_at, anchor.c.transaction_id)
    beyond = key > bound if cursor.newer else key < bound
    rows = page.where(beyond).lateral("page")
    return select(rows).select_from(anchor.outerjoin(rows, true()))


class SqlPaymentQueries:
    """:class:`~app.services.ports.PaymentQueries` over a pooled engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def payment(self, transaction_id: str, *, merchant_id: str) -> Payment | None:
        """The merchant's payment with its refunds (oldest first), or None."""
        rows = await self._fetch(
            _PAYMENT, {"transaction_id": transaction_id, "merchant_id": merchant_id}
        )
        return payment_from_joined_rows(rows)

    async def merchant_for_key(self, key_hash: str) -> Merchant | None:
        """The merchant of the unrevoked API key with this digest, or None."""
        rows = await self._fetch(_MERCHANT_FOR_KEY, {"key_hash": key_hash})
        return merchant_from_row(rows[0]) if rows else None

    async def payment_page(
        self,
        *,
        merchant_id: str,
        filters: PaymentFilter,
        limit: int,
        cursor: PageCursor | None = None,
    ) -> PaymentPage | None:
        """Up to ``limit`` of the merchant's payments that match ``filters``, without
        their refunds, newest first: the newest ones, or those right next to the cursor's
        payment. None when the cursor is not one of the merchant's payments."""
        statement = payment_page_statement(
            merchant_id=merchant_id, filters=filters, limit=limit, cursor=cursor
        )
        rows = await self._fetch(statement, {})
        if cursor is not None:
            if not rows:
                return None
            rows = [row for row in rows if row["transaction_id"] is not None]
        payments = [payment_from_row(row) for row in rows[:limit]]
        if cursor is not None and cursor.newer:
            payments.reverse()
        return PaymentPage(payments=payments, has_more=len(rows) > limit)

    async def unsettled_backlog(self) -> UnsettledBacklog:
        """How many payments (processing, or a capture, void or expiry pending) and refunds
        wait for the bank's answer, and the oldest's age."""
        (row,) = await self._fetch(_UNSETTLED, {})
        return UnsettledBacklog(
            payments=int(row["payments"]),
            refunds=int(row["refunds"]),
            oldest_age_s=float(row["oldest_age_s"]),
        )

    async def _fetch(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        async with self._engine.connect() as connection:
            await _autocommit(connection)
            result = await connection.execute(statement, params)
            return list(result.mappings().all())


async def _autocommit(connection: AsyncConnection) -> None:
    await connection.execution_options(**single_statement_options(connection))
