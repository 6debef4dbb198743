"""Outbox leases: which publisher holds a pending event, and until when.

A publisher claims a batch by setting both columns in a short transaction, publishes
without holding any lock, then marks the rows published; a lease that runs out (a
crashed publisher) makes its rows claimable again. Both columns are nullable, so adding
them rewrites nothing and takes only a brief lock on ``outbox_events``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 06:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox_events", sa.Column("claimed_by", sa.Text(), nullable=True))
    op.add_column(
        "outbox_events", sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("outbox_events", "claimed_until")
    op.drop_column("outbox_events", "claimed_by")
