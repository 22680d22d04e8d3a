"""Activities of bulk operations: one page of targets at a time, through their workflows."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from core.bulk import BulkService
from core.lifecycle import LifecycleError
from core.policy import Policies, PolicyError, parse_policies
from core.policy_versions import PolicyVersions
from workflows.bulk import BulkPage
from workflows.types import PolicyUpdate, RotateRequest, RotationResult, StatusChange


class BulkActivities:
    def __init__(self, bulk: BulkService, versions: PolicyVersions, client: Client) -> None:
        self._bulk = bulk
        self._versions = versions
        self._client = client
        self._policies: dict[int, Policies] = {}

    @activity.defn(name="run_bulk_page")
    async def run_page(self, page: BulkPage) -> int:
        """Apply the next page of pending targets; returns the last seq done (0: none left).
        A retried attempt skips what its heartbeats say was done."""
        op = page.input
        details = activity.info().heartbeat_details
        after = max(op.after_seq, int(details[0]) if details else 0)
        targets = await asyncio.to_thread(self._bulk.page, op.operation_id, after, page.size)
        for seq, object_id, workflow_id in targets:
            if op.action == "apply_policy":
                error = await self._apply_policy(op.policy_version, op.kind, object_id, workflow_id)
            else:
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
            return _workflow_ended(e)
        return None

    async def _apply_policy(
        self, version: int, kind: str, object_id: str, workflow_id: str
    ) -> str | None:
        """Signal the object's workflow its lifecycle policy in policy version `version`."""
        policies = self._policies.get(version)
        if policies is None:
            row = await asyncio.to_thread(self._versions.get, version)
            if row is None:
                raise ApplicationError(f"no policy version {version}", non_retryable=True)
            policies = parse_policies(row.text, f"policy version {version}")
            self._policies[version] = policies
        try:
            policy = await asyncio.to_thread(self._bulk.lifecycle_policy, kind, object_id, policies)
        except (PolicyError, LifecycleError) as e:
            return f"no policy for it in version {version}: {e}"
        try:
            await self._client.get_workflow_handle(workflow_id).signal(
                "policy_updated", PolicyUpdate(version, policy)
            )
        except RPCError as e:
            return _workflow_ended(e)
        return None

    @activity.defn(name="finish_bulk")
    def finish(self, operation_id: str, status: str) -> None:
        self._bulk.finish(operation_id, status)


def _workflow_ended(e: RPCError) -> str:
    """The target's answer when its workflow has ended; any other Temporal failure is retried
    (the activity's attempt fails)."""
    if e.status == RPCStatusCode.NOT_FOUND:
        return "its workflow has ended"
    raise ApplicationError(f"Temporal: {e.status.name}", type="TemporalUnavailable") from None
