"""Two API processes (and, in the last test, two workers) on one store: a revocation answered
by one is seen by the other, and concurrent rotations through both are neither lost nor doubled.

Each process caches the use path's rows (credentials, key versions) and reads lifecycle changes
every 0.25 s; it stops using the cache when its last read is older than 0.75 s, and a change
that refuses use answers only after that bound. So once `DELETE /credentials/{id}` (or an
emergency rotation of a key) has answered, no API process accepts the old secret or version.
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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.testing import WorkflowEnvironment

from core import audit
from core.credentials import AdminKeys, Role
from core.services import Services
from tests.fixtures.database import backend_database_url
from tests.fixtures.temporal import make_services, process_env
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


# seconds; on a busy two-core machine an API process once took more than 10 s to answer
API_START_TIMEOUT = 60.0


async def wait_answering(
    http: httpx.AsyncClient,
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool] = lambda: True,
) -> None:
    """Poll `proc`'s `/livez` until it answers 200 and `ready()` holds; fail at once if the
    process exits, with what it printed."""
    deadline = time.monotonic() + API_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{err[-3000:]}")
        try:
            if (await http.get("/livez")).status_code == 200 and ready():
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail(f"{proc.args} did not answer within {API_START_TIMEOUT:.0f} s")


@pytest.fixture
def admin_key_env(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> Iterator[tuple[dict[str, str], str]]:
    # Both processes start with the same KEYROTOR_ADMIN_KEY: the bootstrap insert must not race.
    admin_key = f"kra_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    env = process_env(
        dev_env.client,
        tmp_path,
        os.environ.get("KEYROTOR_TEST_STACK_DATABASE_URL")
        or backend_database_url()
        or f"sqlite:///{tmp_path / 'shared.db'}",
        f"multi-{uuid.uuid4().hex[:8]}",
        KEYROTOR_ADMIN_KEY=admin_key,
    )
    yield env, admin_key


@dataclass
class TwoAPIs:
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    auth: dict[str, str]
    services: Services
    task_queue: str


@pytest.fixture
async def two_apis(
    admin_key_env: tuple[dict[str, str], str], tmp_path: Path
) -> AsyncIterator[TwoAPIs]:
    """Two `keyrotor api` processes on one store, both answering, and the test's services."""
    env, admin_key = admin_key_env
    keyrotor = Path(sys.executable).parent / "keyrotor"
    ports = [free_port(), free_port()]
    procs = [start_api(keyrotor, env, port) for port in ports]
    services = make_services(tmp_path, env["KEYROTOR_DATABASE_URL"])
    a, b = (httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=30) for p in ports)
    try:
        for c, proc in zip((a, b), procs, strict=True):
            await wait_answering(c, proc)
        assert (
            AdminKeys(services.store, services.keyring).authenticate(admin_key).role == Role.ADMIN
        )
        yield TwoAPIs(
            a, b, {"Authorization": f"Bearer {admin_key}"}, services, env["KEYROTOR_TASK_QUEUE"]
        )
    finally:
        await a.aclose()
        await b.aclose()
        for p in procs:
            p.terminate()
        for p in procs:
            _, err = p.communicate(timeout=10)
            assert b"Traceback" not in err, err.decode()
        services.close()


async def test_revocation_is_seen_by_every_api_process(
    dev_env: WorkflowEnvironment, two_apis: TwoAPIs
) -> None:
    a, b, auth, services = two_apis.a, two_apis.b, two_apis.auth, two_apis.services
    async with build_worker(dev_env.client, services, two_apis.task_queue):
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


