"""A route class whose JSON bodies keep every number exact.

FastAPI parses bodies with the standard ``json`` module, which turns ``99.99`` into a
binary float before validation. Our routes parse with Decimals instead, so an amount or a
metadata value reaches the domain and the database with exactly the digits sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.core.jsoncodec import load_json


class ExactJsonRequest(Request):
    """A request whose ``json()`` yields Decimals for non-integral numbers."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = load_json(body)
            except ValueError as exc:
                # FastAPI turns the standard library's decode error into its json_invalid.
                raise json.JSONDecodeError(str(exc), body.decode(errors="replace"), 0) from None
        return self._json


class ExactJsonRoute(APIRoute):
    """Route class installing :class:`ExactJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def exact_handler(request: Request) -> Response:
            return await handler(ExactJsonRequest(request.scope, request.receive))

        return exact_handler
