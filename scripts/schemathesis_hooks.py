"""schemathesis hooks for `make fuzz` (scripts/schemathesis.toml loads them).

One key per request, as a client uses one key per logical operation: schemathesis sends
whatever valid ``Idempotency-Key`` it generated, often the same one with different bodies
and on different endpoints, which the API rightly refuses (422 ``idempotency_key_reused``)
before it looks at anything else. Replays of one key are tested in
tests/e2e/test_idempotency_api.py. A key generated to be invalid is left as it is.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

# app.api.deps.IDEMPOTENCY_KEY_PATTERN, and the 255-character limit.
_VALID_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Give every request with a valid ``Idempotency-Key`` a fresh one."""
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _VALID_KEY.fullmatch(key):
        headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4().hex}"
