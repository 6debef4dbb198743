"""Migration 0009: fewer indexes on the payment's hot path, and no query loses its index.

- On a scratch database of its own: 0009 drops ``ix_transactions_status``,
  ``ix_transactions_created_at``, ``ix_transactions_merchant_id_created_at`` and
  ``ix_audit_log_occurred_at``, adds two BRIN indexes in their place and keeps 30 % of
  ``idempotency_keys``' pages free; its downgrade builds the B-trees again, valid, drops
  the BRIN indexes and resets the fill factor; upgrading again is clean.
- On the suite's database, with a realistic volume of payments (tens of thousands, in
  ``created_at`` order as a live table fills, a few processing or authorized) and of audit
  rows, ANALYZEd: every statement the service runs on ``transactions`` outside the listing
  (tests/integration/test_listing_plans.py covers that) and outside the unit of work's
  writes by primary key reads it through an index that still exists, never sequentially,
  and the time ranges of docs/runbook.md read through the BRIN indexes.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.queries import _PAYMENT, _UNSETTLED
from app.adapters.db.repositories import _CLAIM_EXPIRING, _CLAIM_UNSETTLED_PAYMENTS
from tests.conftest import _admin_engine, alembic_config, truncate_all
from tests.integration.test_listing_plans import Explain, index_names, plan_nodes
from tests.integration.test_listing_plans import sequential_scans as seq_scans

DROPPED = {
    "ix_transactions_status",
    "ix_transactions_created_at",
    "ix_transactions_merchant_id_created_at",
    "ix_audit_log_occurred_at",
}
BRIN = {"ix_transactions_created_at_brin", "ix_audit_log_occurred_at_brin"}
PAYMENTS = 40_000
AUDIT_ROWS = 40_000
START = datetime(2026, 1, 1, tzinfo=UTC)
MERCHANT = "merchant_hot_path"
SCRATCH_DATABASE = f"payments_hot_indexes_{os.getpid()}"


# -- the migration, up and down ------------------------------------------------------------


@pytest.fixture(autouse=True)
def _empty_tables() -> None:
    """Instead of emptying the tables before each test: the plans run on the payments
    ``many_payments`` writes once for the module, the migration on a database of its own."""


@pytest.fixture(scope="module")
def scratch_database() -> Iterator[Engine]:
    """An empty database of this module's own (the suite's stays at head)."""
    admin = _admin_engine()
    drop = text(f'DROP DATABASE IF EXISTS "{SCRATCH_DATABASE}" WITH (FORCE)')
    with admin.connect() as conn:
        conn.execute(drop)
        conn.execute(text(f'CREATE DATABASE "{SCRATCH_DATABASE}"'))
    url = make_url(str(admin.url)).set(database=SCRATCH_DATABASE)
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(drop)
        admin.dispose()


def indexes(engine: Engine) -> dict[str, tuple[str, bool]]:
    """name -> (access method, valid) of every index on the two tables 0009 changes."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, am.amname, i.indisvalid FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
                " WHERE i.indrelid IN ('transactions'::regclass, 'audit_log'::regclass)"
            )
        ).all()
    return {name: (method, valid) for name, method, valid in rows}


def storage_options(engine: Engine) -> list[str] | None:
    """The storage parameters set on ``idempotency_keys``."""
    with engine.connect() as conn:
        options: list[str] | None = conn.execute(
            text("SELECT reloptions FROM pg_class WHERE oid = 'idempotency_keys'::regclass")
        ).scalar_one()
    return options


