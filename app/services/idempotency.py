"""Idempotency-Key handling (SPEC §4), stored in PostgreSQL so it holds across workers.

A request first *claims* its key in a committed row; the use case then completes the
claim in the same transaction as the state change it makes, so a stored response exists
exactly when the change does. Requests that change nothing release their claim and are
not remembered.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.adapters.db.unit_of_work import UnitOfWork
from app.core.jsoncodec import dump_json
from app.domain.errors import IdempotencyInProgress, IdempotencyKeyReused, PaymentServiceError
from app.services.context import ServiceContext

ErrorRenderer = Callable[[PaymentServiceError], tuple[int, dict[str, Any]]]
"""Turns a business error into the (status, body) a replay must repeat."""


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """A claimed key: the request owns it until it completes or releases it."""

    merchant_id: str
    key: str
    resource_id: str
    render_error: ErrorRenderer

    def record(
        self,
        uow: UnitOfWork,
        *,
        body: dict[str, Any],
        error: PaymentServiceError | None = None,
    ) -> None:
        """Store, with the caller's unit of work, the answer retries replay: ``body`` with
        a 200, or the problem for ``error`` (a recorded bank failure)."""
        status, stored = (200, body) if error is None else self.render_error(error)
        uow.idempotency.complete(
            merchant_id=self.merchant_id, key=self.key, status=status, body=stored
        )


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first response to a key, to be replayed."""

    status: int
    body: dict[str, Any]


def request_fingerprint(*, secret: bytes, method: str, path: str, body: Any) -> str:
    """A keyed digest of the request: keyed because bodies carry card numbers."""
    canonical = f"{method.upper()} {path}\n" + dump_json(_sorted(body))
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


async def claim_or_replay(
    ctx: ServiceContext,
    *,
    merchant_id: str,
    key: str,
    fingerprint: str,
    new_resource_id: str,
    render_error: ErrorRenderer,
) -> IdempotencyClaim | StoredResponse:
    """Claim the key, or return the stored response to replay.

    Raises:
        IdempotencyKeyReused: The key was used with a different request.
        IdempotencyInProgress: The first request with this key is still running.
    """
    now = ctx.clock()
    async with ctx.uow_factory() as uow:
        await uow.without_transaction()  # the claim is one statement, durable at once
        claimed = await uow.idempotency.claim(
            merchant_id=merchant_id,
            key=key,
            request_fingerprint=fingerprint,
            resource_id=new_resource_id,
            now=now,
            lock_for=ctx.idempotency_lock,
            keep_for=ctx.idempotency_keep,
        )
        if claimed is not None:
            await uow.commit()
            return IdempotencyClaim(
                merchant_id=merchant_id,
                key=key,
                resource_id=claimed,
                render_error=render_error,
            )
        existing = await uow.idempotency.get(merchant_id=merchant_id, key=key)
        if existing is None:
            # Purged between our insert attempt and the read: another request is racing us.
            raise IdempotencyInProgress
        if not hmac.compare_digest(existing.request_fingerprint, fingerprint):
            raise IdempotencyKeyReused
        if existing.state != "completed" or existing.response_body is None:
            raise IdempotencyInProgress
        return StoredResponse(status=existing.response_status or 200, body=existing.response_body)


async def release(ctx: ServiceContext, claim: IdempotencyClaim) -> None:
    """Forget a claim whose request changed nothing (validation or business refusal)."""
    async with ctx.uow_factory() as uow:
        await uow.idempotency.release(merchant_id=claim.merchant_id, key=claim.key)
        await uow.commit()
