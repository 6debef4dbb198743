"""Request-scoped dependencies (``Annotated`` aliases) and the app's wired runtime.

FastAPI resolves every dependency of a route on every request, and each one costs a
recursive solve: the payment routes take one (the merchant, which is also the documented
security scheme) and read the runtime and the correlation id with plain calls.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Annotated, Any

from asgi_correlation_id.context import correlation_id
from fastapi import Depends, Header, Request, Security
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from app.api.access_log import MERCHANT_STATE_KEY
from app.core.config import Settings
from app.domain.merchants import Merchant
from app.services.auth import Authenticator
from app.services.context import ServiceContext


@dataclass(slots=True)
class Runtime:
    """Everything wired at start-up, shared by all requests of one worker."""

    settings: Settings
    services: ServiceContext
    database_ping: Callable[[], Awaitable[None]]
    authenticator: Authenticator
    fingerprint_secret: bytes
    draining: bool = field(default=False)
    health_probes: Any = field(default=None)
    """/health's shared Kafka and bank probes, made on first use."""


def drain_on_sigterm(runtime: Runtime) -> None:
    """Say ``draining`` on ``/health/ready`` from the moment SIGTERM arrives.

    The server's own handler (uvicorn's) still runs: it stops accepting and finishes the
    requests in flight; this only flips the readiness answer first, so a load balancer
    probing meanwhile takes the worker out at once. Only the main thread may set signal
    handlers; elsewhere (an embedded app in tests) nothing is changed.
    """
    try:
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> Any:
            runtime.draining = True
            if callable(previous):
                return previous(signum, frame)
            if previous == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.raise_signal(signal.SIGTERM)
            return None

        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        logging.getLogger(__name__).debug("SIGTERM handler left as it is (not the main thread)")


def runtime_of(request: Request) -> Runtime:
    """The worker's runtime (a plain call, not a dependency)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    """The worker's runtime."""
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def request_correlation_id() -> str | None:
    """This request's correlation id (a plain call, not a dependency)."""
    return correlation_id.get()


async def current_correlation_id() -> str | None:
    """This request's correlation id."""
    return correlation_id.get()


CorrelationIdDep = Annotated[str | None, Depends(current_correlation_id)]


class BearerMerchant(SecurityBase):
    """The merchant behind ``Authorization: Bearer <api_key>`` (401 otherwise), noted for
    the access log: one dependency, documented in OpenAPI as an HTTP bearer scheme."""

    def __init__(self, *, scheme_name: str, description: str) -> None:
        self.model = HTTPBearerModel(description=description)
        self.scheme_name = scheme_name

    async def __call__(self, request: Request) -> Merchant:
        merchant = await runtime_of(request).authenticator.authenticate(
            request.headers.get("authorization"),
            correlation_id=correlation_id.get(),
            source=request.client.host if request.client else "unknown",
        )
        setattr(request.state, MERCHANT_STATE_KEY, merchant.merchant_id)
        return merchant


current_merchant = BearerMerchant(
    scheme_name="ApiKey",
    description="`Authorization: Bearer <api_key>`; keys come from `payments-admin`.",
)

MerchantDep = Annotated[Merchant, Security(current_merchant)]

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$"

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        # Printable ASCII; the HTTP server strips spaces around a header value, so a key
        # neither starts nor ends with one.
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Retry-safe key (1-255 printable ASCII), scoped to the merchant, kept 24 h.",
    ),
]
