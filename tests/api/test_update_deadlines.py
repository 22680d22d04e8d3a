"""A lifecycle request whose update the Temporal server gives up on (its RPC deadline passed,
as under a worker too busy to take the task: seen by bench/scale.py) answers 503
WORKER_UNAVAILABLE, like our own deadline, not 500.

The client is a stand-in that raises the SDK's error: the server's deadline cannot be made to
pass on demand with a real one."""

from __future__ import annotations

from typing import Any

import httpx
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

from api.app import create_app
from core.credentials import AdminKeys, Role
from core.services import Services
from tests.fixtures.keys import commit_key

API = "/api/key-management"


class DeadlinePassingClient:
    """Answers every update with the SDK's RPC timeout."""

    def get_workflow_handle(self, workflow_id: str, **kw: Any) -> DeadlinePassingClient:
        return self

    async def execute_update(self, *args: Any, **kw: Any) -> Any:
        raise WorkflowUpdateRPCTimeoutOrCancelledError()

    async def execute_update_with_start_workflow(self, *args: Any, **kw: Any) -> Any:
        raise WorkflowUpdateRPCTimeoutOrCancelledError()


async def test_a_server_side_update_deadline_is_503(services: Services) -> None:
    key_id = commit_key(services, name="orders")
    admin = AdminKeys(services.store, services.keyring).create("t", Role.ADMIN, "test")
    headers = {"Authorization": f"Bearer {admin}"}
    app = create_app(services, DeadlinePassingClient())  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyrotor.test") as http:
        for path, body in (
            ("/keys/generate", {"type": "encryption"}),
            (f"/keys/{key_id}/rotate", {}),
            ("/credentials", {}),
        ):
            r = await http.post(f"{API}{path}", json=body, headers=headers)
            assert (r.status_code, r.json()["error"]["code"]) == (503, "WORKER_UNAVAILABLE"), path
