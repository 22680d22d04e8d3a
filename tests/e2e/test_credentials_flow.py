"""API credentials end to end on the real dev server: create, verify, reroll with grace, reveal,
suspend, revoke, limits, roles, and no secret in any workflow history."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from core.credentials import AdminKeys, Role
from core.store.models import AuditRecordRow
from tests.e2e.conftest import Stack
from workflows.types import OperatorAction

API = "/api/key-management/credentials"
KEY_FORMAT = re.compile(r"krc_dev_[a-z2-7]{16}_[A-Za-z0-9_-]{43}[0-9A-Za-z]{6}")


async def create(stack: Stack, **body: Any) -> tuple[dict[str, Any], str]:
    r = await stack.http.post(API, json=body, headers=stack.auth())
    assert r.status_code == 201, r.text
    data = r.json()
    return data["credential"], data["secret"]


async def verify(stack: Stack, key: str, scopes: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key}
    if scopes is not None:
        body["scopes"] = scopes
    r = await stack.http.post(f"{API}/verify", json=body, headers=stack.auth())
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["verification"]
    return result


async def code(stack: Stack, key: str) -> str:
    return str((await verify(stack, key))["code"])


def audit_actions(stack: Stack, credential_id: str) -> list[str]:
    with stack.services.store.session() as s:
        q = select(AuditRecordRow.action).where(AuditRecordRow.object_id == credential_id)
        return list(s.scalars(q.order_by(AuditRecordRow.seq)))


async def test_create_verify_and_what_is_never_shown(stack: Stack) -> None:
    cred, secret = await create(
        stack,
        name="billing",
        owner="team-billing",
        scopes=["invoices:read", "invoices:write"],
        metadata={"ticket": "SEC-1"},
    )
    assert KEY_FORMAT.fullmatch(secret), secret
    assert cred["status"] == "active" and cred["version"] == 1
    assert cred["workflowId"] == f"keyrotor/credential/dev/{cred['id']}"
    assert cred["expiresAt"] and cred["nextRotationAt"] is None  # no scheduled rotation

    v = await verify(stack, secret, ["invoices:read"])
    assert v["valid"] is True and v["code"] == "VALID"
    assert v["credentialId"] == cred["id"] and v["owner"] == "team-billing"
    assert v["scopes"] == ["invoices:read", "invoices:write"] and v["remaining"] is None
    assert v["metadata"] == {"ticket": "SEC-1"}

    assert (await verify(stack, secret, ["admin"]))["code"] == "INSUFFICIENT_SCOPE"
    # a typo fails the checksum; a well-formed key nobody issued is not found
    typo = secret[:30] + ("A" if secret[30] != "A" else "B") + secret[31:]
    assert await code(stack, typo) == "NOT_FOUND"
    assert await code(stack, secret[:-1]) == "NOT_FOUND"
    r = await stack.http.post(
        f"{API}/verify", json={"key": secret, "extra": 1}, headers=stack.auth()
    )
    assert r.status_code == 400

    r = await stack.http.get(f"{API}/{cred['id']}", headers=stack.auth())
    assert r.status_code == 200
    text = r.text
    assert secret not in text and secret.split("_", 3)[3][:43] not in text
    assert "hash" not in text and "salt" not in text
    assert [v["state"] for v in r.json()["credential"]["versions"]] == ["active"]

    # usage is counted (buffered, flushed about once a second by the API process)
    stack.services.credentials.flush_usage()
    usage = (await stack.http.get(f"{API}/{cred['id']}", headers=stack.auth())).json()
    assert usage["credential"]["usage"]["count"] == 1  # the one VALID answer
    assert usage["credential"]["usage"]["failures"] == 1  # INSUFFICIENT_SCOPE
    assert usage["credential"]["usage"]["lastUsedAt"]
    assert audit_actions(stack, cred["id"]) == ["credential.created", "credential.secret_revealed"]


async def test_reroll_grace_shares_one_usage_budget_then_old_expires(stack: Stack) -> None:
    cred, old = await create(stack, owner="svc-a", usageLimit=3)
    r = await stack.http.post(
        f"{API}/{cred['id']}/rotate",
        json={"gracePeriod": "PT3S", "reason": "leaked in a log"},
        headers=stack.auth(),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    new = body["secret"]
    assert KEY_FORMAT.fullmatch(new) and new != old
    assert body["rotation"] == {"fromVersion": 1, "toVersion": 2}
    assert {v["version"]: v["state"] for v in body["credential"]["versions"]} == {
        1: "grace",
        2: "active",
    }
    # both secrets verify during grace and draw on the same budget of 3
    first = await verify(stack, old)
    assert (first["code"], first["version"], first["remaining"]) == ("VALID", 1, 2)
    second = await verify(stack, new)
    assert (second["code"], second["version"], second["remaining"]) == ("VALID", 2, 1)
    assert (await verify(stack, old))["remaining"] == 0
    assert await code(stack, new) == "USAGE_EXCEEDED"
    assert await code(stack, old) == "USAGE_EXCEEDED"

    # after grace the old secret answers EXPIRED (the workflow retires it on its timer)
    await asyncio.sleep(3.2)
    assert await code(stack, old) == "EXPIRED"
    for _ in range(100):
        got = (await stack.http.get(f"{API}/{cred['id']}", headers=stack.auth())).json()
        if got["credential"]["versions"][0]["state"] == "retired":
            break
        await asyncio.sleep(0.05)
    assert got["credential"]["versions"][0]["state"] == "retired"
    assert "credential.version_retired" in audit_actions(stack, cred["id"])


async def test_zero_grace_suspend_resume_and_revoke(stack: Stack) -> None:
    cred, old = await create(stack)
    cid = cred["id"]
    r = await stack.http.post(
        f"{API}/{cid}/rotate", json={"gracePeriod": "PT0S"}, headers=stack.auth()
    )
    assert r.status_code == 200
    new = r.json()["secret"]
    assert await code(stack, old) == "EXPIRED"
    assert await code(stack, new) == "VALID"

    r = await stack.http.post(
        f"{API}/{cid}/suspend", json={"reason": "odd use"}, headers=stack.auth()
    )
    assert r.status_code == 200 and r.json()["credential"]["status"] == "suspended"
    assert await code(stack, new) == "SUSPENDED"
    r = await stack.http.post(f"{API}/{cid}/resume", headers=stack.auth())
    assert r.status_code == 200
    assert await code(stack, new) == "VALID"

    r = await stack.http.request(
        "DELETE", f"{API}/{cid}", json={"reason": "offboarding"}, headers=stack.auth()
    )
    assert r.status_code == 200 and r.json()["credential"]["status"] == "revoked"
    # revocation is committed before the answer: no verification says VALID afterwards
    assert await code(stack, new) == "REVOKED"
    r = await stack.http.post(f"{API}/{cid}/rotate", json={}, headers=stack.auth())
    assert r.status_code == 409
    assert audit_actions(stack, cid) == [
        "credential.created",
        "credential.secret_revealed",
        "credential.rotated",
        "credential.secret_revealed",
        "credential.suspended",
        "credential.resumed",
        "credential.revoked",
    ]


async def test_rate_limit_answers_with_retry_after(stack: Stack) -> None:
    _, secret = await create(stack, rateLimit={"limit": 2, "duration": "PT1M"})
    assert [await code(stack, secret) for _ in range(2)] == ["VALID", "VALID"]
    r = await stack.http.post(f"{API}/verify", json={"key": secret}, headers=stack.auth())
    assert r.json()["verification"]["code"] == "RATE_LIMITED"
    assert 1 <= int(r.headers["retry-after"]) <= 60


async def test_reveal_hands_an_unclaimed_secret_to_its_owner_once(stack: Stack) -> None:
    owner_key = stack.new_admin_key(Role.OPERATOR)  # named test-operator
    cred, old = await create(stack, owner="test-operator")
    cid = cred["id"]
    # nothing to reveal: the create request took version 1
    r = await stack.http.post(f"{API}/{cid}/reveal", headers=stack.auth(owner_key))
    assert r.status_code == 409 and r.json()["error"]["code"] == "NOTHING_TO_REVEAL"

    # an operator's emergency rotation (a signal: nobody receives the new secret)
    handle = stack.client.get_workflow_handle(cred["workflowId"])
    await handle.signal("emergency_rotate", OperatorAction(reason="pasted in chat"))
    for _ in range(100):
        if await code(stack, old) == "REVOKED":
            break
        await asyncio.sleep(0.05)
    assert await code(stack, old) == "REVOKED"

    # an auditor may not; neither may an operator who is not the owner, nor reroll to get one
    for role in (Role.AUDITOR, Role.OPERATOR):
        stranger = stack.auth(
            AdminKeys(stack.services.store, stack.services.keyring).create("stranger", role, "test")
        )
        r = await stack.http.post(f"{API}/{cid}/reveal", headers=stranger)
        assert r.status_code == 403, r.text
        r = await stack.http.post(f"{API}/{cid}/rotate", json={}, headers=stranger)
        assert r.status_code == 403, r.text
    r = await stack.http.post(f"{API}/{cid}/reveal", headers=stack.auth(owner_key))
    assert r.status_code == 200, r.text
    revealed = r.json()["secret"]
    assert await code(stack, revealed) == "VALID"
    r = await stack.http.post(f"{API}/{cid}/reveal", headers=stack.auth(owner_key))
    assert r.status_code == 409


async def test_bad_requests_change_nothing(stack: Stack) -> None:
    before = (await stack.http.get(API, headers=stack.auth(), params={"limit": 500})).json()
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    far = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    for body, fragment in [
        ({"expiresAt": past}, "future"),
        ({"expiresAt": far}, "max lifetime"),
        ({"environment": "moon"}, "environment"),
        ({"scopes": ["has space"]}, "scopes"),
        ({"usageLimit": 0}, "usageLimit"),
        ({"rateLimit": {"limit": 5, "duration": "soon"}}, "rateLimit.duration"),
        ({"colour": "blue"}, "colour"),
    ]:
        r = await stack.http.post(API, json=body, headers=stack.auth())
        assert r.status_code == 400, (body, r.text)
        assert fragment in r.json()["error"]["message"], (body, r.text)
    after = (await stack.http.get(API, headers=stack.auth(), params={"limit": 500})).json()
    assert after["pagination"]["count"] == before["pagination"]["count"]
    r = await stack.http.get(f"{API}/cred_nosuchthing", headers=stack.auth())
    assert r.status_code == 404 and r.json()["error"]["code"] == "CREDENTIAL_NOT_FOUND"


async def test_idempotent_create_never_shows_the_secret_twice(stack: Stack) -> None:
    headers = {**stack.auth(), "Idempotency-Key": "create-cred-1"}
    first = await stack.http.post(API, json={"name": "once"}, headers=headers)
    again = await stack.http.post(API, json={"name": "once"}, headers=headers)
    assert first.status_code == 201 and again.status_code == 409
    assert again.json()["error"]["code"] == "SECRET_ALREADY_SHOWN"
    assert first.json()["credential"]["id"] in again.json()["error"]["message"]


async def test_service_role_may_only_verify(stack: Stack) -> None:
    _, secret = await create(stack)
    service = stack.auth(stack.new_admin_key(Role.SERVICE))
    r = await stack.http.post(f"{API}/verify", json={"key": secret}, headers=service)
    assert r.status_code == 200 and r.json()["verification"]["valid"] is True
    assert (await stack.http.post(API, json={}, headers=service)).status_code == 403
    assert (await stack.http.get(API, headers=service)).status_code == 403
