"""Webhooks to merchants: endpoints, the events kept for them, deliveries and attempts.

Four new tables, nothing existing changes (docs/webhooks.md):

- ``webhook_endpoints``: a merchant's URLs, the event types each wants, the signing
  secret (and, during a rotation, the previous one) sealed by the card vault's keys;
- ``webhook_events``: each event a merchant's endpoints want, as published (its body is
  what deliveries and replays send);
- ``webhook_deliveries``: one per (event, endpoint), pending until the endpoint answers
  2xx or the retry window runs out; leased by a dispatcher while it sends;
- ``webhook_attempts``: every POST: when, status code or error class, latency.

New tables only, so the upgrade takes no lock on a table the service uses.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 03:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("endpoint_id", sa.String(40), nullable=False),
        sa.Column("merchant_id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column(
            "event_types",
            postgresql.ARRAY(sa.String(64)),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), server_default="enabled", nullable=False),
        sa.Column("secret_ciphertext", sa.Text(), nullable=False),
        sa.Column("previous_secret_ciphertext", sa.Text(), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint(
            "status IN ('enabled', 'disabled', 'removed')",
            name=op.f("ck_webhook_endpoints_status_valid"),
        ),
        sa.CheckConstraint(
            "char_length(url) <= 2048", name=op.f("ck_webhook_endpoints_url_length")
        ),
        sa.CheckConstraint(
            "(previous_secret_ciphertext IS NULL) = (previous_secret_expires_at IS NULL)",
            name=op.f("ck_webhook_endpoints_previous_secret_has_expiry"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_webhook_endpoints_merchant_id_merchants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("endpoint_id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index("ix_webhook_endpoints_merchant_id", "webhook_endpoints", ["merchant_id"])

    op.create_table(
        "webhook_events",
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("merchant_id", sa.String(64), nullable=False),
        sa.Column("transaction_id", sa.String(40), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", postgresql.JSONB(), nullable=False),
        sa.Column(
            "trace_context",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_webhook_events")),
    )
    op.create_index(
        "ix_webhook_events_merchant_id_occurred_at",
        "webhook_events",
        ["merchant_id", "occurred_at"],
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("endpoint_id", sa.String(40), nullable=False),
        sa.Column("transaction_id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_webhook_deliveries_status_valid"),
        ),
        sa.CheckConstraint(
            "attempts >= 0", name=op.f("ck_webhook_deliveries_attempts_not_negative")
        ),
        sa.CheckConstraint(
            "status = 'pending' OR next_attempt_at IS NULL",
            name=op.f("ck_webhook_deliveries_only_pending_is_scheduled"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["webhook_events.event_id"],
            name=op.f("fk_webhook_deliveries_event_id_webhook_events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.endpoint_id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "event_id", "endpoint_id", name=op.f("uq_webhook_deliveries_event_id_endpoint_id")
        ),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at", "id"])
    op.create_index(
        "ix_webhook_deliveries_pending_order",
        "webhook_deliveries",
        ["endpoint_id", "transaction_id", "id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_webhook_deliveries_finished_at", "webhook_deliveries", ["finished_at"])

    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("dispatcher", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_table("webhook_endpoints")
