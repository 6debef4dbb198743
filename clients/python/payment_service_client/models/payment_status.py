from enum import StrEnum


class PaymentStatus(StrEnum):
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    DECLINED = "declined"
    EXPIRED = "expired"
    FAILED = "failed"
    PARTIALLY_REFUNDED = "partially_refunded"
    PROCESSING = "processing"
    REFUNDED = "refunded"
    VOIDED = "voided"

    def __str__(self) -> str:
        return str(self.value)
