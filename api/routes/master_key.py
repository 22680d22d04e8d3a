"""Keys at rest: `/api/key-management/master-key`, the master keys the store knows and their
rotation (`MasterKeyRotationWorkflow` re-seals every blob under the current key, then retires
the older ones), and `/api/key-management/peppers`, the credential peppers the stored hashes
name and the forced part of a pepper rotation (`PepperRotationWorkflow`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fastapi import APIRouter, Request
from pydantic.alias_generators import to_camel as camel
from starlette.concurrency import run_in_threadpool
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from api import schemas
from api.deps import Admin, Reader, Svc, temporal
from api.errors import APIError, temporal_failed
from core.services import Services
from workflows.master_key import (
    MasterKeyRotationInput,
    MasterKeyRotationProgress,
    MasterKeyRotationWorkflow,
    rotation_workflow_id,
)
from workflows.pepper import (
    PepperRotationInput,
    PepperRotationProgress,
    PepperRotationWorkflow,
    pepper_workflow_id,
)

router = APIRouter(prefix="/api/key-management", tags=["keys at rest"])


@dataclass(frozen=True)
class Job:
    """One of the store's maintenance workflows: its run method and its progress type."""

    run: Any
    progress: type
    summary: str


ROTATION = Job(MasterKeyRotationWorkflow.run, MasterKeyRotationProgress, "re-seal under master key")
REHASH = Job(PepperRotationWorkflow.run, PepperRotationProgress, "re-hash under pepper")


@router.get("/master-key")
async def master_key_status(svc: Svc, who: Reader, request: Request) -> dict[str, Any]:
    """Each master key (ids only: current, previous, retired) with how many blobs in the
    store it sealed, and the rotation to the current key, if one was started."""
    status = await run_in_threadpool(svc.master_keys.status)
    workflow_id = rotation_workflow_id(status["current"])
    return {"masterKey": status, "rotation": await _job_or_unknown(request, ROTATION, workflow_id)}


@router.post("/master-key/rotate", status_code=202)
async def rotate_master_key(
    body: schemas.StoreJobRequest, svc: Svc, who: Admin, request: Request
) -> dict[str, Any]:
    """Re-seal everything under the current master key (the first of KEYROTOR_MASTER_KEY),
    then retire the others. Answers at once; follow it with GET /master-key. A rotation to
    this key that is still running is answered, not started twice."""
    current = svc.keyring.current_id
    arg = MasterKeyRotationInput(body.user_id or who.name, body.reason, body.batch_size)
    job = await _start(request, svc, ROTATION, arg, rotation_workflow_id(current), current)
    return {"rotation": job}


@router.get("/peppers")
async def pepper_status(svc: Svc, who: Reader, request: Request) -> dict[str, Any]:
    """Each credential pepper the stored hashes name (ids only): how many hashes it is the
    outermost pepper of, how many more need it underneath, and the re-hash job to the current
    pepper, if one was started."""
    status = await run_in_threadpool(svc.credentials.pepper_status)
    workflow_id = pepper_workflow_id(status["current"])
    return {"peppers": status, "rehash": await _job_or_unknown(request, REHASH, workflow_id)}


@router.post("/peppers/rehash", status_code=202)
async def rehash_under_current_pepper(
    body: schemas.StoreJobRequest, svc: Svc, who: Admin, request: Request
) -> dict[str, Any]:
    """Re-hash every stored hash not under the current pepper (the first of
    KEYROTOR_CREDENTIAL_PEPPER) under it, without the secrets. Answers at once; follow it with
    GET /peppers."""
    current = svc.credentials.current_pepper_id
    arg = PepperRotationInput(body.user_id or who.name, body.reason, body.batch_size)
    job = await _start(request, svc, REHASH, arg, pepper_workflow_id(current), current)
    return {"rehash": job}


async def _start(
    request: Request, svc: Services, job: Job, arg: Any, workflow_id: str, target: str
) -> dict[str, Any] | None:
    """Start `job` (or find the run of it that is still going) and answer its view."""
    try:
        client = await temporal(request)
        await client.start_workflow(
            job.run,
            arg,
            id=workflow_id,
            task_queue=svc.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"{job.summary} {target}",
        )
    except RPCError as e:
        raise temporal_failed(e) from None
    return await job_view(request, job, workflow_id)


async def _job_or_unknown(request: Request, job: Job, workflow_id: str) -> dict[str, Any] | None:
    """`job_view`, or status unknown while Temporal is unreachable (the store's view answers)."""
    try:
        return await job_view(request, job, workflow_id)
    except APIError:
        return {"workflowId": workflow_id, "status": "unknown"}


async def job_view(request: Request, job: Job, workflow_id: str) -> dict[str, Any] | None:
    """A maintenance job's workflow: its status and progress (the query `progress` while it
    runs, its result once done); None when it was never started."""
    client = await temporal(request)
    handle = client.get_workflow_handle_for(job.run, workflow_id)
    try:
        described = await handle.describe()
        if described.status == WorkflowExecutionStatus.COMPLETED:
            progress = await handle.result()
        elif described.status == WorkflowExecutionStatus.RUNNING:
            progress = await handle.query("progress", result_type=job.progress)
        else:
            progress = None
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise temporal_failed(e) from None
    view: dict[str, Any] = {
        "workflowId": workflow_id,
        "status": described.status.name.lower() if described.status else "unknown",
    }
    if progress is not None:
        fields = asdict(progress).items()
        view |= {camel(k): list(v) if isinstance(v, tuple) else v for k, v in fields}
    return view
