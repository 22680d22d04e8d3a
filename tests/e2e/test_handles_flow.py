"""Handles end to end on the real dev server: issue, validate, exchange (refresh-token rotation
with reuse detection), usage caps, context binding, rate limits, anomalies and suspension."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

from core.credentials import Role, format_token, parse_token
from core.policy import HandleTypePolicy
from tests.e2e.conftest import Stack

API = "/api/key-management/handles"
VALUE = re.compile(r"krh_dev_[a-z2-7]{16}_[A-Za-z0-9_-]{43,171}[0-9A-Za-z]{6}")


# the user each value was issued to: a validation names it (another, or none, is a mismatch)
USERS: dict[str, str] = {}


async def generate(stack: Stack, **body: Any) -> dict[str, Any]:
    body.setdefault("type", "workflow")
    r = await stack.http.post(f"{API}/generate", json=body, headers=stack.auth())
    assert r.status_code == 201, r.text
    handle: dict[str, Any] = r.json()["handle"]
    USERS[handle["id"]] = handle["userId"]
    return handle


async def validate(stack: Stack, value: str, **body: Any) -> dict[str, Any]:
    body.setdefault("userId", USERS.get(value, ""))
    r = await stack.http.post(
        f"{API}/validate", json={"handleId": value, **body}, headers=stack.auth()
    )
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["validation"]
    return result


async def exchange(stack: Stack, handle: dict[str, Any]) -> Any:
    """The holder's refresh: present the current value, get the next one."""
    r = await stack.http.post(
        f"{API}/{handle['familyId']}/rotate", json={"handle": handle["id"]}, headers=stack.auth()
    )
    if r.status_code == 200:
        USERS[r.json()["handle"]["id"]] = r.json()["handle"]["userId"]
    return r


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


@contextlib.contextmanager
def policies(stack: Stack, **security: Any) -> Iterator[None]:
    """Run with changed security policies (and a fast `blink` handle type)."""
    original = stack.services.policies
    blink = HandleTypePolicy(
        "blink", "SHA-256", 32, timedelta(seconds=2), timedelta(seconds=1), timedelta(minutes=5), 50
    )
    stack.services.policies = replace(
        original,
        security=replace(original.security, **security),
        handle_types={**original.handle_types, "blink": blink},
    )
    try:
        yield
    finally:
        stack.services.policies = original


async def test_issue_and_validate_as_the_reference_client_does(stack: Stack) -> None:
    handle = await generate(
        stack,
        context={"workflow": "data-processing", "session": "s1", "environment": "production"},
        userId="user123",
    )
    assert VALUE.fullmatch(handle["id"]) and handle["value"] == handle["id"]
    assert handle["familyId"].startswith("hdl_") and handle["status"] == "active"
    assert (handle["type"], handle["userId"], handle["maxUsage"]) == ("workflow", "user123", 100)
    assert handle["workflowId"] == f"keyrotor/handle/dev/{handle['familyId']}"
    v = await validate(
        stack,
        handle["id"],
        context={"ip": "192.168.1.100", "userAgent": "MyApp/1.0"},
        userId="user123",
    )
    assert (v["valid"], v["code"], v["remainingUses"]) == (True, "VALID", 99)
    assert v["rotationRequired"] is False and v["contextMatch"] is True
    assert v["familyId"] == handle["familyId"] and handle["id"] not in str(v)

    r = await stack.http.get(f"{API}/{handle['familyId']}", headers=stack.auth())
    assert r.status_code == 200 and handle["id"] not in r.text and "id" not in r.json()["handle"]
    listed = (await stack.http.get(API, params={"type": "workflow"}, headers=stack.auth())).json()
    assert handle["familyId"] in [h["familyId"] for h in listed["handles"]]
    assert handle["id"] not in str(listed)


