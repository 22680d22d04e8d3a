"""Lifecycle benchmark: keyrotor's create + rotate throughput against a bare Temporal baseline,
and the latency of an emergency rotation as a client of the use path sees it.

Run from the repository root (never part of the test run; it prints, it does not assert):

    .venv/bin/python bench/lifecycle.py [--keys N] [--concurrency C] [--emergency-keys M]

Everything runs on this machine: one Temporal dev server (the `temporal` binary installed beside
Python; the SDK never downloads one), and in this one process and asyncio loop the keyrotor
worker, the REST API served by uvicorn on a free 127.0.0.1 port, an httpx client driving it over
real HTTP, and the baseline's worker.

- baseline: `NoopKeyWorkflow` below, with the message pattern of `KeyLifecycleWorkflow` but no
  activity: update-with-start `wait_created`, then update `rotate`, straight from the Temporal
  client. It is the floor: what Temporal itself costs for the same two round trips.
- keyrotor: `POST /api/key-management/keys/generate` then `POST /keys/{id}/rotate`, each through
  the key's workflow, its `commit_key_transition` activity and the SQLite store.
- emergency: encrypt, signal `emergency_rotate`, poll decrypt of the old ciphertext until 409.
"""

from __future__ import annotations

from temporalio import workflow

# The sandbox re-executes this module for every workflow run: pass everything through, as the
# product's workflows do, so that the baseline pays no import cost keyrotor does not.
with workflow.unsafe.imports_passed_through():
    import argparse
    import asyncio
    import base64
    import functools
    import itertools
    import math
    import os
    import platform
    import socket
    import subprocess
    import sys
    import tempfile
    import threading
    import time
    import uuid
    from collections.abc import Awaitable, Callable, Iterable
    from dataclasses import dataclass, field
    from pathlib import Path
    from typing import Any, TypeVar

    import httpx
    import uvicorn
    from pydantic import SecretStr
    from temporalio.client import Client, WithStartWorkflowOperation
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.service import RPCError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from api.app import create_app
    from core.codec import data_converter
    from core.credentials import PEPPER_PURPOSE, AdminKeys, Role
    from core.envelope import MasterKeyring, generate_master_key
    from core.services import Services, build_services
    from core.settings import Settings
    from worker.main import build_worker
    from workflows.types import (
        SEARCH_ATTRIBUTE_KEYS,
        OperatorAction,
        RotateRequest,
        RotationResult,
    )

BIN = Path(sys.executable).parent
KEYS_PATH = "/api/key-management/keys"
POLL_INTERVAL = 0.005
EMERGENCY_TIMEOUT = 10.0
HTTP_TIMEOUT = 60.0
PLAINTEXT = base64.b64encode(b"benchmark plaintext").decode()
T = TypeVar("T")


# --- baseline workflow -----------------------------------------------------------------------


@workflow.defn(name="BenchNoopKeyWorkflow")
class NoopKeyWorkflow:
    """Keyrotor's message pattern with no side effect: the Temporal floor for create + rotate."""

    @workflow.init
    def __init__(self, key_id: str) -> None:
        self._version = 1
        self._stop = False

    @workflow.run
    async def run(self, key_id: str) -> int:
        await workflow.wait_condition(lambda: self._stop)
        return self._version

    @workflow.update
    async def wait_created(self) -> int:
        return self._version

    @workflow.update
    async def rotate(self, request: RotateRequest) -> RotationResult:
        self._version += 1
        return RotationResult(from_version=self._version - 1, to_version=self._version)

    @workflow.signal
    def stop(self) -> None:
        self._stop = True


# --- measurement helpers ---------------------------------------------------------------------


@dataclass
class RunResult:
    """One measured run of create + rotate pairs."""

    name: str
    keys: int
    seconds: float
    create_latencies: list[float] = field(default_factory=list)
    rotate_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.keys / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Timers:
    """Wall time spent inside instrumented product calls, summed over the threads running them."""

    totals: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> T:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                with self.lock:
                    self.totals[name] = self.totals.get(name, 0.0) + elapsed
                    self.counts[name] = self.counts.get(name, 0) + 1

        return timed

    def snapshot(self) -> dict[str, tuple[int, float]]:
        with self.lock:
            return {k: (self.counts[k], self.totals[k]) for k in self.totals}


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


