"""Exact money: integer minor units tagged with an ISO 4217 currency.

This module owns the currency table (codes and minor-unit exponents), the amount rules
of the API (positive, no more decimals than the currency has, at most
:data:`MAX_MAJOR_UNITS`) and the decimal-string format used in every response. Binary
floats are refused everywhere: a JSON number reaches this module as a ``Decimal`` or a
string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Self

from app.domain.errors import InvalidAmount, UnknownCurrency

# Active ISO 4217 codes (List One) and their minor-unit exponents. Fund codes with a
# defined exponent (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI, UYW) are included; codes whose
# minor unit is "N.A." (precious metals XAU/XAG/XPT/XPD, bond-market units XBA-XBD, XDR,
# XSU, XUA, the test code XTS and "no currency" XXX) are excluded: they cannot be
# expressed as an exact minor amount and are never card money. ANG is still listed while
# it is replaced by XCG; withdrawn codes (HRK, SLL, CUC, ZWL, ...) are not.
_EXPONENTS: dict[str, int] = {
    "AED": 2, "AFN": 2, "ALL": 2, "AMD": 2, "ANG": 2, "AOA": 2, "ARS": 2, "AUD": 2,
    "AWG": 2, "AZN": 2, "BAM": 2, "BBD": 2, "BDT": 2, "BGN": 2, "BHD": 3, "BIF": 0,
    "BMD": 2, "BND": 2, "BOB": 2, "BOV": 2, "BRL": 2, "BSD": 2, "BTN": 2, "BWP": 2,
    "BYN": 2, "BZD": 2, "CAD": 2, "CDF": 2, "CHE": 2, "CHF": 2, "CHW": 2, "CLF": 4,
    "CLP": 0, "CNY": 2, "COP": 2, "COU": 2, "CRC": 2, "CUP": 2, "CVE": 2, "CZK": 2,
    "DJF": 0, "DKK": 2, "DOP": 2, "DZD": 2, "EGP": 2, "ERN": 2, "ETB": 2, "EUR": 2,
    "FJD": 2, "FKP": 2, "GBP": 2, "GEL": 2, "GHS": 2, "GIP": 2, "GMD": 2, "GNF": 0,
    "GTQ": 2, "GYD": 2, "HKD": 2, "HNL": 2, "HTG": 2, "HUF": 2, "IDR": 2, "ILS": 2,
    "INR": 2, "IQD": 3, "IRR": 2, "ISK": 0, "JMD": 2, "JOD": 3, "JPY": 0, "KES": 2,
    "KGS": 2, "KHR": 2, "KMF": 0, "KPW": 2, "KRW": 0, "KWD": 3, "KYD": 2, "KZT": 2,
    "LAK": 2, "LBP": 2, "LKR": 2, "LRD": 2, "LSL": 2, "LYD": 3, "MAD": 2, "MDL": 2,
    "MGA": 2, "MKD": 2, "MMK": 2, "MNT": 2, "MOP": 2, "MRU": 2, "MUR": 2, "MVR": 2,
    "MWK": 2, "MXN": 2, "MXV": 2, "MYR": 2, "MZN": 2, "NAD": 2, "NGN": 2, "NIO": 2,
    "NOK": 2, "NPR": 2, "NZD": 2, "OMR": 3, "PAB": 2, "PEN": 2, "PGK": 2, "PHP": 2,
    "PKR": 2, "PLN": 2, "PYG": 0, "QAR": 2, "RON": 2, "RSD": 2, "RUB": 2, "RWF": 0,
    "SAR": 2, "SBD": 2, "SCR": 2, "SDG": 2, "SEK": 2, "SGD": 2, "SHP": 2, "SLE": 2,
    "SOS": 2, "SRD": 2, "SSP": 2, "STN": 2, "SVC": 2, "SYP": 2, "SZL": 2, "THB": 2,
    "TJS": 2, "TMT": 2, "TND": 3, "TOP": 2, "TRY": 2, "TTD": 2, "TWD": 2, "TZS": 2,
    "UAH": 2, "UGX": 0, "USD": 2, "USN": 2, "UYI": 0, "UYU": 2, "UYW": 4, "UZS": 2,
    "VED": 2, "VES": 2, "VND": 0, "VUV": 0, "WST": 2, "XAF": 0, "XCD": 2, "XCG": 2,
    "XOF": 0, "XPF": 0, "YER": 2, "ZAR": 2, "ZMW": 2, "ZWG": 2,
}  # fmt: skip

CURRENCY_EXPONENTS: Mapping[str, int] = MappingProxyType(_EXPONENTS)
"""Active ISO 4217 alpha-3 code -> number of minor-unit decimals (read-only)."""

MAX_MAJOR_UNITS = Decimal("1000000")
"""The largest amount accepted, in major units of any currency."""


def normalize_currency(code: str) -> str:
    """Return the upper-case ISO 4217 code.

    Raises:
        UnknownCurrency: If the code is not an active ISO 4217 code.
    """
    if not isinstance(code, str):
        raise UnknownCurrency("Currency must be a three-letter ISO 4217 code.")
    normalized = code.strip().upper()
    if normalized not in CURRENCY_EXPONENTS:
        # Echo only short alphabetic input: the detail goes back to the client verbatim.
        if normalized.isascii() and normalized.isalpha() and len(normalized) <= 8:
            raise UnknownCurrency(f"Unknown currency code {normalized!r}; expected ISO 4217.")
        raise UnknownCurrency("Currency must be a three-letter ISO 4217 code.")
    return normalized


def exponent(currency: str) -> int:
    """Return the number of minor-unit decimals of a currency (USD 2, JPY 0, KWD 3)."""
    return CURRENCY_EXPONENTS[normalize_currency(currency)]


def _minor_to_decimal(minor: int, exp: int) -> Decimal:
    # Built from the digit tuple so no decimal context (precision, rounding) is involved.
    digits = tuple(int(d) for d in str(abs(minor)))
    return Decimal((1 if minor < 0 else 0, digits, -exp))


def format_minor(minor: int, currency: str) -> str:
    """Format a raw minor amount with exactly the currency's decimals ("0.00", "100", "1.500")."""
    return format(_minor_to_decimal(minor, exponent(currency)), "f")


