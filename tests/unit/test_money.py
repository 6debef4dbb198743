"""Money: the currency table, exact parsing of amounts, formatting and arithmetic."""

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.errors import InvalidAmount, UnknownCurrency
from app.domain.money import (
    CURRENCY_EXPONENTS,
    MAX_MAJOR_UNITS,
    Money,
    exponent,
    format_minor,
    normalize_currency,
)


@pytest.mark.parametrize(
    ("currency", "expected"),
    [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_currency_exponent_follows_iso_4217(currency: str, expected: int) -> None:
    assert exponent(currency) == expected


def test_currency_table_holds_only_upper_case_alpha3_codes_with_known_exponents() -> None:
    assert len(CURRENCY_EXPONENTS) > 150
    for code, exp in CURRENCY_EXPONENTS.items():
        assert len(code) == 3
        assert code.isalpha()
        assert code.isupper()
        assert exp in {0, 2, 3, 4}


@pytest.mark.parametrize("code", ["XAU", "XAG", "XPT", "XPD", "XTS", "XXX", "XDR", "XBA"])
def test_metal_test_and_fund_units_without_minor_unit_are_not_currencies(code: str) -> None:
    with pytest.raises(UnknownCurrency):
        normalize_currency(code)


def test_currency_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        CURRENCY_EXPONENTS["ABC"] = 2  # type: ignore[index]


def test_currency_is_accepted_in_any_case_and_returned_upper_case() -> None:
    assert normalize_currency("usd") == "USD"
    assert Money.from_major("1", "eUr").currency == "EUR"
    assert Money(1, "jpy").currency == "JPY"


@pytest.mark.parametrize("code", ["ZZZ", "US", "USDD", "", "dollars"])
def test_unknown_currency_is_a_validation_error_on_the_currency_field(code: str) -> None:
    with pytest.raises(UnknownCurrency) as caught:
        normalize_currency(code)
    assert caught.value.code == "validation_error"
    assert caught.value.errors == [{"field": "currency", "message": caught.value.detail}]


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("99.99", "USD", 9999),
        (Decimal("99.99"), "USD", 9999),
        (100, "USD", 10000),
        ("10.5", "USD", 1050),
        ("10.500", "USD", 1050),
        ("1E+2", "USD", 10000),
        ("500", "JPY", 500),
        ("500.0", "JPY", 500),
        ("1.234", "KWD", 1234),
        ("0.001", "KWD", 1),
        ("0.01", "USD", 1),
        ("1.2345", "CLF", 12345),
    ],
)
def test_amount_is_parsed_exactly_into_minor_units(
    amount: Decimal | int | str, currency: str, minor: int
) -> None:
    assert Money.from_major(amount, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("10.505", "USD"), ("0.001", "USD"), ("1.5", "JPY"), ("1.2345", "KWD"), ("0.00001", "CLF")],
)
def test_amount_with_more_decimals_than_currency_is_rejected(amount: str, currency: str) -> None:
    with pytest.raises(InvalidAmount) as caught:
        Money.from_major(amount, currency)
    assert caught.value.errors == [{"field": "amount", "message": caught.value.detail}]
    assert currency in caught.value.detail


def test_many_significant_digits_are_not_rounded_into_an_accepted_amount() -> None:
    # 35 significant digits: more than the default decimal context would keep.
    with pytest.raises(InvalidAmount):
        Money.from_major("10.000000000000000000000000000000001", "USD")


def test_amount_of_exactly_the_maximum_is_accepted() -> None:
    assert Money.from_major(MAX_MAJOR_UNITS, "USD") == Money(100_000_000, "USD")
    assert Money.from_major("1000000", "JPY") == Money(1_000_000, "JPY")
    assert Money.from_major("1000000.000", "KWD") == Money(1_000_000_000, "KWD")


@pytest.mark.parametrize(("amount", "currency"), [("1000000.01", "USD"), ("1000001", "JPY")])
def test_amount_above_the_maximum_is_rejected(amount: str, currency: str) -> None:
    with pytest.raises(InvalidAmount, match="must not exceed"):
        Money.from_major(amount, currency)


@pytest.mark.parametrize("amount", ["0", "0.00", "-1", "-0.01", Decimal("-5"), 0, -3])
def test_zero_and_negative_amounts_are_rejected(amount: Decimal | int | str) -> None:
    with pytest.raises(InvalidAmount, match="greater than zero"):
        Money.from_major(amount, "USD")


@pytest.mark.parametrize(
    "amount",
    ["NaN", "sNaN", "Infinity", "-Infinity", Decimal("NaN"), Decimal("Infinity")],
)
def test_non_finite_amounts_are_rejected(amount: Decimal | str) -> None:
    with pytest.raises(InvalidAmount, match="finite"):
        Money.from_major(amount, "USD")


