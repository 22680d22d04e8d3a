"""The hot routes are answered ahead of FastAPI's middleware and router (`api.hot`), with the
same answers: the same error envelope, a 413 for an oversized body, and CORS through the full
app for a browser's request."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from api.app import KeyrotorAPI, create_app
from core.credentials import AdminKeys, Role
from core.services import Services, build_services
from core.settings import Settings
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import TEST_MASTER_KEY

KEYS = "/api/key-management/keys"
LIMIT = 4096


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services, KeyrotorAPI]]:
    services = build_services(
        Settings(
            data_dir=tmp_path,
            master_key=SecretStr(TEST_MASTER_KEY),
            max_request_bytes=LIMIT,
            ui_origin="http://ui.test",
        )
    )
    admin = AdminKeys(services.store, services.keyring).create("t", Role.OPERATOR, "t")
    app = create_app(services)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://keyrotor.test",
        headers={"Authorization": f"Bearer {admin}"},
    ) as http:
        yield http, services, app
    services.close()


async def test_hot_routes_do_not_go_through_the_middleware_stack(
    api: tuple[httpx.AsyncClient, Services, KeyrotorAPI],
) -> None:
    http, services, app = api
    key_id = commit_key(services)
    assert (await http.get(f"{KEYS}/{key_id}")).status_code == 200  # builds the stack

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the middleware stack was used")

    app.middleware_stack = broken
    body = {"plaintext": base64.b64encode(b"hello").decode()}
    r = await http.post(f"{KEYS}/{key_id}/encrypt", json=body)
    assert r.status_code == 200 and r.json()["version"] == 1
    assert (await http.get("/livez")).json() == {"status": "ok"}
    with pytest.raises(AssertionError, match="middleware stack"):
        await http.get(f"{KEYS}/{key_id}")
    # same path, another method: not a hot route
    with pytest.raises(AssertionError, match="middleware stack"):
        await http.get(f"{KEYS}/{key_id}/encrypt")


async def test_errors_on_the_hot_path_keep_the_envelope_and_leak_nothing(
    api: tuple[httpx.AsyncClient, Services, KeyrotorAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, services, _ = api
    key_id = commit_key(services)
    r = await http.post(f"{KEYS}/{key_id}/encrypt", content=b"{not json")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_REQUEST")

    def explode(*args: object) -> None:
        raise RuntimeError("internal detail sk_live_do_not_show")

    monkeypatch.setattr(services.keys, "encrypt", explode)
    r = await http.post(f"{KEYS}/{key_id}/encrypt", json={"plaintext": "aGk="})
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "INTERNAL", "message": "internal error"}}


async def test_a_body_over_the_limit_is_refused_with_413(
    api: tuple[httpx.AsyncClient, Services, KeyrotorAPI],
) -> None:
    http, services, _ = api
    key_id = commit_key(services)
    big = {"plaintext": base64.b64encode(b"x" * LIMIT).decode()}
    r = await http.post(f"{KEYS}/{key_id}/encrypt", json=big)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "REQUEST_TOO_LARGE")
    assert str(LIMIT) in r.json()["error"]["message"]
    small = {"plaintext": base64.b64encode(b"x" * (LIMIT // 2)).decode()}
    assert (await http.post(f"{KEYS}/{key_id}/encrypt", json=small)).status_code == 200


async def test_a_browser_request_gets_cors_from_the_full_app(
    api: tuple[httpx.AsyncClient, Services, KeyrotorAPI],
) -> None:
    http, services, _ = api
    key_id = commit_key(services)
    body = {"plaintext": "aGk="}
    r = await http.post(f"{KEYS}/{key_id}/encrypt", json=body, headers={"Origin": "http://ui.test"})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert r.headers["access-control-allow-origin"] == "http://ui.test"
    r = await http.post(f"{KEYS}/{key_id}/encrypt", json=body)
    assert "access-control-allow-origin" not in r.headers
