"""Getting committed outbox events onto Kafka."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from app.adapters.messaging.base import EventPublisher, OutboxOnlyPublisher
from app.adapters.messaging.kafka import KafkaOutboxRelay

if TYPE_CHECKING:
    from app.adapters.db.unit_of_work import UnitOfWork
    from app.core.config import Settings

__all__ = [
    "EventPublisher",
    "KafkaOutboxRelay",
    "OutboxOnlyPublisher",
    "build_event_publisher",
]


def build_event_publisher(
    settings: Settings, uow_factory: Callable[[], UnitOfWork]
) -> KafkaOutboxRelay | OutboxOnlyPublisher:
    """The Kafka relay when ``KAFKA_BOOTSTRAP_SERVERS`` is set, else the outbox-only publisher."""
    if not settings.kafka_bootstrap_servers:
        return OutboxOnlyPublisher()
    return KafkaOutboxRelay(
        uow_factory=uow_factory,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=settings.kafka_topic,
        client_id=settings.kafka_client_id,
        publish_timeout_s=settings.kafka_publish_timeout_s,
        interval_s=settings.outbox_relay_interval_s,
        batch_size=settings.outbox_batch_size,
    )