async def test_an_emergency_rotation_is_seen_by_every_api_process(
    dev_env: WorkflowEnvironment, two_apis: TwoAPIs
) -> None:
    """Both processes use the key from their caches; once the emergency rotation through A has
    answered, neither decrypts the compromised version's ciphertext, and both encrypt under
    the new version."""
    a, b, auth = two_apis.a, two_apis.b, two_apis.auth
    keys = "/api/key-management/keys"
    async with build_worker(dev_env.client, two_apis.services, two_apis.task_queue):
        r = await a.post(f"{keys}/generate", json={"type": "encryption"}, headers=auth)
        assert r.status_code == 201, r.text
        key_id = r.json()["key"]["id"]
        plaintext = {"plaintext": "c2VjcmV0"}
        r = await b.post(f"{keys}/{key_id}/encrypt", json=plaintext, headers=auth)
        assert r.json()["version"] == 1
        old = {"ciphertext": r.json()["ciphertext"]}

        answers: list[tuple[str, float, int]] = []  # (process, sent, status of decrypt)
        stop = asyncio.Event()

        async def hammer(name: str, client: httpx.AsyncClient) -> None:
            while not stop.is_set():
                sent = time.monotonic()
                r = await client.post(f"{keys}/{key_id}/decrypt", json=old, headers=auth)
                answers.append((name, sent, r.status_code))

        hammers = [asyncio.create_task(hammer(n, c)) for n, c in (("b", b), ("b", b), ("a", a))]
        await asyncio.sleep(0.5)
        r = await a.post(f"{keys}/{key_id}/rotate", json={"reason": "compromise"}, headers=auth)
        answered_at = time.monotonic()
        assert r.status_code == 200, r.text
        assert r.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
        for client in (a, b):
            r = await client.post(f"{keys}/{key_id}/encrypt", json=plaintext, headers=auth)
            assert r.json()["version"] == 2
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*hammers)

    before = [status for _, sent, status in answers if sent < answered_at]
    after = [status for name, sent, status in answers if sent >= answered_at]
    assert 200 in before
    assert after and set(after) == {409}, after
    assert any(name == "b" and sent >= answered_at for name, sent, _ in answers)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


