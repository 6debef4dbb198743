"""Business metrics over DogStatsD: the catalogue of names, the client, the periodic reporter.

:data:`CATALOGUE` is the one list of the metrics the service emits (name, type, tags,
meaning); the dashboards and monitors under ``deploy/datadog`` query exactly these names
(a unit test checks both directions), and docs/observability.md describes them.

:class:`PaymentMetrics` sends them with the ``datadog`` package's :class:`DogStatsd`
client: one UDP datagram per call, on a non-blocking socket (a full buffer drops the
datagram, never the request). Disabled (``METRICS_ENABLED`` false) every method returns at
once. Tags are bounded: statuses, currencies, decline and failure codes, operations,
event types — never a transaction, refund or merchant id. The one id is a webhook
endpoint's, on the per-endpoint backlog gauges (one series per endpoint with a backlog).

:class:`MetricsReporter` is the background task, one per worker, that reports the gauges
nobody's request would: the bank circuit state, the outbox backlog and what waits for the
reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from datadog.dogstatsd.base import DogStatsd

from app.domain.money import exponent

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.services.ports import BankGateway, PaymentQueries, UnitOfWork

logger = logging.getLogger(__name__)

PREFIX: Final = "payment_service"

MetricType = Literal["count", "gauge", "distribution"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric the service emits."""

    name: str
    type: MetricType
    tags: tuple[str, ...]
    unit: str
    description: str

    @property
    def full_name(self) -> str:
        """The name as Datadog sees it, with the service prefix."""
        return f"{PREFIX}.{self.name}"


PAYMENTS_PROCESSED: Final = MetricSpec(
    "payments.processed",
    "count",
    ("status", "currency", "decline_code", "failure_code"),
    "payment",
    "Payments recorded, by outcome (captured, declined, failed); the decline rate is "
    "declined / all.",
)
PAYMENTS_AMOUNT: Final = MetricSpec(
    "payments.amount",
    "distribution",
    ("status", "currency"),
    "major currency unit",
    "Amount of each recorded payment in major units (a float: for charts only, never "
    "for accounting).",
)
REFUNDS_PROCESSED: Final = MetricSpec(
    "refunds.processed",
    "count",
    ("status", "currency", "failure_code"),
    "refund",
    "Refunds recorded, by outcome (succeeded, failed).",
)
REFUNDS_AMOUNT: Final = MetricSpec(
    "refunds.amount",
    "distribution",
    ("status", "currency"),
    "major currency unit",
    "Amount of each recorded refund in major units.",
)
AUTHORIZATIONS_SETTLED: Final = MetricSpec(
    "authorizations.settled",
    "count",
    ("operation", "outcome", "currency", "failure_code"),
    "operation",
    "Captures, voids and expiries of authorizations (capture_method manual) settled, by "
    "the request or the reconciler: succeeded, or failed (the bank refused, or has no "
    "record of it; the payment stays authorized).",
)
IDEMPOTENCY_REPLAYS: Final = MetricSpec(
    "idempotency.replays",
    "count",
    ("operation",),
    "request",
    "Requests answered from a stored idempotent response instead of being run again.",
)
BANK_LATENCY: Final = MetricSpec(
    "bank.latency",
    "distribution",
    ("operation", "outcome"),
    "millisecond",
    "Time of one bank call as the service sees it, retries and backoff included; outcome "
    "is `answered` or the failure code (bank_timeout, bank_unreachable, processing_error, "
    "circuit_open).",
)
BANK_CIRCUIT_OPEN: Final = MetricSpec(
    "bank.circuit.open",
    "gauge",
    (),
    "boolean",
    "1 while the bank circuit breaker is open (calls refused without trying), else 0; "
    "sent on every change and every report interval.",
)
OUTBOX_PENDING: Final = MetricSpec(
    "outbox.pending",
    "gauge",
    (),
    "event",
    "Events committed but not yet acknowledged by Kafka.",
)
OUTBOX_OLDEST_AGE: Final = MetricSpec(
    "outbox.oldest_age_s",
    "gauge",
    (),
    "second",
    "Age of the oldest unpublished event; 0 when the outbox is empty.",
)
OUTBOX_PUBLISHED: Final = MetricSpec(
    "outbox.published",
    "count",
    ("path", "outcome"),
    "event",
    "Events sent to Kafka, by who sent them (request right after its commit, or the "
    "background relay) and whether Kafka acknowledged them (published, failed).",
)