def _parse_decimal(amount: object) -> Decimal:
    if isinstance(amount, float):
        raise TypeError("binary floats are not accepted for money; pass a Decimal or a str")
    if isinstance(amount, bool):
        raise TypeError("a bool is not an amount")
    if isinstance(amount, Decimal):
        return amount
    if isinstance(amount, int):
        return Decimal(amount)
    if isinstance(amount, str):
        # Decimal() also accepts "1_000"; an amount is written without digit separators.
        if "_" in amount:
            raise InvalidAmount("Amount must be a decimal number.")
        try:
            return Decimal(amount)
        except InvalidOperation:
            raise InvalidAmount("Amount must be a decimal number.") from None
    raise TypeError(f"an amount must be a Decimal, int or str, not {type(amount).__name__}")


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: an integer number of minor units in one currency.

    The constructor accepts any integer (``zero`` and differences may be zero or
    negative); amounts coming from clients go through :meth:`from_major`, which enforces
    the API's amount rules.

    Attributes:
        minor: The amount in minor units (cents for USD, yen for JPY, fils for KWD).
        currency: The upper-case ISO 4217 code.
    """

    minor: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.minor, bool) or not isinstance(self.minor, int):
            raise TypeError("Money.minor must be an int")
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    @classmethod
    def from_major(cls, amount: Decimal | int | str, currency: str) -> Self:
        """Parse an amount in major units exactly.

        Trailing zeros beyond the currency's decimals are accepted because the value is
        still exact ("10.500" USD is 10.50); a non-zero digit beyond them is not.

        Args:
            amount: The amount in major units, e.g. ``Decimal("99.99")`` or ``"99.99"``.
            currency: ISO 4217 code, any case.

        Returns:
            The amount in minor units.

        Raises:
            TypeError: If ``amount`` is a float (or another non-numeric type).
            UnknownCurrency: If ``currency`` is not an ISO 4217 code.
            InvalidAmount: If the amount is not finite, not positive, has more decimals
                than the currency, or exceeds :data:`MAX_MAJOR_UNITS`.
        """
        code = normalize_currency(currency)
        exp = CURRENCY_EXPONENTS[code]
        value = _parse_decimal(amount)
        if not value.is_finite():
            raise InvalidAmount("Amount must be a finite number.")
        if value <= 0:
            raise InvalidAmount("Amount must be greater than zero.")
        if value > MAX_MAJOR_UNITS:
            raise InvalidAmount(f"Amount must not exceed {MAX_MAJOR_UNITS} {code}.")
        # Exact integer arithmetic on the digit tuple: the decimal context never rounds.
        _, digits, value_exp = value.as_tuple()
        if not isinstance(value_exp, int):  # pragma: no cover - finite values have one
            raise InvalidAmount("Amount must be a finite number.")
        coefficient = "".join(map(str, digits)).rstrip("0")
        value_exp += len(digits) - len(coefficient)
        if value_exp + exp < 0:
            places = "no decimal places" if exp == 0 else f"at most {exp} decimal places"
            raise InvalidAmount(f"{code} amounts have {places}.")
        return cls(int(coefficient) * 10 ** (value_exp + exp), code)

    @classmethod
    def zero(cls, currency: str) -> Self:
        """Return a zero amount in the currency."""
        return cls(0, currency)

    @property
    def exponent(self) -> int:
        """The currency's number of minor-unit decimals."""
        return CURRENCY_EXPONENTS[self.currency]

    @property
    def is_zero(self) -> bool:
        """Whether the amount is zero."""
        return self.minor == 0

    def to_decimal(self) -> Decimal:
        """Return the amount in major units, quantized to the currency's decimals."""
        return _minor_to_decimal(self.minor, self.exponent)

    def format(self) -> str:
        """Return the amount as a decimal string with exactly the currency's decimals."""
        return format(self.to_decimal(), "f")

    def __str__(self) -> str:
        return f"{self.format()} {self.currency}"

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} and {other.currency} amounts")

    def __add__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other)
        return Money(self.minor - other.minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other)
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other)
        return self.minor <= other.minor

    def __gt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other)
        return self.minor > other.minor

    def __ge__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other)
        return self.minor >= other.minor
