"""The whole stack on one machine: the real Temporal dev server, a worker and the REST API."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.credentials import AdminKeys, Role
from core.services import Services, build_services
from core.settings import Settings
from tests.fixtures.database import backend_database_url
from tests.fixtures.temporal import TEST_MASTER_KEY
from worker.main import build_worker
from workflows.audit_retention import retention_schedule_id
from workflows.cleanup import cleanup_schedule_id
from workflows.webhooks import dispatcher_id

KEYROTOR = Path(sys.executable).parent / "keyrotor"


@dataclass
class Stack:
    services: Services
    http: httpx.AsyncClient
    client: Client
    admin_key: str
    data_dir: Path

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def new_admin_key(self, role: Role) -> str:
        keys = AdminKeys(self.services.store, self.services.keyring)
        return keys.create(f"test-{role}", role, "test")


@asynccontextmanager
async def build_stack(
    dev_env: WorkflowEnvironment, data_dir: Path, **settings: Any
) -> AsyncIterator[Stack]:
    """A worker and the API (in process) on the dev server, their services built from
    `settings` (on top of a test master key, a task queue of their own and `data_dir`)."""
    services = build_services(
        Settings(
            **{
                "data_dir": data_dir,
                "master_key": SecretStr(TEST_MASTER_KEY),
                "task_queue": f"e2e-{uuid.uuid4().hex[:8]}",
                **settings,
                "database_url": settings.get("database_url") or backend_database_url(),
            }
        )
    )
    admin_key = AdminKeys(services.store, services.keyring).create("test-admin", Role.ADMIN, "test")
    app = create_app(services, dev_env.client)
    try:
        async with (
            build_worker(dev_env.client, services),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://keyrotor.test"
            ) as http,
        ):
            yield Stack(services, http, dev_env.client, admin_key, data_dir)
    finally:
        services.close()


@asynccontextmanager
async def serve(stack: Stack) -> AsyncIterator[str]:
    """The stack's API on a real port (for the CLI, which talks HTTP); yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(stack.services, stack.client)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def keyrotor(url: str, admin_key: str, *args: str) -> tuple[int, str, str]:
    """Run the `keyrotor` command against `url`: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(KEYROTOR),
        *args,
        "--api-url",
        url,
        "--admin-key",
        admin_key,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    # the stack's store: SQLite in the data dir unless a database URL is given
    database_url = os.environ.get("KEYROTOR_TEST_STACK_DATABASE_URL", "")
    async with build_stack(
        dev_env, tmp_path_factory.mktemp("stack"), database_url=database_url
    ) as stack:
        yield stack


async def stop_background_workflows(stack: Stack) -> None:
    """Undo `worker.main.start_background_workflows` on the shared dev server."""
    queue = stack.services.settings.task_queue
    await stack.client.get_workflow_handle(dispatcher_id(queue)).terminate("test over")
    for schedule in (retention_schedule_id(queue), cleanup_schedule_id(queue)):
        await stack.client.get_schedule_handle(schedule).delete()
