"""An in-process bank that answers from the test-card table, for development and tests.

It is the default gateway when no ``BANK_API_URL`` is configured. Every answer comes from
:func:`app.domain.cards.bank_behaviour_for`, the same table the MockServer expectations
are generated from, so the service behaves the same against either bank.
"""

from __future__ import annotations

import secrets
import string
from typing import Final

from cachetools import LRUCache

from app.domain.cards import DECLINE_MESSAGES, BankBehaviour, bank_behaviour_for
from app.services.ports.bank import (
    AuthorizationRequest,
    AuthorizationResult,
    BankAnswerUnknown,
    BankCaptureRequest,
    BankRefundRequest,
    BankVoidRequest,
    OperationResult,
    RefundResult,
)

AUTHORIZATION_CODE_ALPHABET = string.ascii_uppercase + string.digits
AUTHORIZATION_CODE_LENGTH = 6

MEMORY_ENTRIES: Final = 100_000
"""Decisions remembered per kind (authorizations, refunds); the oldest-used go first."""


def _authorization_code() -> str:
    return "".join(
        secrets.choice(AUTHORIZATION_CODE_ALPHABET) for _ in range(AUTHORIZATION_CODE_LENGTH)
    )


class SimulatedBankGateway:
    """A :class:`~app.services.ports.bank.BankGateway` that never leaves the process.

    Like a real bank it remembers what it decided, per transaction id and per refund id,
    and is idempotent: authorizing or refunding the same id again returns the first
    decision, and the status lookups answer from that memory (``None`` for an id it never
    decided). The memory is bounded (``memory_entries`` per kind, least recently used
    forgotten first) and **per process**: several workers or replicas running the
    simulator do not share it, so a lookup served by another process finds no record.
    """

    def __init__(self, *, memory_entries: int = MEMORY_ENTRIES) -> None:
        """Create a simulator with an empty memory of ``memory_entries`` per kind."""
        self._authorizations: LRUCache[str, AuthorizationResult] = LRUCache(memory_entries)
        self._refunds: LRUCache[str, RefundResult] = LRUCache(memory_entries)
        self._operations: LRUCache[str, OperationResult] = LRUCache(memory_entries)

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        """Answer as the test-card table says; any other valid number is approved.

        Raises:
            BankAnswerUnknown: ``processing_error`` for the error card (nothing is
                recorded), ``bank_timeout`` for the timeout card (an approval is recorded,
                so the lookup finds it approved).
        """
        card = bank_behaviour_for(request.card_number)
        # The error and timeout cards fail on every attempt, as MockServer's do.
        if card.behaviour is BankBehaviour.ERROR:
            raise BankAnswerUnknown("processing_error")
        if card.behaviour is BankBehaviour.TIMEOUT:
            # The real bank approves this card but answers only after 10 s, so an HTTP
            # client gives up with a timeout. Sleeping here would only slow every test and
            # request that uses the card; the outcome the service sees is the same.
            if request.transaction_id not in self._authorizations:
                self._authorizations[request.transaction_id] = AuthorizationResult(
                    approved=True, authorization_code=_authorization_code()
                )
            raise BankAnswerUnknown("bank_timeout")
        decided = self._authorizations.get(request.transaction_id)
        if decided is not None:
            return decided
        result: AuthorizationResult
        if card.behaviour is BankBehaviour.DECLINE:
            code = card.code or "card_declined"
            result = AuthorizationResult(
                approved=False,
                decline_code=code,
                decline_message=DECLINE_MESSAGES.get(code, DECLINE_MESSAGES["card_declined"]),
            )
        else:
            result = AuthorizationResult(approved=True, authorization_code=_authorization_code())
        self._authorizations[request.transaction_id] = result
        return result

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        """Every refund succeeds, with a fresh bank reference; a repeated one is remembered."""
        decided = self._refunds.get(request.refund_id)
        if decided is None:
            decided = RefundResult(succeeded=True, bank_reference=f"sim_{secrets.token_hex(8)}")
            self._refunds[request.refund_id] = decided
        return decided

    async def capture(self, request: BankCaptureRequest) -> OperationResult:
        """A capture succeeds unless this process declined the authorization it names
        (``authorization_not_found``); a repeated one answers as it did the first time.
        Another worker's (or a restarted process's) authorizations are not in this
        process's memory, so they are taken on trust, as the sandbox of a real bank does."""
        return self._operate(request.capture_id, request.transaction_id)

    async def void(self, request: BankVoidRequest) -> OperationResult:
        """As :meth:`capture`, for a void."""
        return self._operate(request.void_id, request.transaction_id)

    def _operate(self, operation_id: str, transaction_id: str) -> OperationResult:
        decided = self._operations.get(operation_id)
        if decided is None:
            authorization = self._authorizations.get(transaction_id)
            decided = (
                OperationResult(succeeded=False, failure_code="authorization_not_found")
                if authorization is not None and not authorization.approved
                else OperationResult(succeeded=True)
            )
            self._operations[operation_id] = decided
        return decided

    async def capture_status(
        self, capture_id: str, *, correlation_id: str | None = None
    ) -> OperationResult | None:
        """What this process decided for ``capture_id``; ``None`` if nothing."""
        return self._operations.get(capture_id)

    async def void_status(
        self, void_id: str, *, correlation_id: str | None = None
    ) -> OperationResult | None:
        """What this process decided for ``void_id``; ``None`` if nothing."""
        return self._operations.get(void_id)

    async def authorization_status(
        self, transaction_id: str, *, correlation_id: str | None = None
    ) -> AuthorizationResult | None:
        """What this process decided for ``transaction_id``; ``None`` if nothing."""
        return self._authorizations.get(transaction_id)

    async def refund_status(
        self, refund_id: str, *, correlation_id: str | None = None
    ) -> RefundResult | None:
        """What this process decided for ``refund_id``; ``None`` if nothing."""
        return self._refunds.get(refund_id)

    @property
    def circuit_state(self) -> str:
        """Always ``closed``: there is no remote bank to protect."""
        return "closed"

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    async def aclose(self) -> None:
        """Nothing to release."""
