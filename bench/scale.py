"""Scale benchmark: thousands of live key workflows with short rotation intervals.

Creation rate, worker memory, and the lateness of scheduled rotations, with one dev server and
one worker.

Run from the repository root (never part of the test run; it prints, it does not assert):

    .venv/bin/python bench/scale.py [--keys N] [--rotation-interval T] [--measure-seconds M]

Laid out as deployed, on this machine: one Temporal dev server (the `temporal` binary beside
Python, keyrotor's search attributes registered; the SDK never downloads one), `keyrotor api`
and the keyrotor worker as processes of their own, sharing a fresh store (SQLite in a temporary
directory, or a fresh PostgreSQL database with `--postgres`), the local provider, and a policy
file that adds one key type, `scale`, rotating every T seconds. This process creates N keys of
that type through `POST /api/key-management/keys/generate`, paced evenly over one rotation
interval, so that in steady state N / T rotations fall due every second, evenly spread. Then it
measures for M seconds:

- lateness of each scheduled rotation due in the window: when it happened minus its version's
  `rotate_at`, both read from the store (read-only SQL); "happened" is the new version's
  `created_at` (the workflow's clock: the start of the workflow task that rotated), and also
  when this process first saw the rotation's audit record committed (polled every 0.25 s);
- the worker's RSS (/proc/PID/status VmRSS, every second) and every process's CPU;
- from the worker's SDK metrics (Prometheus, on when the bench starts the worker): workflow
  cache hits, misses and size, replay and task latencies;
- from a sample of workflow histories: where the time between a timer's deadline and the
  workflow task that acted on it went (timer firing, task queue, task processing).

The worker is `keyrotor worker`'s own entry function (`cli.main.worker`) in a process this
file starts with `--serve-worker`: the same settings and code, plus a Prometheus endpoint for
the SDK's metrics, and, only when `--worker-cache` is given, a different `max_cached_workflows`
(an experiment, 0 included; the product's worker takes KEYROTOR_WORKER_CACHE_SIZE, default 500).
`--plain-worker` runs the `keyrotor` binary itself instead (no metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from httpload import Connection, free_port, process_cpu, request_bytes, wait_listening
from lifecycle import children, load, machine, percentile, spawn, stop

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
KEYS_PATH = "/api/key-management/keys"
KEY_TYPE = "scale"
SAMPLE_INTERVAL = 1.0
AUDIT_POLL_INTERVAL = 0.25
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
STICKY = 2  # temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_STICKY
WIDTH = 92


# --- the worker this bench starts (`--serve-worker`) -----------------------------------------


def serve_worker(metrics_port: int, cache: int, unsandboxed: int, run_events: int) -> None:
    """`keyrotor worker`, with the SDK's metrics on `metrics_port` (0: none) and, when `cache`
    is not negative, that many cached workflows instead of the SDK's default (0: no cache and
    no sticky task queue); `unsandboxed`: workflows run without the SDK's sandbox;
    `run_events`, when positive: key workflows continue as new at that many events instead
    of `MAX_RUN_EVENTS`."""
    if run_events > 0:
        import workflows.managed

        # passed through the sandbox: the workflows read the constant of this module
        workflows.managed.MAX_RUN_EVENTS = run_events
    if metrics_port:
        from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

        prometheus = PrometheusConfig(
            bind_address=f"127.0.0.1:{metrics_port}", durations_as_seconds=True
        )
        Runtime.set_default(Runtime(telemetry=TelemetryConfig(metrics=prometheus)))
    if cache >= 0:
        from temporalio.worker import Worker

        import worker.main as worker_main

        class SizedCacheWorker(Worker):
            """The SDK's worker with `cache` cached workflows (what KEYROTOR_WORKER_CACHE_SIZE
            sets in `keyrotor worker`)."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["max_cached_workflows"] = cache
                super().__init__(*args, **kwargs)

        # build_worker looks `Worker` up in its module when it runs
        setattr(worker_main, "Worker", SizedCacheWorker)  # noqa: B010
    if unsandboxed:
        from temporalio.worker import UnsandboxedWorkflowRunner

        import worker.main as worker_main

        worker_main.SANDBOX = UnsandboxedWorkflowRunner()  # type: ignore[assignment]
    from cli.main import worker
    from core.runtime import exit_process

    worker(processes=1)
    exit_process(0)  # as `keyrotor` ends


