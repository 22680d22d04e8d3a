"""MasterKeyRotationWorkflow: re-seal every blob under the current master key, then retire
the older keys (`core.master_keys`).

One per current master key, id `keyrotor/master-key/<current key id>`. It works the sealed
columns in order, one batch per activity; the batch's cursor is the workflow's state, so a
crashed worker's job goes on from the last finished batch (re-sealing is idempotent, so a
batch repeated after a crash does no harm). The query `progress` answers where it is; long
jobs continue as new when the history grows. Once every column is done, an activity checks
that no blob is left under an older key and records those keys as retired, after which no
process opens a blob sealed under them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.master_keys import MasterKeyActivities, ResealRequest, RetireRequest
    from core.master_keys import SEALED

BATCH_SIZE = 200
# The fourth sealed column, `store_secrets`, came later: a run that had finished the first three
# before it did goes on to retire the old keys, as it did then (and fails there if a store
# secret is still under one of them: run the job again).
STORE_SECRETS_PATCH = "reseal-store-secrets"
ACTIVITY_RETRY = RetryPolicy(
    maximum_interval=timedelta(minutes=1), non_retryable_error_types=["MasterKeyError"]
)


def rotation_workflow_id(current_key_id: str) -> str:
    return f"keyrotor/master-key/{current_key_id}"


@dataclass(frozen=True)
class MasterKeyRotationInput:
    """Who asked and why; the rest is the job's place, carried into continue-as-new."""

    actor: str = "keyrotor"
    reason: str = ""
    batch_size: int = BATCH_SIZE
    column: int = 0  # index into core.master_keys.SEALED
    cursor: str = ""
    scanned: int = 0
    resealed: int = 0


@dataclass(frozen=True)
class MasterKeyRotationProgress:
    column: str  # the sealed column being worked ("" once all are done)
    scanned: int  # rows looked at so far
    resealed: int  # blobs re-sealed so far
    retired: tuple[str, ...] = ()  # the keys retired at the end
    done: bool = False


@workflow.defn
class MasterKeyRotationWorkflow:
    @workflow.init
    def __init__(self, input: MasterKeyRotationInput) -> None:
        self._state = input
        self._retired: tuple[str, ...] = ()
        self._done = False

    @workflow.run
    async def run(self, input: MasterKeyRotationInput) -> MasterKeyRotationProgress:
        if not 1 <= input.batch_size <= 10_000:
            raise ApplicationError("batch_size must be 1 to 10000", non_retryable=True)
        while self._state.column < len(SEALED):
            s = self._state
            if SEALED[s.column].name == "store_secrets" and not workflow.patched(
                STORE_SECRETS_PATCH
            ):
                break
            batch = await workflow.execute_activity_method(
                MasterKeyActivities.reseal_batch,
                ResealRequest(SEALED[s.column].name, s.cursor, s.batch_size),
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=ACTIVITY_RETRY,
            )
            self._state = replace(
                s,
                column=s.column + (0 if batch.cursor else 1),
                cursor=batch.cursor,
                scanned=s.scanned + batch.scanned,
                resealed=s.resealed + batch.resealed,
            )
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(self._state)
        self._retired = tuple(
            await workflow.execute_activity_method(
                MasterKeyActivities.retire_old,
                RetireRequest(self._state.actor, self._state.reason, workflow.info().workflow_id),
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=ACTIVITY_RETRY,
            )
        )
        self._done = True
        return self.progress()

    @workflow.query
    def progress(self) -> MasterKeyRotationProgress:
        s = self._state
        return MasterKeyRotationProgress(
            column=SEALED[s.column].name if s.column < len(SEALED) else "",
            scanned=s.scanned,
            resealed=s.resealed,
            retired=self._retired,
            done=self._done,
        )
