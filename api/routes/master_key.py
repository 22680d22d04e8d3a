"""`/api/key-management/master-key`: the master keys the store knows, and their rotation (a
durable `MasterKeyRotationWorkflow` that re-seals every blob under the current key and then
retires the older ones)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from api import schemas
from api.deps import Admin, Reader, Svc, temporal
from api.errors import APIError
from workflows.master_key import (
    MasterKeyRotationInput,
    MasterKeyRotationWorkflow,
    rotation_workflow_id,
)

router = APIRouter(prefix="/api/key-management/master-key", tags=["master key"])


@router.get("")
async def master_key_status(svc: Svc, who: Reader, request: Request) -> dict[str, Any]:
    """Each master key (ids only: current, previous, retired) with how many blobs in the
    store it sealed, and the rotation to the current key, if one was started."""
    status = await run_in_threadpool(svc.master_keys.status)
    try:
        rotation = await _rotation(request, status["current"])
    except APIError:  # Temporal is unreachable: the store's view still answers
        rotation = {"workflowId": rotation_workflow_id(status["current"]), "status": "unknown"}
    return {"masterKey": status, "rotation": rotation}


@router.post("/rotate", status_code=202)
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
    client = await temporal(request)
    handle = client.get_workflow_handle_for(
        MasterKeyRotationWorkflow.run, rotation_workflow_id(current)
    )
    try:
        described = await handle.describe()
        if described.status == WorkflowExecutionStatus.COMPLETED:
            progress = await handle.result()
        elif described.status == WorkflowExecutionStatus.RUNNING:
            progress = await handle.query(MasterKeyRotationWorkflow.progress)
        else:
            progress = None
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise APIError(503, "TEMPORAL_UNAVAILABLE", "the lifecycle service failed") from None
    view: dict[str, Any] = {
        "workflowId": handle.id,
        "status": described.status.name.lower() if described.status else "unknown",
    }
    if progress is not None:
        view |= {
            "column": progress.column,
            "scanned": progress.scanned,
            "resealed": progress.resealed,
            "retired": list(progress.retired),
            "done": progress.done,
        }
    return view
