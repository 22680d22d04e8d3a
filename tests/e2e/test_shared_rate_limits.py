"""Rate limits and usage limits hold across API processes: two `keyrotor api` processes on one
store, with Redis (`KEYROTOR_REDIS_URL`) and without it (the database), answer exactly `limit`
VALID verifications between them in one window, and exactly a credential's usage limit and a
handle value's max usage in all; the store has the uses counted after the processes' flush."""

from __future__ import annotations

import asyncio
import secrets
import sys
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from core.credentials import HANDLE_PREFIX, parse_token
from core.ratelimit import client_key
from tests.e2e.test_multi_process import free_port, start_api, wait_answering
from tests.fixtures.database import backend_database_url
from tests.fixtures.temporal import make_services, process_env
from worker.main import build_worker

API = "/api/key-management/credentials"
HANDLES = "/api/key-management/handles"
LIMIT, EXTRA = 10, 7
DEVICE_MAX_USAGE = 50  # config/keyrotor.toml


@pytest.mark.parametrize("shared_in", ["redis", "database"])
async def test_rate_and_usage_limits_hold_across_two_api_processes(
    dev_env: WorkflowEnvironment, tmp_path: Path, shared_in: str, request: pytest.FixtureRequest
) -> None:
    admin_key = f"kra_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    env = process_env(
        dev_env.client,
        tmp_path,
        backend_database_url() or f"sqlite:///{tmp_path / 'shared.db'}",
        f"limits-{uuid.uuid4().hex[:8]}",
        KEYROTOR_ADMIN_KEY=admin_key,
        KEYROTOR_REDIS_URL=request.getfixturevalue("redis_url") if shared_in == "redis" else "",
    )
    keyrotor = Path(sys.executable).parent / "keyrotor"
    ports = [free_port(), free_port()]
    procs = [start_api(keyrotor, env, port) for port in ports]
    services = make_services(tmp_path, env["KEYROTOR_DATABASE_URL"])
    auth = {"Authorization": f"Bearer {admin_key}"}
    apis = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=30) for p in ports]
    try:
        for api, proc in zip(apis, procs, strict=True):
            await wait_answering(api, proc)
        async with build_worker(dev_env.client, services, env["KEYROTOR_TASK_QUEUE"]):
            r = await apis[0].post(
                API,
                json={"name": "limited", "rateLimit": {"limit": LIMIT, "duration": "PT1M"}},
                headers=auth,
            )
            assert r.status_code == 201, r.text
            used = await apis[1].post(
                API, json={"name": "metered", "usageLimit": LIMIT}, headers=auth
            )
            assert used.status_code == 201, used.text
            handle = await apis[0].post(
                f"{HANDLES}/generate", json={"type": "device", "userId": "u1"}, headers=auth
            )
            assert handle.status_code == 201, handle.text
        cid, key = r.json()["credential"]["id"], r.json()["secret"]

        async def verify(n: int) -> str:
            r = await apis[n % 2].post(f"{API}/verify", json={"key": key}, headers=auth)
            return str(r.json()["verification"]["code"])

        # LIMIT + EXTRA at once, half to each process: LIMIT allowed in all
        codes = Counter(await asyncio.gather(*(verify(n) for n in range(LIMIT + EXTRA))))
        assert codes == {"VALID": LIMIT, "RATE_LIMITED": EXTRA}
        # and either process goes on refusing for the rest of the window
        assert {await verify(n) for n in range(2)} == {"RATE_LIMITED"}

        window = client_key(f"credential/{cid}")
        if shared_in == "redis":
            shared = redis.Redis.from_url(env["KEYROTOR_REDIS_URL"])
            key_name = f"keyrotor:rl:{window}"
            try:
                assert shared.get(key_name) == str(LIMIT + EXTRA + 2).encode()
                assert not [k for k in shared.scan_iter(match="*") if cid.encode() in k]
            finally:
                shared.delete(key_name)
                shared.close()
        else:
            with services.store.engine.connect() as db:
                hits = db.scalar(
                    text("SELECT hits FROM rate_limit_windows WHERE client = :c"), {"c": window}
                )
            assert hits == LIMIT + EXTRA + 2

        # a usage limit and a handle value's max usage, spent from both processes at once
        metered_id, metered = used.json()["credential"]["id"], used.json()["secret"]
        value, family = handle.json()["handle"]["id"], handle.json()["handle"]["familyId"]

        async def use(n: int) -> str:
            r = await apis[n % 2].post(f"{API}/verify", json={"key": metered}, headers=auth)
            return str(r.json()["verification"]["code"])

        async def validate(n: int) -> str:
            r = await apis[n % 2].post(
                f"{HANDLES}/validate", json={"handleId": value, "userId": "u1"}, headers=auth
            )
            return str(r.json()["validation"]["code"])

        codes = Counter(await asyncio.gather(*(use(n) for n in range(LIMIT + EXTRA))))
        assert codes == {"VALID": LIMIT, "USAGE_EXCEEDED": EXTRA}
        codes = Counter(await asyncio.gather(*(validate(n) for n in range(DEVICE_MAX_USAGE + 7))))
        assert codes == {"VALID": DEVICE_MAX_USAGE, "USAGE_EXHAUSTED": 7}
        if shared_in == "redis":  # counted there: nothing left
            shared = redis.Redis.from_url(env["KEYROTOR_REDIS_URL"])
            lookup = parse_token(value, HANDLE_PREFIX).lookup_id
            names = [f"credential/{metered_id}", f"handle/{lookup}"]
            keys = [f"keyrotor:use:{client_key(name)}" for name in names]
            try:
                assert [shared.get(k) for k in keys] == [b"0", b"0"]
            finally:
                shared.delete(*keys)
                shared.close()

        async def stored() -> tuple[int, int]:
            c = await apis[0].get(f"{API}/{metered_id}", headers=auth)
            h = await apis[1].get(f"{HANDLES}/{family}", headers=auth)
            return c.json()["credential"]["remaining"], h.json()["handle"]["remainingUses"]

        for _ in range(50):  # each process writes its counts about once a second
            if await stored() == (0, 0):
                break
            await asyncio.sleep(0.2)
        assert await stored() == (0, 0)
    finally:
        for api in apis:
            await api.aclose()
        for p in procs:
            p.terminate()
        for p in procs:
            _, err = p.communicate(timeout=10)
            assert b"Traceback" not in err, err.decode()
        services.close()
