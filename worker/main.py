"""The keyrotor worker: runs the lifecycle workflows and their activities."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from importlib.metadata import version

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.audit import AuditActivities
from activities.bulk import BulkActivities
from activities.credentials import CredentialActivities
from activities.keys import KeyActivities, KeyUsageActivities
from activities.webhooks import WebhookActivities
from core.codec import connect_client
from core.services import Services
from workflows.audit_retention import AuditRetentionWorkflow, retention_schedule_id
from workflows.bulk import BulkOperationWorkflow
from workflows.credential_lifecycle import CredentialLifecycleWorkflow
from workflows.handle_lifecycle import HandleLifecycleWorkflow
from workflows.key_lifecycle import KeyLifecycleWorkflow
from workflows.webhooks import (
    DispatcherInput,
    WebhookDeliveryWorkflow,
    WebhookDispatcherWorkflow,
    dispatcher_id,
)

ACTIVITY_THREADS = 32
POLICY_POLL_INTERVAL = 2.0
log = logging.getLogger(__name__)
# The workflow modules themselves are passed through too, like everything they import (DESIGN
# 4): they hold no state at module level, and the sandbox then no longer re-executes them (and
# their `@workflow.defn` class definitions) for every workflow it starts.
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)


def build_worker(client: Client, services: Services, task_queue: str | None = None) -> Worker:
    """A worker for every keyrotor workflow and activity, sharing `services`."""
    keys = KeyActivities(services.keys)
    usage = KeyUsageActivities(services.keys)
    credentials = CredentialActivities(services.credentials)
    webhooks = WebhookActivities(services.webhooks)
    auditing = AuditActivities(services.store, services.policies)
    bulk = BulkActivities(services.bulk, services.policy_versions, client)
    return Worker(
        client,
        task_queue=task_queue or services.settings.task_queue,
        workflows=[
            KeyLifecycleWorkflow,
            CredentialLifecycleWorkflow,
            HandleLifecycleWorkflow,
            WebhookDispatcherWorkflow,
            WebhookDeliveryWorkflow,
            AuditRetentionWorkflow,
            BulkOperationWorkflow,
        ],
        workflow_runner=SANDBOX,
        activities=[
            keys.commit_key_transition,
            usage.last_used,
            credentials.commit_credential_transition,
            webhooks.last_event_id,
            webhooks.fan_out,
            webhooks.deliver,
            webhooks.fail,
            auditing.apply_retention,
            bulk.run_page,
            bulk.finish,
        ],
        activity_executor=ThreadPoolExecutor(ACTIVITY_THREADS),
        max_concurrent_activities=ACTIVITY_THREADS,
        # Without it the SDK hashes the code of every loaded module at start-up.
        build_id=f"keyrotor-{version('keyrotor')}",
    )


async def start_background_workflows(client: Client, services: Services) -> None:
    """Start what runs besides the lifecycle workflows, unless it runs already (every worker
    asks; one of each runs per task queue): the webhook dispatcher, and the daily schedule of
    the audit retention."""
    queue = services.settings.task_queue
    await client.start_workflow(
        WebhookDispatcherWorkflow.run,
        DispatcherInput(services.settings.webhook_max_attempts),
        id=dispatcher_id(queue),
        task_queue=queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            retention_schedule_id(queue),
            Schedule(
                action=ScheduleActionStartWorkflow(
                    AuditRetentionWorkflow.run,
                    id=f"keyrotor/audit-retention/{queue}",
                    task_queue=queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(days=1))]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )


async def run_worker(services: Services, stop: asyncio.Event | None = None) -> None:
    """Connect to Temporal and run the worker until `stop` is set (or forever)."""
    s = services.settings
    client = await connect_client(s.temporal_address, s.temporal_namespace, services.keyring)
    async with build_worker(client, services):
        await start_background_workflows(client, services)
        stopping = stop or asyncio.Event()
        while not stopping.is_set():  # take up new policy versions (PUT /config)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLICY_POLL_INTERVAL)
            try:
                await asyncio.to_thread(services.refresh_policies)
            except Exception as e:  # the store may be briefly unavailable
                log.warning("could not read the policy: %s", type(e).__name__)
