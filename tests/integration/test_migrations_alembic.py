"""The migration history on a scratch database of its own, on real PostgreSQL.

- pytest-alembic's standard tests: one head, base -> head, the models match the DDL the
  migrations build, every revision up and down one at a time;
- the session timeouts of migrations/env.py: set in every per-migration transaction and
  autocommit block, re-set after each revision, overridable, and biting: a migration that
  cannot get its lock gives up after lock_timeout instead of queueing behind a reader.

pytest-alembic's plugin is off (pyproject.toml): its tests are imported here and get
``alembic_runner`` from the fixture below. The database is created for this module and
dropped afterwards; each test starts from an empty schema.
"""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_alembic
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import Engine, create_engine, make_url, pool, text
from sqlalchemy.exc import OperationalError

from tests.conftest import _SERVER_URL

__all__ = [
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]

REPO = Path(__file__).resolve().parents[2]
# The server the suite's own database is on (tests/conftest.py), straight to PostgreSQL.
_SERVER = make_url(os.environ.get("TEST_DATABASE_URL") or f"{_SERVER_URL}/postgres").set(
    drivername="postgresql+psycopg2"
)
SCRATCH_DATABASE = f"payments_migrations_{os.getpid()}"


@pytest.fixture(autouse=True)
def _empty_tables() -> None:
    """Overrides the package's autouse fixture: nothing here uses the shared database."""


@pytest.fixture(scope="module")
def scratch_database_url() -> Iterator[str]:
    admin = create_engine(_SERVER.set(database="postgres"), isolation_level="AUTOCOMMIT")
    drop = text(f'DROP DATABASE IF EXISTS "{SCRATCH_DATABASE}" WITH (FORCE)')
    with admin.connect() as conn:
        conn.execute(drop)
        conn.execute(text(f'CREATE DATABASE "{SCRATCH_DATABASE}"'))
    try:
        yield _SERVER.set(database=SCRATCH_DATABASE).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(drop)
        admin.dispose()


@pytest.fixture
def alembic_engine(scratch_database_url: str) -> Iterator[Engine]:
    """pytest-alembic's handle on the scratch database, its schema empty."""
    engine = create_engine(scratch_database_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    yield engine
    engine.dispose()


def _alembic_ini(url: str | None = None, versions: Path | None = None) -> Config:
    cfg = Config(str(REPO / "alembic.ini"))
    cfg.attributes["configure_logger"] = False
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url)
    if versions is not None:  # the real env.py over revisions of a test's own
        cfg.set_main_option("version_locations", str(versions))
    return cfg


@pytest.fixture
def alembic_config(scratch_database_url: str) -> pytest_alembic.Config:
    # The URL too: should env.py ever not use the engine below, it still hits the scratch
    # database, never DATABASE_URL's.
    return pytest_alembic.Config.from_raw_config(_alembic_ini(scratch_database_url))


@pytest.fixture
def alembic_runner(
    alembic_config: pytest_alembic.Config, alembic_engine: Engine
) -> Iterator[pytest_alembic.MigrationContext]:
    with pytest_alembic.runner(config=alembic_config, engine=alembic_engine) as runner:
        yield runner


# -- the session timeouts ----------------------------------------------------------------

PROBE = (
    "INSERT INTO probe SELECT '{revision}', '{step}', current_setting('lock_timeout'), "
    "current_setting('statement_timeout')"
)


