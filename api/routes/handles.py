"""`/api/key-management/handles`: short-lived handles (001_019c7eb82d54c46f.txt).

A handle family is owned by a `HandleLifecycleWorkflow`; its values are bearer secrets stored
as keyed hashes. Validation reads the store only; the API reaches the workflow on validation
only when a threshold is crossed: a reuse of an exchanged value revokes the family, and the
anomaly threshold suspends it.

In the answers of generate and rotate, the handle's `id` is its value (`krh_...`, shown once,
as in the reference client); everywhere else, paths included, a handle is named by its
`familyId` (`hdl_...`): values travel only in request and response bodies, never in URLs.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from temporalio.common import WorkflowIDConflictPolicy

from api import schemas
from api.auth import Permission, hot_request
from api.deps import Operator, Reader, Svc, temporal
from api.errors import APIError
from api.lifecycle import (
    add_status_routes,
    new_environment,
    paged,
    parse_cursor,
    run_update,
    start_and_wait_created,
)
from core.api_credentials import HandleCode, HandleValidation, new_credential_id
from core.credentials import Role
from core.lifecycle import VersionState, iso, new_key
from core.objects import CredentialSpec
from core.services import Services
from core.store.models import CredentialRow, CredentialVersionRow
from workflows.types import (
    HANDLE_WORKFLOW,
    CredentialWorkflowInput,
    OperatorAction,
    RotateRequest,
    RotationResult,
    credential_search_attributes,
    credential_workflow_id,
)

log = logging.getLogger("keyrotor.api")
router = APIRouter(prefix="/api/key-management/handles", tags=["handles"])


def handle_view(
    c: CredentialRow, versions: list[CredentialVersionRow], value: str | None = None
) -> dict[str, Any]:
    """The public shape of a handle family; `value` only in the answer that hands it out."""
    current = next((v for v in versions if v.number == c.current_version), None)
    view: dict[str, Any] = {"id": value, "value": value} if value else {}
    return view | {
        "familyId": c.id,
        "type": c.type,
        "userId": c.user_id,
        "environment": c.environment,
        "status": c.status,
        "version": c.current_version,
        "context": c.context,
        "maxUsage": c.max_usage,
        "remainingUses": (
            max(0, c.max_usage - current.uses) if current and c.max_usage is not None else None
        ),
        "rotationDueAt": iso(current.rotate_at) if current else None,
        "createdAt": iso(c.created_at),
        "expiresAt": iso(c.expires_at),
        "usage": {
            "count": c.usage_count,
            "failures": c.failure_count,
            "lastUsedAt": iso(c.last_used_at),
        },
        "anomalies": c.anomaly_count,
        "createdBy": c.created_by,
        "workflowId": c.workflow_id,
        "versions": [
            {
                "version": v.number,
                "state": v.state,
                "uses": v.uses,
                "createdAt": iso(v.created_at),
                "graceUntil": iso(v.grace_until),
                "stateChangedAt": iso(v.state_changed_at),
            }
            for v in versions
        ],
    }


def _context(raw: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw.items()}


def validation_view(v: HandleValidation) -> dict[str, Any]:
    view: dict[str, Any] = {"valid": v.valid, "code": str(v.code)}
    if v.handle_id is not None:
        view |= {
            "familyId": v.handle_id,
            "type": v.type,
            "userId": v.user_id,
            "version": v.version,
            "expiresAt": iso(v.expires_at),
            "rotationRequired": v.rotation_required,
            "rotationDueAt": iso(v.rotation_due_at),
            "remainingUses": v.remaining_uses,
            "contextMatch": v.context_match,
        }
    if v.retry_after is not None:
        view["retryAfterSeconds"] = round(v.retry_after, 3)
    return view


async def _signal(request: Request, workflow_id: str, name: str, reason: str) -> None:
    """Tell a family's workflow that a threshold was crossed; validation answers either way."""
    try:
        client = await temporal(request)
        await client.get_workflow_handle(workflow_id).signal(
            name, OperatorAction(reason=reason, actor="keyrotor-api")
        )
    except Exception as e:  # Temporal down: the answer stands, the change waits for an operator
        log.error("could not signal %s to %s: %s", name, workflow_id, type(e).__name__)


