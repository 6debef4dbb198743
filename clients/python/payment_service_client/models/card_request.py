from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="CardRequest")


@_attrs_define
class CardRequest:
    """Card details; the number and CVV are never stored in clear, logged or returned.

    Attributes:
        card_number (str): 12-19 digits, spaces and dashes ignored, passing the Luhn check (which JSON Schema cannot
            express). Never stored in clear, logged or returned. The test cards are listed in docs/api.md.
        cardholder_name (str):
        cvv (str):
        expiry_month (int):
        expiry_year (int):
    """

    card_number: str
    cardholder_name: str
    cvv: str
    expiry_month: int
    expiry_year: int

    def to_dict(self) -> dict[str, Any]:
        card_number = self.card_number

        cardholder_name = self.cardholder_name

        cvv = self.cvv

        expiry_month = self.expiry_month

        expiry_year = self.expiry_year

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "card_number": card_number,
                "cardholder_name": cardholder_name,
                "cvv": cvv,
                "expiry_month": expiry_month,
                "expiry_year": expiry_year,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        card_number = d.pop("card_number")

        cardholder_name = d.pop("cardholder_name")

        cvv = d.pop("cvv")

        expiry_month = d.pop("expiry_month")

        expiry_year = d.pop("expiry_year")

        card_request = cls(
            card_number=card_number,
            cardholder_name=cardholder_name,
            cvv=cvv,
            expiry_month=expiry_month,
            expiry_year=expiry_year,
        )

        return card_request
