"""`keyrotor backup` and `keyrotor restore` end to end: a backup of a running instance is
restored into a fresh database after the old instance's workflows are gone; the restore starts
the workflows of what has not ended, and keys encrypted before the backup decrypt, credentials
verify and keys rotate through their restarted workflows."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from core import audit
from tests.e2e.conftest import build_stack
from tests.e2e.test_rest_flow import API
from tests.fixtures.database import backend_database_url
from tests.fixtures.temporal import TEST_MASTER_KEY, target

LEGACY_KEY = "sk_live_restored_" + "k" * 24  # a key from another system, imported by its hash

KEYROTOR = Path(sys.executable).parent / "keyrotor"


async def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(KEYROTOR),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_backup_then_restore_into_a_fresh_instance(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    old_url = backend_database_url() or f"sqlite:///{tmp_path / 'old' / 'keyrotor.db'}"
    new_url = backend_database_url() or f"sqlite:///{tmp_path / 'new' / 'keyrotor.db'}"
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old_queue, new_queue = f"old-{tmp_path.name[-8:]}", f"new-{tmp_path.name[-8:]}"
    async with build_stack(
        dev_env, tmp_path / "old", database_url=old_url, task_queue=old_queue
    ) as old:
        auth = old.auth()
        r = await old.http.post(f"{API}/keys/generate", json={"type": "encryption"}, headers=auth)
        key = r.json()["key"]
        r = await old.http.post(
            f"{API}/keys/{key['id']}/encrypt", json={"plaintext": "YmVmb3Jl"}, headers=auth
        )
        before_rotation = r.json()["ciphertext"]
        r = await old.http.post(f"{API}/keys/{key['id']}/rotate", json={}, headers=auth)
        assert r.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
        r = await old.http.post(
            f"{API}/keys/{key['id']}/encrypt", json={"plaintext": "YWZ0ZXI="}, headers=auth
        )
        after_rotation = r.json()["ciphertext"]
        r = await old.http.post(f"{API}/keys/generate", json={"type": "signing"}, headers=auth)
        revoked = r.json()["key"]
        r = await old.http.request(
            "DELETE", f"{API}/keys/{revoked['id']}", json={"reason": "gone"}, headers=auth
        )
        assert r.status_code == 200, r.text
        r = await old.http.post(f"{API}/credentials", json={"name": "kept"}, headers=auth)
        credential, secret = r.json()["credential"], r.json()["secret"]
        # an API key brought from another system: found through the store's sealed lookup key
        imported = {"name": "brought", "sha256": hashlib.sha256(LEGACY_KEY.encode()).hexdigest()}
        r = await old.http.post(f"{API}/credentials/import", json=imported, headers=auth)
        assert r.status_code == 201, r.text
        imported_workflow = r.json()["credential"]["workflowId"]
        r = await old.http.post(
            f"{API}/handles/generate", json={"type": "workflow", "userId": "ann"}, headers=auth
        )
        handle = r.json()["handle"]

        env = {
            **os.environ,
            "KEYROTOR_DATABASE_URL": old_url,
            "KEYROTOR_MASTER_KEY": TEST_MASTER_KEY,
            "KEYROTOR_DATA_DIR": str(tmp_path / "old"),
        }
        backup = tmp_path / "keyrotor.backup"
        code, out, err = await run(env, "backup", str(backup))
        assert code == 0, err
        assert "keys: 2 rows" in err and f"backup {backup}" in out
        assert backup.stat().st_mode & 0o777 == 0o600
        assert secret.encode() not in backup.read_bytes()
        assert handle["id"].encode() not in backup.read_bytes()
        # the old instance is lost: its workflows with it
        handle_workflow = await old.http.get(f"{API}/handles/{handle['familyId']}", headers=auth)
        for workflow_id in (
            key["workflowId"],
            credential["workflowId"],
            imported_workflow,
            handle_workflow.json()["handle"]["workflowId"],
        ):
            await old.client.get_workflow_handle(workflow_id).terminate("instance lost")

    env = {
        **os.environ,
        "KEYROTOR_DATABASE_URL": new_url,
        "KEYROTOR_MASTER_KEY": TEST_MASTER_KEY,
        "KEYROTOR_DATA_DIR": str(tmp_path / "new"),
        "KEYROTOR_TEMPORAL_ADDRESS": target(dev_env.client),
        "KEYROTOR_TASK_QUEUE": new_queue,
    }
    code, out, err = await run(env, "restore", str(backup))
    assert code == 0, err
    assert "started the workflows of what has not ended: 2 credentials, 1 handle, 1 key" in out, out
    code, _, err = await run(env, "restore", str(backup), "--no-workflows")
    assert code == 1 and "not empty" in err

    async with build_stack(
        dev_env, tmp_path / "new", database_url=new_url, task_queue=new_queue
    ) as new:
        auth = new.auth()
        for ciphertext, plaintext in ((before_rotation, "YmVmb3Jl"), (after_rotation, "YWZ0ZXI=")):
            r = await new.http.post(
                f"{API}/keys/{key['id']}/decrypt", json={"ciphertext": ciphertext}, headers=auth
            )
            assert (r.status_code, r.json().get("plaintext")) == (200, plaintext), r.text
        for presented in (secret, LEGACY_KEY):
            r = await new.http.post(
                f"{API}/credentials/verify", json={"key": presented}, headers=auth
            )
            assert r.json()["verification"]["code"] == "VALID", presented
        # the handle validates, and its restarted workflow exchanges it for the next value
        validate = {"handleId": handle["id"], "userId": "ann"}
        r = await new.http.post(f"{API}/handles/validate", json=validate, headers=auth)
        assert r.json()["validation"]["valid"] is True, r.text
        r = await new.http.post(
            f"{API}/handles/{handle['familyId']}/rotate",
            json={"handle": handle["id"]},
            headers=auth,
        )
        assert r.status_code == 200, r.text
        following = {"handleId": r.json()["handle"]["id"], "userId": "ann"}
        r = await new.http.post(f"{API}/handles/validate", json=following, headers=auth)
        assert r.json()["validation"]["valid"] is True, r.text
        # the restarted workflow goes on: a rotation makes version 3, and the audit has it once
        r = await new.http.post(f"{API}/keys/{key['id']}/rotate", json={}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["rotation"] == {"fromVersion": 2, "toVersion": 3}
        versions = {v["version"]: v["state"] for v in r.json()["key"]["versions"]}
        assert versions == {1: "grace", 2: "grace", 3: "active"}
        handle = new.client.get_workflow_handle(key["workflowId"])
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        r = await new.http.request(
            "DELETE", f"{API}/credentials/{credential['id']}", json={"reason": "done"}, headers=auth
        )
        assert r.json()["credential"]["status"] == "revoked"
        with new.services.store.session() as s:
            assert audit.verify_chain(s).ok
