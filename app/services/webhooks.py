"""Webhooks to merchants (SPEC §10, docs/webhooks.md): the operators' use cases
(``payments-admin add-webhook`` and the rest) and the dispatcher's two steps -- record
the deliveries an event calls for, then send what is due.

Secrets are generated here, printed once by the CLI, and otherwise exist in clear only
in the dispatcher's memory while it signs a delivery.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from app.core.jsoncodec import dump_json
from app.domain.audit import ADMIN_ACTOR, AuditEntry, AuditOutcome
from app.domain.errors import MerchantNotFound, ValidationFailed, WebhookEndpointNotFound
from app.domain.webhooks import (
    DeliveryStatus,
    EndpointStatus,
    RetryPolicy,
    WebhookEndpoint,
    new_endpoint_id,
    parse_event_types,
)
from app.services.ports import Clock, Metrics, NoMetrics, UnitOfWork
from app.services.ports.webhooks import (
    AttemptRecord,
    AttemptResult,
    DueDelivery,
    ReceivedEvent,
    SecretBox,
    WebhookSender,
    WebhookTargets,
)
from app.services.telemetry import span

logger = logging.getLogger(__name__)

DISPATCHER_ACTOR = "payments-webhooks"
"""The audit actor of what the dispatcher decides on its own (disabling an endpoint)."""

SECRET_BYTES = 24
"""Random bytes in a signing secret (``whsec_`` and their base64, as Standard Webhooks)."""


def generate_secret() -> str:
    """A fresh signing secret: ``whsec_`` and base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_context(endpoint_id: str) -> bytes:
    """What a sealed secret is bound to: its endpoint (a token moved to another endpoint's
    row does not open)."""
    return f"webhook:{endpoint_id}".encode()


@dataclass(frozen=True, slots=True)
class WebhookAdmin:
    """What the operators' use cases need."""

    uow_factory: Callable[[], UnitOfWork]
    box: SecretBox
    targets: WebhookTargets
    clock: Clock
    secret_grace: timedelta = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class IssuedEndpoint:
    """A new endpoint, or a rotated one, and its secret: the only moment it is in clear."""

    endpoint: WebhookEndpoint
    secret: str


def _audit(
    action: str,
    endpoint: WebhookEndpoint,
    at: datetime,
    *,
    actor: str = ADMIN_ACTOR,
    **details: Any,
) -> AuditEntry:
    # On the merchant: its audit trail says what happened to its webhooks. The URL is
    # not repeated (it may carry a merchant's token in its query); the host is.
    return AuditEntry(
        actor=actor,
        action=action,
        resource_type="merchant",
        resource_id=endpoint.merchant_id,
        outcome=AuditOutcome.SUCCESS,
        correlation_id=None,
        occurred_at=at,
        details={"endpoint_id": endpoint.endpoint_id, **details},
    )


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


async def add_endpoint(
    admin: WebhookAdmin, *, merchant_id: str, url: str, event_types: Iterable[str] = ()
) -> IssuedEndpoint:
    """Register an enabled endpoint for a merchant, with a fresh secret.

    Raises:
        MerchantNotFound: No such merchant.
        WebhookTargetRefused: The URL may not receive webhooks (HTTPS only, public
            addresses only, in production).
        ValidationFailed: An unknown event type.
    """
    types = parse_event_types(event_types)
    await admin.targets.check(url)
    now = admin.clock()
    endpoint_id = new_endpoint_id()
    secret = generate_secret()
    endpoint = WebhookEndpoint(
        endpoint_id=endpoint_id,
        merchant_id=merchant_id,
        url=url,
        event_types=types,
        status=EndpointStatus.ENABLED,
        secret=admin.box.seal(secret, associated_data=secret_context(endpoint_id)),
        created_at=now,
        updated_at=now,
    )
    async with admin.uow_factory() as uow:
        if await uow.merchants.get(merchant_id) is None:
            raise MerchantNotFound(f"No merchant {merchant_id}.")
        uow.webhooks.add_endpoint(endpoint)
        uow.audit.append(
            _audit(
                "webhook.add",
                endpoint,
                now,
                host=_host(url),
                event_types=sorted(types) or ["*"],
            )
        )
        await uow.commit()
    return IssuedEndpoint(endpoint=endpoint, secret=secret)


