"""Repositories: the storage ports of :mod:`app.services.ports`, over one unit of work.

They speak domain objects (:mod:`app.adapters.db.mapping` converts) and never commit:
writes are added to the unit of work's :class:`~app.adapters.db.write_batch.WriteBatch`
and sent with it; reads and locks run in the unit's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    UUID,
    Column,
    DateTime,
    Integer,
    Table,
    any_,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from app.adapters.db.engine import execute_alone
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
    AuthRefusalRow,
    IdempotencyKeyRow,
    MerchantRow,
    OutboxEvent,
    PaymentRow,
    RefundRow,
)
from app.adapters.db.notifications import CACHE_CHANNEL
from app.adapters.db.write_batch import WriteBatch, register_guard
from app.domain.audit import AuditEntry
from app.domain.ids import OPERATION_PREFIXES
from app.domain.merchants import ApiKey, Merchant
from app.domain.payments import OperationKind, Payment, PaymentStatus, Refund, RefundStatus
from app.services.ports import (
    IdempotencyRecord,
    Lease,
    MerchantSummary,
    OutboxBacklog,
    OutboxMessage,
    StoredAnswer,
    Unsettled,
)

PAYMENTS = cast(Table, PaymentRow.__table__)
REFUNDS = cast(Table, RefundRow.__table__)
MERCHANTS = cast(Table, MerchantRow.__table__)
API_KEYS = cast(Table, ApiKeyRow.__table__)
IDEMPOTENCY_KEYS = cast(Table, IdempotencyKeyRow.__table__)
OUTBOX = cast(Table, OutboxEvent.__table__)
AUDIT_LOG = cast(Table, AuditRow.__table__)
AUTH_REFUSALS = cast(Table, AuthRefusalRow.__table__)

_AT = DateTime(timezone=True)

REFUND_PREFIX = "refund_"
"""Refund columns are read beside payment columns under this prefix."""

_REFUND_COLUMNS = [column.label(f"{REFUND_PREFIX}{column.key}") for column in REFUNDS.c]


def _payment_conditions(*, any_merchant: bool) -> list[Any]:
    """``:transaction_id``, and ``:merchant_id`` unless ``any_merchant`` (the service's own
    background work)."""
    conditions = [PAYMENTS.c.transaction_id == bindparam("transaction_id")]
    if not any_merchant:
        conditions.append(PAYMENTS.c.merchant_id == bindparam("merchant_id"))
    return conditions


def payment_with_refunds(*, any_merchant: bool = False) -> Any:
    """``SELECT`` a merchant's payment joined with its refunds (oldest first), by
    ``:transaction_id`` and ``:merchant_id``: one statement, one snapshot."""
    return (
        select(PAYMENTS, *_REFUND_COLUMNS)
        .outerjoin(REFUNDS, REFUNDS.c.transaction_id == PAYMENTS.c.transaction_id)
        .where(*_payment_conditions(any_merchant=any_merchant))
        .order_by(REFUNDS.c.created_at, REFUNDS.c.refund_id)
    )


def lock_payment(*, any_merchant: bool = False) -> Any:
    """``SELECT … FOR UPDATE`` the payment's row alone, with the conditions of
    :func:`payment_with_refunds`."""
    return (
        select(PAYMENTS.c.transaction_id)
        .where(*_payment_conditions(any_merchant=any_merchant))
        .with_for_update()
    )


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


SessionSource = Callable[[], AsyncSession]
"""The unit of work's session, opened on first use."""


class _Repository:
    """What every repository shares: the unit's staged writes, and its session -- opened
    only when a read or a lock needs it (a unit that only stages writes never opens one)."""

    def __init__(self, session: SessionSource, batch: WriteBatch) -> None:
        self._open_session = session
        self._batch = batch

    @property
    def _session(self) -> AsyncSession:
        return self._open_session()


class MerchantRepository(_Repository):
    """Merchants and their accepted currencies."""

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

    async def list_summaries(self) -> list[MerchantSummary]:
        """Every merchant (by id) with its number of unrevoked keys."""
        active_keys = (
            select(func.count())
            .where(API_KEYS.c.merchant_id == MERCHANTS.c.merchant_id)
            .where(API_KEYS.c.revoked_at.is_(None))
            .scalar_subquery()
        )
        statement = select(MERCHANTS, active_keys.label("active_keys")).order_by(
            MERCHANTS.c.merchant_id
        )
        rows = (await self._session.execute(statement)).mappings().all()
        return [
            MerchantSummary(merchant=merchant_from_row(row), active_keys=row["active_keys"])
            for row in rows
        ]

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


