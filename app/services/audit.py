"""Audit rows (SPEC §7): who did what to which resource, and how it ended."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.adapters.db.models import AuditLogEntry


def audit_entry(
    *,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: str | None,
    outcome: str,
    correlation_id: str | None,
    occurred_at: datetime,
    details: dict[str, Any] | None = None,
) -> AuditLogEntry:
    """Build an audit row to append in the same transaction as the change it records."""
    return AuditLogEntry(
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        outcome=outcome,
        correlation_id=correlation_id,
        occurred_at=occurred_at,
        details=details or {},
    )


def merchant_actor(merchant_id: str) -> str:
    """The actor name for requests made with a merchant's API key."""
    return f"merchant:{merchant_id}"


ADMIN_ACTOR = "admin-cli"
ANONYMOUS_ACTOR = "anonymous"
