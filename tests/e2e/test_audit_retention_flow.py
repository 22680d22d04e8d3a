"""Audit retention on the real dev server: the worker's daily schedule exists, its workflow
summarises the records past their environment's retention, and the chain still verifies over
REST and in a CSV export checked offline by `keyrotor audit verify-export`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from core.policy import default_policy_path
from tests.e2e.conftest import Stack, build_stack, stop_background_workflows
from worker.main import start_background_workflows
from workflows.audit_retention import AuditRetentionWorkflow, retention_schedule_id

API = "/api/key-management"
KEYROTOR = Path(sys.executable).parent / "keyrotor"


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    data_dir = tmp_path_factory.mktemp("retention")
    policy = data_dir / "keyrotor.toml"
    # dev keeps its records whole for two seconds, staging (and records of no environment) long
    text = default_policy_path().read_text()
    text = text.replace('audit_retention = "P365D"', 'audit_retention = "P30D"', 1)
    policy.write_text(text + '\n[environments.dev]\naudit_retention = "PT2S"\n')
    async with build_stack(dev_env, data_dir, config=policy) as stack:
        await start_background_workflows(stack.client, stack.services)
        yield stack
        await stop_background_workflows(stack)


async def test_old_records_are_summarised_and_the_chain_still_verifies(
    stack: Stack, tmp_path: Path
) -> None:
    queue = stack.services.settings.task_queue
    schedule = await stack.client.get_schedule_handle(retention_schedule_id(queue)).describe()
    assert schedule.schedule.spec.intervals[0].every.total_seconds() == 86400

    created = []
    for environment in ("dev", "staging"):
        r = await stack.http.post(
            f"{API}/keys/generate",
            json={"type": "encryption", "environment": environment, "userId": "alice"},
            headers=stack.auth(),
        )
        assert r.status_code == 201, r.text
        created.append(r.json()["key"]["id"])
    dev_key, staging_key = created
    await asyncio.sleep(2.5)

    summarised = await stack.client.execute_workflow(
        AuditRetentionWorkflow.run, id=f"retention-test-{uuid.uuid4()}", task_queue=queue
    )
    assert summarised == 1  # the dev key's creation; staging keeps 30 days

    r = await stack.http.get(f"{API}/audit", params={"objectId": dev_key}, headers=stack.auth())
    [created_record] = r.json()["records"]
    assert created_record["action"] == "key.created" and created_record["actor"] == ""
    summary_seq = created_record["redactedBy"]
    r = await stack.http.get(
        f"{API}/audit", params={"action": "audit.retention_applied"}, headers=stack.auth()
    )
    [summary] = r.json()["records"]
    assert summary["seq"] == summary_seq
    assert summary["details"]["count:dev:key.created"] == 1
    assert summary["details"]["seqs"] == str(created_record["seq"])
    r = await stack.http.get(f"{API}/audit", params={"objectId": staging_key}, headers=stack.auth())
    assert (
        r.json()["records"][0]["actor"] == "alice" and r.json()["records"][0]["redactedBy"] is None
    )

    r = await stack.http.get(f"{API}/audit/verify", headers=stack.auth())
    assert r.json()["verification"]["ok"] is True, r.json()
    r = await stack.http.get(f"{API}/audit/export", params={"format": "csv"}, headers=stack.auth())
    export = tmp_path / "audit.csv"
    export.write_text(r.text)
    head = r.headers["x-keyrotor-audit-head-hash"]
    checked = subprocess.run(
        [str(KEYROTOR), "audit", "verify-export", str(export), "--head", head],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