class ApiKeyRepository(_Repository):
    """Bearer keys, looked up by their digest only."""

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
        return await self._one(select(API_KEYS).where(API_KEYS.c.key_hash == key_hash))

    async def get(self, key_id: uuid.UUID) -> ApiKey | None:
        """The key with this id, revoked or not."""
        return await self._one(select(API_KEYS).where(API_KEYS.c.id == key_id))

    async def of_merchant(self, merchant_id: str) -> list[ApiKey]:
        """The merchant's keys, revoked or not, oldest first."""
        return await self._all(select(API_KEYS).where(API_KEYS.c.merchant_id == merchant_id))

    async def active_with_prefix(
        self, prefix: str, *, merchant_id: str | None = None
    ) -> list[ApiKey]:
        """The unrevoked keys whose stored prefix starts with ``prefix`` (``_`` and ``%``
        taken literally), of one merchant when ``merchant_id`` is given; oldest first."""
        statement = select(API_KEYS).where(
            API_KEYS.c.key_prefix.startswith(prefix, autoescape=True),
            API_KEYS.c.revoked_at.is_(None),
        )
        if merchant_id is not None:
            statement = statement.where(API_KEYS.c.merchant_id == merchant_id)
        return await self._all(statement)

    async def _one(self, statement: Any) -> ApiKey | None:
        row = (await self._session.execute(statement)).mappings().first()
        return None if row is None else api_key_from_row(row)

    async def _all(self, statement: Any) -> list[ApiKey]:
        ordered = statement.order_by(API_KEYS.c.created_at, API_KEYS.c.id)
        rows = (await self._session.execute(ordered)).mappings().all()
        return [api_key_from_row(row) for row in rows]

    def revoke(self, api_key: ApiKey, *, at: datetime) -> None:
        """Stage revoking the key."""
        self._batch.update(API_KEYS, where={"id": api_key.id}, values={"revoked_at": at})


class PaymentRepository(_Repository):
    """Payments with their refunds, scoped to the merchant that owns them."""

    def add(self, payment: Payment, *, reconcile_at: datetime | None = None) -> None:
        """Stage a new payment (inserted with the unit's write batch)."""
        values = payment_values(payment)
        if payment.status is PaymentStatus.PROCESSING:
            values["next_reconcile_at"] = reconcile_at or payment.created_at
        self._batch.insert(PAYMENTS, values)

    async def get_for_update(
        self, transaction_id: str, *, merchant_id: str | None
    ) -> Payment | None:
        """The payment with its refunds, row-locked to the end of the unit.

        The lock is taken by a statement of its own, and the refunds are read after it: a
        read joined to the lock would, after waiting for another unit holding it, see the
        payment row as that unit left it (READ COMMITTED re-reads only the locked row) but
        its refunds as they were before -- a refund settled twice."""
        any_merchant = merchant_id is None
        params = {"transaction_id": transaction_id, "merchant_id": merchant_id}
        locked = await self._session.execute(lock_payment(any_merchant=any_merchant), params)
        if locked.first() is None:
            return None
        result = await self._session.execute(
            payment_with_refunds(any_merchant=any_merchant), params
        )
        return payment_from_joined_rows(result.mappings().all())

    def update(
        self,
        payment: Payment,
        *,
        expected_status: PaymentStatus | None = None,
        reconcile_at: datetime | None = None,
    ) -> None:
        """Stage writing the payment's state; with ``expected_status`` only if the row
        still has it (the unit's commit raises ConcurrentUpdate otherwise)."""
        where: dict[str, Any] = {"transaction_id": payment.transaction_id}
        if expected_status is not None:
            where["status"] = expected_status.value
        values = payment_state_values(payment)
        unsettled = (
            payment.status is PaymentStatus.PROCESSING or payment.pending_operation is not None
        )
        if not unsettled:
            values["next_reconcile_at"] = None
        elif reconcile_at is not None:
            values["next_reconcile_at"] = reconcile_at
        self._batch.update(PAYMENTS, where=where, values=values, guard=expected_status is not None)

    async def claim_unsettled(
        self, *, now: datetime, lease: timedelta, limit: int
    ) -> list[Unsettled[Payment]]:
        """Lease up to ``limit`` processing payments due for reconciliation (one statement,
        SKIP LOCKED: concurrent claimers never get the same payment)."""
        rows = (
            await execute_alone(
                self._session,
                _CLAIM_UNSETTLED_PAYMENTS,
                {"now": now, "until": now + lease, "limit": limit},
            )
        ).mappings()
        return [Unsettled(payment_from_row(row), row["reconcile_attempts"]) for row in rows]

    async def claim_expiring(
        self, *, now: datetime, authorized_before: datetime, lease: timedelta, limit: int
    ) -> list[Payment]:
        """Record the expiry of up to ``limit`` authorizations made before
        ``authorized_before`` and still free (one statement, SKIP LOCKED): each now has an
        ``expire`` operation pending, leased for ``lease``."""
        rows = (
            await execute_alone(
                self._session,
                _CLAIM_EXPIRING,
                {
                    "now": now,
                    "until": now + lease,
                    "authorized_before": authorized_before,
                    "limit": limit,
                },
            )
        ).mappings()
        return [payment_from_row(row) for row in rows]

    def defer_reconciliation(
        self, transaction_id: str, *, at: datetime, operation_id: str | None = None
    ) -> None:
        """Stage: reconcile this payment again at ``at`` -- while it is still processing,
        or (with ``operation_id``) while that operation is still pending."""
        where: dict[str, Any] = {"transaction_id": transaction_id}
        if operation_id is None:
            where["status"] = PaymentStatus.PROCESSING.value
        else:
            where["pending_operation_id"] = operation_id
        self._batch.update(PAYMENTS, where=where, values={"next_reconcile_at": at})


