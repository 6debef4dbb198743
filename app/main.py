"""The app factory and its lifespan: where every adapter is wired, once per worker."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.bank import HttpBankGateway, build_bank_gateway
from app.adapters.db.engine import (
    build_engine,
    build_session_factory,
    database_unavailable,
    ping,
)
from app.adapters.db.notifications import CacheInvalidationListener
from app.adapters.db.payment_views import PaymentViewCache
from app.adapters.db.queries import SqlPaymentQueries
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.adapters.messaging import KafkaMessaging, build_messaging
from app.adapters.metrics import MetricsReporter, PaymentMetrics
from app.adapters.vault import CardVault
from app.api.access_log import AccessLogMiddleware
from app.api.deps import Runtime, drain_on_sigterm
from app.api.middleware import (
    BodySizeLimitMiddleware,
    UnexpectedErrorMiddleware,
    correlation_middleware_options,
)
from app.api.openapi import SERVERS, install_openapi, operation_id
from app.api.problems import UnexpectedErrors, install_problem_handlers
from app.api.routes import health, payments
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging, stop_log_writer
from app.core.periodic import PeriodicTask
from app.core.tracing import configure_tracing, log_tracing_state
from app.services.auth import Authenticator
from app.services.context import ReconcilePolicy, RetentionPolicy, ServiceContext
from app.services.ports import (
    BankGateway,
    EventPublisher,
    Metrics,
    NoMetrics,
    OutboxOnlyPublisher,
    PaymentViews,
    UncachedPaymentViews,
    UnitOfWork,
)
from app.services.reconciliation import reconcile_once
from app.services.retention import purge_once

logger = logging.getLogger("app")

API_DESCRIPTION = """
Card payments for merchants: process, read and refund, with idempotent retries.

* Authenticate with `Authorization: Bearer <api_key>`.
* Send `Idempotency-Key` on POSTs to retry safely.
* Every error is `application/problem+json` (RFC 9457) with a stable `code`.
* Every response carries `X-Correlation-ID`.
"""


def build_vault(settings: Settings) -> CardVault:
    """The card vault from the configured keys."""
    return CardVault.from_config(
        settings.card_encryption_keys.get_secret_value(),
        settings.card_encryption_current_key_id,
        settings.card_fingerprint_key.get_secret_value(),
    )


def build_services(
    settings: Settings,
    engine: AsyncEngine,
    *,
    bank: BankGateway,
    metrics: Metrics | None = None,
    publisher: EventPublisher | None = None,
    payment_views: PaymentViews | None = None,
) -> ServiceContext:
    """The use cases' ports over one pooled engine (for the app, the CLI and tests)."""
    session_factory = build_session_factory(engine)

    def uow_factory() -> UnitOfWork:
        return SqlUnitOfWork(session_factory)

    return ServiceContext(
        uow_factory=uow_factory,
        queries=SqlPaymentQueries(engine),
        bank=bank,
        vault=build_vault(settings),
        publisher=publisher or OutboxOnlyPublisher(),
        idempotency_lock=timedelta(seconds=settings.idempotency_lock_timeout_s),
        idempotency_keep=timedelta(seconds=settings.idempotency_ttl_s),
        metrics=metrics or NoMetrics(),
        reconcile=reconcile_policy(settings),
        retention=RetentionPolicy(
            outbox_retention=timedelta(seconds=settings.outbox_retention_s),
            batch_size=settings.purge_batch_size,
        ),
        payment_views=UncachedPaymentViews() if payment_views is None else payment_views,
    )


def reconcile_policy(settings: Settings) -> ReconcilePolicy:
    """The reconciler's windows, from settings."""
    return ReconcilePolicy(
        first_delay=timedelta(seconds=settings.reconcile_first_delay_s),
        max_interval=timedelta(seconds=settings.reconcile_max_interval_s),
        no_record_after=timedelta(seconds=settings.reconcile_no_record_after_s),
        window=timedelta(seconds=settings.reconcile_window_s),
        lease=timedelta(seconds=settings.reconcile_lease_s),
        batch_size=settings.reconcile_batch_size,
        authorization_ttl=timedelta(seconds=settings.authorization_ttl_s),
    )


def background_tasks(settings: Settings, services: ServiceContext) -> list[PeriodicTask]:
    """The reconciler and the purger, as every worker runs them (each can be turned off)."""
    tasks: list[PeriodicTask] = []
    if settings.reconciler_enabled:

        async def reconcile() -> bool:
            report = await reconcile_once(services)
            return report.claimed >= services.reconcile.batch_size  # more may be due

        tasks.append(
            PeriodicTask("reconciler", reconcile, interval_s=settings.reconcile_interval_s)
        )
    if settings.purger_enabled:

        async def purge() -> bool:
            await purge_once(services)
            return False

        tasks.append(PeriodicTask("purger", purge, interval_s=settings.purge_interval_s))
    return tasks


