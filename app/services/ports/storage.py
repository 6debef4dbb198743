"""Storage, as the use cases see it: a unit of work over repositories of domain objects,
and single-statement queries for reads.

A unit of work is one database transaction: ``async with uow:`` opens it, nothing is kept
unless ``await uow.commit()`` is called, and any exception rolls back. Writes are staged
and sent together at commit; a write staged with an expectation (``expected_status``)
makes the whole commit conditional on it, and :class:`ConcurrentUpdate` says it did not
hold (then nothing of the unit was written).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self

from app.domain.audit import AuditEntry
from app.domain.merchants import ApiKey, Merchant
from app.domain.payments import Payment, PaymentStatus, Refund
from app.services.ports.messaging import OutboxRepository
from app.services.ports.webhooks import WebhookRepository


class ConcurrentUpdate(Exception):  # noqa: N818 - the vocabulary of the port
    """A conditional write found its row changed by someone else (or an idempotency key
    already taken); nothing of the unit was written."""


@dataclass(frozen=True, slots=True)
class Unsettled[T]:
    """An item the reconciler claimed, and how many times it has been claimed so far."""

    item: T
    attempts: int


@dataclass(frozen=True, slots=True)
class UnsettledBacklog:
    """What waits for the bank's answer: payments ``processing``, refunds ``pending``."""

    payments: int
    refunds: int
    oldest_age_s: float


@dataclass(frozen=True, slots=True)
class MerchantSummary:
    """A merchant as an operator lists it, with how many of its keys still authenticate."""

    merchant: Merchant
    active_keys: int


@dataclass(frozen=True, slots=True)
class PaymentFilter:
    """Which of a merchant's payments a listing shows: every condition given must hold.

    Attributes:
        status: Only payments in this status.
        created_gte: Only payments created at or after this instant.
        created_gt: Only payments created after this instant.
        created_lte: Only payments created at or before this instant.
        created_lt: Only payments created before this instant.
        metadata: Top-level metadata members each payment must have, each with exactly
            this string value.
    """

    status: PaymentStatus | None = None
    created_gte: datetime | None = None
    created_gt: datetime | None = None
    created_lte: datetime | None = None
    created_lt: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a page of a listing starts: next to one of the merchant's payments.

    Attributes:
        transaction_id: The payment the page starts next to (it is not on the page).
        newer: False: the payments just older than it (``starting_after``); True: the
            payments just newer than it (``ending_before``).
    """

    transaction_id: str
    newer: bool = False


@dataclass(frozen=True, slots=True)
class PaymentPage:
    """One page of a listing, newest first, and whether more match beyond it (older ones,
    or newer ones for a page of newer payments)."""

    payments: list[Payment]
    has_more: bool


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The answer an Idempotency-Key replays: an HTTP-like status (200 settled, 202 the
    bank's answer is still unknown) and the body."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What is stored for a merchant's Idempotency-Key.

    Attributes:
        request_fingerprint: Keyed digest of the request that first used the key.
        resource_id: The payment or refund id that request creates.
        completed: Whether the first request finished and its answer is stored.
        response_status: The stored answer's HTTP status.
        response_body: The stored answer's body.
        locked_until: Until when an unfinished first request is presumed running.
    """

    request_fingerprint: str
    resource_id: str
    completed: bool
    response_status: int | None
    response_body: dict[str, Any] | None
    locked_until: datetime


class MerchantRepository(Protocol):
    """Merchants (written only by the admin use cases)."""

    def add(self, merchant: Merchant) -> None:
        """Stage a new merchant."""
        ...

    async def get(self, merchant_id: str) -> Merchant | None:
        """The merchant, or None."""
        ...

    async def list_summaries(self) -> list[MerchantSummary]:
        """Every merchant (by id) with its number of unrevoked keys."""
        ...

    def update(self, merchant: Merchant, *, at: datetime) -> None:
        """Stage writing the merchant's status."""
        ...

    async def announce_change(self, merchant_id: str) -> None:
        """Tell every process, on commit, that this merchant or one of its keys changed."""
        ...


class ApiKeyRepository(Protocol):
    """API keys, looked up by their digest only."""

    def add(self, api_key: ApiKey) -> None:
        """Stage a new key."""
        ...

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this digest, revoked or not."""
        ...

    async def get(self, key_id: uuid.UUID) -> ApiKey | None:
        """The key with this id, revoked or not."""
        ...

    async def of_merchant(self, merchant_id: str) -> list[ApiKey]:
        """The merchant's keys, revoked or not, oldest first."""
        ...

    async def active_with_prefix(
        self, prefix: str, *, merchant_id: str | None = None
    ) -> list[ApiKey]:
        """The unrevoked keys whose stored prefix starts with ``prefix`` (taken literally),
        of one merchant when ``merchant_id`` is given; oldest first."""
        ...

    def revoke(self, api_key: ApiKey, *, at: datetime) -> None:
        """Stage revoking the key."""
        ...


