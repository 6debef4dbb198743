"""How instants are written in responses and events."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: datetime) -> str:
    """RFC 3339 UTC timestamp with millisecond precision and a ``Z``."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
