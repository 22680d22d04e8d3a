"""Audit retention: old records are summarised and redacted, never dropped, and the chain still
verifies, in the database and in an export; a redaction no summary accounts for is caught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from core.audit import (
    RETENTION_ACTION,
    AuditEntry,
    append,
    apply_retention,
    export_record,
    verify_chain,
    verify_export,
)
from core.store.db import Store
from core.store.models import AuditRecordRow, CredentialRow, KeyRow

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=100)


def record(n: int, object_kind: str, object_id: str, days: int) -> AuditEntry:
    return AuditEntry(
        event_id=f"test/{n}",
        at=T0 + timedelta(days=days),
        actor="alice@example.com",
        action=f"{object_kind}.rotated",
        object_kind=object_kind,
        object_id=object_id,
        reason="scheduled",
        details={"status": "active"},
    )


@pytest.fixture
def trail(store: Store) -> Store:
    """A dev key, a prod key, a prod credential and an admin action, each with old records."""
    with store.write() as s:
        for key_id, env in (("key_dev", "dev"), ("key_prod", "prod")):
            s.add(
                KeyRow(
                    id=key_id,
                    type="encryption",
                    environment=env,
                    algorithm="AES-256-GCM",
                    provider="local",
                    status="active",
                    current_version=1,
                    workflow_id=f"wf/{key_id}",
                    created_at=T0,
                    updated_at=T0,
                )
            )
        s.flush()
        entries = [
            record(1, "key", "key_dev", 1),
            record(2, "key", "key_prod", 2),
            record(3, "admin_key", "kra_1", 3),
            record(4, "key", "key_dev", 50),
            record(5, "key", "key_dev", 95),
        ]
        for e in entries:
            append(s, e)
    return store


def rows(store: Store) -> dict[int, Any]:
    with store.session() as s:
        return {r.seq: r for r in s.scalars(select(AuditRecordRow).order_by(AuditRecordRow.seq))}


def test_records_past_their_environments_retention_are_summarised(trail: Store) -> None:
    # dev keeps 30 days, prod a year, records of no environment 60 days
    cutoffs = {"dev": NOW - timedelta(days=30), "prod": NOW - timedelta(days=365)}
    with trail.write() as s:
        assert apply_retention(s, cutoffs, NOW - timedelta(days=60), NOW) == 3
    found = rows(trail)
    assert [seq for seq, r in found.items() if r.redacted_by] == [1, 3, 4]
    summary = found[6]
    assert (summary.action, summary.object_kind) == (RETENTION_ACTION, "audit")
    assert summary.details == {
        "seqs": "1,3-4",
        "count": 3,
        "from": "2025-01-02T00:00:00.000000Z",
        "to": "2025-02-20T00:00:00.000000Z",
        "count:dev:key.rotated": 2,
        "count:-:admin_key.rotated": 1,
    }
    for seq in (1, 3, 4):
        r = found[seq]
        assert (r.actor, r.reason, r.details, r.redacted_by) == ("", "", {}, 6)
        assert r.action and r.object_id and r.hash  # what happened to what stays countable
    assert found[2].actor == "alice@example.com"  # prod keeps it
    report = verify_chain_of(trail)
    assert report.ok and report.checked == 6, report
    with trail.write() as s:  # nothing more is due
        assert apply_retention(s, cutoffs, NOW - timedelta(days=60), NOW) == 0
    # an export of the redacted chain verifies offline too
    exported = [export_record(r) for r in rows(trail).values()]
    assert verify_export(exported, exported[-1]["hash"]).ok


def verify_chain_of(store: Store) -> Any:
    with store.session() as s:
        return verify_chain(s)


def _redacted(store: Store) -> Store:
    with store.write() as s:
        apply_retention(s, {"dev": NOW, "prod": T0}, NOW - timedelta(days=60), NOW)
    return store


def test_a_redaction_no_summary_names_is_caught(trail: Store) -> None:
    _redacted(trail)
    with trail.write() as s:
        s.execute(
            text("UPDATE audit_records SET actor = '', reason = '', redacted_by = 6 WHERE seq = 2")
        )
    report = verify_chain_of(trail)
    assert not report.ok and report.first_broken_seq == 6
    assert "names records 1,3-5, but 1-5 are redacted by it" in report.reason


def test_a_redaction_pointing_at_no_summary_is_caught(trail: Store) -> None:
    with trail.write() as s:
        s.execute(text("UPDATE audit_records SET actor = '', redacted_by = 5 WHERE seq = 2"))
    report = verify_chain_of(trail)
    assert not report.ok and "records 2 name record 5, not a summary" in report.reason
    exported = [export_record(r) for r in rows(trail).values()]
    assert not verify_export(exported, None).ok


def test_a_tampered_summary_breaks_the_chain(trail: Store) -> None:
    _redacted(trail)
    with trail.write() as s:
        s.execute(text("UPDATE audit_records SET reason = 'nothing to see' WHERE seq = 6"))
    report = verify_chain_of(trail)
    assert not report.ok and report.reason == "record 6: hash does not match its content"


def test_credentials_follow_their_environment(store: Store) -> None:
    with store.write() as s:
        s.add(
            CredentialRow(
                id="cred_1",
                kind="credential",
                type="api",
                environment="prod",
                name="",
                owner="",
                scopes=[],
                metadata={},
                status="active",
                current_version=1,
                scheduled_rotation=False,
                workflow_id="wf/cred_1",
                created_at=T0,
                updated_at=T0,
            )
        )
        s.flush()
        append(s, record(1, "credential", "cred_1", 1))
    with store.write() as s:
        assert apply_retention(s, {"prod": NOW - timedelta(days=365)}, NOW, NOW) == 0
        assert apply_retention(s, {"prod": NOW}, NOW - timedelta(days=365), NOW) == 1
