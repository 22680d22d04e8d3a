"""`/api/key-management/credentials`: API keys whose workflows rotate them; verify from the store.

A new secret reaches its requester exactly once: the workflow's commit stores it sealed, and the
route that asked for it (create, rotate) takes it out of the store and answers with it. A
scheduled rotation's secret waits, sealed, for its owner's `POST /{id}/reveal` until the old
secret's grace ends.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError, RPCStatusCode

from api import schemas
from api.auth import Permission, hot_request
from api.deps import Admin, Operator, Reader, Svc, temporal
from api.errors import APIError, temporal_failed
from api.lifecycle import (
    add_status_routes,
    new_environment,
    paged,
    parse_cursor,
    run_update,
    start_and_wait_created,
    start_staged,
)
from core.api_credentials import (
    AlreadyImportedError,
    Verification,
    WriteNeeded,
    new_credential_id,
)
from core.credentials import AdminPrincipal, Role
from core.keys import derived_id
from core.lifecycle import (
    KeyLifecycle,
    LifecycleError,
    RotationReason,
    iso,
    may_rotate,
    new_key,
)
from core.objects import CredentialSpec
from core.policy import parse_duration
from core.services import Services
from core.store.models import CredentialRow, CredentialVersionRow
from workflows.types import (
    CREDENTIAL_WORKFLOW,
    CredentialWorkflowInput,
    RotateRequest,
    RotationResult,
    credential_search_attributes,
    credential_workflow_id,
)

router = APIRouter(prefix="/api/key-management/credentials", tags=["credentials"])


def credential_view(
    c: CredentialRow, versions: list[CredentialVersionRow] | None = None
) -> dict[str, Any]:
    """The public shape of a credential: never a secret, a hash or a salt."""
    view: dict[str, Any] = {
        "id": c.id,
        "name": c.name,
        "owner": c.owner,
        "environment": c.environment,
        "scopes": list(c.scopes),
        "metadata": c.metadata_,
        "status": c.status,
        "version": c.current_version,
        "scheduledRotation": c.scheduled_rotation,
        "rateLimit": (
            {"limit": c.rate_limit, "durationSeconds": c.rate_limit_window}
            if c.rate_limit is not None
            else None
        ),
        "usageLimit": c.usage_limit,
        "remaining": c.remaining,
        "usage": {
            "count": c.usage_count,
            "failures": c.failure_count,
            "lastUsedAt": iso(c.last_used_at),
        },
        "createdAt": iso(c.created_at),
        "updatedAt": iso(c.updated_at),
        "expiresAt": iso(c.expires_at),
        "nextRotationAt": iso(c.next_rotation_at),
        "createdBy": c.created_by,
        "workflowId": c.workflow_id,
    }
    if versions is not None:
        view["versions"] = [
            {
                "version": v.number,
                "state": v.state,
                "createdAt": iso(v.created_at),
                "graceUntil": iso(v.grace_until),
                "hardExpiry": iso(v.hard_expiry),
                "stateChangedAt": iso(v.state_changed_at),
            }
            for v in versions
        ]
    return view


def _may_receive_secrets(who: AdminPrincipal, cred: CredentialRow) -> None:
    """Secrets of a credential go to its owner (an admin key named like the credential's
    `owner`) or an admin, nobody else: a reroll and a reveal hand one out."""
    if who.role != Role.ADMIN and (not cred.owner or who.name != cred.owner):
        raise APIError(
            403, "FORBIDDEN", "only the credential's owner or an admin may receive its secrets"
        )


def _seconds(field: str, text: str) -> int:
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as e:
        raise APIError(400, "INVALID_REQUEST", f"{field}: {e}") from None


def verification_view(v: Verification) -> dict[str, Any]:
    view: dict[str, Any] = {"valid": v.valid, "code": str(v.code)}
    if v.credential_id is not None:
        view |= {
            "credentialId": v.credential_id,
            "version": v.version,
            "environment": v.environment,
            "name": v.name,
            "owner": v.owner,
            "scopes": list(v.scopes),
            "metadata": v.metadata,
            "expiresAt": iso(v.expires_at),
            "remaining": v.remaining,
        }
    if v.retry_after is not None:
        view["retryAfterSeconds"] = round(v.retry_after, 3)
    return view


async def verify_credential(request: Request) -> JSONResponse:
    """Is this API key valid (and does it have these scopes)? Always 200: the answer is in
    `valid` and `code`. Never touches Temporal. Needs the `verify` permission (admin,
    operator, service).

    The hottest route: it runs on the event loop (one indexed read, none for a cached row, and
    one HMAC cost less than a hop to a worker thread; a credential that needs a write goes to a
    thread), authorizes and parses by hand (`hot_request`) and builds its answer directly."""
    body = await hot_request(request, Permission.VERIFY, schemas.VerifyCredentialRequest)
    svc: Services = request.app.state.services
    try:
        v = svc.credentials.verify(body.key, body.scopes, writes=False)
    except WriteNeeded:  # a usage or rate limit, a re-hash: they may wait for the store or Redis
        v = await run_in_threadpool(svc.credentials.verify, body.key, body.scopes)
    request.app.state.metrics.result("credential", str(v.code))
    headers = None if v.retry_after is None else {"Retry-After": str(max(1, round(v.retry_after)))}
    return JSONResponse({"verification": verification_view(v)}, headers=headers)


@router.post("", status_code=201)
async def create_credential(
    body: schemas.CreateCredentialRequest,
    svc: Svc,
    who: Operator,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """Create an API credential; the answer carries its secret, shown this once only."""
    credential_id = (
        derived_id("cred_", who.key_id, idempotency_key) if idempotency_key else new_credential_id()
    )
    spec, lifecycle = _new_credential(body, svc, who, credential_id)
    await _start_credential(request, svc, spec, lifecycle)
    secret = await run_in_threadpool(svc.credentials.claim_secret, spec.credential_id, 1, who.name)
    cred, versions = await run_in_threadpool(svc.credentials.get, spec.credential_id)
    if secret is None:
        raise APIError(
            409,
            "SECRET_ALREADY_SHOWN",
            f"credential {cred.id} was made by an earlier request with this Idempotency-Key "
            "and its secret was shown then; rotate it for a new one",
        )
    return {"credential": credential_view(cred, versions), "secret": secret}


@router.post("/import", status_code=201)
async def import_credential(
    body: schemas.ImportCredentialRequest, svc: Svc, who: Admin, request: Request
) -> dict[str, Any]:
    """Bring an existing API key under keyrotor's lifecycle, by the SHA-256 its old system
    stored: the holder keeps using the same key, which becomes version 1 of a new credential
    (audited as `credential.imported`), verified by `/verify` like any other. Its workflow
    rotates it from then on; a rotation hands out a keyrotor key and keeps the old one in grace.
    The key itself is never sent. 409 ALREADY_IMPORTED if a credential holds this hash."""
    digest = _sha256(body.sha256)
    spec, lifecycle = _new_credential(body, svc, who, new_credential_id(), origin="imported")
    workflow_id = credential_workflow_id(spec.environment, spec.credential_id)

    def stage() -> None:
        svc.credentials.stage_import(spec, lifecycle, digest, workflow_id)

    try:
        await run_in_threadpool(stage)
    except AlreadyImportedError as e:
        if not (e.staged and await _abandoned(request, svc, e.credential_id)):
            raise APIError(409, "ALREADY_IMPORTED", str(e)) from None
        # an earlier import of this key stopped before its workflow existed: take its place
        await run_in_threadpool(svc.credentials.unstage_import, e.credential_id)
        try:
            await run_in_threadpool(stage)
        except AlreadyImportedError as again:
            raise APIError(409, "ALREADY_IMPORTED", str(again)) from None
    await start_staged(
        _start_credential(request, svc, spec, lifecycle),
        lambda: svc.credentials.unstage_import(spec.credential_id),
    )
    cred, versions = await run_in_threadpool(svc.credentials.get, spec.credential_id)
    return {"credential": credential_view(cred, versions)}


async def _abandoned(request: Request, svc: Services, credential_id: str) -> bool:
    """Whether a staged import has no workflow (its request stopped before Temporal had it)."""
    workflow_id, _ = await run_in_threadpool(svc.credentials.workflow_of, credential_id)
    try:
        await (await temporal(request)).get_workflow_handle(workflow_id).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return True
        raise temporal_failed(e) from None
    return False


def _sha256(value: str) -> bytes:
    """A SHA-256 given as 64 hex digits or as base64 (as Unkey stores it)."""
    try:
        digest = (
            bytes.fromhex(value) if len(value) == 64 else base64.b64decode(value, validate=True)
        )
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 32:
        raise APIError(
            400, "INVALID_HASH", "sha256 must be a SHA-256: 64 hex digits or 44 base64 characters"
        )
    return digest


def _new_credential(
    body: schemas.CreateCredentialRequest,
    svc: Services,
    who: AdminPrincipal,
    credential_id: str,
    origin: str = "generated",
) -> tuple[CredentialSpec, KeyLifecycle]:
    """The spec and first lifecycle of a new credential, from a request checked against the
    policy."""
    policy = svc.policies.credentials
    environment = new_environment(svc, body.environment)
    rate_limit = rate_window = None
    if body.rate_limit is not None:
        rate_limit = body.rate_limit.limit
        rate_window = _seconds("rateLimit.duration", body.rate_limit.duration)
        if not 1 <= rate_window <= 86400:
            raise APIError(400, "INVALID_REQUEST", "rateLimit.duration must be 1 s to 1 day")
    now = datetime.now(UTC)
    expires_at = body.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        raise APIError(400, "INVALID_REQUEST", "expiresAt needs a timezone (e.g. Z)")
    if not body.scheduled_rotation:
        # without rotation a secret lives as long as its credential: at most max_lifetime
        latest = now + policy.max_lifetime
        if expires_at is not None and expires_at > latest:
            raise APIError(
                400,
                "INVALID_REQUEST",
                "expiresAt is past the max lifetime of a secret that does not rotate "
                f"({policy.max_lifetime.days} days); set scheduledRotation or an earlier expiry",
            )
        expires_at = expires_at or latest
    try:
        lifecycle = new_key(policy.lifecycle(scheduled=body.scheduled_rotation), now, expires_at)
    except LifecycleError as e:
        raise APIError(400, "INVALID_REQUEST", str(e)) from None
    spec = CredentialSpec(
        credential_id=credential_id,
        environment=environment,
        name=body.name,
        owner=body.owner,
        scopes=tuple(dict.fromkeys(body.scopes)),
        metadata={str(k): str(v) for k, v in body.metadata.items()},
        created_by=body.user_id or who.name,
        scheduled_rotation=body.scheduled_rotation,
        rate_limit=rate_limit,
        rate_limit_window=rate_window,
        usage_limit=body.usage_limit,
        origin=origin,
    )
    return spec, lifecycle


async def _start_credential(
    request: Request, svc: Services, spec: CredentialSpec, lifecycle: KeyLifecycle
) -> None:
    """Start the credential's workflow and wait until it has committed version 1."""
    await start_and_wait_created(
        request,
        CREDENTIAL_WORKFLOW,
        CredentialWorkflowInput(
            spec=spec,
            lifecycle=lifecycle,
            policy_version=svc.policy_version,
            skip_unchanged_search_attributes=True,
        ),
        workflow_id=credential_workflow_id(spec.environment, spec.credential_id),
        search_attributes=credential_search_attributes(spec, "active", None),
        name=spec.name or spec.credential_id,
        summary=f"API credential {spec.name or spec.credential_id}",
        what=f"credential {spec.credential_id}",
    )


