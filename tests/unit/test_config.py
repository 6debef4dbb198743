"""Settings profiles: production refuses what only suits a laptop."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.config import DatabaseSettings, Environment, Settings


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _production_values() -> dict[str, Any]:
    return {
        "environment": "production",
        "database_url": "postgresql+asyncpg://app@db.internal:5432/payments",
        "bank_api_url": "https://bank.internal",
        "kafka_bootstrap_servers": "kafka-1:9092",
        "card_encryption_keys": f"k2026a:{_key()}",
        "card_encryption_current_key_id": "k2026a",
        "card_fingerprint_key": _key(),
        "api_key_pepper": "a-long-random-production-pepper-value",
    }


def test_development_runs_on_embedded_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.environment is Environment.DEVELOPMENT
    assert settings.bank_api_url is None
    assert settings.kafka_bootstrap_servers is None


def test_production_with_its_own_secrets_and_endpoints_starts() -> None:
    settings = Settings(_env_file=None, **_production_values())  # type: ignore[call-arg]
    assert settings.environment is Environment.PRODUCTION
    assert settings.sync_database_url.startswith("postgresql+psycopg2://")


def test_migrations_read_the_database_without_the_services_production_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://owner@db.internal:5432/payments")
    with pytest.raises(ValidationError, match="refusing to start in production"):
        Settings(_env_file=None)  # type: ignore[call-arg]

    database = DatabaseSettings(_env_file=None)  # type: ignore[call-arg]

    assert database.sync_database_url == "postgresql+psycopg2://owner@db.internal:5432/payments"


def test_listen_and_migrations_go_direct_past_a_transaction_pooler() -> None:
    pooled = Settings(  # type: ignore[call-arg]
        _env_file=None,
        **_production_values()
        | {
            "database_url": "postgresql+asyncpg://app@pgbouncer:6432/payments",
            "database_direct_url": "postgresql+asyncpg://app@db.internal:5432/payments",
        },
    )
    assert pooled.session_database_url == "postgresql+asyncpg://app@db.internal:5432/payments"
    assert pooled.sync_database_url == "postgresql+psycopg2://app@db.internal:5432/payments"

    direct = Settings(_env_file=None, **_production_values())  # type: ignore[call-arg]
    assert direct.session_database_url == direct.database_url


@pytest.mark.parametrize(
    ("left_out", "complaint"),
    [
        (
            ("card_encryption_keys", "card_encryption_current_key_id", "card_fingerprint_key"),
            "development keys",
        ),
        (("api_key_pepper",), "development pepper"),
        (("database_url",), "DATABASE_URL"),
        (("bank_api_url",), "BANK_API_URL"),
        (("kafka_bootstrap_servers",), "KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
def test_production_refuses_the_laptop_defaults(left_out: tuple[str, ...], complaint: str) -> None:
    values = {k: v for k, v in _production_values().items() if k not in left_out}
    with pytest.raises(ValidationError, match=complaint):
        Settings(_env_file=None, **values)  # type: ignore[call-arg]