def test_0009_swaps_the_unused_btrees_for_brin_and_its_downgrade_restores_them(
    scratch_database: Engine,
) -> None:
    cfg = alembic_config(scratch_database.url.render_as_string(hide_password=False))
    command.upgrade(cfg, "0008")
    with scratch_database.begin() as conn:  # rows, so the builds have something to read
        conn.execute(
            text(
                "INSERT INTO audit_log (actor, action, resource_type, resource_id, outcome)"
                " SELECT 'admin-cli', 'merchant.created', 'merchant', 'm' || g, 'success'"
                " FROM generate_series(1, 500) g"
            )
        )
    before = indexes(scratch_database)
    assert before.keys() >= DROPPED
    assert not BRIN & before.keys()

    command.upgrade(cfg, "0009")
    upgraded = indexes(scratch_database)
    assert not DROPPED & upgraded.keys()
    assert {name: upgraded[name] for name in BRIN} == dict.fromkeys(BRIN, ("brin", True))
    assert upgraded.keys() == (before.keys() - DROPPED) | BRIN
    assert storage_options(scratch_database) == ["fillfactor=70"]

    command.downgrade(cfg, "0008")
    assert indexes(scratch_database) == before  # the same B-trees, all valid
    assert storage_options(scratch_database) is None

    command.upgrade(cfg, "head")
    assert indexes(scratch_database).keys() >= BRIN


def test_the_suite_database_at_head_has_none_of_the_dropped_indexes(
    migrated_database: str,
) -> None:
    engine = create_engine(migrated_database)
    try:
        found = indexes(engine)
    finally:
        engine.dispose()
    assert not DROPPED & found.keys()
    assert found.keys() >= BRIN


# -- every query on the hot tables still has its index --------------------------------------


@pytest.fixture(scope="module")
async def many_payments(engine: AsyncEngine) -> AsyncIterator[None]:
    """PAYMENTS payments of one merchant, one a minute from START, nearly all captured or
    declined; one in 200 still processing (a reconciliation due) and one in 50 authorized
    and waiting for its capture; AUDIT_ROWS audit rows, one a minute, a tenth by the
    reconciler."""
    await truncate_all(engine)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO merchants (merchant_id, name, currencies)"
                " VALUES (:m, 'Hot path', ARRAY['USD'])"
            ),
            {"m": MERCHANT},
        )
        await conn.execute(
            text(
                "INSERT INTO transactions (transaction_id, merchant_id, amount_minor, currency,"
                " status, capture_method, payment_method, card_brand, card_last4,"
                " card_exp_month, card_exp_year, card_fingerprint, card_ciphertext,"
                " next_reconcile_at, created_at, updated_at)"
                " SELECT 'txn_' || md5(i::text), :m, 1000 + i, 'USD',"
                " CASE WHEN i % 200 = 0 THEN 'processing' WHEN i % 50 = 1 THEN 'authorized'"
                " WHEN i % 10 = 3 THEN 'declined' ELSE 'captured' END,"
                " CASE WHEN i % 50 = 1 THEN 'manual' ELSE 'automatic' END,"
                " 'credit_card', 'visa', '4242', 12, 2030, md5(i::text) || md5(i::text),"
                " 'ciphertext',"
                " CASE WHEN i % 200 = 0 THEN CAST(:start AS timestamptz) + i * interval '1 minute'"
                " END,"
                " CAST(:start AS timestamptz) + i * interval '1 minute',"
                " CAST(:start AS timestamptz) + i * interval '1 minute'"
                " FROM generate_series(1, :n) AS i"
            ),
            {"m": MERCHANT, "n": PAYMENTS, "start": START},
        )
        await conn.execute(
            text(
                "INSERT INTO audit_log (occurred_at, actor, action, resource_type, resource_id,"
                " outcome)"
                " SELECT CAST(:start AS timestamptz) + i * interval '1 minute',"
                " CASE WHEN i % 10 = 0 THEN 'reconciler' ELSE 'merchant:' || :m END,"
                " 'payment.processed', 'payment', 'txn_' || md5(i::text), 'success'"
                " FROM generate_series(1, :n) AS i"
            ),
            {"m": MERCHANT, "n": AUDIT_ROWS, "start": START},
        )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        # What autovacuum does to a table that grows: statistics, and BRIN summaries.
        await conn.execute(text("VACUUM ANALYZE transactions, audit_log, refunds"))
    yield
    await truncate_all(engine)


