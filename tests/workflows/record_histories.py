"""Record the workflow histories that the replay test checks every change against.

Records the histories that are missing; existing ones are kept, so that each stays a check that
new code still replays what older code wrote. After a deliberate, compatible change:
    .venv/bin/python -m tests.workflows.record_histories [--force]
Histories are encrypted with the tests' fixed master key (not a real secret).
"""

from __future__ import annotations

import asyncio
import functools
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from core.codec import data_converter
from core.lifecycle import LifecyclePolicy, new_key
from core.objects import CredentialSpec, KeySpec
from core.services import Services
from tests.fixtures.temporal import BIN, TEST_KEYRING, make_services
from worker.main import build_worker
from workflows.credential_lifecycle import CredentialLifecycleWorkflow
from workflows.handle_lifecycle import HandleLifecycleWorkflow
from workflows.key_lifecycle import KeyLifecycleWorkflow
from workflows.master_key import MasterKeyRotationInput, MasterKeyRotationWorkflow
from workflows.types import (
    SEARCH_ATTRIBUTE_KEYS,
    AcknowledgeWarning,
    CredentialWorkflowInput,
    KeyWorkflowInput,
    OperatorAction,
    RotateRequest,
    StatusChange,
    key_search_attributes,
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


async def key_continued_as_new(env: WorkflowEnvironment, services: Services) -> str:
    """The first run of a daily-rotating key: it continues as new at MAX_RUN_EVENTS."""
    now = await env.get_current_time()
    spec = KeySpec("key_recordedcontinued1", "dev", "encryption", "AES-256-GCM", "local", 256)
    daily = LifecyclePolicy(
        rotation_interval=86400, warning_threshold=0, max_lifetime=90 * 86400, grace_period=0
    )
    handle = await env.client.start_workflow(
        KeyLifecycleWorkflow.run,
        KeyWorkflowInput(spec=spec, lifecycle=new_key(daily, now), publish_search_attributes=False),
        id=f"keyrotor/key/dev/{spec.key_id}",
        task_queue="record",
    )
    await handle.execute_update(KeyLifecycleWorkflow.wait_created)
    first = (await handle.describe()).run_id
    await env.sleep(timedelta(days=10))
    history = await env.client.get_workflow_handle(handle.id, run_id=first).fetch_history()
    assert history.events[-1].HasField("workflow_execution_continued_as_new_event_attributes")
    await handle.terminate("recorded")
    return history.to_json()


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


async def key_with_search_attributes(
    env: WorkflowEnvironment, services: Services, skip_unchanged: bool = False
) -> str:
    """A key started as the API starts one (search attributes set at the start), rotated and
    suspended: recorded on the dev server, which keeps custom search attributes, so that the
    workflow's upserts are in the history. `skip_unchanged` as the API sets it since session 6
    (before, every commit upserted)."""
    policy = services.policies.key_type("encryption")
    now = datetime.now(UTC)
    key_id = "key_recordedskipunchanged" if skip_unchanged else "key_recordedsearchattr"
    spec = KeySpec(key_id, "dev", "encryption", policy.algorithm, "local", 256)
    lifecycle = new_key(policy.lifecycle(), now, now + timedelta(days=200))
    handle = await env.client.start_workflow(
        KeyLifecycleWorkflow.run,
        KeyWorkflowInput(
            spec=spec, lifecycle=lifecycle, skip_unchanged_search_attributes=skip_unchanged
        ),
        id=f"keyrotor/key/dev/{spec.key_id}",
        task_queue="record",
        search_attributes=key_search_attributes(spec, "active", lifecycle.versions[0].rotate_at),
    )
    await handle.execute_update(KeyLifecycleWorkflow.wait_created)
    for n in range(6):
        await handle.execute_update(
            KeyLifecycleWorkflow.rotate,
            RotateRequest(grace_period_seconds=3600, request_id=f"r{n}"),
        )
    await handle.execute_update(KeyLifecycleWorkflow.change_status, StatusChange("suspend"))
    await handle.execute_update(KeyLifecycleWorkflow.change_status, StatusChange("resume"))
    await handle.signal(KeyLifecycleWorkflow.revoke, OperatorAction("recorded"))
    assert await handle.result() == "revoked"
    return (await handle.fetch_history()).to_json()


Recorder = Callable[[WorkflowEnvironment, Services], Awaitable[str]]


# recorded on the time-skipping test server (timers pass at once, no custom search attributes)
async def master_key_rotation(env: WorkflowEnvironment, services: Services) -> str:
    """A re-seal job, one row a batch over three webhook secrets, to its end (recorded when
    the sealed columns were key_versions, credential_versions and webhooks)."""
    for n in range(3):
        services.webhooks.create(f"https://hooks.example/{n}", "", [], None, "recorder")
    result = await env.client.execute_workflow(
        MasterKeyRotationWorkflow.run,
        MasterKeyRotationInput(reason="recorded", batch_size=1),
        id="keyrotor/master-key/recorded",
        task_queue="record",
    )
    assert result.done
    handle = env.client.get_workflow_handle("keyrotor/master-key/recorded")
    return (await handle.fetch_history()).to_json()


RECORDERS: dict[str, Recorder] = {
    "key_lifecycle_full": key_lifecycle_full,
    "key_staged_warnings": key_staged_warnings,
    "key_continued_as_new": key_continued_as_new,
    "master_key_rotation": master_key_rotation,
    "credential_lifecycle_full": credential_lifecycle_full,
    "handle_lifecycle_full": handle_lifecycle_full,
}
# recorded on the dev server
DEV_RECORDERS: dict[str, Recorder] = {
    "key_with_search_attributes": key_with_search_attributes,
    "key_skipping_unchanged_search_attributes": functools.partial(
        key_with_search_attributes, skip_unchanged=True
    ),
}


async def record(force: bool = False) -> None:
    services = make_services(Path(tempfile.mkdtemp()))
    for recorders, start in (
        (
            RECORDERS,
            lambda: WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=str(BIN / "temporal-test-server"),
                data_converter=data_converter(TEST_KEYRING),
            ),
        ),
        (
            DEV_RECORDERS,
            lambda: WorkflowEnvironment.start_local(
                dev_server_existing_path=str(BIN / "temporal"),
                data_converter=data_converter(TEST_KEYRING),
                search_attributes=SEARCH_ATTRIBUTE_KEYS,
                dev_server_log_level="error",
            ),
        ),
    ):
        missing = {
            n: r for n, r in recorders.items() if force or not (HISTORIES / f"{n}.json").exists()
        }
        if not missing:
            continue
        env = await start()
        async with env, build_worker(env.client, services, "record"):
            for name, recorder in missing.items():
                path = HISTORIES / f"{name}.json"
                path.write_text(await recorder(env, services))
                print(f"recorded {path}")
    services.close()


if __name__ == "__main__":
    asyncio.run(record(force="--force" in sys.argv))
