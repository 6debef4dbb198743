"""factory-boy factories for the ORM rows; persisted by the fixtures, not by the factories."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import factory

from app.adapters.db.models import ApiKey, Merchant, Refund, Transaction
from app.adapters.vault import (
    DEVELOPMENT_FINGERPRINT_KEY,
    DEVELOPMENT_KEY_ID,
    DEVELOPMENT_KEYS_SPEC,
    CardVault,
)

VAULT = CardVault.from_config(
    DEVELOPMENT_KEYS_SPEC, DEVELOPMENT_KEY_ID, DEVELOPMENT_FINGERPRINT_KEY
)


def _now() -> datetime:
    return datetime.now(UTC)


class MerchantFactory(factory.Factory):
    class Meta:
        model = Merchant

    merchant_id = factory.Sequence(lambda n: f"merchant_{n:05d}")
    name = factory.Faker("company")
    status = "active"
    currencies = factory.LazyFunction(lambda: ["USD", "EUR", "JPY", "KWD"])
    created_at = factory.LazyFunction(_now)
    updated_at = factory.LazyFunction(_now)


class ApiKeyFactory(factory.Factory):
    class Meta:
        model = ApiKey

    id = factory.LazyFunction(uuid.uuid4)
    merchant_id = "merchant_00000"
    key_hash = factory.Sequence(lambda n: f"{n:064x}")
    key_prefix = "sk_tes"


class TransactionFactory(factory.Factory):
    class Meta:
        model = Transaction

    transaction_id = factory.LazyFunction(lambda: f"txn_{uuid.uuid4().hex}")
    merchant_id = "merchant_00000"
    amount_minor = 10_000
    refunded_minor = 0
    currency = "USD"
    status = "captured"
    payment_method = "credit_card"
    card_brand = "visa"
    card_last4 = "4242"
    card_exp_month = 12
    card_exp_year = 2030
    card_fingerprint = factory.LazyFunction(lambda: VAULT.fingerprint("4242424242424242"))
    card_ciphertext = factory.LazyAttribute(
        lambda o: VAULT.encrypt("4242424242424242", associated_data=o.transaction_id.encode())
    )
    authorization_code = "A1B2C3"
    decline_code = None
    decline_message = None
    failure_code = None
    description = "Order"
    metadata_ = factory.LazyFunction(dict)
    correlation_id = "test-correlation"
    created_at = factory.LazyFunction(_now)
    updated_at = factory.LazyFunction(_now)


class RefundFactory(factory.Factory):
    class Meta:
        model = Refund

    refund_id = factory.LazyFunction(lambda: f"re_{uuid.uuid4().hex}")
    transaction_id = "txn_missing"
    amount_minor = 1_000
    currency = "USD"
    status = "succeeded"
    reason = "customer request"
    metadata_ = factory.LazyFunction(dict)
    bank_reference = None
    failure_code = None
    correlation_id = "test-correlation"
    created_at = factory.LazyFunction(_now)
