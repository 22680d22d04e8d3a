"""An API process with KEYROTOR_ENVIRONMENT serves the keys, API credentials and handle families
of that environment only: one of another environment answers as unknown, is not listed, does
not verify, and cannot be created there."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import delete

from api.app import create_app
from core.api_credentials import CredentialArchivedError, new_credential_id
from core.credentials import AdminKeys, Role
from core.lifecycle import new_key
from core.objects import CredentialSpec, CredentialTransitionCommit
from core.services import ConfigurationError, Services, build_services
from core.settings import Settings
from core.store.models import ArchivedCredentialRow, CredentialRow, CredentialVersionRow
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import TEST_MASTER_KEY

API = "/api/key-management"


def services_for(data_dir: Path, environment: str = "") -> Services:
    return build_services(
        Settings(data_dir=data_dir, master_key=SecretStr(TEST_MASTER_KEY), environment=environment)
    )


@contextlib.asynccontextmanager
async def dev_client(tmp_path: Path) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """An API process serving `dev` on the store at `tmp_path`, and an admin's client of it."""
    services = services_for(tmp_path, "dev")
    admin = AdminKeys(services.store, services.keyring).create("t", Role.ADMIN, "t")
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://keyrotor.test",
        headers={"Authorization": f"Bearer {admin}"},
    ) as http:
        yield services, http
    services.close()


@pytest.fixture
async def dev_api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    everything = services_for(tmp_path)  # a worker: it commits every environment's keys
    dev_key, prod_key = commit_key(everything), commit_key(everything, environment="prod")
    async with dev_client(tmp_path) as (_, http):
        yield http, dev_key, prod_key
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


def commit_credential(services: Services, environment: str, kind: str) -> tuple[str, str]:
    """Version 1 of a new API credential or handle family (as its workflow commits it): its id
    and its secret or value."""
    now = datetime.now(UTC)
    credential_id = new_credential_id("hdl_" if kind == "handle" else "cred_")
    spec = CredentialSpec(
        credential_id,
        environment,
        kind=kind,
        type="session" if kind == "handle" else "api",
        user_id="ann" if kind == "handle" else "",
        max_usage=10 if kind == "handle" else None,
    )
    lifecycle = new_key(
        services.policies.credentials.lifecycle(scheduled=False), now, now + timedelta(days=9)
    )
    services.credentials.commit_transition(
        CredentialTransitionCommit(
            transition_id=f"keyrotor/{kind}/{environment}/{credential_id}/1",
            spec=spec,
            lifecycle=lifecycle,
            action=f"{kind}.created",
            event=f"{kind}Created",
            at=now,
            version=1,
            new_version=1,
        )
    )
    secret = services.credentials.claim_secret(credential_id, 1, "test")
    assert secret is not None
    return credential_id, secret


async def test_credentials_and_handles_of_another_environment_do_not_exist_here(
    tmp_path: Path,
) -> None:
    everything = services_for(tmp_path)
    made = {
        (kind, environment): commit_credential(everything, environment, kind)
        for kind in ("credential", "handle")
        for environment in ("dev", "prod")
    }
    async with dev_client(tmp_path) as (services, http):

        async def verify(kind: str, secret: str) -> str:
            if kind == "credential":
                r = await http.post(f"{API}/credentials/verify", json={"key": secret})
                return str(r.json()["verification"]["code"])
            body = {"handleId": secret, "userId": "ann"}
            r = await http.post(f"{API}/handles/validate", json=body)
            return str(r.json()["validation"]["code"])

        for kind, route, missing in (
            ("credential", "credentials", "CREDENTIAL_NOT_FOUND"),
            ("handle", "handles", "HANDLE_NOT_FOUND"),
        ):
            (dev_id, dev_secret), (prod_id, prod_secret) = made[kind, "dev"], made[kind, "prod"]
            assert (await http.get(f"{API}/{route}/{dev_id}")).status_code == 200
            assert await verify(kind, dev_secret) == "VALID"
            assert await verify(kind, prod_secret) == "NOT_FOUND"
            for method, path in (
                ("GET", prod_id),
                ("DELETE", prod_id),
                ("POST", f"{prod_id}/suspend"),
            ):
                r = await http.request(method, f"{API}/{route}/{path}", json={"reason": "x"})
                assert (r.status_code, r.json()["error"]["code"]) == (404, missing), path
            listed = (await http.get(f"{API}/{route}")).json()[route]
            assert [c["id"] if kind == "credential" else c["familyId"] for c in listed] == [dev_id]
        r = await http.post(f"{API}/credentials", json={"environment": "prod"})
        assert r.json()["error"]["message"] == "this API serves environment dev only, not prod"
        body = {"type": "session", "userId": "ann", "environment": "prod"}
        r = await http.post(f"{API}/handles/generate", json=body)
        assert r.json()["error"]["message"] == "this API serves environment dev only, not prod"
        # an API key imported in prod: imported once, ever, but not named to dev
        digest = hashlib.sha256(b"a prod key from elsewhere").digest()
        spec = CredentialSpec(new_credential_id(), "prod", origin="imported")
        lifecycle = new_key(
            everything.policies.credentials.lifecycle(scheduled=False),
            datetime.now(UTC),
            datetime.now(UTC) + timedelta(days=9),
        )
        everything.credentials.stage_import(spec, lifecycle, digest, "keyrotor/x")
        r = await http.post(
            f"{API}/credentials/import", json={"name": "again", "sha256": digest.hex()}
        )
        assert r.status_code == 409, r.text
        assert r.json()["error"]["message"] == (
            "this API key was imported already, in another environment"
        )
        # archived in prod: as unknown here as a live one (not 410 with its history)
        prod_id = made["credential", "prod"][0]
        now = datetime.now(UTC)
        with services.store.write() as s:
            s.add(
                ArchivedCredentialRow(
                    id=prod_id,
                    kind="credential",
                    type="api",
                    environment="prod",
                    name="",
                    owner="",
                    status="revoked",
                    versions=1,
                    usage_count=0,
                    failure_count=0,
                    last_used_at=None,
                    created_at=now,
                    ended_at=now,
                    archived_at=now,
                )
            )
            s.execute(
                delete(CredentialVersionRow).where(CredentialVersionRow.credential_id == prod_id)
            )
            s.execute(delete(CredentialRow).where(CredentialRow.id == prod_id))
        r = await http.get(f"{API}/credentials/{prod_id}")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "CREDENTIAL_NOT_FOUND")
    # the store still has them all: the worker's process serves every environment
    with pytest.raises(CredentialArchivedError):  # where prod is served, it is archived
        everything.credentials.get(made["credential", "prod"][0])
    everything.close()
