"""Idempotency-Key handling (docs/api.md, "Idempotency"), stored so it holds across workers.

A request's key is *claimed* in the same statement that records what the request is about
to do (the payment ``processing``, the refund ``pending``): the claim exists exactly when
the attempt does, and a retry can always find out what became of it. The answer is
stored with the outcome: ``200`` when settled, ``202`` while the bank's answer is unknown.
Requests that change nothing, and attempts the bank certainly never received (a 503), are
not remembered. Every decision -- claim, replay, refuse, release -- is made here.

The fingerprint that tells "the same request" from "the key reused for another one"
covers the card only through the vault's keyed card fingerprint, never the CVV (PCI DSS
3.3.1.2): it is stored as ``v2:`` and 64 hex digits. Keys stored before (64 hex digits of
an HMAC over the whole body) are still honoured until they expire, by computing that
legacy digest of the retry on the fly; nothing new is ever stored that way.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from app.core.jsoncodec import dump_json
from app.domain.errors import IdempotencyInProgress, IdempotencyKeyReused
from app.services.context import ServiceContext
from app.services.ports import IdempotencyRecord, StoredAnswer, UnitOfWork

FINGERPRINT_VERSION: Final = "v2:"
"""Prefix of every fingerprint stored since the CVV left it."""

SETTLED: Final = 200
"""The stored status of an answer that will not change."""

ACCEPTED: Final = 202
"""The stored status of an answer whose bank outcome was unknown when it was given."""


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's Idempotency-Key and the fingerprints of the request that carried it.

    The legacy fingerprint is given as it is, or as ``legacy``, computed only when a key
    stored before ``v2`` is compared (never, for a fresh key).
    """

    key: str
    fingerprint: str
    legacy_fingerprint: str | None = None
    legacy: Callable[[], str] | None = field(default=None, compare=False, repr=False)

    def legacy_digest(self) -> str | None:
        """The fingerprint a key stored before ``v2`` was given, if it can be known."""
        if self.legacy_fingerprint is None and self.legacy is not None:
            return self.legacy()
        return self.legacy_fingerprint


@dataclass(frozen=True, slots=True)
class Answer:
    """What a use case answers: a status (200, or 202 while the bank's answer is unknown)
    and a body, fresh or replayed from the key."""

    body: dict[str, Any]
    status: int = SETTLED
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """A request's claim on its key, written with the attempt it protects."""

    merchant_id: str
    key: str
    fingerprint: str
    resource_id: str

    def stage(self, ctx: ServiceContext, uow: UnitOfWork, *, answer: Answer | None = None) -> None:
        """Make ``uow``'s commit conditional on the key being free; with ``answer`` (an
        attempt settled at once), the key is stored completed."""
        now = ctx.clock()
        uow.idempotency.claim(
            merchant_id=self.merchant_id,
            key=self.key,
            request_fingerprint=self.fingerprint,
            resource_id=self.resource_id,
            now=now,
            lock_for=ctx.idempotency_lock,
            keep_for=ctx.idempotency_keep,
            answer=None if answer is None else StoredAnswer(answer.status, answer.body),
        )

    def complete(self, uow: UnitOfWork, answer: Answer) -> None:
        """Store, with ``uow``'s change, the answer every retry replays."""
        uow.idempotency.complete(
            merchant_id=self.merchant_id,
            key=self.key,
            answer=StoredAnswer(answer.status, answer.body),
        )

    def release(self, uow: UnitOfWork) -> None:
        """Forget the key with ``uow``'s change: a retry runs again (the bank certainly
        never saw this attempt)."""
        uow.idempotency.release(merchant_id=self.merchant_id, key=self.key)


def new_claim(
    merchant_id: str, idempotency: IdempotencyKey | None, resource_id: str
) -> Claim | None:
    """The claim a request makes, if it sent a key."""
    if idempotency is None:
        return None
    return Claim(
        merchant_id=merchant_id,
        key=idempotency.key,
        fingerprint=idempotency.fingerprint,
        resource_id=resource_id,
    )


