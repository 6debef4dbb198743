"""Request-scoped dependencies (``Annotated`` aliases) and the app's wired runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from asgi_correlation_id.context import correlation_id
from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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


async def get_runtime(request: Request) -> Runtime:
    """The worker's runtime."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def current_correlation_id() -> str | None:
    """This request's correlation id."""
    return correlation_id.get()


CorrelationIdDep = Annotated[str | None, Depends(current_correlation_id)]


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <api_key>`; keys come from `payments-admin`.",
)


async def current_merchant(
    runtime: RuntimeDep,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    authorization: Annotated[
        str | None, Header(description="`Bearer <api_key>`", include_in_schema=False)
    ] = None,
) -> Merchant:
    """The merchant behind the bearer key (401 otherwise)."""
    return await runtime.authenticator.authenticate(
        authorization, correlation_id=correlation_id.get()
    )


MerchantDep = Annotated[Merchant, Depends(current_merchant)]

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",
        description="Retry-safe key (1-255 printable ASCII), scoped to the merchant, kept 24 h.",
    ),
]
