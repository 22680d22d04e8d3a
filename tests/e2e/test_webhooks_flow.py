"""Webhooks end to end: a real HTTP receiver, the real dev server, the dispatcher and delivery
workflows, signed deliveries, retries, a failed delivery and its replay."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from core.webhooks import verify_signature
from tests.e2e.conftest import Stack, build_stack, stop_background_workflows
from worker.main import start_background_workflows
from workflows.webhooks import delivery_workflow_id

API = "/api/key-management"


class Receiver:
    """An HTTP endpoint that records what it is sent and answers `status`."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with build_stack(
        dev_env, tmp_path_factory.mktemp("webhooks"), webhook_max_attempts=3
    ) as stack:
        await start_background_workflows(stack.client, stack.services)
        yield stack
        await stop_background_workflows(stack)


async def eventually(what: str, done: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await done() if asyncio.iscoroutinefunction(done) else done():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


async def subscribe(stack: Stack, url: str, **fields: Any) -> tuple[str, str]:
    r = await stack.http.post(f"{API}/webhooks", json={"url": url, **fields}, headers=stack.auth())
    assert r.status_code == 201, r.text
    return r.json()["webhook"]["id"], r.json()["secret"]


async def deliveries(stack: Stack, webhook_id: str, **params: str) -> list[dict[str, Any]]:
    r = await stack.http.get(
        f"{API}/webhooks/{webhook_id}/deliveries", params=params, headers=stack.auth()
    )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["deliveries"]
    return found


async def test_events_are_delivered_signed(stack: Stack, receiver: Receiver) -> None:
    webhook_id, secret = await subscribe(
        stack, receiver.url, eventTypes=["keyCreated", "keyRotated"], description="ops"
    )
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "encryption"}, headers=stack.auth()
    )
    key_id = r.json()["key"]["id"]
    r = await stack.http.post(f"{API}/keys/{key_id}/rotate", json={}, headers=stack.auth())
    assert r.status_code == 200, r.text

    def both() -> bool:
        mine = [e for e in receiver.events() if e["objectId"] == key_id]
        return len(mine) == 2

    await eventually("two deliveries", both)
    # each delivery is its own workflow: they arrive in any order; the event id orders them
    mine = sorted(
        ((h, b) for h, b in receiver.received if json.loads(b)["objectId"] == key_id),
        key=lambda hb: int(json.loads(hb[1])["id"]),
    )
    assert [json.loads(b)["type"] for _, b in mine] == ["keyCreated", "keyRotated"]
    for headers, body in mine:
        assert verify_signature(secret, body, headers["Keyrotor-Signature"])
        assert not verify_signature("whsec_wrong", body, headers["Keyrotor-Signature"])
        event = json.loads(body)
        assert headers["Keyrotor-Event-Type"] == event["type"]
        assert headers["Keyrotor-Event-Id"] == event["eventId"]
        assert secret not in body.decode() and secret not in str(headers)
    rotated = json.loads(mine[1][1])
    assert rotated["data"]["version"] == 2 and rotated["objectKind"] == "key"

    # a delivery is marked delivered once the receiver's answer is back, just after it arrived
    async def both_marked() -> bool:
        return len(await deliveries(stack, webhook_id, status="delivered")) == 2

    await eventually("two deliveries marked delivered", both_marked)
    done = await deliveries(stack, webhook_id, status="delivered")
    assert {(d["eventType"], d["attempts"], d["lastStatus"]) for d in done} == {
        ("keyCreated", 1, 200),
        ("keyRotated", 1, 200),
    }
    # nothing secret travels through Temporal: the delivery workflow's history holds ids
    queue = stack.services.settings.task_queue
    handle = stack.client.get_workflow_handle(delivery_workflow_id(queue, done[0]["id"]))
    assert await handle.result() == "delivered"
    history = (await handle.fetch_history()).to_json()
    assert secret not in history and receiver.url not in history
    r = await stack.http.delete(f"{API}/webhooks/{webhook_id}", headers=stack.auth())
    assert r.json()["webhook"]["status"] == "deleted"


async def test_failed_deliveries_are_retried_then_visible_and_replayable(
    stack: Stack, receiver: Receiver
) -> None:
    webhook_id, secret = await subscribe(stack, receiver.url, eventTypes=["keyRevoked"])
    r = await stack.http.post(
        f"{API}/keys/generate", json={"type": "encryption"}, headers=stack.auth()
    )
    key_id = r.json()["key"]["id"]
    receiver.status = 503

    def revocations() -> int:
        return sum(
            1
            for _, b in receiver.received
            if json.loads(b)["objectId"] == key_id and json.loads(b)["type"] == "keyRevoked"
        )

    r = await stack.http.request(
        "DELETE", f"{API}/keys/{key_id}", json={"reason": "drill"}, headers=stack.auth()
    )
    assert r.status_code == 200, r.text

    async def failed() -> bool:
        return bool(await deliveries(stack, webhook_id, status="failed"))

    await eventually("the delivery to fail", failed)
    [delivery] = await deliveries(stack, webhook_id)
    assert (delivery["status"], delivery["attempts"], delivery["lastStatus"]) == (
        "failed",
        3,
        503,
    )
    assert delivery["lastError"] == "HTTP 503"
    assert revocations() == 3  # every attempt reached it, 1 s and 2 s apart

    receiver.status = 204
    url = f"{API}/webhooks/{webhook_id}/deliveries/{delivery['id']}/replay"
    r = await stack.http.post(url, headers=stack.auth())
    assert r.status_code == 202, r.text
    assert r.json()["delivery"]["status"] == "pending"

    async def delivered() -> bool:
        return bool(await deliveries(stack, webhook_id, status="delivered"))

    await eventually("the replay to be delivered", delivered)
    [delivery] = await deliveries(stack, webhook_id)
    assert (delivery["attempts"], delivery["lastStatus"], delivery["lastError"]) == (4, 204, None)
    headers, body = [(h, b) for h, b in receiver.received if json.loads(b)["objectId"] == key_id][
        -1
    ]
    assert json.loads(body)["type"] == "keyRevoked"
    assert verify_signature(secret, body, headers["Keyrotor-Signature"])
    r = await stack.http.get(f"{API}/audit", params={"objectId": webhook_id}, headers=stack.auth())
    assert [rec["action"] for rec in r.json()["records"]] == [  # newest first
        "webhook.delivery_replayed",
        "webhook.created",
    ]


async def test_refusals(stack: Stack, receiver: Receiver) -> None:
    r = await stack.http.post(
        f"{API}/webhooks", json={"url": "file:///etc/passwd"}, headers=stack.auth()
    )
    assert r.status_code == 400 and "http or https" in r.json()["error"]["message"]
    r = await stack.http.post(
        f"{API}/webhooks", json={"url": receiver.url, "minSeverity": "loud"}, headers=stack.auth()
    )
    assert r.status_code == 400, r.text
    r = await stack.http.get(f"{API}/webhooks/whk_nothere", headers=stack.auth())
    assert r.status_code == 404
    webhook_id, _ = await subscribe(stack, receiver.url, eventTypes=["keyCreated"])
    r = await stack.http.post(
        f"{API}/webhooks/{webhook_id}/deliveries/999999/replay", headers=stack.auth()
    )
    assert r.status_code == 404, r.text
    r = await stack.http.get(f"{API}/webhooks", headers=stack.auth())
    assert all("secret" not in w and "sealed" not in str(w) for w in r.json()["webhooks"])
