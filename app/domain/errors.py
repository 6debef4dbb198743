"""The service's one exception hierarchy, each class with a stable ``code``.

Domain and service code raise these; the HTTP layer maps them to problem+json responses
(RFC 9457) in exactly one place. Nothing here knows about HTTP status codes. A ``detail``
is shown to API clients, so it never carries a card number, a CVV, a secret or SQL.
"""

# The exception names are the service's vocabulary (PaymentNotFound, BankUnavailable, ...),
# shared with every layer; an "Error" suffix on each would add noise, not meaning.
# ruff: noqa: N818

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from app.domain.money import Money

BANK_FAILURE_CODES: frozenset[str] = frozenset(
    {"processing_error", "bank_timeout", "circuit_open", "bank_unreachable"}
)
"""Why the bank could not give an answer; stored as the failed payment's ``failure_code``."""

DEFAULT_RETRY_AFTER_S = 30
"""Seconds a client is told to wait before retrying when the bank is unavailable."""


class PaymentServiceError(Exception):
    """Base of every error the service reports to a client.

    Attributes:
        code: Stable snake_case identifier, the ``code`` member of the problem body.
        title: Short human summary of the error class, the problem's ``title``.
        detail: Human explanation of this occurrence, the problem's ``detail``.
        errors: Optional ``{"field": ..., "message": ...}`` pairs, one per bad field.
        extra: Extra top-level problem members (for example ``transaction_id``).
    """

    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"
    default_detail: ClassVar[str] = "An unexpected error occurred."

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Create the error.

        Args:
            detail: Explanation of this occurrence; the class's default when omitted.
            errors: Field/message pairs for validation failures.
            extra: Extra top-level members for the problem body.
        """
        self.detail: str = detail if detail is not None else self.default_detail
        self.errors: list[dict[str, str]] | None = errors
        self.extra: dict[str, object] = dict(extra) if extra else {}
        super().__init__(self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r})"


class ValidationFailed(PaymentServiceError):
    """A request value breaks a rule; always names the offending field."""

    code: ClassVar[str] = "validation_error"
    title: ClassVar[str] = "Validation failed"
    default_detail: ClassVar[str] = "The request is not valid."
    default_field: ClassVar[str] = "body"

    def __init__(
        self,
        detail: str | None = None,
        *,
        field: str | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Create the error with a single field/message entry.

        Args:
            detail: What is wrong with the value.
            field: Dotted path of the offending field; the class's default when omitted.
            extra: Extra top-level members for the problem body.
        """
        message = detail if detail is not None else self.default_detail
        self.field: str = field if field is not None else self.default_field
        super().__init__(message, errors=[{"field": self.field, "message": message}], extra=extra)


class InvalidAmount(ValidationFailed):
    """An amount is not a positive, exact value within the currency's limits."""

    default_detail: ClassVar[str] = "The amount is not valid."
    default_field: ClassVar[str] = "amount"


class UnknownCurrency(ValidationFailed):
    """A currency code is not an active ISO 4217 code."""

    default_detail: ClassVar[str] = "The currency is not a known ISO 4217 code."
    default_field: ClassVar[str] = "currency"


class InvalidCard(ValidationFailed):
    """A card number is malformed or fails the Luhn check; the number is never echoed."""

    default_detail: ClassVar[str] = "The card number is not valid."
    default_field: ClassVar[str] = "card_data.card_number"


class Unauthorized(PaymentServiceError):
    """The API key is missing, malformed, unknown or revoked."""

    code: ClassVar[str] = "unauthorized"
    title: ClassVar[str] = "Unauthorized"
    default_detail: ClassVar[str] = "A valid API key is required."


class MerchantMismatch(PaymentServiceError):
    """The request names a merchant other than the API key's."""

    code: ClassVar[str] = "merchant_mismatch"
    title: ClassVar[str] = "Merchant mismatch"
    default_detail: ClassVar[str] = "The merchant_id does not match the API key's merchant."


