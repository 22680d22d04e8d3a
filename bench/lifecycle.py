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
    import contextlib
    import functools
    import itertools
    import math
    import os
    import platform
    import subprocess
    import sys
    import tempfile
    import threading
    import time
    import uuid
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
    from pathlib import Path
    from typing import Any, TypeVar

    import httpx
    import sqlalchemy.event
    import uvicorn
    from pydantic import SecretStr
    from temporalio.client import Client, WithStartWorkflowOperation
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.service import RPCError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from api.app import create_app
    from core.codec import data_converter
    from core.credentials import AdminKeys, Role
    from core.envelope import MasterKeyring, generate_master_key
    from core.services import Services, build_services
    from core.settings import Settings
    from core.store.db import WRITE_TRANSACTION_OPTION
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


# Plain classes, not dataclasses, below: the workflow sandbox re-executes this module for every
# baseline workflow run, and building a dataclass costs more than the no-op workflow itself.


class RunResult:
    """One measured run of create + rotate pairs."""

    def __init__(self, name: str, keys: int, seconds: float) -> None:
        self.name = name
        self.keys = keys
        self.seconds = seconds
        self.cpu = 0.0  # CPU seconds of this process (all threads) during the run
        self.server_cpu = 0.0  # CPU seconds of the Temporal dev server during the run
        self.create_latencies: list[float] = []
        self.rotate_latencies: list[float] = []
        self.errors: list[str] = []

    @property
    def rate(self) -> float:
        return self.keys / self.seconds if self.seconds > 0 else 0.0


class Timers:
    """Wall time spent inside instrumented product calls, summed over the threads running them."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> T:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, start)

        return timed

    def add(self, name: str, start: float) -> None:
        elapsed = time.perf_counter() - start
        with self.lock:
            self.totals[name] = self.totals.get(name, 0.0) + elapsed
            self.counts[name] = self.counts.get(name, 0) + 1

    def snapshot(self) -> dict[str, tuple[int, float]]:
        with self.lock:
            return {k: (self.counts[k], self.totals[k]) for k in self.totals}

    def since(self, before: dict[str, tuple[int, float]]) -> dict[str, tuple[int, float]]:
        """Calls and time since `before`, in the order the names were first seen."""
        return {
            k: (c - before.get(k, (0, 0.0))[0], t - before.get(k, (0, 0.0))[1])
            for k, (c, t) in self.snapshot().items()
        }


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

    start, cpu, server_cpu = time.perf_counter(), time.process_time(), children_cpu()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    result.cpu = time.process_time() - cpu
    result.server_cpu = children_cpu() - server_cpu
    result.keys = len(result.create_latencies)
    return result


def children_cpu() -> float:
    """CPU seconds used so far by this process's children (the dev server); NaN off Linux."""
    me = str(os.getpid())
    total = 0.0
    try:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue  # the process ended meanwhile
            if fields[1] == me:  # ppid
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return math.nan
    return total


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


class EmergencyResult:
    """Signal-sent to decrypt-refused latencies, one per key."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.polls: list[int] = []
        self.decrypt_latencies: list[float] = []
        self.errors: list[str] = []


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
            t = time.perf_counter()
            r = await http.post(f"{KEYS_PATH}/{key['id']}/decrypt", json=body)
            result.decrypt_latencies.append(time.perf_counter() - t)
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


def instrument(services: Services, timers: Timers) -> None:
    """Time the product's blocking calls (bench-side wrappers on this process's instances)."""
    keys = services.keys
    keys.commit_transition = timers.wrap(  # type: ignore[method-assign]
        "KeyService.commit_transition (activity body)", keys.commit_transition
    )
    keys.get = timers.wrap("KeyService.get (API reads)", keys.get)  # type: ignore[method-assign]
    for name, provider in services.providers.items():
        provider.create_version = timers.wrap(  # type: ignore[method-assign]
            f"  of which {name} provider create_version", provider.create_version
        )
    write = services.store.write
    current = threading.local()

    @contextlib.contextmanager
    def timed_write() -> Iterator[Any]:
        # BEGIN IMMEDIATE to COMMIT: waiting for the write lock, the statements and the fsync.
        current.start, current.locked = time.perf_counter(), None
        try:
            with write() as session:
                yield session
        finally:
            timers.add("  of which Store.write (lock wait + SQL + commit)", current.start)
            if current.locked is not None:
                timers.add("    of which write lock held (SQL + commit)", current.locked)
            current.start = None

    # Runs after the store's own "begin" listener, i.e. once BEGIN IMMEDIATE has the lock.
    @sqlalchemy.event.listens_for(services.store.engine, "begin")
    def _locked(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(WRITE_TRANSACTION_OPTION) and getattr(current, "start", None) is not None:
            timers.add("    of which waiting for the write lock", current.start)
            current.locked = time.perf_counter()

    services.store.write = timed_write  # type: ignore[method-assign]


async def history_size(client: Client, workflow_id: str) -> tuple[int, int]:
    """Events and encoded bytes of a workflow's history so far."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return len(history.events), sum(e.ByteSize() for e in history.events)


