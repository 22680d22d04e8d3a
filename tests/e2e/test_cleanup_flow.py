"""The cleanup on the real dev server, with a policy whose retentions are one second: the
worker's daily schedule exists, `POST /cleanup/run` runs it, and it destroys the material of a
retired key version, deletes an old hash, archives a revoked credential and handle family and
deletes old events, each audited; a second run finds nothing left to do."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from temporalio.testing import WorkflowEnvironment

from core.policy import default_policy_path
from core.store.models import ArchivedCredentialRow, CredentialVersionRow, EventRow, KeyVersionRow
from tests.e2e.conftest import Stack, build_stack, keyrotor, serve, stop_background_workflows
from tests.e2e.test_credentials_flow import audit_actions
from worker.main import start_background_workflows
from workflows.cleanup import cleanup_schedule_id, cleanup_workflow_id

API = "/api/key-management"


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    data_dir = tmp_path_factory.mktemp("cleanup")
    policy = data_dir / "keyrotor.toml"
    text = default_policy_path().read_text()
    for name in ("destroy_after", "archive_after", "event_retention"):
        text = text.replace(f'{name} = "P', f'{name} = "PT1S" # was "P', 1)
    policy.write_text(text)
    async with build_stack(dev_env, data_dir, config=policy) as stack:
        await start_background_workflows(stack.client, stack.services)
        yield stack
        await stop_background_workflows(stack)


async def run_cleanup(stack: Stack) -> dict[str, Any]:
    """POST /cleanup/run, then GET /cleanup until the run has completed; its last run."""
    r = await stack.http.post(f"{API}/cleanup/run", headers=stack.auth())
    assert r.status_code == 202, r.text
    assert set(r.json()["cleanup"]) == {"policy", "due", "schedule", "lastRun"}
    run = r.json()["cleanup"]["lastRun"]
    assert run is not None
    for _ in range(300):
        r = await stack.http.get(f"{API}/cleanup", headers=stack.auth())
        last: dict[str, Any] = r.json()["cleanup"]["lastRun"]
        if last["workflowId"] == run["workflowId"] and last["status"] == "completed":
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"the cleanup run did not complete: {last}")


async def test_the_schedule_runs_the_cleanup(stack: Stack) -> None:
    queue = stack.services.settings.task_queue
    schedule = await stack.client.get_schedule_handle(cleanup_schedule_id(queue)).describe()
    assert schedule.schedule.spec.intervals[0].every.total_seconds() == 86400

    # a key whose version 1 retires at once (no grace), with a ciphertext under it
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "encryption"}, headers=stack.auth()
    )
    key = r.json()["key"]
    r = await stack.http.post(
        f"{API}/keys/{key['id']}/encrypt",
        json={"plaintext": base64.b64encode(b"old").decode()},
        headers=stack.auth(),
    )
    old_ciphertext = r.json()["ciphertext"]
    r = await stack.http.post(
        f"{API}/keys/{key['id']}/rotate", json={"gracePeriod": "PT0S"}, headers=stack.auth()
    )
    assert r.status_code == 200, r.text
    # a credential rerolled with no grace (its version 1's hash ends), then one revoked
    r = await stack.http.post(f"{API}/credentials", json={}, headers=stack.auth())
    live = r.json()["credential"]["id"]
    r = await stack.http.post(
        f"{API}/credentials/{live}/rotate", json={"gracePeriod": "PT0S"}, headers=stack.auth()
    )
    assert r.status_code == 200, r.text
    r = await stack.http.post(f"{API}/credentials", json={"name": "gone"}, headers=stack.auth())
    revoked, secret = r.json()["credential"]["id"], r.json()["secret"]
    r = await stack.http.request(
        "DELETE", f"{API}/credentials/{revoked}", json={"reason": "left"}, headers=stack.auth()
    )
    assert r.json()["credential"]["status"] == "revoked"
    r = await stack.http.post(
        f"{API}/handles/generate", json={"type": "workflow"}, headers=stack.auth()
    )
    family = r.json()["handle"]["familyId"]
    r = await stack.http.request(
        "DELETE", f"{API}/handles/{family}", json={"reason": "logout"}, headers=stack.auth()
    )
    assert r.status_code == 200, r.text
    await asyncio.sleep(1.2)

    r = await stack.http.get(f"{API}/cleanup", headers=stack.auth())
    status = r.json()["cleanup"]
    assert status["policy"] == {
        "destroyAfter": "PT1S",
        "archiveAfter": "PT1S",
        "eventRetention": "PT1S",
    }
    assert status["due"]["destroyMaterial"] == 1
    assert status["due"]["archiveCredentials"] == 2
    assert status["schedule"]["id"] == cleanup_schedule_id(queue)
    assert status["schedule"]["paused"] is False and status["schedule"]["nextRunAt"]

    run = await run_cleanup(stack)
    assert run["workflowId"].startswith(cleanup_workflow_id(queue))
    assert (run["destroyed"], run["archived"], run["failed"], run["done"]) == (1, 2, 0, True)
    assert run["hashesDeleted"] >= 1 and run["eventsDeleted"] >= 6

    # the key: version 1 destroyed, its sealed material gone, its ciphertext refused
    r = await stack.http.get(f"{API}/keys/{key['id']}", headers=stack.auth())
    states = {v["version"]: v["state"] for v in r.json()["key"]["versions"]}
    assert states == {1: "destroyed", 2: "active"}
    with stack.services.store.engine.connect() as db:
        material = db.scalar(
            select(KeyVersionRow.wrapped_material).where(
                KeyVersionRow.key_id == key["id"], KeyVersionRow.number == 1
            )
        )
        live_hashes = db.scalars(
            select(CredentialVersionRow.number).where(CredentialVersionRow.credential_id == live)
        ).all()
        archived = db.scalars(select(ArchivedCredentialRow.id)).all()
        events = db.scalars(select(EventRow.id)).all()
        newest = db.scalar(select(func.max(EventRow.id)))
    assert material is None
    assert live_hashes == [2]  # version 1's hash is gone, the live one stays
    assert sorted(archived) == sorted([revoked, family])
    assert events == [newest]  # all old, but the newest stays: SQLite would reuse its id
    r = await stack.http.post(
        f"{API}/keys/{key['id']}/decrypt", json={"ciphertext": old_ciphertext}, headers=stack.auth()
    )
    assert r.status_code == 409, r.text
    r = await stack.http.get(f"{API}/audit", params={"objectId": key["id"]}, headers=stack.auth())
    [destroyed] = [x for x in r.json()["records"] if x["action"] == "key.version_destroyed"]
    assert (destroyed["version"], destroyed["actor"]) == (1, "keyrotor-cleanup")

    # the revoked credential and handle family: archived, gone from the hot tables
    r = await stack.http.get(f"{API}/credentials/{revoked}", headers=stack.auth())
    assert (r.status_code, r.json()["error"]["code"]) == (410, "ARCHIVED")
    assert "revoked" in r.json()["error"]["message"]
    r = await stack.http.get(f"{API}/handles/{family}", headers=stack.auth())
    assert r.status_code == 410, r.text
    r = await stack.http.post(
        f"{API}/credentials/verify", json={"key": secret}, headers=stack.auth()
    )
    assert r.json()["verification"]["code"] == "NOT_FOUND"
    assert audit_actions(stack, revoked)[-1] == "credential.archived"
    assert audit_actions(stack, family)[-1] == "handle.archived"
    r = await stack.http.get(
        f"{API}/audit", params={"action": "cleanup.completed"}, headers=stack.auth()
    )
    [report] = r.json()["records"]
    assert report["details"]["destroy_material"] == 1
    r = await stack.http.get(
        f"{API}/audit", params={"action": "cleanup.requested"}, headers=stack.auth()
    )
    [asked] = r.json()["records"]  # the second run has not been asked for yet
    assert asked["details"]["workflowId"] == run["workflowId"]
    assert asked["actor"] == "test-admin"
    assert report["details"]["archive_credentials"] == 2

    # nothing is left: a second run changes nothing
    await asyncio.sleep(1.1)  # past the new events' retention too
    again = await run_cleanup(stack)
    assert again["workflowId"] != run["workflowId"]
    assert (again["destroyed"], again["archived"], again["hashesDeleted"]) == (0, 0, 0)

    async with serve(stack) as url:
        code, out, err = await keyrotor(url, stack.admin_key, "cleanup", "status", "--json")
    assert code == 0, err
    shown = json.loads(out)["cleanup"]
    assert shown["lastRun"]["workflowId"] == again["workflowId"]
    assert set(shown["due"].values()) == {0}
