"""Business metrics, as the use cases and adapters report them (docs/observability.md)."""

from __future__ import annotations

from typing import Protocol


class Metrics(Protocol):
    """Where the service counts what it does; every method must be cheap and never raise."""

    @property
    def enabled(self) -> bool:
        """Whether anything is sent."""
        ...

    def payment_processed(
        self,
        *,
        status: str,
        currency: str,
        amount_minor: int,
        decline_code: str | None = None,
        failure_code: str | None = None,
    ) -> None:
        """A payment reached a status."""
        ...

    def refund_processed(
        self, *, status: str, currency: str, amount_minor: int, failure_code: str | None = None
    ) -> None:
        """A refund reached a status."""
        ...

    def authorization_settled(
        self, *, operation: str, outcome: str, currency: str, failure_code: str | None = None
    ) -> None:
        """A capture, void or expiry of an authorization settled (``succeeded``/``failed``)."""
        ...

    def idempotent_replay(self, *, operation: str) -> None:
        """A request was answered with its stored response."""
        ...

    def bank_call(self, *, operation: str, outcome: str, seconds: float) -> None:
        """One logical call to the bank finished (all its attempts)."""
        ...

    def circuit_state(self, state: str) -> None:
        """The bank circuit is ``closed``, ``open`` or ``half_open``."""
        ...

    def outbox_backlog(self, *, pending: int, oldest_age_s: float) -> None:
        """How many events wait for the broker, and for how long the oldest has."""
        ...

    def outbox_published(self, *, path: str, published: int, failed: int) -> None:
        """A batch went to the broker: how many were acknowledged, how many failed."""
        ...

    def reconciliation_settled(self, *, kind: str, outcome: str, count: int) -> None:
        """The reconciler settled ``count`` payments or refunds with this outcome."""
        ...

    def reconciliation_backlog(self, *, payments: int, refunds: int, oldest_age_s: float) -> None:
        """How many items wait for the bank's answer, and for how long the oldest has."""
        ...

    def purged(self, *, table: str, rows: int) -> None:
        """Rows past their retention were deleted."""
        ...

    def webhook_events(self, *, recorded: int, deliveries: int) -> None:
        """The dispatcher read ``recorded`` events and recorded ``deliveries`` for them."""
        ...

    def webhook_attempt(
        self, *, outcome: str, event_type: str, seconds: float, error: str | None
    ) -> None:
        """One POST of a delivery: ``delivered``, ``retrying`` or ``given_up``."""
        ...

    def webhook_delivery_lag(self, *, seconds: float) -> None:
        """A delivery was acknowledged this long after its event was committed."""
        ...

    def webhook_backlog(self, backlog: list[tuple[str, int, float]]) -> None:
        """Per endpoint id: pending deliveries and the oldest's age."""
        ...

    def webhook_endpoint_disabled(self) -> None:
        """An endpoint failed for the whole retry window and was disabled."""
        ...


class NoMetrics:
    """Metrics that go nowhere."""

    enabled = False

    def payment_processed(
        self,
        *,
        status: str,
        currency: str,
        amount_minor: int,
        decline_code: str | None = None,
        failure_code: str | None = None,
    ) -> None:
        """Nothing is sent."""

    def refund_processed(
        self, *, status: str, currency: str, amount_minor: int, failure_code: str | None = None
    ) -> None:
        """Nothing is sent."""

    def authorization_settled(
        self, *, operation: str, outcome: str, currency: str, failure_code: str | None = None
    ) -> None:
        """Nothing is sent."""

    def idempotent_replay(self, *, operation: str) -> None:
        """Nothing is sent."""

    def bank_call(self, *, operation: str, outcome: str, seconds: float) -> None:
        """Nothing is sent."""

    def circuit_state(self, state: str) -> None:
        """Nothing is sent."""

    def outbox_backlog(self, *, pending: int, oldest_age_s: float) -> None:
        """Nothing is sent."""

    def outbox_published(self, *, path: str, published: int, failed: int) -> None:
        """Nothing is sent."""

    def reconciliation_settled(self, *, kind: str, outcome: str, count: int) -> None:
        """Nothing is sent."""

    def reconciliation_backlog(self, *, payments: int, refunds: int, oldest_age_s: float) -> None:
        """Nothing is sent."""

    def purged(self, *, table: str, rows: int) -> None:
        """Nothing is sent."""

    def webhook_events(self, *, recorded: int, deliveries: int) -> None:
        """Nothing is sent."""

    def webhook_attempt(
        self, *, outcome: str, event_type: str, seconds: float, error: str | None
    ) -> None:
        """Nothing is sent."""

    def webhook_delivery_lag(self, *, seconds: float) -> None:
        """Nothing is sent."""

    def webhook_backlog(self, backlog: list[tuple[str, int, float]]) -> None:
        """Nothing is sent."""

    def webhook_endpoint_disabled(self) -> None:
        """Nothing is sent."""
