"""The keyrotor worker: runs the lifecycle workflows and their activities."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from importlib.metadata import version
from types import CodeType
from typing import Any

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
from temporalio.converter import SerializationContext, StorageDriverStoreContext
from temporalio.worker import Worker, WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from temporalio.worker.workflow_sandbox._runner import _Instance

from activities.audit import AuditActivities
from activities.bulk import BulkActivities
from activities.cleanup import CleanupActivities
from activities.credentials import CredentialActivities
from activities.keys import KeyActivities, KeyUsageActivities
from activities.master_keys import MasterKeyActivities
from activities.webhooks import WebhookActivities
from core.codec import connect_with
from core.services import Services
from workflows.audit_retention import AuditRetentionWorkflow, retention_schedule_id
from workflows.bulk import BulkOperationWorkflow
from workflows.cleanup import (
    CleanupInput,
    CleanupWorkflow,
    cleanup_schedule_id,
    cleanup_workflow_id,
)
from workflows.credential_lifecycle import CredentialLifecycleWorkflow
from workflows.handle_lifecycle import HandleLifecycleWorkflow
from workflows.key_lifecycle import KeyLifecycleWorkflow
from workflows.master_key import MasterKeyRotationWorkflow
from workflows.pepper import PepperRotationWorkflow
from workflows.webhooks import (
    DispatcherInput,
    WebhookDeliveryWorkflow,
    WebhookDispatcherWorkflow,
    dispatcher_id,
)

ACTIVITY_THREADS = 32
POLICY_POLL_INTERVAL = 2.0
# How long a stopping worker lets running activities go on before it cancels them (the SDK's
# default): none. Every activity is idempotent, and a cancelled one is failed at once as
# `WorkerShutdown`, so Temporal retries it on another worker without waiting for its timeout.
# Waiting would hold every stop for this long: the webhook dispatcher's fan-out activity is
# always running somewhere, waiting up to 30 s for events.
GRACEFUL_SHUTDOWN = timedelta(0)
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> CodeType:
    return compile(source, "<workflow sandbox>", "exec")


class _LeanInstance(_Instance):
    """The SDK's sandboxed workflow instance (a private class of temporalio 1.35, pinned in
    pyproject.toml: `tests/unit/test_sandbox_runner.py` checks it), with two costs removed that
    together were about a quarter of the worker's CPU; the workflow code runs as before, in the
    sandbox and under its restrictions.

    - The snippets the instance runs in the sandbox are compiled once per worker, not at every
      call (one per activation, and more per payload).
    - The serialization context of each payload (for the payload codec) and the external
      storage context of each payload sequence are asked of the instance directly. The SDK
      enters the sandbox for each, with its import hooks and patched builtins, although the
      answer is a plain lookup in the SDK's own code (its `temporalio` modules are passed
      through, so they are the same objects inside and out).
    """

    def _run_code(self, code: str, **extra_globals: Any) -> None:
        super()._run_code(_compiled(code), **extra_globals)  # type: ignore[arg-type]

    def get_serialization_context(self, command_info: Any) -> SerializationContext | None:
        return self.globals_and_locals["__temporal_in_sandbox"].get_serialization_context(  # type: ignore[no-any-return,attr-defined]
            command_info
        )

    def get_external_store_context(self, command_info: Any) -> StorageDriverStoreContext:
        return self.globals_and_locals["__temporal_in_sandbox"].get_external_store_context(  # type: ignore[no-any-return,attr-defined]
            command_info
        )


@dataclasses.dataclass(frozen=True)
class CompiledSandboxRunner(SandboxedWorkflowRunner):
    """The SDK's sandboxed runner, making `_LeanInstance`s."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _LeanInstance(det, self.runner_class, self.restrictions)


# The workflow modules themselves are passed through too, like everything they import (DESIGN
# 4): they hold no state at module level, and the sandbox then no longer re-executes them (and
# their `@workflow.defn` class definitions) for every workflow it starts.
SANDBOX = CompiledSandboxRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)


