"""What the payment services need from a bank, whichever bank answers.

Two implementations: :class:`~app.adapters.bank.http.HttpBankGateway` talks HTTP to a
real (or MockServer-simulated) bank behind a circuit breaker and retries;
:class:`~app.adapters.bank.simulator.SimulatedBankGateway` answers in-process from the
test-card table. Both raise :class:`~app.domain.errors.BankUnavailable` when no answer
can be had, never a transport exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """Ask the bank to authorize and capture an amount on a card.

    ``transaction_id`` doubles as the bank-side idempotency key, so a retried call never
    charges twice. The CVV lives only in this object, for the duration of the call.
    """

    transaction_id: str
    merchant_id: str
    amount_minor: int
    currency: str
    card_number: str = field(repr=False)
    cvv: str = field(repr=False)
    expiry_month: int
    expiry_year: int
    cardholder_name: str = field(repr=False)
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuthorizationResult:
    """The bank's business answer: approved with a code, or declined with a reason."""

    approved: bool
    authorization_code: str | None = None
    decline_code: str | None = None
    decline_message: str | None = None


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """Ask the bank to return part or all of a captured amount."""

    refund_id: str
    transaction_id: str
    authorization_code: str | None
    amount_minor: int
    currency: str
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class RefundResult:
    """The bank's answer to a refund."""

    succeeded: bool
    bank_reference: str | None = None
    failure_code: str | None = None


class BankGateway(Protocol):
    """The bank as the service layer sees it."""

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        """Authorize and capture; raises BankUnavailable when the bank cannot answer."""
        ...

    async def refund(self, request: RefundRequest) -> RefundResult:
        """Refund; raises BankUnavailable when the bank cannot answer."""
        ...

    @property
    def circuit_state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (always ``closed`` for the simulator)."""
        ...

    async def ping(self) -> bool:
        """Whether the bank answers its health endpoint (no retries, short timeout)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
