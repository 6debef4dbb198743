"""Card numbers: normalisation, Luhn, brand, masking, expiry, and the test-card table.

:data:`TEST_CARDS` is the one table of test card numbers and how the bank answers them;
both the in-process bank simulator and the MockServer expectations are generated from it.
Nothing in this module ever puts a full card number into an error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar, Final

from app.domain.errors import InvalidCard

MIN_CARD_DIGITS: Final = 12
MAX_CARD_DIGITS: Final = 19


def normalize_card_number(raw: str) -> str:
    """Return the card number without the spaces and dashes people type into it."""
    return raw.replace(" ", "").replace("-", "")


def luhn_valid(number: str) -> bool:
    """Whether a string of digits passes the Luhn (mod 10) check."""
    if not number or not (number.isascii() and number.isdigit()):
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """Return the digit that makes ``partial + digit`` Luhn-valid.

    Raises:
        ValueError: If ``partial`` is not a string of digits.
    """
    if not partial or not (partial.isascii() and partial.isdigit()):
        raise ValueError("partial must be a non-empty string of digits")
    for candidate in "0123456789":
        if luhn_valid(partial + candidate):
            return candidate
    raise AssertionError("unreachable: one of ten check digits always fits")  # pragma: no cover


def validate_card_number(raw: str) -> str:
    """Return the card number's digits if it is a plausible card number.

    Raises:
        InvalidCard: Unless it is 12-19 digits after removing spaces and dashes and
            passes the Luhn check. The message never contains the number.
    """
    number = normalize_card_number(raw) if isinstance(raw, str) else ""
    if not (number.isascii() and number.isdigit()):
        raise InvalidCard("Card number must contain only digits, spaces and dashes.")
    if not MIN_CARD_DIGITS <= len(number) <= MAX_CARD_DIGITS:
        raise InvalidCard(f"Card number must have {MIN_CARD_DIGITS} to {MAX_CARD_DIGITS} digits.")
    if not luhn_valid(number):
        raise InvalidCard("Card number is not valid (failed the Luhn check).")
    return number


class CardBrand(StrEnum):
    """Card network, derived from the number's leading digits."""

    VISA = "visa"
    MASTERCARD = "mastercard"
    AMEX = "amex"
    DISCOVER = "discover"
    UNKNOWN = "unknown"


def card_brand(number: str) -> CardBrand:
    """Return the brand for a card number from its issuer prefix (docs/api.md, "Test cards")."""
    digits = normalize_card_number(number)
    if not digits.isdigit():
        return CardBrand.UNKNOWN
    if digits.startswith("4"):
        return CardBrand.VISA
    if digits[:2] in {"34", "37"}:
        return CardBrand.AMEX
    if len(digits) >= 2 and 51 <= int(digits[:2]) <= 55:
        return CardBrand.MASTERCARD
    if len(digits) >= 4 and 2221 <= int(digits[:4]) <= 2720:
        return CardBrand.MASTERCARD
    if digits.startswith(("6011", "65")):
        return CardBrand.DISCOVER
    if len(digits) >= 3 and 644 <= int(digits[:3]) <= 649:
        return CardBrand.DISCOVER
    return CardBrand.UNKNOWN


def last4(number: str) -> str:
    """Return the last four digits of a card number."""
    return normalize_card_number(number)[-4:]


def mask(number: str) -> str:
    """Return the card number with every digit but the last four replaced by ``*``."""
    digits = normalize_card_number(number)
    return "*" * max(len(digits) - 4, 0) + digits[-4:]


def is_expired(exp_month: int, exp_year: int, today: date) -> bool:
    """Whether a card has expired; a card is valid through the end of its expiry month.

    Raises:
        ValueError: If ``exp_month`` is not 1-12.
    """
    if not 1 <= exp_month <= 12:
        raise ValueError("exp_month must be between 1 and 12")
    return (exp_year, exp_month) < (today.year, today.month)


class BankBehaviour(StrEnum):
    """How the (simulated) bank answers an authorization for a card."""

    APPROVE = "approve"
    DECLINE = "decline"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class TestCard:
    """One row of the test-card table.

    Attributes:
        number: The card number (digits only).
        behaviour: How the bank answers.
        code: The decline code (``decline``), failure code (``error``/``timeout``), or
            ``None`` for approvals.
        description: What the row is for, in a few words.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite the name

    number: str
    behaviour: BankBehaviour
    code: str | None
    description: str


BANK_ERROR_STATUS: Final = 500
"""HTTP status the bank answers, every time, for the ``error`` test card."""

BANK_TIMEOUT_DELAY_S: Final = 10
"""Seconds the bank waits before answering the ``timeout`` test card."""

DECLINE_MESSAGES: Mapping[str, str] = MappingProxyType(
    {
        "card_declined": "The card was declined.",
        "insufficient_funds": "The card has insufficient funds.",
        "lost_card": "The card has been reported lost.",
        "stolen_card": "The card has been reported stolen.",
        "expired_card": "The card has expired.",
        "incorrect_cvc": "The card's security code is incorrect.",
    }
)
"""Decline code -> human message shown as ``decline_message``."""

TEST_CARDS: tuple[TestCard, ...] = (
    TestCard("4242424242424242", BankBehaviour.APPROVE, None, "Visa, approved"),
    TestCard("4111111111111111", BankBehaviour.APPROVE, None, "Visa, approved"),
    TestCard("5555555555554444", BankBehaviour.APPROVE, None, "Mastercard, approved"),
    TestCard("378282246310005", BankBehaviour.APPROVE, None, "Amex (4-digit CVV), approved"),
    TestCard("4000000000000002", BankBehaviour.DECLINE, "card_declined", "Generic decline"),
    TestCard("4000000000009995", BankBehaviour.DECLINE, "insufficient_funds", "Insufficient funds"),
    TestCard("4000000000009987", BankBehaviour.DECLINE, "lost_card", "Lost card"),
    TestCard("4000000000009979", BankBehaviour.DECLINE, "stolen_card", "Stolen card"),
    TestCard("4000000000000069", BankBehaviour.DECLINE, "expired_card", "Expired card"),
    TestCard("4000000000000127", BankBehaviour.DECLINE, "incorrect_cvc", "Incorrect CVC"),
    TestCard(
        "4000000000000119",
        BankBehaviour.ERROR,
        "processing_error",
        f"Bank answers HTTP {BANK_ERROR_STATUS} every time",
    ),
    TestCard(
        "4000000000000903",
        BankBehaviour.TIMEOUT,
        "bank_timeout",
        f"Bank answers only after {BANK_TIMEOUT_DELAY_S} s",
    ),
)
"""Every test card of docs/api.md, "Test cards", in table order."""

DEFAULT_APPROVAL: Final = TestCard(
    "", BankBehaviour.APPROVE, None, "Any other Luhn-valid number, approved"
)
"""The answer for numbers not in :data:`TEST_CARDS` (its ``number`` is left empty)."""

_TEST_CARDS_BY_NUMBER: Mapping[str, TestCard] = {card.number: card for card in TEST_CARDS}


def bank_behaviour_for(number: str) -> TestCard:
    """Return how the bank answers a card number: its test-card row, else an approval.

    The caller validates the number first; an unknown number yields
    :data:`DEFAULT_APPROVAL`, which does not carry the number.
    """
    return _TEST_CARDS_BY_NUMBER.get(normalize_card_number(number), DEFAULT_APPROVAL)
