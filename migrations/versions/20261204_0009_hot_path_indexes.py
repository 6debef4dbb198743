"""Hot-path indexes: fewer index entries written per payment (issue 17, item 3).

A payment inserts its ``transactions`` row and updates it once (``processing`` to its
outcome); the update changes ``status`` and ``next_reconcile_at``, which indexes cover, so
it is never HOT and writes a new entry into every index of the table again. Measured with
``scripts/measure_wal.py`` (docs/performance.md), these indexes cost WAL and CPU on every
payment and serve no query of the service, the reconciler, expiry, the purger or the
listing:

- ``ix_transactions_merchant_id_created_at`` (0001): a prefix of 0006's
  ``ix_transactions_merchant_id_created_at_transaction_id``, which serves everything it did;
- ``ix_transactions_status`` (0001): a few distinct values; the queries by status use the
  listing's ``(merchant_id, status, ...)`` index or the reconciler's and expiry's partial
  indexes;
- ``ix_transactions_created_at`` (0001): replaced by ``ix_transactions_created_at_brin``, a
  BRIN index (a summary per 128 pages, next to nothing to maintain: rows are appended in
  ``created_at`` order), which keeps time-range queries by hand (docs/runbook.md: declines
  of the last 30 minutes) off a full scan;
- ``ix_audit_log_occurred_at`` (0001): ``audit_log`` is append-only, in ``occurred_at``
  order: replaced by the BRIN index ``ix_audit_log_occurred_at_brin`` for the same reason.

``idempotency_keys`` gets ``fillfactor = 70``. A key is inserted small (``in_progress``) and
updated once with the stored answer, which no index covers, so the update can be HOT (no
new index entries) if the row's page has room for the new version: full pages made a third
of them non-HOT, each writing new entries into the table's three indexes; with 30 % of
every new page kept free, 99.9 % were HOT in the measurement. It applies to pages filled
from now on (no rewrite), takes only ``SHARE UPDATE EXCLUSIVE`` (reads and writes go on)
and runs in the revision's transaction, under the migration's usual timeouts, before the
statements below.

The index statements run one by one outside a transaction (``CONCURRENTLY`` cannot run in
one); every statement is idempotent (``IF [NOT] EXISTS``): if one fails, drop any INVALID index it left
(``SELECT indexrelid::regclass FROM pg_index WHERE NOT indisvalid``) and run the upgrade
again. A BRIN index is created before the B-tree it replaces is dropped. Each statement
takes ``SHARE UPDATE EXCLUSIVE`` on its table and waits for the transactions older than
it (reads and writes go on); hence the generous ``lock_timeout`` and no
``statement_timeout`` inside the block (env.py restores both afterwards).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 10:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# name -> (table, columns) of the B-trees this revision drops, as 0001 created them.
DROPPED: dict[str, tuple[str, list[sa.ColumnElement[str] | str]]] = {
    "ix_transactions_merchant_id_created_at": (
        "transactions",
        ["merchant_id", sa.literal_column("created_at DESC")],
    ),
    "ix_transactions_status": ("transactions", ["status"]),
    "ix_transactions_created_at": ("transactions", ["created_at"]),
    "ix_audit_log_occurred_at": ("audit_log", ["occurred_at"]),
}
FILLFACTOR = {"idempotency_keys": 70}
# name -> (table, column) of the BRIN indexes that replace two of them.
BRIN: dict[str, tuple[str, str]] = {
    "ix_transactions_created_at_brin": ("transactions", "created_at"),
    "ix_audit_log_occurred_at_brin": ("audit_log", "occurred_at"),
}


def _no_timeouts_for_concurrent_ddl() -> None:
    # CONCURRENTLY blocks no reads or writes but waits for every older transaction: the
    # 5 s / 60 s defaults would only make it fail half-way.
    op.execute("SET lock_timeout = '10min'")
    op.execute("SET statement_timeout = 0")


def upgrade() -> None:
    # In the revision's own transaction, committed before the block (and rerun harmlessly
    # with it should the block fail).
    for table, fillfactor in FILLFACTOR.items():
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {fillfactor})")
    with op.get_context().autocommit_block():
        _no_timeouts_for_concurrent_ddl()
        for name, (table, column) in BRIN.items():
            op.create_index(
                name,
                table,
                [column],
                postgresql_using="brin",
                # Summarize each 128-page range as soon as it fills (an autovacuum work
                # item), not only when the table is next vacuumed: unsummarized ranges are
                # read whole by every scan.
                postgresql_with={"autosummarize": "on"},
                postgresql_concurrently=True,
                if_not_exists=True,
            )
        for name, (table, _) in DROPPED.items():
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    for table in FILLFACTOR:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    with op.get_context().autocommit_block():
        _no_timeouts_for_concurrent_ddl()
        for name, (table, columns) in DROPPED.items():
            op.create_index(name, table, columns, postgresql_concurrently=True, if_not_exists=True)
        for name, (table, _) in BRIN.items():
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