@pytest.mark.parametrize("amount", ["", "abc", "1,00", "1_000", "12.3.4", "$5"])
def test_amount_that_is_not_a_decimal_number_is_rejected(amount: str) -> None:
    with pytest.raises(InvalidAmount):
        Money.from_major(amount, "USD")


@pytest.mark.parametrize("amount", [99.99, 1.0, float("nan")])
def test_binary_floats_are_never_accepted(amount: float) -> None:
    with pytest.raises(TypeError, match="float"):
        Money.from_major(amount, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [True, None, [1]])
def test_non_numeric_amount_types_are_rejected(amount: object) -> None:
    with pytest.raises(TypeError):
        Money.from_major(amount, "USD")  # type: ignore[arg-type]


def test_minor_amount_must_be_an_integer() -> None:
    with pytest.raises(TypeError):
        Money(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True, "USD")


def test_unknown_currency_is_checked_before_the_amount() -> None:
    with pytest.raises(UnknownCurrency):
        Money.from_major("abc", "ZZZ")


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (9999, "USD", "99.99"),
        (10000, "USD", "100.00"),
        (5, "USD", "0.05"),
        (100, "JPY", "100"),
        (1500, "KWD", "1.500"),
        (1, "CLF", "0.0001"),
        (100_000_000, "USD", "1000000.00"),
    ],
)
def test_amount_is_formatted_with_exactly_the_currency_decimals(
    minor: int, currency: str, text: str
) -> None:
    money = Money(minor, currency)
    assert money.format() == text
    assert str(money.to_decimal()) == text
    assert format_minor(minor, currency) == text


def test_zero_minor_amounts_format_with_the_currency_decimals() -> None:
    assert format_minor(0, "USD") == "0.00"
    assert format_minor(0, "JPY") == "0"
    assert format_minor(0, "KWD") == "0.000"
    assert Money.zero("USD").format() == "0.00"


def test_money_reads_as_amount_and_currency() -> None:
    assert str(Money(4999, "USD")) == "49.99 USD"


def test_to_decimal_is_quantized_to_the_currency_exponent() -> None:
    assert Money(1050, "USD").to_decimal().as_tuple().exponent == -2
    assert Money(7, "JPY").to_decimal().as_tuple().exponent == 0


def test_zero_is_zero_and_positive_amounts_are_not() -> None:
    assert Money.zero("EUR").is_zero
    assert Money.zero("EUR") == Money(0, "EUR")
    assert not Money(1, "EUR").is_zero


def test_same_currency_amounts_add_subtract_and_compare() -> None:
    a, b = Money(5000, "USD"), Money(4999, "USD")
    assert a + b == Money(9999, "USD")
    assert a - b == Money(1, "USD")
    assert b < a
    assert b <= a
    assert a > b
    assert a >= b
    assert a <= Money(5000, "USD")
    assert a >= Money(5000, "USD")


@pytest.mark.parametrize(
    "operation",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
    ],
)
def test_amounts_in_different_currencies_do_not_combine(
    operation: Callable[[Money, Money], object],
) -> None:
    with pytest.raises(ValueError, match="USD and EUR"):
        operation(Money(1, "USD"), Money(1, "EUR"))


@pytest.mark.parametrize(
    "operation",
    [
        lambda a: a + 1,
        lambda a: a - 1,
        lambda a: a < 1,
        lambda a: a <= 1,
        lambda a: a > 1,
        lambda a: a >= 1,
    ],
)
def test_money_does_not_combine_with_plain_numbers(operation: Callable[[Money], object]) -> None:
    with pytest.raises(TypeError):
        operation(Money(1, "USD"))


def test_currency_code_must_be_a_string() -> None:
    with pytest.raises(UnknownCurrency):
        normalize_currency(840)  # type: ignore[arg-type]


def test_amounts_in_different_currencies_are_not_equal() -> None:
    assert Money(100, "USD") != Money(100, "EUR")


def test_money_is_immutable_and_hashable() -> None:
    money = Money(1, "USD")
    with pytest.raises(AttributeError):
        money.minor = 2  # type: ignore[misc]
    assert {money, Money(1, "usd")} == {money}


_CURRENCIES = sorted(CURRENCY_EXPONENTS)


@given(
    currency=st.sampled_from(_CURRENCIES),
    data=st.data(),
)
def test_parsing_a_formatted_amount_gives_back_the_same_money(
    currency: str, data: st.DataObject
) -> None:
    max_minor = int(MAX_MAJOR_UNITS) * 10 ** CURRENCY_EXPONENTS[currency]
    minor = data.draw(st.integers(min_value=1, max_value=max_minor))
    money = Money(minor, currency)
    assert Money.from_major(money.format(), currency) == money
    assert Money.from_major(money.to_decimal(), currency.lower()) == money
