"""``payments-webhooks``: the webhook dispatcher process (docs/webhooks.md).

Its own process kind, scaled on its own: every replica joins the consumer group on the
events topic (so partitions are shared out between them), records the deliveries each
event calls for, and POSTs due deliveries -- its own and any other's whose lease ran out.
Reads the same configuration as the service. Stops on SIGTERM or SIGINT: the batch in
hand is recorded and committed, the deliveries in flight finish (bounded by the webhook
timeout), then it leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta

from app.adapters.db.engine import build_engine, build_session_factory
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.adapters.metrics import PaymentMetrics
from app.adapters.webhooks.consumer import EventConsumer
from app.adapters.webhooks.sender import HttpWebhookSender
from app.adapters.webhooks.targets import DnsTargets
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging, stop_log_writer
from app.core.periodic import PeriodicTask
from app.core.tracing import configure_tracing, log_tracing_state
from app.domain.webhooks import RetryPolicy, TargetRules
from app.main import build_vault
from app.services import webhooks
from app.services.context import utc_now
from app.services.ports import UnitOfWork
from app.services.ports.webhooks import ReceivedEvent

logger = logging.getLogger("app.dispatcher")

LEASE_MARGIN_S = 10.0
"""A claim outlives the longest POST by this much (then another dispatcher may take it)."""


def target_rules(settings: Settings) -> TargetRules:
    """HTTPS and public addresses only, unless private targets are allowed (never in
    production)."""
    allowed = settings.webhooks_private_targets_allowed
    return TargetRules(https_only=not allowed, public_only=not allowed)


def retry_policy(settings: Settings) -> RetryPolicy:
    """The retry schedule from settings."""
    return RetryPolicy(
        first_delay=timedelta(seconds=settings.webhook_retry_first_s),
        max_interval=timedelta(seconds=settings.webhook_retry_max_interval_s),
        window=timedelta(seconds=settings.webhook_retry_window_s),
        ordered_attempts=settings.webhook_ordered_attempts,
    )


def claimer_name() -> str:
    """This process's name on its leases and attempts: host, pid and a random suffix."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def build_admin(settings: Settings, uow_factory: Callable[[], UnitOfWork]) -> webhooks.WebhookAdmin:
    """The operators' webhook use cases (for ``payments-admin``)."""
    return webhooks.WebhookAdmin(
        uow_factory=uow_factory,
        box=build_vault(settings),
        targets=DnsTargets(target_rules(settings)),
        clock=utc_now,
        secret_grace=timedelta(seconds=settings.webhook_secret_grace_s),
    )


class WebhookDispatcher:
    """One dispatcher: the consumer, the sender loop, the backlog report and the purge."""

    def __init__(self, settings: Settings) -> None:
        """Wire everything; nothing connects until :meth:`start`."""
        self.settings = settings
        self.engine = build_engine(settings, application_name="payments-webhooks")
        session_factory = build_session_factory(self.engine)

        def uow_factory() -> UnitOfWork:
            return SqlUnitOfWork(session_factory)

        self.metrics = PaymentMetrics.from_settings(settings)
        self.sender = HttpWebhookSender(
            rules=target_rules(settings),
            timeout_s=settings.webhook_timeout_s,
            connect_timeout_s=settings.webhook_connect_timeout_s,
            max_connections=settings.webhook_max_connections,
            response_limit_bytes=settings.webhook_response_limit_bytes,
            user_agent=f"{settings.service_name}-webhooks/{settings.version}",
        )
        self.dispatch = webhooks.Dispatch(
            uow_factory=uow_factory,
            sender=self.sender,
            box=build_vault(settings),
            clock=utc_now,
            claimer=claimer_name(),
            policy=retry_policy(settings),
            lease=timedelta(
                seconds=settings.webhook_timeout_s
                + settings.webhook_connect_timeout_s
                + LEASE_MARGIN_S
            ),
            batch_size=settings.webhook_batch_size,
            metrics=self.metrics,
        )
        dispatch = self.dispatch

        self.in_flight = webhooks.InFlight(
            capacity=settings.webhook_max_in_flight, on_finished=lambda: self.sending.wake()
        )
        in_flight = self.in_flight

        async def deliver() -> bool:
            return await webhooks.deliver_due(dispatch, in_flight)

        async def report() -> bool:
            await webhooks.report_backlog(dispatch)
            return False

        async def purge() -> bool:
            purged = await webhooks.purge_finished(
                dispatch,
                keep=timedelta(seconds=settings.webhook_retention_s),
                limit=settings.purge_batch_size,
            )
            return purged >= settings.purge_batch_size

        self.sending = PeriodicTask(
            "webhook-sender", deliver, interval_s=settings.webhook_poll_interval_s
        )
        self.tasks = [self.sending]
        if settings.purger_enabled:
            self.tasks.append(
                PeriodicTask("webhook-purger", purge, interval_s=settings.purge_interval_s)
            )
        if self.metrics.enabled:
            self.tasks.append(
                PeriodicTask(
                    "webhook-backlog", report, interval_s=settings.metrics_report_interval_s
                )
            )
        self.consumer: EventConsumer | None = None
        if settings.kafka_bootstrap_servers:
            self.consumer = EventConsumer(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                topic=settings.kafka_topic,
                group_id=settings.webhook_consumer_group,
                record=self.record,
                batch_size=settings.webhook_consumer_batch,
                session_timeout_s=settings.webhook_session_timeout_s,
                client_id=f"{settings.kafka_client_id}-webhooks",
            )

    async def record(self, events: Sequence[ReceivedEvent]) -> int:
        """Record a batch's deliveries, then wake the sender (they are due now)."""
        created = await webhooks.record_events(self.dispatch, events)
        if created:
            self.sending.wake()
        return created

    async def start(self) -> None:
        """Start every loop; returns at once."""
        if self.consumer is None:
            logger.warning(
                "KAFKA_BOOTSTRAP_SERVERS is not set: no events are read; deliveries already "
                "recorded (and replays) are still sent"
            )
        else:
            self.consumer.start()
        for task in self.tasks:
            task.start()
        logger.info(
            "webhook dispatcher %s started (group %s, targets: %s)",
            self.dispatch.claimer,
            self.settings.webhook_consumer_group,
            "any" if self.settings.webhooks_private_targets_allowed else "public HTTPS only",
        )

    async def stop(self) -> None:
        """Record and commit the batch in hand, finish the deliveries in flight, close."""
        grace = self.settings.webhook_timeout_s + self.settings.webhook_connect_timeout_s + 5.0
        if self.consumer is not None:
            await self.consumer.stop(grace)
        for task in self.tasks:
            await task.stop(grace)
        # The POSTs in flight finish, and their attempts are recorded.
        await self.in_flight.wait(grace)
        await webhooks.record_finished(self.dispatch, self.in_flight.take_finished())
        await self.sender.aclose()
        await self.engine.dispose()
        self.metrics.close()
        logger.info("webhook dispatcher %s stopped", self.dispatch.claimer)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run a dispatcher until SIGTERM or SIGINT (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dispatcher = WebhookDispatcher(settings)
    await dispatcher.start()
    try:
        await stop.wait()
    finally:
        logger.info("stopping the webhook dispatcher")
        await dispatcher.stop()


def main() -> int:
    """Entry point of ``payments-webhooks``."""
    settings = get_settings()
    configure_tracing(settings)
    configure_logging(settings)
    log_tracing_state(settings)
    try:
        asyncio.run(serve(settings))
    finally:
        stop_log_writer()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
