"""Lifecycle events: listed in commit order, and streamed as server-sent events (through a real
uvicorn server: the test transport cannot stream) with resumption by Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app
from core.credentials import AdminKeys, Role
from core.services import Services
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import make_services

EVENTS = "/api/key-management/events"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    services = make_services(tmp_path)
    auditor = AdminKeys(services.store, services.keyring).create("dash", Role.AUDITOR, "t")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning")
    api = uvicorn.Server(config)
    task = asyncio.create_task(api.serve())
    for _ in range(500):
        if api.started:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("uvicorn did not start")
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {auditor}"},
        timeout=10,
    ) as http:
        yield http, services
    api.should_exit = True
    await task
    services.close()


async def read_events(response: httpx.Response, n: int) -> list[dict[str, Any]]:
    """The next `n` events of a stream: {"id", "event", "data"} each."""
    found: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    lines = response.aiter_lines()
    while len(found) < n:
        line = await asyncio.wait_for(anext(lines), 10)
        if line.startswith(("id: ", "event: ")):
            name, _, value = line.partition(": ")
            current[name] = value
        elif line.startswith("data: "):
            current["data"] = json.loads(line.removeprefix("data: "))
        elif not line and current:
            found.append(current)
            current = {}
    return found


async def test_events_are_listed_in_commit_order(
    server: tuple[httpx.AsyncClient, Services],
) -> None:
    http, services = server
    first, second = commit_key(services), commit_key(services)
    page = (await http.get(EVENTS)).json()
    assert [(e["type"], e["objectId"]) for e in page["events"]] == [
        ("keyCreated", first),
        ("keyCreated", second),
    ]
    assert page["lastId"] == page["events"][-1]["id"]
    assert (await http.get(EVENTS, params={"after": page["lastId"]})).json()["events"] == []
    assert (await http.get(EVENTS, params={"types": "keyRotated"})).json()["events"] == []


async def test_the_stream_sends_new_events_and_resumes_after_the_last_one_seen(
    server: tuple[httpx.AsyncClient, Services],
) -> None:
    http, services = server
    before = commit_key(services)  # not new: a stream without `after` starts after it
    async with http.stream("GET", f"{EVENTS}/stream") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        await asyncio.sleep(0.2)  # the stream has read where it starts
        made = await asyncio.to_thread(commit_key, services)
        [event] = await read_events(r, 1)
    assert event["event"] == "keyCreated" and event["data"]["objectId"] == made != before
    seen = event["id"]

    later = await asyncio.to_thread(commit_key, services)
    async with http.stream("GET", f"{EVENTS}/stream", headers={"Last-Event-ID": seen}) as r:
        [event] = await read_events(r, 1)
    assert event["data"]["objectId"] == later and int(event["id"]) > int(seen)

    async with http.stream("GET", f"{EVENTS}/stream", params={"after": 0}) as r:
        replay = await read_events(r, 3)
    assert [e["data"]["objectId"] for e in replay] == [before, made, later]
