"""Repositories: one per aggregate, each bound to the unit of work's session.

They speak in ORM rows and never commit; the unit of work owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    UUID,
    DateTime,
    Table,
    any_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, joinedload

from app.adapters.db.models import (
    ApiKey,
    AuditLogEntry,
    IdempotencyKey,
    Merchant,
    OutboxEvent,
    Refund,
    Transaction,
)
from app.adapters.db.notifications import CACHE_CHANNEL
from app.adapters.db.staging import StagedWrites


class MerchantRepository:
    """Merchants and their accepted currencies."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def add(self, merchant: Merchant) -> None:
        """Stage a new merchant."""
        self._session.add(merchant)

    async def get(self, merchant_id: str) -> Merchant | None:
        """The merchant, or None."""
        return await self._session.get(Merchant, merchant_id)

    async def announce_change(self, merchant_id: str) -> None:
        """NOTIFY every worker, on commit, that this merchant or one of its keys changed."""
        await self._session.execute(select(func.pg_notify(CACHE_CHANNEL, merchant_id)))


class ApiKeyRepository:
    """Bearer keys, looked up by their digest only."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def add(self, api_key: ApiKey) -> None:
        """Stage a new key digest."""
        self._session.add(api_key)

    async def get_active_by_hash(self, key_hash: str) -> tuple[ApiKey, Merchant] | None:
        """The unrevoked key with this digest and its merchant, in one round trip."""
        row = (
            await self._session.execute(
                select(ApiKey, Merchant)
                .join(Merchant, Merchant.merchant_id == ApiKey.merchant_id)
                .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            )
        ).first()
        return None if row is None else (row[0], row[1])

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this digest, revoked or not."""
        return (
            await self._session.execute(select(ApiKey).where(ApiKey.key_hash == key_hash))
        ).scalar_one_or_none()


_TRANSACTIONS = cast(Table, Transaction.__table__)


