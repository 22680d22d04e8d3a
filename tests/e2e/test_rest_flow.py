"""The REST API end to end on the real dev server: lifecycle through workflows, use from the store."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from core.credentials import Role
from tests.e2e.conftest import Stack

API = "/api/key-management"
# a forged cursor whose timestamp has no zone
NAIVE_CURSOR = "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgImtleV94Il0"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def generate(stack: Stack, **body: Any) -> dict[str, Any]:
    r = await stack.http.post(f"{API}/keys/generate", json=body, headers=stack.auth())
    assert r.status_code == 201, r.text
    key: dict[str, Any] = r.json()["key"]
    return key


async def test_generate_use_rotate_with_grace_and_revoke(stack: Stack) -> None:
    key = await generate(stack, type="encryption", userId="alice", name="orders")
    assert key["status"] == "active" and key["version"] == 1
    assert key["algorithm"] == "AES-256-GCM" and key["provider"] == "local"
    assert key["environment"] == "dev" and key["nextRotationAt"]
    kid = key["id"]
    assert key["workflowId"] == f"keyrotor/key/dev/{kid}"

    r = await stack.http.post(
        f"{API}/keys/{kid}/encrypt",
        json={"plaintext": b64(b"card 4111"), "aad": b64(b"order-7")},
        headers=stack.auth(),
    )
    assert r.status_code == 200
    enc = r.json()
    assert enc["version"] == 1 and enc["ciphertext"].startswith(f"kr:{kid}:1:")

    # the same Idempotency-Key rotates once
    headers = {**stack.auth(), "Idempotency-Key": "rot-1"}
    body = {"userId": "alice", "reason": "quarterly", "gracePeriod": "PT1H"}
    first = await stack.http.post(f"{API}/keys/{kid}/rotate", json=body, headers=headers)
    again = await stack.http.post(f"{API}/keys/{kid}/rotate", json=body, headers=headers)
    assert first.status_code == again.status_code == 200, first.text
    assert (
        first.json()["rotation"] == again.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
    )
    states = {v["version"]: v["state"] for v in again.json()["key"]["versions"]}
    assert states == {1: "grace", 2: "active"}

    # grace: the old ciphertext decrypts (with its aad), new encryptions use version 2
    dec = await stack.http.post(
        f"{API}/keys/{kid}/decrypt",
        json={"ciphertext": enc["ciphertext"], "aad": b64(b"order-7")},
        headers=stack.auth(),
    )
    assert dec.json() == {"plaintext": b64(b"card 4111"), "version": 1}
    wrong_aad = await stack.http.post(
        f"{API}/keys/{kid}/decrypt",
        json={"ciphertext": enc["ciphertext"], "aad": b64(b"order-8")},
        headers=stack.auth(),
    )
    assert wrong_aad.status_code == 400
    assert wrong_aad.json()["error"]["code"] == "DECRYPTION_FAILED"

    # a rotation with no grace retires version 2 at once
    r = await stack.http.post(
        f"{API}/keys/{kid}/rotate",
        json={"reason": "manual", "gracePeriod": "PT0S"},
        headers=stack.auth(),
    )
    assert {v["version"]: v["state"] for v in r.json()["key"]["versions"]} == {
        1: "grace",
        2: "retired",
        3: "active",
    }

    r = await stack.http.request(
        "DELETE",
        f"{API}/keys/{kid}",
        json={"userId": "alice", "reason": "done"},
        headers=stack.auth(),
    )
    assert r.status_code == 200 and r.json()["key"]["status"] == "revoked"
    after = await stack.http.post(
        f"{API}/keys/{kid}/decrypt", json={"ciphertext": enc["ciphertext"]}, headers=stack.auth()
    )
    assert after.status_code == 409 and "compromised" in after.json()["error"]["message"]
    r = await stack.http.post(f"{API}/keys/{kid}/rotate", json={}, headers=stack.auth())
    assert r.status_code == 409


async def test_sign_and_verify_across_rotation(stack: Stack) -> None:
    for type_, algorithm in (
        ("signing", "RSA-2048"),
        ("signing", "Ed25519"),
        ("signing", "ECDSA-P256"),
    ):
        key = await generate(stack, type=type_, algorithm=algorithm)
        kid = key["id"]
        assert key["algorithm"] == algorithm
        msg = b64(b"release 1.2.3")
        sig = (
            await stack.http.post(
                f"{API}/keys/{kid}/sign", json={"message": msg}, headers=stack.auth()
            )
        ).json()
        assert sig["version"] == 1
        await stack.http.post(f"{API}/keys/{kid}/rotate", json={}, headers=stack.auth())
        ok = await stack.http.post(
            f"{API}/keys/{kid}/verify",
            json={"message": msg, "signature": sig["signature"]},
            headers=stack.auth(),
        )
        assert ok.json() == {"valid": True, "version": 1}
        bad = await stack.http.post(
            f"{API}/keys/{kid}/verify",
            json={"message": b64(b"release 6.6.6"), "signature": sig["signature"]},
            headers=stack.auth(),
        )
        assert bad.json() == {"valid": False, "version": 1}


async def test_session_key_is_hmac(stack: Stack) -> None:
    key = await generate(stack, type="session")
    assert key["algorithm"] == "HMAC-SHA256"
    r = await stack.http.post(
        f"{API}/keys/{key['id']}/sign", json={"message": b64(b"m")}, headers=stack.auth()
    )
    assert r.status_code == 200
    r = await stack.http.post(
        f"{API}/keys/{key['id']}/encrypt", json={"plaintext": b64(b"m")}, headers=stack.auth()
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "UNSUPPORTED_ALGORITHM"


async def test_roles_and_authentication(stack: Stack) -> None:
    auditor = stack.new_admin_key(Role.AUDITOR)
    operator = stack.new_admin_key(Role.OPERATOR)
    assert (await stack.http.get(f"{API}/keys")).status_code == 401
    r = await stack.http.get(f"{API}/keys", headers=stack.auth("kra_0000_" + "x" * 43))
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHENTICATED"
    assert (await stack.http.get(f"{API}/keys", headers=stack.auth(auditor))).status_code == 200
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "encryption"}, headers=stack.auth(auditor)
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "encryption"}, headers=stack.auth(operator)
    )
    assert r.status_code == 201
    assert (await stack.http.get(f"{API}/health")).status_code == 200
    assert (await stack.http.get("/livez")).json() == {"status": "ok"}


async def test_bad_input_is_4xx_and_changes_nothing(stack: Stack) -> None:
    before = (await stack.http.get(f"{API}/keys/statistics", headers=stack.auth())).json()
    key = await generate(stack, type="encryption")
    kid = key["id"]
    cases = [
        ("POST", f"{API}/keys/generate", {"type": "nope"}, 400),
        ("POST", f"{API}/keys/generate", {"type": "encryption", "algorithm": "ROT13"}, 400),
        ("POST", f"{API}/keys/generate", {"type": "encryption", "provider": "aws-kms"}, 400),
        ("POST", f"{API}/keys/generate", {"type": "encryption", "environment": "mars"}, 400),
        (
            "POST",
            f"{API}/keys/generate",
            {"type": "encryption", "expiresAt": "2001-01-01T00:00:00Z"},
            400,
        ),
        ("POST", f"{API}/keys/generate", {"type": "encryption", "surprise": 1}, 400),
        ("POST", f"{API}/keys/{kid}/rotate", {"gracePeriod": "7 days"}, 400),
        ("POST", f"{API}/keys/{kid}/rotate", {"gracePeriod": "P1000D"}, 400),
        ("POST", f"{API}/keys/{kid}/decrypt", {"ciphertext": f"kr:{kid}:\u00b2:AAAA"}, 400),
        ("POST", f"{API}/keys/{kid}/decrypt", {"ciphertext": f"kr:{kid}:{10**30}:AAAA"}, 400),
        (
            "POST",
            f"{API}/keys/{kid}/verify",
            {"message": "AA==", "signature": f"kr:{kid}:\u00b2:AA"},
            400,
        ),
        ("GET", f"{API}/keys?cursor={NAIVE_CURSOR}", None, 400),
        ("POST", f"{API}/keys/{kid}/encrypt", {"plaintext": "%%%"}, 400),
        ("POST", f"{API}/keys/{kid}/decrypt", {"ciphertext": "kr:other:1:AAAA"}, 400),
        ("POST", f"{API}/keys/{kid}/decrypt", {"ciphertext": "garbage"}, 400),
        ("POST", f"{API}/keys/key_doesnotexist/encrypt", {"plaintext": "AA=="}, 404),
        ("GET", f"{API}/keys?cursor=notacursor", None, 400),
        ("GET", f"{API}/keys?limit=0", None, 400),
    ]
    for method, url, body, status in cases:
        r = await stack.http.request(method, url, json=body, headers=stack.auth())
        assert r.status_code == status, (url, body, r.text)
        assert set(r.json()) == {"error"} and r.json()["error"]["message"], r.text
        assert ".toml" not in r.text  # no server path in an answer
    r = await stack.http.post(f"{API}/keys/generate", json={"type": "nope"}, headers=stack.auth())
    assert r.json()["error"] == {
        "code": "INVALID_POLICY",
        "message": "key_types: unknown key type 'nope'; known: api, encryption, session, signing",
    }
    after = (await stack.http.get(f"{API}/keys/statistics", headers=stack.auth())).json()
    assert after["statistics"]["totalKeys"] == before["statistics"]["totalKeys"] + 1
    got = (await stack.http.get(f"{API}/keys/{kid}", headers=stack.auth())).json()["key"]
    assert got["version"] == 1 and [v["state"] for v in got["versions"]] == ["active"]


async def test_list_filters_and_cursor_pagination(stack: Stack) -> None:
    made = [(await generate(stack, type="api"))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        url = f"{API}/keys?type=api&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await stack.http.get(url, headers=stack.auth())).json()
        seen += [k["id"] for k in page["keys"]]
        assert all(k["type"] == "api" for k in page["keys"])
        cursor = page["pagination"]["nextCursor"]
        if cursor is None:
            break
    assert set(made) <= set(seen) and len(seen) == len(set(seen))
    offset = (
        await stack.http.get(f"{API}/keys?type=api&limit=2&offset=2", headers=stack.auth())
    ).json()
    assert [k["id"] for k in offset["keys"]] == seen[2:4]
    stats = (await stack.http.get(f"{API}/keys/statistics", headers=stack.auth())).json()
    assert stats["statistics"]["byType"]["api"] >= 5


async def test_health_reports_components(stack: Stack) -> None:
    body = (await stack.http.get(f"{API}/health")).json()["health"]
    assert body["status"] == "healthy"
    assert body["components"]["temporal"]["status"] == "up"
    keys = (await stack.http.get(f"{API}/health/keys")).json()["health"]
    assert keys["overdueRotations"] == 0 and keys["activeKeys"] >= 1
    await asyncio.sleep(0)


async def test_generate_is_idempotent_by_idempotency_key(stack: Stack) -> None:
    headers = {**stack.auth(), "Idempotency-Key": "create-orders-key"}
    body = {"type": "encryption", "name": "orders"}
    first = await stack.http.post(f"{API}/keys/generate", json=body, headers=headers)
    again = await stack.http.post(f"{API}/keys/generate", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    kid = first.json()["key"]["id"]
    assert again.json()["key"]["id"] == kid
    r = await stack.http.request("DELETE", f"{API}/keys/{kid}", headers=stack.auth())
    assert r.status_code == 200
    late = await stack.http.post(f"{API}/keys/generate", json=body, headers=headers)
    assert late.json()["key"] == {**late.json()["key"], "id": kid, "status": "revoked"}
    other = await stack.http.post(f"{API}/keys/generate", json={"type": "signing"}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    # another admin key with the same Idempotency-Key gets its own key
    operator = stack.new_admin_key(Role.OPERATOR)
    theirs = await stack.http.post(
        f"{API}/keys/generate",
        json=body,
        headers={**stack.auth(operator), "Idempotency-Key": "create-orders-key"},
    )
    assert theirs.status_code == 201 and theirs.json()["key"]["id"] != kid


async def test_rsa_key_encrypts_with_aad_bound(stack: Stack) -> None:
    key = await generate(stack, type="signing")
    assert key["algorithm"] == "RSA-2048"
    body = {"plaintext": b64(b"data key"), "aad": b64(b"tenant-1")}
    enc = await stack.http.post(f"{API}/keys/{key['id']}/encrypt", json=body, headers=stack.auth())
    assert enc.status_code == 200, enc.text
    ct = enc.json()["ciphertext"]
    ok = await stack.http.post(
        f"{API}/keys/{key['id']}/decrypt",
        json={"ciphertext": ct, "aad": b64(b"tenant-1")},
        headers=stack.auth(),
    )
    assert ok.json() == {"plaintext": b64(b"data key"), "version": 1}
    bad = await stack.http.post(
        f"{API}/keys/{key['id']}/decrypt",
        json={"ciphertext": ct, "aad": b64(b"tenant-2")},
        headers=stack.auth(),
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "DECRYPTION_FAILED"
