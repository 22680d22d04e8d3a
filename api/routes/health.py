"""Health (no auth): the API, the store, Temporal and the providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import func, select, text
from starlette.concurrency import run_in_threadpool

from api.deps import Reader, Svc, temporal
from core.services import Services
from core.store.models import KeyRow

router = APIRouter(tags=["health"])
# a scheduled rotation this late means the workers are not keeping up (or are down)
OVERDUE_AFTER = timedelta(minutes=5)
# The health routes need no key, and check the store (counts over every key or handle),
# Temporal and every provider (a KMS or Vault call each): one check at a time, each answer
# reused this long, so a flood of them costs the store, the providers' quotas and the
# key-use thread pool nothing.
HEALTH_TTL = 5.0
T = TypeVar("T")


class HealthChecks:
    """The last answer of each health route in this process, and the lock a check takes."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._answers: dict[str, tuple[float, Any]] = {}

    async def answer(self, route: str, check: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            last = self._answers.get(route)
            if last is None or time.monotonic() - last[0] >= HEALTH_TTL:
                last = self._answers[route] = (time.monotonic(), await check())
        answer: T = last[1]
        return answer


async def livez(request: Request) -> JSONResponse:
    """The process is up."""
    return JSONResponse({"status": "ok"})


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, svc: Svc, who: Reader) -> PlainTextResponse:
    """Prometheus metrics (text format 0.0.4); needs the `read` permission, which Prometheus
    presents as `authorization: {credentials: <admin key>}`."""
    body = request.app.state.metrics.render(svc.store)
    return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/api/key-management/health")
async def health(request: Request, svc: Svc) -> JSONResponse:
    """Overall health: `healthy`, `degraded` (Temporal or a provider down: use still works)
    or `unhealthy` (the store is down: 503). Checked at most every HEALTH_TTL seconds."""
    checks: HealthChecks = request.app.state.health_checks
    body, code = await checks.answer("health", lambda: _check(request, svc))
    return JSONResponse(body, status_code=code)


async def _check(request: Request, svc: Services) -> tuple[dict[str, Any], int]:
    components: dict[str, Any] = {}
    try:
        await run_in_threadpool(_ping_store, svc)
        components["database"] = {"status": "up"}
    except Exception:  # any failure means down
        components["database"] = {"status": "down"}
    try:
        # without a client yet (`keyrotor api` connects on first need), try to connect now
        client = request.app.state.client or await temporal(request)
        await client.service_client.check_health()
        components["temporal"] = {"status": "up"}
    except Exception:
        components["temporal"] = {"status": "down"}
    for name, provider in svc.providers.items():
        h = await run_in_threadpool(provider.health)
        components[f"provider:{name}"] = {"status": "up" if h.ok else "down"}
    if components["database"]["status"] != "up":
        status, code = "unhealthy", 503
    elif any(c["status"] != "up" for c in components.values()):
        status, code = "degraded", 200
    else:
        status, code = "healthy", 200
    return {"health": {"status": status, "components": components, "timestamp": _now_iso()}}, code


@router.get("/api/key-management/health/keys")
async def key_health(request: Request, svc: Svc) -> dict[str, Any]:
    """Active keys, keys whose rotation is due within a day, and overdue rotations (checked at
    most every HEALTH_TTL seconds)."""
    checks: HealthChecks = request.app.state.health_checks
    return await checks.answer("keys", lambda: run_in_threadpool(_key_health, svc))


def _key_health(svc: Services) -> dict[str, Any]:
    now = datetime.now(UTC)
    with svc.store.session() as s:
        active = s.scalar(select(func.count()).select_from(KeyRow).where(KeyRow.status == "active"))
        due_soon = s.scalar(
            select(func.count())
            .select_from(KeyRow)
            .where(KeyRow.next_rotation_at <= now + timedelta(days=1))
        )
        overdue = s.scalar(
            select(func.count())
            .select_from(KeyRow)
            .where(KeyRow.next_rotation_at < now - OVERDUE_AFTER)
        )
    return {
        "health": {
            "status": "healthy" if not overdue else "degraded",
            "activeKeys": active or 0,
            "rotationDueWithin24h": due_soon or 0,
            "overdueRotations": overdue or 0,
            "timestamp": _now_iso(),
        }
    }


@router.get("/api/key-management/health/handles")
async def handle_health(request: Request, svc: Svc) -> dict[str, Any]:
    """Active and suspended handle families, those ending within an hour, rotations due
    (checked at most every HEALTH_TTL seconds)."""
    checks: HealthChecks = request.app.state.health_checks
    return await checks.answer("handles", lambda: run_in_threadpool(_handle_health, svc))


def _handle_health(svc: Services) -> dict[str, Any]:
    counts = svc.credentials.handle_health(datetime.now(UTC))
    return {
        "health": {
            "status": "healthy" if not counts["suspendedHandles"] else "degraded",
            **counts,
            "timestamp": _now_iso(),
        }
    }


def _ping_store(svc: Services) -> None:
    with svc.store.session() as s:
        s.execute(text("SELECT 1"))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
