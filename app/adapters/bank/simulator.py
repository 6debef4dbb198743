"""An in-process bank that answers from the test-card table, for development and tests.

It is the default gateway when no ``BANK_API_URL`` is configured. Every answer comes from
:func:`app.domain.cards.bank_behaviour_for`, the same table the MockServer expectations
are generated from, so the service behaves the same against either bank.
"""

from __future__ import annotations

import secrets
import string

from app.domain.cards import DECLINE_MESSAGES, BankBehaviour, bank_behaviour_for
from app.domain.errors import BankUnavailable
from app.services.ports import (
    AuthorizationRequest,
    AuthorizationResult,
    BankRefundRequest,
    RefundResult,
)

AUTHORIZATION_CODE_ALPHABET = string.ascii_uppercase + string.digits
AUTHORIZATION_CODE_LENGTH = 6


def _authorization_code() -> str:
    return "".join(
        secrets.choice(AUTHORIZATION_CODE_ALPHABET) for _ in range(AUTHORIZATION_CODE_LENGTH)
    )


class SimulatedBankGateway:
    """A :class:`~app.adapters.bank.base.BankGateway` that never leaves the process."""

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        """Answer as the test-card table says; any other valid number is approved.

        Raises:
            BankUnavailable: ``processing_error`` for the error card, ``bank_timeout``
                for the timeout card.
        """
        card = bank_behaviour_for(request.card_number)
        match card.behaviour:
            case BankBehaviour.APPROVE:
                return AuthorizationResult(approved=True, authorization_code=_authorization_code())
            case BankBehaviour.DECLINE:
                code = card.code or "card_declined"
                return AuthorizationResult(
                    approved=False,
                    decline_code=code,
                    decline_message=DECLINE_MESSAGES.get(code, DECLINE_MESSAGES["card_declined"]),
                )
            case BankBehaviour.ERROR:
                raise BankUnavailable(failure_code="processing_error")
            case BankBehaviour.TIMEOUT:
                # The real bank answers this card only after 10 s, so an HTTP client gives
                # up with a timeout. Sleeping here would only slow every test and request
                # that uses the card; the outcome the service sees is the same.
                raise BankUnavailable(failure_code="bank_timeout")

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        """Every refund succeeds, with a fresh bank reference."""
        return RefundResult(succeeded=True, bank_reference=f"sim_{secrets.token_hex(8)}")

    @property
    def circuit_state(self) -> str:
        """Always ``closed``: there is no remote bank to protect."""
        return "closed"

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    async def aclose(self) -> None:
        """Nothing to release."""
