"""Getting committed outbox events onto Kafka, at least once, each key's events in order.

The Kafka side of the transactional outbox, in three parts that speak only the services'
ports (:mod:`app.services.ports.messaging`, :mod:`app.services.ports.metrics`):

* :class:`~app.adapters.messaging.producer.ProducerSupervisor` -- the producer's life and
  whether the broker is healthy;
* :class:`~app.adapters.messaging.publisher.KafkaEventPublisher` -- the ``EventPublisher``
  the services call: reserve before the commit, publish right after it;
* :class:`~app.adapters.messaging.relay.OutboxRelay` -- the background relay publishing
  whatever is still pending (Kafka was down, a process died between commit and publish);

both of the last two send through :mod:`app.adapters.messaging.sending` (per-key waves:
a key's events first reach Kafka in commit order) and hold events under leases, never a
lock or an open transaction, while they talk to Kafka. Events are keyed by
``transaction_id``; the producer is idempotent with ``acks="all"``.

This module owns :class:`KafkaMessaging`, the three wired together, and
:func:`build_messaging`, which picks it or the outbox-only publisher. The service starts
and answers without Kafka (the producer connects in the background); while the broker is
down requests publish nothing and answer at once, their events wait in the outbox and
the relay drains them when it is back. Shutdown, in order: the relay finishes its batch
(never cancelled half-published, which would publish it twice), publications started by
requests finish, the relay publishes what is still pending for a bounded time, and the
producer is flushed and closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer

from app.adapters.messaging.producer import ProducerSupervisor
from app.adapters.messaging.publisher import KafkaEventPublisher
from app.adapters.messaging.relay import FRESH_EVENT_GRACE_S, OutboxRelay
from app.adapters.messaging.sending import Claimers
from app.services.ports.messaging import OutboxOnlyPublisher, OutboxUnitOfWork
from app.services.ports.metrics import Metrics, NoMetrics

if TYPE_CHECKING:
    from app.core.config import Settings

__all__ = [
    "KafkaEventPublisher",
    "KafkaMessaging",
    "OutboxRelay",
    "ProducerSupervisor",
    "build_messaging",
]

MIN_LEASE_S = 30.0
"""Shortest lease: long enough for a batch's publish timeout plus two database round trips."""


@dataclass(frozen=True, slots=True)
class KafkaMessaging:
    """The producer, the request-path publisher and the relay, started and stopped together."""

    producer: ProducerSupervisor
    publisher: KafkaEventPublisher
    relay: OutboxRelay
    claimers: Claimers
    """Names this process's leases (``claimed_by``) start with ``claimers.prefix``."""
    grace_s: float
    """How long :meth:`stop` waits for the relay's batch, for requests' publications and
    for the producer's flush, each."""

    @classmethod
    def create(
        cls,
        *,
        uow_factory: Callable[[], OutboxUnitOfWork],
        bootstrap_servers: str,
        topic: str,
        client_id: str = "payment-service",
        publish_timeout_s: float = 5.0,
        request_wait_s: float = 0.5,
        interval_s: float = 1.0,
        batch_size: int = 100,
        lease_s: float | None = None,
        shutdown_drain_s: float | None = None,
        fresh_grace_s: float = FRESH_EVENT_GRACE_S,
        producer_factory: Callable[[], AIOKafkaProducer] | None = None,
        metrics: Metrics | None = None,
    ) -> KafkaMessaging:
        """Wire the three; nothing connects until :meth:`start`.

        Args:
            uow_factory: Opens a unit of work on the outbox's database.
            bootstrap_servers: ``host:port[,host:port]`` of the Kafka cluster.
            topic: The events topic (it must exist: creating it belongs to deployment).
            client_id: Kafka client id.
            publish_timeout_s: Longest wait for Kafka's acknowledgements of one batch.
            request_wait_s: Longest a request waits for its own events' publication; past
                it the publication goes on in the background.
            interval_s: Pause between relay polls when nothing is pending.
            batch_size: Events claimed per relay batch.
            lease_s: How long a claim holds its events (default: at least 30 s and four
                publish timeouts); after that a crashed publisher's events are free again.
            shutdown_drain_s: How long :meth:`stop` keeps publishing what is pending
                (default: one publish timeout).
            fresh_grace_s: Age below which the relay leaves an event to its request.
            producer_factory: Builds the producer (tests substitute failing ones).
            metrics: Where published and failed events are counted.
        """
        metrics = metrics or NoMetrics()
        lease = timedelta(seconds=lease_s or max(MIN_LEASE_S, 4 * publish_timeout_s))
        claimers = Claimers()
        producer = ProducerSupervisor(
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            client_id=client_id,
            publish_timeout_s=publish_timeout_s,
            retry_interval_s=interval_s,
            producer_factory=producer_factory,
        )
        return cls(
            producer=producer,
            publisher=KafkaEventPublisher(
                uow_factory=uow_factory,
                producer=producer,
                topic=topic,
                lease=lease,
                claimers=claimers,
                publish_timeout_s=publish_timeout_s,
                request_wait_s=request_wait_s,
                metrics=metrics,
            ),
            relay=OutboxRelay(
                uow_factory=uow_factory,
                producer=producer,
                topic=topic,
                lease=lease,
                claimers=claimers,
                publish_timeout_s=publish_timeout_s,
                interval_s=interval_s,
                batch_size=batch_size,
                shutdown_drain_s=shutdown_drain_s,
                fresh_grace_s=fresh_grace_s,
                metrics=metrics,
            ),
            claimers=claimers,
            # A batch is bounded by the publish timeout plus two short transactions.
            grace_s=2 * publish_timeout_s + 5.0,
        )

    async def start(self) -> None:
        """Start connecting and relaying in the background; returns at once."""
        self.producer.start()
        self.relay.start()

    async def stop(self) -> None:
        """Finish the relay's batch, then the requests' publications, publish what is
        still pending (bounded), then flush and close the producer."""
        self.publisher.stop_reserving()
        await self.relay.stop(self.grace_s)
        await self.publisher.wait_for_publications(self.grace_s)
        await self.relay.drain()
        await self.producer.close(self.grace_s)


def build_messaging(
    settings: Settings,
    uow_factory: Callable[[], OutboxUnitOfWork],
    metrics: Metrics | None = None,
) -> KafkaMessaging | OutboxOnlyPublisher:
    """Kafka when ``KAFKA_BOOTSTRAP_SERVERS`` is set, else the outbox-only publisher."""
    if not settings.kafka_bootstrap_servers:
        return OutboxOnlyPublisher()
    return KafkaMessaging.create(
        uow_factory=uow_factory,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=settings.kafka_topic,
        client_id=settings.kafka_client_id,
        publish_timeout_s=settings.kafka_publish_timeout_s,
        request_wait_s=settings.kafka_request_publish_wait_s,
        interval_s=settings.outbox_relay_interval_s,
        batch_size=settings.outbox_batch_size,
        metrics=metrics,
    )
