"""The unit of work: one database transaction and the repositories that share it.

Use it as ``async with uow:``; nothing is kept unless ``await uow.commit()`` is called,
and any exception or early exit rolls back.

Writes are added to a :class:`~app.adapters.db.write_batch.WriteBatch` and sent together
as one statement at commit. A unit of work whose only work is that statement -- the
common case, a payment being recorded -- commits it on its own, without
``BEGIN``/``COMMIT`` round trips: one statement is atomic by itself.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters.db.engine import single_statement_options
from app.adapters.db.repositories import (
    ApiKeyRepository,
    AuditLogRepository,
    IdempotencyRepository,
    MerchantRepository,
    OutboxRepository,
    PaymentRepository,
    RefundRepository,
)
from app.adapters.db.webhooks import WebhookRepository
from app.adapters.db.write_batch import WriteBatch
from app.services.ports import ConcurrentUpdate


class SqlUnitOfWork:
    """An async context manager owning one session and its transaction."""

    merchants: MerchantRepository
    api_keys: ApiKeyRepository
    payments: PaymentRepository
    refunds: RefundRepository
    idempotency: IdempotencyRepository
    outbox: OutboxRepository
    audit: AuditLogRepository
    webhooks: WebhookRepository

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory
        self._session: AsyncSession | None = None
        self._committed = False
        self._batch = WriteBatch()

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
        batch = self._batch = WriteBatch()
        self.merchants = MerchantRepository(session, batch)
        self.api_keys = ApiKeyRepository(session, batch)
        self.payments = PaymentRepository(session, batch)
        self.refunds = RefundRepository(session, batch)
        self.idempotency = IdempotencyRepository(session, batch)
        self.outbox = OutboxRepository(session, batch)
        self.audit = AuditLogRepository(session, batch)
        self.webhooks = WebhookRepository(session, batch)
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
            self._batch.clear()
            await session.close()
            self._session = None

    async def commit(self) -> None:
        """Make every staged change durable, atomically.

        Raises:
            ConcurrentUpdate: A conditional write's expectation did not hold; nothing of
                the unit was written.
        """
        session = self.session
        if self._batch and not session.in_transaction():
            # Nothing else happened in this unit: its one statement needs no transaction.
            await session.connection(execution_options=single_statement_options(session.bind))
        await self.flush()
        await session.commit()
        self._committed = True

    async def rollback(self) -> None:
        """Discard every staged change."""
        self._batch.clear()
        await self.session.rollback()

    async def flush(self) -> None:
        """Send the staged writes without committing (to surface constraint errors).

        Raises:
            ConcurrentUpdate: As :meth:`commit`.
        """
        if not self._batch:
            return
        batch = self._batch.statement()
        self._batch.clear()
        connection = await self.session.connection()
        result = await connection.execute(batch.statement, batch.params)
        if batch.guarded and not result.scalar_one():
            raise ConcurrentUpdate("the row changed since it was read; nothing was written")
