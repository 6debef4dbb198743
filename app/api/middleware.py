"""ASGI middleware: body-size limit, correlation ids, and the last-resort 500."""

from __future__ import annotations

import logging
import re
import uuid

from asgi_correlation_id import CorrelationIdMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import UnexpectedErrors, payload_too_large_body, problem_response

logger = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"
_CORRELATION_SHAPE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def valid_correlation_id(value: str) -> bool:
    """docs/api.md, "Correlation ids": 1-128 characters of ``[A-Za-z0-9._:-]``."""
    return bool(_CORRELATION_SHAPE.fullmatch(value))


def correlation_middleware_options() -> dict[str, object]:
    """Options for asgi-correlation-id: our header, our shape, UUIDs otherwise."""
    return {
        "header_name": CORRELATION_HEADER,
        "generator": lambda: str(uuid.uuid4()),
        "validator": valid_correlation_id,
        "transformer": lambda value: value,
    }


class BodySizeLimitMiddleware:
    """Answers 413 for bodies over the limit, by Content-Length or by counting the stream."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(scope, receive, send)
                    return
        # Read the whole (bounded) body before the app sees it: an overflow signalled from
        # inside receive() would be swallowed by the framework's body parsing.
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_response(413, payload_too_large_body(self.max_bytes))(scope, receive, send)


class UnexpectedErrorMiddleware:
    """Turns any unhandled exception into a logged problem (503 when the database cannot be
    reached, else 500), inside the correlation scope.

    Starlette's own last-resort handler sits outside every middleware, where the
    correlation id header would be lost; this one answers from inside it.
    """

    def __init__(self, app: ASGIApp, *, errors: UnexpectedErrors | None = None) -> None:
        self.app = app
        self.errors = errors or UnexpectedErrors()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                logger.exception(
                    "unhandled error on %s %s after the response started",
                    scope.get("method"),
                    scope.get("path"),
                )
                raise
            response = self.errors.response(
                exc, method=str(scope.get("method")), path=str(scope.get("path"))
            )
            await response(scope, receive, send)


__all__ = [
    "CORRELATION_HEADER",
    "BodySizeLimitMiddleware",
    "CorrelationIdMiddleware",
    "UnexpectedErrorMiddleware",
    "correlation_middleware_options",
]
