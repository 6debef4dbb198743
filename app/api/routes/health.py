"""Liveness, readiness and the deep health check (docs/deployment.md, "Health checks")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cachetools import TTLCache
from fastapi import APIRouter
from starlette.responses import JSONResponse

from app.api.deps import Runtime, RuntimeDep
from app.api.schemas import (
    HealthResponse,
    LivenessResponse,
    ReadinessResponse,
    ServiceInfo,
)

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 2.0


async def _database(runtime: Runtime) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await runtime.database_ping()
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}
    return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def _outbox(runtime: Runtime) -> dict[str, Any]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), runtime.services.uow_factory() as uow:
            backlog = await uow.outbox.backlog()
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}
    return {
        "status": "up",
        "pending": backlog.pending,
        "oldest_pending_age_s": round(backlog.oldest_pending_age_s, 1),
    }


class SharedProbe:
    """A probe of a dependency whose answer is shared for ``ttl_s``: however many callers
    ask ``/health`` (it needs no authentication), the dependency sees at most one probe
    per ``ttl_s`` and worker, and concurrent callers wait for the same one."""

    def __init__(self, probe: Callable[[], Awaitable[bool]], *, ttl_s: float) -> None:
        self._probe = probe
        self._cache: TTLCache[str, bool] | None = (
            TTLCache(maxsize=1, ttl=ttl_s) if ttl_s > 0 else None
        )
        self._lock = asyncio.Lock()

    async def answers(self) -> bool:
        """Whether the dependency answered its latest probe."""
        if self._cache is None:
            return await self._probe_bounded()
        async with self._lock:
            answered = self._cache.get("answered")
            if answered is None:
                answered = self._cache["answered"] = await self._probe_bounded()
        return answered

    async def _probe_bounded(self) -> bool:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                return await self._probe()
        except TimeoutError:
            return False


def _probes(runtime: Runtime) -> tuple[SharedProbe, SharedProbe]:
    probes: tuple[SharedProbe, SharedProbe] | None = runtime.health_probes
    if probes is None:
        ttl_s = runtime.settings.health_probe_cache_s
        probes = (
            SharedProbe(runtime.services.publisher.broker_available, ttl_s=ttl_s),
            SharedProbe(runtime.services.bank.ping, ttl_s=ttl_s),
        )
        runtime.health_probes = probes
    return probes


async def _kafka(runtime: Runtime) -> dict[str, Any]:
    if not runtime.services.publisher.enabled:
        return {"status": "disabled", "detail": "KAFKA_BOOTSTRAP_SERVERS not set"}
    kafka, _ = _probes(runtime)
    return {"status": "up" if await kafka.answers() else "down"}


async def _bank(runtime: Runtime) -> dict[str, Any]:
    circuit = runtime.services.bank.circuit_state
    if circuit == "open":
        return {"status": "down", "circuit": circuit}
    _, bank = _probes(runtime)
    return {"status": "up" if await bank.answers() else "down", "circuit": circuit}


async def _reconciliation(runtime: Runtime) -> dict[str, Any]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            backlog = await runtime.services.queries.unsettled_backlog()
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}
    overdue = backlog.oldest_age_s > runtime.settings.reconcile_alert_after_s
    return {
        "status": "down" if overdue else "up",
        "payments_processing": backlog.payments,
        "refunds_pending": backlog.refunds,
        "oldest_age_s": round(backlog.oldest_age_s, 1),
    }


@router.get("/", name="get_service_info", response_model=ServiceInfo, summary="Service information")
async def root(runtime: RuntimeDep) -> dict[str, str]:
    """Name, version and where the API documentation lives."""
    return {"service": "payment-service", "version": runtime.settings.version, "docs": "/docs"}


@router.get(
    "/health",
    name="get_health",
    response_model=HealthResponse,
    summary="Deep health check",
    responses={503: {"model": HealthResponse, "description": "The database is unreachable."}},
)
async def health(runtime: RuntimeDep) -> JSONResponse:
    """Database, Kafka, bank circuit, outbox backlog and what waits for the reconciler;
    503 only when the database is down. The Kafka and bank probes are shared for
    ``HEALTH_PROBE_CACHE_S`` (the endpoint needs no authentication)."""
    database, kafka, bank, outbox, reconciliation = await asyncio.gather(
        _database(runtime),
        _kafka(runtime),
        _bank(runtime),
        _outbox(runtime),
        _reconciliation(runtime),
    )
    checks = {
        "database": database,
        "kafka": kafka,
        "bank": bank,
        "outbox": outbox,
        "reconciliation": reconciliation,
    }
    if database["status"] != "up":
        status = "unhealthy"
    elif any(check["status"] == "down" for check in checks.values()):
        status = "degraded"
    else:
        status = "healthy"
    return JSONResponse(
        {"status": status, "version": runtime.settings.version, "checks": checks},
        status_code=503 if status == "unhealthy" else 200,
    )


@router.get(
    "/health/live", name="get_liveness", summary="Liveness", response_model=LivenessResponse
)
async def live() -> dict[str, str]:
    """200 while the process serves requests."""
    return {"status": "alive"}


@router.get(
    "/health/ready",
    name="get_readiness",
    summary="Readiness",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "Draining, or no database."}},
)
async def ready(runtime: RuntimeDep) -> JSONResponse:
    """503 while draining or when the database cannot be reached."""
    if runtime.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    database = await _database(runtime)
    if database["status"] != "up":
        return JSONResponse({"status": "unavailable", "database": database}, status_code=503)
    return JSONResponse({"status": "ready"})