def _revision(folder: Path, revision: str, down: str | None, upgrade: str) -> None:
    body = textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")
    (folder / f"{revision}.py").write_text(
        f"from alembic import op\n\nrevision = {revision!r}\ndown_revision = {down!r}\n"
        f"branch_labels = None\ndepends_on = None\n\n\ndef upgrade() -> None:\n{body}\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


@pytest.fixture
def probe_history(tmp_path: Path) -> Path:
    """Three revisions that record the session's timeouts where they run."""
    _revision(
        tmp_path,
        "p1",
        None,
        f"""
        op.execute("CREATE TABLE probe (revision text, step text, lock text, statement text)")
        op.execute("{PROBE.format(revision="p1", step="transaction")}")
        """,
    )
    _revision(
        tmp_path,
        "p2",
        "p1",
        f"""
        with op.get_context().autocommit_block():
            op.execute("{PROBE.format(revision="p2", step="autocommit")}")
            op.execute("SET statement_timeout = 0")  # for a long CONCURRENTLY build
            op.create_index(
                "ix_probe_revision", "probe", ["revision"],
                postgresql_concurrently=True, if_not_exists=True,
            )
        """,
    )
    _revision(
        tmp_path, "p3", "p2", f'op.execute("{PROBE.format(revision="p3", step="transaction")}")'
    )
    return tmp_path


def _probed(engine: Engine) -> list[tuple[str, str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM probe ORDER BY revision")).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_every_revision_runs_under_the_default_timeouts(
    alembic_engine: Engine, scratch_database_url: str, probe_history: Path, monkeypatch
) -> None:
    monkeypatch.delenv("MIGRATION_LOCK_TIMEOUT", raising=False)
    monkeypatch.delenv("MIGRATION_STATEMENT_TIMEOUT", raising=False)
    command.upgrade(_alembic_ini(scratch_database_url, probe_history), "head")
    assert _probed(alembic_engine) == [
        ("p1", "transaction", "5s", "1min"),
        ("p2", "autocommit", "5s", "1min"),
        # p2 relaxed statement_timeout for its index build; env.py set it again after p2.
        ("p3", "transaction", "5s", "1min"),
    ]
    with alembic_engine.connect() as conn:
        valid = conn.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_probe_revision'::regclass")
        ).scalar_one()
    assert valid  # CREATE INDEX CONCURRENTLY ran, outside any transaction


def test_timeouts_are_overridden_by_x_arguments_then_environment_variables(
    alembic_engine: Engine, scratch_database_url: str, probe_history: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", "3s")
    monkeypatch.setenv("MIGRATION_STATEMENT_TIMEOUT", "2min")
    cfg = _alembic_ini(scratch_database_url, probe_history)
    cfg.cmd_opts = argparse.Namespace(x=["lock_timeout=750ms"])  # alembic -x lock_timeout=750ms
    command.upgrade(cfg, "head")
    assert {(lock, statement) for _, _, lock, statement in _probed(alembic_engine)} == {
        ("750ms", "2min")
    }


def test_env_py_takes_a_connection_from_the_caller(
    alembic_engine: Engine, scratch_database_url: str, probe_history: Path
) -> None:
    """``config.attributes["connection"]``: one per-migration transaction each, as with a
    URL; in the caller's own open transaction, everything stays in it."""
    cfg = _alembic_ini(versions=probe_history)
    with alembic_engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "p1")
        assert not conn.in_transaction()  # committed per migration
        assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "5s"
        conn.rollback()
    with alembic_engine.connect() as conn:
        cfg.attributes["connection"] = conn
        conn.execute(text("SELECT 1"))  # the caller's transaction is open
        command.downgrade(cfg, "base")
        assert conn.in_transaction()
        conn.rollback()
        assert MigrationContext.configure(conn).get_current_revision() == "p1"


def test_a_migration_gives_up_on_a_lock_it_cannot_get(
    alembic_engine: Engine, scratch_database_url: str, monkeypatch
) -> None:
    """0002 adds columns to outbox_events (ACCESS EXCLUSIVE). While a transaction that read
    the table is open, it waits lock_timeout, fails with LockNotAvailable and changes
    nothing; instead of waiting, and queueing every later query on the table behind it."""
    cfg = _alembic_ini(scratch_database_url)
    command.upgrade(cfg, "0001")
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", "300ms")
    with alembic_engine.connect() as reader:
        reader.execute(text("SELECT count(*) FROM outbox_events"))  # holds ACCESS SHARE
        started = time.monotonic()
        with pytest.raises(OperationalError) as failure:
            command.upgrade(cfg, "0002")
        waited = time.monotonic() - started
        reader.rollback()
    assert failure.value.orig is not None
    assert failure.value.orig.pgcode == "55P03"  # lock_not_available
    assert "lock timeout" in str(failure.value)
    assert waited < 3.0
    with alembic_engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0001"
    command.upgrade(cfg, "0002")  # the lock is free: it goes through
    with alembic_engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0002"


def test_a_statement_longer_than_statement_timeout_is_cancelled(
    scratch_database_url: str, alembic_engine: Engine, tmp_path: Path, monkeypatch
) -> None:
    _revision(tmp_path, "slow", None, 'op.execute("SELECT pg_sleep(5)")')
    monkeypatch.setenv("MIGRATION_STATEMENT_TIMEOUT", "200ms")
    started = time.monotonic()
    with pytest.raises(OperationalError) as failure:
        command.upgrade(_alembic_ini(scratch_database_url, tmp_path), "head")
    assert failure.value.orig is not None
    assert failure.value.orig.pgcode == "57014"  # query_canceled
    assert time.monotonic() - started < 3.0


def test_a_concurrent_build_that_times_out_leaves_an_invalid_index_to_drop_and_retry(
    scratch_database_url: str, alembic_engine: Engine, tmp_path: Path, monkeypatch
) -> None:
    """lock_timeout applies to CREATE INDEX CONCURRENTLY's wait for older transactions too
    (docs/deployment.md, "Building an index"): the build fails, leaves an INVALID index
    and no version stamp; dropping the index and upgrading again builds it."""
    _revision(tmp_path, "t1", None, 'op.execute("CREATE TABLE t (id int)")')
    _revision(
        tmp_path,
        "t2",
        "t1",
        """
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_t_id", "t", ["id"], postgresql_concurrently=True, if_not_exists=True
            )
        """,
    )
    cfg = _alembic_ini(scratch_database_url, tmp_path)
    command.upgrade(cfg, "t1")
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", "300ms")
    older = alembic_engine.connect().execution_options(isolation_level="REPEATABLE READ")
    try:
        older.execute(text("SELECT 1"))  # a snapshot older than the build, on no table of it
        with pytest.raises(OperationalError, match="lock timeout"):
            command.upgrade(cfg, "t2")
    finally:
        older.rollback()
        older.close()

    def index_valid() -> bool | None:
        with alembic_engine.connect() as conn:
            return conn.execute(  # type: ignore[no-any-return]
                text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_t_id'::regclass")
            ).scalar_one_or_none()

    assert index_valid() is False
    with alembic_engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "t1"
    with alembic_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("DROP INDEX CONCURRENTLY IF EXISTS ix_t_id"))
    command.upgrade(cfg, "t2")
    assert index_valid() is True
