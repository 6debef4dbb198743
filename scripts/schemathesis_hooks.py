"""schemathesis hooks for `make fuzz` (scripts/schemathesis.toml loads them).

One key per request, as a client uses one key per logical operation: schemathesis sends
whatever valid ``Idempotency-Key`` it generated, often the same one with different bodies
and on different endpoints, which the API rightly refuses (422 ``idempotency_key_reused``)
before it looks at anything else. Replays of one key are tested in
tests/e2e/test_idempotency_api.py. A key generated to be invalid is left as it is.

Payments to act on, as a client has: a `transaction_id` that schemathesis draws from the
schema's pattern names no payment, and one it reuses from an earlier answer has often
been captured, voided or refunded already, so a capture, void or refund of it is a 404 or
a 409 and the rules behind those operations go untested outside the stateful phase. In
the other phases most well-shaped ids (``REAL_ID_SHARE``) are swapped for a payment made
for the call: a manual-capture one to capture or void, a captured one to refund, any of
the merchant's as a listing cursor. The stateful phase follows the links as they are, ids
generated to be invalid are left alone, and the rest still meet their 404 or 409.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from typing import Any

import httpx
import schemathesis

# app.api.deps.IDEMPOTENCY_KEY_PATTERN, and the 255-character limit.
_VALID_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
# app.domain.ids.TRANSACTION_ID_SHAPE
_TRANSACTION_ID = re.compile(r"txn_[0-9a-f]{32}")
REAL_ID_SHARE = 0.8
# What each operation needs of the payment it acts on.
_CAPTURE_METHOD = {
    "capture_payment": "manual",
    "void_payment": "manual",
    "refund_payment": "automatic",
}
_CURSORS = ("starting_after", "ending_before")

_random = random.Random(os.environ.get("FUZZ_SEED", "fuzz"))


def _new_payment(base_url: str, capture_method: str) -> str:
    """A payment of the merchant's, approved: to capture and void, or to refund."""
    body = {
        "merchant_id": "merchant_test_123",
        "amount": "1000000",
        "currency": "USD",
        "payment_method": "credit_card",
        "capture_method": capture_method,
        "card_data": {
            "card_number": "4242424242424242",
            "expiry_month": 12,
            "expiry_year": 2040,
            "cvv": "123",
            "cardholder_name": "Fuzz Hooks",
        },
    }
    headers = {"Authorization": f"Bearer {os.environ['FUZZ_API_KEY']}"}
    response = httpx.post(
        f"{base_url}/api/v1/payments/process", json=body, headers=headers, timeout=30
    )
    response.raise_for_status()
    transaction_id: str = response.json()["transaction_id"]
    return transaction_id


def _to_swap(case: Any, value: object) -> bool:
    """A well-shaped id, outside the stateful phase, chosen to be swapped."""
    phase = case.meta.phase.name if case.meta is not None else None
    return (
        phase != "stateful"
        and isinstance(value, str)
        and _TRANSACTION_ID.fullmatch(value) is not None
        and _random.random() < REAL_ID_SHARE
    )


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """A fresh ``Idempotency-Key`` for each request that has a valid one, and a real
    payment in place of most made-up ids."""
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _VALID_KEY.fullmatch(key):
        headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4().hex}"

    operation_id = case.operation.definition.raw.get("operationId")
    base_url = case.operation.base_url.rstrip("/")
    capture_method = _CAPTURE_METHOD.get(operation_id)
    path = case.path_parameters or {}
    if capture_method is not None and _to_swap(case, path.get("transaction_id")):
        path["transaction_id"] = _new_payment(base_url, capture_method)
    if operation_id == "list_payments":
        query = case.query or {}
        for cursor in _CURSORS:
            if _to_swap(case, query.get(cursor)):
                query[cursor] = _new_payment(base_url, "automatic")
