"""The unit of work: one database transaction and the repositories that share it.

Use it as ``async with uow:``; nothing is kept unless ``await uow.commit()`` is called,
and any exception or early exit rolls back.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.db.repositories import (
    ApiKeyRepository,
    AuditLogRepository,
    IdempotencyRepository,
    MerchantRepository,
    OutboxRepository,
    PaymentRepository,
    RefundRepository,
)


class UnitOfWork:
    """An async context manager owning one session and its transaction."""

    merchants: MerchantRepository
    api_keys: ApiKeyRepository
    payments: PaymentRepository
    refunds: RefundRepository
    idempotency: IdempotencyRepository
    outbox: OutboxRepository
    audit: AuditLogRepository

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory
        self._session: AsyncSession | None = None
        self._committed = False

    @property
    def session(self) -> AsyncSession:
        """The open session (only inside ``async with``)."""
        if self._session is None:
            raise RuntimeError("the unit of work is not open")
        return self._session

    async def __aenter__(self) -> Self:
        session = self._session_factory()
        self._session = session
        self._committed = False
        self.merchants = MerchantRepository(session)
        self.api_keys = ApiKeyRepository(session)
        self.payments = PaymentRepository(session)
        self.refunds = RefundRepository(session)
        self.idempotency = IdempotencyRepository(session)
        self.outbox = OutboxRepository(session)
        self.audit = AuditLogRepository(session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self.session
        try:
            if not self._committed:
                await session.rollback()
        finally:
            await session.close()
            self._session = None

    async def commit(self) -> None:
        """Make every staged change durable, atomically."""
        await self.session.commit()
        self._committed = True

    async def rollback(self) -> None:
        """Discard every staged change."""
        await self.session.rollback()

    async def flush(self) -> None:
        """Send staged changes to the database without committing (to surface constraint errors)."""
        await self.session.flush()
