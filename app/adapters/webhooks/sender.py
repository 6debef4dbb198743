"""POSTing a delivery: one pooled aiohttp client, Standard Webhooks signatures, a short
timeout, no redirects, and a response read only up to a small limit.

aiohttp rather than httpx: its connector takes a resolver, which is where every address
a delivery connects to is checked (:class:`~app.adapters.webhooks.targets.GuardedResolver`),
and ddtrace does not patch it here, so no trace header of ours reaches a merchant.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from datetime import datetime

import aiohttp
from aiohttp.abc import AbstractResolver
from standardwebhooks.webhooks import Webhook

from app.adapters.webhooks.targets import GuardedResolver, TargetRefusedError, literal_refused
from app.domain.errors import WebhookTargetRefused
from app.domain.webhooks import TargetRules, check_url_shape
from app.services.ports.webhooks import AttemptResult

logger = logging.getLogger(__name__)


def sign(*, message_id: str, timestamp: datetime, body: bytes, secrets: Sequence[str]) -> str:
    """The ``webhook-signature`` header: ``v1,<base64>`` per secret, space-separated (a
    receiver accepts the delivery if any one verifies)."""
    return " ".join(
        Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body)
        for secret in secrets
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def error_class(exc: BaseException) -> str:
    """A short, secret-free name for what went wrong (stored with the attempt)."""
    if _caused_by(exc, TargetRefusedError) or isinstance(exc, WebhookTargetRefused):
        return "target_refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientSSLError) or _caused_by(exc, ssl.SSLError):
        return "tls_error"
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError):
        return "connection_error"
    if isinstance(exc, aiohttp.ClientError):
        return "http_error"
    return "unexpected_error"


class HttpWebhookSender:
    """The :class:`~app.services.ports.webhooks.WebhookSender` port over aiohttp."""

    def __init__(
        self,
        *,
        rules: TargetRules,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        max_connections: int = 100,
        response_limit_bytes: int = 4096,
        user_agent: str = "payment-service-webhooks",
        resolver: AbstractResolver | None = None,
    ) -> None:
        """Nothing connects until the first :meth:`send`; ``resolver`` replaces the
        system's name resolution under the guard (tests)."""
        self._rules = rules
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._max_connections = max_connections
        self._limit = response_limit_bytes
        self._user_agent = user_agent
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                resolver=GuardedResolver(self._rules, self._inner_resolver),
                # Answers are cached only after the guard passed them; a changed record
                # is picked up (and checked again) within a minute.
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": self._user_agent},
                # No cookies kept from one merchant's answer to another's request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def send(
        self,
        *,
        url: str,
        message_id: str,
        body: bytes,
        secrets: Sequence[str],
        timestamp: datetime,
    ) -> AttemptResult:
        """POST one delivery; the outcome, never an exception."""
        started = time.perf_counter()
        try:
            host, _ = check_url_shape(url, self._rules)
            if literal_refused(host, self._rules):
                # aiohttp does not resolve an address literal: checked here instead.
                raise TargetRefusedError("the URL's address is not a public address")
            headers = {
                "Content-Type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(int(timestamp.timestamp())),
                "webhook-signature": sign(
                    message_id=message_id, timestamp=timestamp, body=body, secrets=secrets
                ),
            }
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                # Read a little (a well-behaved receiver answers with next to nothing);
                # a longer answer closes the connection instead of being read in full.
                chunk = await response.content.read(self._limit) if self._limit else b""
                if not response.content.at_eof() or len(chunk) >= self._limit:
                    response.close()
                status = response.status
        except Exception as exc:
            kind = error_class(exc)
            if kind == "unexpected_error":
                logger.warning("webhook POST failed unexpectedly: %s", type(exc).__name__)
            return AttemptResult(
                status_code=None, error=kind, seconds=time.perf_counter() - started
            )
        return AttemptResult(status_code=status, error=None, seconds=time.perf_counter() - started)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
