"""Service configuration: read once from the environment (and `.env` in development).

Three profiles share one schema: ``development`` (embedded defaults that run on a laptop
with no external services), ``test`` (what the suite sets) and ``production`` (refuses to
start with any development secret or missing endpoint).
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import lru_cache
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.card_keys import (
    DEVELOPMENT_FINGERPRINT_KEY,
    DEVELOPMENT_KEY_ID,
    DEVELOPMENT_KEYS_SPEC,
    is_development_material,
)


class Environment(StrEnum):
    """Deployment profile."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


DEFAULT_DATABASE_URL = "postgresql+asyncpg://payments@127.0.0.1:5432/payments"


class DatabaseSettings(BaseSettings):
    """Where the database is: all that migrations read (``migrations/env.py``), without the
    service's production checks, which concern secrets and endpoints a migration never uses."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    # PostgreSQL (asyncpg for the app; Alembic derives a psycopg2 URL from the same value).
    database_url: str = DEFAULT_DATABASE_URL
    # A session of its own on PostgreSQL itself, past any transaction pooler (PgBouncer):
    # LISTEN needs one, and so do migrations (their SET lock_timeout is per session).
    # Unset, DATABASE_URL is used for both.
    database_direct_url: str | None = None

    @property
    def session_database_url(self) -> str:
        """The URL for connections that need a server session of their own (LISTEN,
        migrations): DATABASE_DIRECT_URL, else DATABASE_URL."""
        return self.database_direct_url or self.database_url

    @property
    def sync_database_url(self) -> str:
        """The direct database for psycopg2 (Alembic runs migrations synchronously)."""
        return self.session_database_url.replace("+asyncpg", "+psycopg2", 1)


class Settings(DatabaseSettings):
    """Every knob the service reads; nothing else is configurable."""

    environment: Environment = Field(default=Environment.DEVELOPMENT, alias="APP_ENV")
    service_name: str = Field(default="payment-service", alias="DD_SERVICE")
    version: str = Field(default="0.1.0", alias="DD_VERSION")
    log_level: str = "INFO"

    # The pool (DATABASE_URL and DATABASE_DIRECT_URL: DatabaseSettings).
    # 20 kept and no overflow: the same 20 connections at most as 10 + 10, but none opened
    # and closed again under a fluctuating load (a new session cost PostgreSQL ~19 ms of
    # CPU, which made the "stalls" of docs/performance.md).
    db_pool_size: int = Field(default=20, ge=1, le=200)
    db_max_overflow: int = Field(default=0, ge=0, le=200)
    db_pool_timeout_s: float = Field(default=5.0, gt=0)
    db_pool_recycle_s: int = Field(default=1800, ge=30)
    db_command_timeout_s: float = Field(default=10.0, gt=0)
    # 0 = no prepared statement outlives its transaction: required behind PgBouncer in
    # transaction pooling mode (see app.adapters.db.engine).
    db_statement_cache_size: int = Field(default=500, ge=0)

    # Bank: the in-process simulator when no URL is set.
    bank_api_url: str | None = None
    bank_timeout_s: float = Field(default=3.0, gt=0)
    bank_connect_timeout_s: float = Field(default=1.0, gt=0)
    bank_max_retries: int = Field(default=2, ge=0, le=10)
    bank_backoff_max_s: float = Field(default=2.0, gt=0)
    bank_breaker_fail_max: int = Field(default=5, ge=1)
    bank_breaker_reset_s: float = Field(default=30.0, gt=0)
    bank_max_connections: int = Field(default=100, ge=1)

    # Kafka: events wait in the outbox when no brokers are set.
    kafka_bootstrap_servers: str | None = None
    kafka_topic: str = "payments.events"
    kafka_client_id: str = "payment-service"
    kafka_publish_timeout_s: float = Field(default=5.0, gt=0)
    # How long a request waits for its own events' acknowledgement before answering; the
    # publication goes on in the background (bounded by the publish timeout).
    kafka_request_publish_wait_s: float = Field(default=0.5, gt=0)
    outbox_relay_interval_s: float = Field(default=1.0, gt=0)
    outbox_batch_size: int = Field(default=100, ge=1, le=10_000)

    # Reconciliation: payments and refunds whose bank answer is unknown are settled from
    # the bank's status lookup (docs/runbook.md). Each window is a setting; tests shorten them.
    reconciler_enabled: bool = True
    reconcile_interval_s: float = Field(default=2.0, gt=0)
    reconcile_first_delay_s: float = Field(default=10.0, gt=0)
    reconcile_max_interval_s: float = Field(default=600.0, gt=0)
    reconcile_no_record_after_s: float = Field(default=120.0, gt=0)
    reconcile_window_s: float = Field(default=24 * 3600.0, gt=0)
    reconcile_lease_s: float = Field(default=60.0, gt=0)
    reconcile_batch_size: int = Field(default=20, ge=1, le=1000)
    # /health says "degraded" once an item has waited this long for the bank's answer.
    reconcile_alert_after_s: float = Field(default=900.0, gt=0)
    # An authorization (capture_method manual) neither captured nor voided this long after
    # the payment was made is voided at the bank and becomes "expired" (by the reconciler).
    authorization_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)

    # Retention (docs/deployment.md, "Housekeeping"): expired idempotency keys and
    # published outbox events are deleted in small batches by every worker.
    purger_enabled: bool = True
    purge_interval_s: float = Field(default=60.0, gt=0)
    purge_batch_size: int = Field(default=500, ge=1, le=100_000)
    outbox_retention_s: float = Field(default=7 * 24 * 3600.0, ge=0)

    # Webhooks (docs/webhooks.md): the dispatcher process (payments-webhooks) consumes the
    # events topic in this group, records deliveries and POSTs them, retrying failures
    # with exponential backoff and jitter for the retry window.
    webhook_consumer_group: str = "payments-webhooks"
    webhook_consumer_batch: int = Field(default=500, ge=1, le=10_000)
    webhook_session_timeout_s: float = Field(default=10.0, ge=6.0, le=300.0)
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=30.0)
    webhook_connect_timeout_s: float = Field(default=2.0, gt=0)
    webhook_max_connections: int = Field(default=200, ge=1)
    webhook_response_limit_bytes: int = Field(default=4096, ge=0, le=1024 * 1024)
    webhook_batch_size: int = Field(default=50, ge=1, le=1000)
    # POSTs one dispatcher keeps in flight at once (a slow endpoint holds only its own).
    webhook_max_in_flight: int = Field(default=200, ge=1, le=10_000)
    webhook_poll_interval_s: float = Field(default=0.5, gt=0)
    webhook_retry_first_s: float = Field(default=5.0, gt=0)
    webhook_retry_max_interval_s: float = Field(default=6 * 3600.0, gt=0)
    webhook_retry_window_s: float = Field(default=3 * 24 * 3600.0, gt=0)
    webhook_ordered_attempts: int = Field(default=3, ge=0)
    webhook_secret_grace_s: float = Field(default=24 * 3600.0, ge=0)
    webhook_retention_s: float = Field(default=30 * 24 * 3600.0, gt=0)
    # Deliver to http:// and to loopback or private addresses: for laptops and tests only
    # (None: allowed except in production, where it is always refused).
    webhook_allow_private_targets: bool | None = None

    # Card vault: AES-256-GCM keys "kid:base64,kid:base64", the one used for new rows,
    # and the HMAC key for card fingerprints. Development material is refused in production.
    card_encryption_keys: SecretStr = SecretStr(DEVELOPMENT_KEYS_SPEC)
    card_encryption_current_key_id: str = DEVELOPMENT_KEY_ID
    card_fingerprint_key: SecretStr = SecretStr(DEVELOPMENT_FINGERPRINT_KEY)

    # API keys are stored as HMAC-SHA256 digests under this pepper.
    api_key_pepper: SecretStr = SecretStr("development-pepper-not-for-production")

    # HTTP behaviour.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=24 * 3600)
    idempotency_lock_timeout_s: int = Field(default=60, ge=1)
    cache_ttl_s: float = Field(default=30.0, ge=0)
    # GET /api/v1/payments/{id} answers from a per-worker cache of rendered payments,
    # evicted over LISTEN/NOTIFY and confirmed by a barrier on every hit (docs/adr/0012):
    # at most this many views (0 disables it), each kept at most this long; a hit waits at
    # most the sync timeout for the barrier, then reads the database.
    payment_view_cache_size: int = Field(default=10_000, ge=0)
    payment_view_cache_ttl_s: float = Field(default=60.0, gt=0)
    payment_view_sync_timeout_s: float = Field(default=1.0, gt=0)
    # /health's bank and Kafka probes are shared for this long: an unauthenticated caller
    # cannot make the service hammer the bank through it.
    health_probe_cache_s: float = Field(default=5.0, ge=0)
    # Retry-After of a 503 service_unavailable (database unreachable, pool exhausted).
    db_unavailable_retry_after_s: int = Field(default=5, ge=1)

    # Observability. ddtrace reads its own variables (DD_TRACE_AGENT_URL or DD_AGENT_HOST,
    # DD_DATA_STREAMS_ENABLED, DD_DBM_PROPAGATION_MODE, ...) from the process environment;
    # these are the ones the service itself acts on (see docs/observability.md).
    tracing_enabled: bool = Field(default=False, alias="DD_TRACE_ENABLED")
    dd_env: str | None = Field(default=None, alias="DD_ENV")
    dogstatsd_host: str | None = Field(default=None, alias="DD_AGENT_HOST")
    dogstatsd_port: int = Field(default=8125, alias="DD_DOGSTATSD_PORT")
    metrics_enabled: bool = False
    metrics_report_interval_s: float = Field(default=10.0, gt=0)
    # The access log (docs/observability.md, "Access log"): one line per request; this
    # share of the successes (below 400) is written, every error always.
    access_log_enabled: bool = True
    access_log_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)

    @property
    def longest_bank_call_s(self) -> float:
        """The longest one logical bank call can take, every retry and pause included."""
        attempts = self.bank_max_retries + 1
        return attempts * (self.bank_connect_timeout_s + self.bank_timeout_s) + (
            self.bank_max_retries * self.bank_backoff_max_s
        )

    @model_validator(mode="after")
    def _a_connection_for_every_post_in_flight(self) -> Self:
        # A POST waiting for a pooled connection would time out unsent (the connect
        # timeout covers the wait), slow endpoints' POSTs holding every connection.
        if self.webhook_max_connections < self.webhook_max_in_flight:
            raise ValueError(
                f"WEBHOOK_MAX_CONNECTIONS ({self.webhook_max_connections}) must be at least "
                f"WEBHOOK_MAX_IN_FLIGHT ({self.webhook_max_in_flight})"
            )
        return self

    @model_validator(mode="after")
    def _reconcile_only_after_the_request_gave_up(self) -> Self:
        # "No record" may only mean "never received" once no request can still be sending
        # it; and a claimed lookup must finish before its lease lets another claimer in.
        longest = self.longest_bank_call_s
        problems = []
        if self.reconcile_no_record_after_s <= longest:
            problems.append(
                f"RECONCILE_NO_RECORD_AFTER_S ({self.reconcile_no_record_after_s:g}) must be "
                f"longer than the longest bank call ({longest:g} s)"
            )
        if self.reconcile_lease_s <= longest:
            problems.append(
                f"RECONCILE_LEASE_S ({self.reconcile_lease_s:g}) must be longer than the "
                f"longest bank call ({longest:g} s)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _refuse_development_secrets_in_production(self) -> Self:
        if self.environment is not Environment.PRODUCTION:
            return self
        problems: list[str] = []
        if is_development_material(
            self.card_encryption_keys.get_secret_value(),
            self.card_fingerprint_key.get_secret_value(),
        ):
            problems.append("CARD_ENCRYPTION_KEYS / CARD_FINGERPRINT_KEY are development keys")
        if "development" in self.api_key_pepper.get_secret_value():
            problems.append("API_KEY_PEPPER is the development pepper")
        if self.database_url == DEFAULT_DATABASE_URL:
            problems.append("DATABASE_URL is not set")
        # The embedded defaults are for laptops: the simulator approves any valid card, and
        # without a broker no event would ever leave the outbox.
        if not self.bank_api_url:
            problems.append("BANK_API_URL is not set (the in-process simulator is for development)")
        if not self.kafka_bootstrap_servers:
            problems.append("KAFKA_BOOTSTRAP_SERVERS is not set")
        if self.webhook_allow_private_targets:
            problems.append("WEBHOOK_ALLOW_PRIVATE_TARGETS is on (SSRF protection is off)")
        if problems:
            raise ValueError("refusing to start in production: " + "; ".join(problems))
        return self

    @property
    def datadog_env(self) -> str:
        """The ``env`` tag on traces, logs and metrics: DD_ENV, else the APP_ENV profile."""
        return self.dd_env or self.environment.value

    @property
    def webhooks_private_targets_allowed(self) -> bool:
        """Whether webhooks may go to http:// URLs and non-public addresses."""
        if self.environment is Environment.PRODUCTION:
            return False
        if self.webhook_allow_private_targets is None:
            return True
        return self.webhook_allow_private_targets


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once.

    Secrets may also come from files: with ``SECRETS_DIR`` set, a file named like a
    variable (e.g. ``card_encryption_keys``) in that folder provides its value.
    """
    secrets_dir = os.environ.get("SECRETS_DIR")
    return Settings(_secrets_dir=secrets_dir) if secrets_dir else Settings()
