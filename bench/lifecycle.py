"""Lifecycle benchmark: keyrotor's create + rotate throughput against a bare Temporal baseline,
and the latency of an emergency rotation as a client of the use path sees it.

Run from the repository root (never part of the test run; it prints, it does not assert):

    .venv/bin/python bench/lifecycle.py [--keys N] [--concurrency C] [--emergency-keys M]

Everything runs on this machine, laid out as deployed: one Temporal dev server (the `temporal`
binary installed beside Python; the SDK never downloads one), keyrotor as its two processes
(`keyrotor api` on a free 127.0.0.1 port and `keyrotor worker`, sharing a SQLite store), the
baseline's worker in a process of its own, and this process driving both systems.

- baseline: `NoopKeyWorkflow` below, with the message pattern of `KeyLifecycleWorkflow` but no
  activity: update-with-start `wait_created`, then update `rotate`, straight from this process's
  Temporal client. It is the floor: what Temporal itself costs for the same two round trips.
- keyrotor: `POST /api/key-management/keys/generate` then `POST /keys/{id}/rotate` over
  keep-alive HTTP/1.1 (`httpload`: pre-built requests on raw asyncio streams, so the driver costs
  little CPU), each through the key's workflow, its `commit_key_transition` local activity and the
  SQLite store.
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
    import itertools
    import json
    import math
    import os
    import platform
    import subprocess
    import sys
    import tempfile
    import time
    import uuid
    from collections.abc import Awaitable, Callable, Iterable
    from pathlib import Path
    from typing import Any

    from httpload import Connection, free_port, process_cpu, request_bytes, wait_listening
    from temporalio.client import Client, WithStartWorkflowOperation
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.service import RPCError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from core.codec import connect_client, data_converter
    from core.credentials import AdminKeys, Role
    from core.envelope import MasterKeyring, generate_master_key
    from core.store.db import Store, sqlite_url
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
PLAINTEXT = base64.b64encode(b"benchmark plaintext").decode()


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
        self.cpu: dict[str, float] = {}  # CPU seconds per process during the run
        self.create_latencies: list[float] = []
        self.rotate_latencies: list[float] = []
        self.errors: list[str] = []

    @property
    def rate(self) -> float:
        return self.keys / self.seconds if self.seconds > 0 else 0.0


class Processes:
    """The processes whose CPU the bench reads: this one, named children, the dev server."""

    def __init__(self) -> None:
        self.named: dict[str, int] = {}

    def cpu(self) -> dict[str, float]:
        out = {"driver (this process)": time.process_time()}
        out |= {name: process_cpu(pid) for name, pid in self.named.items()}
        out["Temporal dev server"] = sum(
            process_cpu(pid) for pid in children() if pid not in self.named.values()
        )
        return out


def children() -> list[int]:
    """This process's child processes (the dev server, keyrotor's processes, the baseline's)."""
    me = str(os.getpid())
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rpartition(")")[2].split()[1] == me:
                out.append(int(stat.parent.name))
        except OSError:
            continue  # the process ended meanwhile
    return out


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
    processes: Processes,
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

    start, cpu = time.perf_counter(), processes.cpu()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    result.cpu = {k: v - cpu[k] for k, v in processes.cpu().items()}
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
    """Drives keyrotor over its REST API (a pool of keep-alive connections)."""

    def __init__(self, port: int, admin_key: str) -> None:
        self.port = port
        self.admin_key = admin_key
        self.keys: list[dict[str, Any]] = []
        self._pool: asyncio.Queue[Connection] = asyncio.Queue()
        self._generate = self.request("POST", f"{KEYS_PATH}/generate", {"type": "encryption"})

    def request(self, method: str, path: str, body: object = None) -> bytes:
        return request_bytes(method, path, self.admin_key, body)

    async def send(self, request: bytes, expect: int) -> dict[str, Any]:
        """Send on a pooled connection; the JSON answer, or an error unless it is `expect`."""
        conn = self._pool.get_nowait() if not self._pool.empty() else None
        conn = conn or await Connection.open(self.port)
        try:
            status, body = await conn.send(request)
        except BaseException:
            conn.close()
            raise
        self._pool.put_nowait(conn)
        if status != expect:
            raise RuntimeError(f"answered {status} (expected {expect}): {body[:300]!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    async def create(self, _i: int) -> dict[str, Any]:
        key: dict[str, Any] = (await self.send(self._generate, 201))["key"]
        self.keys.append(key)
        return key

    async def rotate(self, key: dict[str, Any]) -> None:
        answer = await self.send(self.request("POST", f"{KEYS_PATH}/{key['id']}/rotate", {}), 200)
        if answer["rotation"]["toVersion"] != 2:
            raise RuntimeError(f"rotate answered {answer['rotation']}")

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait().close()


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
    result = EmergencyResult()
    keys: list[dict[str, Any]] = []
    for _ in range(count):  # fresh keys, so the section does not depend on --keys
        keys.append(await keyrotor.create(0))
    queue = iter(keys)

    async def one(key: dict[str, Any]) -> None:
        path = f"{KEYS_PATH}/{key['id']}"
        encrypt = keyrotor.request("POST", f"{path}/encrypt", {"plaintext": PLAINTEXT})
        ciphertext = (await keyrotor.send(encrypt, 200))["ciphertext"]
        decrypt = keyrotor.request("POST", f"{path}/decrypt", {"ciphertext": ciphertext})
        await keyrotor.send(decrypt, 200)  # before the signal, it decrypts
        handle = client.get_workflow_handle(key["workflowId"])
        polls = 0
        sent = time.perf_counter()
        await handle.signal("emergency_rotate", OperatorAction(reason="bench", actor="bench"))
        while True:
            t = time.perf_counter()
            try:
                await keyrotor.send(decrypt, 409)
                refused = True
            except RuntimeError as e:
                if "answered 200" not in str(e):
                    raise
                refused = False
            result.decrypt_latencies.append(time.perf_counter() - t)
            polls += 1
            if refused:
                result.latencies.append(time.perf_counter() - sent)
                result.polls.append(polls)
                return
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


def cpu_line(r: RunResult) -> str:
    """CPU per pair of each process, and how busy it was."""
    return ", ".join(
        f"{name} {ms(cpu / r.keys)} ({cpu / r.seconds:.0%})" for name, cpu in r.cpu.items()
    )


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
        print(f"  {'':<9} CPU per pair (share of one core): {cpu_line(r)}", flush=True)
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
        for name, cpu in r.cpu.items():
            out.cpu[name] = out.cpu.get(name, 0.0) + cpu
        out.create_latencies += r.create_latencies
        out.rotate_latencies += r.rotate_latencies
        out.errors += r.errors
    return out


def report(
    args: argparse.Namespace,
    order: str,
    runs: dict[str, list[RunResult]],
    em: EmergencyResult | None,
    histories: dict[str, tuple[int, int]],
) -> None:
    b, k = merged(runs["baseline"]), merged(runs["keyrotor"])
    rows: list[tuple[str, str]] = []
    if runs["baseline"]:
        rows.append(("baseline: no-op workflow, Temporal client", f"{b.rate:.1f} keys/s"))
    if runs["keyrotor"]:
        rows.append(("keyrotor: REST -> workflow -> commit -> SQLite", f"{k.rate:.1f} keys/s"))
    if runs["baseline"] and runs["keyrotor"]:
        ratio = k.rate / b.rate if b.rate else math.nan
        rows.append(("ratio keyrotor / baseline (target >= 0.5)", f"{ratio:.2f}"))
    for r in (b, k):
        if r.keys:
            rows.append((f"{r.name} CPU per pair, all processes", ms(sum(r.cpu.values()) / r.keys)))
            rows += [(f"  {name}", ms(cpu / r.keys)) for name, cpu in r.cpu.items()]
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
    print("=" * width, flush=True)


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A child process writing its output to `log` (read it when something fails)."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


async def run_baseline_worker(address: str, task_queue: str) -> None:
    """`--baseline-worker`: the no-op workflow's worker, until terminated."""
    keyring = MasterKeyring.parse(os.environ["KEYROTOR_MASTER_KEY"])
    client = await connect_client(address, "default", keyring)
    async with Worker(client, task_queue=task_queue, workflows=[NoopKeyWorkflow]):
        await asyncio.Event().wait()


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
    address = client.service_client.config.target_host
    suffix = uuid.uuid4().hex[:8]
    baseline = Baseline(client, f"bench-noop-{suffix}")
    children: list[subprocess.Popen[bytes]] = []
    processes = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="keyrotor-bench-") as data_dir:
            data = Path(data_dir)
            store = Store(sqlite_url(data / "keyrotor.db"))
            store.migrate()
            admin_key = AdminKeys(store, MasterKeyring.parse(master_key)).create(
                "bench", Role.ADMIN, "bench"
            )
            store.dispose()
            port = free_port()
            child_env = {
                **os.environ,
                "KEYROTOR_DATA_DIR": data_dir,
                "KEYROTOR_MASTER_KEY": master_key,
                "KEYROTOR_TEMPORAL_ADDRESS": address,
                "KEYROTOR_TASK_QUEUE": f"bench-keyrotor-{suffix}",
                "LOG_LEVEL": "WARNING",
                # one admin key drives the whole run, far above the admin API's per-key limit
                "KEYROTOR_ADMIN_RATE_LIMIT": "0",
            }
            if not args.no_pycache:
                # The workflow sandbox re-imports a workflow's module for each workflow run;
                # with bytecode writing off (as on these machines) that means a compile every
                # time, which a deployed worker does not pay. Cache bytecode outside the tree.
                child_env.pop("PYTHONDONTWRITEBYTECODE", None)
                child_env["PYTHONPYCACHEPREFIX"] = str(data / "pycache")
            keyrotor_bin = str(BIN / "keyrotor")
            for name, argv in (
                ("keyrotor api", [keyrotor_bin, "api", "--port", str(port)]),
                ("keyrotor worker", [keyrotor_bin, "worker"]),
                (
                    "baseline worker",
                    [sys.executable, __file__, "--baseline-worker", address, baseline.task_queue],
                ),
            ):
                children.append(spawn(argv, child_env, data / f"{name.replace(' ', '-')}.log"))
                processes.named[name] = children[-1].pid
            await wait_listening(port, children[0])
            keyrotor = Keyrotor(port, admin_key)
            print(
                f"setup: dev server, keyrotor api on 127.0.0.1:{port}, keyrotor worker and the"
                f" baseline worker in {time.perf_counter() - setup_start:.1f} s"
                f" (SQLite WAL and process logs in {data_dir})",
                flush=True,
            )
            try:
                await measure(args, processes, baseline, keyrotor, client)
            finally:
                workflow_ids = baseline.workflow_ids + [k["workflowId"] for k in keyrotor.keys]
                cleanup_start = time.perf_counter()
                gone = await terminate_all(client, workflow_ids, args.concurrency)
                print(
                    f"cleanup: terminated {len(workflow_ids) - gone} bench workflows"
                    f" ({gone} already gone) in {time.perf_counter() - cleanup_start:.1f} s",
                    flush=True,
                )
                keyrotor.close()
                stop(children)
    finally:
        stop(children)
        await env.shutdown()
        print(f"after: {load()}; API, workers and dev server stopped")


