from enum import StrEnum


class ProblemCode(StrEnum):
    API_KEY_NOT_FOUND = "api_key_not_found"
    BANK_UNAVAILABLE = "bank_unavailable"
    CURRENCY_NOT_SUPPORTED = "currency_not_supported"
    IDEMPOTENCY_IN_PROGRESS = "idempotency_in_progress"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    INTERNAL_ERROR = "internal_error"
    INVALID_TRANSITION = "invalid_transition"
    MALFORMED_JSON = "malformed_json"
    MERCHANT_INACTIVE = "merchant_inactive"
    MERCHANT_MISMATCH = "merchant_mismatch"
    MERCHANT_NOT_FOUND = "merchant_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    PAYMENT_NOT_CAPTURABLE = "payment_not_capturable"
    PAYMENT_NOT_FOUND = "payment_not_found"
    PAYMENT_NOT_REFUNDABLE = "payment_not_refundable"
    PAYMENT_NOT_VOIDABLE = "payment_not_voidable"
    REFUND_EXCEEDS_BALANCE = "refund_exceeds_balance"
    SERVICE_UNAVAILABLE = "service_unavailable"
    UNAUTHORIZED = "unauthorized"
    VALIDATION_ERROR = "validation_error"
    WEBHOOK_ENDPOINT_NOT_FOUND = "webhook_endpoint_not_found"
    WEBHOOK_TARGET_REFUSED = "webhook_target_refused"

    def __str__(self) -> str:
        return str(self.value)
