"""Repositories: the storage ports of :mod:`app.services.ports`, over one unit of work.

They speak domain objects (:mod:`app.adapters.db.mapping` converts) and never commit:
writes are added to the unit of work's :class:`~app.adapters.db.write_batch.WriteBatch`
and sent with it; reads and locks run in the unit's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
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
from sqlalchemy.orm import aliased

from app.adapters.db.mapping import (
    api_key_from_row,
    audit_values,
    merchant_from_row,
    outbox_message_from_row,
    outbox_values,
    payment_from_row,
    payment_state_values,
    payment_values,
    refund_from_row,
    refund_state_values,
    refund_values,
)
from app.adapters.db.models import (
    ApiKeyRow,
    AuditRow,
    IdempotencyKeyRow,
    MerchantRow,
    OutboxEvent,
    PaymentRow,
    RefundRow,
)
from app.adapters.db.notifications import CACHE_CHANNEL
from app.adapters.db.write_batch import WriteBatch
from app.domain.audit import AuditEntry
from app.domain.merchants import ApiKey, Merchant
from app.domain.payments import Payment, PaymentStatus, Refund
from app.services.ports import IdempotencyRecord, Lease, OutboxBacklog, OutboxMessage

PAYMENTS = cast(Table, PaymentRow.__table__)
REFUNDS = cast(Table, RefundRow.__table__)
MERCHANTS = cast(Table, MerchantRow.__table__)
API_KEYS = cast(Table, ApiKeyRow.__table__)
IDEMPOTENCY_KEYS = cast(Table, IdempotencyKeyRow.__table__)
OUTBOX = cast(Table, OutboxEvent.__table__)
AUDIT_LOG = cast(Table, AuditRow.__table__)

REFUND_PREFIX = "refund_"
"""Refund columns are read beside payment columns under this prefix."""

_REFUND_COLUMNS = [column.label(f"{REFUND_PREFIX}{column.key}") for column in REFUNDS.c]


def payment_with_refunds(*, for_update: bool = False) -> Any:
    """``SELECT`` a merchant's payment joined with its refunds (oldest first), by
    ``:transaction_id`` and ``:merchant_id``: one statement, one snapshot."""
    statement = (
        select(PAYMENTS, *_REFUND_COLUMNS)
        .outerjoin(REFUNDS, REFUNDS.c.transaction_id == PAYMENTS.c.transaction_id)
        .where(
            PAYMENTS.c.transaction_id == bindparam("transaction_id"),
            PAYMENTS.c.merchant_id == bindparam("merchant_id"),
        )
        .order_by(REFUNDS.c.created_at, REFUNDS.c.refund_id)
    )
    if for_update:
        statement = statement.with_for_update(of=PAYMENTS)
    return statement


def payment_from_joined_rows(rows: Sequence[Any]) -> Payment | None:
    """The payment (with refunds) from the rows of :func:`payment_with_refunds`."""
    if not rows:
        return None
    refunds = [
        refund_from_row(
            {
                key.removeprefix(REFUND_PREFIX): value
                for key, value in row.items()
                if key.startswith(REFUND_PREFIX)
            }
        )
        for row in rows
        if row[f"{REFUND_PREFIX}refund_id"] is not None
    ]
    return payment_from_row(rows[0], refunds)


class MerchantRepository:
    """Merchants and their accepted currencies."""

    def __init__(self, session: AsyncSession, batch: WriteBatch) -> None:
        self._session = session
        self._batch = batch

    def add(self, merchant: Merchant) -> None:
        """Stage a new merchant."""
        self._batch.insert(
            MERCHANTS,
            {
                "merchant_id": merchant.merchant_id,
                "name": merchant.name,
                "status": merchant.status.value,
                "currencies": sorted(merchant.currencies),
            },
        )

    async def get(self, merchant_id: str) -> Merchant | None:
        """The merchant, or None."""
        statement = select(MERCHANTS).where(MERCHANTS.c.merchant_id == merchant_id)
        row = (await self._session.execute(statement)).mappings().first()
        return None if row is None else merchant_from_row(row)

    def update(self, merchant: Merchant, *, at: datetime) -> None:
        """Stage writing the merchant's status."""
        self._batch.update(
            MERCHANTS,
            where={"merchant_id": merchant.merchant_id},
            values={"status": merchant.status.value, "updated_at": at},
        )

    async def announce_change(self, merchant_id: str) -> None:
        """NOTIFY every worker, on commit, that this merchant or one of its keys changed."""
        await self._session.execute(select(func.pg_notify(CACHE_CHANNEL, merchant_id)))


