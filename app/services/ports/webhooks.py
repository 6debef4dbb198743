"""Webhooks, as the use cases see them: stored endpoints and deliveries, the HTTP sender,
the target check, and the secrets' seal.

The dispatcher records one delivery per (event, endpoint) from the events it consumes,
then claims due deliveries under a lease, POSTs them and records each attempt. Leases
(never a lock held across HTTP) make a killed dispatcher's claims free again; the unique
(event, endpoint) pair makes recording an event twice harmless.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from app.domain.webhooks import DeliveryStatus, WebhookEndpoint


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event as the dispatcher read it from the topic.

    Attributes:
        event_id: The ``webhook-id`` of its deliveries.
        event_type: E.g. ``payment.captured``.
        merchant_id: Whose endpoints receive it.
        transaction_id: The payment it is about (deliveries keep its order).
        occurred_at: When the change was committed.
        body: The event as published (the delivery's JSON body).
        trace_context: The trace headers it was published with (a delivery's span links
            to that trace).
    """

    event_id: uuid.UUID
    event_type: str
    merchant_id: str
    transaction_id: str
    occurred_at: datetime
    body: Mapping[str, Any]
    trace_context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A claimed delivery, with what sending it needs."""

    delivery_id: int
    event_id: uuid.UUID
    event_type: str
    transaction_id: str
    endpoint: WebhookEndpoint
    body: Mapping[str, Any]
    attempts: int
    """Attempts made before this one."""
    recorded_at: datetime
    occurred_at: datetime
    trace_context: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one POST went: a status code, or the class of error that prevented one."""

    status_code: int | None
    error: str | None
    """``timeout``, ``connection_error``, ``target_refused``, ``http_error``...; never a
    message that could carry a secret or the response body."""
    seconds: float

    @property
    def delivered(self) -> bool:
        """Whether the endpoint acknowledged it (any 2xx)."""
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """An attempt's outcome to store, and what becomes of its delivery."""

    delivery_id: int
    endpoint_id: str
    transaction_id: str
    result: AttemptResult
    attempted_at: datetime
    attempt: int
    """This attempt's number (1 for the first)."""
    status: DeliveryStatus
    next_attempt_at: datetime | None
    dispatcher: str


@dataclass(frozen=True, slots=True)
class EndpointBacklog:
    """What waits for one endpoint."""

    endpoint_id: str
    pending: int
    oldest_age_s: float


class WebhookRepository(Protocol):
    """Endpoints, the events recorded for them, deliveries and attempts."""

    def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Stage a new endpoint."""
        ...

    async def endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint (removed ones too), or None."""
        ...

    async def endpoints_of(self, merchant_id: str) -> list[WebhookEndpoint]:
        """The merchant's endpoints that are not removed, oldest first."""
        ...

    def update_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Stage writing the endpoint's URL, types, secrets, status and failing time."""
        ...

    async def record_events(self, events: Sequence[ReceivedEvent]) -> int:
        """At once (one statement): keep each event whose merchant has an endpoint (enabled,
        or disabled: its deliveries wait) that wants it, and one pending delivery per such
        endpoint; an event or delivery already recorded is left as it is. How many
        deliveries were new."""
        ...

    async def claim_due(
        self,
        *,
        claimer: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        ordered_attempts: int,
    ) -> list[DueDelivery]:
        """At once: lease up to ``limit`` pending deliveries due by ``now`` to enabled
        endpoints, each not already leased, and none while an earlier delivery of the
        same payment to the same endpoint is pending with fewer than
        ``ordered_attempts`` attempts (order per payment)."""
        ...

    async def record_attempts(
        self, records: Sequence[AttemptRecord], *, ordered_attempts: int
    ) -> None:
        """Store each attempt, move its delivery on and drop the claimer's lease (a
        delivery whose endpoint was disabled meanwhile is parked); a retry with fewer
        than ``ordered_attempts`` attempts holds its payment's later deliveries to the
        endpoint back until it is due; on the endpoint, a success clears
        ``failing_since`` and a failure sets it if unset."""
        ...

    async def endpoints_to_disable(
        self,
        *,
        failed: Sequence[str],
        given_up: Sequence[tuple[str, int]],
        since: datetime,
    ) -> list[WebhookEndpoint]:
        """The enabled endpoints, locked until the unit ends, that have failed for the
        whole retry window: of ``failed``, those failing since ``since`` or earlier; of
        ``given_up`` (endpoint, delivery) pairs, those with no 2xx since the delivery's
        first attempt (it failed every attempt through its window)."""
        ...

    async def replay(
        self,
        *,
        merchant_id: str,
        since: datetime,
        until: datetime,
        endpoint_id: str | None,
        now: datetime,
    ) -> int:
        """At once: every recorded event of the merchant that occurred in
        ``[since, until)`` is delivered again (from a first attempt) to each of its
        endpoints that are not removed and want it (or to ``endpoint_id`` only); a
        disabled endpoint's wait until it is enabled. How many deliveries."""
        ...

    async def abandon_pending(self, endpoint_id: str, *, at: datetime) -> int:
        """Give up the endpoint's pending deliveries (it is being removed); how many."""
        ...

    async def park_pending(self, endpoint_id: str) -> int:
        """Unschedule the endpoint's pending deliveries (it is disabled); how many."""
        ...

    async def restart_pending(self, endpoint_id: str, *, at: datetime) -> int:
        """Make the endpoint's pending deliveries due at ``at``, from a first attempt with
        a fresh retry window (it is enabled again); how many."""
        ...

    async def backlog(self) -> list[EndpointBacklog]:
        """Pending deliveries of each enabled endpoint that has any, and the oldest's age."""
        ...

    async def purge_finished(self, *, before: datetime, limit: int) -> int:
        """At once: delete up to ``limit`` deliveries finished (delivered or given up)
        before ``before``, their attempts, and events left with no delivery; how many."""
        ...


class WebhookSender(Protocol):
    """POSTs one signed delivery (one pooled client; a short timeout)."""

    async def send(
        self,
        *,
        url: str,
        message_id: str,
        body: bytes,
        secrets: Sequence[str],
        timestamp: datetime,
    ) -> AttemptResult:
        """POST ``body`` with Standard Webhooks headers signed by every secret (clear
        text); never raises for what the endpoint or the network does."""
        ...

    async def aclose(self) -> None:
        """Close the pooled connections."""
        ...


class WebhookTargets(Protocol):
    """Whether a URL may receive webhooks (its shape, and where its host resolves)."""

    async def check(self, url: str) -> None:
        """Return if the URL is acceptable.

        Raises:
            WebhookTargetRefused: It is not (with a reason that never echoes a secret).
        """
        ...


class SecretBox(Protocol):
    """Seals webhook signing secrets for storage (the card vault's keys)."""

    def seal(self, secret: str, *, associated_data: bytes) -> str:
        """The secret encrypted under the current key, as a self-describing token."""
        ...

    def unseal(self, token: str, *, associated_data: bytes) -> str:
        """The secret a token made by :meth:`seal` holds."""
        ...


__all__ = [
    "AttemptRecord",
    "AttemptResult",
    "DueDelivery",
    "EndpointBacklog",
    "ReceivedEvent",
    "SecretBox",
    "WebhookRepository",
    "WebhookSender",
    "WebhookTargets",
]
