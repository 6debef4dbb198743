"""The unit of work: one database transaction and the repositories that share it.

Use it as ``async with uow:``; nothing is kept unless ``await uow.commit()`` is called,
and any exception or early exit rolls back.

Writes are added to a :class:`~app.adapters.db.write_batch.WriteBatch` and sent together
as one statement at commit. A unit of work whose only work is that statement -- the
common case, a payment being recorded or settled -- commits it on its own, without
``BEGIN``/``COMMIT`` round trips: one statement is atomic by itself. That statement goes
straight to the pooled asyncpg connection (compiled once by SQLAlchemy, see
:func:`~app.adapters.db.engine.execute_on_driver`): no session, connection or execution
context is built for it.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.adapters.db.engine import driver_statement, execute_on_driver, single_statement_options
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

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory
        bind = session_factory.kw.get("bind")
        self._engine = bind if isinstance(bind, AsyncEngine) else None
        self._session: AsyncSession | None = None
        self._webhooks: WebhookRepository | None = None
        self._open = False
        self._committed = False
        self._batch = WriteBatch()

    @property
    def session(self) -> AsyncSession:
        """The unit's session (only inside ``async with``), opened on first use: a unit
        that only stages writes never builds one."""
        if not self._open:
            raise RuntimeError("the unit of work is not open")
        if self._session is None:
            self._session = self._session_factory()
        return self._session

    @property
    def webhooks(self) -> WebhookRepository:
        """Endpoints, recorded events, deliveries and attempts."""
        if self._webhooks is None:
            self._webhooks = WebhookRepository(self.session, self._batch)
        return self._webhooks

    async def __aenter__(self) -> Self:
        self._open = True
        self._session = None
        self._webhooks = None
        self._committed = False
        batch = self._batch = WriteBatch()
        session = self._session_source
        self.merchants = MerchantRepository(session, batch)
        self.api_keys = ApiKeyRepository(session, batch)
        self.payments = PaymentRepository(session, batch)
        self.refunds = RefundRepository(session, batch)
        self.idempotency = IdempotencyRepository(session, batch)
        self.outbox = OutboxRepository(session, batch)
        self.audit = AuditLogRepository(session, batch)
        return self

    def _session_source(self) -> AsyncSession:
        return self.session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self._session
        self._open = False
        self._session = self._webhooks = None
        if session is None:  # nothing was read, locked or left open
            self._batch.clear()
            return
        try:
            if not self._committed:
                await session.rollback()
        finally:
            self._batch.clear()
            await session.close()

    async def commit(self) -> None:
        """Make every staged change durable, atomically.

        Raises:
            ConcurrentUpdate: A conditional write's expectation did not hold; nothing of
                the unit was written.
        """
        if self._batch and (self._session is None or not self._session.in_transaction()):
            # Nothing else happened in this unit: its one statement needs no transaction.
            if await self._commit_alone():
                return
            session = self.session
            await session.connection(execution_options=single_statement_options(session.bind))
        if self._session is None:  # nothing staged, read or locked: nothing to commit
            self._committed = True
            return
        await self.flush()
        await self.session.commit()
        self._committed = True

    async def _commit_alone(self) -> bool:
        """Send the batch, the unit's only work, on a connection of its own; False when
        its statement needs SQLAlchemy's execution (nothing was sent then)."""
        if self._engine is None:
            return False
        batch = self._batch.statement()
        statement = driver_statement(self._engine, batch.statement)
        if statement is None:
            return False
        self._batch.clear()
        matched = await execute_on_driver(self._engine, statement, batch.params)
        if batch.guarded and not matched:
            raise ConcurrentUpdate("the row changed since it was read; nothing was written")
        self._committed = True
        return True

    async def rollback(self) -> None:
        """Discard every staged change."""
        self._batch.clear()
        if self._session is not None:
            await self._session.rollback()

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
