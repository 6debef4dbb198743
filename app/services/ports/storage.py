"""Storage, as the use cases see it: a unit of work over repositories of domain objects,
and single-statement queries for reads.

A unit of work is one database transaction: ``async with uow:`` opens it, nothing is kept
unless ``await uow.commit()`` is called, and any exception rolls back. Writes are staged
and sent together at commit; a write staged with an expectation (``expected_status``)
makes the whole commit conditional on it, and :class:`ConcurrentUpdate` says it did not
hold (then nothing of the unit was written).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self

from app.domain.audit import AuditEntry
from app.domain.merchants import ApiKey, Merchant
from app.domain.payments import Payment, PaymentStatus, Refund
from app.services.ports.messaging import OutboxRepository


class ConcurrentUpdate(Exception):  # noqa: N818 - the vocabulary of the port
    """A conditional write found its row changed by someone else; nothing was written."""


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

    def revoke(self, api_key: ApiKey, *, at: datetime) -> None:
        """Stage revoking the key."""
        ...


class PaymentRepository(Protocol):
    """Payments with their refunds, always scoped to the merchant that owns them."""

    def add(self, payment: Payment) -> None:
        """Stage a new payment."""
        ...

    async def get_for_update(self, transaction_id: str, *, merchant_id: str) -> Payment | None:
        """The merchant's payment with its refunds, row-locked until the unit ends."""
        ...

    def update(self, payment: Payment, *, expected_status: PaymentStatus | None = None) -> None:
        """Stage writing the payment's state; with ``expected_status``, only if the stored
        row still has that status (else the commit raises :class:`ConcurrentUpdate`)."""
        ...


class RefundRepository(Protocol):
    """Refunds, which belong to their payment."""

    def add(self, refund: Refund) -> None:
        """Stage a new refund."""
        ...

    def update(self, refund: Refund) -> None:
        """Stage writing the refund's outcome."""
        ...


class IdempotencyRepository(Protocol):
    """Idempotency keys: an atomic claim, then the stored answer."""

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
        """Claim the key at once (its own statement) and return its resource id; ``None``
        when another request holds or used the key.

        A claim left behind by a crashed request (unfinished past ``locked_until``, same
        fingerprint) is taken over with the resource id it had; an expired record starts
        afresh.
        """
        ...

    async def get(self, *, merchant_id: str, key: str) -> IdempotencyRecord | None:
        """The stored record for this merchant's key."""
        ...

    def complete(self, *, merchant_id: str, key: str, status: int, body: dict[str, Any]) -> None:
        """Stage the answer that later requests with the key replay."""
        ...

    async def release(self, *, merchant_id: str, key: str) -> None:
        """Forget an unfinished claim whose request is not to be remembered."""
        ...


class AuditLog(Protocol):
    """The append-only audit trail."""

    def append(self, entry: AuditEntry) -> None:
        """Stage an entry, written atomically with the rest of the unit."""
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
