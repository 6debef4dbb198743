"""factory-boy factories for the domain objects; persisted through the repositories by the
tests, not by the factories."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import factory

from app.adapters.vault import CardVault
from app.core.card_keys import (
    DEVELOPMENT_FINGERPRINT_KEY,
    DEVELOPMENT_KEY_ID,
    DEVELOPMENT_KEYS_SPEC,
)
from app.domain.cards import CardBrand
from app.domain.ids import new_refund_id, new_transaction_id
from app.domain.merchants import ApiKey, Merchant, MerchantStatus
from app.domain.money import Money
from app.domain.payments import (
    CAPTURED_STATUSES,
    CaptureMethod,
    Card,
    Payment,
    PaymentMethod,
    PaymentStatus,
    Refund,
    RefundStatus,
)

VAULT = CardVault.from_config(
    DEVELOPMENT_KEYS_SPEC, DEVELOPMENT_KEY_ID, DEVELOPMENT_FINGERPRINT_KEY
)
PAN = "4242424242424242"


def _now() -> datetime:
    return datetime.now(UTC)


class MerchantFactory(factory.Factory):
    class Meta:
        model = Merchant

    merchant_id = factory.Sequence(lambda n: f"merchant_{n:05d}")
    name = factory.Faker("company")
    status = MerchantStatus.ACTIVE
    currencies = factory.LazyFunction(lambda: frozenset({"USD", "EUR", "JPY", "KWD"}))


class ApiKeyFactory(factory.Factory):
    class Meta:
        model = ApiKey

    id = factory.LazyFunction(uuid.uuid4)
    merchant_id = "merchant_00000"
    key_hash = factory.Sequence(lambda n: f"{n:064x}")
    key_prefix = "sk_tes"


class CardFactory(factory.Factory):
    class Meta:
        model = Card

    class Params:
        transaction_id = ""

    brand = CardBrand.VISA
    last4 = "4242"
    exp_month = 12
    exp_year = 2030
    fingerprint = factory.LazyFunction(lambda: VAULT.fingerprint(PAN))
    token = factory.LazyAttribute(
        lambda o: VAULT.encrypt(PAN, associated_data=o.transaction_id.encode())
    )


class PaymentFactory(factory.Factory):
    """A captured USD 100.00 payment by default."""

    class Meta:
        model = Payment

    class Params:
        amount_minor = 10_000
        currency = "USD"

    transaction_id = factory.LazyFunction(new_transaction_id)
    merchant_id = "merchant_00000"
    amount = factory.LazyAttribute(lambda o: Money(o.amount_minor, o.currency))
    payment_method = PaymentMethod.CREDIT_CARD
    capture_method = CaptureMethod.AUTOMATIC
    card = factory.SubFactory(CardFactory, transaction_id=factory.SelfAttribute("..transaction_id"))
    status = PaymentStatus.CAPTURED
    captured_minor = factory.LazyAttribute(
        lambda o: o.amount_minor if o.status in CAPTURED_STATUSES else 0
    )
    authorization_code = "A1B2C3"
    description = "Order"
    metadata = factory.LazyFunction(dict)
    correlation_id = "test-correlation"
    created_at = factory.LazyFunction(_now)
    updated_at = factory.SelfAttribute("created_at")


class RefundFactory(factory.Factory):
    """A succeeded USD 10.00 refund by default."""

    class Meta:
        model = Refund

    class Params:
        amount_minor = 1_000
        currency = "USD"

    refund_id = factory.LazyFunction(new_refund_id)
    transaction_id = "txn_missing"
    amount = factory.LazyAttribute(lambda o: Money(o.amount_minor, o.currency))
    status = RefundStatus.SUCCEEDED
    reason = "customer request"
    metadata = factory.LazyFunction(dict)
    correlation_id = "test-correlation"
    created_at = factory.LazyFunction(_now)
    updated_at = factory.SelfAttribute("created_at")