class RefundRepository(_Repository):
    """Refunds against payments."""

    def add(self, refund: Refund, *, reconcile_at: datetime | None = None) -> None:
        """Stage a new refund."""
        values = refund_values(refund)
        if refund.status is RefundStatus.PENDING:
            values["next_reconcile_at"] = reconcile_at or refund.created_at
        self._batch.insert(REFUNDS, values)

    def update(self, refund: Refund, *, reconcile_at: datetime | None = None) -> None:
        """Stage writing the refund's outcome."""
        values = refund_state_values(refund)
        if refund.status is not RefundStatus.PENDING:
            values["next_reconcile_at"] = None
        elif reconcile_at is not None:
            values["next_reconcile_at"] = reconcile_at
        self._batch.update(REFUNDS, where={"refund_id": refund.refund_id}, values=values)

    async def claim_unsettled(
        self, *, now: datetime, lease: timedelta, limit: int
    ) -> list[Unsettled[Refund]]:
        """Lease up to ``limit`` pending refunds due for reconciliation (SKIP LOCKED)."""
        rows = (
            await execute_alone(
                self._session,
                _CLAIM_UNSETTLED_REFUNDS,
                {"now": now, "until": now + lease, "limit": limit},
            )
        ).mappings()
        return [Unsettled(refund_from_row(row), row["reconcile_attempts"]) for row in rows]

    def defer_reconciliation(self, refund_id: str, *, at: datetime) -> None:
        """Stage: reconcile this refund again at ``at`` (while it is still pending)."""
        self._batch.update(
            REFUNDS,
            where={"refund_id": refund_id, "status": RefundStatus.PENDING.value},
            values={"next_reconcile_at": at},
        )


