"""Structured JSON logs on stdout, one object per line.

Every line carries the correlation id, the Datadog trace and span ids, and the service,
env and version, so a log line leads to its request and its trace. The trace id is written
the way ddtrace's own log injection writes it (:meth:`Tracer.get_log_correlation_context`):
32 hex digits for a 128-bit trace id, decimal for a 64-bit one; Datadog links either form
to the trace. A last-resort filter masks anything shaped like a card number (a standalone
run of 12-19 digits, optionally split by spaces or dashes, that passes the Luhn check), in
case a message ever carries one.

A line is formatted where it is logged (the correlation id and the trace live in that
task's context) and written to stdout by a background thread (``QueueHandler`` and
``QueueListener``), so a slow reader of stdout -- a full pipe to the container runtime --
never blocks the event loop.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import re
import sys
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import TYPE_CHECKING, Any, Final

from asgi_correlation_id.context import correlation_id
from pythonjsonlogger.json import JsonFormatter

from app.core.config import Settings
from app.core.tracing import active_tracer
from app.domain.cards import luhn_valid

if TYPE_CHECKING:
    from ddtrace.trace import Tracer

# 12-19 digits, optionally split by spaces or dashes (the shapes SPEC accepts as card
# input), standing alone: not part of a longer run of letters and digits such as a hex id.
_PAN_LIKE: Final = re.compile(r"(?<![0-9A-Za-z])(?:\d[ -]?){11,18}\d(?![0-9A-Za-z])")

NOT_MASKED: Final = frozenset(
    {
        "timestamp",
        "level",
        "logger",
        "correlation_id",
        "dd.trace_id",
        "dd.span_id",
        "dd.service",
        "dd.env",
        "dd.version",
    }
)
"""Fields the service writes itself and that never hold card data (a decimal span id
could otherwise pass for a card number one time in ten)."""

QUIET_LOGGERS: Final = ("aiokafka",)
"""Libraries that log every reconnection attempt at ERROR while a dependency is down; the
service reports that state itself (the outbox relay's warnings), so only CRITICAL passes."""


def _mask_match(match: re.Match[str]) -> str:
    digits = match.group().replace(" ", "").replace("-", "")
    return "[REDACTED]" if luhn_valid(digits) else match.group()


def _mask_pans(text: str) -> str:
    return _PAN_LIKE.sub(_mask_match, text)


def _tracer() -> Tracer | None:
    tracer = active_tracer()
    if tracer is None and "ddtrace.trace" in sys.modules:
        # Traced by someone else (ddtrace-run): still correlate.
        tracer = sys.modules["ddtrace.trace"].tracer
    return tracer


def _current_trace_ids() -> tuple[str, str]:
    """The active Datadog trace and span ids, or "0" when nothing is traced."""
    tracer = _tracer()
    if tracer is None:
        return "0", "0"
    context = tracer.get_log_correlation_context()
    return context["dd.trace_id"], context["dd.span_id"]


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
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        # ISO 8601 in UTC, which Datadog's date remapper reads as is.
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for key, value in list(log_data.items()):
            if isinstance(value, str) and key != "message" and key not in NOT_MASKED:
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
            env=settings.datadog_env,
            version=settings.version,
        )
    )
    return handler


class _StdoutWriter(logging.Handler):
    """Writes lines to stdout (the one in place when logging was configured).

    On the writer thread an error must not end the thread (the queue would then grow
    forever), so a line that cannot be written is reported the usual way if possible and
    dropped.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stream = sys.stdout

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:
            with contextlib.suppress(Exception):
                self.handleError(record)


_listener: QueueListener | None = None
"""The thread writing this process's log lines to stdout."""
_queued: QueueHandler | None = None
"""The root logger's handler while the writer thread runs."""
_direct: logging.Handler | None = None
"""The handler that writes lines itself, once the writer thread has stopped."""


def stop_log_writer() -> None:
    """Write out what is queued and stop the writer thread (at shutdown and at exit).

    Lines logged afterwards are written directly: nothing is left to block by then.
    """
    global _listener, _queued
    if _listener is not None:
        _listener.stop()
        _listener = None
    root = logging.getLogger()
    if _queued is not None and _queued in root.handlers:
        root.removeHandler(_queued)
        if _direct is not None:
            root.addHandler(_direct)
    _queued = None


atexit.register(stop_log_writer)


def configure_logging(settings: Settings) -> None:
    """Route the root logger (and uvicorn's) to JSON lines on stdout, written off the loop."""
    global _listener, _queued, _direct
    stop_log_writer()
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    json_lines = build_handler(settings)
    # The queue side formats (and masks) the line in the caller's context...
    queued = QueueHandler(queue.SimpleQueue())
    # ...the writer thread only writes the finished line...
    writer = _StdoutWriter()
    writer.setFormatter(logging.Formatter("%(message)s"))
    # ...and once it has stopped, lines are formatted and written in one go.
    direct = _StdoutWriter()
    for handler in (queued, direct):
        handler.setFormatter(json_lines.formatter)
        for context_filter in json_lines.filters:
            handler.addFilter(context_filter)
    _listener = QueueListener(queued.queue, writer)
    _listener.start()
    _queued, _direct = queued, direct
    root.addHandler(queued)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv_logger = logging.getLogger(name)
        uv_logger.handlers.clear()
        uv_logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
