"""Bulk operations on the real dev server: rotate every key of an owner, revoke credentials,
cancel one midway, and what is refused."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Stack, keyrotor, serve

API = "/api/key-management"
KEYROTOR = Path(sys.executable).parent / "keyrotor"


async def generate(stack: Stack, owner: str) -> str:
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "encryption", "owner": owner}, headers=stack.auth()
    )
    assert r.status_code == 201, r.text
    key_id: str = r.json()["key"]["id"]
    return key_id


async def start(stack: Stack, **body: Any) -> dict[str, Any]:
    r = await stack.http.post(f"{API}/bulk", json=body, headers=stack.auth())
    assert r.status_code == 202, r.text
    operation: dict[str, Any] = r.json()["operation"]
    return operation


async def finished(stack: Stack, operation_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await stack.http.get(f"{API}/bulk/{operation_id}", headers=stack.auth())
        body: dict[str, Any] = r.json()
        if body["operation"]["status"] != "running":
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"bulk operation {operation_id} did not finish in {timeout} s")


async def version(stack: Stack, key_id: str) -> int:
    r = await stack.http.get(f"{API}/keys/{key_id}", headers=stack.auth())
    found: int = r.json()["key"]["version"]
    return found


async def test_rotate_every_key_of_an_owner(stack: Stack) -> None:
    mine = [await generate(stack, "team-bulk") for _ in range(4)]
    other = await generate(stack, "team-other")
    op = await start(
        stack,
        action="rotate",
        kind="key",
        filter={"owner": "team-bulk"},
        reason="quarterly",
        ratePerSecond=50,
        userId="alice",
    )
    assert (op["status"], op["total"], op["done"], op["progress"]) == ("running", 4, 0, 0.0)
    body = await finished(stack, op["id"])
    op = body["operation"]
    assert (op["status"], op["done"], op["failed"], op["progress"]) == ("completed", 4, 0, 1.0)
    assert body["failures"] == [] and op["finishedAt"]
    assert [await version(stack, k) for k in mine] == [2, 2, 2, 2]
    assert await version(stack, other) == 1
    r = await stack.http.get(f"{API}/audit", params={"objectId": mine[0]}, headers=stack.auth())
    rotated = [rec for rec in r.json()["records"] if rec["action"] == "key.rotated"]
    assert [(rec["actor"], rec["reason"]) for rec in rotated] == [
        ("alice", f"manual: bulk {op['id']}: quarterly")
    ]
    r = await stack.http.get(f"{API}/audit", params={"objectId": op["id"]}, headers=stack.auth())
    assert [rec["action"] for rec in r.json()["records"]] == ["bulk.completed", "bulk.started"]
    r = await stack.http.get(f"{API}/bulk", headers=stack.auth())
    assert op["id"] in [o["id"] for o in r.json()["operations"]]


async def test_revoke_credentials_of_an_owner(stack: Stack) -> None:
    ids = []
    for _ in range(2):
        r = await stack.http.post(
            f"{API}/credentials", json={"name": "svc", "owner": "team-gone"}, headers=stack.auth()
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["credential"]["id"])
    op = await start(
        stack,
        action="revoke",
        kind="credential",
        filter={"owner": "team-gone"},
        reason="offboarded",
    )
    body = await finished(stack, op["id"])
    assert (body["operation"]["done"], body["operation"]["failed"]) == (2, 0)
    for cred in ids:
        r = await stack.http.get(f"{API}/credentials/{cred}", headers=stack.auth())
        assert r.json()["credential"]["status"] == "revoked"


async def test_cancel_stops_after_the_target_in_hand(stack: Stack) -> None:
    keys = [await generate(stack, "team-slow") for _ in range(4)]
    op = await start(
        stack,
        action="rotate",
        kind="key",
        filter={"owner": "team-slow"},
        reason="slow",
        ratePerSecond=1,
    )
    await asyncio.sleep(1.5)
    r = await stack.http.delete(f"{API}/bulk/{op['id']}", headers=stack.auth())
    assert r.status_code == 200, r.text
    body = await finished(stack, op["id"])
    op = body["operation"]
    assert op["status"] == "cancelled" and 1 <= op["done"] < 4
    versions = [await version(stack, k) for k in keys]
    assert versions.count(2) == op["done"] and versions.count(1) == 4 - op["done"]


async def test_refusals(stack: Stack) -> None:
    cases = [
        (
            {"action": "rotate", "kind": "handle", "filter": {"owner": "u"}},
            "cannot be bulk-rotated",
        ),
        ({"action": "rotate", "kind": "key", "filter": {}}, "at least one filter"),
        (
            {"action": "revoke", "kind": "credential", "filter": {"provider": "vault"}},
            "filter takes",
        ),
        ({"action": "explode", "kind": "key", "filter": {"owner": "x"}}, "action"),
        ({"action": "rotate", "kind": "key", "filter": {"owner": "x"}, "ratePerSecond": 0}, "rate"),
    ]
    for body, message in cases:
        r = await stack.http.post(f"{API}/bulk", json={"reason": "r", **body}, headers=stack.auth())
        assert r.status_code == 400, r.text
        assert message in r.json()["error"]["message"], r.text
    r = await stack.http.get(f"{API}/bulk/blk_nothere", headers=stack.auth())
    assert r.status_code == 404
    r = await stack.http.get(f"{API}/bulk", headers=stack.auth())
    assert all(o["reason"] != "r" for o in r.json()["operations"])  # nothing was started


async def test_the_cli_starts_and_follows_a_bulk_operation(stack: Stack) -> None:
    keys = [await generate(stack, "team-cli") for _ in range(3)]
    async with serve(stack) as url:
        code, out, err = await keyrotor(
            url, stack.admin_key, "bulk", "start", "rotate", "--owner", "team-cli",
            "--reason", "cli", "--rate", "50", "--json",
        )  # fmt: skip
        assert code == 0, err
        operation = json.loads(out)
        assert (operation["status"], operation["done"], operation["total"]) == ("completed", 3, 3)
        assert [await version(stack, k) for k in keys] == [2, 2, 2]
        # a refused request: the API's message, exit 1
        code, out, err = await keyrotor(
            url, stack.admin_key, "bulk", "start", "rotate", "--kind", "handle",
            "--owner", "u", "--reason", "x",
        )  # fmt: skip
        assert code == 1
        assert "INVALID_REQUEST: a handle cannot be bulk-rotated" in err
