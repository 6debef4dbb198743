"""Payment listing: an index for every filter of ``GET /api/v1/payments``.

The listing walks a merchant's payments newest first, keyset-paginated on
``(created_at, transaction_id)`` (docs/api.md, "Listing payments"):

- ``ix_transactions_merchant_id_created_at_transaction_id``: the merchant's payments in
  the listing's order, for no filter, a ``created`` range and a cursor (a row comparison
  on the last two columns);
- ``ix_transactions_merchant_id_status_created_at_transaction_id``: the same for one
  status;
- ``ix_transactions_metadata``: GIN with ``jsonb_path_ops`` for ``metadata @> {...}``
  (containment is the only operator the listing uses, and this operator class is smaller
  and faster for it than the default one).

``ix_transactions_merchant_id_created_at`` (0001) is a prefix of the first index and so
now redundant; it is left in place, to be dropped by a later migration once nothing is
seen to use it (``pg_stat_user_indexes.idx_scan``).

Each index is built CONCURRENTLY (writes go on) in its own autocommit statement, with
IF NOT EXISTS: after a failed build (it leaves an INVALID index), drop that index and run
the upgrade again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LISTING_ORDER = [sa.literal_column("created_at DESC"), sa.literal_column("transaction_id DESC")]


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_transactions_merchant_id_created_at_transaction_id",
            "transactions",
            ["merchant_id", *LISTING_ORDER],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_transactions_merchant_id_status_created_at_transaction_id",
            "transactions",
            ["merchant_id", "status", *LISTING_ORDER],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_transactions_metadata",
            "transactions",
            ["metadata"],
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for index in (
            "ix_transactions_metadata",
            "ix_transactions_merchant_id_status_created_at_transaction_id",
            "ix_transactions_merchant_id_created_at_transaction_id",
        ):
            op.drop_index(
                index, table_name="transactions", postgresql_concurrently=True, if_exists=True
            )