RECONCILE_WAITING: Final = MetricSpec(
    "reconciliation.waiting",
    "gauge",
    ("kind",),
    "item",
    "Payments (kind:payment) and refunds (kind:refund) whose bank answer is unknown, "
    "waiting for the reconciler.",
)
RECONCILE_OLDEST_AGE: Final = MetricSpec(
    "reconciliation.oldest_age_s",
    "gauge",
    (),
    "second",
    "Age of the oldest payment or refund waiting for the bank's answer; 0 when none.",
)
RECONCILE_SETTLED: Final = MetricSpec(
    "reconciliation.settled",
    "count",
    ("kind", "outcome"),
    "item",
    "Items the reconciler settled from the bank's status lookup, by kind and the status "
    "they reached (captured, declined, failed, succeeded, ...).",
)
RETENTION_PURGED: Final = MetricSpec(
    "retention.purged",
    "count",
    ("table",),
    "row",
    "Rows deleted past their retention (idempotency_keys, outbox_events).",
)

WEBHOOK_EVENTS: Final = MetricSpec(
    "webhooks.events",
    "count",
    ("outcome",),
    "event",
    "Events the webhook dispatcher read from the topic (outcome:read), and the deliveries "
    "it recorded for them (outcome:matched): one per event and endpoint that wants it.",
)
WEBHOOK_DELIVERIES: Final = MetricSpec(
    "webhooks.deliveries",
    "count",
    ("outcome", "event_type", "error"),
    "attempt",
    "POSTs of webhook deliveries, by outcome: delivered (2xx), retrying (failed, tried "
    "again later), given_up (failed past the retry window); error is the status "
    "(http_500) or class (timeout, connection_error, target_refused).",
)
WEBHOOK_ATTEMPT_LATENCY: Final = MetricSpec(
    "webhooks.attempt.latency",
    "distribution",
    ("outcome",),
    "millisecond",
    "Time of one webhook POST, connection included, until the status line (or the error).",
)
WEBHOOK_DELIVERY_LAG: Final = MetricSpec(
    "webhooks.delivery_lag",
    "distribution",
    (),
    "millisecond",
    "From an event's commit to the merchant's 2xx for it (retries included).",
)
WEBHOOK_BACKLOG_PENDING: Final = MetricSpec(
    "webhooks.backlog.pending",
    "gauge",
    ("endpoint_id",),
    "delivery",
    "Deliveries waiting for an enabled endpoint's 2xx (first attempt or retry).",
)
WEBHOOK_BACKLOG_AGE: Final = MetricSpec(
    "webhooks.backlog.oldest_age_s",
    "gauge",
    ("endpoint_id",),
    "second",
    "Age of an endpoint's oldest pending delivery (sent while it has any).",
)
WEBHOOK_BACKLOG_TOTAL: Final = MetricSpec(
    "webhooks.backlog.total",
    "gauge",
    (),
    "delivery",
    "Deliveries waiting for a 2xx, every enabled endpoint together (0 when none); sent by "
    "every dispatcher at every report interval, so its silence means no dispatcher reports.",
)
WEBHOOK_ENDPOINTS_DISABLED: Final = MetricSpec(
    "webhooks.endpoints.disabled",
    "count",
    (),
    "endpoint",
    "Endpoints disabled by the dispatcher after failing for the whole retry window.",
)

CATALOGUE: Final[tuple[MetricSpec, ...]] = (
    PAYMENTS_PROCESSED,
    PAYMENTS_AMOUNT,
    REFUNDS_PROCESSED,
    REFUNDS_AMOUNT,
    AUTHORIZATIONS_SETTLED,
    IDEMPOTENCY_REPLAYS,
    BANK_LATENCY,
    BANK_CIRCUIT_OPEN,
    OUTBOX_PENDING,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PUBLISHED,
    RECONCILE_WAITING,
    RECONCILE_OLDEST_AGE,
    RECONCILE_SETTLED,
    RETENTION_PURGED,
    WEBHOOK_EVENTS,
    WEBHOOK_DELIVERIES,
    WEBHOOK_ATTEMPT_LATENCY,
    WEBHOOK_DELIVERY_LAG,
    WEBHOOK_BACKLOG_PENDING,
    WEBHOOK_BACKLOG_AGE,
    WEBHOOK_BACKLOG_TOTAL,
    WEBHOOK_ENDPOINTS_DISABLED,
)
"""Every metric the service emits, and nothing else."""


def _major(amount_minor: int, currency: str) -> float:
    return float(amount_minor) / float(10 ** exponent(currency))


def _tags(**values: str | None) -> list[str]:
    return [f"{key}:{value}" for key, value in values.items() if value]


