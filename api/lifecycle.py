"""Calling the lifecycle workflows from routes: updates, their failures, and list cursors.

No `from __future__ import annotations` here: the routes built by `add_status_routes` have an
annotation made at run time (the path parameter's name), which FastAPI must see evaluated.
"""

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from starlette.concurrency import run_in_threadpool
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api import schemas
from api.deps import Operator, Svc, temporal
from api.errors import APIError, temporal_failed
from core.changes import CACHE_STALE_AFTER
from core.credentials import AdminPrincipal
from core.services import Services
from core.warnings import object_warnings
from workflows.types import AcknowledgeWarning, StatusChange

UPDATE_TIMEOUT = 30.0
# How a refused or failed update answers, by the failure's type (validators raise ValueError).
UPDATE_FAILURES = {
    "ValueError": (400, "INVALID_REQUEST"),
    "KeyStateError": (409, "KEY_STATE"),
    "LifecycleError": (409, "KEY_STATE"),
    "ProviderConfigurationError": (400, "PROVIDER_NOT_CONFIGURED"),
    "UnsupportedAlgorithmError": (400, "UNSUPPORTED_ALGORITHM"),
    "ProviderUnavailableError": (503, "PROVIDER_UNAVAILABLE"),
    "ProviderOperationError": (503, "PROVIDER_UNAVAILABLE"),
    "ProviderError": (503, "PROVIDER_UNAVAILABLE"),
}


def cursor_of(row: Any) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def paged(
    name: str, rows: list[Any], limit: int, offset: int, view: Callable[[Any], dict[str, Any]]
) -> dict[str, Any]:
    """A list answer: `rows` were fetched with `limit + 1`, so one more means a next page."""
    page = rows[:limit]
    return {
        name: [view(r) for r in page],
        "pagination": {
            "limit": limit,
            "offset": offset,
            "count": len(page),
            "nextCursor": cursor_of(page[-1]) if len(rows) > limit else None,
        },
    }


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at_text, kid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(at_text)
    except (ValueError, TypeError, binascii.Error):
        raise APIError(400, "INVALID_REQUEST", "cursor is not one this API returned") from None
    if at.tzinfo is None:
        raise APIError(400, "INVALID_REQUEST", "cursor is not one this API returned")
    return at, str(kid)


def update_failure(e: WorkflowUpdateFailedError) -> APIError:
    """The answer to an update the workflow refused (validator) or failed (handler)."""
    cause = e.cause
    if isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if not isinstance(cause, ApplicationError):
        return APIError(409, "KEY_STATE", "update refused")
    status, code = UPDATE_FAILURES.get(cause.type or "", (409, "KEY_STATE"))
    return APIError(status, code, "the key provider failed" if status == 503 else cause.message)


async def run_update(request: Request, workflow_id: str, name: str, arg: Any, **kw: Any) -> Any:
    """Run an update on an object's workflow; turn its refusals into 4xx and silence into 503.

    The client is asked for only now, after the route found the object and checked the
    request: an unknown id or bad input is a 4xx even while Temporal is down."""
    handle = (await temporal(request)).get_workflow_handle(workflow_id)
    try:
        return await asyncio.wait_for(handle.execute_update(name, arg, **kw), UPDATE_TIMEOUT)
    except WorkflowUpdateFailedError as e:
        raise update_failure(e) from None
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        # ours, or the server's own deadline on the update's long poll (a busy worker)
        raise APIError(503, "WORKER_UNAVAILABLE", "no worker answered in time; retry") from None
    except RPCError as e:
        if "not found" in str(e).lower() or "completed" in str(e).lower():
            raise APIError(409, "KEY_STATE", "the key's workflow has ended") from None
        raise temporal_failed(e) from None


def new_environment(svc: Services, requested: str | None) -> str:
    """The environment of a new key, credential or handle family: the one asked for, else the
    one this process serves (KEYROTOR_ENVIRONMENT), else the policy's default; 400 when the
    policy does not know it or this process does not serve it."""
    served = svc.keys.environment
    environment = requested or served or svc.policies.default_environment
    if environment not in svc.policies.environments:
        known = ", ".join(svc.policies.environments)
        raise APIError(400, "INVALID_REQUEST", f"environment must be one of {known}")
    if served is not None and environment != served:
        raise APIError(
            400, "INVALID_REQUEST", f"this API serves environment {served} only, not {environment}"
        )
    return environment


