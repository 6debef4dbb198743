"""Cards: number validation, Luhn, brands, masking, expiry and the test-card table."""

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain import cards
from app.domain.cards import (
    DECLINE_MESSAGES,
    TEST_CARDS,
    BankBehaviour,
    CardBrand,
    bank_behaviour_for,
    card_brand,
    is_expired,
    last4,
    luhn_check_digit,
    luhn_valid,
    mask,
    normalize_card_number,
    validate_card_number,
)
from app.domain.errors import BANK_FAILURE_CODES, InvalidCard

SPEC_TABLE = {
    "4242424242424242": (BankBehaviour.APPROVE, None),
    "4111111111111111": (BankBehaviour.APPROVE, None),
    "5555555555554444": (BankBehaviour.APPROVE, None),
    "378282246310005": (BankBehaviour.APPROVE, None),
    "4000000000000002": (BankBehaviour.DECLINE, "card_declined"),
    "4000000000009995": (BankBehaviour.DECLINE, "insufficient_funds"),
    "4000000000009987": (BankBehaviour.DECLINE, "lost_card"),
    "4000000000009979": (BankBehaviour.DECLINE, "stolen_card"),
    "4000000000000069": (BankBehaviour.DECLINE, "expired_card"),
    "4000000000000127": (BankBehaviour.DECLINE, "incorrect_cvc"),
    "4000000000000119": (BankBehaviour.ERROR, "processing_error"),
    "4000000000000903": (BankBehaviour.TIMEOUT, "bank_timeout"),
}


def test_spaces_and_dashes_are_removed_from_card_numbers() -> None:
    assert normalize_card_number("4242 4242-4242 4242") == "4242424242424242"


@pytest.mark.parametrize("card", TEST_CARDS, ids=lambda card: card.number)
def test_every_test_card_is_luhn_valid(card: cards.TestCard) -> None:
    assert luhn_valid(card.number)
    assert validate_card_number(card.number) == card.number


@pytest.mark.parametrize("number", ["4242424242424241", "1234567890123", "0000000000001"])
def test_number_failing_the_luhn_check_is_rejected(number: str) -> None:
    assert not luhn_valid(number)
    with pytest.raises(InvalidCard, match="Luhn"):
        validate_card_number(number)


@pytest.mark.parametrize("number", ["", "42a2", "\uff14\uff12\uff14\uff12", "4242.4242"])
def test_luhn_check_fails_for_anything_but_ascii_digits(number: str) -> None:
    assert not luhn_valid(number)


def test_card_number_is_validated_after_removing_spaces_and_dashes() -> None:
    assert validate_card_number("4242 4242 4242 4242") == "4242424242424242"
    assert validate_card_number("3782-822463-10005") == "378282246310005"


@pytest.mark.parametrize("length", [11, 20])
def test_card_number_must_have_12_to_19_digits(length: int) -> None:
    partial = "4" + "0" * (length - 2)
    number = partial + luhn_check_digit(partial)
    assert luhn_valid(number)
    with pytest.raises(InvalidCard, match="12 to 19 digits"):
        validate_card_number(number)


@pytest.mark.parametrize("length", [12, 19])
def test_card_number_of_12_or_19_digits_is_accepted(length: int) -> None:
    partial = "4" + "0" * (length - 2)
    number = partial + luhn_check_digit(partial)
    assert validate_card_number(number) == number


@pytest.mark.parametrize("raw", ["4242x424242424242", "4242/4242/4242/4242", "\u0664\u0662" * 8])
def test_card_number_with_other_characters_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidCard, match="only digits"):
        validate_card_number(raw)


def test_invalid_card_error_never_echoes_the_number() -> None:
    number = "4242424242424241"
    with pytest.raises(InvalidCard) as caught:
        validate_card_number(number)
    error = caught.value
    assert error.code == "validation_error"
    assert error.errors == [{"field": "card_data.card_number", "message": error.detail}]
    for text in (str(error), repr(error), error.detail, repr(error.errors)):
        assert number not in text
        assert "424242" not in text


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", CardBrand.VISA),
        ("5100000000000008", CardBrand.MASTERCARD),
        ("5555555555554444", CardBrand.MASTERCARD),
        ("2221000000000009", CardBrand.MASTERCARD),
        ("2720990000000007", CardBrand.MASTERCARD),
        ("2220990000000000", CardBrand.UNKNOWN),
        ("2721000000000000", CardBrand.UNKNOWN),
        ("5000000000000000", CardBrand.UNKNOWN),
        ("5600000000000000", CardBrand.UNKNOWN),
        ("340000000000009", CardBrand.AMEX),
        ("378282246310005", CardBrand.AMEX),
        ("350000000000000", CardBrand.UNKNOWN),
        ("6011000990139424", CardBrand.DISCOVER),
        ("6440000000000000", CardBrand.DISCOVER),
        ("6490000000000000", CardBrand.DISCOVER),
        ("6500000000000000", CardBrand.DISCOVER),
        ("6430000000000000", CardBrand.UNKNOWN),
        ("6012000000000000", CardBrand.UNKNOWN),
        ("3530111333300000", CardBrand.UNKNOWN),
        ("", CardBrand.UNKNOWN),
    ],
)
def test_brand_comes_from_the_issuer_prefix(number: str, brand: CardBrand) -> None:
    assert card_brand(number) == brand