def _claim_unsettled(table: Table, key: Column[Any], unsettled: ColumnElement[bool]) -> Any:
    due = (
        select(key)
        .where(unsettled, table.c.next_reconcile_at <= bindparam("now", type_=_AT))
        .order_by(table.c.next_reconcile_at)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    return (
        update(table)
        .where(key.in_(select(due.c[key.name])))
        .values(
            next_reconcile_at=bindparam("until", type_=_AT),
            reconcile_attempts=table.c.reconcile_attempts + 1,
        )
        .returning(table)
    )


_CLAIM_UNSETTLED_PAYMENTS = _claim_unsettled(
    PAYMENTS,
    PAYMENTS.c.transaction_id,
    or_(
        PAYMENTS.c.status == PaymentStatus.PROCESSING.value,
        PAYMENTS.c.pending_operation.is_not(None),
    ),
)
_CLAIM_UNSETTLED_REFUNDS = _claim_unsettled(
    REFUNDS, REFUNDS.c.refund_id, REFUNDS.c.status == RefundStatus.PENDING.value
)

_expiring = (
    select(PAYMENTS.c.transaction_id)
    .where(
        PAYMENTS.c.status == PaymentStatus.AUTHORIZED.value,
        PAYMENTS.c.pending_operation.is_(None),
        PAYMENTS.c.created_at < bindparam("authorized_before", type_=_AT),
    )
    .order_by(PAYMENTS.c.created_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
    .cte("expiring")
    .prefix_with("MATERIALIZED")
)
_CLAIM_EXPIRING = (
    update(PAYMENTS)
    .where(PAYMENTS.c.transaction_id.in_(select(_expiring.c.transaction_id)))
    .values(
        pending_operation=OperationKind.EXPIRE.value,
        # One expiry per payment at most: its id follows from the payment's.
        pending_operation_id=literal(f"{OPERATION_PREFIXES['expire']}_").concat(
            func.substr(PAYMENTS.c.transaction_id, 5)
        ),
        pending_operation_at=bindparam("now", type_=_AT),
        updated_at=bindparam("now", type_=_AT),
        next_reconcile_at=bindparam("until", type_=_AT),
        reconcile_attempts=0,
    )
    .returning(PAYMENTS)
)


_claim_insert = insert(IDEMPOTENCY_KEYS).values(
    merchant_id=bindparam("key_merchant_id"),
    idempotency_key=bindparam("key_key"),
    request_fingerprint=bindparam("key_fingerprint"),
    resource_id=bindparam("key_resource_id"),
    state=bindparam("key_state"),
    response_status=bindparam("key_response_status", type_=Integer),
    response_body=bindparam("key_response_body", type_=JSONB(none_as_null=True)),
    locked_until=bindparam("key_locked_until", type_=_AT),
    expires_at=bindparam("key_expires_at", type_=_AT),
    created_at=bindparam("key_now", type_=_AT),
)
CLAIM_IDEMPOTENCY_KEY = register_guard(
    "claim_idempotency_key",
    _claim_insert.on_conflict_do_update(
        index_elements=[IDEMPOTENCY_KEYS.c.merchant_id, IDEMPOTENCY_KEYS.c.idempotency_key],
        # Only an expired record is taken over (its purge has not run yet): a fresh claim.
        set_={
            column: _claim_insert.excluded[column]
            for column in (
                "request_fingerprint",
                "resource_id",
                "state",
                "response_status",
                "response_body",
                "locked_until",
                "expires_at",
                "created_at",
            )
        },
        where=IDEMPOTENCY_KEYS.c.expires_at < bindparam("key_now", type_=_AT),
    ).returning(IDEMPOTENCY_KEYS.c.resource_id),
)
"""The claim, as the guard of the statement that records what it protects."""


class IdempotencyRepository(_Repository):
    """Idempotency keys: a claim written with the attempt it protects, then the answer."""

    def claim(
        self,
        *,
        merchant_id: str,
        key: str,
        request_fingerprint: str,
        resource_id: str,
        now: datetime,
        lock_for: timedelta,
        keep_for: timedelta,
        answer: StoredAnswer | None = None,
    ) -> None:
        """Stage the claim as the condition of the unit's write batch (see the port)."""
        self._batch.guard_with(
            CLAIM_IDEMPOTENCY_KEY,
            {
                "key_merchant_id": merchant_id,
                "key_key": key,
                "key_fingerprint": request_fingerprint,
                "key_resource_id": resource_id,
                "key_state": "in_progress" if answer is None else "completed",
                "key_response_status": None if answer is None else answer.status,
                "key_response_body": None if answer is None else answer.body,
                "key_locked_until": now + lock_for,
                "key_expires_at": now + keep_for,
                "key_now": now,
            },
        )

    async def get(self, *, merchant_id: str, key: str) -> IdempotencyRecord | None:
        """The stored record for this merchant's key."""
        statement = select(IDEMPOTENCY_KEYS).where(
            IDEMPOTENCY_KEYS.c.merchant_id == merchant_id,
            IDEMPOTENCY_KEYS.c.idempotency_key == key,
        )
        row = (await execute_alone(self._session, statement)).mappings().first()
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

    def complete(self, *, merchant_id: str, key: str, answer: StoredAnswer) -> None:
        """Stage the answer that later retries replay (written with the unit of work)."""
        self._batch.update(
            IDEMPOTENCY_KEYS,
            where={"merchant_id": merchant_id, "idempotency_key": key},
            values={
                "state": "completed",
                "response_status": answer.status,
                "response_body": answer.body,
            },
        )

    def release(self, *, merchant_id: str, key: str) -> None:
        """Stage forgetting an in-progress claim whose request is not to be remembered."""
        self._batch.delete(
            IDEMPOTENCY_KEYS,
            where={"merchant_id": merchant_id, "idempotency_key": key, "state": "in_progress"},
        )

    async def take_over(
        self, *, merchant_id: str, key: str, request_fingerprint: str, now: datetime
    ) -> bool:
        """Forget a stale in-progress claim of the same request; whether one was there."""
        result = await execute_alone(
            self._session,
            delete(IDEMPOTENCY_KEYS).where(
                IDEMPOTENCY_KEYS.c.merchant_id == merchant_id,
                IDEMPOTENCY_KEYS.c.idempotency_key == key,
                IDEMPOTENCY_KEYS.c.state == "in_progress",
                IDEMPOTENCY_KEYS.c.locked_until < now,
                IDEMPOTENCY_KEYS.c.request_fingerprint == request_fingerprint,
            ),
        )
        return bool(getattr(result, "rowcount", 0))

    async def purge_expired(self, *, now: datetime, limit: int) -> int:
        """Delete up to ``limit`` records past their retention; how many."""
        return await _purge(
            self._session,
            IDEMPOTENCY_KEYS,
            IDEMPOTENCY_KEYS.c.expires_at < now,
            order_by=IDEMPOTENCY_KEYS.c.expires_at,
            limit=limit,
        )


async def _purge(
    session: AsyncSession, table: Table, condition: Any, *, order_by: Any, limit: int
) -> int:
    """``DELETE`` up to ``limit`` rows matching ``condition``, oldest first, skipping rows
    another purge has locked: purges in several processes never wait for each other, and
    each batch is a short statement of its own."""
    doomed = (
        select(table.c.id)
        .where(condition)
        .order_by(order_by)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("doomed")
        .prefix_with("MATERIALIZED")
    )
    result = await execute_alone(session, delete(table).where(table.c.id.in_(select(doomed.c.id))))
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


class OutboxRepository(_Repository):
    """Events waiting to be published, written in the same transaction as their change."""

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
        await execute_alone(
            self._session, _MARK_PUBLISHED, {"event_ids": list(event_ids), "at": at}
        )

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

    async def purge_published(self, *, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` events published before ``before``; how many."""
        return await _purge(
            self._session,
            OUTBOX,
            OUTBOX.c.published_at < before,
            order_by=OUTBOX.c.published_at,
            limit=limit,
        )


_refusal_insert = insert(AUTH_REFUSALS).values(
    window_start=bindparam("window_start", type_=_AT),
    source=bindparam("source"),
    reason=bindparam("reason"),
    attempts=1,
    first_seen_at=bindparam("at", type_=_AT),
    last_seen_at=bindparam("at", type_=_AT),
    last_correlation_id=bindparam("correlation_id"),
    details=bindparam("details", type_=JSONB),
)
_COUNT_REFUSAL = _refusal_insert.on_conflict_do_update(
    index_elements=[AUTH_REFUSALS.c.window_start, AUTH_REFUSALS.c.source, AUTH_REFUSALS.c.reason],
    set_={
        "attempts": AUTH_REFUSALS.c.attempts + 1,
        "last_seen_at": _refusal_insert.excluded.last_seen_at,
        "last_correlation_id": _refusal_insert.excluded.last_correlation_id,
        "details": _refusal_insert.excluded.details,
    },
)


class AuditLogRepository(_Repository):
    """The append-only audit trail; there is deliberately no update or delete here (the
    refusal counts in ``auth_refusals`` only ever grow)."""

    def append(self, entry: AuditEntry) -> None:
        """Stage an audit row, written atomically with the rest of the unit of work."""
        self._batch.insert(AUDIT_LOG, audit_values(entry))

    async def count_refused_authentication(
        self,
        *,
        source: str,
        reason: str,
        at: datetime,
        correlation_id: str | None,
        details: dict[str, Any],
    ) -> None:
        """Count a refusal in its (minute, source, reason) row: one upsert, at once."""
        await execute_alone(
            self._session,
            _COUNT_REFUSAL,
            {
                "window_start": at.replace(second=0, microsecond=0),
                "source": source[:64],
                "reason": reason[:32],
                "at": at,
                "correlation_id": correlation_id,
                "details": details,
            },
        )
