"""Record before the bank: reservations, reconciliation schedules, retention, refusals.

- ``transactions.refund_pending_minor``: what pending refunds have reserved; the CHECK
  ``refunded_minor + refund_pending_minor <= amount_minor`` makes an over-refund
  impossible even for a buggy writer.
- ``transactions`` / ``refunds``: ``next_reconcile_at`` and ``reconcile_attempts`` -- when
  the reconciler next asks the bank about an unsettled item, and how often it has -- with
  partial indexes over the unsettled rows only (``processing`` / ``pending``).
- ``refunds.updated_at``; ``audit_log`` outcome ``pending`` (an attempt recorded before
  its outcome is known); ``idempotency_keys.request_fingerprint`` widened for the
  versioned fingerprint (``v2:`` + 64 hex digits).
- ``outbox_events``: a partial index on ``published_at`` for the retention purge.
- ``auth_refusals``: refused authentications, one row per source, minute and reason with
  a count, so an anonymous caller cannot grow the database without bound.

The first transaction takes only brief catalogue locks: columns are added nullable or
with a constant default (no rewrite), CHECKs are added NOT VALID (new rows are checked at
once), the varchar widening is catalogue-only. After it commits, each CHECK is validated
in its own transaction under SHARE UPDATE EXCLUSIVE (reads and writes go on), and the
indexes are built CONCURRENTLY. If an index build fails (it leaves an INVALID index),
drop that index and run the upgrade again from 0004's second part: the index statements
use IF NOT EXISTS, and the columns are already there -- ``alembic stamp 0004`` after
creating the missing index by hand is the simplest recovery.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 21:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "transactions",
        sa.Column("refund_pending_minor", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "transactions", sa.Column("next_reconcile_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "transactions",
        sa.Column("reconcile_attempts", sa.Integer(), server_default="0", nullable=False),
    )
    op.execute(
        "ALTER TABLE transactions ADD CONSTRAINT ck_transactions_refunds_within_capture "
        "CHECK (refund_pending_minor >= 0 "
        "AND refunded_minor + refund_pending_minor <= amount_minor) NOT VALID"
    )

    op.add_column(
        "refunds",
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.add_column(
        "refunds", sa.Column("next_reconcile_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "refunds",
        sa.Column("reconcile_attempts", sa.Integer(), server_default="0", nullable=False),
    )

    op.execute("ALTER TABLE audit_log DROP CONSTRAINT ck_audit_log_outcome_valid")
    op.execute(
        "ALTER TABLE audit_log ADD CONSTRAINT ck_audit_log_outcome_valid "
        "CHECK (outcome IN ('success', 'failure', 'denied', 'pending')) NOT VALID"
    )

    op.alter_column(
        "idempotency_keys",
        "request_fingerprint",
        type_=sa.String(length=80),
        existing_type=sa.String(length=64),
        existing_nullable=False,
    )

    op.create_table(
        "auth_refusals",
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_correlation_id", sa.String(length=128), nullable=True),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.CheckConstraint("attempts > 0", name=op.f("ck_auth_refusals_attempts_positive")),
        sa.PrimaryKeyConstraint("window_start", "source", "reason", name=op.f("pk_auth_refusals")),
    )

    # Each of these in its own transaction, after the one above has committed: VALIDATE
    # scans under SHARE UPDATE EXCLUSIVE (reads and writes go on), and CONCURRENTLY builds
    # an index without blocking writes (it cannot run inside a transaction at all).
    with op.get_context().autocommit_block():
        op.execute(
            "ALTER TABLE transactions VALIDATE CONSTRAINT ck_transactions_refunds_within_capture"
        )
        op.execute("ALTER TABLE audit_log VALIDATE CONSTRAINT ck_audit_log_outcome_valid")
        op.create_index(
            "ix_transactions_next_reconcile_at",
            "transactions",
            ["next_reconcile_at"],
            postgresql_where=sa.text("status = 'processing'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_refunds_next_reconcile_at",
            "refunds",
            ["next_reconcile_at"],
            postgresql_where=sa.text("status = 'pending'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_outbox_events_published_at",
            "outbox_events",
            ["published_at"],
            postgresql_where=sa.text("published_at IS NOT NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for index, table in (
            ("ix_outbox_events_published_at", "outbox_events"),
            ("ix_refunds_next_reconcile_at", "refunds"),
            ("ix_transactions_next_reconcile_at", "transactions"),
        ):
            op.drop_index(index, table_name=table, postgresql_concurrently=True, if_exists=True)
    op.drop_table("auth_refusals")
    # Fails (and changes nothing) while a key carries a versioned fingerprint.
    op.alter_column(
        "idempotency_keys",
        "request_fingerprint",
        type_=sa.String(length=64),
        existing_type=sa.String(length=80),
        existing_nullable=False,
    )
    op.execute("ALTER TABLE audit_log DROP CONSTRAINT ck_audit_log_outcome_valid")
    op.execute(
        "ALTER TABLE audit_log ADD CONSTRAINT ck_audit_log_outcome_valid "
        "CHECK (outcome IN ('success', 'failure', 'denied'))"
    )
    op.drop_column("refunds", "reconcile_attempts")
    op.drop_column("refunds", "next_reconcile_at")
    op.drop_column("refunds", "updated_at")
    op.execute("ALTER TABLE transactions DROP CONSTRAINT ck_transactions_refunds_within_capture")
    op.drop_column("transactions", "reconcile_attempts")
    op.drop_column("transactions", "next_reconcile_at")
    op.drop_column("transactions", "refund_pending_minor")
