"""`/api/key-management/bulk`: rotate or revoke every key, credential or handle family matching
a filter, as one durable, rate-limited batch workflow whose progress is read here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from api import schemas
from api.deps import Admin, Reader, Svc, temporal
from api.errors import APIError, temporal_failed
from core.bulk import bulk_workflow_id
from workflows.bulk import BulkInput, BulkOperationWorkflow

router = APIRouter(prefix="/api/key-management/bulk", tags=["bulk"])


@router.post("", status_code=202)
async def start_bulk(
    body: schemas.BulkRequest, svc: Svc, who: Admin, request: Request
) -> dict[str, Any]:
    """Start a bulk operation over what matches the filter now; answers at once with its id
    (follow it with GET /bulk/{id})."""
    filters = body.filter.model_dump(exclude_none=True)
    served = svc.keys.environment
    if served is not None:  # an API scoped to one environment acts on that one only
        if filters.get("environment", served) != served:
            raise APIError(400, "INVALID_REQUEST", f"this API serves environment {served} only")
        filters["environment"] = served
    actor = body.user_id or who.name
    operation = await run_in_threadpool(
        svc.bulk.start, body.action, body.kind, filters, body.reason, body.rate_per_second, actor
    )
    try:
        client = await temporal(request)
        await client.start_workflow(
            BulkOperationWorkflow.run,
            BulkInput(
                operation["id"],
                body.action,
                body.kind,
                body.reason,
                actor,
                body.rate_per_second,
            ),
            id=bulk_workflow_id(operation["id"]),
            task_queue=svc.settings.task_queue,
        )
    except (RPCError, APIError) as e:
        await run_in_threadpool(svc.bulk.abandon, operation["id"])
        if isinstance(e, APIError):  # no client: Temporal is unreachable
            raise
        raise temporal_failed(e) from None
    return {"operation": operation}


@router.get("")
async def list_bulk(
    svc: Svc, who: Reader, limit: int = Query(default=50, ge=1, le=500)
) -> dict[str, Any]:
    return {"operations": await run_in_threadpool(svc.bulk.all, limit)}


@router.get("/{operation_id}")
async def get_bulk(operation_id: str, svc: Svc, who: Reader) -> dict[str, Any]:
    """Progress (`done`, `failed` of `total`), and the targets that failed and why."""
    operation, failures = await run_in_threadpool(svc.bulk.get, operation_id)
    return {"operation": operation, "failures": failures}


@router.delete("/{operation_id}")
async def cancel_bulk(operation_id: str, svc: Svc, who: Admin, request: Request) -> dict[str, Any]:
    """Stop it after the target in hand; what was done stays done."""
    operation, _ = await run_in_threadpool(svc.bulk.get, operation_id)
    if operation["status"] == "running":
        try:
            client = await temporal(request)
            await client.get_workflow_handle(bulk_workflow_id(operation_id)).cancel()
        except RPCError as e:
            raise temporal_failed(e) from None
    return {"operation": operation}