class PaymentRepository:
    """Transactions, always scoped to the merchant that owns them."""

    def __init__(self, session: AsyncSession, staged: StagedWrites) -> None:
        self._session = session
        self._staged = staged

    def add(self, transaction: Transaction) -> None:
        """Stage a new payment (inserted at flush or commit)."""
        self._staged.insert(transaction)

    async def get(
        self, transaction_id: str, *, merchant_id: str, with_refunds: bool = False
    ) -> Transaction | None:
        """The merchant's payment, or None (another merchant's payment is None too).

        With its refunds it is still one statement (a join), so the payment and its
        refunds come from one snapshot even outside a transaction.
        """
        stmt = select(Transaction).where(
            Transaction.transaction_id == transaction_id,
            Transaction.merchant_id == merchant_id,
        )
        if with_refunds:
            stmt = stmt.options(joinedload(Transaction.refunds))
        return (await self._session.execute(stmt)).unique().scalar_one_or_none()

    async def get_for_update(self, transaction_id: str, *, merchant_id: str) -> Transaction | None:
        """The merchant's payment, row-locked to the end of the transaction (refunds queue here).

        The row is detached from the session: change its balance with
        :meth:`update_balance`, which writes with the rest of the unit of work.
        """
        stmt = (
            select(Transaction)
            .where(
                Transaction.transaction_id == transaction_id,
                Transaction.merchant_id == merchant_id,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        txn = (await self._session.execute(stmt)).scalar_one_or_none()
        if txn is not None:
            self._session.expunge(txn)
        return txn

    def update_balance(self, txn: Transaction) -> None:
        """Stage writing the payment's status, refunded amount and ``updated_at``."""
        self._staged.update(
            _TRANSACTIONS,
            where={"transaction_id": txn.transaction_id},
            values={
                "status": txn.status,
                "refunded_minor": txn.refunded_minor,
                "updated_at": txn.updated_at,
            },
        )


class RefundRepository:
    """Refunds against payments."""

    def __init__(self, staged: StagedWrites) -> None:
        self._staged = staged

    def add(self, refund: Refund) -> None:
        """Stage a new refund (inserted at flush or commit)."""
        self._staged.insert(refund)


_IDEMPOTENCY = cast(Table, IdempotencyKey.__table__)
_AT = DateTime(timezone=True)
_claim_insert = insert(_IDEMPOTENCY).values(
    merchant_id=bindparam("merchant_id"),
    idempotency_key=bindparam("key"),
    request_fingerprint=bindparam("fingerprint"),
    resource_id=bindparam("resource_id"),
    state="in_progress",
    locked_until=bindparam("locked_until", type_=_AT),
    expires_at=bindparam("expires_at", type_=_AT),
    created_at=bindparam("now", type_=_AT),
)
_expired = _IDEMPOTENCY.c.expires_at < bindparam("now", type_=_AT)
CLAIM_IDEMPOTENCY_KEY = _claim_insert.on_conflict_do_update(
    index_elements=[_IDEMPOTENCY.c.merchant_id, _IDEMPOTENCY.c.idempotency_key],
    set_={
        "request_fingerprint": _claim_insert.excluded.request_fingerprint,
        # A stale in-progress claim keeps its resource id (crash recovery); an expired
        # record starts afresh.
        "resource_id": case(
            (_expired, _claim_insert.excluded.resource_id), else_=_IDEMPOTENCY.c.resource_id
        ),
        "state": "in_progress",
        "response_status": None,
        "response_body": None,
        "locked_until": _claim_insert.excluded.locked_until,
        "expires_at": _claim_insert.excluded.expires_at,
        "created_at": _claim_insert.excluded.created_at,
    },
    where=(
        _expired
        | (
            (_IDEMPOTENCY.c.state == "in_progress")
            & (_IDEMPOTENCY.c.locked_until < bindparam("now", type_=_AT))
            & (_IDEMPOTENCY.c.request_fingerprint == _claim_insert.excluded.request_fingerprint)
        )
    ),
).returning(_IDEMPOTENCY.c.resource_id)
"""The atomic claim, built once: insert, or take over a stale claim or an expired record."""


class IdempotencyRepository:
    """Idempotency keys: an atomic claim, then the stored response."""

    def __init__(self, session: AsyncSession, staged: StagedWrites) -> None:
        self._session = session
        self._staged = staged

    async def claim(
        self,
        *,
        merchant_id: str,
        key: str,
        request_fingerprint: str,
        resource_id: str,
        now: datetime,
        lock_for: timedelta,
        keep_for: timedelta,
    ) -> str | None:
        """Insert an in-progress claim and return its resource id; None when the key
        already exists for the merchant.

        A claim left behind by a crashed request (in progress past ``locked_until``) or an
        expired record is taken over in the same statement; a stale claim keeps the
        resource id it had.
        """
        connection = await self._session.connection()
        result = await connection.execute(
            CLAIM_IDEMPOTENCY_KEY,
            {
                "merchant_id": merchant_id,
                "key": key,
                "fingerprint": request_fingerprint,
                "resource_id": resource_id,
                "now": now,
                "locked_until": now + lock_for,
                "expires_at": now + keep_for,
            },
        )
        claimed: str | None = result.scalar_one_or_none()
        return claimed

    async def get(self, *, merchant_id: str, key: str) -> IdempotencyKey | None:
        """The stored record for this merchant's key."""
        stmt = select(IdempotencyKey).where(
            IdempotencyKey.merchant_id == merchant_id, IdempotencyKey.idempotency_key == key
        )
        return (await self._session.execute(stmt)).scalar_one_or_none()

    def complete(self, *, merchant_id: str, key: str, status: int, body: dict[str, Any]) -> None:
        """Stage the response that later retries replay (written with the unit of work)."""
        self._staged.update(
            _IDEMPOTENCY,
            where={"merchant_id": merchant_id, "idempotency_key": key},
            values={"state": "completed", "response_status": status, "response_body": body},
        )

    async def release(self, *, merchant_id: str, key: str) -> None:
        """Forget an in-progress claim whose request is not to be remembered."""
        await self._session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.merchant_id == merchant_id,
                IdempotencyKey.idempotency_key == key,
                IdempotencyKey.state == "in_progress",
            )
        )

    async def purge_expired(self, *, now: datetime) -> int:
        """Delete records past their retention; returns how many."""
        result = await self._session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.expires_at < now)
        )
        return int(getattr(result, "rowcount", 0) or 0)


_OUTBOX = cast(Table, OutboxEvent.__table__)
_MARK_PUBLISHED = (
    update(_OUTBOX)
    .where(
        # = ANY(array): one statement text (one prepared statement) for any batch size.
        _OUTBOX.c.event_id == any_(bindparam("event_ids", type_=ARRAY(UUID(as_uuid=True)))),
        _OUTBOX.c.published_at.is_(None),
    )
    .values(published_at=bindparam("at", type_=_AT), claimed_until=None)
)


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """How far the relay is behind."""

    pending: int
    oldest_pending_age_s: float


