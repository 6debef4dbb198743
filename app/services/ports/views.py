"""Payment views: rendered answers of ``GET /api/v1/payments/{id}``, possibly cached."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

ViewLoader = Callable[[], Awaitable[bytes | None]]
"""Reads the payment from the database and renders it (None: not the merchant's)."""


class PaymentViews(Protocol):
    """The merchant's payment as rendered, never older than the last write acknowledged
    to any client when the call began (SPEC §8)."""

    async def view(
        self, transaction_id: str, *, merchant_id: str, load: ViewLoader
    ) -> bytes | None:
        """The rendered payment, from ``load`` or from a copy known to be current."""
        ...


class UncachedPaymentViews:
    """:class:`PaymentViews` that always loads."""

    async def view(
        self, transaction_id: str, *, merchant_id: str, load: ViewLoader
    ) -> bytes | None:
        """What ``load`` returns."""
        return await load()
