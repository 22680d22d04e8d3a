"""`/api/key-management/cleanup`: the store's daily cleanup (`CleanupWorkflow`, run by the
schedule `keyrotor-cleanup/<task queue>`): its policy, what it would change now, its schedule
and its last run; and a run now."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from temporalio.client import (
    ScheduleActionExecutionStartWorkflow,
    ScheduleDescription,
    ScheduleOverlapPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Admin, Reader, Svc, temporal
from api.errors import APIError, temporal_failed
from api.routes.master_key import Job, job_view
from core.lifecycle import iso
from core.policy import format_duration
from core.services import Services
from workflows.cleanup import CleanupProgress, CleanupWorkflow, cleanup_schedule_id

router = APIRouter(prefix="/api/key-management/cleanup", tags=["cleanup"])
CLEANUP = Job(CleanupWorkflow.run, CleanupProgress, "cleanup")


@router.get("")
async def cleanup_status(svc: Svc, who: Reader, request: Request) -> dict[str, Any]:
    """The cleanup's policy, how much each step would change if it ran now, its schedule
    (next run, paused) and its last run with its progress or result."""
    try:
        described = await _schedule(request, svc)
    except APIError:
        return {"cleanup": await _store_view(svc) | {"schedule": {"status": "unknown"}}}
    return {"cleanup": await _view(request, svc, described)}


@router.post("/run", status_code=202)
async def run_cleanup(svc: Svc, who: Admin, request: Request) -> dict[str, Any]:
    """Run the cleanup now (the schedule's action, started at once; a run still going is
    answered, not started twice). Follow it with GET /cleanup."""
    described = await _schedule(request, svc)
    last = _last_run(described)
    if not described.info.running_actions:
        handle = (await temporal(request)).get_schedule_handle(cleanup_schedule_id(_queue(svc)))
        try:
            await handle.trigger(overlap=ScheduleOverlapPolicy.SKIP)
        except RPCError as e:
            raise temporal_failed(e) from None
        for _ in range(50):  # the schedule starts the run within a moment
            described = await _schedule(request, svc)
            if _last_run(described) != last:
                break
            await asyncio.sleep(0.1)
        started = _last_run(described)
        if started is not None and started != last:
            now = datetime.now(UTC)
            await run_in_threadpool(svc.cleanup.record_request, who.name, started, now)
    return {"cleanup": await _view(request, svc, described)}


async def _store_view(svc: Services) -> dict[str, Any]:
    """The policy and what is due: the store's part, answered while Temporal is down too."""
    policy = svc.policies.cleanup
    return {
        "policy": {
            "destroyAfter": format_duration(policy.destroy_after),
            "archiveAfter": format_duration(policy.archive_after),
            "eventRetention": format_duration(policy.event_retention),
        },
        "due": await run_in_threadpool(svc.cleanup.due, datetime.now(UTC)),
    }


def _queue(svc: Services) -> str:
    return svc.settings.task_queue


async def _schedule(request: Request, svc: Services) -> ScheduleDescription:
    client = await temporal(request)
    try:
        return await client.get_schedule_handle(cleanup_schedule_id(_queue(svc))).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise APIError(
                503, "WORKER_UNAVAILABLE", "no worker has made the cleanup schedule yet"
            ) from None
        raise temporal_failed(e) from None


def _last_run(described: ScheduleDescription) -> str | None:
    """The workflow id of the run going on, else of the last one; None before any."""
    runs = [*(r.action for r in described.info.recent_actions), *described.info.running_actions]
    ids = [a.workflow_id for a in runs if isinstance(a, ScheduleActionExecutionStartWorkflow)]
    return ids[-1] if ids else None


async def _view(request: Request, svc: Services, described: ScheduleDescription) -> dict[str, Any]:
    upcoming = described.info.next_action_times
    last = _last_run(described)
    return await _store_view(svc) | {
        "schedule": {
            "id": cleanup_schedule_id(_queue(svc)),
            "paused": described.schedule.state.paused,
            "nextRunAt": iso(upcoming[0]) if upcoming else None,
        },
        "lastRun": await job_view(request, CLEANUP, last) if last else None,
    }