class OutboxRepository:
    """Events waiting to be published, written in the same transaction as their change."""

    def __init__(self, session: AsyncSession, staged: StagedWrites) -> None:
        self._session = session
        self._staged = staged

    def add(self, event: OutboxEvent) -> None:
        """Stage an event with the change it describes (inserted at flush or commit)."""
        self._staged.insert(event)

    async def claim(
        self,
        *,
        claimer: str,
        lease: timedelta,
        limit: int,
        min_age: timedelta | None = None,
    ) -> list[OutboxEvent]:
        """Lease up to ``limit`` publishable events to ``claimer``, oldest first.

        Publishable: unpublished, not leased (or the lease ran out), not locked by another
        claim running right now, and every older unpublished event of the same aggregate
        is in this same claim -- so no two publishers ever hold events of one transaction
        at once, and each publishes a transaction's events in order. With ``min_age`` only
        events created at least that long ago. Commit promptly: the rows stay locked until
        the transaction ends.
        """
        now = func.now()
        conditions = [
            OutboxEvent.published_at.is_(None),
            or_(OutboxEvent.claimed_until.is_(None), OutboxEvent.claimed_until < now),
        ]
        if min_age is not None:
            conditions.append(OutboxEvent.created_at <= now - min_age)
        candidates = (
            select(OutboxEvent.id, OutboxEvent.aggregate_id)
            .where(*conditions)
            .order_by(OutboxEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("candidates")
            .prefix_with("MATERIALIZED")
        )
        older = aliased(OutboxEvent, name="older")
        held_elsewhere = (
            select(older.id)
            .where(
                older.aggregate_id == candidates.c.aggregate_id,
                older.published_at.is_(None),
                older.id < candidates.c.id,
                older.id.not_in(select(candidates.c.id)),
            )
            .exists()
        )
        claimable = select(candidates.c.id).where(~held_elsewhere)
        stmt = (
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(claimable))
            .values(claimed_by=claimer, claimed_until=now + lease)
            .returning(OutboxEvent)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        claimed = list((await self._session.execute(stmt)).scalars())
        return sorted(claimed, key=lambda event: event.id)

    async def has_unpublished(self, aggregate_id: str) -> bool:
        """Whether an event of this transaction is still waiting to be published."""
        stmt = select(
            select(_OUTBOX.c.id)
            .where(_OUTBOX.c.aggregate_id == aggregate_id, _OUTBOX.c.published_at.is_(None))
            .exists()
        )
        connection = await self._session.connection()
        return bool((await connection.execute(stmt)).scalar())

    async def release(self, event_ids: list[uuid.UUID], *, claimer: str, error: str | None) -> None:
        """Give back ``claimer``'s lease on unpublished events; ``error`` counts an attempt.

        A lease that ran out and was taken by another publisher is left alone.
        """
        if not event_ids:
            return
        values: dict[str, Any] = {"claimed_by": None, "claimed_until": None}
        if error is not None:
            values |= {"attempts": _OUTBOX.c.attempts + 1, "last_error": error[:1000]}
        connection = await self._session.connection()
        await connection.execute(
            update(_OUTBOX)
            .where(
                _OUTBOX.c.event_id.in_(event_ids),
                _OUTBOX.c.claimed_by == claimer,
                _OUTBOX.c.published_at.is_(None),
            )
            .values(**values)
        )

    async def mark_published(self, event_ids: list[uuid.UUID], *, at: datetime) -> None:
        """Record successful publication (the first one wins) and drop the lease."""
        if event_ids:
            connection = await self._session.connection()
            await connection.execute(_MARK_PUBLISHED, {"event_ids": event_ids, "at": at})

    async def backlog(self) -> OutboxBacklog:
        """Pending count and the age of the oldest pending event."""
        row = (
            await self._session.execute(
                select(
                    func.count(OutboxEvent.id),
                    func.coalesce(
                        func.extract("epoch", func.now() - func.min(OutboxEvent.created_at)), 0
                    ),
                ).where(OutboxEvent.published_at.is_(None))
            )
        ).one()
        return OutboxBacklog(pending=int(row[0]), oldest_pending_age_s=float(row[1]))


class AuditLogRepository:
    """The append-only audit trail; there is deliberately no update or delete here."""

    def __init__(self, staged: StagedWrites) -> None:
        self._staged = staged

    def append(self, entry: AuditLogEntry) -> None:
        """Stage an audit row, written atomically with the rest of the unit of work."""
        self._staged.insert(entry)
