"""`/api/key-management/keys`: lifecycle through the key's workflow, use straight from the store."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.auth import Permission, hot_request
from api.deps import Admin, Operator, Reader, Svc, User
from api.errors import APIError
from api.lifecycle import (
    add_status_routes,
    new_environment,
    paged,
    parse_cursor,
    run_update,
    seen_everywhere,
    start_and_wait_created,
    start_staged,
)
from core.algorithms import InvalidSignatureError, resolve
from core.credentials import AdminPrincipal
from core.keys import (
    InvalidMaterialError,
    NoPublicKeyError,
    PublicKeyView,
    UseResult,
    derived_id,
    new_key_id,
    parse_token,
)
from core.lifecycle import KeyLifecycle, LifecycleError, RotationReason, iso, may_rotate, new_key
from core.objects import KeySpec
from core.policy import PolicyError, parse_duration
from core.services import Services
from core.store.models import KeyRow, KeyVersionRow
from workflows.types import (
    KEY_WORKFLOW,
    KeyWorkflowInput,
    RotateRequest,
    RotationResult,
    key_search_attributes,
    key_workflow_id,
)

router = APIRouter(prefix="/api/key-management/keys", tags=["keys"])


def key_view(key: KeyRow, versions: list[KeyVersionRow] | None = None) -> dict[str, Any]:
    """The public shape of a key (no material, ever)."""
    view: dict[str, Any] = {
        "id": key.id,
        "name": key.name,
        "type": key.type,
        "algorithm": key.algorithm,
        "provider": key.provider,
        "environment": key.environment,
        "owner": key.owner,
        "status": key.status,
        "version": key.current_version,
        "createdAt": iso(key.created_at),
        "updatedAt": iso(key.updated_at),
        "nextRotationAt": iso(key.next_rotation_at),
        "expiresAt": iso(key.expires_at),
        "createdBy": key.created_by,
        "metadata": key.metadata_,
        "workflowId": key.workflow_id,
    }
    if versions is not None:
        view["versions"] = [
            {
                "version": v.number,
                "state": v.state,
                "algorithm": v.algorithm,
                "createdAt": iso(v.created_at),
                "rotateAt": iso(v.rotate_at),
                "warnAt": iso(v.warn_at),
                "graceUntil": iso(v.grace_until),
                "hardExpiry": iso(v.hard_expiry),
                "stateChangedAt": iso(v.state_changed_at),
                "held": v.held,
                "lastUsedAt": iso(v.last_used_at),
            }
            for v in versions
        ]
    return view


def _b64(field: str, value: str | None) -> bytes:
    if value is None:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "INVALID_REQUEST", f"{field} must be base64") from None


@router.post("/generate", status_code=201)
async def generate_key(
    body: schemas.GenerateKeyRequest,
    svc: Svc,
    who: Operator,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """Create a key: its workflow generates version 1; answers once it is committed.

    With an `Idempotency-Key` the key id is derived from it (per admin key), so a retried
    request (after a timeout, say) answers with the key the first one made."""
    key_id = derived_id("key_", who.key_id, idempotency_key) if idempotency_key else new_key_id()
    spec, lifecycle = _new_key(body, svc, who, key_id)
    await _start_key(request, svc, spec, lifecycle)
    key, versions = await run_in_threadpool(svc.keys.get, spec.key_id)
    if (key.type, key.algorithm, key.environment) != (spec.type, spec.algorithm, spec.environment):
        raise APIError(409, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key was used for another key")
    return {"key": key_view(key, versions)}


@router.post("/import", status_code=201)
async def import_key(
    body: schemas.ImportKeyRequest, svc: Svc, who: Admin, request: Request
) -> dict[str, Any]:
    """Bring an existing key under keyrotor's lifecycle (BYOK): its material
    becomes version 1, checked first (it must work as a key of the algorithm), stored sealed,
    and its workflow rotates it from then on like any other key. Audited as `key.imported`."""
    material = _b64("material", body.material)
    spec, lifecycle = _new_key(body, svc, who, new_key_id(), origin="imported")
    try:
        await run_in_threadpool(
            svc.keys.stage_import,
            spec,
            lifecycle,
            material,
            key_workflow_id(spec.environment, spec.key_id),
        )
    except InvalidMaterialError as e:
        raise APIError(400, "INVALID_MATERIAL", str(e)) from None
    await start_staged(
        _start_key(request, svc, spec, lifecycle), lambda: svc.keys.unstage_import(spec.key_id)
    )
    key, versions = await run_in_threadpool(svc.keys.get, spec.key_id)
    return {"key": key_view(key, versions)}


def _new_key(
    body: schemas.GenerateKeyRequest,
    svc: Services,
    who: AdminPrincipal,
    key_id: str,
    origin: str = "generated",
) -> tuple[KeySpec, KeyLifecycle]:
    """The spec and first lifecycle of a new key, from a request checked against the policy."""
    policy = svc.policies.key_type(body.type)
    algorithm = resolve(body.algorithm).name if body.algorithm else policy.algorithm
    key_bits = (
        policy.key_bits if algorithm == policy.algorithm else resolve(algorithm).default_key_bits
    )
    environment = new_environment(svc, body.environment)
    try:
        provider = svc.policies.provider_for(environment, body.provider)
    except PolicyError as e:
        raise APIError(400, "PROVIDER_NOT_ALLOWED", e.reason) from None
    if provider not in svc.providers:
        raise APIError(
            400,
            "PROVIDER_NOT_CONFIGURED",
            f"provider {provider} is not configured here; configured: {', '.join(svc.providers)}",
        )
    if not svc.keys.provider(provider).supports(algorithm):
        raise APIError(400, "UNSUPPORTED_ALGORITHM", f"provider {provider} cannot hold {algorithm}")
    now = datetime.now(UTC)
    expires_at = body.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        raise APIError(400, "INVALID_REQUEST", "expiresAt needs a timezone (e.g. Z)")
    try:
        lifecycle = new_key(policy.lifecycle(), now, expires_at)
    except LifecycleError as e:
        raise APIError(400, "INVALID_REQUEST", str(e)) from None
    spec = KeySpec(
        key_id=key_id,
        environment=environment,
        type=policy.name,
        algorithm=algorithm,
        provider=provider,
        key_bits=key_bits,
        owner=body.owner,  # a search attribute: never defaulted to a (personal) user id
        name=body.name,
        created_by=body.user_id or who.name,
        metadata={str(k): str(v) for k, v in body.metadata.items()},
        origin=origin,
    )
    return spec, lifecycle


async def _start_key(
    request: Request, svc: Services, spec: KeySpec, lifecycle: KeyLifecycle
) -> None:
    await start_and_wait_created(
        request,
        KEY_WORKFLOW,
        KeyWorkflowInput(
            spec=spec,
            lifecycle=lifecycle,
            policy_version=svc.policy_version,
            skip_unchanged_search_attributes=True,
        ),
        workflow_id=key_workflow_id(spec.environment, spec.key_id),
        search_attributes=key_search_attributes(spec, "active", lifecycle.versions[0].rotate_at),
        name=spec.name or spec.key_id,
        summary=f"{spec.type} key {spec.name or spec.key_id} ({spec.algorithm})",
        what=f"key {spec.key_id}",
    )


@router.get("")
def list_keys(
    svc: Svc,
    who: Reader,
    type: str | None = Query(default=None, max_length=64),
    status: str | None = Query(default=None, pattern="^(active|suspended|revoked|expired)$"),
    owner: str | None = Query(default=None, max_length=200),
    environment: str | None = Query(default=None, max_length=32),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=100_000),
    cursor: str | None = None,
) -> dict[str, Any]:
    """Newest first; pass `nextCursor` back as `cursor` for the next page (stable under inserts)."""
    after = parse_cursor(cursor) if cursor else None
    rows = svc.keys.list_keys(
        type=type,
        status=status,
        owner=owner,
        environment=environment,
        limit=limit + 1,
        offset=offset,
        after=after,
    )
    return paged("keys", rows, limit, offset, key_view)


@router.get("/statistics")
def key_statistics(svc: Svc, who: Reader) -> dict[str, Any]:
    """Counts of keys by status and type, versions by state, and rotations so far."""
    return {"statistics": svc.keys.statistics()}


@router.get("/{key_id}")
def get_key(key_id: str, svc: Svc, who: Reader) -> dict[str, Any]:
    """A key with all its versions and their deadlines."""
    key, versions = svc.keys.get(key_id)
    return {"key": key_view(key, versions)}


@router.post("/{key_id}/rotate")
async def rotate_key(
    key_id: str,
    svc: Svc,
    who: Operator,
    request: Request,
    body: schemas.RotateKeyRequest | None = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """Rotate now. A retried request with the same `Idempotency-Key` rotates once."""
    body = body or schemas.RotateKeyRequest()
    workflow_id, status = await run_in_threadpool(svc.keys.workflow_of, key_id)
    if not may_rotate(status, body.reason):
        raise APIError(409, "KEY_STATE", f"a {status} key cannot rotate")
    grace = None
    if body.grace_period is not None:
        try:
            grace = int(parse_duration(body.grace_period).total_seconds())
        except ValueError as e:
            raise APIError(400, "INVALID_REQUEST", f"gracePeriod: {e}") from None
    reasons = {r.value for r in RotationReason}
    reason, comment = (body.reason, "") if body.reason in reasons else ("manual", body.reason)
    rotation = RotateRequest(
        reason=reason,
        comment=comment,
        grace_period_seconds=grace,
        actor=body.user_id or who.name,
        request_id=idempotency_key or "",
    )
    result: RotationResult = await run_update(
        request,
        workflow_id,
        "rotate",
        rotation,
        id=f"rotate/{idempotency_key}" if idempotency_key else None,
        result_type=RotationResult,
    )
    # a compromised version is refused by every API process once this answers
    await seen_everywhere(lambda: svc.keys.forget(key_id), refusing=reason == "compromise")
    key, versions = await run_in_threadpool(svc.keys.get, key_id)
    return {
        "key": key_view(key, versions),
        "rotation": {"fromVersion": result.from_version, "toVersion": result.to_version},
    }


def _key_workflow(svc: Services, key_id: str) -> str:
    return svc.keys.workflow_of(key_id)[0]


def _key_answer(svc: Services, key_id: str) -> dict[str, Any]:
    return {"key": key_view(*svc.keys.get(key_id))}


def _forget_key(svc: Services, key_id: str) -> None:
    svc.keys.forget(key_id)


add_status_routes(router, "key_id", _key_workflow, _key_answer, _forget_key)


# The use routes are hot (`api.app.hot_routes`, served by `api.hot.HotPath`): async,
# authorized and parsed by hand (`hot_request`), answered directly. A key on the local provider
# is used on the event loop (a cached row or an indexed read, and microseconds of crypto, cost
# less than a hop to a worker thread, which waits for the GIL); a remote provider's network
# call goes to a worker thread.


async def _run(
    request: Request, key_id: str, op: Callable[..., UseResult], *args: Any
) -> UseResult:
    svc: Services = request.app.state.services
    if svc.keys.in_process(key_id):
        return op(key_id, *args)
    return await run_in_threadpool(op, key_id, *args)


async def encrypt(request: Request) -> JSONResponse:
    """Encrypt with the active version; the ciphertext names the key and version."""
    body = await hot_request(request, Permission.USE, schemas.EncryptRequest)
    key_id: str = request.path_params["key_id"]
    keys = request.app.state.services.keys
    plaintext, aad = _b64("plaintext", body.plaintext), _b64("aad", body.aad)
    r = await _run(request, key_id, keys.encrypt, plaintext, aad)
    return JSONResponse({"ciphertext": r.value, "keyId": key_id, "version": r.version})


async def decrypt(request: Request) -> JSONResponse:
    """Decrypt with the version the ciphertext names, if it is active or in grace."""
    body = await hot_request(request, Permission.USE, schemas.DecryptRequest)
    key_id: str = request.path_params["key_id"]
    keys = request.app.state.services.keys
    r = await _run(request, key_id, keys.decrypt, body.ciphertext, _b64("aad", body.aad))
    assert isinstance(r.value, bytes)
    return JSONResponse({"plaintext": base64.b64encode(r.value).decode(), "version": r.version})


async def sign(request: Request) -> JSONResponse:
    """Sign with the active version."""
    body = await hot_request(request, Permission.USE, schemas.SignRequest)
    key_id: str = request.path_params["key_id"]
    keys = request.app.state.services.keys
    r = await _run(request, key_id, keys.sign, _b64("message", body.message))
    return JSONResponse({"signature": r.value, "keyId": key_id, "version": r.version})


async def verify(request: Request) -> JSONResponse:
    """Verify with the version the signature names, if it is active or in grace."""
    body = await hot_request(request, Permission.USE, schemas.VerifyRequest)
    key_id: str = request.path_params["key_id"]
    keys = request.app.state.services.keys
    try:
        r = await _run(request, key_id, keys.verify, _b64("message", body.message), body.signature)
    except InvalidSignatureError:
        version = parse_token(body.signature, key_id)[0]
        return JSONResponse({"valid": False, "version": version})
    return JSONResponse({"valid": True, "version": r.version})


async def wrap(request: Request) -> JSONResponse:
    """Wrap a data key (16 to 64 bytes) under the active version, as KMS GenerateDataKey's
    caller does with a key it made: only `unwrap` opens the `krw:` token it answers."""
    body = await hot_request(request, Permission.USE, schemas.WrapRequest)
    key_id: str = request.path_params["key_id"]
    keys = request.app.state.services.keys
    r = await _run(request, key_id, keys.wrap, _b64("key", body.key), _b64("aad", body.aad))
    return JSONResponse({"wrapped": r.value, "keyId": key_id, "version": r.version})


async def unwrap(request: Request) -> JSONResponse:
    """The data key a `wrap` sealed, if its version is active or in grace."""
    body = await hot_request(request, Permission.USE, schemas.UnwrapRequest)
    key_id: str = request.path_params["key_id"]
    keys = request.app.state.services.keys
    r = await _run(request, key_id, keys.unwrap, body.wrapped, _b64("aad", body.aad))
    assert isinstance(r.value, bytes)
    return JSONResponse({"key": base64.b64encode(r.value).decode(), "version": r.version})


# path, endpoint and body model of each hot use route, for `api.app.hot_routes`
HOT_ROUTES = (
    ("encrypt", encrypt, schemas.EncryptRequest),
    ("decrypt", decrypt, schemas.DecryptRequest),
    ("sign", sign, schemas.SignRequest),
    ("verify", verify, schemas.VerifyRequest),
    ("wrap", wrap, schemas.WrapRequest),
    ("unwrap", unwrap, schemas.UnwrapRequest),
)


@router.post("/{key_id}/rewrap")
def rewrap(key_id: str, body: schemas.RewrapRequest, svc: Svc, who: User) -> dict[str, Any]:
    """Re-encrypt a ciphertext of the active or a grace version under the active version.

    The plaintext never leaves the server. A ciphertext of the active version is re-encrypted
    too (a fresh ciphertext of the same version), so every answer proves the input decrypted.
    Pass the `aad` the ciphertext was bound to; the new ciphertext is bound to the same."""
    r = svc.keys.rewrap(key_id, body.ciphertext, _b64("aad", body.aad))
    return {
        "ciphertext": r.ciphertext,
        "keyId": key_id,
        "fromVersion": r.from_version,
        "version": r.version,
    }


@router.post("/{key_id}/derive")
def derive(key_id: str, body: schemas.DeriveRequest, svc: Svc, who: User) -> dict[str, Any]:
    """Derive `length` bytes (16-64) from an HMAC key and a context, HKDF-SHA256 (RFC 5869)
    with the provider's MAC of `keyrotor/derive/v1\\0 || context` as the pseudorandom key.

    The same version, context and length always give the same bytes. The answer is a secret
    for the caller (like decrypt's plaintext): it is never logged."""
    r = svc.keys.derive(key_id, _b64("context", body.context), body.length, body.version)
    return {"derived": base64.b64encode(r.material).decode(), "version": r.version}


def _public_key_json(view: PublicKeyView) -> dict[str, Any]:
    return {
        "pem": view.pem,
        "jwk": view.jwk,
        "raw": base64.b64encode(view.raw).decode(),
        "version": view.version,
    }


def _no_public_key(e: NoPublicKeyError) -> APIError:
    return APIError(400, "NO_PUBLIC_KEY", str(e))


@router.get("/{key_id}/public-key")
def public_key(
    key_id: str,
    svc: Svc,
    who: Reader,
    version: int | None = Query(default=None, ge=1, le=999_999_999),
) -> dict[str, Any]:
    """The public key of the active version (or of `version`, active or in grace) as SPKI PEM
    (null without a standard SPKI), JWK (null without a JOSE form) and raw bytes (base64).

    Public keys are not secret, so reading them is a read. Symmetric and MAC keys answer 400
    `NO_PUBLIC_KEY`."""
    try:
        view = svc.keys.public_key(key_id, version)
    except NoPublicKeyError as e:
        raise _no_public_key(e) from None
    return {"publicKey": _public_key_json(view)}


@router.get("/{key_id}/jwks")
def jwks(key_id: str, svc: Svc, who: Reader) -> dict[str, Any]:
    """A JWK Set (RFC 7517) of the versions a verifier must accept now: the active one and
    those in grace, so verification keeps working through a rotation. Versions without a JWK
    form are left out; a revoked key's set is empty."""
    try:
        return {"keys": svc.keys.jwks(key_id)}
    except NoPublicKeyError as e:
        raise _no_public_key(e) from None
