"""Request and response bodies of the HTTP API, with the examples OpenAPI shows.

Requests are strict: unknown fields are rejected and every rule of docs/api.md is checked
here, so a bad request fails with one 422 listing every bad field before any work starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from app.api.problems import STATUS_BY_CODE
from app.core.jsoncodec import dump_json
from app.domain.cards import MAX_CARD_DIGITS, MIN_CARD_DIGITS, CardBrand, validate_card_number
from app.domain.errors import InvalidAmount, PaymentServiceError
from app.domain.ids import REFUND_ID_SHAPE, TRANSACTION_ID_SHAPE
from app.domain.money import CURRENCY_EXPONENTS, MAX_MAJOR_UNITS, Money, normalize_currency
from app.domain.payments import (
    DESCRIPTION_MAX_LENGTH,
    REFUND_REASON_MAX_LENGTH,
    CaptureMethod,
    PaymentMethod,
    PaymentStatus,
    RefundStatus,
)
from app.services.listing import DEFAULT_PAGE_SIZE, MAX_METADATA_FILTERS, MAX_PAGE_SIZE
from app.services.responses import PAYMENTS_URL

METADATA_MAX_KEYS = 50
METADATA_MAX_BYTES = 16 * 1024

EXAMPLE_TRANSACTION_ID = "txn_0f1e2d3c4b5a69788796a5b4c3d2e1f0"
EXAMPLE_REFUND_ID = "re_9a8b7c6d5e4f30211203f4e5d6c7b8a9"
EXAMPLE_CORRELATION_ID = "5f0c6b7e-1c1d-4a8e-9d8c-2a4f0e7c9b11"

# What OpenAPI can say of the rules the validators below enforce. Two rules are left to
# the descriptions because JSON Schema cannot state them: the Luhn check of a card number,
# and an amount's decimals, which depend on the currency (USD 2, JPY 0, KWD 3).
AMOUNT_PATTERN = r"^(?:[1-9][0-9]{0,5}(?:\.[0-9]{1,4}0*)?|1000000(?:\.0+)?|0\.[0-9]{0,3}[1-9]0*)$"
"""A decimal string greater than 0 and at most 1,000,000, with at most 4 significant
decimals (the most any currency has) and any number of trailing zeros."""
CARD_NUMBER_PATTERN = rf"^[ -]*(?:[0-9][ -]*){{{MIN_CARD_DIGITS},{MAX_CARD_DIGITS}}}$"
"""12-19 digits, with any spaces and dashes among them."""

Amount = Annotated[
    Decimal | str,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": int(MAX_MAJOR_UNITS)},
                {"type": "string", "pattern": AMOUNT_PATTERN},
            ],
            "description": (
                "Amount in major units, greater than 0 and at most 1,000,000: a JSON number "
                "or a decimal string, parsed exactly (never as a binary float), with no more "
                "decimals than the currency has (USD 2: `99.99`, JPY 0: `1000`, KWD 3: "
                "`1.500`); trailing zeros are fine."
            ),
            "examples": ["99.99", 99.99],
        }
    ),
]

Currency = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "enum": sorted(CURRENCY_EXPONENTS),
            "description": (
                "An active ISO 4217 alpha-3 code, which the merchant accepts "
                "(`currency_not_supported` otherwise). Listed in upper case, accepted in "
                "any case; answered in upper case."
            ),
            "examples": ["USD"],
        }
    ),
]

Timestamp = Annotated[
    str,
    Field(
        description="UTC, RFC 3339 with milliseconds.",
        examples=["2026-11-28T10:15:30.123Z"],
        json_schema_extra={"format": "date-time"},
    ),
]
MoneyAmount = Annotated[
    str,
    Field(
        description="A decimal string with exactly the currency's decimals.",
        pattern=r"^[0-9]+(?:\.[0-9]+)?$",
        examples=["99.99"],
    ),
]
TransactionId = Annotated[
    str, Field(pattern=TRANSACTION_ID_SHAPE.pattern, examples=[EXAMPLE_TRANSACTION_ID])
]
RefundId = Annotated[str, Field(pattern=REFUND_ID_SHAPE.pattern, examples=[EXAMPLE_REFUND_ID])]
ResponseCurrency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["USD"])]


def _check_amount_without_currency(value: Decimal | str) -> None:
    try:
        amount = Decimal(value)
    except ArithmeticError:
        raise InvalidAmount("Amount must be a decimal number.") from None
    if not amount.is_finite():
        raise InvalidAmount("Amount must be a finite number.")
    if amount <= 0:
        raise InvalidAmount("Amount must be greater than zero.")
    if amount > MAX_MAJOR_UNITS:
        raise InvalidAmount(f"Amount must not exceed {MAX_MAJOR_UNITS}.")


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


# PostgreSQL stores no NUL character in text or JSONB: refuse it up front, before the bank
# is asked anything, instead of failing at the INSERT after an approval.
NoNul = StringConstraints(pattern=r"^[^\x00]*$")


# PostgreSQL keeps a JSON number as ``numeric``: at most 131072 digits before the decimal
# point and 16383 after it. A number outside that range would be refused by the database
# after the bank was asked, so it is refused here, before anything is done.
NUMERIC_MAX_INTEGER_DIGITS = 131072
NUMERIC_MAX_FRACTION_DIGITS = 16383


def _storable_number(value: Decimal | int) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value == 0 or abs(value).bit_length() * 0.30103 < NUMERIC_MAX_INTEGER_DIGITS - 1
    if not value.is_finite():
        return False
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    return (
        value.adjusted() < NUMERIC_MAX_INTEGER_DIGITS and -exponent <= NUMERIC_MAX_FRACTION_DIGITS
    )


def _unstorable_number(value: Any) -> bool:
    if isinstance(value, Decimal | int):
        return not _storable_number(value)
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_unstorable_number(v) for v in value.values())
    if isinstance(value, list):
        return any(_unstorable_number(v) for v in value)
    return False


METADATA_MAX_DEPTH = 32
"""How deeply metadata may nest objects and arrays (the top-level object is depth 1)."""


def _depth(value: Any) -> int:
    """How deeply ``value`` nests objects and arrays, without recursing (a hostile body
    could nest deeper than Python's recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > METADATA_MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if _depth(value) > METADATA_MAX_DEPTH:
        raise ValueError(f"metadata may nest objects and arrays at most {METADATA_MAX_DEPTH} deep")
    if _contains_nul(value):
        raise ValueError("metadata must not contain NUL characters")
    if _unstorable_number(value):
        raise ValueError(
            "metadata numbers must have at most 131072 digits before the decimal point "
            "and 16383 after it"
        )
    if len(value) > METADATA_MAX_KEYS:
        raise ValueError(f"metadata may have at most {METADATA_MAX_KEYS} keys")
    if len(dump_json(value).encode()) > METADATA_MAX_BYTES:
        raise ValueError(f"metadata may be at most {METADATA_MAX_BYTES} bytes of JSON")
    return value


Metadata = Annotated[
    dict[str, Any],
    Field(
        description=(
            f"A JSON object of at most {METADATA_MAX_KEYS} keys and 16 KiB, stored and "
            f"returned unchanged: objects and arrays nested at most {METADATA_MAX_DEPTH} "
            "deep, no NUL character in any string, numbers PostgreSQL can store."
        ),
        json_schema_extra={"maxProperties": METADATA_MAX_KEYS},
        examples=[{"order_id": "1234", "items": [1, 2]}],
    ),
]


PAYMENT_REQUEST_EXAMPLE: dict[str, JsonValue] = {
    "merchant_id": "merchant_test_123",
    "amount": 99.99,
    "currency": "USD",
    "payment_method": "credit_card",
    "card_data": {
        "card_number": "4242 4242 4242 4242",
        "expiry_month": 12,
        "expiry_year": 2030,
        "cvv": "123",
        "cardholder_name": "Jane Doe",
    },
    "description": "Order 1234",
    "metadata": {"order_id": "1234", "items": [1, 2]},
}


def _whole_number(value: object) -> object:
    """``12.0`` as the integer 12: JSON has one kind of number, and the schema's
    ``integer`` is any number without a fractional part (JSON Schema). Only a number of a
    sane size is converted: ``1E+999999999`` is refused, not expanded."""
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() < 20:
        integral = value.to_integral_value()
        if integral == value:
            return int(integral)
    return value


JsonInteger = BeforeValidator(_whole_number)
"""For integer fields of a body parsed with Decimals (:mod:`app.api.exact_json`)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class CardRequest(_Strict):
    """Card details; the number and CVV are never stored in clear, logged or returned."""

    card_number: Annotated[
        str,
        Field(
            description=(
                "12-19 digits, spaces and dashes ignored, passing the Luhn check (which "
                "JSON Schema cannot express). Never stored in clear, logged or returned. "
                "The test cards are listed in docs/api.md."
            ),
            examples=["4242 4242 4242 4242", "5555555555554444", "3782-822463-10005"],
            # Documented, not enforced here: the validator below answers its own messages.
            json_schema_extra={"pattern": CARD_NUMBER_PATTERN},
        ),
    ]
    expiry_month: Annotated[int, Field(ge=1, le=12, strict=True), JsonInteger]
    expiry_year: Annotated[int, Field(ge=2000, le=2100, strict=True), JsonInteger]
    cvv: Annotated[str, StringConstraints(pattern=r"^[0-9]{3,4}$")]
    cardholder_name: Annotated[str, StringConstraints(min_length=1, max_length=100), NoNul]

    @field_validator("card_number")
    @classmethod
    def _valid_number(cls, value: str) -> str:
        try:
            return validate_card_number(value)
        except PaymentServiceError as exc:
            raise ValueError(exc.detail) from None


class PaymentRequest(_Strict):
    """POST /api/v1/payments/process."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [PAYMENT_REQUEST_EXAMPLE]}
    )

    merchant_id: Annotated[
        str,
        StringConstraints(min_length=1, max_length=64),
        NoNul,
        Field(description="The API key's merchant.", examples=["merchant_test_123"]),
    ]
    # currency is validated first so the amount's decimals can be checked against it.
    currency: Currency
    amount: Amount
    payment_method: PaymentMethod
    card_data: CardRequest
    description: Annotated[
        str | None, StringConstraints(max_length=DESCRIPTION_MAX_LENGTH), NoNul
    ] = None
    metadata: Metadata = Field(default_factory=dict)
    capture_method: Annotated[
        CaptureMethod,
        Field(
            description=(
                "`automatic`: an approval captures at once (`captured`). `manual`: an "
                "approval only authorizes (`authorized`); capture or void it later."
            )
        ),
    ] = CaptureMethod.AUTOMATIC

    _money: Money = PrivateAttr()

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        try:
            return normalize_currency(value)
        except PaymentServiceError as exc:
            raise ValueError(exc.detail) from None

    @field_validator("amount", mode="before")
    @classmethod
    def _no_floats(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
            raise ValueError("amount must be a JSON number or a decimal string")
        return value

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(value)

    @field_validator("amount")
    @classmethod
    def _exact_amount(cls, value: Decimal | str, info: ValidationInfo) -> Decimal | str:
        # Every amount rule is checked here, beside the other fields, so one 422 lists every
        # bad field. Without a valid currency, the rules that need no exponent still apply.
        currency = info.data.get("currency")
        try:
            if isinstance(currency, str):
                Money.from_major(value, currency)
            else:
                _check_amount_without_currency(value)
        except PaymentServiceError as exc:
            raise ValueError(exc.detail) from None
        return value

    @model_validator(mode="after")
    def _exact_money(self) -> PaymentRequest:
        self._money = Money.from_major(self.amount, self.currency)
        return self

    @property
    def money(self) -> Money:
        """The exact amount in minor units."""
        return self._money


class _OptionalAmount(_Strict):
    """A body whose ``amount`` is optional: none means "all there is"."""

    amount: Amount | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _no_floats(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
            raise ValueError("amount must be a JSON number or a decimal string")
        return value

    @field_validator("amount")
    @classmethod
    def _decimal(cls, value: Decimal | str | None) -> Decimal | str | None:
        if isinstance(value, str):
            try:
                parsed = Decimal(value)
            except ArithmeticError:
                raise ValueError("amount must be a decimal number") from None
            if not parsed.is_finite():
                raise ValueError("amount must be a finite number")
            return parsed
        return value

    @property
    def amount_decimal(self) -> Decimal | None:
        """The amount asked for, exactly; ``None`` asks for everything there is."""
        return None if self.amount is None else Decimal(self.amount)


class RefundRequest(_OptionalAmount):
    """POST /api/v1/payments/{transaction_id}/refund; every field optional."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"amount": 50.00, "reason": "customer request", "metadata": {}}]
        },
    )

    reason: Annotated[str | None, StringConstraints(max_length=REFUND_REASON_MAX_LENGTH), NoNul] = (
        None
    )
    metadata: Metadata = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(value)


class CaptureRequest(_OptionalAmount):
    """POST /api/v1/payments/{transaction_id}/capture; no ``amount`` captures everything
    authorized, a smaller one captures that much and releases the rest."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"amount": 80.00}]})


class CardResponse(BaseModel):
    """What is kept of a card in clear."""

    brand: CardBrand
    last4: Annotated[str, Field(pattern=r"^[0-9]{4}$")]
    exp_month: Annotated[int, Field(ge=1, le=12)]
    exp_year: int


class RefundSummary(BaseModel):
    """A refund as listed under its payment."""

    refund_id: RefundId
    amount: MoneyAmount
    currency: ResponseCurrency
    status: RefundStatus
    reason: str | None
    metadata: dict[str, Any]
    created_at: Timestamp


PAYMENT_EXAMPLE: dict[str, Any] = {
    "transaction_id": EXAMPLE_TRANSACTION_ID,
    "merchant_id": "merchant_test_123",
    "status": "captured",
    "amount": "99.99",
    "currency": "USD",
    "payment_method": "credit_card",
    "capture_method": "automatic",
    "captured_amount": "99.99",
    "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030},
    "card_last_four": "4242",
    "authorization_code": "A1B2C3",
    "decline_code": None,
    "decline_message": None,
    "failure_code": None,
    "refunded_amount": "0.00",
    "refundable_amount": "99.99",
    "description": "Order 1234",
    "metadata": {"order_id": "1234", "items": [1, 2]},
    "created_at": "2026-11-28T10:15:30.123Z",
    "updated_at": "2026-11-28T10:15:30.123Z",
}


class PaymentResponse(BaseModel):
    """A payment; declines and captures both answer 200."""

    model_config = ConfigDict(json_schema_extra={"examples": [PAYMENT_EXAMPLE]})

    transaction_id: TransactionId
    merchant_id: str
    status: PaymentStatus
    amount: MoneyAmount
    currency: ResponseCurrency
    payment_method: PaymentMethod
    capture_method: CaptureMethod
    captured_amount: MoneyAmount
    card: CardResponse
    card_last_four: Annotated[str, Field(pattern=r"^[0-9]{4}$")]
    authorization_code: str | None
    decline_code: str | None
    decline_message: str | None
    failure_code: str | None
    refunded_amount: MoneyAmount
    refundable_amount: MoneyAmount
    description: str | None
    metadata: dict[str, Any]
    created_at: Timestamp
    updated_at: Timestamp


class PaymentDetailResponse(PaymentResponse):
    """A payment with its refunds, oldest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**PAYMENT_EXAMPLE, "refunds": []}]})

    refunds: list[RefundSummary]


class RefundResponse(BaseModel):
    """A refund and the payment's balance after it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "refund_id": EXAMPLE_REFUND_ID,
                    "transaction_id": EXAMPLE_TRANSACTION_ID,
                    "amount": "50.00",
                    "currency": "USD",
                    "status": "succeeded",
                    "reason": "customer request",
                    "metadata": {},
                    "payment_status": "partially_refunded",
                    "refunded_amount": "50.00",
                    "refundable_amount": "49.99",
                    "created_at": "2026-11-28T10:20:00.000Z",
                }
            ]
        }
    )

    refund_id: RefundId
    transaction_id: TransactionId
    amount: MoneyAmount
    currency: ResponseCurrency
    status: RefundStatus
    reason: str | None
    metadata: dict[str, Any]
    payment_status: PaymentStatus
    refunded_amount: MoneyAmount
    refundable_amount: MoneyAmount
    created_at: Timestamp


