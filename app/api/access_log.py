"""The access log: one JSON line per HTTP request (docs/observability.md, "Access log").

Pure ASGI, between the correlation-id middleware (so the line carries the request's id)
and the last-resort 500 (so an unhandled exception is seen as the 500 the client got).
A line holds the method, the route *template* (``/api/v1/payments/{transaction_id}``,
never the raw path, its query string or the body), the status, the duration and, once
the request has been authenticated, the merchant id. Successes are sampled; errors
(status 400 and above, and exceptions, logged as 500) are always written.

The line is written as the response's last part is handed on, while the request's trace
span (which ddtrace closes on that part) is still active, so it carries the trace ids.

The merchant id travels in the request's ``state`` (``scope["state"]``, which
``request.state`` writes to): :func:`app.api.deps.current_merchant` puts it there.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS_LOGGER: Final = "app.access"
"""The access log's logger: its level (LOG_LEVEL) applies like any other's."""

MERCHANT_STATE_KEY: Final = "merchant_id"
"""Where the authenticated merchant's id is kept in the request's state."""

KNOWN_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
OTHER_METHOD: Final = "_OTHER"
"""Logged for a method outside :data:`KNOWN_METHODS`: the method is the client's text."""

logger = logging.getLogger(ACCESS_LOGGER)


def route_template(scope: Scope) -> str | None:
    """The template of the route that handled the request, or None when none matched."""
    route = scope.get("route")
    if route is None:
        return None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None


def method_label(method: str) -> str:
    """The method as logged: a standard one as is, anything else as ``_OTHER``."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def level_for(status: int) -> int:
    """INFO below 400, WARNING for client errors, ERROR for server errors."""
    if status >= 500:
        return logging.ERROR
    if status >= 400:
        return logging.WARNING
    return logging.INFO


def sampled(status: int, rate: float, draw: Callable[[], float] = random.random) -> bool:
    """Whether this response is logged: errors always, successes at ``rate``."""
    if status >= 400 or rate >= 1.0:
        return True
    return rate > 0.0 and draw() < rate


class AccessLogMiddleware:
    """Writes one ``app.access`` line per HTTP request (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        sample_rate: float = 1.0,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.app = app
        self.sample_rate = sample_rate
        self.draw = draw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter_ns()
        # The dict request.state writes to, shared by every copy of the scope below.
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        status = 500  # unless a response starts: the server answers 500 itself then
        logged = False

        async def logging_send(message: Message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = message["status"]
            elif (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and not logged
            ):
                # Written just before the response's last part goes out: the request's
                # trace span, which the tracer closes on that part, is still the active
                # one, so the line carries its trace id.
                logged = True
                self._log(scope, state, status, started)
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        except Exception:
            # Raised past the 500 safety net before the response was complete (e.g. while
            # it was streamed): whatever the status line said, the request failed.
            if not logged:
                self._log(scope, state, 500, started)
            raise
        if not logged:
            self._log(scope, state, status, started)

    def _log(
        self, scope: Scope, state: MutableMapping[str, Any], status: int, started: int
    ) -> None:
        if not sampled(status, self.sample_rate, self.draw):
            return
        level = level_for(status)
        if not logger.isEnabledFor(level):
            return
        duration_ns = time.perf_counter_ns() - started
        method = method_label(scope.get("method", ""))
        route = route_template(scope)
        logger.log(
            level,
            "%s %s %d",
            method,
            route or "(no route)",
            status,
            extra={
                "http.method": method,
                "http.route": route,
                "http.status_code": status,
                "duration": duration_ns,
                "duration_ms": round(duration_ns / 1_000_000, 3),
                "merchant_id": state.get(MERCHANT_STATE_KEY),
                "sample_rate": 1.0 if status >= 400 else self.sample_rate,
            },
        )


__all__ = [
    "ACCESS_LOGGER",
    "MERCHANT_STATE_KEY",
    "AccessLogMiddleware",
    "level_for",
    "method_label",
    "route_template",
    "sampled",
]