async def test_user_context_and_typos(stack: Stack) -> None:
    handle = await generate(stack, userId="u1", context={"ip": "10.0.0.1", "device": "d1"})
    value = handle["id"]
    assert (await validate(stack, value, userId="u2"))["code"] == "USER_MISMATCH"
    assert (await validate(stack, value, userId=""))["code"] == "USER_MISMATCH"
    assert (await validate(stack, value, context={"ip": "10.9.9.9"}))["code"] == "CONTEXT_MISMATCH"
    ok = await validate(stack, value, userId="u1", context={"ip": "10.0.0.1", "extra": "x"})
    assert ok["code"] == "VALID"
    typo = value[:25] + ("a" if value[25] != "a" else "b") + value[26:]
    assert (await validate(stack, typo))["code"] == "NOT_FOUND"
    assert (await validate(stack, "not-a-handle"))["code"] == "NOT_FOUND"
    # an API credential's shape is not a handle
    assert (await validate(stack, "krc_" + value[4:]))["code"] == "NOT_FOUND"


async def test_exchange_then_reuse_revokes_the_family(stack: Stack) -> None:
    first = await generate(stack, type="session", userId="u3")
    r = await exchange(stack, first)
    assert r.status_code == 200, r.text
    second = r.json()["handle"]
    assert r.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
    assert VALUE.fullmatch(second["id"]) and second["id"] != first["id"]
    # in flight: the old value still validates during the reuse interval, once exchanged only
    assert (await validate(stack, first["id"]))["code"] == "VALID"
    again = await exchange(stack, first)
    assert again.status_code == 409 and again.json()["error"]["code"] == "HANDLE_STATE"
    assert (await validate(stack, second["id"]))["code"] == "VALID"

    # replacing a value without presenting it hands out the next one: admins only
    operator = stack.auth(stack.new_admin_key(Role.OPERATOR))
    r = await stack.http.post(f"{API}/{first['familyId']}/rotate", json={}, headers=operator)
    assert r.status_code == 403
    other = await generate(stack, type="session")
    r = await stack.http.post(
        f"{API}/{other['familyId']}/rotate", json={"handle": second["id"]}, headers=stack.auth()
    )
    assert r.status_code == 404  # a value of another family
    await asyncio.sleep(2.2)  # the reuse interval (PT2S) is over
    assert (await validate(stack, first["id"]))["code"] == "REUSE_DETECTED"

    async def family_revoked() -> bool:
        return (await validate(stack, second["id"]))["code"] == "REVOKED"

    await until(family_revoked)
    got = (await stack.http.get(f"{API}/{first['familyId']}", headers=stack.auth())).json()
    assert got["handle"]["status"] == "revoked" and got["handle"]["anomalies"] >= 1


async def test_max_usage_ends_a_value_and_exchange_renews_it(stack: Stack) -> None:
    handle = await generate(stack, type="device")  # max usage 50
    codes = [(await validate(stack, handle["id"]))["code"] for _ in range(51)]
    assert codes[:50] == ["VALID"] * 50 and codes[50] == "USAGE_EXHAUSTED"
    r = await exchange(stack, handle)
    assert r.status_code == 200
    v = await validate(stack, r.json()["handle"]["id"])
    assert (v["code"], v["remainingUses"]) == ("VALID", 49)


async def test_rotation_interval_and_enforcement(stack: Stack) -> None:
    with policies(stack, enforce_rotation=True):
        handle = await generate(stack, type="blink")
        await asyncio.sleep(2.1)
        v = await validate(stack, handle["id"])
        assert (v["valid"], v["code"], v["rotationRequired"]) == (False, "ROTATION_REQUIRED", True)
    with policies(stack, enforce_rotation=False):
        v = await validate(stack, handle["id"])
        assert (v["valid"], v["rotationRequired"]) == (True, True)
        r = await exchange(stack, handle)
        fresh = await validate(stack, r.json()["handle"]["id"])
        assert (fresh["valid"], fresh["rotationRequired"]) == (True, False)


