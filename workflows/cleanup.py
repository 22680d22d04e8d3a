"""CleanupWorkflow: the store's daily cleanup (`core.cleanup`): destroy the material of key
versions that ended long ago, delete old hashes, archive revoked and expired credentials and
handle families, delete old events.

Run by the schedule `keyrotor-cleanup/<task queue>` that every worker makes sure exists
(visible, pausable and triggerable in the Temporal UI's Schedules page, or with
`POST /cleanup/run`). It works the steps in order, one batch per activity; the step and cursor
are its state, carried into continue-as-new, so a crashed worker's run goes on from its last
finished batch. The query `progress` answers where it is. Every batch uses the run's start
time for its cutoffs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.cleanup import CleanupActivities, CleanupBatchRequest, CleanupReport
    from core.cleanup import STEPS

BATCH_SIZE = 200
# A batch that keeps failing (a row the store refuses) fails the run after about ten minutes
# instead of holding it, and with it every later scheduled run (overlap: skip), for ever.
ACTIVITY_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=1), maximum_attempts=12)


def cleanup_schedule_id(task_queue: str) -> str:
    return f"keyrotor-cleanup/{task_queue}"


def cleanup_workflow_id(task_queue: str) -> str:
    """The schedule's workflow id (the schedule appends each run's start time to it)."""
    return f"keyrotor/cleanup/{task_queue}"


@dataclass(frozen=True)
class CleanupInput:
    """Who started it and why; the rest is the run's place, carried into continue-as-new."""

    actor: str = "keyrotor-cleanup"
    reason: str = "scheduled"
    batch_size: int = BATCH_SIZE
    started_at: datetime | None = None
    step: int = 0  # index into core.cleanup.STEPS
    cursor: str = ""
    changed: tuple[int, ...] = field(default_factory=lambda: (0,) * len(STEPS))
    failed: int = 0


@dataclass(frozen=True)
class CleanupProgress:
    step: str  # the step being worked ("" once all are done)
    destroyed: int  # key versions whose material was destroyed
    hashes_deleted: int  # hashes of ended credential and handle versions
    archived: int  # credentials and handle families archived
    events_deleted: int
    failed: int  # versions a provider refused to destroy (kept; tried again next run)
    done: bool = False


@workflow.defn
class CleanupWorkflow:
    @workflow.init
    def __init__(self, input: CleanupInput) -> None:
        self._state = input
        self._done = False

    @workflow.run
    async def run(self, input: CleanupInput) -> CleanupProgress:
        if not 1 <= input.batch_size <= 10_000:
            raise ApplicationError("batch_size must be 1 to 10000", non_retryable=True)
        started = self._state.started_at or workflow.now()
        self._state = replace(self._state, started_at=started)
        while self._state.step < len(STEPS):
            s = self._state
            batch = await workflow.execute_activity_method(
                CleanupActivities.batch,
                CleanupBatchRequest(STEPS[s.step], s.cursor, s.batch_size, started, s.actor),
                start_to_close_timeout=timedelta(minutes=10),
                retry_policy=ACTIVITY_RETRY,
            )
            changed = list(s.changed)
            changed[s.step] += batch.changed
            self._state = replace(
                s,
                step=s.step + (0 if batch.cursor else 1),
                cursor=batch.cursor,
                changed=tuple(changed),
                failed=s.failed + batch.failed,
            )
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(self._state)
        await workflow.execute_activity_method(
            CleanupActivities.finish,
            CleanupReport(
                workflow.info().workflow_id,
                self._state.actor,
                self._state.reason,
                workflow.now(),
                dict(zip(STEPS, self._state.changed, strict=True)) | {"failed": self._state.failed},
            ),
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=ACTIVITY_RETRY,
        )
        self._done = True
        return self.progress()

    @workflow.query
    def progress(self) -> CleanupProgress:
        s = self._state
        destroyed, hashes_deleted, archived, events_deleted = s.changed
        return CleanupProgress(
            step=STEPS[s.step] if s.step < len(STEPS) else "",
            destroyed=destroyed,
            hashes_deleted=hashes_deleted,
            archived=archived,
            events_deleted=events_deleted,
            failed=s.failed,
            done=self._done,
        )