async def measure(
    args: argparse.Namespace,
    processes: Processes,
    baseline: Baseline,
    keyrotor: Keyrotor,
    client: Client,
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
        await run_pairs(
            "warm-up", processes, args.warmup, args.concurrency, system.create, system.rotate
        )
    runs: dict[str, list[RunResult]] = {"baseline": [], "keyrotor": []}
    for size in sizes:
        for name, system in systems:
            r = await run_pairs(
                name, processes, size, args.concurrency, system.create, system.rotate
            )
            r.cpu = {k: v for k, v in r.cpu.items() if owner(k) in ("both", name)}
            runs[name].append(r)
            print_run(r)
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
    report(args, order, runs, em, histories)


def owner(process: str) -> str:
    """Which system a process's CPU belongs to."""
    if process.startswith("keyrotor"):
        return "keyrotor"
    return "baseline" if process.startswith("baseline") else "both"


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
    parser.add_argument(
        "--baseline-worker",
        nargs=2,
        metavar=("ADDRESS", "TASK_QUEUE"),
        help=argparse.SUPPRESS,  # the bench starts itself with it, as the baseline's worker
    )
    args = parser.parse_args()
    if args.baseline_worker:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_baseline_worker(*args.baseline_worker))
        return
    start = time.perf_counter()
    asyncio.run(bench(args))
    print(f"total: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
