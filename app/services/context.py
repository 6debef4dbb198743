"""The ports a use case works with, wired once by a composition root (app factory or CLI)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.services.ports import (
    BankGateway,
    CardVault,
    Clock,
    EventPublisher,
    Metrics,
    NoMetrics,
    OutboxOnlyPublisher,
    PaymentQueries,
    PaymentViews,
    UncachedPaymentViews,
    UnitOfWork,
)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    """When the reconciler asks the bank about an item whose outcome is unknown
    (docs/runbook.md, "A payment is stuck, or its outcome is unknown").

    Attributes:
        first_delay: After recording, how long before the first status lookup (longer
            than most requests take to hear from the bank themselves).
        max_interval: The longest pause between two lookups of one item.
        no_record_after: How long after its creation a "no record" answer means the bank
            never received the request (longer than any request's bank timeout).
        window: How long an item is expected to take at most; past it, it is reported
            overdue (and still asked about, at ``max_interval``).
        lease: How long a claimed item is left to its claimer before another may take it.
        batch_size: Items claimed per round.
        authorization_ttl: How long an authorization may wait for its capture or void;
            older ones are voided at the bank and expire.
    """

    first_delay: timedelta = timedelta(seconds=10)
    max_interval: timedelta = timedelta(minutes=10)
    no_record_after: timedelta = timedelta(seconds=120)
    window: timedelta = timedelta(hours=24)
    lease: timedelta = timedelta(seconds=60)
    batch_size: int = 20
    authorization_ttl: timedelta = timedelta(days=7)

    def next_attempt(self, *, attempts: int, now: datetime) -> datetime:
        """When to ask again after ``attempts`` lookups: exponential, capped, jittered."""
        delay = min(
            self.first_delay.total_seconds() * 2 ** max(attempts - 1, 0),
            self.max_interval.total_seconds(),
        )
        return now + timedelta(seconds=delay * (0.75 + random.random() / 2))  # noqa: S311


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long what the service may delete is kept, and how much one statement deletes."""

    outbox_retention: timedelta = timedelta(days=7)
    batch_size: int = 500


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """Everything the use cases need from the outside world."""

    uow_factory: Callable[[], UnitOfWork]
    queries: PaymentQueries
    bank: BankGateway
    vault: CardVault
    publisher: EventPublisher = field(default_factory=OutboxOnlyPublisher)
    idempotency_lock: timedelta = timedelta(seconds=60)
    idempotency_keep: timedelta = timedelta(hours=24)
    clock: Clock = utc_now
    metrics: Metrics = field(default_factory=NoMetrics)
    reconcile: ReconcilePolicy = field(default_factory=ReconcilePolicy)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    payment_views: PaymentViews = field(default_factory=UncachedPaymentViews)
