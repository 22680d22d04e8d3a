"""Start the lifecycle workflows of a restored store (`keyrotor restore`): every key,
credential and handle family that has not ended gets its workflow back, continuing from the
state the store holds (`core.restart`)."""

from __future__ import annotations

from collections.abc import Callable

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from core.lifecycle import next_rotation_at
from core.objects import KeySpec
from core.restart import restart_states
from core.services import Services
from workflows.types import (
    CREDENTIAL_WORKFLOW,
    HANDLE_WORKFLOW,
    KEY_WORKFLOW,
    CredentialWorkflowInput,
    KeyWorkflowInput,
    credential_search_attributes,
    key_search_attributes,
)


async def restart_workflows(
    client: Client, services: Services, progress: Callable[[str], None]
) -> dict[str, int]:
    """Start each object's workflow (one already running under its id is left as it is, and
    counted); returns how many, by kind."""
    started: dict[str, int] = {}
    for state in restart_states(services.store, services.policies):
        lifecycle, spec = state.lifecycle, state.spec
        status, nxt = str(lifecycle.status), next_rotation_at(lifecycle)
        common = {
            "created": True,
            "transition_seq": state.transition_seq,
            "policy_version": services.policy_version,
            "skip_unchanged_search_attributes": True,
        }
        if isinstance(spec, KeySpec):
            workflow = KEY_WORKFLOW
            arg: object = KeyWorkflowInput(spec=spec, lifecycle=lifecycle, **common)  # type: ignore[arg-type]
            attributes = key_search_attributes(spec, status, nxt)
            name = spec.name or spec.key_id
        else:
            workflow = HANDLE_WORKFLOW if spec.kind == "handle" else CREDENTIAL_WORKFLOW
            arg = CredentialWorkflowInput(spec=spec, lifecycle=lifecycle, **common)  # type: ignore[arg-type]
            attributes = credential_search_attributes(spec, status, nxt)
            name = spec.name or spec.credential_id
        await client.start_workflow(
            workflow,
            arg,
            id=state.workflow_id,
            task_queue=services.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=attributes,
            memo={"name": name},
            static_summary=f"restored {state.kind} {name}",
        )
        started[state.kind] = started.get(state.kind, 0) + 1
        progress(f"  started {state.workflow_id}")
    return started
