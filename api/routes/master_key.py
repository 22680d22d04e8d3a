"""Keys at rest: `/api/key-management/master-key`, the master keys the store knows and their
rotation (`MasterKeyRotationWorkflow` re-seals every blob under the current key, then retires
the older ones), and `/api/key-management/peppers`, the credential peppers the stored hashes
name and the forced part of a pepper rotation (`PepperRotationWorkflow`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic.alias_generators import to_camel as camel
from starlette.concurrency import run_in_threadpool
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from api import schemas
from api.deps import Admin, Reader, Svc, temporal
from api.errors import APIError
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


@router.get("/master-key")
async def master_key_status(svc: Svc, who: Reader, request: Request) -> dict[str, Any]:
    """Each master key (ids only: current, previous, retired) with how many blobs in the
    store it sealed, and the rotation to the current key, if one was started."""
    status = await run_in_threadpool(svc.master_keys.status)
    try:
        rotation = await _rotation(request, status["current"])
    except APIError:  # Temporal is unreachable: the store's view still answers
        rotation = {"workflowId": rotation_workflow_id(status["current"]), "status": "unknown"}
    return {"masterKey": status, "rotation": rotation}


@router.post("/master-key/rotate", status_code=202)
async def rotate_master_key(
    body: schemas.RotateMasterKeyRequest, svc: Svc, who: Admin, request: Request
) -> dict[str, Any]:
    """Re-seal everything under the current master key (the first of KEYROTOR_MASTER_KEY),
    then retire the others. Answers at once; follow it with GET /master-key. A rotation to
    this key that is still running is answered, not started twice."""
    current = svc.keyring.current_id
    try:
        client = await temporal(request)
        await client.start_workflow(
            MasterKeyRotationWorkflow.run,
            MasterKeyRotationInput(body.user_id or who.name, body.reason, body.batch_size),
            id=rotation_workflow_id(current),
            task_queue=svc.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"re-seal under master key {current}",
        )
    except RPCError:
        raise APIError(503, "TEMPORAL_UNAVAILABLE", "the lifecycle service failed") from None
    return {"rotation": await _rotation(request, current)}


async def _rotation(request: Request, current: str) -> dict[str, Any] | None:
    return await _job(
        request,
        rotation_workflow_id(current),
        MasterKeyRotationWorkflow.run,
        MasterKeyRotationProgress,
    )


async def _job(
    request: Request, workflow_id: str, run: Any, progress_type: type
) -> dict[str, Any] | None:
    """A maintenance job's workflow: its status and progress (the query `progress` while it
    runs, its result once done); None when it was never started."""
    client = await temporal(request)
    handle = client.get_workflow_handle_for(run, workflow_id)
    try:
        described = await handle.describe()
        if described.status == WorkflowExecutionStatus.COMPLETED:
            progress = await handle.result()
        elif described.status == WorkflowExecutionStatus.RUNNING:
            progress = await handle.query("progress", result_type=progress_type)
        else:
            progress = None
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise APIError(503, "TEMPORAL_UNAVAILABLE", "the lifecycle service failed") from None
    view: dict[str, Any] = {
        "workflowId": workflow_id,
        "status": described.status.name.lower() if described.status else "unknown",
    }
    if progress is not None:
        view |= {
            camel(k): list(v) if isinstance(v, tuple) else v for k, v in asdict(progress).items()
        }
    return view


@router.get("/peppers")
async def pepper_status(svc: Svc, who: Reader, request: Request) -> dict[str, Any]:
    """Each credential pepper the stored hashes name (ids only): how many hashes it is the
    outermost pepper of, how many more need it underneath, and the re-hash job to the current
    pepper, if one was started."""
    status = await run_in_threadpool(svc.credentials.pepper_status)
    workflow_id = pepper_workflow_id(status["current"])
    try:
        job = await _job(request, workflow_id, PepperRotationWorkflow.run, PepperRotationProgress)
    except APIError:
        job = {"workflowId": workflow_id, "status": "unknown"}
    return {"peppers": status, "rehash": job}


@router.post("/peppers/rehash", status_code=202)
async def rehash_under_current_pepper(
    body: schemas.RotateMasterKeyRequest, svc: Svc, who: Admin, request: Request
) -> dict[str, Any]:
    """Re-hash every stored hash not under the current pepper (the first of
    KEYROTOR_CREDENTIAL_PEPPER) under it, without the secrets. Answers at once; follow it with
    GET /peppers."""
    workflow_id = pepper_workflow_id(svc.credentials.current_pepper_id)
    try:
        client = await temporal(request)
        await client.start_workflow(
            PepperRotationWorkflow.run,
            PepperRotationInput(body.user_id or who.name, body.reason, body.batch_size),
            id=workflow_id,
            task_queue=svc.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary="re-hash stored credential hashes under the current pepper",
        )
    except RPCError:
        raise APIError(503, "TEMPORAL_UNAVAILABLE", "the lifecycle service failed") from None
    return {
        "rehash": await _job(
            request, workflow_id, PepperRotationWorkflow.run, PepperRotationProgress
        )
    }
