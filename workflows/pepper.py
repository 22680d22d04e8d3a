"""PepperRotationWorkflow: the forced part of a credential-pepper rotation.

Secrets move to the current pepper as they verify (`CredentialService._upgrade_hash`); this
job re-hashes every other stored hash of a version that can still verify under the current
pepper, without the secret (`core.credentials.rehash`: the old hash becomes the inner layer).
Afterwards no stored hash can be checked without the current pepper. One per current pepper,
id `keyrotor/pepper/<pepper id>`; batch by batch, its cursor in workflow state (a stopped job
goes on from its last finished batch; a repeated batch finds its rows done); query `progress`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.credentials import CredentialActivities, RehashRequest

BATCH_SIZE = 500


def pepper_workflow_id(pepper_id: str) -> str:
    return f"keyrotor/pepper/{pepper_id}"


@dataclass(frozen=True)
class PepperRotationInput:
    """Who asked and why; the rest is the job's place, carried into continue-as-new."""

    actor: str = "keyrotor"
    reason: str = ""
    batch_size: int = BATCH_SIZE
    cursor: str = ""
    scanned: int = 0
    rehashed: int = 0


@dataclass(frozen=True)
class PepperRotationProgress:
    scanned: int  # versions looked at so far
    rehashed: int  # hashes re-hashed so far
    done: bool = False


@workflow.defn
class PepperRotationWorkflow:
    @workflow.init
    def __init__(self, input: PepperRotationInput) -> None:
        self._state = input
        self._done = False

    @workflow.run
    async def run(self, input: PepperRotationInput) -> PepperRotationProgress:
        if not 1 <= input.batch_size <= 10_000:
            raise ApplicationError("batch_size must be 1 to 10000", non_retryable=True)
        while True:
            s = self._state
            batch = await workflow.execute_activity_method(
                CredentialActivities.rehash_batch,
                RehashRequest(s.cursor, s.batch_size),
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
            )
            self._state = replace(
                s,
                cursor=batch.cursor,
                scanned=s.scanned + batch.scanned,
                rehashed=s.rehashed + batch.rehashed,
            )
            if not batch.cursor:
                break
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(self._state)
        self._done = True
        return self.progress()

    @workflow.query
    def progress(self) -> PepperRotationProgress:
        return PepperRotationProgress(self._state.scanned, self._state.rehashed, self._done)