async def _after_validation(request: Request, svc: Services, v: HandleValidation) -> None:
    security = svc.policies.security
    if v.code == HandleCode.REUSE_DETECTED:
        await _signal(request, v.workflow_id, "revoke", "reuse of an exchanged handle value")
    elif (
        security.anomaly_detection
        and v.anomaly is not None
        and v.anomalies >= security.anomaly_threshold
    ):  # signalled again by each further anomaly until the family is suspended
        await _signal(request, v.workflow_id, "suspend", f"{v.anomalies} anomalies")


async def validate_handle(request: Request) -> JSONResponse:
    """Is this handle valid for `userId` in `context`? Always 200; the answer is in `valid`
    and `code`. Never waits for Temporal. Needs the `verify` permission (admin, operator,
    service); authorizes and parses by hand like `/credentials/verify`."""
    body = await hot_request(request, Permission.VERIFY, schemas.ValidateHandleRequest)
    svc: Services = request.app.state.services
    v = await run_in_threadpool(
        svc.credentials.validate_handle,
        body.handle_id,
        body.user_id,
        _context(body.context),
        svc.policies.security,
    )
    await _after_validation(request, svc, v)
    request.app.state.metrics.result("handle", str(v.code))
    headers = None if v.retry_after is None else {"Retry-After": str(max(1, round(v.retry_after)))}
    return JSONResponse({"validation": validation_view(v)}, headers=headers)


@router.post("/generate", status_code=201)
async def generate_handle(
    body: schemas.GenerateHandleRequest, svc: Svc, who: Operator, request: Request
) -> dict[str, Any]:
    """Issue a handle of `type` to `userId`, bound to `context`; answers with its value once."""
    policy = svc.policies.handle_type(body.type)
    security = svc.policies.security
    environment = new_environment(svc, body.environment)
    user_id = body.user_id or who.name
    live = await run_in_threadpool(svc.credentials.live_handles, user_id, policy.name)
    if live >= security.max_concurrent_handles:
        raise APIError(
            409,
            "TOO_MANY_HANDLES",
            f"{user_id} holds {live} live {policy.name} handles, the most allowed",
        )
    now = datetime.now(UTC)
    lifecycle = new_key(policy.lifecycle(security), now, now + policy.max_lifetime)
    spec = CredentialSpec(
        credential_id=new_credential_id("hdl_"),
        environment=environment,
        kind="handle",
        type=policy.name,
        user_id=user_id,
        context=_context(body.context),
        max_usage=policy.max_usage,
        hash_algorithm=policy.algorithm,
        secret_bytes=policy.handle_length,
        created_by=who.name,
    )
    await start_and_wait_created(
        request,
        HANDLE_WORKFLOW,
        CredentialWorkflowInput(
            spec=spec,
            lifecycle=lifecycle,
            policy_version=svc.policy_version,
            skip_unchanged_search_attributes=True,
        ),
        workflow_id=credential_workflow_id(environment, spec.credential_id, "handle"),
        search_attributes=credential_search_attributes(spec, "active", None),
        name=spec.credential_id,
        summary=f"{policy.name} handle of {user_id}",
        what=f"handle {spec.credential_id}",
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )
    value = await run_in_threadpool(svc.credentials.claim_secret, spec.credential_id, 1, who.name)
    row, versions = await run_in_threadpool(svc.credentials.get, spec.credential_id, "handle")
    if value is None:  # a new family's first value: only this request can have taken it
        raise APIError(500, "INTERNAL", "the new handle's value was not available")
    return {"handle": handle_view(row, versions, value)}


@router.get("")
def list_handles(
    svc: Svc,
    who: Reader,
    type: str | None = Query(default=None, max_length=64),
    status: str | None = Query(default=None, pattern="^(active|suspended|revoked|expired)$"),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=100_000),
    cursor: str | None = None,
) -> dict[str, Any]:
    """Handle families, newest first (no values); `nextCursor` continues the list."""
    after = parse_cursor(cursor) if cursor else None
    rows = svc.credentials.list_credentials(
        kind="handle",
        type=type,
        owner=None,
        status=status,
        limit=limit + 1,
        offset=offset,
        after=after,
    )
    return paged("handles", rows, limit, offset, lambda c: handle_view(c, []))


