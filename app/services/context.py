"""The adapters a use case works with, wired once by the app factory or the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.adapters.bank.base import BankGateway
from app.adapters.db.unit_of_work import UnitOfWork
from app.adapters.messaging.base import EventPublisher, OutboxOnlyPublisher
from app.adapters.metrics import PaymentMetrics
from app.adapters.vault import CardVault


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """Everything the payment use cases need from the outside world."""

    uow_factory: Callable[[], UnitOfWork]
    bank: BankGateway
    vault: CardVault
    publisher: EventPublisher = field(default_factory=OutboxOnlyPublisher)
    idempotency_lock: timedelta = timedelta(seconds=60)
    idempotency_keep: timedelta = timedelta(hours=24)
    clock: Callable[[], datetime] = utc_now
    metrics: PaymentMetrics = field(default_factory=PaymentMetrics.disabled)
