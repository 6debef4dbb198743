from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.card_brand import CardBrand

T = TypeVar("T", bound="CardResponse")


@_attrs_define
class CardResponse:
    """What is kept of a card in clear.

    Attributes:
        brand (CardBrand): Card network, derived from the number's leading digits.
        exp_month (int):
        exp_year (int):
        last4 (str):
    """

    brand: CardBrand
    exp_month: int
    exp_year: int
    last4: str
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        brand = self.brand.value

        exp_month = self.exp_month

        exp_year = self.exp_year

        last4 = self.last4

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "brand": brand,
                "exp_month": exp_month,
                "exp_year": exp_year,
                "last4": last4,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        brand = CardBrand(d.pop("brand"))

        exp_month = d.pop("exp_month")

        exp_year = d.pop("exp_year")

        last4 = d.pop("last4")

        card_response = cls(
            brand=brand,
            exp_month=exp_month,
            exp_year=exp_year,
            last4=last4,
        )

        card_response.additional_properties = d
        return card_response

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