class PaymentMetrics:
    """The :class:`~app.services.ports.Metrics` port over DogStatsD: sends the catalogue's
    metrics; every method is a no-op when metrics are disabled."""

    def __init__(self, statsd: DogStatsd | None = None) -> None:
        """Wrap a DogStatsD client, or nothing (disabled)."""
        self._statsd = statsd
        self._backlogged: set[str] = set()

    @classmethod
    def disabled(cls) -> PaymentMetrics:
        """Metrics that go nowhere."""
        return cls(None)

    @classmethod
    def from_settings(cls, settings: Settings) -> PaymentMetrics:
        """DogStatsD at ``DD_AGENT_HOST:DD_DOGSTATSD_PORT`` when ``METRICS_ENABLED``."""
        if not settings.metrics_enabled:
            return cls.disabled()
        statsd = DogStatsd(
            host=settings.dogstatsd_host or "127.0.0.1",
            port=settings.dogstatsd_port,
            namespace=PREFIX,
            constant_tags=[
                f"service:{settings.service_name}",
                f"env:{settings.datadog_env}",
                f"version:{settings.version}",
            ],
            disable_telemetry=True,
        )
        return cls(statsd)

    @property
    def enabled(self) -> bool:
        """Whether anything is sent."""
        return self._statsd is not None

    def payment_processed(
        self,
        *,
        status: str,
        currency: str,
        amount_minor: int,
        decline_code: str | None = None,
        failure_code: str | None = None,
    ) -> None:
        """A payment was recorded (captured, declined or failed)."""
        statsd = self._statsd
        if statsd is None:
            return
        statsd.increment(
            PAYMENTS_PROCESSED.name,
            tags=_tags(
                status=status,
                currency=currency,
                decline_code=decline_code,
                failure_code=failure_code,
            ),
        )
        statsd.distribution(
            PAYMENTS_AMOUNT.name,
            _major(amount_minor, currency),
            tags=_tags(status=status, currency=currency),
        )

    def refund_processed(
        self, *, status: str, currency: str, amount_minor: int, failure_code: str | None = None
    ) -> None:
        """A refund was recorded (succeeded or failed)."""
        statsd = self._statsd
        if statsd is None:
            return
        statsd.increment(
            REFUNDS_PROCESSED.name,
            tags=_tags(status=status, currency=currency, failure_code=failure_code),
        )
        statsd.distribution(
            REFUNDS_AMOUNT.name,
            _major(amount_minor, currency),
            tags=_tags(status=status, currency=currency),
        )

    def authorization_settled(
        self, *, operation: str, outcome: str, currency: str, failure_code: str | None = None
    ) -> None:
        """A capture, void or expiry of an authorization settled."""
        if self._statsd is not None:
            self._statsd.increment(
                AUTHORIZATIONS_SETTLED.name,
                tags=_tags(
                    operation=operation,
                    outcome=outcome,
                    currency=currency,
                    failure_code=failure_code,
                ),
            )

    def idempotent_replay(self, *, operation: str) -> None:
        """A request was answered with its stored response."""
        if self._statsd is not None:
            self._statsd.increment(IDEMPOTENCY_REPLAYS.name, tags=_tags(operation=operation))

    def bank_call(self, *, operation: str, outcome: str, seconds: float) -> None:
        """One call to the bank finished (all its attempts)."""
        if self._statsd is not None:
            self._statsd.distribution(
                BANK_LATENCY.name,
                seconds * 1000.0,
                tags=_tags(operation=operation, outcome=outcome),
            )

    def circuit_state(self, state: str) -> None:
        """The bank circuit is ``closed``, ``open`` or ``half_open`` (only open counts)."""
        if self._statsd is not None:
            self._statsd.gauge(BANK_CIRCUIT_OPEN.name, 1 if state == "open" else 0)

    def outbox_backlog(self, *, pending: int, oldest_age_s: float) -> None:
        """How many events wait for Kafka, and for how long the oldest has."""
        if self._statsd is not None:
            self._statsd.gauge(OUTBOX_PENDING.name, pending)
            self._statsd.gauge(OUTBOX_OLDEST_AGE.name, round(oldest_age_s, 3))

    def outbox_published(self, *, path: str, published: int, failed: int) -> None:
        """A batch went to Kafka: how many were acknowledged, how many failed."""
        statsd = self._statsd
        if statsd is None:
            return
        if published:
            statsd.increment(
                OUTBOX_PUBLISHED.name, published, tags=_tags(path=path, outcome="published")
            )
        if failed:
            statsd.increment(OUTBOX_PUBLISHED.name, failed, tags=_tags(path=path, outcome="failed"))

    def reconciliation_settled(self, *, kind: str, outcome: str, count: int) -> None:
        """The reconciler settled ``count`` items of ``kind`` with this outcome."""
        if self._statsd is not None:
            self._statsd.increment(
                RECONCILE_SETTLED.name, count, tags=_tags(kind=kind, outcome=outcome)
            )

    def reconciliation_backlog(self, *, payments: int, refunds: int, oldest_age_s: float) -> None:
        """How many items wait for the bank's answer, and for how long the oldest has."""
        statsd = self._statsd
        if statsd is None:
            return
        statsd.gauge(RECONCILE_WAITING.name, payments, tags=_tags(kind="payment"))
        statsd.gauge(RECONCILE_WAITING.name, refunds, tags=_tags(kind="refund"))
        statsd.gauge(RECONCILE_OLDEST_AGE.name, round(oldest_age_s, 3))

    def purged(self, *, table: str, rows: int) -> None:
        """Rows past their retention were deleted."""
        if self._statsd is not None:
            self._statsd.increment(RETENTION_PURGED.name, rows, tags=_tags(table=table))

    def webhook_events(self, *, recorded: int, deliveries: int) -> None:
        """The dispatcher read events and recorded deliveries for them."""
        statsd = self._statsd
        if statsd is None:
            return
        statsd.increment(WEBHOOK_EVENTS.name, recorded, tags=_tags(outcome="read"))
        if deliveries:
            statsd.increment(WEBHOOK_EVENTS.name, deliveries, tags=_tags(outcome="matched"))

    def webhook_attempt(
        self, *, outcome: str, event_type: str, seconds: float, error: str | None
    ) -> None:
        """One POST of a delivery."""
        statsd = self._statsd
        if statsd is None:
            return
        statsd.increment(
            WEBHOOK_DELIVERIES.name, tags=_tags(outcome=outcome, event_type=event_type, error=error)
        )
        statsd.distribution(
            WEBHOOK_ATTEMPT_LATENCY.name, seconds * 1000.0, tags=_tags(outcome=outcome)
        )

    def webhook_delivery_lag(self, *, seconds: float) -> None:
        """A delivery was acknowledged this long after its event's commit."""
        if self._statsd is not None:
            self._statsd.distribution(WEBHOOK_DELIVERY_LAG.name, seconds * 1000.0)

    def webhook_backlog(self, backlog: list[tuple[str, int, float]]) -> None:
        """Per endpoint (its id only: a merchant id never goes in a tag): pending
        deliveries and the oldest's age; and their total, 0 included (the dispatcher's
        heartbeat: a monitor pages when it stops)."""
        statsd = self._statsd
        if statsd is None:
            return
        statsd.gauge(WEBHOOK_BACKLOG_TOTAL.name, sum(pending for _, pending, _ in backlog))
        reported = set()
        for endpoint_id, pending, oldest_age_s in backlog:
            tags = _tags(endpoint_id=endpoint_id)
            statsd.gauge(WEBHOOK_BACKLOG_PENDING.name, pending, tags=tags)
            statsd.gauge(WEBHOOK_BACKLOG_AGE.name, round(oldest_age_s, 3), tags=tags)
            reported.add(endpoint_id)
        # An endpoint whose backlog drained since the last report is sent 0 once, so its
        # series comes down rather than stopping at its last value.
        for endpoint_id in self._backlogged - reported:
            tags = _tags(endpoint_id=endpoint_id)
            statsd.gauge(WEBHOOK_BACKLOG_PENDING.name, 0, tags=tags)
            statsd.gauge(WEBHOOK_BACKLOG_AGE.name, 0, tags=tags)
        self._backlogged = reported

    def webhook_endpoint_disabled(self) -> None:
        """An endpoint was disabled after failing for the whole retry window."""
        if self._statsd is not None:
            self._statsd.increment(WEBHOOK_ENDPOINTS_DISABLED.name)

    def close(self) -> None:
        """Flush and close the socket."""
        statsd, self._statsd = self._statsd, None
        if statsd is not None:
            statsd.flush()
            statsd.close_socket()


