from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.refund_status import RefundStatus

if TYPE_CHECKING:
    from ..models.refund_summary_metadata import RefundSummaryMetadata


T = TypeVar("T", bound="RefundSummary")


@_attrs_define
class RefundSummary:
    """A refund as listed under its payment.

    Attributes:
        amount (str): A decimal string with exactly the currency's decimals.
        created_at (datetime.datetime): UTC, RFC 3339 with milliseconds.
        currency (str):
        metadata (RefundSummaryMetadata):
        reason (None | str):
        refund_id (str):
        status (RefundStatus): Where a refund stands.
    """

    amount: str
    created_at: datetime.datetime
    currency: str
    metadata: RefundSummaryMetadata
    reason: None | str
    refund_id: str
    status: RefundStatus
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        amount = self.amount

        created_at = self.created_at.isoformat()

        currency = self.currency

        metadata = self.metadata.to_dict()

        reason: None | str
        reason = self.reason

        refund_id = self.refund_id

        status = self.status.value

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "amount": amount,
                "created_at": created_at,
                "currency": currency,
                "metadata": metadata,
                "reason": reason,
                "refund_id": refund_id,
                "status": status,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.refund_summary_metadata import RefundSummaryMetadata  # noqa: PLC0415

        d = dict(src_dict)
        amount = d.pop("amount")

        created_at = datetime.datetime.fromisoformat(d.pop("created_at"))

        currency = d.pop("currency")

        metadata = RefundSummaryMetadata.from_dict(d.pop("metadata"))

        def _parse_reason(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        reason = _parse_reason(d.pop("reason"))

        refund_id = d.pop("refund_id")

        status = RefundStatus(d.pop("status"))

        refund_summary = cls(
            amount=amount,
            created_at=created_at,
            currency=currency,
            metadata=metadata,
            reason=reason,
            refund_id=refund_id,
            status=status,
        )

        refund_summary.additional_properties = d
        return refund_summary

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