async def already_claimed(ctx: ServiceContext, claim: Claim | None) -> bool:
    """Whether the key of a request the payment's state refused was claimed before: its
    first request may be what changed that state (a retried full refund, capture or
    void), so the retry is answered from the key, not refused."""
    if claim is None:
        return False
    async with ctx.uow_factory() as uow:
        record = await uow.idempotency.get(merchant_id=claim.merchant_id, key=claim.key)
    return record is not None


@dataclass(frozen=True, slots=True)
class RunAgain:
    """The key's first request left nothing behind but its claim (it died before
    recording anything, under an older release): run the request again as that one."""

    resource_id: str


async def answer_for_taken_key(
    ctx: ServiceContext,
    *,
    merchant_id: str,
    idempotency: IdempotencyKey,
    operation: str,
    current: Callable[[str], Awaitable[Answer | None]],
) -> Answer | RunAgain:
    """What a request answers when its key was already claimed.

    ``current`` gives the current answer for a resource id (``None`` when it does not
    exist). A completed key replays its answer; a key whose first request is still
    running is refused; a key whose first request stopped (a process killed mid-request,
    the database lost before the outcome was written) answers what became of its
    attempt -- the reconciler settles it.

    Raises:
        IdempotencyKeyReused: The key was used with a different request.
        IdempotencyInProgress: The first request with this key is still running.
    """
    async with ctx.uow_factory() as uow:
        record = await uow.idempotency.get(merchant_id=merchant_id, key=idempotency.key)
    if record is None:
        raise IdempotencyInProgress  # purged as we looked: another request is racing us
    if not _same_request(record, idempotency):
        raise IdempotencyKeyReused
    now = ctx.clock()
    if record.completed and record.response_body is not None:
        ctx.metrics.idempotent_replay(operation=operation)
        return Answer(record.response_body, status=record.response_status or SETTLED, replayed=True)
    if record.locked_until > now:
        raise IdempotencyInProgress
    answer = await current(record.resource_id)
    if answer is not None:
        ctx.metrics.idempotent_replay(operation=operation)
        return Answer(answer.body, status=answer.status, replayed=True)
    async with ctx.uow_factory() as uow:
        taken = await uow.idempotency.take_over(
            merchant_id=merchant_id,
            key=idempotency.key,
            request_fingerprint=record.request_fingerprint,
            now=now,
        )
    if not taken:
        raise IdempotencyInProgress
    return RunAgain(record.resource_id)


def _same_request(record: IdempotencyRecord, idempotency: IdempotencyKey) -> bool:
    stored = record.request_fingerprint
    if stored.startswith(FINGERPRINT_VERSION):
        return hmac.compare_digest(stored, idempotency.fingerprint)
    legacy = idempotency.legacy_digest()
    return legacy is not None and hmac.compare_digest(stored, legacy)


def request_fingerprint(
    *,
    secret: bytes,
    method: str,
    path: str,
    body: Any,
    card_fingerprint: Callable[[str], str],
) -> str:
    """The versioned fingerprint of a request: an HMAC over its canonical JSON in which
    the card number is replaced by its keyed card fingerprint and the CVV is left out."""
    return FINGERPRINT_VERSION + _digest(
        secret, method, path, _without_card_secrets(body, card_fingerprint)
    )


def legacy_request_fingerprint(*, secret: bytes, method: str, path: str, body: Any) -> str:
    """The fingerprint keys were stored with before ``v2`` (over the whole body), only to
    recognise their retries; never stored again. Remove once every such key has expired
    (``IDEMPOTENCY_TTL_S`` after the upgrade)."""
    return _digest(secret, method, path, body)


def _digest(secret: bytes, method: str, path: str, body: Any) -> str:
    canonical = f"{method.upper()} {path}\n" + dump_json(_sorted(body))
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


def _without_card_secrets(body: Any, card_fingerprint: Callable[[str], str]) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get("card_data"), dict):
        return body
    card = {k: v for k, v in body["card_data"].items() if k != "cvv"}
    number = card.get("card_number")
    if isinstance(number, str):
        try:
            card["card_number"] = card_fingerprint(number)
        except Exception:  # an invalid number: the request fails validation anyway
            card["card_number"] = "unfingerprintable"
    return {**body, "card_data": card}


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value