async def run_pairs(
    name: str,
    count: int,
    concurrency: int,
    create: Callable[[int], Awaitable[Any]],
    rotate: Callable[[Any], Awaitable[None]],
) -> RunResult:
    """`count` create + rotate pairs, `concurrency` clients each taking the next index."""
    result = RunResult(name, count, 0.0)
    indexes = iter(range(count))

    async def client() -> None:
        for i in indexes:
            try:
                t0 = time.perf_counter()
                created = await create(i)
                t1 = time.perf_counter()
                await rotate(created)
                t2 = time.perf_counter()
            except Exception as e:  # a benchmark reports failures, it does not stop on them
                result.errors.append(f"{type(e).__name__}: {e}")
                continue
            result.create_latencies.append(t1 - t0)
            result.rotate_latencies.append(t2 - t1)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    result.keys = len(result.create_latencies)
    return result


# --- the two systems -------------------------------------------------------------------------


class Baseline:
    """Drives `NoopKeyWorkflow` with the Temporal client only."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue
        self.run_id = uuid.uuid4().hex[:8]
        self.workflow_ids: list[str] = []
        self._seq = itertools.count()

    async def create(self, _i: int) -> str:
        workflow_id = f"bench-noop/{self.run_id}/{next(self._seq)}"
        self.workflow_ids.append(workflow_id)
        start: WithStartWorkflowOperation[Any, int] = WithStartWorkflowOperation(
            NoopKeyWorkflow.run,
            workflow_id,
            id=workflow_id,
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
        version = await self.client.execute_update_with_start_workflow(
            NoopKeyWorkflow.wait_created, start_workflow_operation=start
        )
        if version != 1:
            raise RuntimeError(f"wait_created answered {version}")
        return workflow_id

    async def rotate(self, workflow_id: str) -> None:
        handle = self.client.get_workflow_handle(workflow_id)
        result = await handle.execute_update(
            NoopKeyWorkflow.rotate, RotateRequest(reason="manual", actor="bench")
        )
        if result.to_version != 2:
            raise RuntimeError(f"rotate answered {result}")


class Keyrotor:
    """Drives keyrotor over its REST API."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.keys: list[dict[str, Any]] = []

    async def create(self, _i: int) -> dict[str, Any]:
        r = await self.http.post(f"{KEYS_PATH}/generate", json={"type": "encryption"})
        if r.status_code != 201:
            raise RuntimeError(f"generate answered {r.status_code}: {r.text}")
        key: dict[str, Any] = r.json()["key"]
        self.keys.append(key)
        return key

    async def rotate(self, key: dict[str, Any]) -> None:
        r = await self.http.post(f"{KEYS_PATH}/{key['id']}/rotate", json={})
        if r.status_code != 200:
            raise RuntimeError(f"rotate answered {r.status_code}: {r.text}")
        if r.json()["rotation"]["toVersion"] != 2:
            raise RuntimeError(f"rotate answered {r.json()['rotation']}")