class ApiKeyRepository:
    """Bearer keys, looked up by their digest only."""

    def __init__(self, session: AsyncSession, batch: WriteBatch) -> None:
        self._session = session
        self._batch = batch

    def add(self, api_key: ApiKey) -> None:
        """Stage a new key digest."""
        self._batch.insert(
            API_KEYS,
            {
                "id": api_key.id,
                "merchant_id": api_key.merchant_id,
                "key_hash": api_key.key_hash,
                "key_prefix": api_key.key_prefix,
            },
        )

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this digest, revoked or not."""
        statement = select(API_KEYS).where(API_KEYS.c.key_hash == key_hash)
        row = (await self._session.execute(statement)).mappings().first()
        return None if row is None else api_key_from_row(row)

    def revoke(self, api_key: ApiKey, *, at: datetime) -> None:
        """Stage revoking the key."""
        self._batch.update(API_KEYS, where={"id": api_key.id}, values={"revoked_at": at})


class PaymentRepository:
    """Payments with their refunds, always scoped to the merchant that owns them."""

    def __init__(self, session: AsyncSession, batch: WriteBatch) -> None:
        self._session = session
        self._batch = batch

    def add(self, payment: Payment) -> None:
        """Stage a new payment (inserted with the unit's write batch)."""
        self._batch.insert(PAYMENTS, payment_values(payment))

    async def get_for_update(self, transaction_id: str, *, merchant_id: str) -> Payment | None:
        """The merchant's payment with its refunds, row-locked to the end of the unit."""
        result = await self._session.execute(
            payment_with_refunds(for_update=True),
            {"transaction_id": transaction_id, "merchant_id": merchant_id},
        )
        return payment_from_joined_rows(result.mappings().all())

    def update(self, payment: Payment, *, expected_status: PaymentStatus | None = None) -> None:
        """Stage writing the payment's state; with ``expected_status`` only if the row
        still has it (the unit's commit raises ConcurrentUpdate otherwise)."""
        where: dict[str, Any] = {"transaction_id": payment.transaction_id}
        if expected_status is not None:
            where["status"] = expected_status.value
        self._batch.update(
            PAYMENTS,
            where=where,
            values=payment_state_values(payment),
            guard=expected_status is not None,
        )


class RefundRepository:
    """Refunds against payments."""

    def __init__(self, batch: WriteBatch) -> None:
        self._batch = batch

    def add(self, refund: Refund) -> None:
        """Stage a new refund."""
        self._batch.insert(REFUNDS, refund_values(refund))

    def update(self, refund: Refund) -> None:
        """Stage writing the refund's outcome."""
        self._batch.update(
            REFUNDS, where={"refund_id": refund.refund_id}, values=refund_state_values(refund)
        )


_AT = DateTime(timezone=True)
_claim_insert = insert(IDEMPOTENCY_KEYS).values(
    merchant_id=bindparam("merchant_id"),
    idempotency_key=bindparam("key"),
    request_fingerprint=bindparam("fingerprint"),
    resource_id=bindparam("resource_id"),
    state="in_progress",
    locked_until=bindparam("locked_until", type_=_AT),
    expires_at=bindparam("expires_at", type_=_AT),
    created_at=bindparam("now", type_=_AT),
)
_expired = IDEMPOTENCY_KEYS.c.expires_at < bindparam("now", type_=_AT)
CLAIM_IDEMPOTENCY_KEY = _claim_insert.on_conflict_do_update(
    index_elements=[IDEMPOTENCY_KEYS.c.merchant_id, IDEMPOTENCY_KEYS.c.idempotency_key],
    set_={
        "request_fingerprint": _claim_insert.excluded.request_fingerprint,
        # A stale in-progress claim keeps its resource id (crash recovery); an expired
        # record starts afresh.
        "resource_id": case(
            (_expired, _claim_insert.excluded.resource_id),
            else_=IDEMPOTENCY_KEYS.c.resource_id,
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
            (IDEMPOTENCY_KEYS.c.state == "in_progress")
            & (IDEMPOTENCY_KEYS.c.locked_until < bindparam("now", type_=_AT))
            & (IDEMPOTENCY_KEYS.c.request_fingerprint == _claim_insert.excluded.request_fingerprint)
        )
    ),
).returning(IDEMPOTENCY_KEYS.c.resource_id)
"""The atomic claim, built once: insert, or take over a stale claim or an expired record."""


class IdempotencyRepository:
    """Idempotency keys: an atomic claim, then the stored response."""

    def __init__(self, session: AsyncSession, batch: WriteBatch) -> None:
        self._session = session
        self._batch = batch

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
        already exists for the merchant (see the port)."""
        if not self._session.in_transaction():
            # The claim is one statement, durable at once: no BEGIN/COMMIT around it.
            await self._session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
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

    async def get(self, *, merchant_id: str, key: str) -> IdempotencyRecord | None:
        """The stored record for this merchant's key."""
        row = (
            (
                await self._session.execute(
                    select(IDEMPOTENCY_KEYS).where(
                        IDEMPOTENCY_KEYS.c.merchant_id == merchant_id,
                        IDEMPOTENCY_KEYS.c.idempotency_key == key,
                    )
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        return IdempotencyRecord(
            request_fingerprint=row["request_fingerprint"],
            resource_id=row["resource_id"],
            completed=row["state"] == "completed",
            response_status=row["response_status"],
            response_body=row["response_body"],
            locked_until=row["locked_until"],
        )

    def complete(self, *, merchant_id: str, key: str, status: int, body: dict[str, Any]) -> None:
        """Stage the response that later retries replay (written with the unit of work)."""
        self._batch.update(
            IDEMPOTENCY_KEYS,
            where={"merchant_id": merchant_id, "idempotency_key": key},
            values={"state": "completed", "response_status": status, "response_body": body},
        )

    async def release(self, *, merchant_id: str, key: str) -> None:
        """Forget an in-progress claim whose request is not to be remembered."""
        await self._session.execute(
            delete(IDEMPOTENCY_KEYS).where(
                IDEMPOTENCY_KEYS.c.merchant_id == merchant_id,
                IDEMPOTENCY_KEYS.c.idempotency_key == key,
                IDEMPOTENCY_KEYS.c.state == "in_progress",
            )
        )

    async def purge_expired(self, *, now: datetime) -> int:
        """Delete records past their retention; returns how many."""
        result = await self._session.execute(
            delete(IDEMPOTENCY_KEYS).where(IDEMPOTENCY_KEYS.c.expires_at < now)
        )
        return int(getattr(result, "rowcount", 0) or 0)


_MARK_PUBLISHED = (
    update(OUTBOX)
    .where(
        # = ANY(array): one statement text (one prepared statement) for any batch size.
        OUTBOX.c.event_id == any_(bindparam("event_ids", type_=ARRAY(UUID(as_uuid=True)))),
        OUTBOX.c.published_at.is_(None),
    )
    .values(published_at=bindparam("at", type_=_AT), claimed_until=None)
)


class OutboxRepository:
    """Events waiting to be published, written in the same transaction as their change."""

    def __init__(self, session: AsyncSession, batch: WriteBatch) -> None:
        self._session = session
        self._batch = batch

    def add(self, message: OutboxMessage, *, lease: Lease | None = None) -> None:
        """Stage an event with the change it describes; with ``lease``, already claimed.

        ``created_at`` is now, not the transaction's start (a refund's may span a bank
        call): the relay's fresh-event grace counts from when the event was made.
        """
        values = outbox_values(message) | {"created_at": datetime.now(UTC)}
        if lease is not None:
            values |= {"claimed_by": lease.claimed_by, "claimed_until": lease.claimed_until}
        self._batch.insert(OUTBOX, values)

    async def claim(
        self,
        *,
        claimer: str,
        lease: timedelta,
        limit: int,
        min_age: timedelta | None = None,
    ) -> list[OutboxMessage]:
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
            OUTBOX.c.published_at.is_(None),
            or_(OUTBOX.c.claimed_until.is_(None), OUTBOX.c.claimed_until < now),
        ]
        if min_age is not None:
            conditions.append(OUTBOX.c.created_at <= now - min_age)
        candidates = (
            select(OUTBOX.c.id, OUTBOX.c.aggregate_id)
            .where(*conditions)
            .order_by(OUTBOX.c.id)
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
            update(OUTBOX)
            .where(OUTBOX.c.id.in_(claimable))
            .values(claimed_by=claimer, claimed_until=now + lease)
            .returning(OUTBOX)
        )
        rows = (await self._session.execute(stmt)).mappings().all()
        return [outbox_message_from_row(row) for row in sorted(rows, key=lambda row: row["id"])]

    async def has_unpublished(self, key: str) -> bool:
        """Whether an event of this transaction is still waiting to be published."""
        stmt = select(
            select(OUTBOX.c.id)
            .where(OUTBOX.c.aggregate_id == key, OUTBOX.c.published_at.is_(None))
            .exists()
        )
        connection = await self._session.connection()
        return bool((await connection.execute(stmt)).scalar())

    async def release(
        self, event_ids: Sequence[uuid.UUID], *, claimer: str, error: str | None
    ) -> None:
        """Give back ``claimer``'s lease on unpublished events; ``error`` counts an attempt.

        A lease that ran out and was taken by another publisher is left alone.
        """
        if not event_ids:
            return
        values: dict[str, Any] = {"claimed_by": None, "claimed_until": None}
        if error is not None:
            values |= {"attempts": OUTBOX.c.attempts + 1, "last_error": error[:1000]}
        connection = await self._session.connection()
        await connection.execute(
            update(OUTBOX)
            .where(
                OUTBOX.c.event_id.in_(list(event_ids)),
                OUTBOX.c.claimed_by == claimer,
                OUTBOX.c.published_at.is_(None),
            )
            .values(**values)
        )

    async def mark_published(self, event_ids: Sequence[uuid.UUID], *, at: datetime) -> None:
        """Record successful publication (the first one wins) and drop the lease.

        As the unit's first statement it runs on its own, without ``BEGIN``/``COMMIT``
        (one round trip): an acknowledgement from the broker is a fact that no rollback
        should take back. After other statements it is part of their transaction.
        """
        if not event_ids:
            return
        if self._session.in_transaction():
            connection = await self._session.connection()
        else:
            connection = await self._session.connection(
                execution_options={"isolation_level": "AUTOCOMMIT"}
            )
        await connection.execute(_MARK_PUBLISHED, {"event_ids": list(event_ids), "at": at})

    async def backlog(self) -> OutboxBacklog:
        """Pending count and the age of the oldest pending event."""
        row = (
            await self._session.execute(
                select(
                    func.count(OUTBOX.c.id),
                    func.coalesce(
                        func.extract("epoch", func.now() - func.min(OUTBOX.c.created_at)), 0
                    ),
                ).where(OUTBOX.c.published_at.is_(None))
            )
        ).one()
        return OutboxBacklog(pending=int(row[0]), oldest_pending_age_s=float(row[1]))


class AuditLogRepository:
    """The append-only audit trail; there is deliberately no update or delete here."""

    def __init__(self, batch: WriteBatch) -> None:
        self._batch = batch

    def append(self, entry: AuditEntry) -> None:
        """Stage an audit row, written atomically with the rest of the unit of work."""
        self._batch.insert(AUDIT_LOG, audit_values(entry))
