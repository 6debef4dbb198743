"""Structured JSON logs on stdout, one object per line.

Every line carries the correlation id, the Datadog trace and span ids, and the service,
env and version, so a log line leads to its request and its trace. A last-resort filter
masks anything shaped like a card number, in case a message ever carries one.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from asgi_correlation_id.context import correlation_id
from pythonjsonlogger.json import JsonFormatter

from app.core.config import Settings

# 12-19 digits, optionally split by spaces or dashes: the shapes SPEC accepts as card input.
_PAN_LIKE = re.compile(r"(?<!\d)(?:\d[ -]?){11,18}\d(?!\d)")


def _mask_pans(text: str) -> str:
    return _PAN_LIKE.sub(lambda m: "[REDACTED]", text)


def _current_trace_ids() -> tuple[str, str]:
    """The active Datadog trace and span ids, or "0" when nothing is traced."""
    try:
        from ddtrace.trace import tracer
    except ImportError:  # pragma: no cover - ddtrace is a hard dependency
        return "0", "0"
    span = tracer.current_span()
    if span is None:
        return "0", "0"
    return str(span.trace_id & 0xFFFFFFFFFFFFFFFF), str(span.span_id)


class ContextFilter(logging.Filter):
    """Adds correlation and trace context and masks card-number-like digit runs."""

    def __init__(self, *, service: str, env: str, version: str) -> None:
        super().__init__()
        self._service = service
        self._env = env
        self._version = version

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get() or getattr(record, "correlation_id", None)
        trace_id, span_id = _current_trace_ids()
        setattr(record, "dd.trace_id", trace_id)
        setattr(record, "dd.span_id", span_id)
        setattr(record, "dd.service", self._service)
        setattr(record, "dd.env", self._env)
        setattr(record, "dd.version", self._version)
        record.service = self._service
        record.env = self._env
        record.version = self._version
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str):
            record.msg = _mask_pans(record.msg)
        return True


class _Formatter(JsonFormatter):
    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for key, value in list(log_data.items()):
            if isinstance(value, str) and key != "message":
                log_data[key] = _mask_pans(value)
        return log_data

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _mask_pans(str(super().formatException(ei)))


LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s "
    "%(dd.trace_id)s %(dd.span_id)s %(dd.service)s %(dd.env)s %(dd.version)s"
)


def build_handler(settings: Settings, stream: Any = None) -> logging.Handler:
    """A stdout handler with the JSON formatter and the context filter."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        _Formatter(
            LOG_FORMAT,
            rename_fields={"levelname": "level", "asctime": "timestamp", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(
        ContextFilter(
            service=settings.service_name,
            env=settings.environment.value,
            version=settings.version,
        )
    )
    return handler


def configure_logging(settings: Settings) -> None:
    """Route the root logger (and uvicorn's) to one JSON handler on stdout."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(build_handler(settings))
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv_logger = logging.getLogger(name)
        uv_logger.handlers.clear()
        uv_logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