# --- what the bench watches ------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Sample:
    at: float  # time.time()
    rss: dict[str, int]  # KiB per process
    cpu: dict[str, float]  # CPU seconds so far per process (and its descendants)
    cached: float | None = None  # the worker's workflow cache size (SDK metric)


class Watcher:
    """Samples the processes every second and polls the store's audit trail."""

    def __init__(
        self, processes: dict[str, tuple[int, ...]], metrics_ports: list[int], store: Any
    ) -> None:
        self.processes = processes
        self.metrics_ports = metrics_ports
        self.store = store
        self.samples: list[Sample] = []
        self.seen: dict[tuple[str, int], float] = {}  # (key id, version) -> first seen rotated
        self.actions: Counter[str] = Counter()
        self._last_seq = 0
        self._stop = asyncio.Event()

    def sample(self) -> Sample:
        now = time.time()
        cached = None
        if self.metrics_ports:
            metrics = scrape(self.metrics_ports)
            cached = metrics.get("temporal_sticky_cache_size")
        return Sample(
            now,
            {name: sum(map(rss_kib, pids)) for name, pids in self.processes.items()},
            {name: sum(map(process_cpu, pids)) for name, pids in self.processes.items()},
            cached,
        )

    def poll_audit(self) -> None:
        from sqlalchemy import select

        from core.store.models import AuditRecordRow as A

        query = (
            select(A.seq, A.action, A.object_id, A.version)
            .where(A.seq > self._last_seq)
            .order_by(A.seq)
        )
        with self.store.engine.connect() as db:
            rows = db.execute(query).all()
        now = time.time()
        for seq, action, key_id, version in rows:
            self._last_seq = seq
            self.actions[action] += 1
            if action == "key.rotated":
                self.seen.setdefault((key_id, version), now)

    async def run(self) -> None:
        async def sampler() -> None:
            while not self._stop.is_set():
                self.samples.append(await asyncio.to_thread(self.sample))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), SAMPLE_INTERVAL)

        async def auditor() -> None:
            while not self._stop.is_set():
                await asyncio.to_thread(self.poll_audit)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), AUDIT_POLL_INTERVAL)

        await asyncio.gather(sampler(), auditor())

    def stop(self) -> None:
        self._stop.set()

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? ([0-9.eE+-]+|NaN|[+-]Inf)$")


def scrape(ports: list[int]) -> dict[str, float]:
    """The workers' SDK metrics, summed over their labels and the worker processes (what a
    process that does not answer would add is missing)."""
    text = ""
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                text += answer.read().decode() + "\n"
        except OSError:
            pass
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and not line.startswith("#"):
            value = float(m.group(2))
            if not math.isnan(value):
                out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


# --- creating the keys -----------------------------------------------------------------------


