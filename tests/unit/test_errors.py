"""The domain exception hierarchy and its stable codes."""

import pytest

from app.domain import errors
from app.domain.errors import (
    BANK_FAILURE_CODES,
    ERROR_CODES,
    ApiKeyNotFound,
    BankUnavailable,
    CurrencyNotSupported,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidAmount,
    InvalidCard,
    InvalidTransition,
    MerchantInactive,
    MerchantMismatch,
    MerchantNotFound,
    PaymentNotCapturable,
    PaymentNotFound,
    PaymentNotRefundable,
    PaymentNotVoidable,
    PaymentServiceError,
    RefundExceedsBalance,
    ServiceUnavailable,
    Unauthorized,
    UnknownCurrency,
    ValidationFailed,
    WebhookEndpointNotFound,
    WebhookTargetRefused,
)
from app.domain.money import Money

EXPECTED_CODES = {
    InvalidAmount: "validation_error",
    UnknownCurrency: "validation_error",
    InvalidCard: "validation_error",
    ValidationFailed: "validation_error",
    Unauthorized: "unauthorized",
    MerchantMismatch: "merchant_mismatch",
    MerchantInactive: "merchant_inactive",
    CurrencyNotSupported: "currency_not_supported",
    PaymentNotFound: "payment_not_found",
    PaymentNotRefundable: "payment_not_refundable",
    PaymentNotCapturable: "payment_not_capturable",
    PaymentNotVoidable: "payment_not_voidable",
    RefundExceedsBalance: "refund_exceeds_balance",
    BankUnavailable: "bank_unavailable",
    ServiceUnavailable: "service_unavailable",
    IdempotencyKeyReused: "idempotency_key_reused",
    IdempotencyInProgress: "idempotency_in_progress",
    InvalidTransition: "invalid_transition",
    MerchantNotFound: "merchant_not_found",
    ApiKeyNotFound: "api_key_not_found",
    WebhookEndpointNotFound: "webhook_endpoint_not_found",
    WebhookTargetRefused: "webhook_target_refused",
}


@pytest.mark.parametrize(("cls", "code"), EXPECTED_CODES.items(), ids=lambda v: str(v))
def test_every_error_has_its_stable_code_and_a_title(
    cls: type[PaymentServiceError], code: str
) -> None:
    assert issubclass(cls, PaymentServiceError)
    assert cls.code == code
    assert cls.title
    assert cls.title[0].isupper()


def test_amount_currency_and_card_errors_are_validation_failures() -> None:
    for cls in (InvalidAmount, UnknownCurrency, InvalidCard):
        assert issubclass(cls, ValidationFailed)


def test_error_codes_list_every_code_once_including_the_http_layer_ones() -> None:
    assert set(EXPECTED_CODES.values()) <= ERROR_CODES
    assert {
        "malformed_json",
        "payload_too_large",
        "internal_error",
        "not_found",
        "method_not_allowed",
    } <= ERROR_CODES
    assert all(code.isidentifier() and code.islower() for code in ERROR_CODES)


def test_every_error_class_in_the_module_is_covered_by_error_codes() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, PaymentServiceError)
    ]
    assert {cls.code for cls in classes} <= ERROR_CODES
    assert set(classes) == {PaymentServiceError, *EXPECTED_CODES}


def test_detail_defaults_to_the_class_message_and_is_the_exception_text() -> None:
    error = PaymentNotFound()
    assert error.detail == "No payment with this transaction id was found."
    assert str(error) == error.detail
    assert error.errors is None
    assert error.extra == {}


def test_detail_errors_and_extra_can_be_given() -> None:
    error = MerchantInactive(
        "Merchant m1 is disabled.",
        errors=[{"field": "merchant_id", "message": "disabled"}],
        extra={"merchant_id": "m1"},
    )
    assert error.detail == "Merchant m1 is disabled."
    assert error.errors == [{"field": "merchant_id", "message": "disabled"}]
    assert error.extra == {"merchant_id": "m1"}
    assert (
        repr(error)
        == "MerchantInactive(code='merchant_inactive', detail='Merchant m1 is disabled.')"
    )


def test_validation_failure_names_its_field() -> None:
    error = InvalidAmount("Amount must be greater than zero.", field="refund.amount")
    assert error.field == "refund.amount"
    assert error.errors == [
        {"field": "refund.amount", "message": "Amount must be greater than zero."}
    ]


def test_refund_exceeds_balance_explains_both_amounts() -> None:
    error = RefundExceedsBalance(requested=Money(8000, "USD"), refundable=Money(4999, "USD"))
    assert error.detail == "Refund of 80.00 USD exceeds the refundable 49.99 USD."
    assert error.errors == [{"field": "amount", "message": error.detail}]
    assert error.extra == {"refundable_amount": "49.99", "currency": "USD"}


def test_bank_unavailable_carries_failure_code_retry_after_and_transaction_id() -> None:
    error = BankUnavailable(
        failure_code="bank_timeout", retry_after_s=15, extra={"transaction_id": "txn_1"}
    )
    assert error.failure_code == "bank_timeout"
    assert error.retry_after_s == 15
    assert error.extra == {"transaction_id": "txn_1"}
    assert BankUnavailable().failure_code in BANK_FAILURE_CODES


def test_bank_failure_codes_are_the_four_documented_reasons() -> None:
    assert {"processing_error", "bank_timeout", "circuit_open", "bank_unreachable"} == (
        BANK_FAILURE_CODES
    )


@pytest.mark.parametrize(
    ("failure_code", "retry_after_s"), [("card_declined", 30), ("bank_timeout", -1)]
)
def test_bank_unavailable_refuses_unknown_failure_codes_and_negative_retry(
    failure_code: str, retry_after_s: int
) -> None:
    with pytest.raises(ValueError, match=r"failure code|retry_after_s"):
        BankUnavailable(failure_code=failure_code, retry_after_s=retry_after_s)
