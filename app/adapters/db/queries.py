"""Reads that need no transaction: each is one statement, so one snapshot, in autocommit.

A read inside a unit of work costs ``BEGIN``, the statement and ``ROLLBACK``; these cost
the statement alone.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.adapters.db.mapping import merchant_from_row
from app.adapters.db.repositories import (
    API_KEYS,
    MERCHANTS,
    payment_from_joined_rows,
    payment_with_refunds,
)
from app.domain.merchants import Merchant
from app.domain.payments import Payment

_PAYMENT = payment_with_refunds()
_MERCHANT_FOR_KEY = (
    select(MERCHANTS)
    .join(API_KEYS, API_KEYS.c.merchant_id == MERCHANTS.c.merchant_id)
    .where(API_KEYS.c.key_hash == bindparam("key_hash"), API_KEYS.c.revoked_at.is_(None))
)


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

    async def _fetch(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        async with self._engine.connect() as connection:
            await _autocommit(connection)
            result = await connection.execute(statement, params)
            return list(result.mappings().all())


async def _autocommit(connection: AsyncConnection) -> None:
    await connection.execution_options(isolation_level="AUTOCOMMIT")
