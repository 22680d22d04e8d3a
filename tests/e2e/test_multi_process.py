"""Two API processes on one store: a revocation answered by one is seen by the other.

Each process caches verification rows and reads lifecycle changes every 0.25 s; it stops using
the cache when its last read is older than 0.75 s, and a revocation answers only after that
bound. So once `DELETE /credentials/{id}` has answered, no API process answers VALID.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from core.credentials import AdminKeys, Role
from tests.fixtures.temporal import TEST_MASTER_KEY, make_services, target
from worker.main import build_worker

API = "/api/key-management/credentials"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_api(keyrotor: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(keyrotor), "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def admin_key_env(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> Iterator[tuple[dict[str, str], str]]:
    # Both processes start with the same KEYROTOR_ADMIN_KEY: the bootstrap insert must not race.
    admin_key = f"kra_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    env = {
        **os.environ,
        "KEYROTOR_TEMPORAL_ADDRESS": target(dev_env.client),
        "KEYROTOR_DATABASE_URL": os.environ.get("KEYROTOR_TEST_STACK_DATABASE_URL")
        or f"sqlite:///{tmp_path / 'shared.db'}",
        "KEYROTOR_MASTER_KEY": TEST_MASTER_KEY,
        "KEYROTOR_TASK_QUEUE": f"multi-{uuid.uuid4().hex[:8]}",
        "KEYROTOR_DATA_DIR": str(tmp_path),
        "KEYROTOR_ADMIN_KEY": admin_key,
    }
    yield env, admin_key


async def test_revocation_is_seen_by_every_api_process(
    dev_env: WorkflowEnvironment, admin_key_env: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, admin_key = admin_key_env
    keyrotor = Path(sys.executable).parent / "keyrotor"
    ports = [free_port(), free_port()]
    procs = [start_api(keyrotor, env, port) for port in ports]
    services = make_services(tmp_path, env["KEYROTOR_DATABASE_URL"])
    auth = {"Authorization": f"Bearer {admin_key}"}
    try:
        a, b = (httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=30) for p in ports)
        for c in (a, b):
            for _ in range(200):
                try:
                    if (await c.get("/livez")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                pytest.fail("an API process did not start")
        assert (
            AdminKeys(services.store, services.keyring).authenticate(admin_key).role == Role.ADMIN
        )

        async with build_worker(dev_env.client, services, env["KEYROTOR_TASK_QUEUE"]):
            r = await a.post(API, json={"name": "shared"}, headers=auth)
            assert r.status_code == 201, r.text
            cid, key = r.json()["credential"]["id"], r.json()["secret"]
            # B did not make it, and verifies it from the store
            r = await b.post(f"{API}/verify", json={"key": key}, headers=auth)
            assert r.json()["verification"]["code"] == "VALID"

            # (process, time the request was sent, code); B's verifications run from its cache
            answers: list[tuple[str, float, str]] = []
            stop = asyncio.Event()

            async def hammer(name: str, client: httpx.AsyncClient) -> None:
                while not stop.is_set():
                    sent = time.monotonic()
                    r = await client.post(f"{API}/verify", json={"key": key}, headers=auth)
                    answers.append((name, sent, r.json()["verification"]["code"]))

            hammers = [asyncio.create_task(hammer(n, c)) for n, c in (("b", b), ("b", b), ("a", a))]
            await asyncio.sleep(0.5)
            asked_at = time.monotonic()
            r = await a.request("DELETE", f"{API}/{cid}", json={"reason": "left"}, headers=auth)
            revoked_at = time.monotonic()
            assert r.status_code == 200 and r.json()["credential"]["status"] == "revoked"
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*hammers)

        before = [code for _, sent, code in answers if sent < revoked_at]
        after = [code for _, sent, code in answers if sent >= revoked_at]
        assert before and after
        assert "VALID" in before
        assert set(after) == {"REVOKED"}, after
        # B converged within the documented bound of the revoke request, and never went back
        on_b = sorted((sent, code) for name, sent, code in answers if name == "b")
        first_revoked = next(sent for sent, code in on_b if code == "REVOKED")
        assert first_revoked - asked_at <= 1.0, first_revoked - asked_at
        assert all(code == "REVOKED" for sent, code in on_b if sent > first_revoked)
        await a.aclose()
        await b.aclose()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            _, err = p.communicate(timeout=10)
            assert b"Traceback" not in err, err.decode()
        services.close()