async def list_endpoints(admin: WebhookAdmin, *, merchant_id: str) -> list[WebhookEndpoint]:
    """The merchant's endpoints that are not removed, oldest first.

    Raises:
        MerchantNotFound: No such merchant.
    """
    async with admin.uow_factory() as uow:
        if await uow.merchants.get(merchant_id) is None:
            raise MerchantNotFound(f"No merchant {merchant_id}.")
        return await uow.webhooks.endpoints_of(merchant_id)


async def _change(
    admin: WebhookAdmin,
    endpoint_id: str,
    action: str,
    change: Callable[[WebhookEndpoint, datetime], WebhookEndpoint],
    *,
    pending: Literal["abandon", "park", "restart"] | None = None,
    **details: Any,
) -> WebhookEndpoint:
    now = admin.clock()
    async with admin.uow_factory() as uow:
        endpoint = await uow.webhooks.endpoint(endpoint_id)
        if endpoint is None or endpoint.status is EndpointStatus.REMOVED:
            raise WebhookEndpointNotFound(f"No webhook endpoint {endpoint_id}.")
        changed = dataclasses.replace(change(endpoint, now), updated_at=now)
        uow.webhooks.update_endpoint(changed)
        if pending == "abandon":
            details["abandoned_deliveries"] = await uow.webhooks.abandon_pending(
                endpoint_id, at=now
            )
        elif pending == "park":
            details["parked_deliveries"] = await uow.webhooks.park_pending(endpoint_id)
        elif pending == "restart":
            details["waiting_deliveries"] = await uow.webhooks.restart_pending(endpoint_id, at=now)
        uow.audit.append(_audit(action, changed, now, **details))
        await uow.commit()
    return changed


async def remove_endpoint(admin: WebhookAdmin, *, endpoint_id: str) -> WebhookEndpoint:
    """Stop delivering to an endpoint for good: its pending deliveries are given up (its
    history stays until retention deletes it).

    Raises:
        WebhookEndpointNotFound: No such endpoint, or already removed.
    """
    return await _change(
        admin,
        endpoint_id,
        "webhook.remove",
        lambda endpoint, _: dataclasses.replace(endpoint, status=EndpointStatus.REMOVED),
        pending="abandon",
    )


async def disable_endpoint(admin: WebhookAdmin, *, endpoint_id: str) -> WebhookEndpoint:
    """Stop delivering to an endpoint for now: its events are still recorded and wait,
    and ``enable-webhook`` sends them.

    Raises:
        WebhookEndpointNotFound: No such endpoint, or removed.
    """
    return await _change(
        admin,
        endpoint_id,
        "webhook.disable",
        lambda endpoint, _: dataclasses.replace(
            endpoint, status=EndpointStatus.DISABLED, disabled_reason="operator"
        ),
        pending="park",
        reason="operator",
    )


async def enable_endpoint(admin: WebhookAdmin, *, endpoint_id: str) -> WebhookEndpoint:
    """Deliver to a disabled endpoint again: its pending deliveries go out at once, each
    with a fresh retry window (the days it was disabled do not count against them).

    Raises:
        WebhookEndpointNotFound: No such endpoint, or removed.
    """
    return await _change(
        admin,
        endpoint_id,
        "webhook.enable",
        lambda endpoint, _: dataclasses.replace(
            endpoint, status=EndpointStatus.ENABLED, failing_since=None, disabled_reason=None
        ),
        pending="restart",
    )


