"""The one JSON codec for money-bearing documents: JSONB columns, events and API bodies.

Non-integral numbers are read as exact Decimals and written back with their digits, so
metadata and amounts survive a round trip through PostgreSQL, Kafka or a replay unchanged.
"""

from __future__ import annotations

from typing import Any

import simplejson


def dump_json(value: Any) -> str:
    """Serialize exactly: Decimals as numbers, unicode kept, integers unbounded, no NaN."""
    return simplejson.dumps(
        value, use_decimal=True, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )


def load_json(text: str | bytes) -> Any:
    """Deserialize; non-integral numbers come back as exact Decimals; NaN is refused."""

    def _refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not valid JSON")

    return simplejson.loads(text, use_decimal=True, parse_constant=_refuse)
