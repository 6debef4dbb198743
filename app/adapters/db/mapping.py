"""Rows <-> domain objects: the one place that knows both the tables and the aggregates.

Reads map a row's columns (by column name, as Core results give them) to a domain object;
writes map a domain object to ``{column name: value}`` for the write batch. The ORM
classes in :mod:`app.adapters.db.models` define the tables; no ORM instance is built on
the request path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.domain.audit import AuditEntry
from app.domain.cards import CardBrand
from app.domain.merchants import ApiKey, Merchant, MerchantStatus
from app.domain.money import Money
from app.domain.payments import (
    CAPTURED_STATUSES,
    CaptureMethod,
    Card,
    OperationKind,
    Payment,
    PaymentMethod,
    PaymentStatus,
    PendingOperation,
    Refund,
    RefundStatus,
)
from app.services.ports import OutboxMessage

Row = Mapping[Any, Any]


def payment_from_row(row: Row, refunds: Sequence[Refund] = ()) -> Payment:
    """A payment from its ``transactions`` row (and its refunds, oldest first)."""
    status = PaymentStatus(row["status"])
    amount = Money(row["amount_minor"], row["currency"])
    return Payment(
        transaction_id=row["transaction_id"],
        merchant_id=row["merchant_id"],
        amount=amount,
        payment_method=PaymentMethod(row["payment_method"]),
        capture_method=CaptureMethod(row["capture_method"]),
        card=Card(
            brand=CardBrand(row["card_brand"]),
            last4=row["card_last4"],
            exp_month=row["card_exp_month"],
            exp_year=row["card_exp_year"],
            fingerprint=row["card_fingerprint"],
            token=row["card_ciphertext"],
        ),
        status=status,
        captured_minor=(
            row["captured_minor"]
            if row["captured_minor"] is not None
            else amount.minor
            if status in CAPTURED_STATUSES
            else 0
        ),
        pending_operation=(
            None
            if row["pending_operation"] is None
            else PendingOperation(
                kind=OperationKind(row["pending_operation"]),
                operation_id=row["pending_operation_id"],
                requested_at=row["pending_operation_at"],
                amount_minor=row["pending_operation_minor"],
            )
        ),
        refunded_minor=row["refunded_minor"],
        pending_refund_minor=row["refund_pending_minor"],
        authorization_code=row["authorization_code"],
        decline_code=row["decline_code"],
        decline_message=row["decline_message"],
        failure_code=row["failure_code"],
        description=row["description"],
        metadata=row["metadata"],
        correlation_id=row["correlation_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        refunds=list(refunds),
    )


def payment_values(payment: Payment) -> dict[str, Any]:
    """Every column of a new payment's row."""
    card = payment.card
    return {
        "transaction_id": payment.transaction_id,
        "merchant_id": payment.merchant_id,
        "amount_minor": payment.amount.minor,
        "currency": payment.currency,
        "payment_method": payment.payment_method.value,
        "capture_method": payment.capture_method.value,
        "card_brand": card.brand.value,
        "card_last4": card.last4,
        "card_exp_month": card.exp_month,
        "card_exp_year": card.exp_year,
        "card_fingerprint": card.fingerprint,
        "card_ciphertext": card.token,
        "description": payment.description,
        "metadata": payment.metadata,
        "created_at": payment.created_at,
        **payment_state_values(payment),
    }


def payment_state_values(payment: Payment) -> dict[str, Any]:
    """The columns a payment's transitions change."""
    pending = payment.pending_operation
    return {
        "status": payment.status.value,
        "captured_minor": payment.captured_minor,
        "pending_operation": None if pending is None else pending.kind.value,
        "pending_operation_id": None if pending is None else pending.operation_id,
        "pending_operation_minor": None if pending is None else pending.amount_minor,
        "pending_operation_at": None if pending is None else pending.requested_at,
        "refunded_minor": payment.refunded_minor,
        "refund_pending_minor": payment.pending_refund_minor,
        "authorization_code": payment.authorization_code,
        "decline_code": payment.decline_code,
        "decline_message": payment.decline_message,
        "failure_code": payment.failure_code,
        "correlation_id": payment.correlation_id,
        "updated_at": payment.updated_at,
    }


def refund_from_row(row: Row) -> Refund:
    """A refund from its ``refunds`` row."""
    return Refund(
        refund_id=row["refund_id"],
        transaction_id=row["transaction_id"],
        amount=Money(row["amount_minor"], row["currency"]),
        status=RefundStatus(row["status"]),
        reason=row["reason"],
        metadata=row["metadata"],
        correlation_id=row["correlation_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        bank_reference=row["bank_reference"],
        failure_code=row["failure_code"],
    )


def refund_values(refund: Refund) -> dict[str, Any]:
    """Every column of a new refund's row."""
    return {
        "refund_id": refund.refund_id,
        "transaction_id": refund.transaction_id,
        "amount_minor": refund.amount.minor,
        "currency": refund.amount.currency,
        "reason": refund.reason,
        "metadata": refund.metadata,
        "correlation_id": refund.correlation_id,
        "created_at": refund.created_at,
        **refund_state_values(refund),
    }


def refund_state_values(refund: Refund) -> dict[str, Any]:
    """The columns a refund's settlement changes."""
    return {
        "status": refund.status.value,
        "bank_reference": refund.bank_reference,
        "failure_code": refund.failure_code,
        "updated_at": refund.updated_at,
    }


def merchant_from_row(row: Row) -> Merchant:
    """A merchant from its ``merchants`` row."""
    return Merchant(
        merchant_id=row["merchant_id"],
        name=row["name"],
        status=MerchantStatus(row["status"]),
        currencies=frozenset(row["currencies"]),
        created_at=row["created_at"],
    )


def api_key_from_row(row: Row) -> ApiKey:
    """An API key from its ``api_keys`` row."""
    return ApiKey(
        id=row["id"],
        merchant_id=row["merchant_id"],
        key_hash=row["key_hash"],
        key_prefix=row["key_prefix"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def audit_values(entry: AuditEntry) -> dict[str, Any]:
    """Every column of an audit row."""
    return {
        "actor": entry.actor,
        "action": entry.action,
        "resource_type": entry.resource_type,
        "resource_id": entry.resource_id,
        "outcome": str(entry.outcome),
        "correlation_id": entry.correlation_id,
        "occurred_at": entry.occurred_at,
        "details": entry.details,
    }


def outbox_values(message: OutboxMessage) -> dict[str, Any]:
    """The columns of a new outbox row (its lease, if any, is added by the repository)."""
    return {
        "event_id": message.event_id,
        "event_type": message.event_type,
        "aggregate_id": message.key,
        "payload": dict(message.payload),
        "headers": dict(message.headers),
    }


def outbox_message_from_row(row: Row) -> OutboxMessage:
    """An outbox row as the publisher sends it."""
    headers = row["headers"] or {}
    return OutboxMessage(
        event_id=row["event_id"],
        event_type=row["event_type"],
        key=row["aggregate_id"],
        payload=row["payload"],
        headers={
            "event_type": row["event_type"],
            "event_id": str(row["event_id"]),
            "correlation_id": str(headers.get("correlation_id") or ""),
        },
    )
