"""What protects the admin API: a rate limit per admin key (429 + Retry-After), a limit on
request bodies on every route (413), and CORS only for the origins configured."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from core.credentials import AdminKeys, Role
from core.services import Services, build_services
from core.settings import Settings
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import TEST_MASTER_KEY

API = "/api/key-management"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    s = build_services(
        Settings(
            data_dir=tmp_path,
            master_key=SecretStr(TEST_MASTER_KEY),
            admin_rate_limit=3,
            max_request_bytes=2048,
            ui_origin="http://ui.test",
            cors_origins="https://dash.example, https://other.example",
            temporal_address="127.0.0.1:9",  # nobody: a request that gets that far answers 503
        )
    )
    yield s
    s.close()


@pytest.fixture
async def http(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(services)), base_url="http://keyrotor.test"
    ) as client:
        yield client


def bearer(services: Services, name: str, role: Role = Role.ADMIN) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {AdminKeys(services.store, services.keyring).create(name, role, 't')}"
    }


async def test_each_admin_key_has_its_own_rate_limit(
    services: Services, http: httpx.AsyncClient
) -> None:
    busy, calm = bearer(services, "busy"), bearer(services, "calm")
    for _ in range(3):
        assert (await http.get(f"{API}/keys", headers=busy)).status_code == 200
    r = await http.get(f"{API}/keys", headers=busy)
    assert (r.status_code, r.json()["error"]["code"]) == (429, "RATE_LIMITED")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert (await http.get(f"{API}/keys", headers=calm)).status_code == 200
    # the use path serves applications: not held to the admin limit
    key_id = commit_key(services)
    for _ in range(5):
        r = await http.post(
            f"{API}/keys/{key_id}/encrypt", json={"plaintext": "aGk="}, headers=busy
        )
        assert r.status_code == 200, r.text


async def test_an_oversized_body_is_refused_on_every_route_and_changes_nothing(
    services: Services, http: httpx.AsyncClient
) -> None:
    auth = bearer(services, "ops")
    big = {"type": "encryption", "metadata": {"blob": "x" * 4096}}
    r = await http.post(f"{API}/keys/generate", json=big, headers=auth)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "REQUEST_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"type": "encryption", "metadata": {"blob": "'
        for _ in range(8):
            yield b"x" * 512
        yield b'"}}'

    r = await http.post(
        f"{API}/keys/generate",
        content=chunks(),
        headers={**auth, "content-type": "application/json"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (413, "REQUEST_TOO_LARGE")
    assert (await http.get(f"{API}/keys", headers=auth)).json()["keys"] == []
    # a body under the limit gets as far as Temporal (down here)
    r = await http.post(f"{API}/keys/generate", json={"type": "encryption"}, headers=auth)
    assert r.status_code == 503


@pytest.mark.parametrize(
    ("origin", "method", "allowed"),
    [
        ("https://dash.example", "GET", True),
        ("https://other.example", "DELETE", True),
        ("http://ui.test", "POST", True),
        ("https://evil.example", "GET", False),
    ],
)
async def test_cors_answers_only_the_configured_origins(
    http: httpx.AsyncClient, origin: str, method: str, allowed: bool
) -> None:
    r = await http.options(
        f"{API}/keys",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert (r.status_code == 200) is allowed, r.text
    assert (r.headers.get("access-control-allow-origin") == origin) is allowed