async def test_api_workers_serve_one_port_and_stop_together(
    admin_key_env: tuple[dict[str, str], str],
) -> None:
    """`keyrotor api --workers 2`: two serving processes on one port, each answering the use
    path from the same store, and none left behind once the parent is stopped."""
    env, admin_key = admin_key_env
    port = free_port()
    keyrotor = Path(sys.executable).parent / "keyrotor"
    proc = start_api(keyrotor, {**env, "KEYROTOR_API_WORKERS": "2"}, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            await wait_answering(c, proc, lambda: len(children(proc.pid)) >= 2)
        workers = [p for p in children(proc.pid) if b"spawn_main" in _cmdline(p)]
        assert len(workers) == 2, workers
        auth = {"Authorization": f"Bearer {admin_key}"}
        for _ in range(10):  # a new connection each time: the kernel spreads them
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                r = await c.post(f"{API}/verify", json={"key": "nonsense"}, headers=auth)
                assert (r.status_code, r.json()["verification"]["code"]) == (200, "NOT_FOUND")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert b"Traceback" not in err, err.decode()
    assert all(not Path(f"/proc/{p}").exists() for p in workers)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def two_workers(
    two_apis: TwoAPIs, admin_key_env: tuple[dict[str, str], str]
) -> Iterator[list[int]]:
    """Two `keyrotor worker` processes on the APIs' task queue and store; yields their pids."""
    env, _ = admin_key_env
    keyrotor = Path(sys.executable).parent / "keyrotor"
    procs = [
        subprocess.Popen(
            [str(keyrotor), "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            _, err = p.communicate(timeout=20)
            assert b"Traceback" not in err, err.decode()


async def wait_for_pollers(dev_env: WorkflowEnvironment, task_queue: str, pids: list[int]) -> None:
    """Until every one of the worker processes `pids` polls `task_queue` for workflow tasks."""
    request = DescribeTaskQueueRequest(
        namespace=dev_env.client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    for _ in range(300):
        described = await dev_env.client.workflow_service.describe_task_queue(request)
        if {p.identity.split("@")[0] for p in described.pollers} >= {str(pid) for pid in pids}:
            return
        await asyncio.sleep(0.1)
    pytest.fail("the workers did not both poll within 30 s")


async def test_two_workers_and_two_apis_under_concurrent_requests(
    dev_env: WorkflowEnvironment, two_apis: TwoAPIs, two_workers: list[int]
) -> None:
    """Two workers and two API processes on one store and one Temporal server. Concurrent
    rotations of the same keys through both APIs each make exactly one version (none lost,
    none twice); a rotation sent to both APIs with one Idempotency-Key rotates once; and
    credentials revoked through one API amid verifications through both answer REVOKED on
    both once the revoke has answered, and within a second of it being asked."""
    a, b, auth = two_apis.a, two_apis.b, two_apis.auth
    keys_path = "/api/key-management/keys"
    apis = (a, b)
    await wait_for_pollers(dev_env, two_apis.task_queue, two_workers)
    key_ids = []
    for n in range(4):
        r = await apis[n % 2].post(f"{keys_path}/generate", json={"type": "session"}, headers=auth)
        assert r.status_code == 201, r.text
        key_ids.append(r.json()["key"]["id"])
    credentials = []
    for n in range(4):
        r = await apis[n % 2].post(API, json={"name": f"c{n}"}, headers=auth)
        assert r.status_code == 201, r.text
        credentials.append((r.json()["credential"]["id"], r.json()["secret"]))

    # per key, through both APIs at once; the first key's nine often take its run past
    # MAX_RUN_EVENTS, to continue as new amid them (not always: the length is read when a
    # workflow task starts, and requests that arrive together share a task)
    rotations = 8

    async def rotate(client: httpx.AsyncClient, key_id: str, idempotency: str) -> tuple[int, int]:
        r = await client.post(
            f"{keys_path}/{key_id}/rotate",
            json={"reason": "manual"},
            headers={**auth, "Idempotency-Key": idempotency},
        )
        assert r.status_code == 200, r.text
        return r.json()["rotation"]["fromVersion"], r.json()["rotation"]["toVersion"]

    verifications: list[tuple[str, str, float, str]] = []  # (api, credential, sent, code)
    stop = asyncio.Event()

    async def verify(name: str, client: httpx.AsyncClient, cid: str, secret: str) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            r = await client.post(f"{API}/verify", json={"key": secret}, headers=auth)
            verifications.append((name, cid, sent, r.json()["verification"]["code"]))

    revoked: dict[str, tuple[float, float]] = {}  # credential -> (asked, answered)

    async def revoke(client: httpx.AsyncClient, cid: str) -> None:
        await asyncio.sleep(0.3)
        asked = time.monotonic()
        r = await client.request("DELETE", f"{API}/{cid}", json={"reason": "left"}, headers=auth)
        assert r.status_code == 200 and r.json()["credential"]["status"] == "revoked", r.text
        revoked[cid] = (asked, time.monotonic())

    verifiers = [
        asyncio.create_task(verify(name, client, cid, secret))
        for cid, secret in credentials
        for name, client in (("a", a), ("b", b))
    ]
    rotated = asyncio.gather(
        *(
            rotate(apis[(i + k) % 2], key_id, f"{key_id}-r{i}")
            for k, key_id in enumerate(key_ids)
            for i in range(rotations)
        ),
        # one request sent to both APIs at once: rotates once
        rotate(a, key_ids[0], "twice"),
        rotate(b, key_ids[0], "twice"),
    )
    revokes = asyncio.gather(
        *(revoke(apis[n % 2], cid) for n, (cid, _) in enumerate(credentials[:3]))
    )
    results, _ = await asyncio.gather(rotated, revokes)
    await asyncio.sleep(1.2)
    stop.set()
    await asyncio.gather(*verifiers)

    # No update lost, none applied twice: each key made one version per distinct request.
    per_key = [results[k * rotations : (k + 1) * rotations] for k in range(len(key_ids))]
    twice = results[-2:]
    assert twice[0] == twice[1]
    for k, key_id in enumerate(key_ids):
        made = sorted([to for _, to in per_key[k]] + ([twice[0][1]] if k == 0 else []))
        expected = rotations + (1 if k == 0 else 0)
        assert made == list(range(2, expected + 2)), (key_id, made)
        key, versions = two_apis.services.keys.get(key_id)
        assert key.current_version == expected + 1
        assert [v.number for v in versions] == list(range(1, expected + 2))
        with two_apis.services.store.engine.connect() as db:
            records = audit.list_records(
                db, audit.RecordFilter(object_id=key_id, action="key.rotated"), None, 100
            )
        assert len(records) == expected

    # Revocations: every verification sent after a revoke answered says REVOKED, on both
    # APIs; each API process says so within a second of the revoke being asked.
    for cid, (asked, answered) in revoked.items():
        seen = [(name, sent, code) for name, c, sent, code in verifications if c == cid]
        assert {code for _, sent, code in seen if sent >= answered} == {"REVOKED"}, cid
        assert "VALID" in {code for _, sent, code in seen if sent < asked}
        for api in ("a", "b"):
            first = min(sent for name, sent, code in seen if name == api and code == "REVOKED")
            assert first - asked <= 1.0, (cid, api, first - asked)
    kept = credentials[3][0]
    assert {code for _, c, _, code in verifications if c == kept} == {"VALID"}

    # Both workers did the work.
    identities = set()
    workflow_ids = [two_apis.services.keys.get(k)[0].workflow_id for k in key_ids]
    workflow_ids += [two_apis.services.credentials.workflow_of(cid)[0] for cid, _ in credentials]
    for workflow_id in workflow_ids:
        history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
        identities |= {
            e.workflow_task_started_event_attributes.identity
            for e in history.events
            if e.HasField("workflow_task_started_event_attributes")
        }
    assert {i.split("@")[0] for i in identities} >= {str(pid) for pid in two_workers}