async def rotate_secret(admin: WebhookAdmin, *, endpoint_id: str) -> IssuedEndpoint:
    """Give an endpoint a new secret; the old one keeps signing (next to the new one)
    for the grace period, so the receiver can switch without losing a delivery.

    Raises:
        WebhookEndpointNotFound: No such endpoint, or removed.
    """
    secret = generate_secret()
    sealed = admin.box.seal(secret, associated_data=secret_context(endpoint_id))

    def rotate(endpoint: WebhookEndpoint, now: datetime) -> WebhookEndpoint:
        return dataclasses.replace(
            endpoint,
            secret=sealed,
            previous_secret=endpoint.secret if admin.secret_grace > timedelta(0) else None,
            previous_secret_expires_at=(
                now + admin.secret_grace if admin.secret_grace > timedelta(0) else None
            ),
        )

    endpoint = await _change(
        admin,
        endpoint_id,
        "webhook.rotate_secret",
        rotate,
        grace_s=admin.secret_grace.total_seconds(),
    )
    return IssuedEndpoint(endpoint=endpoint, secret=secret)


async def replay(
    admin: WebhookAdmin,
    *,
    merchant_id: str,
    since: datetime,
    until: datetime | None = None,
    endpoint_id: str | None = None,
) -> int:
    """Send again every recorded event of the merchant that occurred in ``[since,
    until)``, to each of its endpoints that wants it (or to one; a disabled endpoint's
    wait until it is enabled); how many deliveries.

    Raises:
        MerchantNotFound: No such merchant.
        WebhookEndpointNotFound: ``endpoint_id`` is not one of the merchant's.
        ValidationFailed: ``until`` is not after ``since``.
    """
    now = admin.clock()
    until = until or now
    if until <= since:
        raise ValidationFailed("--until must be after --since", field="until")
    async with admin.uow_factory() as uow:
        if await uow.merchants.get(merchant_id) is None:
            raise MerchantNotFound(f"No merchant {merchant_id}.")
        if endpoint_id is not None:
            endpoint = await uow.webhooks.endpoint(endpoint_id)
            if (
                endpoint is None
                or endpoint.merchant_id != merchant_id
                or endpoint.status is EndpointStatus.REMOVED
            ):
                raise WebhookEndpointNotFound(
                    f"No webhook endpoint {endpoint_id} of {merchant_id}."
                )
        queued = await uow.webhooks.replay(
            merchant_id=merchant_id, since=since, until=until, endpoint_id=endpoint_id, now=now
        )
        uow.audit.append(
            AuditEntry(
                actor=ADMIN_ACTOR,
                action="webhook.replay",
                resource_type="merchant",
                resource_id=merchant_id,
                outcome=AuditOutcome.SUCCESS,
                correlation_id=None,
                occurred_at=now,
                details={
                    "since": since.isoformat(),
                    "until": until.isoformat(),
                    "endpoint_id": endpoint_id,
                    "deliveries": queued,
                },
            )
        )
        await uow.commit()
    return queued


# -- the dispatcher ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What the dispatcher's use cases need."""

    uow_factory: Callable[[], UnitOfWork]
    sender: WebhookSender
    box: SecretBox
    clock: Clock
    claimer: str
    """This process's name on its leases and attempts."""
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    lease: timedelta = timedelta(seconds=30)
    batch_size: int = 50
    metrics: Metrics = field(default_factory=NoMetrics)


async def record_events(dispatch: Dispatch, events: Sequence[ReceivedEvent]) -> int:
    """Record the deliveries these events call for (one statement, one commit); events
    no endpoint wants are not kept. How many deliveries are new."""
    if not events:
        return 0
    async with dispatch.uow_factory() as uow:
        created = await uow.webhooks.record_events(events)
        await uow.commit()
    dispatch.metrics.webhook_events(recorded=len(events), deliveries=created)
    return created