@dataclass
class EmergencyResult:
    """Signal-sent to decrypt-refused latencies, one per key."""

    latencies: list[float] = field(default_factory=list)
    polls: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def emergency(
    client: Client, keyrotor: Keyrotor, count: int, concurrency: int
) -> EmergencyResult:
    """Per key: encrypt, signal `emergency_rotate`, poll decrypt of that ciphertext until 409."""
    http = keyrotor.http
    result = EmergencyResult()
    keys: list[dict[str, Any]] = []
    for _ in range(count):  # fresh keys, so the section does not depend on --keys
        keys.append(await keyrotor.create(0))
    queue = iter(keys)

    async def one(key: dict[str, Any]) -> None:
        r = await http.post(f"{KEYS_PATH}/{key['id']}/encrypt", json={"plaintext": PLAINTEXT})
        if r.status_code != 200:
            raise RuntimeError(f"encrypt answered {r.status_code}: {r.text}")
        ciphertext = r.json()["ciphertext"]
        body = {"ciphertext": ciphertext}
        r = await http.post(f"{KEYS_PATH}/{key['id']}/decrypt", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"decrypt before the signal answered {r.status_code}: {r.text}")
        handle = client.get_workflow_handle(key["workflowId"])
        polls = 0
        sent = time.perf_counter()
        await handle.signal("emergency_rotate", OperatorAction(reason="bench", actor="bench"))
        while True:
            r = await http.post(f"{KEYS_PATH}/{key['id']}/decrypt", json=body)
            polls += 1
            if r.status_code == 409:
                result.latencies.append(time.perf_counter() - sent)
                result.polls.append(polls)
                return
            if r.status_code != 200:
                raise RuntimeError(f"decrypt answered {r.status_code}: {r.text}")
            if time.perf_counter() - sent > EMERGENCY_TIMEOUT:
                raise RuntimeError(f"still decrypting {EMERGENCY_TIMEOUT:.0f} s after the signal")
            await asyncio.sleep(POLL_INTERVAL)

    async def worker() -> None:
        for key in queue:
            try:
                await one(key)
            except Exception as e:
                result.errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


# --- wiring ----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    try:
        out = subprocess.run(
            [str(BIN / "temporal"), "--version"], capture_output=True, text=True, timeout=30
        )
        temporal_version = out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        temporal_version = f"unknown ({type(e).__name__})"
    return {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "temporal": temporal_version,
        "platform": platform.platform(),
    }


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def instrument(services: Services, timers: Timers) -> None:
    """Time the product's blocking calls (bench-side wrappers on this process's instances)."""
    keys = services.keys
    keys.commit_transition = timers.wrap(  # type: ignore[method-assign]
        "KeyService.commit_transition (activity body)", keys.commit_transition
    )
    keys.get = timers.wrap("KeyService.get (API read)", keys.get)  # type: ignore[method-assign]
    for name, provider in services.providers.items():
        provider.create_version = timers.wrap(  # type: ignore[method-assign]
            f"{name} provider create_version (key generation)", provider.create_version
        )
    store = services.store
    original_write = store.write

    def timed_write() -> Any:
        # Time from BEGIN IMMEDIATE to COMMIT done: the write lock wait, the statements and fsync.
        ctx = original_write()

        class Timed:
            def __enter__(self) -> Any:
                self.start = time.perf_counter()
                return ctx.__enter__()

            def __exit__(self, *exc: Any) -> Any:
                try:
                    return ctx.__exit__(*exc)
                finally:
                    elapsed = time.perf_counter() - self.start
                    with timers.lock:
                        name = "Store.write (lock wait + statements + commit)"
                        timers.totals[name] = timers.totals.get(name, 0.0) + elapsed
                        timers.counts[name] = timers.counts.get(name, 0) + 1

        return Timed()

    store.write = timed_write  # type: ignore[method-assign]


async def terminate_all(client: Client, workflow_ids: list[str], concurrency: int) -> int:
    failed = 0
    ids = iter(workflow_ids)

    async def worker() -> None:
        nonlocal failed
        for wid in ids:
            try:
                await client.get_workflow_handle(wid).terminate("benchmark finished")
            except RPCError:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


def print_run(r: RunResult) -> None:
    print(
        f"  {r.name:<9} {r.keys:>5} keys in {r.seconds:7.2f} s = {r.rate:7.1f} keys/s"
        f"   create p50 {ms(percentile(r.create_latencies, 50))}"
        f" p99 {ms(percentile(r.create_latencies, 99))}"
        f" | rotate p50 {ms(percentile(r.rotate_latencies, 50))}"
        f" p99 {ms(percentile(r.rotate_latencies, 99))}"
        + (f"   ERRORS {len(r.errors)}" if r.errors else ""),
        flush=True,
    )
    for e in r.errors[:3]:
        print(f"    error: {e}")


