"""`/api/key-management/webhooks`: subscriptions to the lifecycle events, their deliveries, and
replays of failed ones. Deliveries are made by the worker's webhook workflows
(`workflows.webhooks`); managing webhooks needs the admin role, reading them `read`."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api import schemas
from api.deps import Admin, Reader, Svc, temporal
from api.errors import APIError, temporal_failed
from core.credentials import AdminPrincipal, Role
from core.webhooks import WebhookService, url_origin
from workflows.webhooks import DeliveryInput, WebhookDeliveryWorkflow, delivery_workflow_id

router = APIRouter(prefix="/api/key-management/webhooks", tags=["webhooks"])


@router.post("", status_code=201)
async def create_webhook(
    body: schemas.CreateWebhookRequest, svc: Svc, who: Admin
) -> dict[str, Any]:
    """Subscribe a URL; the answer carries the signing secret, once."""
    webhook, secret = await run_in_threadpool(
        svc.webhooks.create,
        body.url,
        body.description,
        body.event_types,
        body.min_severity,
        body.user_id or who.name,
    )
    return {"webhook": webhook, "secret": secret}


def _shown(webhook: dict[str, Any], who: AdminPrincipal) -> dict[str, Any]:
    """The whole URL for an admin (who manages webhooks); its origin for the other roles."""
    if who.role == Role.ADMIN:
        return webhook
    return webhook | {"url": url_origin(webhook["url"])}


@router.get("")
async def list_webhooks(svc: Svc, who: Reader) -> dict[str, Any]:
    """Every webhook; the URL's path and query only to an admin (it can be the credential)."""
    return {"webhooks": [_shown(w, who) for w in await run_in_threadpool(svc.webhooks.all)]}


@router.get("/{webhook_id}")
async def get_webhook(webhook_id: str, svc: Svc, who: Reader) -> dict[str, Any]:
    return {"webhook": _shown(await run_in_threadpool(svc.webhooks.get, webhook_id), who)}


@router.delete("/{webhook_id}")
async def delete_webhook(webhook_id: str, svc: Svc, who: Admin) -> dict[str, Any]:
    """Stop sending to it; its deliveries stay listed."""
    return {"webhook": await run_in_threadpool(svc.webhooks.delete, webhook_id, who.name)}


@router.get("/{webhook_id}/deliveries")
async def list_deliveries(
    webhook_id: str,
    svc: Svc,
    who: Reader,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    """Deliveries, newest first, with their attempts and the last answer's status."""
    return {
        "deliveries": await run_in_threadpool(svc.webhooks.deliveries, webhook_id, status, limit)
    }


@router.post("/{webhook_id}/deliveries/{delivery_id}/replay", status_code=202)
async def replay_delivery(
    webhook_id: str, delivery_id: int, svc: Svc, who: Admin, request: Request
) -> dict[str, Any]:
    """Send a failed (or delivered) delivery again, with the same retries as the first time."""
    webhooks: WebhookService = svc.webhooks
    delivery = await run_in_threadpool(webhooks.prepare_replay, webhook_id, delivery_id, who.name)
    queue = svc.settings.task_queue
    try:
        client = await temporal(request)
        await client.start_workflow(
            WebhookDeliveryWorkflow.run,
            DeliveryInput(delivery_id, svc.settings.webhook_max_attempts),
            id=delivery_workflow_id(queue, delivery_id),
            task_queue=queue,
        )
    except (WorkflowAlreadyStartedError, RPCError) as e:
        await run_in_threadpool(webhooks.mark_failed, delivery_id, "the replay did not start")
        if isinstance(e, WorkflowAlreadyStartedError):
            raise APIError(409, "WEBHOOK_STATE", "the delivery is still being sent") from None
        raise temporal_failed(e) from None
    return {"delivery": delivery}
