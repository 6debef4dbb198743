"""API-key authentication (docs/api.md, "Authentication") with a small in-process cache.

A refused authentication is audited by counting it (see :meth:`Authenticator._refuse`).

Keys are looked up by a keyed digest (HMAC-SHA256 under a server-side pepper), never in
clear. The cache holds key → merchant for a short TTL behind a threading lock, and is
cleared in every worker the moment a merchant or key changes: admin operations NOTIFY
on PostgreSQL and each process LISTENs (see ``app.adapters.db.notifications``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading

from cachetools import TTLCache

from app.domain.errors import Unauthorized
from app.domain.merchants import Merchant
from app.services.context import ServiceContext

API_KEY_SHAPE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")


def hash_api_key(raw_key: str, *, pepper: bytes) -> str:
    """The stored form of an API key."""
    return hmac.new(pepper, raw_key.encode(), hashlib.sha256).hexdigest()


class Authenticator:
    """Resolves bearer keys to merchants; refusals are audited."""

    def __init__(
        self, ctx: ServiceContext, *, pepper: bytes, ttl_s: float, maxsize: int = 10_000
    ) -> None:
        self._ctx = ctx
        self._pepper = pepper
        self._lock = threading.Lock()
        self._cache: TTLCache[str, Merchant] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl_s) if ttl_s > 0 else None
        )

    def invalidate_all(self) -> None:
        """Forget every cached key (a merchant or key changed somewhere)."""
        if self._cache is not None:
            with self._lock:
                self._cache.clear()

    def _cached(self, key_hash: str) -> Merchant | None:
        if self._cache is None:
            return None
        with self._lock:
            return self._cache.get(key_hash)

    def _remember(self, key_hash: str, principal: Merchant) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache[key_hash] = principal

    async def authenticate(
        self, authorization: str | None, *, correlation_id: str | None, source: str = "unknown"
    ) -> Merchant:
        """The merchant behind ``Authorization: Bearer <key>``.

        Raises:
            Unauthorized: Missing, malformed, unknown or revoked key.
        """
        raw_key = _bearer_token(authorization)
        if raw_key is None:
            await self._refuse("missing_or_malformed", correlation_id, source=source)
            raise Unauthorized
        key_hash = hash_api_key(raw_key, pepper=self._pepper)
        principal = self._cached(key_hash)
        if principal is not None:
            return principal
        principal = await self._ctx.queries.merchant_for_key(key_hash)
        if principal is None:
            await self._refuse("unknown_key", correlation_id, source=source, key_prefix=raw_key[:6])
            raise Unauthorized
        self._remember(key_hash, principal)
        return principal

    async def _refuse(
        self,
        reason: str,
        correlation_id: str | None,
        *,
        source: str,
        key_prefix: str | None = None,
    ) -> None:
        # Counted per source, reason and minute: however fast an anonymous caller knocks,
        # it adds at most one row a minute (docs/api.md, "Audit log").
        details: dict[str, object] = {}
        if key_prefix:
            details["last_key_prefix"] = key_prefix
        async with self._ctx.uow_factory() as uow:
            await uow.audit.count_refused_authentication(
                source=source,
                reason=reason,
                at=self._ctx.clock(),
                correlation_id=correlation_id,
                details=details,
            )


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not API_KEY_SHAPE.fullmatch(token):
        return None
    return token
