"""Master-key rotation and the forced pepper re-hash end to end on the dev server: keys made under the old master key, the
processes restarted with `new,old`, `POST /master-key/rotate` re-sealing everything batch by
batch (going on after its worker stopped halfway), the old key retired and refused, and the
data encrypted before the rotation still decrypting."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from pydantic import SecretStr
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from core import audit
from core.envelope import EnvelopeError, MasterKeyring, open_envelope
from core.providers.local import material_context
from core.store.models import KeyVersionRow
from tests.e2e.conftest import build_stack, keyrotor, serve
from tests.e2e.test_rest_flow import API
from tests.fixtures.database import backend_database_url
from tests.fixtures.temporal import TEST_KEYRING, TEST_MASTER_KEY
from workflows.master_key import MasterKeyRotationWorkflow
from workflows.pepper import PepperRotationWorkflow

NEW_MASTER_KEY = base64.b64encode(bytes(range(200, 232))).decode()
NEW_ID = MasterKeyring.parse(NEW_MASTER_KEY).current_id
OLD_ID = TEST_KEYRING.current_id
KEYS = 16


async def test_master_key_rotation(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    database_url = backend_database_url()
    task_queue = f"e2e-master-{tmp_path.name[-8:]}"
    common = {"database_url": database_url, "task_queue": task_queue}
    encrypted: dict[str, str] = {}
    async with build_stack(dev_env, tmp_path, **common) as old:
        for _ in range(KEYS):
            r = await old.http.post(
                f"{API}/keys/generate", json={"type": "encryption"}, headers=old.auth()
            )
            assert r.status_code == 201, r.text
            key_id = r.json()["key"]["id"]
            r = await old.http.post(
                f"{API}/keys/{key_id}/encrypt", json={"plaintext": "b2xk"}, headers=old.auth()
            )
            encrypted[key_id] = r.json()["ciphertext"]
        with old.services.store.engine.connect() as db:
            row = db.execute(
                KeyVersionRow.__table__.select().where(KeyVersionRow.key_id == key_id)
            ).one()
        before = (row.key_id, row.number, row.wrapped_material)

    async with build_stack(
        dev_env, tmp_path, master_key=SecretStr(f"{NEW_MASTER_KEY},{TEST_MASTER_KEY}"), **common
    ) as new:
        r = await new.http.get(f"{API}/master-key", headers=new.auth())
        assert r.status_code == 200, r.text
        keys = {k["id"]: (k["state"], k["sealed"]) for k in r.json()["masterKey"]["keys"]}
        assert keys == {NEW_ID: ("current", 0), OLD_ID: ("previous", KEYS)}
        assert r.json()["rotation"] is None
        # bad input changes nothing
        bad = await new.http.post(
            f"{API}/master-key/rotate", json={"reason": "x", "batchSize": 0}, headers=new.auth()
        )
        assert bad.status_code == 400, bad.text

        # one blob a batch; the worker of this stack is stopped halfway, another goes on
        r = await new.http.post(
            f"{API}/master-key/rotate",
            json={"reason": "annual rotation", "batchSize": 1},
            headers=new.auth(),
        )
        assert r.status_code == 202, r.text
        workflow_id = r.json()["rotation"]["workflowId"]
        assert workflow_id == f"keyrotor/master-key/{NEW_ID}"
        handle = dev_env.client.get_workflow_handle_for(MasterKeyRotationWorkflow.run, workflow_id)
        # the stack's worker runs it: wait until it is part way, then stop the worker
        for _ in range(500):
            progress = (await new.http.get(f"{API}/master-key", headers=new.auth())).json()
            if progress["rotation"] and progress["rotation"].get("resealed", 0) >= 2:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the rotation made no progress")
    # stopped part way: nobody works it now
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    # a new set of processes (same keys, same store) finishes the job
    async with build_stack(
        dev_env, tmp_path, master_key=SecretStr(f"{NEW_MASTER_KEY},{TEST_MASTER_KEY}"), **common
    ) as resumed:
        result = await asyncio.wait_for(handle.result(), 60)
        assert result.done is True and result.retired == (OLD_ID,)
        # every row looked at once; a batch the stopped worker finished but could not report
        # is repeated, and finds its blob re-sealed already
        assert result.scanned == KEYS and KEYS - 1 <= result.resealed <= KEYS
        r = await resumed.http.get(f"{API}/master-key", headers=resumed.auth())
        keys = {k["id"]: (k["state"], k["sealed"]) for k in r.json()["masterKey"]["keys"]}
        assert keys == {NEW_ID: ("current", KEYS), OLD_ID: ("retired", 0)}
        assert r.json()["rotation"]["done"] is True
        for key_id, ciphertext in encrypted.items():  # data from before the rotation
            r = await resumed.http.post(
                f"{API}/keys/{key_id}/decrypt",
                json={"ciphertext": ciphertext},
                headers=resumed.auth(),
            )
            assert r.status_code == 200 and r.json()["plaintext"] == "b2xk", r.text
        # the material copied before the rotation no longer opens, its key still listed
        key_id, number, blob = before
        try:
            open_envelope(resumed.services.keyring, blob, material_context(key_id, number))
            raise AssertionError("a retired master key's blob opened")
        except EnvelopeError as e:
            assert "was retired" in str(e)
        with resumed.services.store.engine.connect() as db:
            records = audit.list_records(
                db, audit.RecordFilter(action="master_key.retired"), None, 10
            )
        assert [(r.object_id, r.actor, r.reason) for r in records] == [
            (OLD_ID, "test-admin", "annual rotation")
        ]
        # the command line shows the same
        async with serve(resumed) as url:
            code, out, err = await keyrotor(
                url, resumed.admin_key, "master-key", "status", "--json"
            )
        assert code == 0, err
        assert json.loads(out)["masterKey"]["current"] == NEW_ID
        # the rotation's history holds cursors and counts, no material
        history = await handle.fetch_history()
        raw = b"".join(e.SerializeToString() for e in history.events)
        assert len(raw) > 1000 and blob not in raw and base64.b64encode(blob) not in raw


async def test_forced_pepper_rehash(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """Credentials hashed under pepper A; the processes restarted with `B,A`; `POST
    /peppers/rehash` re-hashes the rest under B without their secrets; they still verify, and
    each becomes a plain hash under B when it does."""
    old_pepper = base64.b64encode(bytes(range(1, 33))).decode()
    new_pepper = base64.b64encode(bytes(range(33, 65))).decode()
    common = {
        "database_url": backend_database_url(),
        "task_queue": f"e2e-pepper-{tmp_path.name[-8:]}",
    }
    secrets: list[str] = []
    async with build_stack(
        dev_env, tmp_path, credential_pepper=SecretStr(old_pepper), **common
    ) as old:
        for n in range(5):
            r = await old.http.post(
                f"{API}/credentials", json={"name": f"c{n}"}, headers=old.auth()
            )
            assert r.status_code == 201, r.text
            secrets.append(r.json()["secret"])
        old_id = (await old.http.get(f"{API}/peppers", headers=old.auth())).json()["peppers"][
            "current"
        ]

    rotated = SecretStr(f"{new_pepper},{old_pepper}")
    async with build_stack(dev_env, tmp_path, credential_pepper=rotated, **common) as new:
        # one verifies before the job: it moves to the new pepper on its own
        r = await new.http.post(
            f"{API}/credentials/verify", json={"key": secrets[0]}, headers=new.auth()
        )
        assert r.json()["verification"]["code"] == "VALID"
        r = await new.http.post(
            f"{API}/peppers/rehash",
            json={"reason": "pepper rotation", "batchSize": 2},
            headers=new.auth(),
        )
        assert r.status_code == 202, r.text
        handle = dev_env.client.get_workflow_handle_for(
            PepperRotationWorkflow.run, r.json()["rehash"]["workflowId"]
        )
        result = await asyncio.wait_for(handle.result(), 60)
        assert result.done and result.rehashed == 4
        body = (await new.http.get(f"{API}/peppers", headers=new.auth())).json()
        new_id = body["peppers"]["current"]
        counts = {p["id"]: (p["outermost"], p["underneath"]) for p in body["peppers"]["peppers"]}
        assert counts[new_id] == (5, 0) and counts[old_id] == (0, 4)
        assert body["rehash"]["done"] is True and body["rehash"]["rehashed"] == 4
        for secret in secrets:
            r = await new.http.post(
                f"{API}/credentials/verify", json={"key": secret}, headers=new.auth()
            )
            assert r.json()["verification"]["code"] == "VALID"
        body = (await new.http.get(f"{API}/peppers", headers=new.auth())).json()
        counts = {p["id"]: (p["outermost"], p["underneath"]) for p in body["peppers"]["peppers"]}
        assert counts[new_id] == (5, 0) and counts[old_id] == (0, 0)  # all plain under B now