async def terminate_all(client: Client, workflow_ids: list[str], concurrency: int) -> int:
    """Terminate the bench's workflows; answers how many were already gone."""
    gone = 0
    ids = iter(workflow_ids)

    async def worker() -> None:
        nonlocal gone
        for wid in ids:
            try:
                await client.get_workflow_handle(wid).terminate("benchmark finished")
            except RPCError:
                gone += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return gone


def print_run(r: RunResult) -> None:
    print(
        f"  {r.name:<9} {r.keys:>5} keys in {r.seconds:7.2f} s = {r.rate:6.1f} keys/s"
        f" | create p50 {ms(percentile(r.create_latencies, 50))}"
        f" p99 {ms(percentile(r.create_latencies, 99))}"
        f" | rotate p50 {ms(percentile(r.rotate_latencies, 50))}"
        f" p99 {ms(percentile(r.rotate_latencies, 99))}"
        + (f" | ERRORS {len(r.errors)}" if r.errors else ""),
        flush=True,
    )
    if r.keys:
        print(
            f"  {'':<9} CPU per pair: this process {ms(r.cpu / r.keys)}"
            f" ({r.cpu / r.seconds:.0%} of one core), Temporal dev server"
            f" {ms(r.server_cpu / r.keys)} ({r.server_cpu / r.seconds:.0%})",
            flush=True,
        )
    for e in r.errors[:3]:
        print(f"    error: {e}")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min)"


def merged(runs: list[RunResult]) -> RunResult:
    out = RunResult(runs[0].name if runs else "-", 0, 0.0)
    for r in runs:
        out.keys += r.keys
        out.seconds += r.seconds
        out.cpu += r.cpu
        out.server_cpu += r.server_cpu
        out.create_latencies += r.create_latencies
        out.rotate_latencies += r.rotate_latencies
        out.errors += r.errors
    return out


def report(
    args: argparse.Namespace,
    order: str,
    runs: dict[str, list[RunResult]],
    em: EmergencyResult | None,
    breakdown: dict[str, tuple[int, float]],
    histories: dict[str, tuple[int, int]],
) -> None:
    b, k = merged(runs["baseline"]), merged(runs["keyrotor"])
    rows: list[tuple[str, str]] = []
    if runs["baseline"]:
        rows.append(("baseline: no-op workflow, Temporal client", f"{b.rate:.1f} keys/s"))
    if runs["keyrotor"]:
        rows.append(("keyrotor: REST -> workflow -> activity -> SQLite", f"{k.rate:.1f} keys/s"))
    if runs["baseline"] and runs["keyrotor"]:
        ratio = k.rate / b.rate if b.rate else math.nan
        rows.append(("ratio keyrotor / baseline (target >= 0.5)", f"{ratio:.2f}"))
    for r in (b, k):
        if r.keys:
            rows.append(
                (
                    f"{r.name} CPU per pair: bench process / dev server",
                    f"{ms(r.cpu / r.keys)} / {ms(r.server_cpu / r.keys)}",
                )
            )
            if r.name in histories:
                events, size = histories[r.name]
                rows.append(
                    (f"{r.name} history after create + rotate", f"{events} events, {size} B")
                )
            for p in (50, 99):
                rows.append(
                    (
                        f"{r.name} latency p{p}: create / rotate",
                        f"{ms(percentile(r.create_latencies, p))} / "
                        f"{ms(percentile(r.rotate_latencies, p))}",
                    )
                )
    if em is not None:
        n = len(em.latencies)
        rows += [
            (f"emergency signal -> decrypt 409 (n={n}) p50", ms(percentile(em.latencies, 50))),
            ("emergency p99 (target <= 1 s)", ms(percentile(em.latencies, 99))),
            ("emergency max", ms(max(em.latencies, default=math.nan))),
            ("emergency decrypt polls per key, p50", f"{percentile(em.polls, 50):.0f}"),
            ("one decrypt request while polling, p50", ms(percentile(em.decrypt_latencies, 50))),
        ]
    errors = sum(len(r.errors) for rs in runs.values() for r in rs)
    errors += len(em.errors) if em is not None else 0
    rows.append(("errors", str(errors)))

    width = 80
    print("\n" + "=" * width)
    print(f"RESULTS: {args.keys} pairs per system, concurrency {args.concurrency}; order: {order}")
    print("=" * width)
    for label, value in rows:
        print(f"{label:<52}{value:>28}")
    if breakdown and k.keys:
        print("-" * width)
        print(
            f"inside the product during the keyrotor runs ({k.keys} pairs in {k.seconds:.1f} s),"
            " wall time summed over threads:"
        )
        for name, (count, secs) in sorted(breakdown.items(), key=_breakdown_order):
            per = secs / k.keys
            print(f"  {name:<56}{count:>5} calls {ms(per):>10}/pair")
    print("=" * width, flush=True)


