"""The bank: a gateway protocol, an HTTP client and an in-process simulator.

:func:`build_bank_gateway` is the one place that chooses between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.adapters.bank.http import HttpBankGateway
from app.adapters.bank.simulator import SimulatedBankGateway
from app.services.ports import BankGateway

if TYPE_CHECKING:
    from app.core.config import Settings

__all__ = [
    "HttpBankGateway",
    "SimulatedBankGateway",
    "build_bank_gateway",
]


def build_bank_gateway(settings: Settings) -> BankGateway:
    """Return the HTTP gateway when ``BANK_API_URL`` is set, else the in-process simulator."""
    if settings.bank_api_url:
        return HttpBankGateway(
            base_url=settings.bank_api_url,
            timeout_s=settings.bank_timeout_s,
            connect_timeout_s=settings.bank_connect_timeout_s,
            max_retries=settings.bank_max_retries,
            backoff_max_s=settings.bank_backoff_max_s,
            breaker_fail_max=settings.bank_breaker_fail_max,
            breaker_reset_s=settings.bank_breaker_reset_s,
            max_connections=settings.bank_max_connections,
        )
    return SimulatedBankGateway()
