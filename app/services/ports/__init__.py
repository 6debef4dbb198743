"""The ports: what the use cases need from the outside world, as Protocols.

Adapters (``app.adapters``) implement them; only the composition roots (``app.main``,
``app.cli``) choose which. Nothing in ``app.services`` imports an adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from app.services.ports.bank import (
    AuthorizationRequest,
    AuthorizationResult,
    BankAnswerUnknown,
    BankCaptureRequest,
    BankGateway,
    BankRefundRequest,
    BankVoidRequest,
    OperationResult,
    RefundResult,
)
from app.services.ports.messaging import (
    EventPublisher,
    Lease,
    OutboxBacklog,
    OutboxMessage,
    OutboxOnlyPublisher,
    OutboxRepository,
)
from app.services.ports.metrics import Metrics, NoMetrics
from app.services.ports.storage import (
    ApiKeyRepository,
    AuditLog,
    ConcurrentUpdate,
    IdempotencyRecord,
    IdempotencyRepository,
    MerchantRepository,
    MerchantSummary,
    PageCursor,
    PaymentFilter,
    PaymentPage,
    PaymentQueries,
    PaymentRepository,
    RefundRepository,
    StoredAnswer,
    UnitOfWork,
    Unsettled,
    UnsettledBacklog,
)
from app.services.ports.vault import CardVault
from app.services.ports.views import PaymentViews, UncachedPaymentViews, ViewLoader

Clock = Callable[[], datetime]
"""The current time, timezone-aware in UTC."""

__all__ = [
    "ApiKeyRepository",
    "AuditLog",
    "AuthorizationRequest",
    "AuthorizationResult",
    "BankAnswerUnknown",
    "BankCaptureRequest",
    "BankGateway",
    "BankRefundRequest",
    "BankVoidRequest",
    "CardVault",
    "Clock",
    "ConcurrentUpdate",
    "EventPublisher",
    "IdempotencyRecord",
    "IdempotencyRepository",
    "Lease",
    "MerchantRepository",
    "MerchantSummary",
    "Metrics",
    "NoMetrics",
    "OperationResult",
    "OutboxBacklog",
    "OutboxMessage",
    "OutboxOnlyPublisher",
    "OutboxRepository",
    "PageCursor",
    "PaymentFilter",
    "PaymentPage",
    "PaymentQueries",
    "PaymentRepository",
    "PaymentViews",
    "RefundRepository",
    "RefundResult",
    "StoredAnswer",
    "UncachedPaymentViews",
    "UnitOfWork",
    "Unsettled",
    "UnsettledBacklog",
    "ViewLoader",
]
