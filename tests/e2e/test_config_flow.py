"""GET and PUT /config on the real dev server: a new policy version is validated, audited and
rolled out, running workflows describe the version they run under, and bad policies change
nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from core.policy import default_policy_path
from tests.e2e.conftest import Stack, build_stack
from workflows.key_lifecycle import KeyLifecycleWorkflow

API = "/api/key-management"


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with build_stack(dev_env, tmp_path_factory.mktemp("config")) as stack:
        yield stack


async def put(stack: Stack, toml: str, reason: str = "tighter") -> Any:
    return await stack.http.put(
        f"{API}/config", json={"toml": toml, "reason": reason}, headers=stack.auth()
    )


async def finished(stack: Stack, operation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = await stack.http.get(f"{API}/bulk/{operation_id}", headers=stack.auth())
        if r.json()["operation"]["status"] != "running":
            op: dict[str, Any] = r.json()["operation"]
            return op
        await asyncio.sleep(0.2)
    raise AssertionError("the rollout did not finish")


async def test_a_new_policy_version_reaches_running_workflows(stack: Stack) -> None:
    r = await stack.http.get(f"{API}/config", headers=stack.auth())
    first = r.json()["config"]
    assert first["source"] == "file" and first["toml"] == default_policy_path().read_text()
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "encryption"}, headers=stack.auth()
    )
    key = r.json()["key"]
    handle = stack.client.get_workflow_handle(key["workflowId"])
    before = await handle.query(KeyLifecycleWorkflow.describe)
    assert before.policy_version == first["version"]
    assert before.lifecycle.policy.rotation_interval == 30 * 86400

    text = first["toml"].replace('rotation_interval = "P30D"', 'rotation_interval = "P20D"', 1)
    r = await put(stack, text)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["changed"] is True and body["config"]["version"] == first["version"] + 1
    assert body["config"]["source"] == "api"
    assert [op["kind"] for op in body["rollouts"]] == ["key", "credential", "handle"]
    for op in body["rollouts"]:
        done = await finished(stack, op["id"])
        assert done["status"] == "completed" and done["failed"] == 0
    after = await handle.query(KeyLifecycleWorkflow.describe)
    assert after.policy_version == first["version"] + 1
    assert after.lifecycle.policy.rotation_interval == 20 * 86400
    # the process that answered runs under it at once; a new key is made under it
    assert stack.services.policy_version == first["version"] + 1
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "encryption"}, headers=stack.auth()
    )
    fresh = stack.client.get_workflow_handle(r.json()["key"]["workflowId"])
    assert (await fresh.query(KeyLifecycleWorkflow.describe)).policy_version == after.policy_version

    r = await put(stack, text)  # the same again: no new version, no rollout
    assert (r.json()["changed"], r.json()["rollouts"]) == (False, [])
    r = await stack.http.get(f"{API}/config", params={"version": 1}, headers=stack.auth())
    assert r.json()["config"]["sha256"] == first["sha256"]
    r = await stack.http.get(
        f"{API}/audit", params={"action": "config.updated"}, headers=stack.auth()
    )
    newest = r.json()["records"][0]
    assert (newest["action"], newest["reason"], newest["version"]) == (
        "config.updated",
        "tighter",
        first["version"] + 1,
    )


async def test_bad_policies_change_nothing(stack: Stack) -> None:
    current = (await stack.http.get(f"{API}/config", headers=stack.auth())).json()["config"]
    r = await put(
        stack, current["toml"].replace('rotation_interval = "P', 'rotation_interval = "X', 1)
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "INVALID_POLICY"
    assert r.json()["error"]["message"].startswith("key_types.encryption.rotation_interval:")
    r = await put(stack, "this is not toml")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("<toml>:")
    # a key type live keys use cannot go
    await stack.http.post(f"{API}/keys/generate", json={"type": "session"}, headers=stack.auth())
    start = current["toml"].index("[key_types.session]")
    end = current["toml"].index("[key_types.api]")
    r = await put(stack, current["toml"][:start] + current["toml"][end:])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == "key_types: session in use by live objects"
    after = (await stack.http.get(f"{API}/config", headers=stack.auth())).json()["config"]
    assert after["version"] == current["version"]