async def start_and_wait_created(
    request: Request,
    workflow: str,
    input: Any,
    *,
    workflow_id: str,
    search_attributes: TypedSearchAttributes,
    name: str,
    summary: str,
    what: str,
    id_conflict_policy: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.USE_EXISTING,
) -> None:
    """Start the lifecycle workflow `workflow_id` (or, with USE_EXISTING, find the one an
    idempotent retry started) and wait until its first version is committed. The memo holds
    the display `name`; the UI shows `summary`. The client is asked for only now, after the
    route has validated the request: bad input is a 4xx even while Temporal is down."""
    services: Services = request.app.state.services
    start: WithStartWorkflowOperation[Any, str] = WithStartWorkflowOperation(
        workflow,
        input,
        id=workflow_id,
        task_queue=services.settings.task_queue,
        id_conflict_policy=id_conflict_policy,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=search_attributes,
        memo={"name": name},
        static_summary=summary,
        result_type=str,
    )
    client = await temporal(request)
    try:
        await asyncio.wait_for(
            client.execute_update_with_start_workflow(
                "wait_created", start_workflow_operation=start, result_type=int
            ),
            UPDATE_TIMEOUT,
        )
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise APIError(
            503, "WORKER_UNAVAILABLE", f"{what} was accepted but no worker created it yet"
        ) from None
    except WorkflowAlreadyStartedError:
        pass  # an idempotent retry whose workflow has ended: answer with what it made
    except WorkflowUpdateFailedError as e:  # version 1 could not be made
        raise update_failure(e) from None
    except RPCError as e:
        raise temporal_failed(e) from None
    finally:
        # The SDK (1.35) sets a refused start's error on the operation's handle as well; read
        # it there, or asyncio logs it as "never retrieved" with the server's text.
        handle = start._workflow_handle
        if handle.done() and not handle.cancelled():
            handle.exception()


async def change_status(
    request: Request,
    workflow_id: str,
    action: str,
    body: schemas.ReasonRequest | None,
    who: AdminPrincipal,
    forget: Callable[[], None],
) -> None:
    """Revoke, suspend or resume through the workflow; returns once it is committed.

    A revocation or suspension returns only once every API process's use path has seen it:
    this process forgets the object's cached rows at once (`forget`), the others within
    `CACHE_STALE_AFTER`, which this waits out."""
    body = body or schemas.ReasonRequest()
    change = StatusChange(action=action, reason=body.reason, actor=body.user_id or who.name)
    await run_update(request, workflow_id, "change_status", change, result_type=str)
    await seen_everywhere(forget, refusing=action in ("revoke", "suspend"))


async def seen_everywhere(forget: Callable[[], None], refusing: bool) -> None:
    """After a committed change: this process's caches forget the object now; a change that
    refuses use (revoke, suspend, compromise) also waits until every API process has read it
    from the change feed (`core.changes`)."""
    forget()
    if refusing:
        await asyncio.sleep(CACHE_STALE_AFTER)


STATUS_ROUTES = (
    (
        "revoke",
        "DELETE",
        "",
        "Revoke: every version is compromised at once; from the answer on, "
        "use is refused (credentials and handles: in every API process).",
    ),
    ("suspend", "POST", "/suspend", "Suspend: no use (and no scheduled rotation) until resumed."),
    ("resume", "POST", "/resume", "Resume a suspended one."),
)


def add_status_routes(
    router: APIRouter,
    param: str,
    workflow_of: Callable[[Services, str], str],
    answer: Callable[[Services, str], dict[str, Any]],
    forget: Callable[[Services, str], None],
) -> None:
    """`DELETE /{param}`, `POST /{param}/suspend` and `POST /{param}/resume` on `router`: one
    `change_status` update each, then the object's view. `forget` drops the object from this
    process's use-path cache (see `change_status`)."""

    def route(action: str) -> Callable[..., Any]:
        async def change(
            object_id: Annotated[str, Path(alias=param)],
            svc: Svc,
            who: Operator,
            request: Request,
            body: Annotated[schemas.ReasonRequest | None, Body()] = None,
        ) -> dict[str, Any]:
            workflow_id = await run_in_threadpool(workflow_of, svc, object_id)
            await change_status(
                request, workflow_id, action, body, who, lambda: forget(svc, object_id)
            )
            return await run_in_threadpool(answer, svc, object_id)

        return change

    async def acknowledge(
        object_id: Annotated[str, Path(alias=param)],
        svc: Svc,
        who: Operator,
        request: Request,
        body: Annotated[schemas.AcknowledgeRequest | None, Body()] = None,
    ) -> dict[str, Any]:
        workflow_id = await run_in_threadpool(workflow_of, svc, object_id)
        body = body or schemas.AcknowledgeRequest()
        ack = AcknowledgeWarning(
            target=body.target or "", reason=body.reason, actor=body.user_id or who.name
        )
        count = await run_update(request, workflow_id, "acknowledge_warnings", ack, result_type=int)
        warnings = await run_in_threadpool(object_warnings, svc.store, object_id)
        return {"acknowledged": count, "warnings": warnings}

    router.add_api_route(
        f"/{{{param}}}/warnings/acknowledge",
        acknowledge,
        methods=["POST"],
        name=f"acknowledge_{router.tags[0] if router.tags else 'object'}_warnings",
        description="Acknowledge the open warnings (of one `target` when given), so that the "
        "next stage does not escalate; answers how many and the open warnings.",
    )
    for action, method, suffix, doc in STATUS_ROUTES:
        router.add_api_route(
            f"/{{{param}}}{suffix}",
            route(action),
            methods=[method],
            name=f"{action}_{router.tags[0] if router.tags else 'object'}",
            description=doc,
        )


async def start_staged(start: Awaitable[None], unstage: Callable[[], None]) -> None:
    """Start the workflow of an import staged in the store; take the staged rows back if it
    was refused, but not when it was accepted and no worker has committed it yet (503
    WORKER_UNAVAILABLE): the workflow commits it later."""
    try:
        await start
    except APIError as e:
        if e.code != "WORKER_UNAVAILABLE":
            await run_in_threadpool(unstage)
        raise
