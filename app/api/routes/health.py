"""Liveness, readiness and the deep health check (docs/deployment.md, "Health checks")."""

from __future__ import annotations

import asyncio
import time
from typing import Any

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


async def _kafka(runtime: Runtime) -> dict[str, Any]:
    publisher = runtime.services.publisher
    if not publisher.enabled:
        return {"status": "disabled", "detail": "KAFKA_BOOTSTRAP_SERVERS not set"}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            available = await publisher.broker_available()
    except TimeoutError:
        available = False
    return {"status": "up" if available else "down"}


async def _bank(runtime: Runtime) -> dict[str, Any]:
    bank = runtime.services.bank
    circuit = bank.circuit_state
    if circuit == "open":
        return {"status": "down", "circuit": circuit}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            answering = await bank.ping()
    except TimeoutError:
        answering = False
    return {"status": "up" if answering else "down", "circuit": circuit}


@router.get("/", response_model=ServiceInfo, summary="Service information")
async def root(runtime: RuntimeDep) -> dict[str, str]:
    """Name, version and where the API documentation lives."""
    return {"service": "payment-service", "version": runtime.settings.version, "docs": "/docs"}


@router.get(
    "/health",
    response_model=HealthResponse,
    summary="Deep health check",
    responses={503: {"model": HealthResponse, "description": "The database is unreachable."}},
)
async def health(runtime: RuntimeDep) -> JSONResponse:
    """Database, Kafka, bank circuit and outbox backlog; 503 only when the database is down."""
    database, kafka, bank, outbox = await asyncio.gather(
        _database(runtime), _kafka(runtime), _bank(runtime), _outbox(runtime)
    )
    checks = {"database": database, "kafka": kafka, "bank": bank, "outbox": outbox}
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


@router.get("/health/live", summary="Liveness", response_model=LivenessResponse)
async def live() -> dict[str, str]:
    """200 while the process serves requests."""
    return {"status": "alive"}


@router.get(
    "/health/ready",
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