@dataclass
class Creation:
    """The keys made, and how creating them went."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # send time minus scheduled send time
    errors: list[str] = field(default_factory=list)
    unsent: int = 0  # keys not asked for: the creation ran past its deadline
    started: float = 0.0
    ended: float = 0.0

    @property
    def rate(self) -> float:
        seconds = self.ended - self.started
        return len(self.keys) / seconds if seconds > 0 else math.nan


async def create_keys(
    port: int,
    admin_key: str,
    count: int,
    spread: float,
    concurrency: int,
    progress: float,
    deadline: float,
) -> Creation:
    """`count` keys through the API, key i sent at i * spread / count seconds (spread 0: as
    fast as `concurrency` connections go); none is sent after `deadline` seconds."""
    result = Creation()
    request = request_bytes("POST", f"{KEYS_PATH}/generate", admin_key, {"type": KEY_TYPE})
    indexes = iter(range(count))
    result.started = time.time()
    start = time.perf_counter()
    interval = spread / count if count else 0.0
    next_report = start + progress

    async def client() -> None:
        nonlocal next_report
        conn: Connection | None = None
        for i in indexes:
            if time.perf_counter() - start > deadline:
                result.unsent += 1
                continue
            due = start + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            result.lags.append(sent - due)
            try:
                conn = conn or await Connection.open(port)
                status, body = await conn.send(request)
                if status != 201:
                    raise RuntimeError(f"answered {status}: {body[:200]!r}")
                result.keys.append(json.loads(body)["key"])
                result.latencies.append(time.perf_counter() - sent)
            except Exception as e:  # a benchmark reports failures, it does not stop on them
                result.errors.append(f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
            if time.perf_counter() >= next_report:
                next_report += progress
                elapsed = time.perf_counter() - start
                print(
                    f"  creating: {len(result.keys)} keys in {elapsed:.0f} s"
                    f" ({len(result.keys) / elapsed:.1f} keys/s), behind schedule by"
                    f" {max(0.0, time.perf_counter() - due):.1f} s",
                    flush=True,
                )
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.ended = time.time()
    return result


# --- what the store says ---------------------------------------------------------------------


@dataclass
class Rotation:
    key_id: str
    version: int  # the version the rotation made
    due: datetime  # the previous version's rotate_at
    rotated: datetime | None  # the new version's created_at (None: not rotated yet)

    @property
    def store_lateness(self) -> float | None:
        return None if self.rotated is None else (self.rotated - self.due).total_seconds()


def rotations(store: Any) -> list[Rotation]:
    """Every rotation the store knows of (scheduled: the bench asks for no other), and every
    active version that is due, as not yet rotated."""
    from sqlalchemy import and_, select
    from sqlalchemy.orm import aliased

    from core.store.models import KeyVersionRow as V

    previous = aliased(V)
    made = (
        select(V.key_id, V.number, previous.rotate_at, V.created_at)
        .join(previous, and_(previous.key_id == V.key_id, previous.number == V.number - 1))
        .where(V.number > 1)
    )
    waiting = select(V.key_id, V.number, V.rotate_at).where(V.state == "active")
    with store.engine.connect() as db:
        out = [Rotation(k, n, due, at) for k, n, due, at in db.execute(made)]
        out += [Rotation(k, n + 1, due, None) for k, n, due in db.execute(waiting)]
    return out


def overdue(store: Any, before: datetime) -> int:
    """Active versions whose rotation was due before `before`."""
    from sqlalchemy import func, select

    from core.store.models import KeyVersionRow as V

    query = select(func.count()).where(V.state == "active", V.rotate_at <= before)
    with store.engine.connect() as db:
        return int(db.execute(query).scalar_one())


def transitions(store: Any, start: datetime, end: datetime) -> Counter[str]:
    """Audit records by action whose time (the workflow's) is in [start, end)."""
    from sqlalchemy import func, select

    from core.store.models import AuditRecordRow as A

    query = (
        select(A.action, func.count())
        .where(A.at >= start, A.at < end, A.object_kind == "key")
        .group_by(A.action)
    )
    with store.engine.connect() as db:
        return Counter({action: int(n) for action, n in db.execute(query)})


# --- what the histories say ------------------------------------------------------------------


@dataclass
class HistoryStats:
    workflows: int = 0
    events: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    fire_delays: list[float] = field(default_factory=list)  # TimerFired - (started + timeout)
    queue_waits: dict[str, list[float]] = field(
        default_factory=lambda: {"sticky": [], "normal": []}
    )  # task scheduled -> started, of tasks that follow a timer
    task_runs: list[float] = field(default_factory=list)  # started -> completed, same tasks
    timed_out: int = 0  # of those tasks: timed out (a sticky queue's schedule-to-start)
    wakeups: list[float] = field(default_factory=list)  # timer fired -> its task completed


async def sample_histories(
    client: Any, workflow_ids: list[str], start: datetime, end: datetime
) -> HistoryStats:
    """Timer firing and workflow task timings, from the histories of `workflow_ids`, for timers
    that fired in [start, end)."""
    from temporalio.api.enums.v1 import EventType as E

    stats = HistoryStats()
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        events = list(history.events)
        stats.workflows += 1
        stats.events.append(len(events))
        stats.sizes.append(sum(e.ByteSize() for e in events))
        by_id = {e.event_id: e for e in events}
        fired_at: datetime | None = None
        for e in events:
            at = e.event_time.ToDatetime(tzinfo=UTC)
            if e.event_type == E.EVENT_TYPE_TIMER_FIRED:
                fired_at = None
                if not start <= at < end:
                    continue
                started = by_id[e.timer_fired_event_attributes.started_event_id]
                timeout = started.timer_started_event_attributes.start_to_fire_timeout
                deadline = started.event_time.ToDatetime(tzinfo=UTC) + timeout.ToTimedelta()
                stats.fire_delays.append((at - deadline).total_seconds())
                fired_at = at
            elif e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_STARTED and fired_at is not None:
                scheduled = by_id[e.workflow_task_started_event_attributes.scheduled_event_id]
                sticky = (
                    scheduled.workflow_task_scheduled_event_attributes.task_queue.kind == STICKY
                )
                wait = (at - scheduled.event_time.ToDatetime(tzinfo=UTC)).total_seconds()
                stats.queue_waits["sticky" if sticky else "normal"].append(wait)
            elif e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and fired_at is not None:
                task = e.workflow_task_completed_event_attributes
                started_at = by_id[task.started_event_id].event_time.ToDatetime(tzinfo=UTC)
                stats.task_runs.append((at - started_at).total_seconds())
                stats.wakeups.append((at - fired_at).total_seconds())
                fired_at = None
            elif e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT and fired_at is not None:
                stats.timed_out += 1  # the task is scheduled again: keep following it
    return stats


# --- reporting -------------------------------------------------------------------------------


def seconds(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.2f} s"


def mib(kib: float) -> str:
    return "n/a" if math.isnan(kib) else f"{kib / 1024:.0f} MiB"


def spread_line(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"p50 {seconds(percentile(values, 50))}  p99 {seconds(percentile(values, 99))}"
        f"  max {seconds(max(values))}  (n={len(values)})"
    )


def row(label: str, value: str) -> None:
    print(f"{label:<46}{value:>{WIDTH - 46}}")


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --- wiring ----------------------------------------------------------------------------------


def policy_text(interval: int, warning: int, grace: int) -> str:
    """The shipped policy file, plus the `scale` key type with the bench's short times."""
    shipped = (ROOT / "config" / "keyrotor.toml").read_text()
    return (
        f"{shipped}\n\n# bench/scale.py: short rotation intervals\n"
        f"[key_types.{KEY_TYPE}]\n"
        'algorithm = "AES-256-GCM"\nkey_bits = 256\n'
        f'rotation_interval = "PT{interval}S"\n'
        f'warning_threshold = "PT{warning}S"\n'
        f'max_lifetime = "PT{interval * 10}S"\n'
        f'grace_period = "PT{grace}S"\n'
    )


@contextlib.contextmanager
def database(args: argparse.Namespace, data: Path) -> Iterator[str]:
    """The store's URL: SQLite in `data`, or a fresh PostgreSQL database dropped afterwards."""
    if args.postgres is None:
        from core.store.db import sqlite_url

        yield sqlite_url(data / "keyrotor.db")
        return
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    admin = make_url(args.postgres)
    libpq = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"keyrotor_scale_{secrets.token_hex(4)}"
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def bench(args: argparse.Namespace) -> None:
    from temporalio.testing import WorkflowEnvironment

    from core.codec import data_converter
    from core.credentials import AdminKeys, Role
    from core.envelope import MasterKeyring, generate_master_key
    from core.store.db import Store
    from workflows.types import SEARCH_ATTRIBUTE_KEYS

    interval, warning, grace = args.rotation_interval, args.warning, args.grace
    rate = args.keys / interval
    spread = 0.0
    if args.create_rate > 0:
        # whole rotation intervals, so that the keys' rotation times stay evenly spread
        spread = math.ceil(args.keys / args.create_rate / interval) * interval
    kinds = ["rotations"] + ["warnings"] * bool(warning) + ["grace ends"] * bool(grace)
    # a grace as long as the interval ends when the next rotation falls due: the same wakeup
    wakeups = 1 + bool(warning) + (0 < grace != interval)
    info = machine()
    print(
        f"machine: {info['cpus']} CPUs, Python {info['python']}, {info['platform']}\n"
        f"temporal: {info['temporal']}\nbefore: {load()}\n"
        f"plan: {args.keys} keys of type {KEY_TYPE!r} (AES-256-GCM, local provider): rotation"
        f" every {interval} s, warning {warning} s before, grace {grace} s; created over"
        f" {spread:.0f} s ({args.keys / spread if spread else math.inf:.1f} keys/s);"
        f" in steady state {rate:.1f} rotations/s due ({rate * len(kinds):.1f} timer-driven"
        f" transitions/s: {', '.join(kinds)}; {rate * wakeups:.1f} wakeups/s); then"
        f" {args.measure_seconds:.0f} s measured",
        flush=True,
    )
    master_key = generate_master_key()
    keyring = MasterKeyring.parse(master_key)
    setup_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keyrotor-scale-") as data_dir:
        data = Path(data_dir)
        extra = ["--db-filename", str(data / "temporal.db")] if args.temporal_db_file else []
        for setting in args.server_config:
            extra += ["--dynamic-config-value", setting]
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(BIN / "temporal"),
            search_attributes=SEARCH_ATTRIBUTE_KEYS,
            data_converter=data_converter(keyring),
            dev_server_log_level="error",
            dev_server_extra_args=extra,
        )
        dev_server = children()
        spawned: list[subprocess.Popen[bytes]] = []
        try:
            with database(args, data) as url:
                store = Store(url)
                store.migrate()
                admin_key = AdminKeys(store, keyring).create("bench", Role.ADMIN, "bench")
                (data / "keyrotor.toml").write_text(policy_text(interval, warning, grace))
                port = free_port()
                n = args.worker_processes
                metrics_ports = [] if args.plain_worker else [free_port() for _ in range(n)]
                child_env = {
                    **os.environ,
                    "KEYROTOR_DATA_DIR": data_dir,
                    "KEYROTOR_DATABASE_URL": url,
                    "KEYROTOR_CONFIG": str(data / "keyrotor.toml"),
                    "KEYROTOR_MASTER_KEY": master_key,
                    "KEYROTOR_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
                    "KEYROTOR_TASK_QUEUE": "bench-scale",
                    "LOG_LEVEL": "WARNING",
                    "KEYROTOR_ADMIN_RATE_LIMIT": "0",  # one admin key makes every key
                }
                # as bench/lifecycle.py: cache bytecode outside the tree, as a deployment would
                child_env.pop("PYTHONDONTWRITEBYTECODE", None)
                child_env["PYTHONPYCACHEPREFIX"] = str(data / "pycache")
                cache = str(-1 if args.worker_cache is None else args.worker_cache)
                flags = [cache, str(int(args.unsandboxed)), str(args.max_run_events or 0)]
                workers_argv = (
                    [[str(BIN / "keyrotor"), "worker"]] * n
                    if args.plain_worker
                    else [
                        [sys.executable, __file__, "--serve-worker", str(p), *flags]
                        for p in metrics_ports
                    ]
                )
                api_argv = [str(BIN / "keyrotor"), "api", "--port", str(port)]
                spawned.append(spawn(api_argv, child_env, data / "api.log"))
                for i, argv in enumerate(workers_argv):
                    spawned.append(spawn(argv, child_env, data / f"worker-{i}.log"))
                await wait_listening(port, spawned[0])
                for metrics_port, worker in zip(metrics_ports, spawned[1:], strict=True):
                    await wait_listening(metrics_port, worker)
                processes = {
                    "worker": tuple(w.pid for w in spawned[1:]),
                    "api": (spawned[0].pid,),
                }
                if dev_server:
                    processes["dev server"] = (dev_server[0],)
                worker_kind = "keyrotor worker" if args.plain_worker else "cli.main.worker"
                if metrics_ports:
                    worker_kind += " + SDK metrics"
                if n > 1:
                    worker_kind = f"{n} processes of {worker_kind}; RSS and CPU are their sums"
                if args.worker_cache is not None:
                    worker_kind += f", max_cached_workflows={args.worker_cache}"
                if args.unsandboxed:
                    worker_kind += ", no sandbox"
                if args.max_run_events:
                    worker_kind += f", continue as new at {args.max_run_events} events"
                print(
                    f"setup: dev server ({'SQLite file' if args.temporal_db_file else 'in-memory'}"
                    f" persistence{''.join(', ' + c for c in args.server_config)}),"
                    f" keyrotor api on 127.0.0.1:{port}, worker ({worker_kind}), store"
                    f" {'PostgreSQL' if args.postgres else 'SQLite'} in"
                    f" {time.perf_counter() - setup_start:.1f} s (logs in {data_dir})",
                    flush=True,
                )
                await run(args, env.client, store, processes, metrics_ports, port, admin_key, data)
                store.dispose()
        finally:
            stop(spawned)
            await env.shutdown()
            print(f"after: {load()}; API, worker and dev server stopped", flush=True)


