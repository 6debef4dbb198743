from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.capture_method import CaptureMethod
from ..models.payment_method import PaymentMethod
from ..models.payment_status import PaymentStatus

if TYPE_CHECKING:
    from ..models.card_response import CardResponse
    from ..models.payment_response_metadata import PaymentResponseMetadata


T = TypeVar("T", bound="PaymentResponse")


@_attrs_define
class PaymentResponse:
    """A payment; declines and captures both answer 200.

    Attributes:
        amount (str): A decimal string with exactly the currency's decimals.
        authorization_code (None | str):
        capture_method (CaptureMethod): Whether an approval captures at once or waits for an explicit capture.
        captured_amount (str): A decimal string with exactly the currency's decimals.
        card (CardResponse): What is kept of a card in clear.
        card_last_four (str):
        created_at (datetime.datetime): UTC, RFC 3339 with milliseconds.
        currency (str):
        decline_code (None | str):
        decline_message (None | str):
        description (None | str):
        failure_code (None | str):
        merchant_id (str):
        metadata (PaymentResponseMetadata):
        payment_method (PaymentMethod): How the customer pays.
        refundable_amount (str): A decimal string with exactly the currency's decimals.
        refunded_amount (str): A decimal string with exactly the currency's decimals.
        status (PaymentStatus): Where a payment stands (docs/api.md, "Payments and their statuses").
        transaction_id (str):
        updated_at (datetime.datetime): UTC, RFC 3339 with milliseconds.
    """

    amount: str
    authorization_code: None | str
    capture_method: CaptureMethod
    captured_amount: str
    card: CardResponse
    card_last_four: str
    created_at: datetime.datetime
    currency: str
    decline_code: None | str
    decline_message: None | str
    description: None | str
    failure_code: None | str
    merchant_id: str
    metadata: PaymentResponseMetadata
    payment_method: PaymentMethod
    refundable_amount: str
    refunded_amount: str
    status: PaymentStatus
    transaction_id: str
    updated_at: datetime.datetime
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        amount = self.amount

        authorization_code: None | str
        authorization_code = self.authorization_code

        capture_method = self.capture_method.value

        captured_amount = self.captured_amount

        card = self.card.to_dict()

        card_last_four = self.card_last_four

        created_at = self.created_at.isoformat()

        currency = self.currency

        decline_code: None | str
        decline_code = self.decline_code

        decline_message: None | str
        decline_message = self.decline_message

        description: None | str
        description = self.description

        failure_code: None | str
        failure_code = self.failure_code

        merchant_id = self.merchant_id

        metadata = self.metadata.to_dict()

        payment_method = self.payment_method.value

        refundable_amount = self.refundable_amount

        refunded_amount = self.refunded_amount

        status = self.status.value

        transaction_id = self.transaction_id

        updated_at = self.updated_at.isoformat()

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "amount": amount,
                "authorization_code": authorization_code,
                "capture_method": capture_method,
                "captured_amount": captured_amount,
                "card": card,
                "card_last_four": card_last_four,
                "created_at": created_at,
                "currency": currency,
                "decline_code": decline_code,
                "decline_message": decline_message,
                "description": description,
                "failure_code": failure_code,
                "merchant_id": merchant_id,
                "metadata": metadata,
                "payment_method": payment_method,
                "refundable_amount": refundable_amount,
                "refunded_amount": refunded_amount,
                "status": status,
                "transaction_id": transaction_id,
                "updated_at": updated_at,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.card_response import CardResponse  # noqa: PLC0415
        from ..models.payment_response_metadata import PaymentResponseMetadata  # noqa: PLC0415

        d = dict(src_dict)
        amount = d.pop("amount")

        def _parse_authorization_code(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        authorization_code = _parse_authorization_code(d.pop("authorization_code"))

        capture_method = CaptureMethod(d.pop("capture_method"))

        captured_amount = d.pop("captured_amount")

        card = CardResponse.from_dict(d.pop("card"))

        card_last_four = d.pop("card_last_four")

        created_at = datetime.datetime.fromisoformat(d.pop("created_at"))

        currency = d.pop("currency")

        def _parse_decline_code(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        decline_code = _parse_decline_code(d.pop("decline_code"))

        def _parse_decline_message(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        decline_message = _parse_decline_message(d.pop("decline_message"))

        def _parse_description(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        description = _parse_description(d.pop("description"))

        def _parse_failure_code(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        failure_code = _parse_failure_code(d.pop("failure_code"))

        merchant_id = d.pop("merchant_id")

        metadata = PaymentResponseMetadata.from_dict(d.pop("metadata"))

        payment_method = PaymentMethod(d.pop("payment_method"))

        refundable_amount = d.pop("refundable_amount")

        refunded_amount = d.pop("refunded_amount")

        status = PaymentStatus(d.pop("status"))

        transaction_id = d.pop("transaction_id")

        updated_at = datetime.datetime.fromisoformat(d.pop("updated_at"))

        payment_response = cls(
            amount=amount,
            authorization_code=authorization_code,
            capture_method=capture_method,
            captured_amount=captured_amount,
            card=card,
            card_last_four=card_last_four,
            created_at=created_at,
            currency=currency,
            decline_code=decline_code,
            decline_message=decline_message,
            description=description,
            failure_code=failure_code,
            merchant_id=merchant_id,
            metadata=metadata,
            payment_method=payment_method,
            refundable_amount=refundable_amount,
            refunded_amount=refunded_amount,
            status=status,
            transaction_id=transaction_id,
            updated_at=updated_at,
        )

        payment_response.additional_properties = d
        return payment_response

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
