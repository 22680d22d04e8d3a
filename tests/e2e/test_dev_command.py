"""`keyrotor dev` as a user runs it: one command brings up Temporal, the worker and the API,
prints how to reach them, keeps its state under the data dir, and Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
import unittest.mock
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.e2e.reference_client import load_reference_client

KEYROTOR = Path(sys.executable).parent / "keyrotor"
API = "/api/key-management"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
ADMIN_KEY_RE = re.compile(r"admin key\s+(kra_[0-9a-f]{16}_[A-Za-z0-9_-]{32,})")

pytestmark = pytest.mark.devserver


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(c) for c in task.read_text().split()]
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited child not yet reaped is not running)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Dev:
    """One `keyrotor dev` process and what it printed."""

    proc: subprocess.Popen[bytes]
    api_port: int
    temporal_port: int
    ui_port: int
    data_dir: Path
    out_path: Path
    err_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def admin_key(self) -> str:
        m = ADMIN_KEY_RE.search(self.stdout())
        assert m, self.stdout()
        return m.group(1)

    def kill(self) -> None:
        """Last resort (finally): the whole session this test started, by its id."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env.pop("LOG_LEVEL", None)
    return {**env, **extra}


def start_dev(workdir: Path, data_dir: Path, env: dict[str, str], tag: str) -> Dev:
    api_port, temporal_port, ui_port = free_ports(3)
    out_path, err_path = workdir / f"{tag}.out", workdir / f"{tag}.err"
    cmd = [str(KEYROTOR), "dev", "--api-port", str(api_port), "--temporal-port",
           str(temporal_port), "--ui-port", str(ui_port), "--data-dir", str(data_dir)]  # fmt: skip
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so the finally can end it all
        )
    dev = Dev(proc, api_port, temporal_port, ui_port, data_dir, out_path, err_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            dev.kill()
            pytest.fail(f"keyrotor dev exited with {proc.returncode}:\n{dev.stderr()[-3000:]}")
        if ADMIN_KEY_RE.search(dev.stdout()):
            try:
                if httpx.get(f"{dev.base_url}/livez", timeout=2).status_code == 200:
                    return dev
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    dev.kill()
    pytest.fail(f"keyrotor dev did not come up in {START_TIMEOUT}s:\n{dev.stderr()[-3000:]}")


def temporal_child(dev: Dev) -> int:
    found = [
        c for c in children(dev.proc.pid) if b"start-dev" in Path(f"/proc/{c}/cmdline").read_bytes()
    ]
    assert len(found) == 1, children(dev.proc.pid)
    cmdline = Path(f"/proc/{found[0]}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].endswith(b"temporal") and str(dev.temporal_port).encode() in cmdline
    return found[0]


def stop(dev: Dev, sig: signal.Signals = signal.SIGINT) -> int:
    """Ctrl-C (or `kill`): to the dev process only, not its group, so it must stop Temporal."""
    os.kill(dev.proc.pid, sig)
    try:
        return dev.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"keyrotor dev still running {STOP_TIMEOUT}s after {sig.name}")


def assert_gone(pid: int, *ports: int) -> None:
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(pid), f"the Temporal server {pid} outlived keyrotor dev"
    for port in ports:
        assert not listening(port), f"port {port} is still served"


def test_dev_runs_the_stack_keeps_its_state_and_stops_cleanly(tmp_path: Path) -> None:
    workdir = tmp_path
    data_dir = workdir / ".keyrotor"
    env = clean_env()
    started: list[Dev] = []
    try:
        # --- first run: a fresh data dir ---
        dev = start_dev(workdir, data_dir, env, "first")
        started.append(dev)
        out = dev.stdout()
        assert f"http://localhost:{dev.api_port}/api/key-management" in out
        assert f"http://localhost:{dev.ui_port}" in out
        admin_key = dev.admin_key()

        master = data_dir / "master.key"
        admin_file = data_dir / "admin.key"
        for secret_file in (master, admin_file):
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, secret_file
        assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0
        assert admin_file.read_text().strip() == admin_key
        master_key = master.read_text().strip()
        assert len(master_key) >= 32

        ui = httpx.get(f"http://127.0.0.1:{dev.ui_port}/", timeout=10)
        assert ui.status_code == 200 and "<html" in ui.text.lower()
        # the UI decodes payloads through our codec endpoint, which lets its origin in
        ui_settings = httpx.get(f"http://127.0.0.1:{dev.ui_port}/api/v1/settings", timeout=10)
        codec_url = f"http://localhost:{dev.api_port}/codec"
        assert ui_settings.json()["Codec"]["Endpoint"] == codec_url
        ui_origin = f"http://localhost:{dev.ui_port}"
        r = httpx.post(
            f"{dev.base_url}/codec/decode",
            json={"payloads": [{"metadata": {"encoding": b64(b"json/plain")}, "data": b64(b"1")}]},
            headers={"Origin": ui_origin, "X-Namespace": "default"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == ui_origin

        with httpx.Client(
            base_url=dev.base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=40
        ) as http:
            assert http.get(f"{API}/keys").status_code == 200
            assert httpx.get(f"{dev.base_url}{API}/keys", timeout=5).status_code == 401
            r = http.post(f"{API}/keys/generate", json={"type": "encryption", "name": "dev"})
            assert r.status_code == 201, r.text
            kid = r.json()["key"]["id"]
            r = http.post(
                f"{API}/keys/{kid}/encrypt",
                json={"plaintext": b64(b"card 4111"), "aad": b64(b"order-7")},
            )
            assert r.status_code == 200, r.text
            ciphertext = r.json()["ciphertext"]
            assert ciphertext.startswith(f"kr:{kid}:1:")
            r = http.post(f"{API}/keys/{kid}/rotate", json={"gracePeriod": "PT1H"})
            assert r.status_code == 200, r.text
            assert r.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
            states = {v["version"]: v["state"] for v in r.json()["key"]["versions"]}
            assert states == {1: "grace", 2: "active"}
            r = http.post(
                f"{API}/keys/{kid}/decrypt",
                json={"ciphertext": ciphertext, "aad": b64(b"order-7")},
            )
            assert r.status_code == 200, r.text
            assert r.json() == {"plaintext": b64(b"card 4111"), "version": 1}

        server = temporal_child(dev)
        code = stop(dev)
        # Ctrl-C is the normal way to stop it: a clean exit, not 130 or a traceback
        assert code == 0, (code, dev.stderr()[-3000:])
        assert_gone(server, dev.temporal_port, dev.ui_port, dev.api_port)
        for text in (dev.stdout(), dev.stderr()):
            assert master_key not in text
            assert "Traceback" not in text

        # --- second run on the same data dir: same keys, same admin key, same state ---
        dev = start_dev(workdir, data_dir, env, "second")
        started.append(dev)
        assert dev.admin_key() == admin_key
        assert master.read_text().strip() == master_key
        with httpx.Client(
            base_url=dev.base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=40
        ) as http:
            r = http.get(f"{API}/keys/{kid}")
            assert r.status_code == 200, r.text
            assert r.json()["key"]["version"] == 2
            r = http.post(
                f"{API}/keys/{kid}/decrypt",
                json={"ciphertext": ciphertext, "aad": b64(b"order-7")},
            )
            assert r.status_code == 200 and r.json()["version"] == 1, r.text
            # the workflow survived the restart too: it still answers a rotation
            r = http.post(f"{API}/keys/{kid}/rotate", json={})
            assert r.status_code == 200, r.text
            assert r.json()["rotation"] == {"fromVersion": 2, "toVersion": 3}
        server = temporal_child(dev)
        assert stop(dev) == 0, dev.stderr()[-3000:]
        assert_gone(server, dev.temporal_port, dev.api_port)
        for text in (dev.stdout(), dev.stderr()):
            assert master_key not in text
    finally:
        for d in started:
            d.kill()


def test_dev_accepts_an_admin_key_from_the_environment(tmp_path: Path) -> None:
    workdir = tmp_path
    admin_key = f"kra_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    data_dir = workdir / ".keyrotor"
    dev = start_dev(workdir, data_dir, clean_env(KEYROTOR_ADMIN_KEY=admin_key), "env")
    try:
        assert dev.admin_key() == admin_key
        # a key given in the environment is not copied to disk
        assert not (data_dir / "admin.key").exists()
        with httpx.Client(base_url=dev.base_url, timeout=40) as http:
            r = http.get(f"{API}/keys", headers={"Authorization": f"Bearer {admin_key}"})
            assert r.status_code == 200, r.text
            other = f"kra_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
            r = http.get(f"{API}/keys", headers={"Authorization": f"Bearer {other}"})
            assert r.status_code == 401
        run_reference_client(dev.base_url, admin_key)
        server = temporal_child(dev)
        # `kill` (SIGTERM, as systemd or a container runtime stop it) also shuts down cleanly
        code = stop(dev, signal.SIGTERM)
        assert code == 0, (code, dev.stderr()[-3000:])
        assert_gone(server, dev.temporal_port, dev.api_port)
        master_key = (data_dir / "master.key").read_text().strip()
        for text in (dev.stdout(), dev.stderr()):
            assert master_key not in text
    finally:
        dev.kill()


def run_reference_client(base_url: str, admin_key: str) -> None:
    """The reference document's Python client, unchanged: only its default base URL points at
    this instance and every request carries the admin key as a default header."""
    client = load_reference_client()
    key_manager = client["KeyManager"]
    key_manager.__init__.__defaults__ = (base_url,)
    original = requests.Session.request

    def with_admin_key(self: requests.Session, method: str, url: str, **kw: Any) -> Any:
        kw["headers"] = {"Authorization": f"Bearer {admin_key}", **(kw.get("headers") or {})}
        return original(self, method, url, **kw)

    out = io.StringIO()
    with (
        unittest.mock.patch.object(requests.Session, "request", with_admin_key),
        contextlib.redirect_stdout(out),
    ):
        client["example"]()
    lines = out.getvalue().splitlines()
    assert not [line for line in lines if line.startswith("Error")], lines
    printed = dict(line.split(": ", 1) for line in lines)
    assert printed["Generated key"].startswith("key_")
    assert re.fullmatch(r"krh_dev_[a-z2-7]{16}_[A-Za-z0-9_-]+", printed["Generated handle"])
    assert printed["Handle valid"] == "True"
    assert "'status': 'healthy'" in printed["System health"]
    assert "'totalKeys': 1" in printed["Key statistics"]
    assert "'totalHandles': 1" in printed["Handle statistics"]
