"""HandleLifecycleWorkflow: one long-running workflow owns one handle family.

A handle family is a chain of short-lived handle values: the holder exchanges the current value
for the next one (the update `rotate`, with `expected_version` so that one value is exchanged
once), the old value stays valid for the reuse interval, and the family ends at its max
lifetime, on revocation (e.g. a reuse of an exchanged value) or when a suspension times out.
Values are stored like API-credential secrets (the same commit activity and tables).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.credential_lifecycle import CredentialLifecycleWorkflow
    from workflows.types import CredentialWorkflowInput


@workflow.defn
class HandleLifecycleWorkflow(CredentialLifecycleWorkflow):
    """Issues, exchanges and ends one handle family. Messages as for credentials."""

    KIND = "handle"

    @workflow.init
    def __init__(self, input: CredentialWorkflowInput) -> None:
        super().__init__(input)

    @workflow.run
    async def run(self, input: CredentialWorkflowInput) -> str:
        return await self._run()
