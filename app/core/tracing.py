"""Datadog APM: which libraries are traced, and under which service, env and version.

:func:`configure_tracing` runs once, from the app factory, before the FastAPI app is built
(ddtrace's FastAPI integration wraps the middleware stack the app builds on its first
request; the database engine, the bank client and the Kafka producer are created later,
in the lifespan). It patches the integrations in :data:`TRACED_LIBRARIES`, names the
service from the settings so traces, logs and metrics carry the same ``service``, ``env``
and ``version``, and turns on trace-context propagation into Kafka message headers.

Everything else is ddtrace's own configuration, read from the process environment when
ddtrace is first imported (so it must be exported, not only written in ``.env``): the
agent address (``DD_TRACE_AGENT_URL``, or ``DD_AGENT_HOST`` and ``DD_TRACE_AGENT_PORT``),
Data Streams Monitoring (``DD_DATA_STREAMS_ENABLED``), Database Monitoring propagation
(``DD_DBM_PROPAGATION_MODE``), sampling. See docs/observability.md.

Patching is process-wide and cannot be undone: with tracing disabled nothing is patched
and :func:`active_tracer` is None, so the service's own spans cost one function call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from app.core.config import Settings

if TYPE_CHECKING:
    from ddtrace.trace import Context, Tracer

logger = logging.getLogger(__name__)

TRACED_LIBRARIES: Final = ("fastapi", "starlette", "asyncpg", "httpx", "aiokafka")
"""ddtrace integrations the service enables. Not ``sqlalchemy``: its spans would only
repeat the asyncpg ones (same statements, one level up), and not ``logging``: the JSON
log handler adds the trace ids itself (:mod:`app.core.logging`)."""

_tracer: Tracer | None = None


def enabled_integrations() -> list[str]:
    """:data:`TRACED_LIBRARIES` less those turned off with ``DD_TRACE_<LIBRARY>_ENABLED=false``
    (ddtrace-run's switch, which ``ddtrace.patch`` itself does not read)."""
    return [
        library
        for library in TRACED_LIBRARIES
        if os.environ.get(f"DD_TRACE_{library.upper()}_ENABLED", "true").strip().lower()
        not in {"false", "0", "no", "off"}
    ]


def active_tracer() -> Tracer | None:
    """The tracer when :func:`configure_tracing` enabled tracing in this process, else None."""
    return _tracer


def configure_tracing(settings: Settings) -> bool:
    """Patch the traced libraries and name the service, once per process.

    Returns whether tracing is on. With ``DD_TRACE_ENABLED`` false this does nothing and
    imports nothing from ddtrace.
    """
    global _tracer
    if not settings.tracing_enabled:
        return False
    if _tracer is not None:
        return True

    import ddtrace
    from ddtrace.trace import tracer

    ddtrace.config.service = settings.service_name
    ddtrace.config.env = settings.datadog_env
    ddtrace.config.version = settings.version
    ddtrace.patch(raise_errors=True, **dict.fromkeys(enabled_integrations(), True))
    # Trace context in the Kafka headers of every event, next to the Data Streams pathway
    # (ddtrace leaves this off by default: DD_KAFKA_PROPAGATION_ENABLED).
    ddtrace.config.aiokafka["distributed_tracing_enabled"] = True
    _tracer = tracer
    return True


def log_tracing_state(settings: Settings) -> None:
    """One log line saying what is traced (the lifespan calls it once logging is set up)."""
    if _tracer is None:
        logger.info("APM tracing off (DD_TRACE_ENABLED)")
        return
    import ddtrace

    logger.info(
        "APM tracing on: service %s, env %s, version %s, libraries %s; Data Streams Monitoring %s",
        settings.service_name,
        settings.datadog_env,
        settings.version,
        ", ".join(enabled_integrations()),
        "on" if ddtrace.config._data_streams_enabled else "off (DD_DATA_STREAMS_ENABLED)",
    )


def context_from_headers(headers: Mapping[str, str]) -> Context | None:
    """The trace context carried in message headers (``x-datadog-*``, ``traceparent``),
    if tracing is on and they carry one."""
    if _tracer is None or not headers:
        return None
    from ddtrace.propagation.http import HTTPPropagator

    context = HTTPPropagator.extract(dict(headers))  # type: ignore[no-untyped-call]
    return context if context.trace_id else None