class InFlight:
    """The deliveries one dispatcher is POSTing, and the attempts finished but not yet
    recorded. A slow endpoint holds only its own deliveries' places: the others are
    recorded as they finish, and their places claimed again, without waiting for it."""

    def __init__(self, capacity: int, on_finished: Callable[[], None] = lambda: None) -> None:
        """Hold at most ``capacity`` deliveries at once; ``on_finished`` is called when one
        finishes (the dispatcher wakes its sender loop)."""
        self.capacity = capacity
        self._on_finished = on_finished
        self._tasks: set[asyncio.Task[AttemptRecord]] = set()
        self._finished: list[AttemptRecord] = []

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, sending: Coroutine[Any, Any, AttemptRecord]) -> None:
        """POST one claimed delivery in the background."""
        task = asyncio.create_task(sending, name="webhook-delivery")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[AttemptRecord]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            # Its lease runs out and it is claimed again: sent again, never lost.
            logger.error("a webhook delivery failed unexpectedly: %s", type(exc).__name__)
        else:
            self._finished.append(task.result())
        self._on_finished()

    def take_finished(self) -> list[AttemptRecord]:
        """The attempts finished since the last call (and forget them)."""
        finished, self._finished = self._finished, []
        return finished

    def give_back(self, records: Sequence[AttemptRecord]) -> None:
        """Attempts taken but not recorded (the database failed): recorded next time."""
        self._finished[:0] = records

    async def wait(self, timeout_s: float) -> None:
        """Wait until every delivery in flight has finished (cancel those still running
        after ``timeout_s``: their leases bring them back)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def body_bytes(delivery: DueDelivery) -> bytes:
    """The delivery's JSON body, as sent and signed."""
    return dump_json(delivery.body).encode()


async def _send(dispatch: Dispatch, delivery: DueDelivery) -> AttemptRecord:
    now = dispatch.clock()
    endpoint = delivery.endpoint
    attempt = delivery.attempts + 1
    with span(
        "webhook.deliver",
        links_to=delivery.trace_context,
        event_type=delivery.event_type,
        event_id=str(delivery.event_id),
        merchant_id=endpoint.merchant_id,
        endpoint_id=endpoint.endpoint_id,
        attempt=attempt,
    ) as traced:
        try:
            keys = _open_secrets(dispatch, endpoint, now)
        except Exception:
            # A secret that no configured key opens: a configuration error, never sent
            # unsigned. It is retried like any failure (the keys may be restored).
            logger.exception("webhook secret of %s cannot be opened", endpoint.endpoint_id)
            result = AttemptResult(status_code=None, error="secret_unavailable", seconds=0.0)
        else:
            result = await dispatch.sender.send(
                url=endpoint.url,
                message_id=str(delivery.event_id),
                body=body_bytes(delivery),
                secrets=keys,
                timestamp=now,
            )
        if result.delivered:
            status, next_at = DeliveryStatus.DELIVERED, None
        else:
            next_at = dispatch.policy.next_attempt(
                attempts=attempt, recorded_at=delivery.recorded_at, now=now
            )
            status = DeliveryStatus.FAILED if next_at is None else DeliveryStatus.PENDING
        traced.tag(
            outcome=_outcome(status),
            http_status_code=result.status_code,
            error_class=result.error,
        )
    dispatch.metrics.webhook_attempt(
        outcome=_outcome(status),
        event_type=delivery.event_type,
        seconds=result.seconds,
        error=result.error or (None if result.delivered else f"http_{result.status_code}"),
    )
    if result.delivered:
        dispatch.metrics.webhook_delivery_lag(
            seconds=max((dispatch.clock() - delivery.occurred_at).total_seconds(), 0.0)
        )
    return AttemptRecord(
        delivery_id=delivery.delivery_id,
        endpoint_id=endpoint.endpoint_id,
        transaction_id=delivery.transaction_id,
        result=result,
        attempted_at=now,
        attempt=attempt,
        status=status,
        next_attempt_at=next_at,
        dispatcher=dispatch.claimer,
    )