class PaymentList(BaseModel):
    """A page of the merchant's payments, newest first (GET /api/v1/payments)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"object": "list", "data": [PAYMENT_EXAMPLE], "has_more": True, "url": PAYMENTS_URL}
            ]
        }
    )

    object: Literal["list"]
    data: Annotated[
        list[PaymentResponse],
        Field(description="The payments, newest first, each as `GET` answers it without refunds."),
    ]
    has_more: Annotated[
        bool,
        Field(
            description=(
                "Whether more payments match beyond this page: older ones, or newer ones for "
                "a page asked for with `ending_before`."
            )
        ),
    ]
    url: Annotated[str, Field(description="Where this list lives.", examples=[PAYMENTS_URL])]


def _instant(value: object) -> object:
    """An ISO 8601 date-time with a timezone, as UTC; anything else is refused."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            "must be an ISO 8601 date-time with a timezone, e.g. 2026-12-01T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError("must have a timezone: Z or an offset such as +01:00")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


Instant = Annotated[datetime, BeforeValidator(_instant)]
METADATA_FILTER = re.compile(r"metadata\[(?P<key>.*)\]", re.DOTALL)
"""``metadata[KEY]``: the key is everything between the first ``[`` and the last ``]``."""


def _created(bound: str, meaning: str) -> Any:
    return Field(
        alias=f"created[{bound}]",
        description=(
            f"Only payments created {meaning} this instant: an ISO 8601 date-time with a "
            "timezone (`Z` or an offset); a date-time without one is refused."
        ),
        examples=["2026-12-01T00:00:00Z"],
    )


