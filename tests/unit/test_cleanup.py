"""The cleanup's batches on the store (both backends): what is due and what is not, the cursor
over batches of one, a provider that refuses, and an archived credential's audit records that
keep their environment's retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from core import audit
from core.providers.base import ProviderError, ProviderUnavailableError, VersionHandle
from core.services import Services
from core.store.models import (
    ArchivedCredentialRow,
    AuditRecordRow,
    CredentialRow,
    KeyRow,
    KeyVersionRow,
)

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=31)  # past the default destroy_after (30 days)
RECENT = NOW - timedelta(days=29)


class RefusingProvider:
    """A stand-in for a provider that refuses to destroy (a permission it lacks); no real
    provider here can be made to refuse one version and not the next."""

    name = "refusing"
    disables_older = False

    def __init__(self, retryable: bool) -> None:
        self.retryable = retryable
        self.asked: list[int] = []

    def destroy_version(self, version: VersionHandle) -> None:
        self.asked.append(version.number)
        error = ProviderUnavailableError if self.retryable else ProviderError
        raise error("not allowed for arn:aws:iam::123456789012:role/secret-ops")


def add_key(services: Services, key_id: str, provider: str, states: dict[int, Any]) -> None:
    """A key with versions {number: (state, changed at)}."""
    with services.store.write() as s:
        s.execute(
            insert(KeyRow).values(
                id=key_id,
                environment="dev",
                type="encryption",
                algorithm="AES-256-GCM",
                provider=provider,
                status="active",
                current_version=max(states),
                workflow_id=f"keyrotor/key/dev/{key_id}",
                created_at=OLD,
                updated_at=OLD,
            )
        )
        for number, (state, changed) in states.items():
            s.execute(
                insert(KeyVersionRow).values(
                    key_id=key_id,
                    number=number,
                    state=state,
                    algorithm="AES-256-GCM",
                    provider=provider,
                    wrapped_material=b"sealed",
                    created_at=OLD,
                    rotate_at=NOW,
                    warn_at=NOW,
                    hard_expiry=NOW,
                    state_changed_at=changed,
                )
            )


def versions(services: Services, key_id: str) -> dict[int, tuple[str, bytes | None]]:
    with services.store.engine.connect() as db:
        rows = db.execute(
            select(KeyVersionRow.number, KeyVersionRow.state, KeyVersionRow.wrapped_material).where(
                KeyVersionRow.key_id == key_id
            )
        ).all()
    return {r.number: (r.state, r.wrapped_material) for r in rows}


def test_material_past_its_retention_is_destroyed_batch_by_batch(services: Services) -> None:
    add_key(
        services,
        "key_cleanup0000000001",
        "local",
        {
            1: ("retired", OLD),
            2: ("compromised", OLD),
            3: ("expired", RECENT),  # not yet
            4: ("grace", OLD),  # still in use
            5: ("active", OLD),
        },
    )
    assert services.cleanup.due(NOW)["destroyMaterial"] == 2
    first = services.cleanup.batch("destroy_material", "", 1, NOW, "test")
    assert (first.cursor, first.scanned, first.changed) == ("key_cleanup0000000001/1", 1, 1)
    second = services.cleanup.batch("destroy_material", first.cursor, 1, NOW, "test")
    assert (second.scanned, second.changed) == (1, 1)
    last = services.cleanup.batch("destroy_material", second.cursor, 1, NOW, "test")
    assert (last.cursor, last.scanned) == ("", 0)
    assert versions(services, "key_cleanup0000000001") == {
        1: ("destroyed", None),
        2: ("destroyed", None),
        3: ("expired", b"sealed"),
        4: ("grace", b"sealed"),
        5: ("active", b"sealed"),
    }
    with services.store.engine.connect() as db:
        records = audit.list_records(
            db, audit.RecordFilter(action="key.version_destroyed"), None, 10
        )
    assert sorted((r.version, r.details["was"]) for r in records) == [
        (1, "retired"),
        (2, "compromised"),
    ]
    # done: nothing is due, and a run again changes nothing
    assert services.cleanup.due(NOW)["destroyMaterial"] == 0
    assert services.cleanup.batch("destroy_material", "", 10, NOW, "test").changed == 0


def test_a_provider_that_refuses_is_passed_and_one_that_is_down_is_retried(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    refusing = RefusingProvider(retryable=False)
    services.keys._providers["refusing"] = refusing  # type: ignore[assignment]
    add_key(
        services, "key_cleanup0000000002", "refusing", {1: ("retired", OLD), 2: ("active", OLD)}
    )
    add_key(services, "key_cleanup0000000003", "local", {1: ("retired", OLD), 2: ("active", OLD)})
    batch = services.cleanup.batch("destroy_material", "", 10, NOW, "test")
    assert (batch.scanned, batch.changed, batch.failed) == (2, 1, 1)
    assert refusing.asked == [1]
    assert versions(services, "key_cleanup0000000002")[1] == ("retired", b"sealed")  # kept
    assert versions(services, "key_cleanup0000000003")[1] == ("destroyed", None)
    # logged by the error's type: a provider's own text may say more than it should
    assert "ProviderError" in caplog.text and "secret-ops" not in caplog.text

    services.keys._providers["refusing"] = RefusingProvider(retryable=True)  # type: ignore[assignment]
    with pytest.raises(ProviderUnavailableError):  # the activity retries the batch
        services.cleanup.batch("destroy_material", "", 10, NOW, "test")
    assert versions(services, "key_cleanup0000000002")[1] == ("retired", b"sealed")


def add_credential(services: Services, cid: str, environment: str, status: str) -> None:
    with services.store.write() as s:
        s.execute(
            insert(CredentialRow).values(
                id=cid,
                kind="credential",
                type="api",
                environment=environment,
                status=status,
                current_version=1,
                usage_count=7,
                failure_count=2,
                workflow_id=f"keyrotor/credential/{environment}/{cid}",
                created_at=OLD - timedelta(days=100),
                updated_at=OLD - timedelta(days=100),
            )
        )
        audit.append(
            s,
            audit.AuditEntry(
                event_id=f"test/{cid}",
                at=OLD - timedelta(days=100),
                actor="alice",
                action="credential.revoked",
                object_kind="credential",
                object_id=cid,
            ),
        )


def test_archived_credentials_keep_their_totals_and_their_retention(services: Services) -> None:
    add_credential(services, "cred_cleanupprod000001", "prod", "revoked")
    add_credential(services, "cred_cleanupdev0000001", "dev", "expired")
    add_credential(services, "cred_cleanuplive000001", "dev", "active")
    batch = services.cleanup.batch("archive_credentials", "", 10, NOW, "test")
    assert (batch.scanned, batch.changed) == (2, 2)
    with services.store.engine.connect() as db:
        archived = {
            r.id: (r.environment, r.status, r.usage_count, r.failure_count)
            for r in db.execute(select(ArchivedCredentialRow)).all()
        }
        left = db.scalars(select(CredentialRow.id)).all()
    assert archived == {
        "cred_cleanupprod000001": ("prod", "revoked", 7, 2),
        "cred_cleanupdev0000001": ("dev", "expired", 7, 2),
    }
    assert left == ["cred_cleanuplive000001"]
    with pytest.raises(LookupError, match="archived"):
        services.credentials.get("cred_cleanupprod000001")

    # audit retention still knows the archived records' environments: prod keeps its records
    # (7 years), dev's cutoff has passed
    cutoffs = {"dev": NOW - timedelta(days=1), "prod": NOW - timedelta(days=2555)}
    with services.store.write() as s:
        audit.apply_retention(s, cutoffs, NOW - timedelta(days=1), NOW)
    with services.store.engine.connect() as db:
        actors = dict(
            db.execute(
                select(AuditRecordRow.event_id, AuditRecordRow.actor).where(
                    AuditRecordRow.event_id.like("test/%")
                )
            ).all()
        )
    assert actors == {
        "test/cred_cleanupprod000001": "alice",
        "test/cred_cleanupdev0000001": "",
        "test/cred_cleanuplive000001": "",
    }


def test_an_id_that_ends_twice_is_archived_with_its_newer_end(services: Services) -> None:
    """An id can end twice (one derived from an Idempotency-Key, made again after Temporal
    forgot the first): its second archive replaces the first summary instead of failing."""
    add_credential(services, "cred_cleanuptwice00001", "dev", "revoked")
    assert services.cleanup.batch("archive_credentials", "", 10, NOW, "test").changed == 1
    add_credential(services, "cred_cleanuptwice00001", "dev", "expired")
    assert services.cleanup.batch("archive_credentials", "", 10, NOW, "test").changed == 1
    with services.store.engine.connect() as db:
        archived = db.execute(select(ArchivedCredentialRow.id, ArchivedCredentialRow.status)).all()
        left = db.scalars(select(CredentialRow.id)).all()
    assert [tuple(r) for r in archived] == [("cred_cleanuptwice00001", "expired")]
    assert left == []
