"""Verification benchmark: `/credentials/verify` and `/handles/validate` against `/livez` on the
same API server in the same run, with 100k stored credentials (and as many handles).

Run from the repository root (a benchmark: it prints, it does not assert):

    .venv/bin/python bench/verify.py [--credentials N] [--seconds S] [--connections C]
        [--redis URL]

- Setup: a fresh SQLite store (WAL) in a temporary directory, filled with N API credentials and
  N handle families written straight into the store with the product's own hashing (their
  workflows are not started: verification reads only the store, never Temporal). One `keyrotor
  api` process serves it (uvicorn, as deployed); it has no Temporal server to talk to, which
  the hot paths do not need.
- Load: this process, a separate one from the server, drives it over keep-alive HTTP/1.1
  connections with pre-built requests (raw asyncio streams: the client costs little CPU).
  - throughput: C connections in a closed loop for S seconds per endpoint;
  - latency: an open loop at half of that endpoint's measured maximum, timed from each
    request's scheduled send time (so a stall counts for every request it delays), and as the
    server measured it (its `keyrotor_hot_request_duration_seconds` histogram, read before and
    after: the share answered within 5 ms). The client freezes what it built and collects no
    garbage while it measures: its own collections would count as server latency.
- `credentials/verify` presents a different stored credential in every request (40,000 drawn
  at random; the maximum and the half-rate phases take disjoint halves and the warm-up uses
  others, so every request is a cache miss as long as a phase sends fewer than 20,000);
  `credentials/verify hot` presents 100 of them over and over (a service with a few callers);
  `credentials/verify metered` presents 100 others, with a usage limit, over and over; every
  validate request presents a different handle (each has a max usage and a rate limit). The
  answers are checked (VALID).
- `--redis URL`: the server counts rate limits and usage limits in that Redis
  (`KEYROTOR_REDIS_URL`), not in the store: compare the metered and handle lines of a run
  with it and one without.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from httpload import Connection, free_port, request_bytes, wait_listening
from sqlalchemy import insert

from core.credentials import (
    CREDENTIAL_PREFIX,
    HANDLE_PREFIX,
    AdminKeys,
    PepperRing,
    Role,
    format_token,
    new_lookup_id,
    new_secret,
    secret_hash,
)
from core.envelope import MasterKeyring, generate_master_key
from core.policy import default_policy_path, load_policies
from core.store.db import Store, sqlite_url
from core.store.models import CredentialRow, CredentialVersionRow

BIN = Path(sys.executable).parent
API = "/api/key-management"
SAMPLE = 40_000  # distinct values presented (drawn from the N stored)
HOT = 100  # the credentials of the "hot" run


def fill_store(
    store: Store, keyring: MasterKeyring, n: int
) -> tuple[list[str], list[str], list[str]]:
    """N credentials (HOT of them with a usage limit) and N handle families; returns samples of
    their plaintext values: credentials, metered credentials, handles."""
    peppers = PepperRing.from_setting(None, keyring)
    policy = load_policies(default_policy_path()).handle_type("session")
    now = datetime.now(UTC)
    far = now + timedelta(days=300)
    keep = set(random.sample(range(n), min(SAMPLE, n)))
    metered_ids = set(sorted(keep)[-HOT:])
    credentials: list[str] = []
    metered: list[str] = []
    handles: list[str] = []
    for kind, prefix, out in (
        ("credential", CREDENTIAL_PREFIX, credentials),
        ("handle", HANDLE_PREFIX, handles),
    ):
        algorithm = "SHA-256" if kind == "credential" else policy.algorithm
        size = 32 if kind == "credential" else policy.handle_length
        for start in range(0, n, 5000):
            rows: list[dict[str, object]] = []
            versions: list[dict[str, object]] = []
            for i in range(start, min(n, start + 5000)):
                cid = f"{'cred' if kind == 'credential' else 'hdl'}_bench{i:015d}"
                limit = 10**9 if kind == "credential" and i in metered_ids else None
                lookup, secret, salt = new_lookup_id(), new_secret(size), secrets.token_bytes(16)
                rows.append(
                    {
                        "id": cid,
                        "kind": kind,
                        "type": "api" if kind == "credential" else "session",
                        "environment": "dev",
                        "name": "",
                        "owner": "bench",
                        "scopes": ["read"],
                        "metadata": {},
                        "status": "active",
                        "current_version": 1,
                        "scheduled_rotation": False,
                        "usage_count": 0,
                        "failure_count": 0,
                        "user_id": "bench" if kind == "handle" else "",
                        "context": {},
                        "max_usage": 10**9 if kind == "handle" else None,
                        "usage_limit": limit,
                        "remaining": limit,
                        "hash_algorithm": algorithm,
                        "anomaly_count": 0,
                        "workflow_id": f"keyrotor/{kind}/dev/{cid}",
                        "created_by": "bench",
                        "created_at": now,
                        "updated_at": now,
                        "expires_at": far,
                    }
                )
                versions.append(
                    {
                        "lookup_id": lookup,
                        "credential_id": cid,
                        "number": 1,
                        "state": "active",
                        "salt": salt,
                        "secret_hash": secret_hash(peppers.current, salt, secret, algorithm),
                        "pepper_id": peppers.current_id,
                        "uses": 0,
                        "created_at": now,
                        "rotate_at": far,
                        "warn_at": far,
                        "hard_expiry": far,
                        "state_changed_at": now,
                    }
                )
                if i in keep:
                    (metered if limit else out).append(format_token(prefix, "dev", lookup, secret))
            with store.write() as s:
                s.execute(insert(CredentialRow), rows)
                s.execute(insert(CredentialVersionRow), versions)
    return credentials, metered, handles


@dataclass
class Result:
    done: int = 0
    errors: int = 0
    latencies: list[float] | None = None


async def _exchange(conn: Connection, request: bytes) -> bytes:
    status, body = await conn.send(request)
    if status != 200:
        raise RuntimeError(f"answered {status}: {body[:200]!r}")
    return body


def _ok(body: bytes, expect: bytes | None) -> bool:
    return expect is None or expect in body


async def closed_loop(
    port: int, requests: list[bytes], expect: bytes | None, connections: int, seconds: float
) -> Result:
    result = Result()
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        conn = await Connection.open(port)
        i = offset
        while time.perf_counter() < deadline:
            body = await _exchange(conn, requests[i % len(requests)])
            result.done += 1
            result.errors += not _ok(body, expect)
            i += connections
        conn.close()

    await asyncio.gather(*(worker(k) for k in range(connections)))
    return result


async def open_loop(
    port: int, requests: list[bytes], expect: bytes | None, rate: float, seconds: float
) -> Result:
    """Send at `rate` per second whatever the answers; latency from the scheduled time."""
    result = Result(latencies=[])
    assert result.latencies is not None
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(64):
        free.put_nowait(await Connection.open(port))
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    tasks = []

    async def one(i: int) -> None:
        scheduled = start + i / rate
        conn = await free.get()
        try:
            body = await _exchange(conn, requests[i % len(requests)])
            result.errors += not _ok(body, expect)
        finally:
            free.put_nowait(conn)
        result.done += 1
        result.latencies.append(time.perf_counter() - scheduled)  # type: ignore[union-attr]

    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    while not free.empty():
        free.get_nowait().close()
    return result


async def served_within(port: int, request: bytes) -> dict[str, dict[float, int]]:
    """The API's own histogram of its hot routes (`/metrics`): for each route, how many
    requests it answered within each bucket bound (seconds), counted from when the handler
    started until the answer was sent."""
    conn = await Connection.open(port)
    try:
        text = (await _exchange(conn, request)).decode()
    finally:
        conn.close()
    found: dict[str, dict[float, int]] = {}
    for line in text.splitlines():
        if line.startswith("keyrotor_hot_request_duration_seconds_bucket{"):
            labels, count = line.split("{", 1)[1].rsplit("} ", 1)
            fields = dict(f.split("=", 1) for f in labels.split(","))
            route, bound = fields["route"].strip('"'), fields["le"].strip('"')
            found.setdefault(route, {})[float(bound)] = int(count)
    return found


def server_share(
    before: dict[str, dict[float, int]],
    after: dict[str, dict[float, int]],
    route: str,
    bound: float,
) -> tuple[float, int]:
    """(the share of `route`'s requests between the two reads answered within `bound`, their
    number)."""
    old, new = before.get(route, {}), after.get(route, {})
    total = new.get(float("inf"), 0) - old.get(float("inf"), 0)
    within = new.get(bound, 0) - old.get(bound, 0)
    return (within / total if total else 0.0), total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_api(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "keyrotor"), "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"before: load average {os.getloadavg()[0]:.2f}")
    data = Path(tempfile.mkdtemp(prefix="keyrotor-bench-verify-"))
    master_key = generate_master_key()
    keyring = MasterKeyring.parse(master_key)
    store = Store(sqlite_url(data / "keyrotor.db"))
    store.migrate()
    t = time.perf_counter()
    credentials, metered, handles = fill_store(store, keyring, args.credentials)
    admin_key = AdminKeys(store, keyring).create("bench", Role.SERVICE, "bench")
    metrics_key = AdminKeys(store, keyring).create("bench-metrics", Role.AUDITOR, "bench")
    store.dispose()
    print(
        f"setup: {args.credentials} credentials and {args.credentials} handle families stored"
        f" in {time.perf_counter() - t:.1f} s (SQLite WAL, {data})"
    )
    port = free_port()
    env = {
        **os.environ,
        "KEYROTOR_DATA_DIR": str(data),
        "KEYROTOR_MASTER_KEY": master_key,
        "KEYROTOR_TEMPORAL_ADDRESS": "127.0.0.1:9",  # none: the hot paths never need it
        "LOG_LEVEL": "WARNING",
        "KEYROTOR_REDIS_URL": args.redis or "",
    }
    print(f"limits counted in: {'Redis' if args.redis else 'the store'}")
    server = start_api(port, env)
    try:
        await wait_listening(port, server)
        verifies = [
            request_bytes("POST", f"{API}/credentials/verify", admin_key, {"key": k})
            for k in credentials
        ]
        endpoints = {
            "livez": ([request_bytes("GET", "/livez", None)], b'"ok"'),
            # every request presents another credential: none is presented twice in the run
            # (the max phase and the half-rate phase take disjoint halves; see `phase`)
            "credentials/verify": (verifies[HOT:], b'"code":"VALID"'),
            # HOT credentials presented over and over, as a service's few callers do
            "credentials/verify hot": (verifies[:HOT], b'"code":"VALID"'),
            # and HOT with a usage limit: each verification counts a use
            "credentials/verify metered": (
                [
                    request_bytes("POST", f"{API}/credentials/verify", admin_key, {"key": k})
                    for k in metered
                ],
                b'"code":"VALID"',
            ),
            "handles/validate": (
                [
                    request_bytes(
                        "POST",
                        f"{API}/handles/validate",
                        admin_key,
                        {"handleId": h, "userId": "bench"},
                    )
                    for h in handles
                ],
                b'"code":"VALID"',
            ),
        }

        def phase(name: str, second: bool) -> list[bytes]:
            requests = endpoints[name][0]
            if name != "credentials/verify":
                return requests
            half = len(requests) // 2
            return requests[half:] if second else requests[:half]

        # The client's own garbage collections would stall it and count as server latency:
        # what it built so far is frozen, and it collects nothing while it measures.
        gc.collect()
        gc.freeze()
        gc.disable()
        # warm up every path (imports, connection pools), the cold one on hot credentials
        for name, (requests, expect) in endpoints.items():
            warm = verifies[:HOT] if name == "credentials/verify" else requests
            await closed_loop(port, warm, expect, 4, 1.0)
        rates: dict[str, float] = {}
        lat: dict[str, list[float]] = {}
        served: dict[str, float] = {}  # share answered within 5 ms, measured by the server
        metrics = request_bytes("GET", "/metrics", metrics_key)
        errors = 0
        for name, (_, expect) in endpoints.items():
            r = await closed_loop(port, phase(name, False), expect, args.connections, args.seconds)
            rates[name] = r.done / args.seconds
            errors += r.errors
            print(f"  max   {name:20} {rates[name]:8.0f} req/s ({r.errors} unexpected answers)")
        for name, (_, expect) in endpoints.items():
            half = rates[name] / 2
            before = await served_within(port, metrics)
            r = await open_loop(port, phase(name, True), expect, half, args.seconds)
            after = await served_within(port, metrics)
            assert r.latencies is not None
            lat[name] = r.latencies
            errors += r.errors
            served[name], n = server_share(before, after, name.split(" ")[0], 0.005)
            print(
                f"  half  {name:20} {half:8.0f} req/s: p50 {pct(r.latencies, 0.5) * 1e3:.2f} ms"
                f" p99 {pct(r.latencies, 0.99) * 1e3:.2f} ms; the server answered"
                f" {served[name]:.2%} of {n} within 5 ms"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)
    print("=" * 78)
    print(f"RESULTS: {args.credentials} stored credentials, {args.connections} connections")
    for name in endpoints:
        print(f"{name + ' max throughput':<56}{rates[name]:>12.0f} req/s")
    for name in endpoints:
        if name == "livez":
            continue
        targeted = name in ("credentials/verify", "credentials/verify hot")
        target = " (target >= 0.8)" if targeted else ""
        print(f"{'ratio ' + name + ' / livez' + target:<60}{rates[name] / rates['livez']:>8.2f}")
    for name in endpoints:
        label = f"{name} at half its max: p50 / p99"
        p50, p99 = pct(lat[name], 0.5) * 1e3, pct(lat[name], 0.99) * 1e3
        print(f"{label:<56}{p50:>8.2f} / {p99:.2f} ms")
    for name in ("credentials/verify", "credentials/verify hot"):
        print(f"{name + ' p99 at half max (target <= 5 ms)':<56}", end="")
        print(f"{pct(lat[name], 0.99) * 1e3:>12.2f} ms")
    for name in endpoints:
        print(f"{name + ' served within 5 ms (server)':<56}{served[name]:>12.2%}")
    print(f"{'unexpected answers':<56}{errors:>12}")
    print(f"after: load average {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--credentials", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--redis", metavar="URL", help="count rate and usage limits in this Redis, not the store"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
