"""The pooled async engine and its session factory, configured once per process."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import sqlalchemy.exc
from sqlalchemy import event, make_url, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.util import greenlet_spawn

from app.core.config import Settings
from app.core.jsoncodec import dump_json, load_json


def build_engine(settings: Settings, *, application_name: str = "payment-service") -> AsyncEngine:
    """Create the asyncpg engine with the pool, timeouts and JSON codec from settings."""
    url = make_url(settings.database_url)
    connect_args: dict[str, Any] = {
        "command_timeout": settings.db_command_timeout_s,
        "statement_cache_size": settings.db_statement_cache_size,
        "server_settings": {"application_name": application_name},
    }
    if settings.db_statement_cache_size == 0:
        # Behind a transaction pooler (PgBouncer, pool_mode=transaction) consecutive
        # transactions of one connection may run on different server backends, so no
        # prepared statement may be reused after its transaction: asyncpg's cache and
        # SQLAlchemy's are both off, and the statements SQLAlchemy still prepares (to learn
        # the result columns) get names no other client can have taken on that backend.
        url = url.update_query_dict({"prepared_statement_cache_size": "0"})
        connect_args["prepared_statement_name_func"] = _unique_statement_name
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_recycle=settings.db_pool_recycle_s,
        # No round-trip ping per checkout (it cost three: BEGIN, ";", ROLLBACK); closed
        # connections are discarded at checkout instead, see below.
        pool_pre_ping=False,
        # Bound values (ciphertexts, fingerprints, metadata) never reach an error message.
        hide_parameters=True,
        json_serializer=dump_json,
        json_deserializer=load_json,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine, "checkout", discard_closed_connection)
    return engine


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def behind_transaction_pooler(bind: AsyncEngine | AsyncConnection | None) -> bool:
    """Whether ``bind`` was built for a transaction pooler (``DB_STATEMENT_CACHE_SIZE=0``).

    There, a statement in autocommit cannot work: SQLAlchemy prepares it (one round trip,
    one implicit transaction) before executing it (another), and PgBouncer may hand the
    two to different server backends, the second of which never saw the statement.
    """
    engine = bind.engine if isinstance(bind, AsyncConnection) else bind
    return engine is not None and engine.url.query.get("prepared_statement_cache_size") == "0"


def single_statement_options(bind: AsyncEngine | AsyncConnection | None) -> dict[str, Any]:
    """Execution options for a statement that needs no transaction: autocommit (no
    ``BEGIN``/``COMMIT`` round trips), except behind a transaction pooler."""
    return {} if behind_transaction_pooler(bind) else {"isolation_level": "AUTOCOMMIT"}


async def execute_alone(
    session: AsyncSession, statement: Executable, params: Mapping[str, Any] | None = None
) -> CursorResult[Any]:
    """Execute one statement, durable at once when nothing else happened in the unit.

    Inside the unit's transaction it is part of it. Otherwise it is atomic on its own:
    in autocommit, or, behind a transaction pooler, in a transaction of its own that is
    committed at once (the rows are already fetched: the result stays readable).
    """
    if session.in_transaction():
        return await (await session.connection()).execute(statement, params)
    options = single_statement_options(session.bind)
    connection = await session.connection(execution_options=options)
    result = await connection.execute(statement, params)
    if not options:
        await session.commit()
    return result


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement compiled once by SQLAlchemy for asyncpg: its SQL text, and how to turn
    named parameters into asyncpg's positional arguments (the same bind processors --
    JSON through the app's codec -- SQLAlchemy applies)."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for ``params`` (every bound name must be given)."""
        return [
            params[name] if process is None else process(params[name])
            for name, process in zip(self.names, self.processors, strict=True)
        ]


_DRIVER_STATEMENTS_MAX = 512
_driver_statements: dict[tuple[int, int], tuple[Executable, DriverStatement | None]] = {}


