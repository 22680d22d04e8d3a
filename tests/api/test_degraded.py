"""Temporal is down: lifecycle writes answer 503 and change nothing, the use path keeps working.

The app is created without a Temporal client and points at a local port nobody listens on,
as `keyrotor api` does while the Temporal server is unreachable.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy.exc import OperationalError
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.routes import health as health_routes
from core.credentials import AdminKeys, Role
from core.providers.base import ProviderHealth
from core.services import Services
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import target

API = "/api/key-management"
# generous: a refused connection fails at once and the API gives up connecting after 3 s
PROMPT = 15.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class Degraded:
    services: Services
    http: httpx.AsyncClient
    headers: dict[str, str]
    key_id: str


@pytest.fixture(name="d")
async def degraded_app(services: Services) -> AsyncIterator[Degraded]:
    services.settings.temporal_address = f"127.0.0.1:{closed_port()}"
    key_id = commit_key(services, name="orders", created_by="alice")
    admin = AdminKeys(services.store, services.keyring)
    headers = {"Authorization": f"Bearer {admin.create('test-admin', Role.ADMIN, 'test')}"}
    app = create_app(services)  # no client: it connects on first need
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyrotor.test") as http:
        yield Degraded(services, http, headers, key_id)


async def statistics(d: Degraded) -> dict[str, object]:
    r = await d.http.get(f"{API}/keys/statistics", headers=d.headers)
    assert r.status_code == 200, r.text
    stats: dict[str, object] = r.json()["statistics"]
    return stats


async def test_generate_answers_503_promptly_and_creates_nothing(d: Degraded) -> None:
    before = await statistics(d)
    assert before["totalKeys"] == 1
    for _ in range(2):  # and again: a failed connection is not cached as a client
        started = time.monotonic()
        r = await d.http.post(
            f"{API}/keys/generate", json={"type": "encryption", "name": "x"}, headers=d.headers
        )
        assert time.monotonic() - started < PROMPT
        assert r.status_code == 503, r.text
        assert r.json() == {
            "error": {
                "code": "TEMPORAL_UNAVAILABLE",
                "message": "the lifecycle service is unavailable; retry later",
            }
        }
    assert await statistics(d) == before
    listed = (await d.http.get(f"{API}/keys", headers=d.headers)).json()["keys"]
    assert [k["id"] for k in listed] == [d.key_id]


async def test_use_path_works_without_temporal(d: Degraded) -> None:
    r = await d.http.post(
        f"{API}/keys/{d.key_id}/encrypt",
        json={"plaintext": b64(b"card 4111"), "aad": b64(b"order-7")},
        headers=d.headers,
    )
    assert r.status_code == 200, r.text
    enc = r.json()
    assert enc["keyId"] == d.key_id and enc["version"] == 1
    assert enc["ciphertext"].startswith(f"kr:{d.key_id}:1:")
    r = await d.http.post(
        f"{API}/keys/{d.key_id}/decrypt",
        json={"ciphertext": enc["ciphertext"], "aad": b64(b"order-7")},
        headers=d.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"plaintext": b64(b"card 4111"), "version": 1}
    r = await d.http.post(
        f"{API}/keys/{d.key_id}/decrypt",
        json={"ciphertext": enc["ciphertext"], "aad": b64(b"order-8")},
        headers=d.headers,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "DECRYPTION_FAILED"
    got = (await d.http.get(f"{API}/keys/{d.key_id}", headers=d.headers)).json()["key"]
    assert got["status"] == "active" and got["name"] == "orders"
    assert got["workflowId"] == f"keyrotor/key/dev/{d.key_id}"


async def test_rotate_and_revoke_answer_503_and_change_nothing(d: Degraded) -> None:
    before = (await d.http.get(f"{API}/keys/{d.key_id}", headers=d.headers)).json()
    started = time.monotonic()
    r = await d.http.post(
        f"{API}/keys/{d.key_id}/rotate",
        json={"reason": "manual"},
        headers={**d.headers, "Idempotency-Key": "rot-1"},
    )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "TEMPORAL_UNAVAILABLE"
    r = await d.http.request(
        "DELETE", f"{API}/keys/{d.key_id}", json={"reason": "leak"}, headers=d.headers
    )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "TEMPORAL_UNAVAILABLE"
    assert time.monotonic() - started < 2 * PROMPT
    after = (await d.http.get(f"{API}/keys/{d.key_id}", headers=d.headers)).json()
    assert after == before
    assert [v["state"] for v in after["key"]["versions"]] == ["active"]
    # still usable: nothing was revoked
    r = await d.http.post(
        f"{API}/keys/{d.key_id}/encrypt", json={"plaintext": b64(b"m")}, headers=d.headers
    )
    assert r.status_code == 200 and r.json()["version"] == 1


async def test_health_is_degraded_and_livez_is_up(d: Degraded) -> None:
    r = await d.http.get(f"{API}/health")
    assert r.status_code == 200, r.text
    health = r.json()["health"]
    assert health["status"] == "degraded"
    assert health["components"]["temporal"] == {"status": "down"}
    assert health["components"]["database"] == {"status": "up"}
    assert health["components"]["provider:local"] == {"status": "up"}
    r = await d.http.get("/livez")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_a_flood_of_health_checks_calls_the_providers_once(
    d: Degraded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/health needs no key, and each check calls every provider (a KMS or Vault call)."""
    calls: list[float] = []
    local = d.services.providers["local"]
    real = local.health

    def counted() -> ProviderHealth:
        calls.append(time.monotonic())
        return real()

    monkeypatch.setattr(local, "health", counted)
    answers = await asyncio.gather(*(d.http.get(f"{API}/health") for _ in range(20)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.json()["health"]["timestamp"] for r in answers}) == 1
    assert len(calls) == 1
    monkeypatch.setattr(health_routes, "HEALTH_TTL", 0.0)  # as once the answer is old
    await d.http.get(f"{API}/health")
    assert len(calls) == 2


