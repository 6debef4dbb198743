"""Webhooks to merchants (SPEC §10, docs/webhooks.md): endpoints, what they receive, when
a failed delivery is tried again, and which targets are refused.

A merchant registers endpoints; every event of that merchant whose type an endpoint asks
for becomes one *delivery* (per event and endpoint), POSTed and signed per the Standard
Webhooks specification until the endpoint answers 2xx or the retry window runs out. The
rules here are pure: the database, the Kafka consumer, DNS and HTTP are adapters.
"""

from __future__ import annotations

import ipaddress
import random
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from app.domain.errors import ValidationFailed, WebhookTargetRefused
from app.domain.events import EventType

ENDPOINT_ID_SHAPE: Final = re.compile(r"^we_[0-9a-f]{32}$")
"""What every endpoint id looks like: ``we_`` and 32 hex digits."""

MAX_URL_LENGTH: Final = 2048

EVENT_TYPES: Final = frozenset(event.value for event in EventType)


def new_endpoint_id() -> str:
    """A fresh endpoint id."""
    return f"we_{uuid.uuid4().hex}"


class EndpointStatus(StrEnum):
    """Whether an endpoint receives deliveries."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    """By an operator, or by the dispatcher after failing for the whole retry window;
    its pending deliveries wait (``enable-webhook`` sends them)."""
    REMOVED = "removed"
    """Kept for its delivery history; never delivered to again."""


class DeliveryStatus(StrEnum):
    """Where one delivery (one event to one endpoint) stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    """Given up: no 2xx within the retry window (a replay may send it again)."""


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A merchant's endpoint. Its signing secrets are held sealed by the vault, never in
    clear; ``previous_secret`` still signs until ``previous_secret_expires_at``
    (rotation: the receiver accepts either while it switches)."""

    endpoint_id: str
    merchant_id: str
    url: str
    event_types: frozenset[str]
    """Empty: every event type."""
    status: EndpointStatus
    secret: str
    created_at: datetime
    updated_at: datetime
    previous_secret: str | None = None
    previous_secret_expires_at: datetime | None = None
    failing_since: datetime | None = None
    disabled_reason: str | None = None

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint asked for events of this type."""
        return not self.event_types or event_type in self.event_types

    def signing_secrets(self, now: datetime) -> list[str]:
        """The sealed secrets that sign a delivery now: the current one, and the previous
        one while its grace period lasts."""
        secrets = [self.secret]
        if (
            self.previous_secret is not None
            and self.previous_secret_expires_at is not None
            and self.previous_secret_expires_at > now
        ):
            secrets.append(self.previous_secret)
        return secrets


def parse_event_types(values: Iterable[str]) -> frozenset[str]:
    """Event types named by an operator (``payment.captured,refund.succeeded``); empty
    means every type.

    Raises:
        ValidationFailed: A name is not an event type.
    """
    chosen = frozenset(value.strip() for value in values if value.strip())
    if unknown := sorted(chosen - EVENT_TYPES):
        raise ValidationFailed(
            f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(sorted(EVENT_TYPES))}",
            field="events",
        )
    return chosen


@dataclass(frozen=True, slots=True)
class TargetRules:
    """Which webhook targets are acceptable.

    Attributes:
        https_only: Refuse ``http://`` URLs (always in production).
        public_only: Refuse hosts that resolve to anything but public unicast addresses
            (always in production; tests and laptops deliver to 127.0.0.1).
    """

    https_only: bool = True
    public_only: bool = True


def check_url_shape(url: str, rules: TargetRules) -> tuple[str, int]:
    """The URL's host and port, if its shape may receive webhooks.

    Raises:
        WebhookTargetRefused: Not an absolute http(s) URL with a host, credentials in it,
            too long, or ``http`` where HTTPS is required.
    """
    if len(url) > MAX_URL_LENGTH:
        raise WebhookTargetRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookTargetRefused("the URL is not valid") from None
    scheme = parts.scheme.lower()
    if scheme not in {"https", "http"}:
        raise WebhookTargetRefused("the URL must start with https://")
    if scheme == "http" and rules.https_only:
        raise WebhookTargetRefused("webhooks are delivered over HTTPS only")
    if not parts.hostname:
        raise WebhookTargetRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookTargetRefused("the URL must not carry credentials")
    if parts.fragment:
        raise WebhookTargetRefused("the URL must not have a fragment")
    return parts.hostname, port or (443 if scheme == "https" else 80)


def address_allowed(address: str, rules: TargetRules) -> bool:
    """Whether a resolved address may be connected to: with ``public_only``, only globally
    routable unicast addresses -- never loopback, private, link-local (cloud metadata at
    169.254.169.254), shared (100.64/10), reserved, multicast or unspecified, nor an
    IPv4 address of those kinds mapped or embedded in IPv6."""
    if not rules.public_only:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not address_allowed(str(embedded), rules):
            return False
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed delivery is tried again (exponential, capped, jittered), and when
    the dispatcher gives up on it -- and on its endpoint.

    Attributes:
        first_delay: After the first failure.
        max_interval: The longest pause between two attempts.
        window: How long after its event was recorded a delivery is still tried; an
            endpoint failing (no 2xx at all) for this long is disabled.
        ordered_attempts: A payment's later deliveries to an endpoint wait while an
            earlier one is pending, for this many of its attempts; then they go ahead
            (one bad event must not hold back the rest for days).
    """

    first_delay: timedelta = timedelta(seconds=5)
    max_interval: timedelta = timedelta(hours=6)
    window: timedelta = timedelta(days=3)
    ordered_attempts: int = 3

    def delay_after(self, attempts: int) -> timedelta:
        """The pause after ``attempts`` failed attempts: doubling from ``first_delay``,
        capped at ``max_interval``, and jittered between 75 % and 125 %."""
        exponent = min(max(attempts - 1, 0), 40)
        base = min(
            self.first_delay.total_seconds() * 2**exponent, self.max_interval.total_seconds()
        )
        return timedelta(seconds=base * (0.75 + random.random() / 2))  # noqa: S311

    def next_attempt(
        self, *, attempts: int, recorded_at: datetime, now: datetime
    ) -> datetime | None:
        """When to try again after ``attempts`` failed attempts, or None to give up: the
        window is over. The last attempt falls at the window's end, so a delivery given
        up has been tried through the whole window."""
        end = recorded_at + self.window
        if now >= end:
            return None
        return min(now + self.delay_after(attempts), end)