def driver_statement(engine: AsyncEngine, statement: Executable) -> DriverStatement | None:
    """``statement`` compiled for ``engine``'s asyncpg connections, once per statement
    object; None when it needs SQLAlchemy's execution context (Python-side column
    defaults, expanding or literal parameters)."""
    key = (id(engine.dialect), id(statement))
    cached = _driver_statements.get(key)
    if cached is not None and cached[0] is statement:
        return cached[1]
    compiled: Any = cast(ClauseElement, statement).compile(dialect=engine.dialect)
    usable = (
        compiled.positional
        and not compiled.insert_prefetch
        and not compiled.update_prefetch
        and not compiled.literal_execute_params
        and not compiled.post_compile_params
        and not compiled.escaped_bind_names
    )
    result = None
    if usable:
        names = tuple(compiled.positiontup)
        processors = compiled._bind_processors  # what SQLAlchemy applies, too
        result = DriverStatement(
            compiled.string, names, tuple(processors.get(name) for name in names)
        )
    if len(_driver_statements) >= _DRIVER_STATEMENTS_MAX:
        _driver_statements.clear()
    # The statement is kept with its entry, so its id is not reused while cached.
    _driver_statements[key] = (statement, result)
    return result


async def execute_on_driver(
    engine: AsyncEngine, statement: DriverStatement, params: Mapping[str, Any]
) -> Any:
    """Run one statement on its own, atomically, on a pooled connection's asyncpg
    connection; returns its first column of its first row (None without rows).

    The hot path's statements skip SQLAlchemy's session, connection and execution context
    (half of a payment's CPU went there for two statements). The statement is atomic by
    itself: autocommit, except behind a transaction pooler, where it runs in a
    transaction of its own (asyncpg prepares and executes in separate round trips, which
    the pooler may send to different server backends). Errors look the same as through
    SQLAlchemy: a PostgreSQL error raises the matching ``sqlalchemy.exc.DBAPIError``
    (``IntegrityError``, ...), and a connection that failed any other way is invalidated.
    """
    arguments = statement.arguments(params)
    pooled = await greenlet_spawn(engine.sync_engine.raw_connection)
    try:
        driver: asyncpg.Connection = pooled.driver_connection
        if behind_transaction_pooler(engine):
            async with driver.transaction():
                return await driver.fetchval(statement.sql, *arguments)
        return await driver.fetchval(statement.sql, *arguments)
    except asyncpg.PostgresError as exc:
        raise _as_sqlalchemy_error(engine, statement.sql, exc) from exc
    except BaseException:
        await greenlet_spawn(pooled.invalidate)
        raise
    finally:
        await greenlet_spawn(pooled.close)


def _as_sqlalchemy_error(
    engine: AsyncEngine, sql: str, exc: asyncpg.PostgresError
) -> sqlalchemy.exc.StatementError:
    dbapi = engine.dialect.loaded_dbapi
    try:
        # How SQLAlchemy itself turns an asyncpg error into its DBAPI exception.
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(dbapi, exc)
    except dbapi.Error as adapted:
        return sqlalchemy.exc.DBAPIError.instance(
            sql, None, adapted, dbapi.Error, hide_parameters=True, dialect=engine.dialect
        )
    raise AssertionError("unreachable: the adapter always raises")  # pragma: no cover


def discard_closed_connection(
    _dbapi_connection: Any, _record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    """Pool checkout hook: hand out no connection the server has already closed.

    When PostgreSQL restarts or terminates a backend it closes the socket, and asyncpg
    marks the connection closed as soon as the event loop reads the end of the stream --
    a local check, no round trip. Raising ``DisconnectionError`` here makes the pool
    throw the connection away and check out (or open) another. A connection lost
    without the server closing it (a network partition) is caught by the statement
    timeout instead, and SQLAlchemy then invalidates every older connection of the pool.
    """
    if proxy.driver_connection is not None and proxy.driver_connection.is_closed():
        raise DisconnectionError("the database closed this pooled connection")


def build_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit, so responses can be built from them."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def ping(engine: AsyncEngine) -> None:
    """One round trip to the database (``SELECT 1``); raises when it cannot be made."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


_UNREACHABLE = (
    OSError,  # connection refused, reset, unreachable (asyncpg raises them as they are)
    TimeoutError,  # connecting or a statement took longer than its timeout
    asyncpg.exceptions.CannotConnectNowError,  # starting up or shutting down
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionFailureError,
)


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (or no pooled connection is
    free) rather than that a statement was wrong: a 503 to retry, not a 500.

    Looks through SQLAlchemy's wrapping (``DBAPIError.orig``) and the exception chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.TimeoutError):
            return True  # QueuePool: every connection is busy
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            if current.connection_invalidated:
                return True
            if isinstance(current.orig, BaseException) and _unreachable(current.orig):
                return True
        elif _unreachable(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, _UNREACHABLE)
