"""BulkOperationWorkflow (`keyrotor/bulk/<operation id>`): works through a bulk operation's
targets a page at a time. Its activity sends each target's workflow the change (a `rotate` or
`change_status` update, idempotent by the operation and target), paced at the operation's rate,
heartbeating its place so that a retry resumes there. Cancel it (REST DELETE, or the UI) to
stop; what was done stays done."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

PAGE = 100


@dataclass(frozen=True)
class BulkInput:
    operation_id: str
    action: str
    kind: str
    reason: str
    actor: str
    rate_per_second: int
    after_seq: int = 0
    policy_version: int = 0  # apply_policy: the version to send


@dataclass(frozen=True)
class BulkPage:
    input: BulkInput
    size: int = PAGE


@workflow.defn
class BulkOperationWorkflow:
    @workflow.run
    async def run(self, input: BulkInput) -> str:
        after = input.after_seq
        try:
            while True:
                last = await workflow.execute_activity(
                    "run_bulk_page",
                    BulkPage(replace(input, after_seq=after)),
                    result_type=int,
                    start_to_close_timeout=timedelta(seconds=PAGE / input.rate_per_second + 300),
                    heartbeat_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                )
                if last == 0:
                    break
                after = last
                if workflow.info().is_continue_as_new_suggested():
                    workflow.continue_as_new(replace(input, after_seq=after))
            status = "completed"
        except (asyncio.CancelledError, ActivityError) as e:
            # cancelled while its activity ran: the activity's cancellation arrives wrapped
            if isinstance(e, ActivityError) and not isinstance(e.cause, CancelledError):
                raise
            status = "cancelled"
        await workflow.execute_activity(
            "finish_bulk",
            args=[input.operation_id, status],
            start_to_close_timeout=timedelta(seconds=30),
        )
        return status