class ExplainWrite(Explain):
    """``EXPLAIN`` of an ``UPDATE``: the compiler asks the outermost statement of a write
    whether its values are inline."""

    inherit_cache = False
    _inline = False


async def plan(engine: AsyncEngine, statement: Any, params: dict[str, Any]) -> list[Any]:
    """The plan's nodes of ``statement`` with ``params`` bound as the adapter binds them."""
    explain = ExplainWrite(statement) if getattr(statement, "is_dml", False) else Explain(statement)
    async with engine.connect() as conn:
        raw = (await conn.execute(explain, params)).scalar_one()
    document = json.loads(raw) if isinstance(raw, str) else raw
    return list(plan_nodes(document[0]["Plan"]))


LATEST = START + timedelta(minutes=PAYMENTS)
STATEMENTS: dict[str, tuple[Any, dict[str, Any], set[str]]] = {
    "a payment read by id": (
        _PAYMENT,
        {"transaction_id": "txn_" + "0" * 32, "merchant_id": MERCHANT},
        {"pk_transactions"},
    ),
    "the reconciler's claim of payments": (
        _CLAIM_UNSETTLED_PAYMENTS,
        {"now": LATEST, "until": LATEST + timedelta(minutes=1), "limit": 50},
        {"ix_transactions_reconcile_due"},
    ),
    "the expiry of old authorizations": (
        _CLAIM_EXPIRING,
        {
            "authorized_before": START + timedelta(days=7),
            "now": LATEST,
            "until": LATEST + timedelta(minutes=1),
            "limit": 50,
        },
        {"ix_transactions_authorized_created_at"},
    ),
    "the unsettled backlog (readiness and metrics)": (
        _UNSETTLED,
        {},
        {"ix_transactions_reconcile_due"},
    ),
}


@pytest.mark.usefixtures("many_payments")
@pytest.mark.parametrize("kind", list(STATEMENTS))
async def test_every_statement_on_the_hot_tables_reads_through_an_index(
    engine: AsyncEngine, kind: str
) -> None:
    statement, params, expected = STATEMENTS[kind]

    nodes = await plan(engine, statement, params)

    assert not {"transactions", "audit_log"} & set(seq_scans(nodes)), nodes
    assert expected <= index_names(nodes), nodes
    assert not DROPPED & index_names(nodes)


RUNBOOK_RANGES = {
    # docs/runbook.md, "declines by merchant in the last 30 minutes"
    "recent declines": (
        "SELECT merchant_id, decline_code, count(*) FROM transactions"
        " WHERE status = 'declined' AND created_at > :since GROUP BY 1, 2",
        "ix_transactions_created_at_brin",
    ),
    # docs/runbook.md, "what the reconciler did in the last day"
    "the reconciler's audit trail": (
        "SELECT action, outcome, count(*) FROM audit_log"
        " WHERE actor = 'reconciler' AND occurred_at > :since GROUP BY 1, 2",
        "ix_audit_log_occurred_at_brin",
    ),
}


@pytest.mark.usefixtures("many_payments")
@pytest.mark.parametrize("kind", list(RUNBOOK_RANGES))
async def test_a_recent_time_range_reads_through_the_brin_index(
    engine: AsyncEngine, kind: str
) -> None:
    query, index = RUNBOOK_RANGES[kind]

    nodes = await plan(engine, text(query), {"since": LATEST - timedelta(hours=1)})

    assert seq_scans(nodes) == [], nodes
    assert index in index_names(nodes), nodes


@pytest.mark.usefixtures("many_payments")
async def test_the_sample_is_big_enough_for_the_planner_to_care(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT min(reltuples) FROM pg_class"
                    " WHERE relname IN ('transactions', 'audit_log')"
                )
            )
        ).scalar_one()

    assert rows >= min(PAYMENTS, AUDIT_ROWS) * 0.9
