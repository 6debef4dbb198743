"""Manual capture: how a payment captures, what it captured, and the operation pending on
an authorization (a capture, void or expiry recorded before the bank is asked).

- ``capture_method`` (``automatic`` by default: every existing payment captured at once);
- ``captured_minor``: what was captured. NULL on rows written before this migration, read
  as "the whole amount once captured": no backfill, no table rewrite;
- ``pending_operation``, ``pending_operation_id`` (the bank's idempotency key),
  ``pending_operation_minor`` (a capture's amount), ``pending_operation_at``;
- the refund CHECKs compare with the captured amount, not the authorized one;
- the reconciler's index covers every row with a reconciliation due (processing payments
  and authorizations with a pending operation), and a new partial index finds the
  authorizations due to expire.

As 0004: one short transaction of catalogue changes (constant defaults, NOT VALID
CHECKs), then each validation and each CONCURRENTLY index on its own.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 23:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CAPTURED = "coalesce(captured_minor, amount_minor)"
UNREFUNDED = "'processing', 'authorized', 'captured', 'declined', 'failed', 'voided', 'expired'"

NEW_CHECKS = {
    "ck_transactions_capture_method_valid": "capture_method IN ('automatic', 'manual')",
    "ck_transactions_captured_within_amount": (
        "captured_minor IS NULL OR (captured_minor >= 0 AND captured_minor <= amount_minor)"
    ),
    "ck_transactions_pending_operation_valid": (
        "(pending_operation IS NULL AND pending_operation_id IS NULL)"
        " OR (pending_operation IN ('capture', 'void', 'expire')"
        " AND pending_operation_id IS NOT NULL AND status = 'authorized')"
    ),
}
REPLACED_CHECKS = {
    "ck_transactions_refunds_within_capture": (
        f"refund_pending_minor >= 0 AND refunded_minor + refund_pending_minor <= {CAPTURED}",
        "refund_pending_minor >= 0 AND refunded_minor + refund_pending_minor <= amount_minor",
    ),
    "ck_transactions_status_matches_refunds": (
        f"(status IN ({UNREFUNDED}) AND refunded_minor = 0)"
        " OR (status = 'partially_refunded'"
        f" AND refunded_minor > 0 AND refunded_minor < {CAPTURED})"
        f" OR (status = 'refunded' AND refunded_minor = {CAPTURED})",
        f"(status IN ({UNREFUNDED}) AND refunded_minor = 0)"
        " OR (status = 'partially_refunded'"
        " AND refunded_minor > 0 AND refunded_minor < amount_minor)"
        " OR (status = 'refunded' AND refunded_minor = amount_minor)",
    ),
}


def upgrade() -> None:
    op.add_column(
        "transactions",
        sa.Column(
            "capture_method", sa.String(length=16), server_default="automatic", nullable=False
        ),
    )
    op.add_column("transactions", sa.Column("captured_minor", sa.BigInteger(), nullable=True))
    op.add_column(
        "transactions", sa.Column("pending_operation", sa.String(length=16), nullable=True)
    )
    op.add_column(
        "transactions", sa.Column("pending_operation_id", sa.String(length=40), nullable=True)
    )
    op.add_column(
        "transactions", sa.Column("pending_operation_minor", sa.BigInteger(), nullable=True)
    )
    op.add_column(
        "transactions",
        sa.Column("pending_operation_at", sa.DateTime(timezone=True), nullable=True),
    )
    for name, condition in NEW_CHECKS.items():
        op.execute(f"ALTER TABLE transactions ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
    for name, (condition, _) in REPLACED_CHECKS.items():
        op.execute(f"ALTER TABLE transactions DROP CONSTRAINT {name}")
        op.execute(f"ALTER TABLE transactions ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
    with op.get_context().autocommit_block():
        for name in [*NEW_CHECKS, *REPLACED_CHECKS]:
            op.execute(f"ALTER TABLE transactions VALIDATE CONSTRAINT {name}")
        op.create_index(
            "ix_transactions_reconcile_due",
            "transactions",
            ["next_reconcile_at"],
            postgresql_where=sa.text("next_reconcile_at IS NOT NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index(
            "ix_transactions_next_reconcile_at",
            table_name="transactions",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            "ix_transactions_authorized_created_at",
            "transactions",
            ["created_at"],
            postgresql_where=sa.text("status = 'authorized' AND pending_operation IS NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_transactions_authorized_created_at",
            table_name="transactions",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            "ix_transactions_next_reconcile_at",
            "transactions",
            ["next_reconcile_at"],
            postgresql_where=sa.text("status = 'processing'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index(
            "ix_transactions_reconcile_due",
            table_name="transactions",
            postgresql_concurrently=True,
            if_exists=True,
        )
    # Fails (and changes nothing) while a payment captured less than it authorized.
    for name, (_, old) in REPLACED_CHECKS.items():
        op.execute(f"ALTER TABLE transactions DROP CONSTRAINT {name}")
        op.execute(f"ALTER TABLE transactions ADD CONSTRAINT {name} CHECK ({old})")
    for name in NEW_CHECKS:
        op.execute(f"ALTER TABLE transactions DROP CONSTRAINT {name}")
    for column in (
        "pending_operation_at",
        "pending_operation_minor",
        "pending_operation_id",
        "pending_operation",
        "captured_minor",
        "capture_method",
    ):
        op.drop_column("transactions", column)
