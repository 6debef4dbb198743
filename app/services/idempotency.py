"""Idempotency-Key handling (docs/api.md, "Idempotency"), stored so it holds across workers.

A request first *claims* its key in a committed row; the use case then completes the
claim in the same transaction as the state change it makes, so a stored answer exists
exactly when the change does. Requests that change nothing release their claim and are
not remembered. Every decision -- claim, replay, release, keep -- is made here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.core.jsoncodec import dump_json
from app.domain.errors import (
    BankUnavailable,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    PaymentServiceError,
)
from app.services.context import ServiceContext
from app.services.ports import UnitOfWork

StoredError = Callable[[PaymentServiceError], tuple[int, dict[str, Any]]]
"""The (status, body) a replay of a recorded error repeats."""


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's Idempotency-Key and the fingerprint of the request that carried it."""

    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Answer:
    """What a use case answers: a status and body, fresh or replayed from the key."""

    body: dict[str, Any]
    status: int = 200
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed key: the request owns it until it completes or releases it."""

    merchant_id: str
    key: str
    resource_id: str

    def record(
        self,
        uow: UnitOfWork,
        *,
        body: dict[str, Any],
        error: PaymentServiceError | None = None,
        stored_error: StoredError | None = None,
    ) -> None:
        """Store, with the caller's unit of work, the answer retries replay: ``body``, or
        the problem for ``error`` (a recorded bank failure)."""
        if error is None or stored_error is None:
            status, stored = 200, body
        else:
            status, stored = stored_error(error)
        uow.idempotency.complete(
            merchant_id=self.merchant_id, key=self.key, status=status, body=stored
        )


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


async def run_idempotently(
    ctx: ServiceContext,
    *,
    merchant_id: str,
    idempotency: IdempotencyKey | None,
    new_resource_id: str,
    operation: str,
    action: Callable[[Claim | None], Awaitable[Answer]],
) -> Answer:
    """Run ``action`` once per key: replay a completed key's answer, refuse a key in use,
    and forget the key when the action refused without changing anything.

    Raises:
        IdempotencyKeyReused: The key was used with a different request.
        IdempotencyInProgress: The first request with this key is still running.
    """
    if idempotency is None:
        return await action(None)
    outcome = await _claim_or_replay(
        ctx, merchant_id=merchant_id, idempotency=idempotency, new_resource_id=new_resource_id
    )
    if isinstance(outcome, Answer):
        ctx.metrics.idempotent_replay(operation=operation)
        return outcome
    try:
        return await action(outcome)
    except BankUnavailable:
        raise  # recorded with the claim: retries replay this answer
    except PaymentServiceError:
        # A refusal that changed nothing: forget the key so a corrected retry can run.
        await asyncio.shield(_release(ctx, outcome))
        raise
    # Anything else (a crash, a cancelled request) may have happened after the bank said
    # yes: the claim is left to expire, and the retry that takes it over reuses the same
    # resource id, which the bank deduplicates -- never a second charge.


async def _claim_or_replay(
    ctx: ServiceContext, *, merchant_id: str, idempotency: IdempotencyKey, new_resource_id: str
) -> Claim | Answer:
    async with ctx.uow_factory() as uow:
        claimed = await uow.idempotency.claim(
            merchant_id=merchant_id,
            key=idempotency.key,
            request_fingerprint=idempotency.fingerprint,
            resource_id=new_resource_id,
            now=ctx.clock(),
            lock_for=ctx.idempotency_lock,
            keep_for=ctx.idempotency_keep,
        )
        if claimed is not None:
            await uow.commit()
            return Claim(merchant_id=merchant_id, key=idempotency.key, resource_id=claimed)
        existing = await uow.idempotency.get(merchant_id=merchant_id, key=idempotency.key)
    if existing is None:
        # Purged between our insert attempt and the read: another request is racing us.
        raise IdempotencyInProgress
    if not hmac.compare_digest(existing.request_fingerprint, idempotency.fingerprint):
        raise IdempotencyKeyReused
    if not existing.completed or existing.response_body is None:
        raise IdempotencyInProgress
    return Answer(
        body=existing.response_body, status=existing.response_status or 200, replayed=True
    )


async def _release(ctx: ServiceContext, claim: Claim) -> None:
    async with ctx.uow_factory() as uow:
        await uow.idempotency.release(merchant_id=claim.merchant_id, key=claim.key)
        await uow.commit()