def build_worker(client: Client, services: Services, task_queue: str | None = None) -> Worker:
    """A worker for every keyrotor workflow and activity, sharing `services`."""
    keys = KeyActivities(services.keys)
    usage = KeyUsageActivities(services.keys)
    credentials = CredentialActivities(services.credentials)
    webhooks = WebhookActivities(services.webhooks)
    auditing = AuditActivities(services.store, lambda: services.policies)
    bulk = BulkActivities(services.bulk, services.policy_versions, client)
    master_keys = MasterKeyActivities(services.master_keys)
    cleanup = CleanupActivities(services.cleanup, services.store)
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
            MasterKeyRotationWorkflow,
            PepperRotationWorkflow,
            CleanupWorkflow,
        ],
        workflow_runner=SANDBOX,
        activities=[
            keys.commit_key_transition,
            usage.last_used,
            credentials.commit_credential_transition,
            credentials.rehash_batch,
            webhooks.last_event_id,
            webhooks.fan_out,
            webhooks.deliver,
            webhooks.fail,
            auditing.apply_retention,
            bulk.run_page,
            bulk.finish,
            master_keys.reseal_batch,
            master_keys.retire_old,
            cleanup.batch,
            cleanup.finish,
        ],
        max_cached_workflows=services.settings.worker_cache_size,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        activity_executor=ThreadPoolExecutor(ACTIVITY_THREADS),
        max_concurrent_activities=ACTIVITY_THREADS,
        # Without it the SDK hashes the code of every loaded module at start-up.
        build_id=f"keyrotor-{version('keyrotor')}",
    )


async def start_background_workflows(client: Client, services: Services) -> None:
    """Start what runs besides the lifecycle workflows, unless it runs already (every worker
    asks; one of each runs per task queue): the webhook dispatcher, and the daily schedules of
    the audit retention and of the cleanup."""
    queue = services.settings.task_queue
    await client.start_workflow(
        WebhookDispatcherWorkflow.run,
        DispatcherInput(services.settings.webhook_max_attempts),
        id=dispatcher_id(queue),
        task_queue=queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    daily = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(days=1))])
    skip = SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP)
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            retention_schedule_id(queue),
            Schedule(
                action=ScheduleActionStartWorkflow(
                    AuditRetentionWorkflow.run,
                    id=f"keyrotor/audit-retention/{queue}",
                    task_queue=queue,
                ),
                spec=daily,
                policy=skip,
            ),
        )
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            cleanup_schedule_id(queue),
            Schedule(
                action=ScheduleActionStartWorkflow(
                    CleanupWorkflow.run,
                    CleanupInput(),
                    id=cleanup_workflow_id(queue),
                    task_queue=queue,
                ),
                spec=daily,
                policy=skip,
            ),
        )


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT and SIGTERM set, in place of their usual effect, while the running
    event loop runs.

    Without it SIGTERM (what docker, systemd and `keyrotor worker --processes` send) killed the
    worker at once, and its running activities were retried only after their timeouts. SIGINT
    cannot be the way to stop either: a process started in the background by a non-interactive
    shell (as CI runners and some process managers start it) ignores it. Before the loop runs
    (imports, migration) SIGTERM keeps its default action: the process ends at once, with
    nothing started that needs a graceful stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_worker(services: Services, stop: asyncio.Event | None = None) -> None:
    """Connect to Temporal and run the worker until `stop` is set (default: until SIGINT or
    SIGTERM); then stop polling, cancel the running activities and return once they ended."""
    stopping = stop or stop_on_signals()
    s = services.settings
    client = await connect_with(s, services.keyring)
    async with build_worker(client, services):
        await start_background_workflows(client, services)
        while not stopping.is_set():  # take up new policy versions (PUT /config)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLICY_POLL_INTERVAL)
                break
            try:
                await asyncio.to_thread(services.refresh_policies)
            except Exception as e:  # the store may be briefly unavailable
                log.warning("could not read the policy: %s", type(e).__name__)
