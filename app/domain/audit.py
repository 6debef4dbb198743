"""Audit entries: who did what to which resource, and how it ended (docs/api.md, "Audit log").

Entries are appended in the same transaction as the change they record and are never
updated or deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final


class AuditOutcome(StrEnum):
    """How an audited operation ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"
    PENDING = "pending"
    """Recorded before its outcome is known (a payment or refund the bank is asked about)."""


ADMIN_ACTOR: Final = "admin-cli"
"""The actor of ``payments-admin`` operations."""

ANONYMOUS_ACTOR: Final = "anonymous"
"""The actor of requests that presented no valid API key."""


RECONCILER_ACTOR: Final = "reconciler"
"""The actor of settlements the reconciler makes from the bank's status lookups."""


def merchant_actor(merchant_id: str) -> str:
    """The actor name for requests made with a merchant's API key."""
    return f"merchant:{merchant_id}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One append-only audit row."""

    actor: str
    action: str
    resource_type: str
    resource_id: str | None
    outcome: AuditOutcome
    correlation_id: str | None
    occurred_at: datetime
    details: dict[str, Any] = field(default_factory=dict)
