"""Record the workflow histories that the replay test checks every change against.

Run after a deliberate, compatible change of workflow code only:
    .venv/bin/python -m tests.workflows.record_histories
Histories are encrypted with the tests' fixed master key (not a real secret).
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import timedelta
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from core.codec import data_converter
from core.lifecycle import new_key
from core.objects import KeySpec
from tests.fixtures.temporal import BIN, TEST_KEYRING, make_services
from worker.main import build_worker
from workflows.key_lifecycle import KeyLifecycleWorkflow
from workflows.types import KeyWorkflowInput, OperatorAction, RotateRequest, StatusChange

HISTORIES = Path(__file__).parent / "histories"


async def record() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=data_converter(TEST_KEYRING),
    )
    services = make_services(Path(tempfile.mkdtemp()))
    async with env, build_worker(env.client, services, "record"):
        policy = services.policies.key_type("encryption")
        now = await env.get_current_time()
        spec = KeySpec(
            "key_recordedhistory001", "dev", "encryption", policy.algorithm, "local", 256
        )
        handle = await env.client.start_workflow(
            KeyLifecycleWorkflow.run,
            KeyWorkflowInput(
                spec=spec,
                lifecycle=new_key(policy.lifecycle(), now, now + timedelta(days=200)),
                publish_search_attributes=False,
            ),
            id=f"keyrotor/key/dev/{spec.key_id}",
            task_queue="record",
        )
        await handle.execute_update(KeyLifecycleWorkflow.wait_created)
        await env.sleep(timedelta(days=31))  # warn, scheduled rotation
        await handle.execute_update(
            KeyLifecycleWorkflow.rotate, RotateRequest(grace_period_seconds=3600, request_id="r1")
        )
        await handle.signal(KeyLifecycleWorkflow.emergency_rotate, OperatorAction("recorded"))
        await env.sleep(timedelta(days=1))  # grace ends
        await handle.execute_update(KeyLifecycleWorkflow.change_status, StatusChange("suspend"))
        await handle.execute_update(KeyLifecycleWorkflow.change_status, StatusChange("resume"))
        await handle.query(KeyLifecycleWorkflow.describe)
        await handle.signal(KeyLifecycleWorkflow.revoke, OperatorAction("recorded"))
        assert await handle.result() == "revoked"
        history = await handle.fetch_history()
        (HISTORIES / "key_lifecycle_full.json").write_text(history.to_json())
    services.close()


if __name__ == "__main__":
    asyncio.run(record())
