"""What operators rely on, on the real dev server: search attributes, signals sent with the
`temporal` CLI, continue-as-new, and no secret in any workflow history or log."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
from datetime import datetime
from typing import Any

import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload

from core.envelope import open_envelope
from core.providers.local import material_context
from core.store.models import KeyVersionRow
from tests.e2e.conftest import Stack
from tests.e2e.test_rest_flow import API, b64, generate
from tests.fixtures.temporal import BIN, TEST_KEYRING, TEST_MASTER_KEY, target
from workflows.types import SA_NEXT_ROTATION, SA_STATE

SECRET_PLAINTEXTS = [b"scan-me plaintext 9f2c", b"scan-me message 77aa"]


async def poll(check: Any, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def test_search_attributes_follow_the_key(stack: Stack) -> None:
    key = await generate(stack, type="signing", owner="payments", algorithm="Ed25519")
    query = (
        f"KeyrotorKind = 'key' AND KeyrotorType = 'signing' AND KeyrotorOwner = 'payments' "
        f"AND KeyrotorAlgorithm = 'Ed25519' AND KeyrotorProvider = 'local' "
        f"AND KeyrotorEnvironment = 'dev' AND WorkflowId = '{key['workflowId']}'"
    )

    async def listed(q: str) -> list[str]:
        return [w.id async for w in stack.client.list_workflows(q)]

    assert await poll(lambda: listed(query + " AND KeyrotorState = 'active'")) == [
        key["workflowId"]
    ]
    desc = await stack.client.get_workflow_handle(key["workflowId"]).describe()
    next_rotation = desc.typed_search_attributes.get(SA_NEXT_ROTATION)
    assert next_rotation == datetime.fromisoformat(key["nextRotationAt"])
    r = await stack.http.request("DELETE", f"{API}/keys/{key['id']}", headers=stack.auth())
    assert r.status_code == 200
    assert await poll(lambda: listed(query + " AND KeyrotorState = 'revoked'"))
    desc = await stack.client.get_workflow_handle(key["workflowId"]).describe()
    assert desc.typed_search_attributes.get(SA_STATE) == "revoked"
    assert desc.typed_search_attributes.get(SA_NEXT_ROTATION) is None


async def test_emergency_rotate_signal_from_the_temporal_cli(stack: Stack) -> None:
    key = await generate(stack, type="encryption")
    enc = (
        await stack.http.post(
            f"{API}/keys/{key['id']}/encrypt",
            json={"plaintext": b64(SECRET_PLAINTEXTS[0])},
            headers=stack.auth(),
        )
    ).json()
    cmd = [
        str(BIN / "temporal"), "workflow", "signal",
        "--address", target(stack.client),
        "--workflow-id", key["workflowId"],
        "--name", "emergency_rotate",
        "--input", json.dumps({"reason": "key leaked in a log", "actor": "oncall"}),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr

    async def refused() -> bool:
        r = await stack.http.post(
            f"{API}/keys/{key['id']}/decrypt",
            json={"ciphertext": enc["ciphertext"]},
            headers=stack.auth(),
        )
        return r.status_code == 409

    assert await poll(refused)
    got = (await stack.http.get(f"{API}/keys/{key['id']}", headers=stack.auth())).json()["key"]
    assert got["version"] == 2
    assert {v["version"]: v["state"] for v in got["versions"]} == {1: "compromised", 2: "active"}


async def test_continue_as_new_keeps_state_and_idempotency(stack: Stack) -> None:
    key = await generate(stack, type="session")
    wid = key["workflowId"]
    handle = stack.client.get_workflow_handle(wid)
    first_run = (await handle.describe()).run_id
    headers = {**stack.auth(), "Idempotency-Key": "early"}
    early = (
        await stack.http.post(f"{API}/keys/{key['id']}/rotate", json={}, headers=headers)
    ).json()
    assert early["rotation"] == {"fromVersion": 1, "toVersion": 2}
    version = 2
    for _ in range(30):  # a run continues as new at MAX_RUN_EVENTS
        r = await stack.http.post(f"{API}/keys/{key['id']}/rotate", json={}, headers=stack.auth())
        assert r.status_code == 200, r.text
        version += 1
        assert r.json()["rotation"]["toVersion"] == version
        if (await handle.describe()).run_id != first_run:
            break
    desc = await handle.describe()
    assert desc.run_id != first_run, "never continued as new"
    # the next run has the search attributes the last commit left
    assert desc.typed_search_attributes.get(SA_STATE) == "active"
    assert desc.typed_search_attributes.get(SA_NEXT_ROTATION) == datetime.fromisoformat(
        r.json()["key"]["nextRotationAt"]
    )
    again = (
        await stack.http.post(f"{API}/keys/{key['id']}/rotate", json={}, headers=headers)
    ).json()
    assert again["rotation"] == {"fromVersion": 1, "toVersion": 2}  # remembered across runs
    r = await stack.http.post(f"{API}/keys/{key['id']}/rotate", json={}, headers=stack.auth())
    assert r.json()["rotation"] == {"fromVersion": version, "toVersion": version + 1}
    history = await stack.client.get_workflow_handle(wid, run_id=first_run).fetch_history()
    assert history.events[-1].HasField("workflow_execution_continued_as_new_event_attributes")


async def test_search_attributes_are_upserted_only_when_they_change(stack: Stack) -> None:
    """The start sets them as the creation commit leaves them: no upsert then; a rotation
    moves the next rotation time: one upsert."""
    key = await generate(stack, type="encryption")
    handle = stack.client.get_workflow_handle(key["workflowId"])

    def upserts(events: Any) -> int:
        return sum(e.HasField("upsert_workflow_search_attributes_event_attributes") for e in events)

    created = (await handle.fetch_history()).events
    assert any(e.HasField("marker_recorded_event_attributes") for e in created)
    assert upserts(created) == 0
    shown = (await handle.describe()).typed_search_attributes
    assert shown.get(SA_STATE) == "active"
    assert shown.get(SA_NEXT_ROTATION) == datetime.fromisoformat(key["nextRotationAt"])
    r = await stack.http.post(
        f"{API}/keys/{key['id']}/rotate", json={"gracePeriod": "PT1H"}, headers=stack.auth()
    )
    assert r.status_code == 200, r.text
    assert upserts((await handle.fetch_history()).events) == 1
    rotated = r.json()["key"]
    shown = (await handle.describe()).typed_search_attributes
    assert shown.get(SA_NEXT_ROTATION) == datetime.fromisoformat(rotated["nextRotationAt"])
    assert rotated["nextRotationAt"] != key["nextRotationAt"]


def _payloads(message: Message) -> list[Payload]:
    """Every Payload anywhere inside a protobuf message."""
    found: list[Payload] = []
    if isinstance(message, Payload):
        return [message]
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = [v for v in value.values() if isinstance(v, Message)]
        elif field.is_repeated:
            values = list(value)
        else:
            values = [value]
        for v in values:
            found += _payloads(v)
    return found


def _forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
        secret.hex().encode(),
    ]


async def test_no_secret_in_any_history_or_log(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: dict[str, bytes] = {}
    for i, type_ in enumerate(("encryption", "signing")):
        key = await generate(stack, type=type_, metadata={"purpose": "scan"})
        kid = key["id"]
        op = "encrypt" if type_ == "encryption" else "sign"
        field = "plaintext" if op == "encrypt" else "message"
        r = await stack.http.post(
            f"{API}/keys/{kid}/{op}", json={field: b64(SECRET_PLAINTEXTS[i])}, headers=stack.auth()
        )
        assert r.status_code == 200
        await stack.http.post(f"{API}/keys/{kid}/rotate", json={}, headers=stack.auth())
        await stack.http.request("DELETE", f"{API}/keys/{kid}", headers=stack.auth())
    # an API credential, rerolled: both its plaintext keys (the API's answers) must not leak
    r = await stack.http.post(
        f"{API}/credentials", json={"name": "scan", "scopes": ["a"]}, headers=stack.auth()
    )
    cred = r.json()["credential"]
    secrets["credential v1"] = r.json()["secret"].encode()
    r = await stack.http.post(
        f"{API}/credentials/{cred['id']}/rotate", json={}, headers=stack.auth()
    )
    secrets["credential v2"] = r.json()["secret"].encode()
    for name in ("credential v1", "credential v2"):
        secrets[f"{name} secret"] = secrets[name].split(b"_", 3)[3][:43]
        # answers about a wrong key, and errors, never repeat what was presented
        wrong = secrets[name].decode() + "x"
        r = await stack.http.post(
            f"{API}/credentials/verify", json={"key": wrong}, headers=stack.auth()
        )
        assert r.json()["verification"]["code"] == "NOT_FOUND" and wrong not in r.text
        r = await stack.http.post(
            f"{API}/credentials/verify", json={"key": wrong, "scopes": 7}, headers=stack.auth()
        )
        assert r.status_code == 400 and wrong not in r.text
    # a handle, exchanged once (its value travels in the body of the exchange)
    r = await stack.http.post(
        f"{API}/handles/generate", json={"type": "session", "userId": "scan"}, headers=stack.auth()
    )
    secrets["handle v1"] = r.json()["handle"]["id"].encode()
    family = r.json()["handle"]["familyId"]
    r = await stack.http.post(
        f"{API}/handles/{family}/rotate",
        json={"handle": secrets["handle v1"].decode()},
        headers=stack.auth(),
    )
    assert r.status_code == 200
    secrets["handle v2"] = r.json()["handle"]["id"].encode()
    for name in ("handle v1", "handle v2"):
        secrets[f"{name} secret"] = secrets[name].split(b"_", 3)[3][:-6]
    # every version's material, opened from the store with the master key
    with stack.services.store.session() as s:
        for v in s.query(KeyVersionRow).all():
            assert v.wrapped_material is not None
            material = open_envelope(
                TEST_KEYRING, v.wrapped_material, material_context(v.key_id, v.number)
            )
            secrets[f"material {v.key_id} v{v.number}"] = material
    assert len(secrets) >= 4
    for i, p in enumerate(SECRET_PLAINTEXTS):
        secrets[f"plaintext {i}"] = p
    secrets["admin key"] = stack.admin_key.encode()
    secrets["admin key secret"] = stack.admin_key.split("_", 2)[2].encode()
    secrets["master key"] = base64.b64decode(TEST_MASTER_KEY)
    secrets["codec key"] = TEST_KEYRING.derive("temporal-payload-codec/v1")
    secrets["pepper"] = TEST_KEYRING.derive("credential-pepper/v1")

    codec = stack.client.data_converter.payload_codec
    assert codec is not None
    histories = 0
    haystacks: list[bytes] = []
    decoded: list[bytes] = []
    async for wf in stack.client.list_workflows():
        history = await stack.client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        histories += 1
        haystacks.append(history.to_json().encode())
        raw = [p for event in history.events for p in _payloads(event)]
        started = history.events[0].workflow_execution_started_event_attributes
        assert all(p.metadata["encoding"] == b"binary/encrypted" for p in started.input.payloads)
        decoded += [p.SerializeToString() for p in await codec.decode(raw)]
    assert histories >= 2
    # the scan reads decoded payloads: the key ids (not secret) are there to be seen
    assert any(kid.encode() in payload for payload in decoded)
    haystacks += decoded
    haystacks.append("\n".join(r.getMessage() for r in caplog.records).encode())
    # the store holds wrapped material and keyed hashes only
    for db_file in stack.data_dir.glob("keyrotor.db*"):
        haystacks.append(db_file.read_bytes())
    for name, secret in secrets.items():
        for form in _forms(secret):
            for hay in haystacks:
                assert form not in hay, f"{name} leaked"
