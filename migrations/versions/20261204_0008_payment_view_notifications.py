"""Payment views: NOTIFY ``payment_views`` with the payment's id whenever its view changes.

``GET /api/v1/payments/{id}`` answers from a per-worker cache of rendered payments
(docs/adr/0012-coherent-payment-view-cache.md). What that answer shows is the payment's
``transactions`` row and its ``refunds`` rows, so a trigger on each runs
``pg_notify('payment_views', transaction_id)``:

- ``transactions``: AFTER UPDATE (only when the row really changed) or DELETE;
- ``refunds``: AFTER INSERT, UPDATE or DELETE, with the parent payment's id.

Row-level triggers, one function for both tables (both name the payment
``transaction_id``): a statement changes one payment's rows, almost always one row, and a
row-level trigger needs no transition table. The notification is queued in the writing
transaction and delivered when, and only if, it commits; PostgreSQL folds identical
notifications of one transaction into one. A new payment needs none: nothing can cache a
payment that did not exist.

``CREATE TRIGGER`` takes a SHARE ROW EXCLUSIVE lock on each table for an instant (no
scan, no rewrite), bounded by the migration's ``lock_timeout``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 09:30:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "payment_views"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION notify_payment_view_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('{CHANNEL}', OLD.transaction_id);
            ELSE
                PERFORM pg_notify('{CHANNEL}', NEW.transaction_id);
            END IF;
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER payment_view_changed AFTER UPDATE ON transactions "
        "FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) "
        "EXECUTE FUNCTION notify_payment_view_changed()"
    )
    op.execute(
        "CREATE TRIGGER payment_view_removed AFTER DELETE ON transactions "
        "FOR EACH ROW EXECUTE FUNCTION notify_payment_view_changed()"
    )
    op.execute(
        "CREATE TRIGGER payment_view_refund_changed AFTER INSERT OR UPDATE OR DELETE "
        "ON refunds FOR EACH ROW EXECUTE FUNCTION notify_payment_view_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS payment_view_refund_changed ON refunds")
    op.execute("DROP TRIGGER IF EXISTS payment_view_removed ON transactions")
    op.execute("DROP TRIGGER IF EXISTS payment_view_changed ON transactions")
    op.execute("DROP FUNCTION IF EXISTS notify_payment_view_changed()")
