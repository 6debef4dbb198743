from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.refund_request_metadata import RefundRequestMetadata


T = TypeVar("T", bound="RefundRequest")


@_attrs_define
class RefundRequest:
    """POST /api/v1/payments/{transaction_id}/refund; every field optional.

    Attributes:
        amount (float | None | str | Unset):
        metadata (RefundRequestMetadata | Unset): A JSON object of at most 50 keys and 16 KiB, stored and returned
            unchanged: objects and arrays nested at most 32 deep, no NUL character in any string, numbers PostgreSQL can
            store.
        reason (None | str | Unset):
    """

    amount: float | None | str | Unset = UNSET
    metadata: RefundRequestMetadata | Unset = UNSET
    reason: None | str | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        amount: float | None | str | Unset
        if isinstance(self.amount, Unset):
            amount = UNSET
        else:
            amount = self.amount

        metadata: dict[str, Any] | Unset = UNSET
        if not isinstance(self.metadata, Unset):
            metadata = self.metadata.to_dict()

        reason: None | str | Unset
        if isinstance(self.reason, Unset):
            reason = UNSET
        else:
            reason = self.reason

        field_dict: dict[str, Any] = {}

        field_dict.update({})
        if amount is not UNSET:
            field_dict["amount"] = amount
        if metadata is not UNSET:
            field_dict["metadata"] = metadata
        if reason is not UNSET:
            field_dict["reason"] = reason

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.refund_request_metadata import RefundRequestMetadata  # noqa: PLC0415

        d = dict(src_dict)

        def _parse_amount(data: object) -> float | None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | str | Unset, data)

        amount = _parse_amount(d.pop("amount", UNSET))

        _metadata = d.pop("metadata", UNSET)
        metadata: RefundRequestMetadata | Unset
        if isinstance(_metadata, Unset):
            metadata = UNSET
        else:
            metadata = RefundRequestMetadata.from_dict(_metadata)

        def _parse_reason(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        reason = _parse_reason(d.pop("reason", UNSET))

        refund_request = cls(
            amount=amount,
            metadata=metadata,
            reason=reason,
        )

        return refund_request