def _open_secrets(dispatch: Dispatch, endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign now, in clear: the current one (which must open), and the
    previous one during a rotation's grace if it still opens (its key may be retired)."""
    context = secret_context(endpoint.endpoint_id)
    current, *previous = endpoint.signing_secrets(now)
    keys = [dispatch.box.unseal(current, associated_data=context)]
    for sealed in previous:
        try:
            keys.append(dispatch.box.unseal(sealed, associated_data=context))
        except Exception:
            logger.warning("the previous secret of %s cannot be opened", endpoint.endpoint_id)
    return keys


def _outcome(status: DeliveryStatus) -> str:
    return {
        DeliveryStatus.DELIVERED: "delivered",
        DeliveryStatus.PENDING: "retrying",
        DeliveryStatus.FAILED: "given_up",
    }[status]


async def deliver_due(dispatch: Dispatch, in_flight: InFlight) -> bool:
    """One step of the sender loop: record the attempts that finished (and disable the
    endpoints that have failed for the whole retry window: the merchant's audit log says
    so), then claim as many due deliveries as there is room for (leased) and start
    POSTing them. Whether more may be due right now (the claim was full)."""
    finished = in_flight.take_finished()
    try:
        await record_finished(dispatch, finished)
    except Exception:
        in_flight.give_back(finished)
        raise
    room = min(in_flight.capacity - len(in_flight), dispatch.batch_size)
    # Claim in batches: a place or two freeing up waits for the next step.
    if room <= 0 or (len(in_flight) and room < dispatch.batch_size // 2):
        return False
    async with dispatch.uow_factory() as uow:
        due = await uow.webhooks.claim_due(
            claimer=dispatch.claimer,
            now=dispatch.clock(),
            lease=dispatch.lease,
            limit=room,
            ordered_attempts=dispatch.policy.ordered_attempts,
        )
        await uow.commit()
    for delivery in due:
        in_flight.start(_send(dispatch, delivery))
    return len(due) == room


async def record_finished(dispatch: Dispatch, records: Sequence[AttemptRecord]) -> None:
    """Record finished attempts, move their deliveries on, and disable the endpoints that
    have failed for the whole retry window."""
    if not records:
        return
    now = dispatch.clock()
    failed_endpoints = sorted({r.endpoint_id for r in records if not r.result.delivered})
    gave_up = [(r.endpoint_id, r.delivery_id) for r in records if r.status is DeliveryStatus.FAILED]
    async with dispatch.uow_factory() as uow:
        await uow.webhooks.record_attempts(
            records, ordered_attempts=dispatch.policy.ordered_attempts
        )
        given_up = await uow.webhooks.endpoints_to_disable(
            failed=failed_endpoints, given_up=gave_up, since=now - dispatch.policy.window
        )
        for endpoint in given_up:
            await uow.webhooks.park_pending(endpoint.endpoint_id)
            uow.webhooks.update_endpoint(
                dataclasses.replace(
                    endpoint,
                    status=EndpointStatus.DISABLED,
                    disabled_reason="failing_for_retry_window",
                    updated_at=now,
                )
            )
            uow.audit.append(
                _audit(
                    "webhook.disable",
                    endpoint,
                    now,
                    actor=DISPATCHER_ACTOR,
                    reason="failing_for_retry_window",
                    failing_since=endpoint.failing_since.isoformat()
                    if endpoint.failing_since
                    else None,
                )
            )
        await uow.commit()
    for endpoint in given_up:
        logger.warning(
            "webhook endpoint %s of %s disabled: every attempt failed since %s",
            endpoint.endpoint_id,
            endpoint.merchant_id,
            endpoint.failing_since,
        )
        dispatch.metrics.webhook_endpoint_disabled()


async def report_backlog(dispatch: Dispatch) -> None:
    """Send each endpoint's pending deliveries and the oldest's age as metrics."""
    async with dispatch.uow_factory() as uow:
        backlog = await uow.webhooks.backlog()
    dispatch.metrics.webhook_backlog([(b.endpoint_id, b.pending, b.oldest_age_s) for b in backlog])


async def purge_finished(dispatch: Dispatch, *, keep: timedelta, limit: int) -> int:
    """Delete deliveries finished longer than ``keep`` ago (and what only they used)."""
    async with dispatch.uow_factory() as uow:
        purged = await uow.webhooks.purge_finished(before=dispatch.clock() - keep, limit=limit)
        await uow.commit()
    if purged:
        dispatch.metrics.purged(table="webhook_deliveries", rows=purged)
    return purged
