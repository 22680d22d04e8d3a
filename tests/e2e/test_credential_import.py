"""Existing API keys brought under keyrotor's lifecycle by their SHA-256 hashes, on the real dev
server: the holder's key verifies as it was, rotates to a keyrotor key, and neither the key nor
its hash reaches the workflow history; bad input is refused and leaves nothing behind."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path

from core.credentials import Role
from tests.e2e.conftest import Stack, keyrotor, serve
from tests.e2e.test_credentials_flow import API, KEY_FORMAT, audit_actions, code, verify
from tests.unit.test_credential_import import spec_and_lifecycle


def legacy_key() -> tuple[str, bytes]:
    key = "sk_live_" + secrets.token_urlsafe(30)
    return key, hashlib.sha256(key.encode()).digest()


async def test_import_verify_and_rotate(stack: Stack) -> None:
    key, digest = legacy_key()
    b64 = base64.b64encode(digest).decode()  # as Unkey stores it
    body = {"sha256": b64, "name": "billing", "owner": "team-a", "scopes": ["read"]}
    r = await stack.http.post(f"{API}/import", json=body, headers=stack.auth())
    assert r.status_code == 201, r.text
    cred = r.json()["credential"]
    assert "secret" not in r.json()
    assert (cred["status"], cred["version"], cred["owner"]) == ("active", 1, "team-a")

    v = await verify(stack, key, ["read"])
    assert (v["code"], v["credentialId"], v["version"]) == ("VALID", cred["id"], 1)
    assert await code(stack, key[:-1]) == "NOT_FOUND"
    assert audit_actions(stack, cred["id"]) == ["credential.imported"]

    # the same hash again (hex this time) is refused, naming the credential that holds it
    r = await stack.http.post(f"{API}/import", json={"sha256": digest.hex()}, headers=stack.auth())
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "ALREADY_IMPORTED"
    assert cred["id"] in r.json()["error"]["message"]

    # a rotation hands out a keyrotor key; the imported one verifies during its grace
    r = await stack.http.post(
        f"{API}/{cred['id']}/rotate", json={"gracePeriod": "PT1H"}, headers=stack.auth()
    )
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert KEY_FORMAT.fullmatch(new)
    assert (await verify(stack, new))["version"] == 2
    assert (await verify(stack, key))["code"] == "VALID"

    history = await stack.client.get_workflow_handle(cred["workflowId"]).fetch_history()
    raw = b"".join(e.SerializeToString() for e in history.events)
    for secret in (key, b64, digest.hex(), new):
        assert secret.encode() not in raw
    assert digest not in raw


async def test_bad_imports_change_nothing(stack: Stack) -> None:
    before = (await stack.http.get(f"{API}?limit=500", headers=stack.auth())).json()
    _, digest = legacy_key()
    cases = [
        ({"sha256": "ab" * 31 + "zz"}, 400, "INVALID_HASH"),  # not hex
        ({"sha256": "nothex"}, 400, "INVALID_HASH"),
        ({"sha256": base64.b64encode(digest[:31]).decode() + "AAAA"}, 400, "INVALID_HASH"),
        ({"sha256": digest.hex(), "environment": "nowhere"}, 400, "INVALID_REQUEST"),
        ({"sha256": digest.hex(), "secret": "x"}, 400, "INVALID_REQUEST"),  # unknown field
    ]
    for body, status, error in cases:
        r = await stack.http.post(f"{API}/import", json=body, headers=stack.auth())
        assert (r.status_code, r.json()["error"]["code"]) == (status, error), r.text
    operator = stack.new_admin_key(Role.OPERATOR)
    r = await stack.http.post(
        f"{API}/import", json={"sha256": digest.hex()}, headers=stack.auth(operator)
    )
    assert r.status_code == 403
    after = (await stack.http.get(f"{API}?limit=500", headers=stack.auth())).json()
    assert len(after["credentials"]) == len(before["credentials"])


async def test_import_a_file_from_the_command_line(stack: Stack, tmp_path: Path) -> None:
    first, second = legacy_key(), legacy_key()
    path = tmp_path / "keys.jsonl"
    path.write_text(
        json.dumps({"sha256": first[1].hex(), "name": "one"})
        + "\n"
        + json.dumps({"sha256": second[1].hex(), "name": "two", "scopes": ["write"]})
        + "\n\nnot json\n"
    )
    async with serve(stack) as url:
        status, out, err = await keyrotor(url, stack.admin_key, "credentials", "import", str(path))
        assert status == 1, err  # the line that is not JSON failed
        lines = [json.loads(line) for line in out.splitlines()]
        assert [(o["line"], o["status"]) for o in lines] == [
            (1, "imported"),
            (2, "imported"),
            (4, "failed"),
        ]
        assert "2 imported, 0 skipped, 1 failed" in err
        # run again: what was imported is skipped
        path.write_text(path.read_text().replace("not json\n", ""))
        status, out, err = await keyrotor(url, stack.admin_key, "credentials", "import", str(path))
    assert status == 0, err
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["skipped", "skipped"]
    v = await verify(stack, second[0], ["write"])
    assert (v["code"], v["credentialId"]) == ("VALID", lines[1]["credentialId"])


async def test_an_import_that_stopped_before_its_workflow_is_taken_over(stack: Stack) -> None:
    # as if an earlier request staged it and then lost its connection before Temporal had it
    key, digest = legacy_key()
    spec, lifecycle = spec_and_lifecycle(stack.services, "cred_abandonedimport01")
    stack.services.credentials.stage_import(spec, lifecycle, digest, "keyrotor/credential/x")
    r = await stack.http.post(f"{API}/import", json={"sha256": digest.hex()}, headers=stack.auth())
    assert r.status_code == 201, r.text
    cred = r.json()["credential"]
    assert cred["id"] != spec.credential_id and cred["status"] == "active"
    assert (await verify(stack, key))["credentialId"] == cred["id"]
    r = await stack.http.get(f"{API}/{spec.credential_id}", headers=stack.auth())
    assert r.status_code == 404
