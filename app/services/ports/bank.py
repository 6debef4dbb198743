"""The bank, as the use cases see it: ask it to move money, and ask what it decided.

Every call answers, or raises one of two exceptions, and the difference is money:

- :class:`~app.domain.errors.BankUnavailable`: the bank **certainly did not receive**
  the request (circuit open, connection refused, DNS failure, connect timeout, or the
  bank refused the request itself). Nothing moved; the attempt can be recorded as failed.
- :class:`BankAnswerUnknown`: the request **may have reached the bank** and no usable
  answer came back (read timeout, a 5xx, the connection dropped after sending, an answer
  that is not the protocol). Money may have moved; only the bank's status lookup can say.

Retries of one logical call reuse its idempotency key (the transaction or refund id), so
the bank never acts twice on one attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class BankAnswerUnknown(Exception):  # noqa: N818 - the vocabulary of the port
    """The request may have reached the bank, and no usable answer came back.

    Attributes:
        failure_code: Why: ``bank_timeout``, ``processing_error`` (a 5xx or a malformed
            answer) or ``connection_lost``.
    """

    def __init__(self, failure_code: str) -> None:
        self.failure_code = failure_code
        super().__init__(failure_code)


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """Ask the bank to authorize an amount on a card (and capture it unless ``capture``
    is false).

    ``transaction_id`` is the bank-side idempotency key. The card number and CVV live only
    in this object, for the duration of the call.
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
    capture: bool = True


@dataclass(frozen=True, slots=True)
class AuthorizationResult:
    """The bank's business answer: approved with a code, or declined with a reason."""

    approved: bool
    authorization_code: str | None = None
    decline_code: str | None = None
    decline_message: str | None = None


@dataclass(frozen=True, slots=True)
class BankRefundRequest:
    """Ask the bank to return part or all of a captured amount; ``refund_id`` is the
    bank-side idempotency key."""

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


@dataclass(frozen=True, slots=True)
class BankCaptureRequest:
    """Ask the bank to capture (part of) an authorization; ``capture_id`` is the bank-side
    idempotency key. The rest of the authorization is released."""

    capture_id: str
    transaction_id: str
    authorization_code: str | None
    amount_minor: int
    currency: str
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class BankVoidRequest:
    """Ask the bank to release an authorization; ``void_id`` is the idempotency key."""

    void_id: str
    transaction_id: str
    authorization_code: str | None
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class OperationResult:
    """The bank's answer to a capture or a void: done, or refused (and why)."""

    succeeded: bool
    failure_code: str | None = None


class BankGateway(Protocol):
    """The bank as the service layer sees it."""

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        """Authorize (and capture); a decline is an answer.

        Raises:
            BankUnavailable: The bank certainly did not receive the request.
            BankAnswerUnknown: It may have, and no usable answer came back.
        """
        ...

    async def refund(self, request: BankRefundRequest) -> RefundResult:
        """Refund; raises as :meth:`authorize` does."""
        ...

    async def capture(self, request: BankCaptureRequest) -> OperationResult:
        """Capture an authorization; raises as :meth:`authorize` does."""
        ...

    async def void(self, request: BankVoidRequest) -> OperationResult:
        """Release an authorization; raises as :meth:`authorize` does."""
        ...

    async def capture_status(
        self, capture_id: str, *, correlation_id: str | None = None
    ) -> OperationResult | None:
        """What the bank decided for a capture; ``None`` when it has no record."""
        ...

    async def void_status(
        self, void_id: str, *, correlation_id: str | None = None
    ) -> OperationResult | None:
        """What the bank decided for a void; ``None`` when it has no record."""
        ...

    async def authorization_status(
        self, transaction_id: str, *, correlation_id: str | None = None
    ) -> AuthorizationResult | None:
        """What the bank decided for an authorization; ``None`` when it has no record.

        Raises:
            BankUnavailable | BankAnswerUnknown: The bank could not say; ask again later.
        """
        ...

    async def refund_status(
        self, refund_id: str, *, correlation_id: str | None = None
    ) -> RefundResult | None:
        """What the bank decided for a refund; ``None`` when it has no record."""
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
