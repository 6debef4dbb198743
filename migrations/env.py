"""Alembic environment: migrations run synchronously over psycopg2.

The URL is the service's own DATABASE_URL (asyncpg) with the driver swapped, unless the
caller passes a connection (or an engine) in ``config.attributes["connection"]`` or a URL
in ``sqlalchemy.url``.

Every migration runs in its own transaction, online and in ``--sql`` mode, and under two
session timeouts (docs/deployment.md, "Migrations"):

- ``lock_timeout`` (default 5s): a DDL statement that cannot get its lock within that time
  fails instead of queueing every query on the table behind it;
- ``statement_timeout`` (default 60s): no single statement runs longer than that.

Override them with ``alembic -x lock_timeout=2s -x statement_timeout=5min ...`` or the
environment variables MIGRATION_LOCK_TIMEOUT / MIGRATION_STATEMENT_TIMEOUT (``-x`` wins;
``0`` disables one). They are session settings (``SET``, not ``SET LOCAL``), so they hold
in every per-migration transaction and in ``autocommit_block()``s; they are set again at
the end of every revision, so a migration that relaxes one for a long non-blocking step
(``CREATE INDEX CONCURRENTLY``) does not relax it for the revisions after it.
"""

from __future__ import annotations

import os
import re
from logging import getLogger
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import Connection

from app.adapters.db.models import Base
from app.core.config import DatabaseSettings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
log = getLogger("alembic.env")

target_metadata = Base.metadata

# name -> (default, environment variable). -x <name>=... overrides both.
TIMEOUTS = {
    "lock_timeout": ("5s", "MIGRATION_LOCK_TIMEOUT"),
    "statement_timeout": ("60s", "MIGRATION_STATEMENT_TIMEOUT"),
}
# A PostgreSQL duration: a number with an optional unit (milliseconds without one).
_DURATION = re.compile(r"\d+(?:\.\d+)?\s*(?:us|ms|s|min|h|d)?")


def _timeout(name: str) -> str:
    default, variable = TIMEOUTS[name]
    x_args = context.get_x_argument(as_dictionary=True)
    value = (x_args.get(name) or os.environ.get(variable) or default).strip()
    if not _DURATION.fullmatch(value):
        raise CommandError(
            f"{name}={value!r} (-x {name}=... or {variable}) is not a PostgreSQL duration "
            "such as 500ms, 5s, 2min or 0"
        )
    return value


def timeout_statements() -> list[str]:
    """``SET`` statements for the session every migration runs in."""
    return [f"SET {name} = '{_timeout(name)}'" for name in TIMEOUTS]


def _reset_timeouts(ctx: MigrationContext, **_: Any) -> None:
    """After each revision (in its transaction): the configured values again."""
    for statement in timeout_statements():
        ctx.execute(statement)


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or DatabaseSettings().sync_database_url


def run_migrations_offline() -> None:
    """Emit SQL for DBAs to review (``alembic upgrade head --sql``)."""
    statements = timeout_statements()
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
        transaction_per_migration=True,
        on_version_apply=_reset_timeouts,
    )
    context.get_context().impl.static_output(
        "-- Session settings for every migration (migrations/env.py; override with "
        "-x lock_timeout=... -x statement_timeout=...)."
    )
    for statement in statements:
        context.execute(statement)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    # Session-level SETs: they outlive each per-migration COMMIT. Committed at once unless
    # the caller's own transaction is open: alembic treats a connection that is already in
    # a transaction as the caller's, and would not begin and commit one per migration.
    in_callers_transaction = connection.in_transaction()
    statements = timeout_statements()
    for statement in statements:
        connection.execute(text(statement))
    if not in_callers_transaction:
        connection.commit()
    log.info("Session settings: %s", "; ".join(statements))
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
        on_version_apply=_reset_timeouts,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Apply migrations over a real psycopg2 connection: the caller's if it gave one (a
    Connection, or an Engine or anything else with ``connect()``), else one of our own."""
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    connectable = given if given is not None else create_engine(_url(), poolclass=pool.NullPool)
    with connectable.connect() as conn:
        _run(conn)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
