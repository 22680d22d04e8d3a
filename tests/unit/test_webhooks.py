"""Webhook signatures, filters and subscriptions (the deliveries themselves run end to end in
tests/e2e/test_webhooks_flow.py)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from core.store.db import Store
from core.store.models import AuditRecordRow, EventRow, WebhookRow
from core.webhooks import (
    DeliveryBatch,
    WebhookError,
    WebhookNotFoundError,
    WebhookService,
    matches,
    sign,
    verify_signature,
)
from tests.fixtures.temporal import TEST_KEYRING

SECRET = "whsec_test"
BODY = b'{"type":"keyRotated"}'
T = 1_760_000_000


def test_signature_is_the_documented_hmac() -> None:
    header = sign(SECRET, BODY, T)
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={T},v1={expected}"
    assert verify_signature(SECRET, BODY, header, now=T + 299)


@pytest.mark.parametrize(
    ("secret", "body", "header", "now"),
    [
        ("whsec_other", BODY, sign(SECRET, BODY, T), T),  # another webhook's secret
        (SECRET, BODY + b" ", sign(SECRET, BODY, T), T),  # a changed body
        (SECRET, BODY, sign(SECRET, BODY, T), T + 301),  # too old: a replayed delivery
        (SECRET, BODY, sign(SECRET, BODY, T).replace(f"t={T}", f"t={T + 1}"), T),  # moved t
        (SECRET, BODY, "v1=abc", T),  # no timestamp
        (SECRET, BODY, "garbage", T),
    ],
)
def test_bad_signatures_are_refused(secret: str, body: bytes, header: str, now: int) -> None:
    assert not verify_signature(secret, body, header, now=now)


def _event(type_: str, data: dict[str, Any]) -> EventRow:
    return EventRow(type=type_, data=data)


def _hook(types: list[str], severity: str | None = None) -> WebhookRow:
    return WebhookRow(event_types=types, min_severity=severity)


def test_filters() -> None:
    critical = _event("keyExpiring", {"warning": {"severity": "critical"}})
    notice = _event("keyExpiring", {"warning": {"severity": "notice"}})
    rotated = _event("keyRotated", {})
    assert all(matches(_hook([]), e) for e in (critical, notice, rotated))
    pager = _hook(["keyExpiring"], "critical")
    assert [matches(pager, e) for e in (critical, notice, rotated)] == [True, False, False]
    # events without a warning are not held to the severity
    assert matches(_hook([], "warning"), rotated)
    assert not matches(_hook([], "warning"), notice)


def test_subscriptions_keep_the_secret_sealed(store: Store) -> None:
    service = WebhookService(store, TEST_KEYRING)
    try:
        view, secret = service.create(
            "https://hooks.example/services/T0/hook-path-secret",
            "pager",
            ["keyExpiring"],
            "critical",
            "alice",
        )
        assert secret.startswith("whsec_") and len(secret) >= 6 + 43
        assert view["eventTypes"] == ["keyExpiring"] and view["status"] == "active"
        assert secret not in str(view) and secret not in str(service.all())
        with store.session() as s:
            row = s.get(WebhookRow, view["id"])
            assert row is not None and secret.encode() not in row.sealed_secret
            records = s.scalars(
                select(AuditRecordRow).where(AuditRecordRow.object_id == view["id"])
            ).all()
        assert [r.action for r in records] == ["webhook.created"]
        # the origin only: a webhook's path can be its credential
        assert records[0].details["url"] == "https://hooks.example"
        assert service.delete(view["id"], "bob")["status"] == "deleted"
        assert service.delete(view["id"], "bob")["status"] == "deleted"  # once audited
        with store.session() as s:
            count = len(
                s.scalars(
                    select(AuditRecordRow).where(AuditRecordRow.action == "webhook.deleted")
                ).all()
            )
        assert count == 1
        with pytest.raises(WebhookNotFoundError):
            service.get("whk_nothere")
    finally:
        service.close()


@pytest.mark.parametrize(
    ("url", "types", "severity", "message"),
    [
        ("ftp://hooks.example/x", [], None, "absolute http or https URL"),
        ("/relative", [], None, "absolute http or https URL"),
        ("https://user:pw@hooks.example/x", [], None, "must not carry credentials"),
        ("https://hooks.example/x", ["key Rotated"], None, "event type names"),
        ("https://hooks.example/x", [], "urgent", "minSeverity must be one of"),
    ],
)
def test_bad_subscriptions_are_refused(
    sqlite_store: Store, url: str, types: list[str], severity: str | None, message: str
) -> None:
    service = WebhookService(sqlite_store, TEST_KEYRING)
    try:
        with pytest.raises(WebhookError, match=message):
            service.create(url, "", types, severity, "alice")
        assert service.all() == []
    finally:
        service.close()


def test_fan_out_makes_one_delivery_per_wanted_event(sqlite_store: Store) -> None:
    service = WebhookService(sqlite_store, TEST_KEYRING)
    try:
        pager, _ = service.create("https://a.example/", "", ["keyRotated"], None, "alice")
        everything, _ = service.create("https://b.example/", "", [], None, "alice")
        now = datetime.now(UTC)
        with sqlite_store.write() as s:
            for i, type_ in enumerate(["keyCreated", "keyRotated"]):
                s.add(
                    EventRow(event_id=f"e{i}", type=type_, object_kind="key", object_id="k", at=now)
                )
        batch = service.fan_out(0, 0.0, lambda: None)
        assert len(batch.deliveries) == 3 and batch.after == 2
        again = service.fan_out(0, 0.0, lambda: None)  # a retried activity
        assert again == batch
        assert [d["eventType"] for d in service.deliveries(pager["id"], None, 10)] == ["keyRotated"]
        assert len(service.deliveries(everything["id"], "pending", 10)) == 2
        assert service.fan_out(2, 0.0, lambda: None).deliveries == ()
    finally:
        service.close()


def test_fan_out_without_subscribers_moves_past_the_events(sqlite_store: Store) -> None:
    service = WebhookService(sqlite_store, TEST_KEYRING)
    try:
        now = datetime.now(UTC)
        with sqlite_store.write() as s:
            for i in range(3):
                s.add(
                    EventRow(
                        event_id=f"e{i}",
                        type="keyCreated",
                        object_kind="key",
                        object_id="k",
                        at=now,
                    )
                )
        assert service.fan_out(1, 0.0, lambda: None) == DeliveryBatch(3, ())
        service.create("https://a.example/", "", [], None, "alice")
        with sqlite_store.write() as s:
            s.add(
                EventRow(event_id="e3", type="keyRotated", object_kind="key", object_id="k", at=now)
            )
        batch = service.fan_out(3, 0.0, lambda: None)
        assert batch.after == 4 and len(batch.deliveries) == 1
    finally:
        service.close()
