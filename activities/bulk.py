"""Activities of bulk operations: one page of targets at a time, through their workflows."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from core.bulk import BulkService
from workflows.bulk import BulkPage
from workflows.types import RotateRequest, RotationResult, StatusChange


class BulkActivities:
    def __init__(self, bulk: BulkService, client: Client) -> None:
        self._bulk = bulk
        self._client = client

    @activity.defn(name="run_bulk_page")
    async def run_page(self, page: BulkPage) -> int:
        """Apply the next page of pending targets; returns the last seq done (0: none left).
        A retried attempt skips what its heartbeats say was done."""
        op = page.input
        details = activity.info().heartbeat_details
        after = max(op.after_seq, int(details[0]) if details else 0)
        targets = await asyncio.to_thread(self._bulk.page, op.operation_id, after, page.size)
        for seq, _, workflow_id in targets:
            error = await self._apply(page, seq, workflow_id)
            await asyncio.to_thread(self._bulk.record, op.operation_id, seq, error)
            activity.heartbeat(seq)
            await asyncio.sleep(1 / op.rate_per_second)
        return targets[-1][0] if targets else 0

    async def _apply(self, page: BulkPage, seq: int, workflow_id: str) -> str | None:
        """The change on one target; None when done, else why not. Temporal being unreachable
        fails the attempt (retried); a target that refuses is recorded as failed."""
        op = page.input
        handle = self._client.get_workflow_handle(workflow_id)
        comment = f"bulk {op.operation_id}: {op.reason}"
        try:
            if op.action == "rotate":
                await handle.execute_update(
                    "rotate",
                    RotateRequest(
                        reason="manual",
                        comment=comment,
                        actor=op.actor,
                        request_id=f"bulk/{op.operation_id}/{seq}",
                    ),
                    result_type=RotationResult,
                )
            else:
                await handle.execute_update(
                    "change_status",
                    StatusChange("revoke", comment, op.actor),
                    result_type=str,
                )
        except WorkflowUpdateFailedError as e:
            cause: BaseException | None = e.cause
            if isinstance(cause, ActivityError) and cause.cause is not None:
                cause = cause.cause
            message = cause.message if isinstance(cause, ApplicationError) else "refused"
            if op.action == "revoke" and "already revoked" in message:
                return None  # revoked meanwhile, or by an attempt whose record was lost
            return message
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return "its workflow has ended"
            raise ApplicationError(
                f"Temporal: {e.status.name}", type="TemporalUnavailable"
            ) from None
        return None

    @activity.defn(name="finish_bulk")
    def finish(self, operation_id: str, status: str) -> None:
        self._bulk.finish(operation_id, status)