class MetricsReporter:
    """Reports the circuit state and the outbox backlog every interval, in the background."""

    def __init__(
        self,
        metrics: PaymentMetrics,
        *,
        bank: BankGateway,
        uow_factory: Callable[[], UnitOfWork],
        queries: PaymentQueries,
        interval_s: float,
    ) -> None:
        """Configure the reporter; nothing runs until :meth:`start`."""
        self._metrics = metrics
        self._bank = bank
        self._uow_factory = uow_factory
        self._queries = queries
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reporting (a no-op when metrics are disabled)."""
        if self._metrics.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics-reporter")

    async def stop(self) -> None:
        """Stop reporting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def report_once(self) -> None:
        """Report every gauge now."""
        self._metrics.circuit_state(self._bank.circuit_state)
        async with self._uow_factory() as uow:
            backlog = await uow.outbox.backlog()
        self._metrics.outbox_backlog(
            pending=backlog.pending, oldest_age_s=backlog.oldest_pending_age_s
        )
        unsettled = await self._queries.unsettled_backlog()
        self._metrics.reconciliation_backlog(
            payments=unsettled.payments,
            refunds=unsettled.refunds,
            oldest_age_s=unsettled.oldest_age_s,
        )

    async def _run(self) -> None:
        while True:
            try:
                await self.report_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A database hiccup must not end the reporting; the next round tries again.
                logger.warning("metrics report failed: %s", type(exc).__name__)
            await asyncio.sleep(self._interval_s)
