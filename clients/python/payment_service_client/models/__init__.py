"""Contains all the data models used in inputs/outputs"""

from .capture_method import CaptureMethod
from .capture_request import CaptureRequest
from .card_brand import CardBrand
from .card_request import CardRequest
from .card_response import CardResponse
from .field_error import FieldError
from .health_check import HealthCheck
from .health_check_status import HealthCheckStatus
from .health_response import HealthResponse
from .health_response_checks import HealthResponseChecks
from .health_response_status import HealthResponseStatus
from .list_payments_metadata import ListPaymentsMetadata
from .liveness_response import LivenessResponse
from .payment_detail_response import PaymentDetailResponse
from .payment_detail_response_metadata import PaymentDetailResponseMetadata
from .payment_list import PaymentList
from .payment_method import PaymentMethod
from .payment_request import PaymentRequest
from .payment_request_currency import PaymentRequestCurrency
from .payment_request_metadata import PaymentRequestMetadata
from .payment_response import PaymentResponse
from .payment_response_metadata import PaymentResponseMetadata
from .payment_status import PaymentStatus
from .problem import Problem
from .problem_code import ProblemCode
from .readiness_response import ReadinessResponse
from .readiness_response_status import ReadinessResponseStatus
from .refund_request import RefundRequest
from .refund_request_metadata import RefundRequestMetadata
from .refund_response import RefundResponse
from .refund_response_metadata import RefundResponseMetadata
from .refund_status import RefundStatus
from .refund_summary import RefundSummary
from .refund_summary_metadata import RefundSummaryMetadata
from .service_info import ServiceInfo

__all__ = (
    "CaptureMethod",
    "CaptureRequest",
    "CardBrand",
    "CardRequest",
    "CardResponse",
    "FieldError",
    "HealthCheck",
    "HealthCheckStatus",
    "HealthResponse",
    "HealthResponseChecks",
    "HealthResponseStatus",
    "ListPaymentsMetadata",
    "LivenessResponse",
    "PaymentDetailResponse",
    "PaymentDetailResponseMetadata",
    "PaymentList",
    "PaymentMethod",
    "PaymentRequest",
    "PaymentRequestCurrency",
    "PaymentRequestMetadata",
    "PaymentResponse",
    "PaymentResponseMetadata",
    "PaymentStatus",
    "Problem",
    "ProblemCode",
    "ReadinessResponse",
    "ReadinessResponseStatus",
    "RefundRequest",
    "RefundRequestMetadata",
    "RefundResponse",
    "RefundResponseMetadata",
    "RefundStatus",
    "RefundSummary",
    "RefundSummaryMetadata",
    "ServiceInfo",
)