async def test_a_flood_of_key_and_handle_health_counts_once(
    d: Degraded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/health/keys and /health/handles need no key either, and count over every key and
    handle family in the store."""
    counted: list[str] = []
    real_keys, real_handles = health_routes._key_health, d.services.credentials.handle_health

    def keys(svc: Services) -> dict[str, object]:
        counted.append("keys")
        return real_keys(svc)

    def handles(now: datetime) -> dict[str, int]:
        counted.append("handles")
        return real_handles(now)

    monkeypatch.setattr(health_routes, "_key_health", keys)
    monkeypatch.setattr(d.services.credentials, "handle_health", handles)
    for route in ("keys", "handles"):
        answers = await asyncio.gather(*(d.http.get(f"{API}/health/{route}") for _ in range(20)))
        assert {r.status_code for r in answers} == {200}
        assert len({r.json()["health"]["timestamp"] for r in answers}) == 1
    assert counted == ["keys", "handles"]
    assert answers[0].json()["health"]["activeHandles"] == 0


async def test_health_sees_temporal_once_it_is_reachable(
    d: Degraded, dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keyrotor api` starts without a client: health must not report Temporal down forever."""
    assert (await d.http.get(f"{API}/health")).json()["health"]["status"] == "degraded"
    d.services.settings.temporal_address = target(dev_env.client)
    # the answer is reused for HEALTH_TTL seconds
    assert (await d.http.get(f"{API}/health")).json()["health"]["status"] == "degraded"
    monkeypatch.setattr(health_routes, "HEALTH_TTL", 0.0)
    r = await d.http.get(f"{API}/health")
    assert r.status_code == 200
    health = r.json()["health"]
    assert health["components"]["temporal"] == {"status": "up"}
    assert health["status"] == "healthy"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"type": "encryption", "provider": "vault"}, 400, "PROVIDER_NOT_CONFIGURED"),
        ({"type": "encryption", "provider": "azure-keyvault"}, 400, "PROVIDER_NOT_CONFIGURED"),
        ({"type": "signing", "algorithm": "Dilithium9"}, 400, "UNSUPPORTED_ALGORITHM"),
    ],
)
async def test_a_key_on_a_provider_or_algorithm_not_there_is_refused_before_temporal(
    d: Degraded, body: dict[str, str], status: int, code: str
) -> None:
    # Refused with the reason even though Temporal is down: nothing is started.
    r = await d.http.post(f"{API}/keys/generate", json=body, headers=d.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert body.get("provider", body.get("algorithm", "")) in r.json()["error"]["message"]
    assert (await statistics(d))["totalKeys"] == 1


async def test_prod_keys_may_not_use_the_local_provider(d: Degraded) -> None:
    # the shipped policy: prod keys live on vault (not configured in this test) and refuse local
    r = await d.http.post(
        f"{API}/keys/generate",
        json={"type": "encryption", "environment": "prod", "provider": "local"},
        headers=d.headers,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {
        "code": "PROVIDER_NOT_ALLOWED",
        "message": "keys in prod may not use the local provider (set allow_local = true to"
        " allow it)",
    }
    r = await d.http.post(
        f"{API}/keys/generate",
        json={"type": "encryption", "environment": "prod"},
        headers=d.headers,
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "PROVIDER_NOT_CONFIGURED"), r.text
    assert "provider vault is not configured" in r.json()["error"]["message"]
    assert (await statistics(d))["totalKeys"] == 1


async def test_a_stop_whose_last_writes_fail_logs_them_and_stops(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The API writes the usage it still holds when it stops; if the store refuses, it says so
    in one line each and stops cleanly instead of failing its shutdown."""
    app = create_app(services)

    def refused() -> int:
        raise OperationalError("UPDATE credentials", {}, Exception("password=hunter2 refused"))

    written: list[str] = []
    monkeypatch.setattr(services.credentials, "flush_usage", refused)
    monkeypatch.setattr(services.keys, "flush_grace_uses", lambda: written.append("grace") or 0)
    monkeypatch.setattr(
        services.credentials, "audit_failures", lambda: written.append("failures") or 0
    )
    with caplog.at_level(logging.ERROR, logger="keyrotor.api"):
        async with app.router.lifespan_context(app):
            pass
    assert written == ["grace", "failures"]  # the others still ran
    assert [r.getMessage() for r in caplog.records] == [
        "could not write usage counts before stopping: OperationalError"
    ]


async def test_a_namespace_without_the_search_attributes_is_named_in_the_503(
    services: Services, dev_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    """A Temporal cluster whose namespace lacks keyrotor's search attributes refuses every new
    workflow: the answer says what to do, the log says what failed, and nothing is created."""
    namespace = f"bare-{secrets.token_hex(4)}"
    await dev_env.client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    services.settings.temporal_address = target(dev_env.client)
    services.settings.temporal_namespace = namespace
    admin = AdminKeys(services.store, services.keyring)
    headers = {"Authorization": f"Bearer {admin.create('test-admin', Role.ADMIN, 'test')}"}
    transport = httpx.ASGITransport(app=create_app(services))
    with caplog.at_level(logging.WARNING):
        async with httpx.AsyncClient(transport=transport, base_url="http://keyrotor.test") as h:
            for path in ("/keys/generate", "/credentials"):
                body = {"type": "encryption"} if path == "/keys/generate" else {}
                r = await h.post(f"{API}{path}", json=body, headers=headers)
                assert r.status_code == 503, r.text
                assert r.json()["error"] == {
                    "code": "TEMPORAL_UNAVAILABLE",
                    "message": "the Temporal namespace does not have keyrotor's search "
                    "attributes: register them (README, Deployment)",
                }
        gc.collect()  # a future whose error nobody read is logged when it is collected
    assert services.keys.statistics()["totalKeys"] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("a Temporal call failed: INVALID_ARGUMENT") == 2, messages
    assert not [m for m in messages if "never retrieved" in m], messages


async def test_metadata_is_a_few_short_labels(d: Degraded) -> None:
    """Metadata goes into every workflow input and answer: more than 32 entries, long keys or
    values, and nested values are refused (400, before Temporal is asked: here it is down)."""
    fine = {f"k{i}": "v" * 500 for i in range(31)} | {"n": 1}
    too_much: list[dict[str, object]] = [
        fine | {"one-more": "x"},
        {"k": "v" * 501},
        {"k" * 65: "v"},
        {"": "v"},
        {"k": {"nested": "no"}},
        {"k": ["a", "b"]},
    ]
    for path, body in (("/keys/generate", {"type": "encryption"}), ("/credentials", {})):
        for metadata in too_much:
            r = await d.http.post(
                f"{API}{path}", json=body | {"metadata": metadata}, headers=d.headers
            )
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"]["code"] == "INVALID_REQUEST"
        r = await d.http.post(f"{API}{path}", json=body | {"metadata": fine}, headers=d.headers)
        assert r.status_code == 503, r.text  # accepted, then Temporal is down
    nested = {"type": "encryption", "metadata": {"team": {"name": "billing"}}}
    r = await d.http.post(f"{API}/keys/generate", json=nested, headers=d.headers)
    assert r.json()["error"]["message"].endswith("a metadata value is a string, number or boolean")
    assert (await statistics(d))["totalKeys"] == 1
