"""CleanupWorkflow on the time-skipping test server with the real activities and store."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.testing import WorkflowEnvironment

from core.services import Services
from worker.main import build_worker
from workflows.cleanup import ACTIVITY_RETRY, CleanupInput, CleanupWorkflow


async def test_a_batch_the_store_keeps_refusing_fails_the_run_after_its_attempts(
    time_skipping_env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    """A run held by a failing batch would hold every later scheduled run too (overlap SKIP):
    after ACTIVITY_RETRY's attempts the run fails instead. The store really fails here: the
    first step's table is gone."""
    with services.store.engine.begin() as db:
        db.execute(text("ALTER TABLE key_versions RENAME TO key_versions_gone"))
    env = time_skipping_env
    async with build_worker(env.client, services, task_queue):
        handle = await env.client.start_workflow(
            CleanupWorkflow.run, CleanupInput(), id=f"cleanup-{task_queue}", task_queue=task_queue
        )
        with pytest.raises(WorkflowFailureError) as failed:
            # unlimited retries would skip time for ever: this bound fails the test then
            await asyncio.wait_for(handle.result(), 120)
    cause = failed.value.cause
    assert isinstance(cause, ActivityError)
    assert cause.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
    assert isinstance(cause.cause, ApplicationError)
    assert cause.cause.type == "StoreError"
    assert "key_versions" not in str(cause.cause)  # the error's type only, not its text
    events = (await handle.fetch_history()).events
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert attempts == [ACTIVITY_RETRY.maximum_attempts] == [12]
