"""The ids the service hands out: their one shape and how new ones are made."""

from __future__ import annotations

import re
import uuid
from typing import Final

TRANSACTION_ID_SHAPE: Final = re.compile(r"^txn_[0-9a-f]{32}$")
"""What every payment id looks like: ``txn_`` and 32 hex digits."""

REFUND_ID_SHAPE: Final = re.compile(r"^re_[0-9a-f]{32}$")
"""What every refund id looks like: ``re_`` and 32 hex digits."""


def new_transaction_id() -> str:
    """A fresh, unguessable payment id."""
    return f"txn_{uuid.uuid4().hex}"


def new_refund_id() -> str:
    """A fresh, unguessable refund id."""
    return f"re_{uuid.uuid4().hex}"


def is_transaction_id(value: str) -> bool:
    """Whether ``value`` has the shape of a payment id (it may still not exist)."""
    return bool(TRANSACTION_ID_SHAPE.fullmatch(value))


OPERATION_PREFIXES: Final = {"capture": "cap", "void": "void", "expire": "exp"}
"""The id prefix of each kind of operation on an authorization."""


def new_operation_id(kind: str) -> str:
    """A fresh, unguessable id for a capture, void or expiry (the bank's idempotency key)."""
    return f"{OPERATION_PREFIXES[kind]}_{uuid.uuid4().hex}"
