"""The ports a use case works with, wired once by a composition root (app factory or CLI)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from app.domain.errors import PaymentServiceError
from app.services.ports import (
    BankGateway,
    CardVault,
    Clock,
    EventPublisher,
    Metrics,
    NoMetrics,
    OutboxOnlyPublisher,
    PaymentQueries,
    UnitOfWork,
)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


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
    stored_error: Callable[[PaymentServiceError], tuple[int, dict[str, Any]]] | None = None
    """How a recorded bank failure is stored for its Idempotency-Key (status and body)."""