def _breakdown_order(item: tuple[str, tuple[int, float]]) -> tuple[int, str]:
    order = (
        "KeyService.commit",
        "  of which local",
        "  of which Store",
        "    of which waiting",
        "    of which write lock",
        "KeyService.get",
    )
    name = item[0]
    return next((i for i, p in enumerate(order) if name.startswith(p)), len(order)), name


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[int]:
    """Serve `app` with uvicorn on a free 127.0.0.1 port in this loop; yields the port.

    uvicorn binds the port itself: a socket handed in from `socket.socket()` has protocol 0, so
    asyncio does not set TCP_NODELAY on the connections it accepts, and every response then
    waits ~40 ms for a delayed ACK.
    """
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def bench(args: argparse.Namespace) -> None:
    info = machine()
    print(
        f"machine: {info['cpus']} CPUs, Python {info['python']}, {info['platform']}\n"
        f"temporal: {info['temporal']}\n"
        f"workflow module bytecode: "
        + ("compiled from source per workflow run" if args.no_pycache else "cached")
        + f"\nbefore: {load()}",
        flush=True,
    )
    master_key = generate_master_key()
    setup_start = time.perf_counter()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        data_converter=data_converter(MasterKeyring.parse(master_key)),
        dev_server_log_level="error",
    )
    client = env.client
    suffix = uuid.uuid4().hex[:8]
    baseline = Baseline(client, f"bench-noop-{suffix}")
    http: httpx.AsyncClient | None = None
    workflow_ids: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="keyrotor-bench-") as data_dir:
            settings = Settings(
                data_dir=Path(data_dir),
                master_key=SecretStr(master_key),
                task_queue=f"bench-keyrotor-{suffix}",
            )
            services = build_services(settings)
            timers = Timers()
            instrument(services, timers)
            admin_key = AdminKeys(services.store, services.keyring).create(
                "bench", Role.ADMIN, "bench"
            )
            try:
                async with (
                    serve(create_app(services, client)) as port,
                    build_worker(client, services),
                    Worker(client, task_queue=baseline.task_queue, workflows=[NoopKeyWorkflow]),
                    httpx.AsyncClient(
                        base_url=f"http://127.0.0.1:{port}",
                        headers={"Authorization": f"Bearer {admin_key}"},
                        timeout=HTTP_TIMEOUT,
                        limits=httpx.Limits(max_connections=2 * args.concurrency),
                    ) as http,
                ):
                    keyrotor = Keyrotor(http)
                    print(
                        f"setup: dev server, both workers and the API on 127.0.0.1:{port} in "
                        f"{time.perf_counter() - setup_start:.1f} s (SQLite WAL in {data_dir})",
                        flush=True,
                    )
                    try:
                        await measure(args, baseline, keyrotor, client, timers)
                    finally:
                        workflow_ids = baseline.workflow_ids + [
                            k["workflowId"] for k in keyrotor.keys
                        ]
                        cleanup_start = time.perf_counter()
                        gone = await terminate_all(client, workflow_ids, args.concurrency)
                        print(
                            f"cleanup: terminated {len(workflow_ids) - gone} bench workflows"
                            f" ({gone} already gone) in {time.perf_counter() - cleanup_start:.1f}"
                            " s",
                            flush=True,
                        )
            finally:
                services.close()
    finally:
        await env.shutdown()
        print(f"after: {load()}; API, workers and dev server stopped")


