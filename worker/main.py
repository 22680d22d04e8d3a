"""The keyrotor worker: runs the lifecycle workflows and their activities."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.credentials import CredentialActivities
from activities.keys import KeyActivities
from core.codec import connect_client
from core.services import Services
from workflows.credential_lifecycle import CredentialLifecycleWorkflow
from workflows.handle_lifecycle import HandleLifecycleWorkflow
from workflows.key_lifecycle import KeyLifecycleWorkflow

ACTIVITY_THREADS = 32
# The workflow modules themselves are passed through too, like everything they import (DESIGN
# 4): they hold no state at module level, and the sandbox then no longer re-executes them (and
# their `@workflow.defn` class definitions) for every workflow it starts.
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)


def build_worker(client: Client, services: Services, task_queue: str | None = None) -> Worker:
    """A worker for every keyrotor workflow and activity, sharing `services`."""
    keys = KeyActivities(services.keys)
    credentials = CredentialActivities(services.credentials)
    return Worker(
        client,
        task_queue=task_queue or services.settings.task_queue,
        workflows=[KeyLifecycleWorkflow, CredentialLifecycleWorkflow, HandleLifecycleWorkflow],
        workflow_runner=SANDBOX,
        activities=[keys.commit_key_transition, credentials.commit_credential_transition],
        activity_executor=ThreadPoolExecutor(ACTIVITY_THREADS),
        max_concurrent_activities=ACTIVITY_THREADS,
        # Without it the SDK hashes the code of every loaded module at start-up.
        build_id=f"keyrotor-{version('keyrotor')}",
    )


async def run_worker(services: Services, stop: asyncio.Event | None = None) -> None:
    """Connect to Temporal and run the worker until `stop` is set (or forever)."""
    s = services.settings
    client = await connect_client(s.temporal_address, s.temporal_namespace, services.keyring)
    async with build_worker(client, services):
        await (stop or asyncio.Event()).wait()
