"""The pooled async engine and its session factory, configured once per process."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.core.config import Settings
from app.core.jsoncodec import dump_json, load_json


def build_engine(settings: Settings, *, application_name: str = "payment-service") -> AsyncEngine:
    """Create the asyncpg engine with the pool, timeouts and JSON codec from settings."""
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_recycle=settings.db_pool_recycle_s,
        pool_pre_ping=True,
        # Bound values (ciphertexts, fingerprints, metadata) never reach an error message.
        hide_parameters=True,
        json_serializer=dump_json,
        json_deserializer=load_json,
        connect_args={
            "command_timeout": settings.db_command_timeout_s,
            "statement_cache_size": settings.db_statement_cache_size,
            "server_settings": {"application_name": application_name},
        },
    )


def build_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit, so responses can be built from them."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
