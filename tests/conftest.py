"""Shared fixtures: real PostgreSQL (migrated by Alembic), the app, merchants and keys.

The database is the local stack's ``payments_test`` (override with TEST_DATABASE_URL).
Integration and end-to-end tests start from empty tables (see their conftest files).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.adapters.bank.simulator import SimulatedBankGateway
from app.adapters.db.engine import build_engine, build_session_factory
from app.adapters.db.queries import SqlPaymentQueries
from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.core.config import Settings
from app.main import build_services, create_app
from app.services import merchants
from app.services.context import ServiceContext

# Each pytest run gets its own throwaway database on the local stack's server, so runs
# (a developer's and a helper's, or CI's) never truncate each other's tables. Set
# TEST_DATABASE_URL to use a given database instead.
_SERVER_URL = os.environ.get("TEST_DATABASE_SERVER", "postgresql+asyncpg://payments@127.0.0.1:5432")
_OWN_DATABASE = f"payments_test_{os.getpid()}"
DIRECT_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", f"{_SERVER_URL}/{_OWN_DATABASE}")
# TEST_POOLER_SERVER (e.g. the local stack's PgBouncer, postgresql+asyncpg://payments@127.0.0.1:6432):
# the service under test -- in process and every process a test starts -- reaches the
# same database through that transaction pooler, as production does, while creating the
# database, migrations and LISTEN go direct (DATABASE_DIRECT_URL).
_POOLER_SERVER = os.environ.get("TEST_POOLER_SERVER")
BEHIND_POOLER = bool(_POOLER_SERVER)
if BEHIND_POOLER:
    TEST_DATABASE_URL = f"{_POOLER_SERVER}/{make_url(DIRECT_DATABASE_URL).database}"
    os.environ["DATABASE_DIRECT_URL"] = DIRECT_DATABASE_URL
    os.environ["DB_STATEMENT_CACHE_SIZE"] = "0"
else:
    TEST_DATABASE_URL = DIRECT_DATABASE_URL
TABLES = (
    "webhook_attempts",
    "webhook_deliveries",
    "webhook_events",
    "webhook_endpoints",
    "auth_refusals",
    "audit_log",
    "outbox_events",
    "idempotency_keys",
    "refunds",
    "transactions",
    "api_keys",
    "merchants",
)


def make_settings(**overrides: Any) -> Settings:
    """Test-profile settings, independent of the developer's environment and .env."""
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": TEST_DATABASE_URL,
        "bank_api_url": None,
        "kafka_bootstrap_servers": None,
        "cache_ttl_s": 30.0,
        "db_pool_size": 20,
        "db_max_overflow": 20,
        "log_level": "INFO",
        # Independent of the shell: tracing and metrics are on only where a test asks.
        "tracing_enabled": False,
        "metrics_enabled": False,
        # /health probes fresh on every call (tests/e2e/test_health.py covers the sharing).
        "health_probe_cache_s": 0.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def alembic_config(sync_url: str) -> Config:
    """Alembic configured for the given database, as a DBA would run it."""
    cfg = Config("alembic.ini")
    cfg.set_main_option("sqlalchemy.url", sync_url)
    cfg.attributes["configure_logger"] = False
    return cfg


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()


def _admin_engine() -> Engine:
    url = _SERVER_URL.replace("+asyncpg", "+psycopg2") + "/postgres"
    return create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def migrated_database(settings: Settings) -> Iterator[str]:
    """A clean schema built by ``alembic upgrade head``; the sync URL."""
    own = "TEST_DATABASE_URL" not in os.environ
    if own:
        admin = _admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{_OWN_DATABASE}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{_OWN_DATABASE}"'))
        admin.dispose()
    try:
        yield from _migrate(settings)
    finally:
        if own:
            admin = _admin_engine()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{_OWN_DATABASE}" WITH (FORCE)'))
            admin.dispose()


def _migrate(settings: Settings) -> Iterator[str]:
    sync_url = settings.sync_database_url
    engine = create_engine(sync_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    command.upgrade(alembic_config(sync_url), "head")
    yield sync_url


@pytest.fixture(scope="session")
async def engine(settings: Settings, migrated_database: str) -> AsyncIterator[AsyncEngine]:
    eng = build_engine(settings, application_name="payment-service-tests")
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return build_session_factory(engine)


async def truncate_all(engine: AsyncEngine) -> None:
    """Empty every table (TRUNCATE fires no row trigger, so audit_log empties too)."""
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def uow_factory(
    session_factory: async_sessionmaker[AsyncSession],
) -> Callable[[], SqlUnitOfWork]:
    return lambda: SqlUnitOfWork(session_factory)


@pytest.fixture
def queries(engine: AsyncEngine) -> SqlPaymentQueries:
    """Reads in autocommit over the test engine."""
    return SqlPaymentQueries(engine)


@pytest.fixture
def ctx(engine: AsyncEngine, settings: Settings) -> ServiceContext:
    """Service context on the in-process bank simulator."""
    return build_services(settings, engine, bank=SimulatedBankGateway())


@dataclass(frozen=True)
class MerchantCredentials:
    merchant_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture
def create_merchant(ctx: ServiceContext, settings: Settings) -> Callable[..., Any]:
    """Create a merchant and key through the admin use case; returns credentials."""
    counter = iter(range(1, 10_000))

    async def _create(
        merchant_id: str | None = None,
        currencies: tuple[str, ...] = ("USD", "EUR", "JPY", "KWD"),
        api_key: str | None = None,
    ) -> MerchantCredentials:
        n = next(counter)
        issued = await merchants.create_merchant(
            ctx,
            merchant_id=merchant_id or f"merchant_test_{n}",
            name=None,
            currencies=list(currencies),
            api_key=api_key or f"sk_test_key_{n:04d}_abcdefghijkl",
            pepper=settings.api_key_pepper.get_secret_value().encode(),
        )
        return MerchantCredentials(issued.merchant_id, issued.api_key)

    return _create


@pytest.fixture
async def merchant(create_merchant: Callable[..., Any]) -> MerchantCredentials:
    creds: MerchantCredentials = await create_merchant(merchant_id="merchant_test_123")
    return creds


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Override in a module to run the app with other settings."""
    return settings


@pytest.fixture
async def client(
    app_settings: Settings, migrated_database: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan and all) over an in-process ASGI transport."""
    app = create_app(app_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


def payment_body(
    merchant_id: str = "merchant_test_123",
    *,
    card_number: str = "4242 4242 4242 4242",
    amount: Any = "99.99",
    currency: str = "USD",
    **overrides: Any,
) -> dict[str, Any]:
    """A valid payment request, with any field overridden."""
    body: dict[str, Any] = {
        "merchant_id": merchant_id,
        "amount": amount,
        "currency": currency,
        "payment_method": "credit_card",
        "card_data": {
            "card_number": card_number,
            "expiry_month": 12,
            "expiry_year": 2030,
            "cvv": "1234" if card_number.replace(" ", "").startswith(("34", "37")) else "123",
            "cardholder_name": "Jane Doe",
        },
        "description": "Order 1234",
        "metadata": {"order_id": "1234", "items": [1, 2]},
    }
    body.update(overrides)
    return body