class MerchantInactive(PaymentServiceError):
    """The API key's merchant has been disabled."""

    code: ClassVar[str] = "merchant_inactive"
    title: ClassVar[str] = "Merchant inactive"
    default_detail: ClassVar[str] = "The merchant is disabled."


class CurrencyNotSupported(PaymentServiceError):
    """A known currency that the merchant does not accept."""

    code: ClassVar[str] = "currency_not_supported"
    title: ClassVar[str] = "Currency not supported"
    default_detail: ClassVar[str] = "The merchant does not accept this currency."


class PaymentNotFound(PaymentServiceError):
    """No payment with this id exists for the caller's merchant."""

    code: ClassVar[str] = "payment_not_found"
    title: ClassVar[str] = "Payment not found"
    default_detail: ClassVar[str] = "No payment with this transaction id was found."


class PaymentNotRefundable(PaymentServiceError):
    """The payment is declined, failed or already fully refunded."""

    code: ClassVar[str] = "payment_not_refundable"
    title: ClassVar[str] = "Payment not refundable"
    default_detail: ClassVar[str] = "The payment cannot be refunded."


class PaymentNotCapturable(PaymentServiceError):
    """Only an authorized payment can be captured."""

    code: ClassVar[str] = "payment_not_capturable"
    title: ClassVar[str] = "Payment not capturable"
    default_detail: ClassVar[str] = "The payment cannot be captured."


class PaymentNotVoidable(PaymentServiceError):
    """Only an authorized payment can be voided."""

    code: ClassVar[str] = "payment_not_voidable"
    title: ClassVar[str] = "Payment not voidable"
    default_detail: ClassVar[str] = "The payment cannot be voided."


class RefundExceedsBalance(PaymentServiceError):
    """The requested refund is more than what remains refundable.

    Attributes:
        requested: The refund amount asked for.
        refundable: What remains refundable on the payment.
    """

    code: ClassVar[str] = "refund_exceeds_balance"
    title: ClassVar[str] = "Refund exceeds balance"
    default_detail: ClassVar[str] = "The refund exceeds the refundable balance."

    def __init__(self, *, requested: Money, refundable: Money) -> None:
        """Create the error from the two amounts.

        Args:
            requested: The refund amount asked for.
            refundable: What remains refundable on the payment.
        """
        self.requested = requested
        self.refundable = refundable
        detail = (
            f"Refund of {requested.format()} {requested.currency} exceeds the refundable "
            f"{refundable.format()} {refundable.currency}."
        )
        super().__init__(
            detail,
            errors=[{"field": "amount", "message": detail}],
            extra={"refundable_amount": refundable.format(), "currency": refundable.currency},
        )


