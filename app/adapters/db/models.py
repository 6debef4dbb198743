"""ORM models: the tables Alembic owns, typed for SQLAlchemy 2.0.

Money is stored as integer minor units next to its ISO 4217 currency, never as a float.
The CHECK constraints repeat the payment rules that must hold even if a bug slipped past
the service layer: positive amounts, refunds never above the capture, statuses from a
fixed set, and a payment's status consistent with what has been refunded.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.domain.audit import AuditOutcome
from app.domain.merchants import MerchantStatus
from app.domain.payments import (
    REFUNDED_STATUSES,
    CaptureMethod,
    OperationKind,
    PaymentMethod,
    PaymentStatus,
    RefundStatus,
)
from app.domain.webhooks import DeliveryStatus, EndpointStatus

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PAYMENT_STATUSES = tuple(status.value for status in PaymentStatus)
REFUND_STATUSES = tuple(status.value for status in RefundStatus)
PAYMENT_METHODS = tuple(method.value for method in PaymentMethod)
MERCHANT_STATUSES = tuple(status.value for status in MerchantStatus)
IDEMPOTENCY_STATES = ("in_progress", "completed")
AUDIT_OUTCOMES = tuple(outcome.value for outcome in AuditOutcome)
CAPTURE_METHODS = tuple(method.value for method in CaptureMethod)
OPERATION_KINDS = tuple(kind.value for kind in OperationKind)
ENDPOINT_STATUSES = tuple(status.value for status in EndpointStatus)
DELIVERY_STATUSES = tuple(status.value for status in DeliveryStatus)
_CAPTURED = "coalesce(captured_minor, amount_minor)"
UNREFUNDED_STATUSES = tuple(s.value for s in PaymentStatus if s not in REFUNDED_STATUSES)
"""Statuses in which nothing can have been refunded (the domain's sets, in table order)."""


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base carrying the constraint naming convention Alembic relies on."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB}


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class MerchantRow(Base):
    """A business that takes payments through us."""

    __tablename__ = "merchants"
    __table_args__ = (
        CheckConstraint(_in("status", MERCHANT_STATUSES), name="status_valid"),
        CheckConstraint("cardinality(currencies) > 0", name="accepts_a_currency"),
    )

    merchant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="active")
    currencies: Mapped[list[str]] = mapped_column(ARRAY(String(3)), nullable=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class ApiKeyRow(Base):
    """A bearer key, stored only as a keyed digest, belonging to exactly one merchant."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("char_length(key_hash) = 64", name="key_hash_is_sha256_hex"),
        Index("ix_api_keys_merchant_id", "merchant_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        ForeignKey("merchants.merchant_id", ondelete="RESTRICT"), nullable=False
    )
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    key_prefix: Mapped[str] = mapped_column(String(12), nullable=False)
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PaymentRow(Base):
    """One payment (table ``transactions``): see :class:`app.domain.payments.Payment`."""

    __tablename__ = "transactions"
    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(
            "refunded_minor >= 0 AND refunded_minor <= amount_minor", name="refunded_within_amount"
        ),
        CheckConstraint(_in("status", PAYMENT_STATUSES), name="status_valid"),
        CheckConstraint(_in("payment_method", PAYMENT_METHODS), name="payment_method_valid"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso4217"),
        CheckConstraint(
            f"({_in('status', UNREFUNDED_STATUSES)} AND refunded_minor = 0)"
            " OR (status = 'partially_refunded'"
            f" AND refunded_minor > 0 AND refunded_minor < {_CAPTURED})"
            f" OR (status = 'refunded' AND refunded_minor = {_CAPTURED})",
            name="status_matches_refunds",
        ),
        CheckConstraint("card_exp_month BETWEEN 1 AND 12", name="card_exp_month_valid"),
        CheckConstraint("card_last4 ~ '^[0-9]{4}$'", name="card_last4_digits"),
        CheckConstraint(
            f"refund_pending_minor >= 0 AND refunded_minor + refund_pending_minor <= {_CAPTURED}",
            name="refunds_within_capture",
        ),
        CheckConstraint(_in("capture_method", CAPTURE_METHODS), name="capture_method_valid"),
        CheckConstraint(
            "captured_minor IS NULL OR (captured_minor >= 0 AND captured_minor <= amount_minor)",
            name="captured_within_amount",
        ),
        CheckConstraint(
            "(pending_operation IS NULL AND pending_operation_id IS NULL)"
            f" OR ({_in('pending_operation', OPERATION_KINDS)}"
            " AND pending_operation_id IS NOT NULL AND status = 'authorized')",
            name="pending_operation_valid",
        ),
        # The listing (GET /api/v1/payments): newest first, keyset-paginated on
        # (created_at, transaction_id), for every merchant, one status, and metadata.
        Index(
            "ix_transactions_merchant_id_created_at_transaction_id",
            "merchant_id",
            text("created_at DESC"),
            text("transaction_id DESC"),
        ),
        Index(
            "ix_transactions_merchant_id_status_created_at_transaction_id",
            "merchant_id",
            "status",
            text("created_at DESC"),
            text("transaction_id DESC"),
        ),
        Index(
            "ix_transactions_metadata",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ),
        Index(
            "ix_transactions_reconcile_due",
            "next_reconcile_at",
            postgresql_where=text("next_reconcile_at IS NOT NULL"),
        ),
        Index(
            "ix_transactions_authorized_created_at",
            "created_at",
            postgresql_where=text("status = 'authorized' AND pending_operation IS NULL"),
        ),
        # Time ranges by hand (docs/runbook.md): a BRIN summary costs next to nothing per
        # payment, where a B-tree on created_at (or on status) cost an entry on every insert
        # and update (migration 0009).
        Index(
            "ix_transactions_created_at_brin",
            "created_at",
            postgresql_using="brin",
            postgresql_with={"autosummarize": "on"},
        ),
        Index("ix_transactions_card_fingerprint", "card_fingerprint"),
    )

    transaction_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        ForeignKey("merchants.merchant_id", ondelete="RESTRICT"), nullable=False
    )
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    capture_method: Mapped[str] = mapped_column(
        String(16), nullable=False, server_default="automatic"
    )
    # What was captured; NULL on rows written before it existed: the whole amount once captured.
    captured_minor: Mapped[int | None] = mapped_column(BigInteger)
    refunded_minor: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # What pending refunds have reserved: refunded + pending never exceeds the capture.
    refund_pending_minor: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default="0"
    )
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    payment_method: Mapped[str] = mapped_column(String(16), nullable=False)
    card_brand: Mapped[str] = mapped_column(String(16), nullable=False)
    card_last4: Mapped[str] = mapped_column(String(4), nullable=False)
    card_exp_month: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    card_exp_year: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    card_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    card_ciphertext: Mapped[str] = mapped_column(Text, nullable=False)
    authorization_code: Mapped[str | None] = mapped_column(String(64))
    decline_code: Mapped[str | None] = mapped_column(String(64))
    decline_message: Mapped[str | None] = mapped_column(String(255))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(500))
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    # While processing, or while an operation is pending: when the reconciler next asks the
    # bank, and how often it has.
    next_reconcile_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reconcile_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # The capture, void or expiry of an authorization recorded before the bank is asked.
    pending_operation: Mapped[str | None] = mapped_column(String(16))
    pending_operation_id: Mapped[str | None] = mapped_column(String(40))
    pending_operation_minor: Mapped[int | None] = mapped_column(BigInteger)
    pending_operation_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    refunds: Mapped[list[RefundRow]] = relationship(
        back_populates="payment", order_by="RefundRow.created_at", lazy="raise"
    )


class RefundRow(Base):
    """One refund: see :class:`app.domain.payments.Refund`."""

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(_in("status", REFUND_STATUSES), name="status_valid"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso4217"),
        Index("ix_refunds_transaction_id_created_at", "transaction_id", "created_at"),
        Index(
            "ix_refunds_next_reconcile_at",
            "next_reconcile_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    refund_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    transaction_id: Mapped[str] = mapped_column(
        ForeignKey("transactions.transaction_id", ondelete="RESTRICT"), nullable=False
    )
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(String(500))
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    bank_reference: Mapped[str | None] = mapped_column(String(64))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    # While pending: when the reconciler next asks the bank, and how often it has.
    next_reconcile_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reconcile_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")

    payment: Mapped[PaymentRow] = relationship(back_populates="refunds", lazy="raise")


class IdempotencyKeyRow(Base):
    """A client's Idempotency-Key: claimed while its request runs, then the stored answer."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("merchant_id", "idempotency_key"),
        CheckConstraint(_in("state", IDEMPOTENCY_STATES), name="state_valid"),
        CheckConstraint(
            "state = 'in_progress' OR (response_status IS NOT NULL AND response_body IS NOT NULL)",
            name="completed_has_response",
        ),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
        # Room on each page for the row's one update (its stored answer), so that update is
        # HOT and writes no index entries (migration 0009).
        {"postgresql_with": {"fillfactor": 70}},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    merchant_id: Mapped[str] = mapped_column(
        ForeignKey("merchants.merchant_id", ondelete="CASCADE"), nullable=False
    )
    idempotency_key: Mapped[str] = mapped_column(String(255), nullable=False)
    # "v2:" + hex HMAC (docs/api.md, "Idempotency"); 64 hex digits alone is the legacy form.
    request_fingerprint: Mapped[str] = mapped_column(String(80), nullable=False)
    # The transaction or refund id this request creates: reused if a crashed attempt is
    # taken over, so the bank (which dedupes on it) never charges twice.
    resource_id: Mapped[str] = mapped_column(String(40), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    locked_until: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class OutboxEvent(Base):
    """An event written with the state change it describes, published to Kafka afterwards.

    ``claimed_by``/``claimed_until`` are a publisher's lease on the row while it is on its
    way to Kafka (see :mod:`app.adapters.messaging.kafka`); an expired lease is free again.
    """

    __tablename__ = "outbox_events"
    __table_args__ = (
        Index(
            "ix_outbox_events_pending",
            "id",
            postgresql_where=text("published_at IS NULL"),
        ),
        Index("ix_outbox_events_aggregate_id", "aggregate_id"),
        Index(
            "ix_outbox_events_published_at",
            "published_at",
            postgresql_where=text("published_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False, unique=True)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    aggregate_id: Mapped[str] = mapped_column(String(40), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    headers: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = _now()
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(Text)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """One append-only audit row: who did what to which resource, and how it ended."""

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint(_in("outcome", AUDIT_OUTCOMES), name="outcome_valid"),
        Index("ix_audit_log_resource", "resource_type", "resource_id"),
        # Append-only, in occurred_at order: a BRIN summary serves time ranges (0009).
        Index(
            "ix_audit_log_occurred_at_brin",
            "occurred_at",
            postgresql_using="brin",
            postgresql_with={"autosummarize": "on"},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    resource_type: Mapped[str] = mapped_column(String(32), nullable=False)
    resource_id: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )


class AuthRefusalRow(Base):
    """Refused authentications from one source, for one reason, in one minute, counted.

    The audit trail of refusals: an anonymous caller can only add one row per source,
    reason and minute, however fast it knocks.
    """

    __tablename__ = "auth_refusals"
    __table_args__ = (CheckConstraint("attempts > 0", name="attempts_positive"),)

    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_correlation_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )


class WebhookEndpointRow(Base):
    """A merchant's webhook endpoint (docs/webhooks.md); its secrets sealed by the vault."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint(_in("status", ENDPOINT_STATUSES), name="status_valid"),
        CheckConstraint("char_length(url) <= 2048", name="url_length"),
        CheckConstraint(
            "(previous_secret_ciphertext IS NULL) = (previous_secret_expires_at IS NULL)",
            name="previous_secret_has_expiry",
        ),
        Index("ix_webhook_endpoints_merchant_id", "merchant_id"),
    )

    endpoint_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        ForeignKey("merchants.merchant_id", ondelete="RESTRICT"), nullable=False
    )
    url: Mapped[str] = mapped_column(Text, nullable=False)
    # Empty: every event type.
    event_types: Mapped[list[str]] = mapped_column(
        ARRAY(String(64)), nullable=False, server_default=text("'{}'")
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="enabled")
    secret_ciphertext: Mapped[str] = mapped_column(Text, nullable=False)
    previous_secret_ciphertext: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Since when every attempt has failed (NULL once one succeeds); past the retry window
    # the endpoint is disabled.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class WebhookEventRow(Base):
    """An event kept for a merchant's webhooks: deliveries and replays send its body."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_merchant_id_occurred_at", "merchant_id", "occurred_at"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    transaction_id: Mapped[str] = mapped_column(String(40), nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    trace_context: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    recorded_at: Mapped[datetime] = _now()


class WebhookDeliveryRow(Base):
    """One event to one endpoint: pending until a 2xx, or given up after the window."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        CheckConstraint(_in("status", DELIVERY_STATUSES), name="status_valid"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        # Only a pending delivery has a next attempt (none while its endpoint is disabled).
        CheckConstraint(
            "status = 'pending' OR next_attempt_at IS NULL", name="only_pending_is_scheduled"
        ),
        # Due deliveries, soonest first: the claim walks this in order. Not partial: the
        # claim's plan must not depend on how many rows the statistics think are pending.
        Index("ix_webhook_deliveries_due", "next_attempt_at", "id"),
        # An earlier pending delivery of the same payment to the same endpoint (order).
        Index(
            "ix_webhook_deliveries_pending_order",
            "endpoint_id",
            "transaction_id",
            "id",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_events.event_id", ondelete="CASCADE"), nullable=False
    )
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.endpoint_id", ondelete="CASCADE"), nullable=False
    )
    transaction_id: Mapped[str] = mapped_column(String(40), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(Text)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When it was delivered or given up (NULL while pending): what retention counts from.
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttemptRow(Base):
    """One POST of a delivery: when, the status code or error class, how long. Never the
    secret, the signature or the response body."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery_id", "delivery_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(64))
    latency_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    dispatcher: Mapped[str] = mapped_column(String(128), nullable=False)
