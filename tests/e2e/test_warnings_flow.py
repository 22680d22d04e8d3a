"""Staged warnings over REST, on the real dev server: a key type whose warning stages fall a
few seconds after creation, listed with GET /warnings and acknowledged through the workflow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from core.credentials import Role
from core.policy import default_policy_path
from tests.e2e.conftest import Stack, build_stack

API = "/api/key-management"
# rotates after an hour; its three warning stages fall 2, 4 and 6 seconds after creation
BRIEF_TYPE = """
[key_types.brief]
algorithm = "AES-256-GCM"
key_bits = 256
rotation_interval = "PT1H"
warning_threshold = "PT59M58S"
rotation_warnings = ["PT59M58S", "PT59M56S", "PT59M54S"]
max_lifetime = "P1D"
grace_period = "PT1M"
"""


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("warnings")
    policy = data_dir / "keyrotor.toml"
    policy.write_text(default_policy_path().read_text() + BRIEF_TYPE)
    async with build_stack(dev_env, data_dir, config=policy) as stack:
        yield stack


async def warnings(stack: Stack, **params: str) -> list[dict[str, Any]]:
    r = await stack.http.get(f"{API}/warnings", params=params, headers=stack.auth())
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["warnings"]
    return found


async def until_stages(stack: Stack, key_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = await warnings(stack, objectId=key_id)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{count} warning stages were not raised in time")


async def test_warnings_are_listed_escalate_and_are_acknowledged(stack: Stack) -> None:
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "brief", "owner": "team-a"}, headers=stack.auth()
    )
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    key_id = key["id"]

    found = await until_stages(stack, key_id, 2)
    newest, first = found[0], found[-1]
    assert (first["stage"], first["stages"], first["severity"]) == (1, 3, "notice")
    assert (newest["stage"], newest["severity"]) == (2, "warning")  # stage 1 unacknowledged
    assert {(w["objectKind"], w["target"], w["version"], w["environment"]) for w in found} == {
        ("key", "rotation", 1, "dev")
    }
    assert first["deadline"] == key["nextRotationAt"]
    assert first["acknowledgedAt"] is None and first["closedAt"] is None
    escalated = await warnings(stack, objectId=key_id, severity="warning")
    assert [w["stage"] for w in escalated] == [2]

    r = await stack.http.post(
        f"{API}/keys/{key_id}/warnings/acknowledge",
        json={"reason": "rotation planned", "userId": "alice"},
        headers=stack.auth(),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["acknowledged"] == 2
    assert {w["acknowledgedBy"] for w in body["warnings"]} == {"alice"}
    assert await warnings(stack, objectId=key_id, state="unacknowledged") == []

    # the next stage follows acknowledged ones: it does not escalate
    found = await until_stages(stack, key_id, 3)
    assert (found[0]["stage"], found[0]["severity"]) == (3, "notice")

    r = await stack.http.post(f"{API}/keys/{key_id}/rotate", json={}, headers=stack.auth())
    assert r.status_code == 200, r.text
    assert await warnings(stack, objectId=key_id) == []  # the rotation closed them
    closed = await warnings(stack, objectId=key_id, state="closed")
    assert len(closed) == 3 and all(w["closedAt"] for w in closed)

    r = await stack.http.get(f"{API}/audit", params={"objectId": key_id}, headers=stack.auth())
    records = r.json()["records"]
    actions = [rec["action"] for rec in records]
    assert actions.count("key.rotation_warning") == 3
    ack = next(rec for rec in records if rec["action"] == "key.warning_acknowledged")
    assert ack["actor"] == "alice"
    assert ack["reason"] == "rotation stage 1, rotation stage 2: rotation planned"


async def test_acknowledge_refusals_change_nothing(stack: Stack) -> None:
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "encryption"}, headers=stack.auth()
    )
    key_id = r.json()["key"]["id"]
    url = f"{API}/keys/{key_id}/warnings/acknowledge"
    r = await stack.http.post(url, json={}, headers=stack.auth())
    assert r.status_code == 409, r.text
    assert r.json()["error"]["message"] == "there is no unacknowledged warning"
    r = await stack.http.post(url, json={"target": "tomorrow"}, headers=stack.auth())
    assert r.status_code == 400, r.text
    r = await stack.http.post(
        f"{API}/keys/key_doesnotexist000000/warnings/acknowledge", json={}, headers=stack.auth()
    )
    assert r.status_code == 404, r.text
    reader = stack.new_admin_key(Role.AUDITOR)
    r = await stack.http.post(url, json={}, headers=stack.auth(reader))
    assert r.status_code == 403, r.text
    r = await stack.http.get(f"{API}/warnings", params={"state": "soon"}, headers=stack.auth())
    assert r.status_code == 400, r.text
    r = await stack.http.get(f"{API}/audit", params={"objectId": key_id}, headers=stack.auth())
    assert [rec["action"] for rec in r.json()["records"]] == ["key.created"]