def test_brand_values_are_the_api_strings() -> None:
    assert [str(brand) for brand in CardBrand] == [
        "visa", "mastercard", "amex", "discover", "unknown"
    ]  # fmt: skip


def test_only_the_last_four_digits_are_shown() -> None:
    assert last4("4242 4242 4242 4242") == "4242"
    assert mask("4242424242424242") == "************4242"
    assert mask("378282246310005") == "***********0005"


@pytest.mark.parametrize(
    ("exp_month", "exp_year", "today", "expired"),
    [
        (6, 2026, date(2026, 6, 1), False),
        (6, 2026, date(2026, 6, 30), False),
        (6, 2026, date(2026, 7, 1), True),
        (5, 2026, date(2026, 6, 15), True),
        (12, 2025, date(2026, 1, 1), True),
        (1, 2027, date(2026, 12, 31), False),
        (12, 2030, date(2026, 6, 15), False),
    ],
)
def test_card_is_valid_through_the_end_of_its_expiry_month(
    exp_month: int, exp_year: int, today: date, expired: bool
) -> None:
    assert is_expired(exp_month, exp_year, today) is expired


@pytest.mark.parametrize("exp_month", [0, 13])
def test_expiry_month_outside_1_to_12_is_a_programming_error(exp_month: int) -> None:
    with pytest.raises(ValueError, match="exp_month"):
        is_expired(exp_month, 2030, date(2026, 1, 1))


def test_test_card_table_matches_the_spec() -> None:
    assert {card.number: (card.behaviour, card.code) for card in TEST_CARDS} == SPEC_TABLE
    assert len(TEST_CARDS) == len(SPEC_TABLE)


@pytest.mark.parametrize("card", TEST_CARDS, ids=lambda card: card.number)
def test_bank_behaviour_is_looked_up_in_the_test_card_table(card: cards.TestCard) -> None:
    assert bank_behaviour_for(card.number) is card
    spaced = " ".join(card.number[i : i + 4] for i in range(0, len(card.number), 4))
    assert bank_behaviour_for(spaced) is card


def test_any_other_luhn_valid_number_is_approved() -> None:
    entry = bank_behaviour_for("6011000990139424")
    assert entry.behaviour is BankBehaviour.APPROVE
    assert entry.code is None
    assert "6011000990139424" not in repr(entry)


def test_every_decline_code_has_a_human_message() -> None:
    decline_codes = {c.code for c in TEST_CARDS if c.behaviour is BankBehaviour.DECLINE}
    assert decline_codes == set(DECLINE_MESSAGES)
    assert DECLINE_MESSAGES["insufficient_funds"] == "The card has insufficient funds."


def test_error_and_timeout_cards_carry_bank_failure_codes() -> None:
    failing = [c for c in TEST_CARDS if c.behaviour in {BankBehaviour.ERROR, BankBehaviour.TIMEOUT}]
    assert {c.code for c in failing} <= BANK_FAILURE_CODES


def test_approving_cards_include_every_brand_the_table_shows() -> None:
    approving = [c for c in TEST_CARDS if c.behaviour is BankBehaviour.APPROVE]
    assert {card_brand(c.number) for c in approving} == {
        CardBrand.VISA, CardBrand.MASTERCARD, CardBrand.AMEX
    }  # fmt: skip


@given(st.text(alphabet="0123456789", min_size=11, max_size=18))
def test_appending_the_luhn_check_digit_makes_a_valid_number(partial: str) -> None:
    number = partial + luhn_check_digit(partial)
    assert luhn_valid(number)
    assert validate_card_number(number) == number


@given(st.text(alphabet="0123456789", min_size=12, max_size=19), st.data())
def test_changing_any_single_digit_breaks_the_luhn_check(partial: str, data: st.DataObject) -> None:
    number = partial[:-1] + luhn_check_digit(partial[:-1])
    position = data.draw(st.integers(min_value=0, max_value=len(number) - 1))
    replacement = data.draw(st.sampled_from("0123456789").filter(lambda d: d != number[position]))
    assert not luhn_valid(number[:position] + replacement + number[position + 1 :])


def test_check_digit_needs_digits() -> None:
    with pytest.raises(ValueError, match="digits"):
        luhn_check_digit("12a")