async def measure(
    args: argparse.Namespace,
    baseline: Baseline,
    keyrotor: Keyrotor,
    client: Client,
    timers: Timers,
) -> None:
    systems: list[tuple[str, Baseline | Keyrotor]] = []
    if args.systems in ("both", "baseline"):
        systems.append(("baseline", baseline))
    if args.systems in ("both", "keyrotor"):
        systems.append(("keyrotor", keyrotor))
    order = ", then ".join(name for name, _ in systems)
    rounds = max(1, min(args.rounds, args.keys))
    sizes = [args.keys // rounds + (1 if i < args.keys % rounds else 0) for i in range(rounds)]
    if rounds > 1 and len(systems) > 1:
        order += f", alternating in {rounds} rounds of {'/'.join(map(str, sizes))} pairs"
    print(
        f"\nthroughput: {args.keys} create+rotate pairs per system, {args.concurrency} concurrent "
        f"clients, after {args.warmup} uncounted warm-up pairs per system; order: {order}",
        flush=True,
    )
    for _, system in systems:
        await run_pairs("warm-up", args.warmup, args.concurrency, system.create, system.rotate)
    runs: dict[str, list[RunResult]] = {"baseline": [], "keyrotor": []}
    breakdown: dict[str, tuple[int, float]] = {}
    for size in sizes:
        for name, system in systems:
            before = timers.snapshot()
            r = await run_pairs(name, size, args.concurrency, system.create, system.rotate)
            runs[name].append(r)
            print_run(r)
            if name == "keyrotor":
                for k, (c, t) in timers.since(before).items():
                    c0, t0 = breakdown.get(k, (0, 0.0))
                    breakdown[k] = (c0 + c, t0 + t)
    histories: dict[str, tuple[int, int]] = {}
    if runs["baseline"] and baseline.workflow_ids:
        histories["baseline"] = await history_size(client, baseline.workflow_ids[-1])
    if runs["keyrotor"] and keyrotor.keys:
        histories["keyrotor"] = await history_size(client, keyrotor.keys[-1]["workflowId"])
    em: EmergencyResult | None = None
    if args.emergency_keys > 0 and args.systems != "baseline":
        print(
            f"\nemergency rotation: {args.emergency_keys} fresh keys, "
            f"{args.emergency_concurrency} at a time, decrypt polled every "
            f"{POLL_INTERVAL * 1000:.0f} ms",
            flush=True,
        )
        em = await emergency(client, keyrotor, args.emergency_keys, args.emergency_concurrency)
        for e in em.errors[:3]:
            print(f"    error: {e}")
    report(args, order, runs, em, breakdown, histories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keys", type=int, default=200, help="create+rotate pairs per run")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=16, help="uncounted pairs per system")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="split the pairs into this many rounds of baseline then keyrotor (interleaved)",
    )
    parser.add_argument("--emergency-keys", type=int, default=50, help="keys (M) for latency")
    parser.add_argument(
        "--emergency-concurrency", type=int, default=1, help="emergency rotations at a time"
    )
    parser.add_argument(
        "--systems",
        choices=("both", "baseline", "keyrotor"),
        default="both",
        help="measure only one system (for profiling)",
    )
    parser.add_argument(
        "--no-pycache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as set: the sandbox then compiles each workflow's "
        "module from source for every workflow run",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keyrotor-bench-pycache-") as pycache:
        if not args.no_pycache:
            # The workflow sandbox re-imports a workflow's module for each workflow run; with
            # bytecode writing off (as on these machines) that means a compile every time, which
            # a deployed worker does not pay. Cache bytecode outside the work tree instead.
            sys.pycache_prefix = pycache
            sys.dont_write_bytecode = False
        asyncio.run(bench(args))
    print(f"total: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