async def bench(args: argparse.Namespace) -> None:
    info = machine()
    print(
        f"machine: {info['cpus']} CPUs, Python {info['python']}, {info['platform']}\n"
        f"temporal: {info['temporal']}",
        flush=True,
    )
    keyring_text = generate_master_key()
    keyring = MasterKeyring.parse(keyring_text)
    setup_start = time.perf_counter()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        data_converter=data_converter(keyring),
        dev_server_log_level="error",
    )
    tmp = tempfile.TemporaryDirectory(prefix="keyrotor-bench-")
    server: uvicorn.Server | None = None
    serve_task: asyncio.Task[None] | None = None
    baseline: Baseline | None = None
    keyrotor: Keyrotor | None = None
    services: Services | None = None
    try:
        client = env.client
        suffix = uuid.uuid4().hex[:8]
        settings = Settings(
            data_dir=Path(tmp.name),
            master_key=SecretStr(keyring_text),
            task_queue=f"bench-keyrotor-{suffix}",
        )
        services = build_services(settings)
        timers = Timers()
        instrument(services, timers)
        admin_key = AdminKeys(services.store, services.keyring.derive(PEPPER_PURPOSE)).create(
            "bench", Role.ADMIN, "bench"
        )
        sock = free_socket()
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(services, client),
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        serve_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serve_task.done():
                serve_task.result()
            await asyncio.sleep(0.01)
        baseline_queue = f"bench-noop-{suffix}"
        async with (
            build_worker(client, services),
            Worker(client, task_queue=baseline_queue, workflows=[NoopKeyWorkflow]),
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {admin_key}"},
                timeout=HTTP_TIMEOUT,
                limits=httpx.Limits(max_connections=args.concurrency * 2),
            ) as http,
        ):
            print(
                f"setup: dev server, worker, API on 127.0.0.1:{port} in "
                f"{time.perf_counter() - setup_start:.1f} s; data dir {tmp.name} (SQLite WAL)",
                flush=True,
            )
            baseline = Baseline(client, baseline_queue)
            keyrotor = Keyrotor(http)
            order = "baseline first, then keyrotor" + (
                f", alternating for {args.rounds} rounds" if args.rounds > 1 else ""
            )
            print(
                f"\nthroughput: {args.keys} create+rotate pairs per system per round, "
                f"{args.concurrency} concurrent clients, {args.warmup} warm-up pairs each "
                f"(not counted); order: {order}",
                flush=True,
            )
            for system in (baseline, keyrotor):
                await run_pairs(
                    "warm-up", args.warmup, args.concurrency, system.create, system.rotate
                )
            runs: dict[str, list[RunResult]] = {"baseline": [], "keyrotor": []}
            for _ in range(args.rounds):
                for name, system in (("baseline", baseline), ("keyrotor", keyrotor)):
                    if name == "keyrotor":
                        before = timers.snapshot()
                    r = await run_pairs(
                        name, args.keys, args.concurrency, system.create, system.rotate
                    )
                    if name == "keyrotor":
                        after = timers.snapshot()
                        breakdown = {
                            k: (c - before.get(k, (0, 0.0))[0], t - before.get(k, (0, 0.0))[1])
                            for k, (c, t) in after.items()
                        }
                    runs[name].append(r)
                    print_run(r)

            print(
                f"\nemergency rotation: {args.emergency_keys} fresh keys, "
                f"{args.emergency_concurrency} at a time, decrypt polled every "
                f"{POLL_INTERVAL * 1000:.0f} ms",
                flush=True,
            )
            em = await emergency(client, keyrotor, args.emergency_keys, args.emergency_concurrency)
            for e in em.errors[:3]:
                print(f"    error: {e}")

            def total(rs: list[RunResult]) -> tuple[int, float]:
                return sum(r.keys for r in rs), sum(r.seconds for r in rs)

            b_keys, b_secs = total(runs["baseline"])
            k_keys, k_secs = total(runs["keyrotor"])
            b_rate = b_keys / b_secs if b_secs else 0.0
            k_rate = k_keys / k_secs if k_secs else 0.0
            ratio = k_rate / b_rate if b_rate else math.nan
            k_all = runs["keyrotor"]
            b_all = runs["baseline"]

            print("\n" + "=" * 78)
            print(f"RESULTS  (order: {order}; keys/s counts create+rotate pairs)")
            print("=" * 78)
            rows = [
                ("baseline (no-op workflow, Temporal client)", f"{b_rate:.1f} keys/s"),
                ("keyrotor (REST -> workflow -> activity -> SQLite)", f"{k_rate:.1f} keys/s"),
                ("ratio keyrotor / baseline (target >= 0.5)", f"{ratio:.2f}"),
                (
                    "baseline create / rotate p50",
                    f"{ms(percentile(_all(b_all, 'create'), 50))} / "
                    f"{ms(percentile(_all(b_all, 'rotate'), 50))}",
                ),
                (
                    "keyrotor create / rotate p50",
                    f"{ms(percentile(_all(k_all, 'create'), 50))} / "
                    f"{ms(percentile(_all(k_all, 'rotate'), 50))}",
                ),
                (
                    "keyrotor create / rotate p99",
                    f"{ms(percentile(_all(k_all, 'create'), 99))} / "
                    f"{ms(percentile(_all(k_all, 'rotate'), 99))}",
                ),
                (
                    f"emergency signal -> decrypt 409 (n={len(em.latencies)}) p50",
                    ms(percentile(em.latencies, 50)),
                ),
                ("emergency p99 (target <= 1 s)", ms(percentile(em.latencies, 99))),
                ("emergency max", ms(max(em.latencies, default=math.nan))),
            ]
            for label, value in rows:
                print(f"{label:<56} {value:>20}")
            errors = sum(len(r.errors) for rs in runs.values() for r in rs) + len(em.errors)
            print(f"{'errors':<56} {errors:>20}")
            print("-" * 78)
            print(
                f"time inside product calls during the last keyrotor run ({k_all[-1].keys} pairs,"
            )
            print(f"{k_all[-1].seconds:.2f} s wall; summed over threads, per pair):")
            for name, (count, secs) in sorted(breakdown.items(), key=lambda kv: -kv[1][1]):
                per = secs / k_all[-1].keys if k_all[-1].keys else math.nan
                print(f"  {name:<54} {count:>5} calls {ms(per):>12}/pair")
            print("=" * 78, flush=True)
    finally:
        cleanup_start = time.perf_counter()
        ids: list[str] = []
        if baseline is not None:
            ids += baseline.workflow_ids
        if keyrotor is not None:
            ids += [k["workflowId"] for k in keyrotor.keys]
        failed = await terminate_all(env.client, ids, 16) if ids else 0
        if server is not None and serve_task is not None:
            server.should_exit = True
            await serve_task
        if services is not None:
            services.close()
        await env.shutdown()
        tmp.cleanup()
        print(
            f"cleanup: terminated {len(ids) - failed} bench workflows"
            + (f" ({failed} already gone)" if failed else "")
            + f", stopped the API and the dev server in {time.perf_counter() - cleanup_start:.1f} s"
        )


def _all(runs: list[RunResult], which: str) -> list[float]:
    out: list[float] = []
    for r in runs:
        out += r.create_latencies if which == "create" else r.rotate_latencies
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keys", type=int, default=200, help="create+rotate pairs per run")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=16, help="uncounted pairs per system")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate baseline and keyrotor this many times"
    )
    parser.add_argument("--emergency-keys", type=int, default=50, help="keys (M) for latency")
    parser.add_argument(
        "--emergency-concurrency", type=int, default=1, help="emergency rotations at a time"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    asyncio.run(bench(args))
    print(f"total: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