@router.get("/statistics")
def handle_statistics(svc: Svc, who: Reader) -> dict[str, Any]:
    """Families by status and type, validations, failed validations and anomalies."""
    return {"statistics": svc.credentials.handle_statistics()}


async def _exchanged_version(request: Request, svc: Services, family_id: str, value: str) -> int:
    """The version of a presented value of this family, if it may be exchanged now.

    A reuse of an exchanged value (past the reuse interval) revokes the family."""
    row, code = await run_in_threadpool(svc.credentials.handle_state, value, svc.policies.security)
    if row is None or code == HandleCode.NOT_FOUND or row.id != family_id:
        raise APIError(404, "HANDLE_NOT_FOUND", "no such handle in this family")
    if code == HandleCode.REUSE_DETECTED:
        await _after_validation(
            request, svc, HandleValidation(code, row.id, workflow_id=row.workflow_id)
        )
    if code is not None:
        raise APIError(409, "HANDLE_STATE", f"the handle cannot be exchanged: {code}")
    if row.state != VersionState.ACTIVE:
        raise APIError(409, "HANDLE_STATE", "this handle value was exchanged already")
    return int(row.number)


@router.get("/{family_id}")
def get_handle(family_id: str, svc: Svc, who: Reader) -> dict[str, Any]:
    """A handle family with its versions (states and use counts; never values)."""
    cred, versions = svc.credentials.get(family_id, "handle")
    return {"handle": handle_view(cred, versions)}


@router.post("/{family_id}/rotate")
async def rotate_handle(
    family_id: str,
    request: Request,
    svc: Svc,
    who: Operator,
    body: schemas.RotateHandleRequest | None = None,
) -> dict[str, Any]:
    """Exchange a handle for the next one. With `handle` (the holder's current value, as in a
    refresh-token exchange) that value is exchanged once; without it (an admin only) the
    current value is replaced and the holder's value then counts as reused. The old value stays
    valid for the reuse interval; presented after it, it revokes the family."""
    body = body or schemas.RotateHandleRequest()
    if body.handle is None and who.role != Role.ADMIN:
        # the answer carries the next value: without the current one, only an admin gets it
        raise APIError(403, "FORBIDDEN", "present the current value (handle) or be an admin")
    workflow_id, _ = await run_in_threadpool(svc.credentials.workflow_of, family_id, "handle")
    version = await _exchanged_version(request, svc, family_id, body.handle) if body.handle else 0
    grace = int(svc.policies.security.reuse_interval.total_seconds())
    result: RotationResult = await run_update(
        request,
        workflow_id,
        "rotate",
        RotateRequest(
            reason="manual",
            comment=body.reason,
            grace_period_seconds=grace,
            actor=body.user_id or who.name,
            expected_version=version,
        ),
        result_type=RotationResult,
    )
    svc.credentials.forget(family_id)
    value = await run_in_threadpool(
        svc.credentials.claim_secret, family_id, result.to_version, who.name
    )
    row, versions = await run_in_threadpool(svc.credentials.get, family_id, "handle")
    if value is None:
        raise APIError(409, "HANDLE_STATE", "the new handle value was handed out already")
    return {
        "handle": handle_view(row, versions, value),
        "rotation": {"fromVersion": result.from_version, "toVersion": result.to_version},
    }


def _handle_workflow(svc: Services, family_id: str) -> str:
    return svc.credentials.workflow_of(family_id, "handle")[0]


def _handle_answer(svc: Services, family_id: str) -> dict[str, Any]:
    return {"handle": handle_view(*svc.credentials.get(family_id, "handle"))}


def _forget_handle(svc: Services, family_id: str) -> None:
    svc.credentials.forget(family_id)


add_status_routes(router, "family_id", _handle_workflow, _handle_answer, _forget_handle)