class PaymentRepository(Protocol):
    """Payments with their refunds, scoped to the merchant that owns them (``None`` only
    for the service's own background work)."""

    def add(self, payment: Payment, *, reconcile_at: datetime | None = None) -> None:
        """Stage a new payment; a ``processing`` one is reconciled from ``reconcile_at``."""
        ...

    async def get_for_update(
        self, transaction_id: str, *, merchant_id: str | None
    ) -> Payment | None:
        """The payment with its refunds, row-locked until the unit ends."""
        ...

    def update(
        self,
        payment: Payment,
        *,
        expected_status: PaymentStatus | None = None,
        reconcile_at: datetime | None = None,
    ) -> None:
        """Stage writing the payment's state; with ``expected_status``, only if the stored
        row still has that status (else the commit raises :class:`ConcurrentUpdate`).
        A payment still ``processing`` is next reconciled at ``reconcile_at`` (when given);
        a settled one no longer is."""
        ...

    async def claim_unsettled(
        self, *, now: datetime, lease: timedelta, limit: int
    ) -> list[Unsettled[Payment]]:
        """At once (its own statement): up to ``limit`` ``processing`` payments due for
        reconciliation, each leased (not due again) for ``lease``; none twice at a time,
        whichever process asks."""
        ...

    async def claim_expiring(
        self, *, now: datetime, authorized_before: datetime, lease: timedelta, limit: int
    ) -> list[Payment]:
        """At once: record an ``expire`` operation on up to ``limit`` authorizations made
        before ``authorized_before`` with nothing pending, leased for ``lease`` (none
        twice, whichever process asks); the payments as they now are."""
        ...

    def defer_reconciliation(
        self, transaction_id: str, *, at: datetime, operation_id: str | None = None
    ) -> None:
        """Stage: ask the bank about this processing payment (or, with ``operation_id``,
        this pending operation) again at ``at``."""
        ...


class RefundRepository(Protocol):
    """Refunds, which belong to their payment."""

    def add(self, refund: Refund, *, reconcile_at: datetime | None = None) -> None:
        """Stage a new refund; a ``pending`` one is reconciled from ``reconcile_at``."""
        ...

    def update(self, refund: Refund, *, reconcile_at: datetime | None = None) -> None:
        """Stage writing the refund's outcome (a settled refund is no longer reconciled)."""
        ...

    async def claim_unsettled(
        self, *, now: datetime, lease: timedelta, limit: int
    ) -> list[Unsettled[Refund]]:
        """As :meth:`PaymentRepository.claim_unsettled`, for ``pending`` refunds."""
        ...

    def defer_reconciliation(self, refund_id: str, *, at: datetime) -> None:
        """Stage: ask the bank about this pending refund again at ``at``."""
        ...


class IdempotencyRepository(Protocol):
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
        """Stage the claim as the unit's condition: the commit raises
        :class:`ConcurrentUpdate` (and writes nothing) when the merchant already used the
        key and it has not expired. With ``answer``, the key is stored completed at once."""
        ...

    async def get(self, *, merchant_id: str, key: str) -> IdempotencyRecord | None:
        """The stored record for this merchant's key."""
        ...

    def complete(self, *, merchant_id: str, key: str, answer: StoredAnswer) -> None:
        """Stage the answer that later requests with the key replay."""
        ...

    def release(self, *, merchant_id: str, key: str) -> None:
        """Stage forgetting an unfinished claim whose request is not to be remembered."""
        ...

    async def take_over(
        self, *, merchant_id: str, key: str, request_fingerprint: str, now: datetime
    ) -> bool:
        """At once: forget an unfinished claim left past its lock by a request that kept
        nothing else; whether there was one to forget."""
        ...

    async def purge_expired(self, *, now: datetime, limit: int) -> int:
        """At once: delete up to ``limit`` records past their retention (rows another
        process is deleting are skipped); how many."""
        ...


class AuditLog(Protocol):
    """The append-only audit trail."""

    def append(self, entry: AuditEntry) -> None:
        """Stage an entry, written atomically with the rest of the unit."""
        ...

    async def count_refused_authentication(
        self,
        *,
        source: str,
        reason: str,
        at: datetime,
        correlation_id: str | None,
        details: dict[str, Any],
    ) -> None:
        """At once: count a refused authentication in its source's row for that minute
        and reason (one row per source, reason and minute, however many refusals)."""
        ...


class UnitOfWork(Protocol):
    """One database transaction and the repositories that share it."""

    @property
    def merchants(self) -> MerchantRepository: ...

    @property
    def api_keys(self) -> ApiKeyRepository: ...

    @property
    def payments(self) -> PaymentRepository: ...

    @property
    def refunds(self) -> RefundRepository: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def outbox(self) -> OutboxRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def webhooks(self) -> WebhookRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None:
        """Make every staged change durable, atomically.

        Raises:
            ConcurrentUpdate: A conditional write's expectation did not hold.
        """
        ...

    async def rollback(self) -> None:
        """Discard every staged change."""
        ...


class PaymentQueries(Protocol):
    """Reads that need no transaction: each is one statement, one snapshot."""

    async def payment(self, transaction_id: str, *, merchant_id: str) -> Payment | None:
        """The merchant's payment with its refunds (oldest first), or None."""
        ...

    async def merchant_for_key(self, key_hash: str) -> Merchant | None:
        """The merchant of the unrevoked API key with this digest, or None."""
        ...

    async def payment_page(
        self,
        *,
        merchant_id: str,
        filters: PaymentFilter,
        limit: int,
        cursor: PageCursor | None = None,
    ) -> PaymentPage | None:
        """Up to ``limit`` of the merchant's payments that match ``filters``, without
        their refunds, newest first in ``(created_at, transaction_id)`` order: the newest
        ones, or those right next to the cursor's payment. None when the cursor is not
        one of the merchant's payments."""
        ...

    async def unsettled_backlog(self) -> UnsettledBacklog:
        """How many payments and refunds wait for the bank's answer, and the oldest's age."""
        ...
