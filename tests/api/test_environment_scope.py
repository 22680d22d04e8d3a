"""An API process with KEYROTOR_ENVIRONMENT serves the keys of that environment only: a key of
another environment answers as unknown, is not listed, and cannot be created there."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from core.credentials import AdminKeys, Role
from core.services import ConfigurationError, Services, build_services
from core.settings import Settings
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import TEST_MASTER_KEY

API = "/api/key-management"


def services_for(data_dir: Path, environment: str = "") -> Services:
    return build_services(
        Settings(data_dir=data_dir, master_key=SecretStr(TEST_MASTER_KEY), environment=environment)
    )


@pytest.fixture
async def dev_api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    everything = services_for(tmp_path)  # a worker: it commits every environment's keys
    dev_key, prod_key = commit_key(everything), commit_key(everything, environment="prod")
    services = services_for(tmp_path, "dev")
    admin = AdminKeys(services.store, services.keyring).create("t", Role.ADMIN, "t")
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://keyrotor.test",
        headers={"Authorization": f"Bearer {admin}"},
    ) as http:
        yield http, dev_key, prod_key
    services.close()
    everything.close()


async def test_a_key_of_another_environment_does_not_exist_here(
    dev_api: tuple[httpx.AsyncClient, str, str],
) -> None:
    http, dev_key, prod_key = dev_api
    plaintext = {"plaintext": base64.b64encode(b"x").decode()}
    assert (await http.post(f"{API}/keys/{dev_key}/encrypt", json=plaintext)).status_code == 200
    for method, path, body in (
        ("GET", f"{API}/keys/{prod_key}", None),
        ("POST", f"{API}/keys/{prod_key}/encrypt", plaintext),
        ("GET", f"{API}/keys/{prod_key}/jwks", None),
        ("POST", f"{API}/keys/{prod_key}/rotate", {}),
    ):
        r = await http.request(method, path, json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "KEY_NOT_FOUND"), (path, r.text)
    listed = (await http.get(f"{API}/keys")).json()["keys"]
    assert [k["id"] for k in listed] == [dev_key]


async def test_keys_are_created_in_the_served_environment_only(
    dev_api: tuple[httpx.AsyncClient, str, str],
) -> None:
    http, _, _ = dev_api
    r = await http.post(f"{API}/keys/generate", json={"type": "encryption", "environment": "prod"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == "this API serves environment dev only, not prod"


def test_an_unknown_environment_stops_the_process(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="KEYROTOR_ENVIRONMENT 'qa' is not one of"):
        services_for(tmp_path, "qa")
