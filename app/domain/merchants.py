"""Merchants and their API keys: who may take payments, in which currencies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from app.domain.errors import CurrencyNotSupported, MerchantInactive, MerchantMismatch


class MerchantStatus(StrEnum):
    """Whether a merchant may use the API."""

    ACTIVE = "active"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Merchant:
    """A business that takes payments through us."""

    merchant_id: str
    name: str
    status: MerchantStatus
    currencies: frozenset[str]
    created_at: datetime | None = None

    @property
    def active(self) -> bool:
        """Whether the merchant may use the API."""
        return self.status is MerchantStatus.ACTIVE

    def ensure_active(self) -> None:
        """Raises:
        MerchantInactive: The merchant is disabled.
        """
        if not self.active:
            raise MerchantInactive

    def ensure_may_charge(self, *, merchant_id: str, currency: str) -> None:
        """Check a new payment against this merchant (the API key's).

        Raises:
            MerchantMismatch: The payment names another merchant.
            MerchantInactive: The merchant is disabled.
            CurrencyNotSupported: The merchant does not accept the currency.
        """
        if merchant_id != self.merchant_id:
            raise MerchantMismatch
        self.ensure_active()
        if currency not in self.currencies:
            raise CurrencyNotSupported(
                f"Merchant {self.merchant_id} does not accept {currency}; accepted: "
                + ", ".join(sorted(self.currencies))
                + "."
            )


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A merchant's bearer key, known only by its keyed digest."""

    id: uuid.UUID
    merchant_id: str
    key_hash: str
    key_prefix: str
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        """Whether the key no longer authenticates."""
        return self.revoked_at is not None
