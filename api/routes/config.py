"""`/api/key-management/config`: the policy (config/keyrotor.toml) in force, its versions, and
replacing it. A new version is validated as a file would be, audited, and rolled out to the
running workflows by one `apply_policy` bulk operation per kind (followed with GET /bulk)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from api import schemas
from api.deps import Admin, Reader, Svc, temporal
from api.errors import APIError, temporal_failed
from core.bulk import bulk_workflow_id
from core.policy import PolicyError
from core.policy_versions import version_view
from core.services import Services
from core.store.models import PolicyVersionRow
from workflows.bulk import BulkInput, BulkOperationWorkflow

router = APIRouter(prefix="/api/key-management/config", tags=["config"])
ROLLOUT_RATE = 50  # workflows signalled a second, per kind


@router.get("")
async def get_config(
    svc: Svc, who: Reader, version: int | None = Query(default=None, ge=1)
) -> dict[str, Any]:
    """The policy in force (the newest version), or the version asked for."""
    versions = svc.policy_versions
    row: PolicyVersionRow | None
    if version is None:
        row = await run_in_threadpool(versions.newest)
    else:
        row = await run_in_threadpool(versions.get, version)
    if row is None:
        raise APIError(404, "CONFIG_NOT_FOUND", f"no policy version {version}")
    return {"config": version_view(row)}


@router.put("")
async def put_config(
    body: schemas.PutConfigRequest, svc: Svc, who: Admin, request: Request
) -> dict[str, Any]:
    """Make `toml` the policy in force; running workflows take it up through the rollout."""
    actor = body.user_id or who.name
    try:
        row, _, changed = await run_in_threadpool(
            svc.policy_versions.put, body.toml, actor, body.reason
        )
    except PolicyError as e:
        raise APIError(400, "INVALID_POLICY", f"{e.field}: {e.reason}") from None
    except IntegrityError:
        raise APIError(409, "CONFLICT", "another policy version was stored meanwhile") from None
    rollouts = []
    if changed:
        await run_in_threadpool(svc.refresh_policies)
        rollouts = await _roll_out(svc, request, row.version, actor)
    return {"config": version_view(row), "changed": changed, "rollouts": rollouts}


async def _roll_out(
    svc: Services, request: Request, version: int, actor: str
) -> list[dict[str, Any]]:
    reason = f"policy version {version}"
    operations = []
    client = await temporal(request)
    for kind in ("key", "credential", "handle"):
        op = await run_in_threadpool(
            svc.bulk.start, "apply_policy", kind, {}, reason, ROLLOUT_RATE, actor
        )
        try:
            await client.start_workflow(
                BulkOperationWorkflow.run,
                BulkInput(op["id"], "apply_policy", kind, reason, actor, ROLLOUT_RATE, 0, version),
                id=bulk_workflow_id(op["id"]),
                task_queue=svc.settings.task_queue,
            )
        except RPCError as e:
            await run_in_threadpool(svc.bulk.abandon, op["id"])
            failed = temporal_failed(e)
            raise APIError(
                503,
                "TEMPORAL_UNAVAILABLE",
                f"policy version {version} is stored, but its rollout did not start:"
                f" {failed.message}",
            ) from None
        operations.append(op)
    return operations
