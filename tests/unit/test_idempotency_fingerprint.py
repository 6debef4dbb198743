"""The fingerprint that tells a retry from a reused key never depends on the CVV."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.services.idempotency import (
    FINGERPRINT_VERSION,
    IdempotencyKey,
    _same_request,
    legacy_request_fingerprint,
    request_fingerprint,
)
from app.services.ports import IdempotencyRecord
from tests.conftest import payment_body
from tests.factories import VAULT

SECRET = b"s" * 32
PATH = "/api/v1/payments/process"


def fingerprint(body: Any) -> str:
    return request_fingerprint(
        secret=SECRET, method="POST", path=PATH, body=body, card_fingerprint=VAULT.fingerprint
    )


def with_card(**changes: Any) -> dict[str, Any]:
    body = payment_body("merchant_test_123")
    body["card_data"] = {**body["card_data"], **changes}
    return body


@given(st.from_regex(r"[0-9]{3,4}", fullmatch=True), st.from_regex(r"[0-9]{3,4}", fullmatch=True))
def test_the_cvv_does_not_change_the_fingerprint(first: str, second: str) -> None:
    assert fingerprint(with_card(cvv=first)) == fingerprint(with_card(cvv=second))


def test_nothing_of_the_cvv_or_the_card_number_is_in_what_is_hashed() -> None:
    seen: list[Any] = []

    def spy(number: str) -> str:
        seen.append(number)
        return VAULT.fingerprint(number)

    request_fingerprint(
        secret=SECRET, method="POST", path=PATH, body=with_card(cvv="987"), card_fingerprint=spy
    )
    assert seen == ["4242 4242 4242 4242"]  # only the vault sees the number


def test_another_card_another_amount_or_another_path_is_another_request() -> None:
    base = fingerprint(with_card())
    assert fingerprint(with_card(card_number="5555 5555 5555 4444")) != base
    assert fingerprint({**with_card(), "amount": "10.00"}) != base
    other_path = request_fingerprint(
        secret=SECRET,
        method="POST",
        path="/api/v1/payments/x/refund",
        body=with_card(),
        card_fingerprint=VAULT.fingerprint,
    )
    assert other_path != base


def test_the_same_card_written_differently_is_the_same_request() -> None:
    assert fingerprint(with_card(card_number="4242-4242-4242-4242")) == fingerprint(
        with_card(card_number="4242424242424242")
    )


def test_key_order_does_not_matter_and_the_input_is_not_changed() -> None:
    body = with_card()
    before = copy.deepcopy(body)
    reordered = dict(reversed(list(body.items())))
    assert fingerprint(reordered) == fingerprint(body)
    assert body == before


def test_fingerprints_are_versioned_and_fit_the_column() -> None:
    value = fingerprint(with_card())
    assert value.startswith(FINGERPRINT_VERSION)
    assert len(value) == 67  # idempotency_keys.request_fingerprint is varchar(80)


def record(stored: str) -> IdempotencyRecord:
    return IdempotencyRecord(
        request_fingerprint=stored,
        resource_id="txn_1",
        completed=True,
        response_status=200,
        response_body={},
        locked_until=None,  # type: ignore[arg-type]
    )


def test_a_key_stored_before_the_upgrade_still_recognises_its_retry() -> None:
    body = with_card()
    legacy = legacy_request_fingerprint(secret=SECRET, method="POST", path=PATH, body=body)
    key = IdempotencyKey("k", fingerprint(body), legacy_fingerprint=legacy)
    assert _same_request(record(legacy), key)
    assert not _same_request(record(legacy), IdempotencyKey("k", fingerprint(body)))
    other_cvv = legacy_request_fingerprint(
        secret=SECRET, method="POST", path=PATH, body=with_card(cvv="999")
    )
    assert not _same_request(record(other_cvv), key)  # as before the upgrade


@pytest.mark.parametrize("stored_version", ["v2"])
def test_a_versioned_key_is_compared_with_the_versioned_fingerprint(stored_version: str) -> None:
    body = with_card()
    key = IdempotencyKey("k", fingerprint(body), legacy_fingerprint="x" * 64)
    assert _same_request(record(fingerprint(with_card(cvv="000"))), key)
    assert not _same_request(record(fingerprint({**body, "amount": "1.00"})), key)
