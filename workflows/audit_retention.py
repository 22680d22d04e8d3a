"""AuditRetentionWorkflow: summarise the audit records past their retention, once a day.

Run by the schedule `keyrotor-audit-retention/<task queue>` that every worker makes sure
exists (visible, pausable and triggerable in the Temporal UI's Schedules page); its activity
redacts batch by batch (`core.audit.apply_retention`) and answers how many records it
summarised.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy


def retention_schedule_id(task_queue: str) -> str:
    return f"keyrotor-audit-retention/{task_queue}"


@workflow.defn
class AuditRetentionWorkflow:
    @workflow.run
    async def run(self) -> int:
        summarised: int = await workflow.execute_activity(
            "apply_audit_retention",
            result_type=int,
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5)),
        )
        return summarised
