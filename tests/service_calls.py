"""The use cases called the way the HTTP layer calls them, for tests below the API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.domain.merchants import Merchant, MerchantStatus
from app.domain.money import Money
from app.domain.payments import PaymentMethod
from app.services.context import ServiceContext
from app.services.idempotency import IdempotencyKey
from app.services.payments import CardDetails, process_payment
from app.services.refunds import refund_payment

MERCHANT = Merchant(
    merchant_id="merchant_test_123",
    name="Test merchant",
    status=MerchantStatus.ACTIVE,
    currencies=frozenset({"USD", "EUR"}),
)
"""The merchant the ``merchant`` fixture creates, as an authenticated request sees it."""


def card(number: str = "4242424242424242", cvv: str = "123") -> CardDetails:
    """A valid card, expiring in 2030."""
    return CardDetails(number=number, cvv=cvv, exp_month=12, exp_year=2030, holder_name="Jane Doe")


async def pay(
    ctx: ServiceContext,
    number: str = "4242424242424242",
    amount: str = "99.99",
    *,
    correlation_id: str | None = None,
    merchant: Merchant = MERCHANT,
    currency: str = "USD",
    idempotency: IdempotencyKey | None = None,
) -> dict[str, Any]:
    """Process a payment; the answer's body."""
    answer = await process_payment(
        ctx,
        merchant=merchant,
        merchant_id=merchant.merchant_id,
        amount=Money.from_major(amount, currency),
        payment_method=PaymentMethod.CREDIT_CARD,
        card=card(number),
        description="Order 1234",
        metadata={},
        correlation_id=correlation_id,
        idempotency=idempotency,
    )
    return answer.body


async def refund(
    ctx: ServiceContext,
    transaction_id: str,
    amount: str | Decimal | None = None,
    *,
    correlation_id: str | None = None,
    merchant: Merchant = MERCHANT,
    idempotency: IdempotencyKey | None = None,
) -> dict[str, Any]:
    """Refund ``amount`` (everything when ``None``); the answer's body."""
    answer = await refund_payment(
        ctx,
        merchant=merchant,
        transaction_id=transaction_id,
        amount=None if amount is None else Decimal(amount),
        reason=None,
        metadata={},
        correlation_id=correlation_id,
        idempotency=idempotency,
    )
    return answer.body
