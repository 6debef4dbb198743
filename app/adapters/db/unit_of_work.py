"""The unit of work: one database transaction and the repositories that share it.

Use it as ``async with uow:``; nothing is kept unless ``await uow.commit()`` is called,
and any exception or early exit rolls back.

New payments, refunds, outbox events, audit entries and idempotency answers are *staged*
(:mod:`app.adapters.db.staging`) and written together as one statement at flush or
commit. A unit of work whose only work is that statement -- the common case, a payment
being recorded -- commits it on its own, without ``BEGIN``/``COMMIT`` round trips: one
statement is atomic by itself.
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
from app.adapters.db.staging import StagedWrites


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
        self._staged = StagedWrites()

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
        staged = self._staged = StagedWrites()
        self.merchants = MerchantRepository(session)
        self.api_keys = ApiKeyRepository(session)
        self.payments = PaymentRepository(session, staged)
        self.refunds = RefundRepository(staged)
        self.idempotency = IdempotencyRepository(session, staged)
        self.outbox = OutboxRepository(session, staged)
        self.audit = AuditLogRepository(staged)
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
            self._staged.clear()
            await session.close()
            self._session = None

    async def without_transaction(self) -> None:
        """Run each statement of this unit on its own (autocommit).

        For units whose work is one atomic statement (claiming an idempotency key): it
        saves the ``BEGIN`` and ``COMMIT`` round trips. Call it before any statement.
        """
        await self.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})

    async def commit(self) -> None:
        """Make every staged change durable, atomically."""
        session = self.session
        if self._staged and not session.in_transaction() and not _orm_pending(session):
            # Nothing else happened in this unit: its one statement needs no transaction.
            await self.without_transaction()
        await self.flush()
        await session.commit()
        self._committed = True

    async def rollback(self) -> None:
        """Discard every staged change."""
        self._staged.clear()
        await self.session.rollback()

    async def flush(self) -> None:
        """Send staged changes to the database without committing (to surface constraint errors)."""
        session = self.session
        await session.flush()
        if self._staged:
            statement, params = self._staged.statement()
            connection = await session.connection()
            await connection.execute(statement, params)
            self._staged.clear()


def _orm_pending(session: AsyncSession) -> bool:
    return bool(session.new or session.dirty or session.deleted)
