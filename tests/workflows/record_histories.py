"""Record the workflow histories that the replay test checks every change against.

Records the histories that are missing; existing ones are kept, so that each stays a check that
new code still replays what older code wrote. After a deliberate, compatible change:
    .venv/bin/python -m tests.workflows.record_histories [--force]
Histories are encrypted with the tests' fixed master key (not a real secret).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from core.codec import data_converter
from core.lifecycle import new_key
from core.objects import CredentialSpec, KeySpec
from core.services import Services
from tests.fixtures.temporal import BIN, TEST_KEYRING, make_services
from worker.main import build_worker
from workflows.credential_lifecycle import CredentialLifecycleWorkflow
from workflows.handle_lifecycle import HandleLifecycleWorkflow
from workflows.key_lifecycle import KeyLifecycleWorkflow
from workflows.types import (
    AcknowledgeWarning,
    CredentialWorkflowInput,
    KeyWorkflowInput,
    OperatorAction,
    RotateRequest,
    StatusChange,
)

HISTORIES = Path(__file__).parent / "histories"


async def key_lifecycle_full(env: WorkflowEnvironment, services: Services) -> str:
    policy = services.policies.key_type("encryption")
    now = await env.get_current_time()
    spec = KeySpec("key_recordedhistory001", "dev", "encryption", policy.algorithm, "local", 256)
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
    return (await handle.fetch_history()).to_json()


async def key_staged_warnings(env: WorkflowEnvironment, services: Services) -> str:
    """Staged rotation and expiry warnings (the shipped encryption policy has both),
    acknowledged through the update and the signal."""
    policy = services.policies.key_type("encryption")
    now = await env.get_current_time()
    spec = KeySpec("key_recordedwarnings01", "dev", "encryption", policy.algorithm, "local", 256)
    handle = await env.client.start_workflow(
        KeyLifecycleWorkflow.run,
        KeyWorkflowInput(
            spec=spec,
            lifecycle=new_key(policy.lifecycle(), now, now + timedelta(days=45)),
            publish_search_attributes=False,
        ),
        id=f"keyrotor/key/dev/{spec.key_id}",
        task_queue="record",
    )
    await handle.execute_update(KeyLifecycleWorkflow.wait_created)
    await env.sleep(timedelta(days=16))  # expiry stage 1
    await handle.execute_update(
        KeyLifecycleWorkflow.acknowledge_warnings, AcknowledgeWarning(reason="recorded")
    )
    await env.sleep(timedelta(days=23))  # rotation stages, rotation, expiry stage 2
    await handle.signal(KeyLifecycleWorkflow.acknowledge_warning, AcknowledgeWarning("expiry"))
    await handle.query(KeyLifecycleWorkflow.describe)
    assert await handle.result() == "expired"
    return (await handle.fetch_history()).to_json()


async def credential_lifecycle_full(env: WorkflowEnvironment, services: Services) -> str:
    now = await env.get_current_time()
    spec = CredentialSpec("cred_recordedhistory01", "dev", owner="team", scopes=("read",))
    handle = await env.client.start_workflow(
        CredentialLifecycleWorkflow.run,
        CredentialWorkflowInput(
            spec=spec,
            lifecycle=new_key(
                services.policies.credentials.lifecycle(scheduled=True),
                now,
                now + timedelta(days=200),
            ),
            publish_search_attributes=False,
        ),
        id=f"keyrotor/credential/dev/{spec.credential_id}",
        task_queue="record",
    )
    await handle.execute_update(CredentialLifecycleWorkflow.wait_created)
    await env.sleep(timedelta(days=91))  # warn, scheduled rotation, grace ends
    await handle.execute_update(
        CredentialLifecycleWorkflow.rotate,
        RotateRequest(grace_period_seconds=3600, request_id="r1"),
    )
    await handle.signal(CredentialLifecycleWorkflow.emergency_rotate, OperatorAction("recorded"))
    await handle.execute_update(CredentialLifecycleWorkflow.change_status, StatusChange("suspend"))
    await handle.execute_update(CredentialLifecycleWorkflow.change_status, StatusChange("resume"))
    await handle.query(CredentialLifecycleWorkflow.describe)
    await handle.signal(CredentialLifecycleWorkflow.revoke, OperatorAction("recorded"))
    assert await handle.result() == "revoked"
    return (await handle.fetch_history()).to_json()


async def handle_lifecycle_full(env: WorkflowEnvironment, services: Services) -> str:
    now = await env.get_current_time()
    policy = services.policies.handle_type("workflow")
    security = services.policies.security
    spec = CredentialSpec(
        "hdl_recordedhistory001",
        "dev",
        kind="handle",
        type="workflow",
        user_id="user123",
        context={"ip": "192.0.2.1"},
        max_usage=policy.max_usage,
        hash_algorithm=policy.algorithm,
        secret_bytes=policy.handle_length,
    )
    handle = await env.client.start_workflow(
        HandleLifecycleWorkflow.run,
        CredentialWorkflowInput(
            spec=spec,
            lifecycle=new_key(policy.lifecycle(security), now, now + policy.max_lifetime),
            publish_search_attributes=False,
        ),
        id=f"keyrotor/handle/dev/{spec.credential_id}",
        task_queue="record",
    )
    await handle.execute_update(HandleLifecycleWorkflow.wait_created)
    for version in (1, 2):  # two exchanges, each of the value in use
        await handle.execute_update(
            HandleLifecycleWorkflow.rotate,
            RotateRequest(grace_period_seconds=2, expected_version=version),
        )
        await env.sleep(timedelta(seconds=3))  # the reuse interval ends
    await handle.signal(HandleLifecycleWorkflow.suspend, OperatorAction("anomalies"))
    await handle.signal(HandleLifecycleWorkflow.resume, OperatorAction("checked"))
    await handle.query(HandleLifecycleWorkflow.describe)
    await env.sleep(timedelta(hours=4))  # the family's max lifetime
    assert await handle.result() == "expired"
    return (await handle.fetch_history()).to_json()


RECORDERS: dict[str, Callable[[WorkflowEnvironment, Services], Awaitable[str]]] = {
    "key_lifecycle_full": key_lifecycle_full,
    "key_staged_warnings": key_staged_warnings,
    "credential_lifecycle_full": credential_lifecycle_full,
    "handle_lifecycle_full": handle_lifecycle_full,
}


async def record(force: bool = False) -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=data_converter(TEST_KEYRING),
    )
    services = make_services(Path(tempfile.mkdtemp()))
    async with env, build_worker(env.client, services, "record"):
        for name, recorder in RECORDERS.items():
            path = HISTORIES / f"{name}.json"
            if force or not path.exists():
                path.write_text(await recorder(env, services))
                print(f"recorded {path}")
    services.close()


if __name__ == "__main__":
    asyncio.run(record(force="--force" in sys.argv))
