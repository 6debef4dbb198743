"""The whole payment state machine: processing, authorized, voided, expired; pending refunds.

Only CHECK constraints change, and only to accept more statuses: each is dropped and
re-added ``NOT VALID`` in one short transaction (a catalogue change under a brief lock;
new rows are checked from then on), and validated afterwards, each in its own
transaction, scanning the table under a SHARE UPDATE EXCLUSIVE lock that lets reads and
writes go on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 20:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PAYMENT_STATUSES = (
    "'processing', 'authorized', 'captured', 'declined', 'failed', 'voided', 'expired', "
    "'partially_refunded', 'refunded'"
)
UNREFUNDED_STATUSES = (
    "'processing', 'authorized', 'captured', 'declined', 'failed', 'voided', 'expired'"
)
OLD_PAYMENT_STATUSES = "'captured', 'declined', 'failed', 'partially_refunded', 'refunded'"
OLD_UNREFUNDED_STATUSES = "'captured', 'declined', 'failed'"


def _status_matches_refunds(unrefunded: str) -> str:
    return (
        f"(status IN ({unrefunded}) AND refunded_minor = 0)"
        " OR (status = 'partially_refunded'"
        " AND refunded_minor > 0 AND refunded_minor < amount_minor)"
        " OR (status = 'refunded' AND refunded_minor = amount_minor)"
    )


def _replace_check(table: str, name: str, condition: str) -> None:
    op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")


def _validate(*checks: tuple[str, str]) -> None:
    # After the commit of the NOT VALID constraints: a VALIDATE inside that same
    # transaction would scan the table while still holding its ACCESS EXCLUSIVE lock.
    with op.get_context().autocommit_block():
        for table, name in checks:
            op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


UPGRADED = (
    ("transactions", "ck_transactions_status_valid"),
    ("transactions", "ck_transactions_status_matches_refunds"),
    ("refunds", "ck_refunds_status_valid"),
)


def upgrade() -> None:
    _replace_check(
        "transactions", "ck_transactions_status_valid", f"status IN ({PAYMENT_STATUSES})"
    )
    _replace_check(
        "transactions",
        "ck_transactions_status_matches_refunds",
        _status_matches_refunds(UNREFUNDED_STATUSES),
    )
    _replace_check(
        "refunds", "ck_refunds_status_valid", "status IN ('pending', 'succeeded', 'failed')"
    )
    _validate(*UPGRADED)


def downgrade() -> None:
    # Fails (and changes nothing) while a row uses a status the old schema did not know.
    _replace_check("refunds", "ck_refunds_status_valid", "status IN ('succeeded', 'failed')")
    _replace_check(
        "transactions",
        "ck_transactions_status_matches_refunds",
        _status_matches_refunds(OLD_UNREFUNDED_STATUSES),
    )
    _replace_check(
        "transactions", "ck_transactions_status_valid", f"status IN ({OLD_PAYMENT_STATUSES})"
    )
    _validate(*UPGRADED)
