from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.payment_status import PaymentStatus
from ..models.refund_status import RefundStatus

if TYPE_CHECKING:
    from ..models.refund_response_metadata import RefundResponseMetadata


T = TypeVar("T", bound="RefundResponse")


@_attrs_define
class RefundResponse:
    """A refund and the payment's balance after it.

    Attributes:
        amount (str): A decimal string with exactly the currency's decimals.
        created_at (datetime.datetime): UTC, RFC 3339 with milliseconds.
        currency (str):
        metadata (RefundResponseMetadata):
        payment_status (PaymentStatus): Where a payment stands (docs/api.md, "Payments and their statuses").
        reason (None | str):
        refund_id (str):
        refundable_amount (str): A decimal string with exactly the currency's decimals.
        refunded_amount (str): A decimal string with exactly the currency's decimals.
        status (RefundStatus): Where a refund stands.
        transaction_id (str):
    """

    amount: str
    created_at: datetime.datetime
    currency: str
    metadata: RefundResponseMetadata
    payment_status: PaymentStatus
    reason: None | str
    refund_id: str
    refundable_amount: str
    refunded_amount: str
    status: RefundStatus
    transaction_id: str
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        amount = self.amount

        created_at = self.created_at.isoformat()

        currency = self.currency

        metadata = self.metadata.to_dict()

        payment_status = self.payment_status.value

        reason: None | str
        reason = self.reason

        refund_id = self.refund_id

        refundable_amount = self.refundable_amount

        refunded_amount = self.refunded_amount

        status = self.status.value

        transaction_id = self.transaction_id

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "amount": amount,
                "created_at": created_at,
                "currency": currency,
                "metadata": metadata,
                "payment_status": payment_status,
                "reason": reason,
                "refund_id": refund_id,
                "refundable_amount": refundable_amount,
                "refunded_amount": refunded_amount,
                "status": status,
                "transaction_id": transaction_id,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.refund_response_metadata import RefundResponseMetadata  # noqa: PLC0415

        d = dict(src_dict)
        amount = d.pop("amount")

        created_at = datetime.datetime.fromisoformat(d.pop("created_at"))

        currency = d.pop("currency")

        metadata = RefundResponseMetadata.from_dict(d.pop("metadata"))

        payment_status = PaymentStatus(d.pop("payment_status"))

        def _parse_reason(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        reason = _parse_reason(d.pop("reason"))

        refund_id = d.pop("refund_id")

        refundable_amount = d.pop("refundable_amount")

        refunded_amount = d.pop("refunded_amount")

        status = RefundStatus(d.pop("status"))

        transaction_id = d.pop("transaction_id")

        refund_response = cls(
            amount=amount,
            created_at=created_at,
            currency=currency,
            metadata=metadata,
            payment_status=payment_status,
            reason=reason,
            refund_id=refund_id,
            refundable_amount=refundable_amount,
            refunded_amount=refunded_amount,
            status=status,
            transaction_id=transaction_id,
        )

        refund_response.additional_properties = d
        return refund_response

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
