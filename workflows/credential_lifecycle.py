"""CredentialLifecycleWorkflow: one long-running workflow owns one API credential.

Each version is one secret. The commit activity (`commit_credential_transition`) generates a
new version's secret inside the store transaction and returns nothing: no secret, not even
encrypted, passes through Temporal. The API hands the new secret to its requester from the
store once the rotation is committed.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    # our modules, the lifecycle loop included, are shared rather than re-run for every
    # workflow (DESIGN 4): they hold no state of their own
    from activities.credentials import CredentialActivities
    from core.lifecycle import next_transition
    from core.objects import CredentialTransitionCommit
    from workflows.managed import ManagedLifecycleWorkflow
    from workflows.types import CredentialDescription, CredentialWorkflowInput


@workflow.defn
class CredentialLifecycleWorkflow(ManagedLifecycleWorkflow):
    """Creates, (optionally) rotates on schedule with grace, and expires one API credential.

    Messages as for keys: update `rotate` (the REST "reroll"), update `change_status`, update
    `wait_created`; signals `emergency_rotate`, `revoke`, `suspend`, `resume`; query
    `describe` (CredentialDescription).
    """

    KIND = "credential"
    COMMIT = CredentialActivities.commit_credential_transition
    COMMIT_INPUT = CredentialTransitionCommit
    INPUT = CredentialWorkflowInput

    @workflow.init
    def __init__(self, input: CredentialWorkflowInput) -> None:
        super().__init__(input)

    @workflow.run
    async def run(self, input: CredentialWorkflowInput) -> str:
        return await self._run()

    @workflow.query
    def describe(self) -> CredentialDescription:
        """The credential's spec, lifecycle state and next scheduled transition."""
        return CredentialDescription(
            spec=self._spec,
            lifecycle=self._key,
            next_transition=next_transition(self._key, workflow.now()),
            created=self._created,
            policy_version=self._policy_version,
        )