class BankUnavailable(PaymentServiceError):
    """The bank certainly did not receive the request: unreachable, or the circuit is open.

    Nothing was charged or refunded; the attempt is recorded as failed and the client may
    retry (with the same Idempotency-Key: such an answer is not remembered).

    Attributes:
        failure_code: One of :data:`BANK_FAILURE_CODES`.
        retry_after_s: Seconds the client should wait before retrying.
    """

    code: ClassVar[str] = "bank_unavailable"
    title: ClassVar[str] = "Bank unavailable"
    default_detail: ClassVar[str] = (
        "The bank could not be reached; nothing was charged and the attempt is recorded as "
        "failed. Retry later; the same Idempotency-Key may be used."
    )

    def __init__(
        self,
        detail: str | None = None,
        *,
        failure_code: str = "bank_unreachable",
        retry_after_s: int = DEFAULT_RETRY_AFTER_S,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Create the error.

        Args:
            detail: Explanation; a generic one when omitted.
            failure_code: Why the bank gave no answer, one of :data:`BANK_FAILURE_CODES`.
            retry_after_s: Seconds the client should wait before retrying (``Retry-After``).
            extra: Extra top-level members, typically the failed payment's ``transaction_id``.

        Raises:
            ValueError: If ``failure_code`` is unknown or ``retry_after_s`` is negative.
        """
        if failure_code not in BANK_FAILURE_CODES:
            raise ValueError(f"unknown bank failure code {failure_code!r}")
        if retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        self.failure_code: str = failure_code
        self.retry_after_s: int = retry_after_s
        super().__init__(detail, extra=extra)

    def about(self, **resource_ids: str) -> BankUnavailable:
        """The same failure, naming the payment (and refund) it was recorded against."""
        return BankUnavailable(
            self.detail,
            failure_code=self.failure_code,
            retry_after_s=self.retry_after_s,
            extra={**self.extra, **resource_ids},
        )


class ServiceUnavailable(PaymentServiceError):
    """The database cannot be reached, or every pooled connection is busy: nothing was done.

    Attributes:
        retry_after_s: Seconds the client should wait before retrying.
    """

    code: ClassVar[str] = "service_unavailable"
    title: ClassVar[str] = "Service unavailable"
    default_detail: ClassVar[str] = (
        "The service cannot reach its database right now; nothing was charged or changed. "
        "Retry later; the same Idempotency-Key may be used."
    )

    def __init__(self, detail: str | None = None, *, retry_after_s: int = 5) -> None:
        """Create the error; ``retry_after_s`` becomes ``Retry-After``."""
        self.retry_after_s = retry_after_s
        super().__init__(detail)


class IdempotencyKeyReused(PaymentServiceError):
    """The idempotency key was already used with a different request body."""

    code: ClassVar[str] = "idempotency_key_reused"
    title: ClassVar[str] = "Idempotency key reused"
    default_detail: ClassVar[str] = (
        "This Idempotency-Key was already used with a different request body."
    )


class IdempotencyInProgress(PaymentServiceError):
    """The first request with this idempotency key is still running."""

    code: ClassVar[str] = "idempotency_in_progress"
    title: ClassVar[str] = "Idempotent request in progress"
    default_detail: ClassVar[str] = (
        "A request with this Idempotency-Key is still being processed; retry shortly."
    )


class InvalidTransition(PaymentServiceError):
    """A payment status change that the state machine forbids."""

    code: ClassVar[str] = "invalid_transition"
    title: ClassVar[str] = "Invalid status transition"
    default_detail: ClassVar[str] = "The payment cannot move to that status."


class MerchantNotFound(PaymentServiceError):
    """No merchant with this id exists (admin CLI)."""

    code: ClassVar[str] = "merchant_not_found"
    title: ClassVar[str] = "Merchant not found"
    default_detail: ClassVar[str] = "No merchant with this id was found."


class ApiKeyNotFound(PaymentServiceError):
    """No API key matches (admin CLI)."""

    code: ClassVar[str] = "api_key_not_found"
    title: ClassVar[str] = "API key not found"
    default_detail: ClassVar[str] = "No such API key was found."


class WebhookTargetRefused(ValidationFailed):
    """A webhook URL that may not be delivered to (SSRF protection, HTTPS only)."""

    code: ClassVar[str] = "webhook_target_refused"
    title: ClassVar[str] = "Webhook target refused"
    default_detail: ClassVar[str] = "This URL may not receive webhooks."
    default_field: ClassVar[str] = "url"


class WebhookEndpointNotFound(PaymentServiceError):
    """No webhook endpoint with this id (admin CLI)."""

    code: ClassVar[str] = "webhook_endpoint_not_found"
    title: ClassVar[str] = "Webhook endpoint not found"
    default_detail: ClassVar[str] = "No such webhook endpoint was found."


HTTP_ERROR_CODES: frozenset[str] = frozenset(
    {"malformed_json", "payload_too_large", "internal_error", "not_found", "method_not_allowed"}
)
"""Codes the HTTP layer raises itself, without a domain exception behind them."""


def _subclasses(cls: type[PaymentServiceError]) -> list[type[PaymentServiceError]]:
    found: list[type[PaymentServiceError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


ERROR_CODES: frozenset[str] = frozenset(
    {PaymentServiceError.code}
    | {cls.code for cls in _subclasses(PaymentServiceError)}
    | HTTP_ERROR_CODES
)
"""Every ``code`` the service can put in a problem body."""