@router.get("")
def list_credentials(
    svc: Svc,
    who: Reader,
    owner: str | None = Query(default=None, max_length=200),
    status: str | None = Query(default=None, pattern="^(active|suspended|revoked|expired)$"),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=100_000),
    cursor: str | None = None,
) -> dict[str, Any]:
    """Newest first; pass `nextCursor` back as `cursor` for the next page."""
    after = parse_cursor(cursor) if cursor else None
    rows = svc.credentials.list_credentials(
        owner=owner, status=status, limit=limit + 1, offset=offset, after=after
    )
    return paged("credentials", rows, limit, offset, credential_view)


@router.get("/{credential_id}")
def get_credential(credential_id: str, svc: Svc, who: Reader) -> dict[str, Any]:
    """A credential with its versions (states and deadlines only)."""
    cred, versions = svc.credentials.get(credential_id)
    return {"credential": credential_view(cred, versions)}


@router.post("/{credential_id}/rotate")
async def rotate_credential(
    credential_id: str,
    svc: Svc,
    who: Operator,
    request: Request,
    body: schemas.RotateCredentialRequest | None = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """Reroll: a new secret now; the old one keeps verifying for the grace period (the
    policy's unless `gracePeriod` is given) and shares the usage budget with the new one.
    The new secret is in the answer, so only the owner or an admin may reroll."""
    body = body or schemas.RotateCredentialRequest()
    cred, _ = await run_in_threadpool(svc.credentials.get, credential_id)
    _may_receive_secrets(who, cred)
    workflow_id, status = cred.workflow_id, cred.status
    reasons = {r.value for r in RotationReason}
    reason, comment = (body.reason, "") if body.reason in reasons else ("manual", body.reason)
    if not may_rotate(status, reason):
        raise APIError(409, "CREDENTIAL_STATE", f"a {status} credential cannot rotate")
    grace = None if body.grace_period is None else _seconds("gracePeriod", body.grace_period)
    result: RotationResult = await run_update(
        request,
        workflow_id,
        "rotate",
        RotateRequest(
            reason=reason,
            comment=comment,
            grace_period_seconds=grace,
            actor=body.user_id or who.name,
            request_id=idempotency_key or "",
        ),
        id=f"rotate/{idempotency_key}" if idempotency_key else None,
        result_type=RotationResult,
    )
    svc.credentials.forget(credential_id)
    secret = await run_in_threadpool(
        svc.credentials.claim_secret, credential_id, result.to_version, who.name
    )
    if secret is None:
        raise APIError(
            409,
            "SECRET_ALREADY_SHOWN",
            f"version {result.to_version} was already handed out (an earlier request with "
            "this Idempotency-Key, or a reveal)",
        )
    cred, versions = await run_in_threadpool(svc.credentials.get, credential_id)
    return {
        "credential": credential_view(cred, versions),
        "secret": secret,
        "rotation": {"fromVersion": result.from_version, "toVersion": result.to_version},
    }


@router.post("/{credential_id}/reveal")
def reveal_credential(credential_id: str, svc: Svc, who: Operator) -> dict[str, Any]:
    """Hand out a secret nobody received yet (a scheduled or emergency rotation), once, to its
    owner (an admin key whose name is the credential's owner) or an admin."""
    cred, _ = svc.credentials.get(credential_id)
    _may_receive_secrets(who, cred)
    secret = svc.credentials.claim_secret(credential_id, cred.current_version, who.name)
    if secret is None:
        raise APIError(
            409,
            "NOTHING_TO_REVEAL",
            "the current secret was handed out already, or its reveal window has passed",
        )
    cred, versions = svc.credentials.get(credential_id)
    return {"credential": credential_view(cred, versions), "secret": secret}


def _credential_workflow(svc: Services, credential_id: str) -> str:
    return svc.credentials.workflow_of(credential_id)[0]


def _credential_answer(svc: Services, credential_id: str) -> dict[str, Any]:
    return {"credential": credential_view(*svc.credentials.get(credential_id))}


def _forget_credential(svc: Services, credential_id: str) -> None:
    svc.credentials.forget(credential_id)


add_status_routes(
    router, "credential_id", _credential_workflow, _credential_answer, _forget_credential
)