async def run(
    args: argparse.Namespace,
    client: Any,
    store: Any,
    processes: dict[str, tuple[int, ...]],
    metrics_ports: list[int],
    port: int,
    admin_key: str,
    logs: Path,
) -> None:
    interval = args.rotation_interval
    spread = (
        math.ceil(args.keys / args.create_rate / interval) * interval if args.create_rate else 0.0
    )
    watcher = Watcher(processes, metrics_ports, store)
    watching = asyncio.create_task(watcher.run())
    print(f"\ncreating {args.keys} keys over {spread:.0f} s", flush=True)
    deadline = (
        spread + max(60.0, spread / 2) if args.create_timeout is None else args.create_timeout
    )
    made = await create_keys(
        port, admin_key, args.keys, spread, args.create_concurrency, args.progress, deadline
    )
    created = watcher.samples[-1] if watcher.samples else None
    window_start = time.time()
    metrics_start = scrape(metrics_ports)
    cpu_start = watcher.sample().cpu
    window_end = window_start + args.measure_seconds
    print(
        f"created {len(made.keys)} keys in {made.ended - made.started:.1f} s"
        f" ({made.rate:.1f} keys/s, {len(made.errors)} errors); measuring"
        f" {args.measure_seconds:.0f} s",
        flush=True,
    )
    seen_before = len(watcher.seen)
    while (now := time.time()) < window_end:
        step = min(args.progress, window_end - now)
        await asyncio.sleep(step)
        s = watcher.samples[-1]
        rotated = len(watcher.seen)
        print(
            f"  t+{time.time() - window_start:4.0f} s: {rotated - seen_before} rotations seen"
            f" in the last {step:.0f} s, worker RSS {mib(s.rss['worker'])}, "
            f"cache {s.cached if s.cached is not None else '?'}, "
            f"{overdue(store, datetime.now(UTC) - timedelta(seconds=5))} rotations over 5 s late",
            flush=True,
        )
        seen_before = rotated
    cpu_end = watcher.sample().cpu
    metrics_end = scrape(metrics_ports)
    start_dt = datetime.fromtimestamp(window_start, UTC)
    end_dt = datetime.fromtimestamp(window_end, UTC)
    drain_end = time.time() + args.drain_seconds
    while overdue(store, end_dt) and time.time() < drain_end:  # noqa: ASYNC110 (polls the store)
        await asyncio.sleep(0.5)
    await asyncio.sleep(2 * AUDIT_POLL_INTERVAL)
    finished = time.time()
    watcher.stop()
    await watching

    # --- lateness ---
    due = [r for r in rotations(store) if start_dt <= r.due < end_dt]
    store_late = [r.store_lateness for r in due if r.store_lateness is not None]
    seen_late = [
        watcher.seen[(r.key_id, r.version)] - r.due.timestamp()
        for r in due
        if (r.key_id, r.version) in watcher.seen
    ]
    missing = [r for r in due if r.rotated is None]
    unseen = len(due) - len(seen_late) - len(missing)
    # a rotation not done when the bench stopped is at least this late: count it so
    seen_late += [finished - r.due.timestamp() for r in missing]
    store_late += [finished - r.due.timestamp() for r in missing]
    window = args.measure_seconds
    done_in_window = transitions(store, start_dt, end_dt)

    # --- processes ---
    in_window = watcher.between(window_start, window_end)
    peak = {name: max((s.rss[name] for s in watcher.samples), default=0) for name in processes}
    steady = {
        name: statistics.median(s.rss[name] for s in in_window) if in_window else math.nan
        for name in processes
    }
    busy = {name: (cpu_end[name] - cpu_start[name]) / window for name in processes}
    n_transitions = sum(done_in_window.values())

    # --- histories ---
    ids = [k["workflowId"] for k in made.keys]
    sample_ids = random.Random(0).sample(ids, min(args.history_sample, len(ids)))
    hist = await sample_histories(client, sample_ids, start_dt, end_dt)

    print("\n" + "=" * WIDTH)
    print(
        f"RESULTS: {args.keys} keys, rotation every {interval} s (warning {args.warning} s, grace"
        f" {args.grace} s), {window:.0f} s measured"
    )
    print("=" * WIDTH)
    row("creation rate (keys/s)", f"{made.rate:.1f}")
    row("  create latency", spread_line(made.latencies))
    row("  behind schedule (send - planned send)", spread_line(made.lags))
    row("  errors", str(len(made.errors)))
    if made.unsent:
        row("  not asked for (past the creation deadline)", str(made.unsent))
    row("rotations due in the window (per second)", f"{len(due)} ({len(due) / window:.1f}/s)")
    row(
        "transitions committed in the window (per s)",
        f"{n_transitions} ({n_transitions / window:.1f}/s)",
    )
    for action, n in sorted(done_in_window.items()):
        row(f"  {action}", f"{n} ({n / window:.1f}/s)")
    row("lateness, store (version created_at - due)", spread_line(store_late))
    row("lateness, seen committed (poll 0.25 s)", spread_line(seen_late))
    row("  rotations not done when the bench stopped", str(len(missing)))
    if unseen:
        row("  rotated but never seen by the poller", str(unseen))
    p99 = percentile(seen_late, 99)
    row("p99 lateness, seen committed (target <= 5 s)", f"{seconds(p99)}: {met(p99 <= 5)}")
    row(
        "worker RSS peak (target <= 300 MiB)",
        f"{mib(peak['worker'])}: {met(peak['worker'] <= 300 * 1024)}",
    )
    row("worker RSS steady (median over the window)", mib(steady["worker"]))
    if watcher.samples:
        row("worker RSS before the first key", mib(watcher.samples[0].rss["worker"]))
    if created is not None:
        row("worker RSS when the last key was created", mib(created.rss["worker"]))
    # while the cache grows during the creation (until it first reaches its largest size)
    growing = [s for s in watcher.between(made.started, made.ended) if s.cached is not None]
    largest = max((s.cached or 0.0 for s in growing), default=0.0)
    growing = growing[: next((i for i, s in enumerate(growing) if s.cached == largest), 0) + 1]
    if len(growing) > 2 and largest - (growing[0].cached or 0.0) >= 100:
        slope, _ = statistics.linear_regression(
            [s.cached or 0.0 for s in growing], [float(s.rss["worker"]) for s in growing]
        )
        row("  RSS per cached workflow (while it grew)", f"{slope:.0f} KiB")
    row(
        "dev server RSS peak / steady",
        f"{mib(peak.get('dev server', 0))} / {mib(steady.get('dev server', math.nan))}",
    )
    row("api RSS peak", mib(peak["api"]))
    for name in processes:
        per = busy[name] * window / n_transitions if n_transitions else math.nan
        row(
            f"CPU {name}: share of one core / per transition",
            f"{busy[name]:.0%} / {per * 1000:.1f} ms",
        )
    if metrics_end:
        d = {k: metrics_end.get(k, 0.0) - metrics_start.get(k, 0.0) for k in metrics_end}
        hits = d.get("temporal_sticky_cache_hit", 0.0)
        misses = d.get("temporal_sticky_cache_miss", 0.0)
        row(
            "worker cache hits / misses in the window",
            f"{hits:.0f} / {misses:.0f} ({hits / (hits + misses):.0%} hits)"
            if hits + misses
            else "n/a",
        )
        row(
            "worker cache size at the end",
            f"{metrics_end.get('temporal_sticky_cache_size', math.nan):.0f}",
        )
        row(
            "forced cache evictions in the window",
            f"{d.get('temporal_sticky_cache_total_forced_eviction', 0.0):.0f}",
        )
        for name in ("execution", "schedule_to_start"):
            base = f"temporal_workflow_task_{name}_latency"
            count = d.get(f"{base}_count", 0.0)
            total = d.get(f"{base}_sum", 0.0)
            row(
                f"workflow task {name} latency, mean (n)",
                f"{seconds(total / count) if count else 'n/a'} ({count:.0f})",
            )
    row(
        f"history sample: {hist.workflows} workflows, events",
        spread_line([float(e) for e in hist.events]).replace(" s", "").replace(" ms", ""),
    )
    if hist.sizes:
        row("  history bytes, median", f"{statistics.median(hist.sizes):.0f} B")
    row("  timer fired - timer deadline", spread_line(hist.fire_delays))
    for kind, waits in hist.queue_waits.items():
        row(f"  task scheduled -> started, {kind} queue", spread_line(waits))
    row("  task started -> completed", spread_line(hist.task_runs))
    row("  tasks timed out (sticky schedule-to-start)", str(hist.timed_out))
    row("  timer fired -> its task completed", spread_line(hist.wakeups))
    print("=" * WIDTH, flush=True)
    for e in made.errors[:3]:
        print(f"    error: {e}")
    for name in ("worker", "api"):
        problems = [
            line.strip()
            for log in sorted(logs.glob(f"{name}*.log"))  # noqa: ASYNC240 (the run is over)
            for line in log.read_text(errors="replace").splitlines()
            if "WARNING" in line or "ERROR" in line or "Traceback" in line
        ]
        if problems:
            print(f"{name} log: {len(problems)} warning or error lines; the last ones:")
            for line in problems[-3:]:
                print(f"    {line[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keys", type=int, default=10_000, help="live key workflows (N)")
    parser.add_argument(
        "--rotation-interval",
        type=int,
        help="seconds between a key's rotations (T); default: N / 50, at least 10, so that 50"
        " rotations fall due per second",
    )
    parser.add_argument(
        "--warning", type=int, help="warning threshold in seconds (default: T / 10; 0: none)"
    )
    parser.add_argument(
        "--grace", type=int, help="grace period in seconds (default: T / 10; 0: none)"
    )
    parser.add_argument(
        "--measure-seconds",
        type=float,
        help="the measured window, after the last key is created (default: 1.5 T, at least 30)",
    )
    parser.add_argument(
        "--create-rate",
        type=float,
        help="keys/s to create at (default N / T: all within one interval; the creation window"
        " is rounded up to whole intervals); 0: as fast as it goes",
    )
    parser.add_argument("--create-concurrency", type=int, default=32, help="connections")
    parser.add_argument(
        "--create-timeout",
        type=float,
        help="send no key after this many seconds (default: the creation window plus half of"
        " it, at least 60 s more)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=60,
        help="after the window, how long to wait for its last rotations",
    )
    parser.add_argument("--history-sample", type=int, default=50, help="workflow histories to read")
    parser.add_argument("--progress", type=float, default=20, help="seconds between lines")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=POSTGRES_ADMIN_URL,
        metavar="ADMIN_URL",
        help=f"store on a fresh PostgreSQL database (default server: {POSTGRES_ADMIN_URL})",
    )
    parser.add_argument(
        "--temporal-db-file",
        action="store_true",
        help="the dev server keeps its state in a SQLite file (default: in memory)",
    )
    parser.add_argument(
        "--server-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dynamic configuration value for the dev server (repeatable), e.g."
        " history.cacheMaxSize=12000",
    )
    parser.add_argument(
        "--worker-cache",
        type=int,
        help="experiment: the worker's max_cached_workflows (default: as shipped,"
        " KEYROTOR_WORKER_CACHE_SIZE or 500; 0: no cache, no sticky queue)",
    )
    parser.add_argument(
        "--plain-worker",
        action="store_true",
        help="run the `keyrotor worker` binary itself (no SDK metrics; not with --worker-cache)",
    )
    parser.add_argument(
        "--unsandboxed",
        action="store_true",
        help="experiment: the worker runs workflows without the SDK's sandbox",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=1,
        help="worker processes on the task queue (as `keyrotor worker --processes N`)",
    )
    parser.add_argument(
        "--max-run-events",
        type=int,
        help="experiment: key workflows continue as new at this many events (default: as"
        " shipped, workflows.managed.MAX_RUN_EVENTS)",
    )
    parser.add_argument("--serve-worker", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_worker:
        serve_worker(*args.serve_worker)
        return
    if args.plain_worker and (
        args.worker_cache is not None or args.unsandboxed or args.max_run_events
    ):
        parser.error("the experiments need the bench's worker (leave out --plain-worker)")
    if args.rotation_interval is None:
        args.rotation_interval = max(10, round(args.keys / 50))
    t = args.rotation_interval
    if args.warning is None:
        args.warning = max(1, t // 10)
    if args.grace is None:
        args.grace = max(1, t // 10)
    if args.measure_seconds is None:
        args.measure_seconds = max(30.0, 1.5 * t)
    if args.create_rate is None:
        args.create_rate = args.keys / t
    if not 0 <= args.warning < t or not 0 <= args.grace <= 10 * t:
        parser.error("need 0 <= --warning < --rotation-interval and 0 <= --grace")
    start = time.perf_counter()
    asyncio.run(bench(args))
    print(f"total: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