@dataclass(slots=True)
class Wiring:
    """One worker's adapters: what the lifespan starts and stops."""

    engine: AsyncEngine
    runtime: Runtime
    kafka: KafkaMessaging | None
    metrics: PaymentMetrics
    tasks: list[PeriodicTask]
    payment_views: PaymentViewCache | None = None


def build_wiring(settings: Settings) -> Wiring:
    """Wire the adapters for one worker process."""
    engine = build_engine(settings)
    metrics = PaymentMetrics.from_settings(settings)
    bank = build_bank_gateway(settings)
    if isinstance(bank, HttpBankGateway):
        bank.report_metrics_to(metrics)
    session_factory = build_session_factory(engine)
    messaging = build_messaging(settings, lambda: SqlUnitOfWork(session_factory), metrics)
    kafka: KafkaMessaging | None = None
    publisher: EventPublisher = OutboxOnlyPublisher()
    if isinstance(messaging, KafkaMessaging):
        kafka, publisher = messaging, messaging.publisher
    payment_views = None
    if settings.payment_view_cache_size > 0:
        payment_views = PaymentViewCache(
            size=settings.payment_view_cache_size, ttl_s=settings.payment_view_cache_ttl_s
        )
    services = build_services(
        settings,
        engine,
        bank=bank,
        metrics=metrics,
        publisher=publisher,
        payment_views=payment_views,
    )
    fingerprint_key = settings.card_fingerprint_key.get_secret_value().encode()
    runtime = Runtime(
        settings=settings,
        services=services,
        database_ping=lambda: ping(engine),
        authenticator=Authenticator(
            services,
            pepper=settings.api_key_pepper.get_secret_value().encode(),
            ttl_s=settings.cache_ttl_s,
        ),
        fingerprint_secret=hashlib.sha256(b"idempotency:" + fingerprint_key).digest(),
    )
    return Wiring(
        engine=engine,
        runtime=runtime,
        kafka=kafka,
        metrics=metrics,
        tasks=background_tasks(settings, services),
        payment_views=payment_views,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI application."""
    settings = settings or get_settings()
    # First: the FastAPI integration must be patched in before the app below is built.
    configure_tracing(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings)
        wiring = build_wiring(settings)
        runtime = wiring.runtime
        if wiring.kafka is None:
            logger.warning(
                "KAFKA_BOOTSTRAP_SERVERS is not set: events wait in the outbox, unpublished"
            )
        logger.info(
            "starting %s %s (%s), bank: %s",
            settings.service_name,
            settings.version,
            settings.environment.value,
            "http" if settings.bank_api_url else "in-process simulator",
        )
        log_tracing_state(settings)
        listener = CacheInvalidationListener(
            settings.session_database_url,
            runtime.authenticator.invalidate_all,
            payment_views=wiring.payment_views,
            sync_timeout_s=settings.payment_view_sync_timeout_s,
        )
        if wiring.payment_views is not None:
            wiring.payment_views.listen_through(listener)
        listener.start()
        app.state.runtime = runtime
        if wiring.kafka is not None:
            await wiring.kafka.start()
        reporter = MetricsReporter(
            wiring.metrics,
            bank=runtime.services.bank,
            uow_factory=runtime.services.uow_factory,
            queries=runtime.services.queries,
            interval_s=settings.metrics_report_interval_s,
        )
        reporter.start()
        for task in wiring.tasks:
            task.start()
        drain_on_sigterm(runtime)
        try:
            yield
        finally:
            runtime.draining = True
            for task in wiring.tasks:
                await task.stop()
            await reporter.stop()
            await listener.stop()
            if wiring.kafka is not None:
                await wiring.kafka.stop()
            await runtime.services.bank.aclose()
            await wiring.engine.dispose()
            wiring.metrics.close()
            logger.info("stopped: pools closed")
            stop_log_writer()  # every line written before the process moves on

    app = FastAPI(
        title="Payment Service",
        version=settings.version,
        description=API_DESCRIPTION,
        servers=SERVERS,
        generate_unique_id_function=operation_id,
        lifespan=lifespan,
    )
    install_openapi(app)
    unexpected = UnexpectedErrors(
        database_unavailable, retry_after_s=settings.db_unavailable_retry_after_s
    )
    install_problem_handlers(app, unexpected)
    app.include_router(health.router)
    app.include_router(payments.router)
    # Outermost last: correlation id first, then the access log, then the body limit, then
    # the 500 safety net (whose answer the access log sees).
    app.add_middleware(UnexpectedErrorMiddleware, errors=unexpected)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.access_log_enabled:
        app.add_middleware(AccessLogMiddleware, sample_rate=settings.access_log_sample_rate)
    app.add_middleware(CorrelationIdMiddleware, **correlation_middleware_options())  # type: ignore[arg-type]
    return app
