"""Every test here starts from empty tables in the real database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.unit_of_work import SqlUnitOfWork
from app.adapters.messaging import KafkaMessaging
from tests.conftest import truncate_all
from tests.integration.test_outbox_relay import KAFKA, TOPIC


@pytest.fixture(autouse=True)
async def _empty_tables(engine: AsyncEngine) -> None:
    await truncate_all(engine)


@pytest.fixture
async def relays(
    uow_factory: Callable[[], SqlUnitOfWork],
) -> AsyncIterator[Callable[..., KafkaMessaging]]:
    """Build the Kafka side (producer, publisher, relay) on the test database; every one is
    stopped at the end."""
    built: list[KafkaMessaging] = []

    def build(**overrides: Any) -> KafkaMessaging:
        options: dict[str, Any] = {
            "uow_factory": uow_factory,
            "bootstrap_servers": KAFKA,
            "topic": TOPIC,
            "publish_timeout_s": 3.0,
            "interval_s": 0.1,
            "batch_size": 50,
        }
        relay = KafkaMessaging.create(**(options | overrides))
        built.append(relay)
        return relay

    yield build
    for relay in built:
        await relay.stop()