class PaymentListQuery(BaseModel):
    """GET /api/v1/payments: the query parameters (docs/api.md, "Listing payments").

    Parsed by :meth:`from_query`, which refuses unknown and repeated parameters and lists
    every bad one in one 422, like the bodies above.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_PAGE_SIZE,
            description=f"How many payments per page, 1-{MAX_PAGE_SIZE}.",
            examples=[20],
        ),
    ] = DEFAULT_PAGE_SIZE
    starting_after: Annotated[
        str | None,
        Field(
            description=(
                "A `transaction_id` of yours, usually the last of the page before: the next "
                "page holds the payments just older than it. Not with `ending_before`."
            ),
            # No example: a cursor must be one of yours, and a tool trying the examples
            # would send both cursors at once.
            json_schema_extra={"pattern": TRANSACTION_ID_SHAPE.pattern},
        ),
    ] = None
    ending_before: Annotated[
        str | None,
        Field(
            description=(
                "A `transaction_id` of yours, usually the first of the page after: the page "
                "holds the payments just newer than it, still newest first. Not with "
                "`starting_after`."
            ),
            json_schema_extra={"pattern": TRANSACTION_ID_SHAPE.pattern},
        ),
    ] = None
    status: Annotated[PaymentStatus | None, Field(description="Only payments in this status.")] = (
        None
    )
    created_gte: Annotated[Instant | None, _created("gte", "at or after")] = None
    created_gt: Annotated[Instant | None, _created("gt", "after")] = None
    created_lte: Annotated[Instant | None, _created("lte", "at or before")] = None
    created_lt: Annotated[Instant | None, _created("lt", "before")] = None
    metadata: Annotated[
        dict[
            Annotated[str, StringConstraints(min_length=1, max_length=100), NoNul],
            Annotated[str, StringConstraints(max_length=500), NoNul],
        ],
        Field(
            max_length=MAX_METADATA_FILTERS,
            description=(
                "`metadata[KEY]=VALUE`: only payments whose metadata has the top-level member "
                "KEY with exactly the string VALUE (a number or any other JSON value never "
                f"matches). Up to {MAX_METADATA_FILTERS}, all of which must match; keys of "
                "1-100 and values of at most 500 characters."
            ),
            examples=[{"order_id": "1234"}],
        ),
    ] = Field(default_factory=dict)

    @classmethod
    def from_query(cls, parameters: Iterable[tuple[str, str]]) -> PaymentListQuery:
        """The query from a query string's ``(name, value)`` pairs.

        Raises:
            RequestValidationError: One entry per bad parameter, named as it was sent
                (``limit``, ``created[gte]``, ``metadata[order_id]``, an unknown name).
        """
        errors: list[dict[str, Any]] = []
        values: dict[str, Any] = {}
        metadata: dict[str, str] = {}
        for name, value in parameters:
            match = METADATA_FILTER.fullmatch(name)
            if name in values or (match and match["key"] in metadata):
                errors.append(_query_error(name, "Given more than once."))
            elif match:
                metadata[match["key"]] = value
            elif name == "metadata":
                errors.append(_query_error(name, "Filter on metadata with metadata[KEY]=VALUE."))
            else:
                values[name] = value
        if "starting_after" in values and "ending_before" in values:
            errors.extend(
                _query_error(name, "Give starting_after or ending_before, not both.")
                for name in ("starting_after", "ending_before")
            )
        if metadata:
            values["metadata"] = metadata
        try:
            query = cls.model_validate(values)
        except ValidationError as exc:
            errors.extend(_named_by_parameter(exc))
        if errors:
            raise RequestValidationError(errors)
        return query


def _query_error(parameter: str, message: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": ("query", parameter), "msg": message}


def _named_by_parameter(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors, each located at the query parameter that was sent."""
    errors = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(error["loc"])
        if len(loc) > 1 and loc[0] == "metadata":
            loc = (f"metadata[{loc[1]}]",)
        errors.append({**error, "loc": ("query", *loc)})
    return errors


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query model's fields as OpenAPI parameters, for a route that parses its query
    itself (a ``dict`` field is a ``deepObject``: ``name[KEY]=VALUE``)."""
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    parameters = []
    for name, field_schema in schema["properties"].items():
        field_schema = dict(field_schema)
        field_schema.pop("title", None)
        description = field_schema.pop("description", "")
        variants = [v for v in field_schema.pop("anyOf", []) if v.get("type") != "null"]
        if variants:  # optional: a parameter that is not sent, never a null
            (variant,) = variants
            field_schema = {**variant, **field_schema}
            field_schema.pop("default", None)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": field_schema,
        }
        if field_schema.get("type") == "object":
            parameter |= {"style": "deepObject", "explode": True}
        parameters.append(parameter)
    return parameters


class FieldError(BaseModel):
    """One bad field."""

    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, as every error is answered."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Refund exceeds balance",
                    "status": 409,
                    "detail": "Refund of 80.00 USD exceeds the refundable 49.99 USD.",
                    "code": "refund_exceeds_balance",
                    "correlation_id": EXAMPLE_CORRELATION_ID,
                    "errors": [
                        {
                            "field": "amount",
                            "message": "Refund of 80.00 USD exceeds the refundable 49.99 USD.",
                        }
                    ],
                    "refundable_amount": "49.99",
                    "currency": "USD",
                }
            ]
        },
    )

    type: str = "about:blank"
    title: str = Field(description="A short summary of the code, for people; may change.")
    status: Annotated[int, Field(ge=400, le=599, description="The HTTP status, repeated.")]
    detail: str = Field(description="What happened this time, for people; may change.")
    code: str = Field(
        description="What to branch on: a stable snake_case identifier (docs/api.md, Errors).",
        json_schema_extra={"enum": list[JsonValue](sorted(STATUS_BY_CODE))},
    )
    correlation_id: str | None = Field(
        default=None, description="The request's `X-Correlation-ID`; quote it to support."
    )
    errors: list[FieldError] | None = Field(
        default=None, description="With `validation_error` (and a few others): each bad field."
    )
    transaction_id: str | None = Field(
        default=None, description="With `bank_unavailable`: the payment recorded as failed."
    )
    refund_id: str | None = Field(
        default=None,
        description="With a refund's `bank_unavailable`: the refund recorded as failed.",
    )
    retry_after_s: int | None = Field(
        default=None, description="With `bank_unavailable`: the same value as `Retry-After`."
    )
    refundable_amount: str | None = Field(
        default=None, description="With `refund_exceeds_balance`: what remains refundable."
    )
    currency: str | None = Field(
        default=None, description="With `refund_exceeds_balance`: the payment's currency."
    )


class HealthCheck(BaseModel):
    """One dependency's state."""

    model_config = ConfigDict(extra="allow")

    status: Literal["up", "down", "disabled"]


class HealthResponse(BaseModel):
    """Deep health: database, Kafka, bank circuit and outbox backlog."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "healthy",
                    "version": "0.1.0",
                    "checks": {
                        "database": {"status": "up", "latency_ms": 1.2},
                        "kafka": {"status": "up"},
                        "bank": {"status": "up", "circuit": "closed"},
                        "outbox": {"status": "up", "pending": 0, "oldest_pending_age_s": 0},
                        "reconciliation": {
                            "status": "up",
                            "payments_processing": 0,
                            "refunds_pending": 0,
                            "oldest_age_s": 0,
                        },
                    },
                }
            ]
        }
    )

    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    checks: dict[str, HealthCheck]


class LivenessResponse(BaseModel):
    """GET /health/live."""

    status: Literal["alive"]


class ReadinessResponse(BaseModel):
    """GET /health/ready: ready, draining, or unavailable (with the database check)."""

    status: Literal["ready", "draining", "unavailable"]
    database: HealthCheck | None = None


class ServiceInfo(BaseModel):
    """GET /."""

    service: str
    version: str
    docs: str
