"""KeyLifecycleWorkflow: one long-running workflow owns one key, from creation to its end.

The loop, the messages and the commits are `ManagedLifecycleWorkflow`'s; a key's commit
activity (`commit_key_transition`) creates each new version's material at its provider.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    # our modules, the lifecycle loop included, are shared rather than re-run for every
    # workflow (DESIGN 4): they hold no state of their own
    from activities.keys import KeyActivities, KeyUsageActivities
    from core.lifecycle import next_transition
    from core.objects import KeyTransitionCommit
    from workflows.managed import ManagedLifecycleWorkflow
    from workflows.types import KeyDescription, KeyWorkflowInput


@workflow.defn
class KeyLifecycleWorkflow(ManagedLifecycleWorkflow):
    """Generates, warns, rotates with grace, retires and expires one key.

    Messages: update `rotate` (RotateRequest -> RotationResult), update `change_status`
    (StatusChange), update `wait_created`; signals `emergency_rotate`, `revoke`, `suspend`,
    `resume` (OperatorAction); query `describe` (KeyDescription).
    """

    KIND = "key"
    COMMIT = KeyActivities.commit_key_transition
    COMMIT_INPUT = KeyTransitionCommit
    LAST_USED = KeyUsageActivities.last_used
    INPUT = KeyWorkflowInput

    @workflow.init
    def __init__(self, input: KeyWorkflowInput) -> None:
        super().__init__(input)

    @workflow.run
    async def run(self, input: KeyWorkflowInput) -> str:
        return await self._run()

    @workflow.query
    def describe(self) -> KeyDescription:
        """The key's spec, lifecycle state and next scheduled transition."""
        return KeyDescription(
            spec=self._spec,
            lifecycle=self._key,
            next_transition=next_transition(self._key, workflow.now()),
            created=self._created,
            policy_version=self._policy_version,
        )
