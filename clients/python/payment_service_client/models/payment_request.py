from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define

from ..models.capture_method import CaptureMethod
from ..models.payment_method import PaymentMethod
from ..models.payment_request_currency import PaymentRequestCurrency
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.card_request import CardRequest
    from ..models.payment_request_metadata import PaymentRequestMetadata


T = TypeVar("T", bound="PaymentRequest")


@_attrs_define
class PaymentRequest:
    """POST /api/v1/payments/process.

    Attributes:
        amount (float | str): Amount in major units, greater than 0 and at most 1,000,000: a JSON number or a decimal
            string, parsed exactly (never as a binary float), with no more decimals than the currency has (USD 2: `99.99`,
            JPY 0: `1000`, KWD 3: `1.500`); trailing zeros are fine.
        card_data (CardRequest): Card details; the number and CVV are never stored in clear, logged or returned.
        currency (PaymentRequestCurrency): An active ISO 4217 alpha-3 code, which the merchant accepts
            (`currency_not_supported` otherwise). Listed in upper case, accepted in any case; answered in upper case.
        merchant_id (str): The API key's merchant.
        payment_method (PaymentMethod): How the customer pays.
        capture_method (CaptureMethod | Unset): Whether an approval captures at once or waits for an explicit capture.
        description (None | str | Unset):
        metadata (PaymentRequestMetadata | Unset): A JSON object of at most 50 keys and 16 KiB, stored and returned
            unchanged: objects and arrays nested at most 32 deep, no NUL character in any string, numbers PostgreSQL can
            store.
    """

    amount: float | str
    card_data: CardRequest
    currency: PaymentRequestCurrency
    merchant_id: str
    payment_method: PaymentMethod
    capture_method: CaptureMethod | Unset = UNSET
    description: None | str | Unset = UNSET
    metadata: PaymentRequestMetadata | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        amount: float | str
        amount = self.amount

        card_data = self.card_data.to_dict()

        currency = self.currency.value

        merchant_id = self.merchant_id

        payment_method = self.payment_method.value

        capture_method: str | Unset = UNSET
        if not isinstance(self.capture_method, Unset):
            capture_method = self.capture_method.value

        description: None | str | Unset
        if isinstance(self.description, Unset):
            description = UNSET
        else:
            description = self.description

        metadata: dict[str, Any] | Unset = UNSET
        if not isinstance(self.metadata, Unset):
            metadata = self.metadata.to_dict()

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "amount": amount,
                "card_data": card_data,
                "currency": currency,
                "merchant_id": merchant_id,
                "payment_method": payment_method,
            }
        )
        if capture_method is not UNSET:
            field_dict["capture_method"] = capture_method
        if description is not UNSET:
            field_dict["description"] = description
        if metadata is not UNSET:
            field_dict["metadata"] = metadata

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.card_request import CardRequest  # noqa: PLC0415
        from ..models.payment_request_metadata import PaymentRequestMetadata  # noqa: PLC0415

        d = dict(src_dict)

        def _parse_amount(data: object) -> float | str:
            return cast(float | str, data)

        amount = _parse_amount(d.pop("amount"))

        card_data = CardRequest.from_dict(d.pop("card_data"))

        currency = PaymentRequestCurrency(d.pop("currency"))

        merchant_id = d.pop("merchant_id")

        payment_method = PaymentMethod(d.pop("payment_method"))

        _capture_method = d.pop("capture_method", UNSET)
        capture_method: CaptureMethod | Unset
        if isinstance(_capture_method, Unset):
            capture_method = UNSET
        else:
            capture_method = CaptureMethod(_capture_method)

        def _parse_description(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        description = _parse_description(d.pop("description", UNSET))

        _metadata = d.pop("metadata", UNSET)
        metadata: PaymentRequestMetadata | Unset
        if isinstance(_metadata, Unset):
            metadata = UNSET
        else:
            metadata = PaymentRequestMetadata.from_dict(_metadata)

        payment_request = cls(
            amount=amount,
            card_data=card_data,
            currency=currency,
            merchant_id=merchant_id,
            payment_method=payment_method,
            capture_method=capture_method,
            description=description,
            metadata=metadata,
        )

        return payment_request
