"""`GET /metrics`: Prometheus text with the hot routes' counts and latencies, verification
results, and the store's objects and audit actions."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from core import audit
from core.credentials import AdminKeys, Role
from core.services import Services
from core.store.models import WarningRow, WebhookDeliveryRow
from tests.fixtures.keys import commit_key
from tests.fixtures.temporal import make_services

API = "/api/key-management"
SAMPLE = re.compile(r'^([a-z_]+)(?:\{((?:[a-z]+="[^"]*",?)*)\})? (-?[0-9.]+(?:e[+-][0-9]+)?)$')


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    services = make_services(tmp_path)
    admin = AdminKeys(services.store, services.keyring).create("ops", Role.ADMIN, "t")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(services)),
        base_url="http://keyrotor.test",
        headers={"Authorization": f"Bearer {admin}"},
    ) as http:
        yield http, services
    services.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample line, checked against the exposition format, by name and labels."""
    found = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) keyrotor_[a-z_]+ ", line), line
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = frozenset(re.findall(r'([a-z]+)="([^"]*)"', m.group(2) or ""))
        found[(m.group(1), labels)] = float(m.group(3))
    return found


async def test_metrics_count_the_hot_routes_and_read_the_store(
    api: tuple[httpx.AsyncClient, Services],
) -> None:
    http, services = api
    key_id = commit_key(services)
    pid = ("pid", str(os.getpid()))
    provider = {"provider": "local", "pid": pid[1]}
    before = samples((await http.get("/metrics")).text)
    for _ in range(3):
        r = await http.post(f"{API}/keys/{key_id}/encrypt", json={"plaintext": "aGk="})
        assert r.status_code == 200
    r = await http.post(
        f"{API}/keys/{key_id}/decrypt", json={"ciphertext": r.json()["ciphertext"][:-4] + "AAAA"}
    )
    assert r.status_code == 400
    await http.post(f"{API}/keys/key_nosuchkey000000000/encrypt", json={"plaintext": "aGk="})
    r = await http.post(f"{API}/credentials/verify", json={"key": "kr_dev_nothing"})
    assert r.json()["verification"]["code"] == "NOT_FOUND"

    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "text/plain; version=0.0.4"
    )
    m = samples(r.text)

    def value(name: str, **labels: str) -> float:
        return m[(name, frozenset(labels.items()))]

    assert value("keyrotor_hot_requests_total", route="keys/encrypt", status="200", pid=pid[1]) == 3
    assert value("keyrotor_hot_requests_total", route="keys/encrypt", status="404", pid=pid[1]) == 1
    hist = "keyrotor_hot_request_duration_seconds"
    assert value(f"{hist}_count", route="keys/encrypt", pid=pid[1]) == 4
    assert value(f"{hist}_bucket", route="keys/encrypt", pid=pid[1], le="+Inf") == 4
    assert 0 < value(f"{hist}_sum", route="keys/encrypt", pid=pid[1]) < 10
    assert (
        value("keyrotor_verifications_total", kind="credential", code="NOT_FOUND", pid=pid[1]) == 1
    )

    # the provider behind them (counted per process): three encrypts (the unknown key never
    # reached it) and a decrypt that did not authenticate
    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset({**labels, **provider}.items()))
        return m[key] - before.get(key, 0)

    assert delta("keyrotor_provider_calls_total", operation="encrypt", result="ok") == 3
    assert delta("keyrotor_provider_call_duration_seconds_count", operation="encrypt") == 3
    assert (
        delta("keyrotor_provider_calls_total", operation="decrypt", result="DecryptionError") == 1
    )
    assert value("keyrotor_keys", status="active") == 1
    assert value("keyrotor_key_versions", state="active") == 1
    assert value("keyrotor_audit_records_total", action="key.created") == 1
    assert value("keyrotor_audit_records_total", action="admin_key.created") == 1
    assert value("keyrotor_audit_head_seq") == 2

    service = AdminKeys(services.store, services.keyring).create("svc", Role.SERVICE, "t")
    r = await http.get("/metrics", headers={"Authorization": f"Bearer {service}"})
    assert r.status_code == 403


async def test_rotations_are_counted_by_reason_and_result_from_the_audit_trail(
    api: tuple[httpx.AsyncClient, Services],
) -> None:
    http, services = api
    records = [
        ("key", "rotated", "scheduled"),
        ("key", "rotated", "scheduled"),
        ("key", "rotated", "manual: quarterly"),
        ("key", "emergency_rotated", "compromise: leaked in a log"),
        ("key", "rotation_failed", "PermissionDenied: no (rotation: scheduled)"),
        ("credential", "rotated", "manual"),
        ("key", "rotated", "whatever an old record said"),
    ]
    with services.store.write() as s:
        for n, (kind, verb, reason) in enumerate(records):
            audit.append(
                s,
                audit.AuditEntry(
                    event_id=f"metrics-test/{n}",
                    at=datetime.now(UTC),
                    actor="t",
                    action=f"{kind}.{verb}",
                    object_kind=kind,
                    object_id=f"obj{n}",
                    reason=reason,
                ),
            )
    m = samples((await http.get("/metrics")).text)
    rotations = {
        tuple(sorted(labels)): v
        for (name, labels), v in m.items()
        if name == "keyrotor_rotations_total"
    }
    assert rotations == {
        (("kind", "key"), ("reason", "scheduled"), ("result", "ok")): 2,
        (("kind", "key"), ("reason", "manual"), ("result", "ok")): 1,
        (("kind", "key"), ("reason", "compromise"), ("result", "ok")): 1,
        (("kind", "key"), ("reason", "scheduled"), ("result", "failed")): 1,
        (("kind", "credential"), ("reason", "manual"), ("result", "ok")): 1,
        (("kind", "key"), ("reason", "other"), ("result", "ok")): 1,
    }


async def test_webhook_deliveries_and_unacknowledged_warnings(
    api: tuple[httpx.AsyncClient, Services],
) -> None:
    http, services = api
    webhook, _ = services.webhooks.create("https://hooks.example/", "", [], None, "t")
    now = datetime.now(UTC)
    with services.store.write() as s:
        for i, (status, attempts) in enumerate([("delivered", 1), ("delivered", 2), ("failed", 3)]):
            s.add(
                WebhookDeliveryRow(
                    webhook_id=webhook["id"],
                    event_id=i,
                    event_type="keyRotated",
                    status=status,
                    attempts=attempts,
                    last_error="",
                    created_at=now,
                    updated_at=now,
                )
            )
        for i, (severity, acknowledged) in enumerate(
            [("notice", None), ("critical", None), ("critical", now)]
        ):
            s.add(
                WarningRow(
                    object_kind="key",
                    object_id="key_x",
                    environment="dev",
                    target="rotation",
                    deadline=now,
                    stage=i + 1,
                    stages=3,
                    version=1,
                    severity=severity,
                    raised_at=now,
                    acknowledged_at=acknowledged,
                    acknowledged_by="",
                )
            )
    m = samples((await http.get("/metrics")).text)
    assert m[("keyrotor_webhook_deliveries", frozenset({("status", "delivered")}))] == 2
    assert m[("keyrotor_webhook_deliveries", frozenset({("status", "failed")}))] == 1
    attempts = "keyrotor_webhook_delivery_attempts_total"
    assert m[(attempts, frozenset({("status", "delivered")}))] == 3
    assert m[("keyrotor_unacknowledged_warnings", frozenset({("severity", "notice")}))] == 1
    assert m[("keyrotor_unacknowledged_warnings", frozenset({("severity", "critical")}))] == 1