async def test_rate_limit_and_concurrency_cap(stack: Stack) -> None:
    with policies(stack, rate_limit_per_handle=3, max_concurrent_handles=2, anomaly_threshold=99):
        handle = await generate(stack, type="api", userId="capped")
        codes = [(await validate(stack, handle["id"]))["code"] for _ in range(4)]
        assert codes == ["VALID", "VALID", "VALID", "RATE_LIMITED"]
        await generate(stack, type="api", userId="capped")
        r = await stack.http.post(
            f"{API}/generate", json={"type": "api", "userId": "capped"}, headers=stack.auth()
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "TOO_MANY_HANDLES"
        # another type, or another user, is not capped by these
        await generate(stack, type="session", userId="capped")
        await stack.http.request("DELETE", f"{API}/{handle['familyId']}", headers=stack.auth())
        await generate(stack, type="api", userId="capped")  # a revoked one frees its place


async def test_anomalies_suspend_the_family_until_resumed(stack: Stack) -> None:
    with policies(stack, anomaly_threshold=3):
        handle = await generate(stack, userId="u5", context={"ip": "10.0.0.5"})
        for _ in range(3):
            drift = await validate(stack, handle["id"], context={"ip": "203.0.113.9"})
            assert drift["code"] == "CONTEXT_MISMATCH"

        async def suspended() -> bool:
            return (await validate(stack, handle["id"]))["code"] == "SUSPENDED"

        await until(suspended)
        r = await stack.http.get(
            "/api/key-management/events",
            params={"types": "handleAnomalyDetected,handleSuspended"},
            headers=stack.auth(),
        )
        mine = [e for e in r.json()["events"] if e["objectId"] == handle["familyId"]]
        assert [(e["type"], e["data"].get("anomalies")) for e in mine] == [
            ("handleAnomalyDetected", 1),
            ("handleAnomalyDetected", 2),
            ("handleAnomalyDetected", 3),
            ("handleSuspended", None),
        ]
        assert mine[0]["data"]["anomaly"]  # what was seen, e.g. context drift
        r = await stack.http.post(
            f"{API}/{handle['familyId']}/resume", json={"reason": "checked"}, headers=stack.auth()
        )
        assert r.status_code == 200 and r.json()["handle"]["status"] == "active"
        assert r.json()["handle"]["anomalies"] == 0  # reset by the resume
        assert (await validate(stack, handle["id"]))["code"] == "VALID"
        # and anomalies suspend it again
        for _ in range(3):
            await validate(stack, handle["id"], context={"ip": "203.0.113.9"})
        await until(suspended)
        await stack.http.post(f"{API}/{handle['familyId']}/resume", headers=stack.auth())

    # repeated failures: wrong values for the family's lookup id (well-formed, right checksum)
    with policies(stack, anomaly_threshold=3):
        other = await generate(stack, userId="u7")
        p = parse_token(other["id"], "krh")
        for i in range(3):
            wrong = format_token("krh", "dev", p.lookup_id, f"{i}" * len(p.secret))
            answer = await validate(stack, wrong)
            assert answer == {"valid": False, "code": "NOT_FOUND"}  # nothing about the family

        async def other_suspended() -> bool:
            return (await validate(stack, other["id"]))["code"] == "SUSPENDED"

        await until(other_suspended)

    with policies(stack, context_mismatch="flag", anomaly_threshold=99):
        v = await validate(stack, handle["id"], context={"ip": "203.0.113.9"})
        assert (v["valid"], v["contextMatch"]) == (True, False)


async def test_statistics_health_and_remove(stack: Stack) -> None:
    handle = await generate(stack, type="session", userId="u6")
    await validate(stack, handle["id"])
    r = await stack.http.request(
        "DELETE", f"{API}/{handle['familyId']}", json={"reason": "logout"}, headers=stack.auth()
    )
    assert r.status_code == 200 and r.json()["handle"]["status"] == "revoked"
    assert (await validate(stack, handle["id"]))["code"] == "REVOKED"
    stack.services.credentials.flush_usage()
    stats = (await stack.http.get(f"{API}/statistics", headers=stack.auth())).json()["statistics"]
    assert stats["totalHandles"] >= 1 and stats["byStatus"]["revoked"] >= 1
    assert stats["validations"] >= 1 and set(stats["byType"]) <= {
        "session",
        "workflow",
        "api",
        "device",
        "blink",
    }
    health = (await stack.http.get("/api/key-management/health/handles")).json()["health"]
    assert {"activeHandles", "suspendedHandles", "expiringWithin1h", "rotationRequired"} <= set(
        health
    )
    for body in ({"type": "nope"}, {"type": "session", "context": {"k": "x" * 501}}, {"typ": 1}):
        r = await stack.http.post(f"{API}/generate", json=body, headers=stack.auth())
        assert r.status_code == 400, (body, r.text)
    r = await stack.http.get(f"{API}/hdl_nosuchfamily", headers=stack.auth())
    assert r.status_code == 404 and r.json()["error"]["code"] == "HANDLE_NOT_FOUND"
