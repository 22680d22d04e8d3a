"""Existing API keys brought in by the SHA-256 their old system stored: staged, activated by
the first commit, verified as presented, moved to an ordinary salted hash on first use, and
carried through a pepper rotation."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, update

from core import audit
from core.api_credentials import (
    LOOKUP_KEY,
    AlreadyImportedError,
    CredentialService,
    VerificationCode,
    WriteNeeded,
    store_secret_context,
)
from core.credentials import PepperRing, imported_lookup_id
from core.envelope import open_envelope
from core.lifecycle import KeyLifecycle, new_key
from core.objects import CredentialSpec, CredentialTransitionCommit, ImportWithdrawnError
from core.services import Services
from core.store.db import Store
from core.store.models import (
    CredentialRow,
    CredentialVersionRow,
    ImportedLookupRow,
    StoreSecretRow,
)
from tests.fixtures.temporal import TEST_KEYRING

LEGACY_KEY = "sk_live_" + secrets.token_urlsafe(24)  # what the holder keeps presenting
DIGEST = hashlib.sha256(LEGACY_KEY.encode()).digest()


def spec_and_lifecycle(
    services: Services, credential_id: str
) -> tuple[CredentialSpec, KeyLifecycle]:
    policy = services.policies.credentials
    now = datetime.now(UTC)
    spec = CredentialSpec(credential_id, "dev", name="legacy", scopes=("read",), origin="imported")
    return spec, new_key(policy.lifecycle(scheduled=False), now, now + timedelta(days=100))


def workflow_id(credential_id: str) -> str:
    return f"keyrotor/credential/dev/{credential_id}"


def first_commit(spec: CredentialSpec, lifecycle: KeyLifecycle) -> CredentialTransitionCommit:
    """Version 1's commit, as the credential's workflow makes it."""
    return CredentialTransitionCommit(
        transition_id=f"{workflow_id(spec.credential_id)}/1",
        spec=spec,
        lifecycle=lifecycle,
        action="credential.imported",
        event="credentialCreated",
        at=datetime.now(UTC),
        version=1,
        new_version=1,
    )


def import_and_commit(services: Services, credential_id: str, digest: bytes = DIGEST) -> None:
    """Stage an import, then commit version 1 as the credential's workflow does."""
    spec, lifecycle = spec_and_lifecycle(services, credential_id)
    services.credentials.stage_import(spec, lifecycle, digest, workflow_id(credential_id))
    services.credentials.commit_transition(first_commit(spec, lifecycle))


def lookup_of(store: Store, credential_id: str) -> str:
    """The lookup id the store keeps for the key imported as `credential_id`."""
    with store.session() as s:
        found = s.scalar(
            select(ImportedLookupRow.lookup_id).where(
                ImportedLookupRow.credential_id == credential_id
            )
        )
    assert found is not None
    return found


def stored(store: Store, lookup_id: str) -> CredentialVersionRow:
    with store.session() as s:
        row = s.get(CredentialVersionRow, lookup_id)
        assert row is not None
        s.expunge(row)
        return row


def test_an_imported_key_verifies_as_presented_and_moves_to_a_salted_hash(
    services: Services,
) -> None:
    credentials = services.credentials
    credentials.rows.polled_at = time.monotonic() + 3600  # the cache in use, as in the API
    # presented before it was imported: unknown, and that answer is not remembered; the
    # event loop's fast path hands an uncached lookup of such a key to a thread
    with pytest.raises(WriteNeeded):
        credentials.verify(LEGACY_KEY, writes=False)
    assert credentials.verify(LEGACY_KEY).code == VerificationCode.NOT_FOUND
    import_and_commit(services, "cred_imported000000001")
    lookup = lookup_of(services.store, "cred_imported000000001")
    row = stored(services.store, lookup)
    assert (row.state, row.number) == ("active", 1)
    assert row.pepper_id == f"{credentials.current_pepper_id}/imported-sha256"
    assert DIGEST not in row.secret_hash  # the plain SHA-256 is never stored

    v = credentials.verify(LEGACY_KEY, ["read"])
    assert v.code == VerificationCode.VALID
    assert (v.credential_id, v.version, v.environment) == ("cred_imported000000001", 1, "dev")
    upgraded = stored(services.store, lookup)
    assert upgraded.pepper_id == credentials.current_pepper_id
    assert len(upgraded.salt) > 0 and upgraded.secret_hash != row.secret_hash
    assert credentials.verify(LEGACY_KEY).code == VerificationCode.VALID  # the new hash works
    # a near miss, another string, and a keyrotor-looking typo are all unknown
    assert credentials.verify(LEGACY_KEY + "x").code == VerificationCode.NOT_FOUND
    assert credentials.verify("sk_live_other").code == VerificationCode.NOT_FOUND
    assert credentials.verify("krc_dev_" + "a" * 60).code == VerificationCode.NOT_FOUND

    with services.store.engine.connect() as db:
        records = audit.list_records(
            db, audit.RecordFilter(object_id="cred_imported000000001"), None, 10
        )
    assert [r.action for r in records] == ["credential.imported"]


def test_a_hash_is_imported_once(services: Services) -> None:
    import_and_commit(services, "cred_imported000000002")
    spec, lifecycle = spec_and_lifecycle(services, "cred_imported000000003")
    with pytest.raises(AlreadyImportedError, match="cred_imported000000002"):
        services.credentials.stage_import(
            spec, lifecycle, DIGEST, workflow_id("cred_imported000000003")
        )
    with services.store.engine.connect() as db:
        assert db.scalar(select(func.count()).select_from(CredentialRow)) == 1


def test_a_staged_import_is_taken_back_and_verifies_nothing(services: Services) -> None:
    spec, lifecycle = spec_and_lifecycle(services, "cred_imported000000004")
    digest = hashlib.sha256(b"another legacy key").digest()
    services.credentials.stage_import(spec, lifecycle, digest, workflow_id(spec.credential_id))
    # staged but not committed by its workflow: pending, so it verifies nothing yet
    assert services.credentials.verify("another legacy key").code == VerificationCode.NOT_FOUND
    services.credentials.unstage_import(spec.credential_id)
    with services.store.engine.connect() as db:
        assert db.scalar(select(func.count()).select_from(CredentialRow)) == 0
        assert db.scalar(select(func.count()).select_from(CredentialVersionRow)) == 0
    # once committed, unstage leaves it alone
    import_and_commit(services, "cred_imported000000005", digest)
    services.credentials.unstage_import("cred_imported000000005")
    assert services.credentials.verify("another legacy key").code == VerificationCode.VALID


def test_an_imported_hash_survives_a_forced_pepper_rehash(services: Services) -> None:
    import_and_commit(services, "cred_imported000000006")
    new = ("pp-new0000000000000", secrets.token_bytes(32))
    old = [
        (pid, services.credentials._peppers.get(pid)) for pid in services.credentials._peppers.ids()
    ]
    ring = PepperRing([new, *((pid, p) for pid, p in old if p is not None)])
    rotated = CredentialService(services.store, TEST_KEYRING, ring)
    batch = rotated.rehash_batch("", 100)
    assert batch.rehashed == 1
    lookup = lookup_of(services.store, "cred_imported000000006")
    assert stored(services.store, lookup).pepper_id.endswith("/imported-sha256")
    status = rotated.pepper_status()
    assert "imported-sha256" not in {p["id"] for p in status["peppers"]}
    assert [p["outermost"] for p in status["peppers"] if p["id"] == new[0]] == [1]
    # the chain new/old/imported-sha256 verifies the key the holder still has
    assert rotated.verify(LEGACY_KEY).code == VerificationCode.VALID
    assert stored(services.store, lookup).pepper_id == new[0]


def test_a_key_is_imported_once_ever(services: Services) -> None:
    # staged, not committed: the error says so (the API then looks for its workflow)
    spec, lifecycle = spec_and_lifecycle(services, "cred_imported000000007")
    services.credentials.stage_import(spec, lifecycle, DIGEST, workflow_id(spec.credential_id))
    again, _ = spec_and_lifecycle(services, "cred_imported000000008")
    with pytest.raises(AlreadyImportedError) as staged:
        services.credentials.stage_import(again, lifecycle, DIGEST, "keyrotor/x")
    assert (staged.value.credential_id, staged.value.staged) == ("cred_imported000000007", True)
    services.credentials.unstage_import(spec.credential_id)
    import_and_commit(services, "cred_imported000000009")
    # the credential gone from the hot tables (archived by the cleanup): still refused
    with services.store.write() as s:
        s.execute(delete(CredentialRow).where(CredentialRow.id == "cred_imported000000009"))
    with pytest.raises(AlreadyImportedError, match="cred_imported000000009") as taken:
        services.credentials.stage_import(again, lifecycle, DIGEST, "keyrotor/x")
    assert taken.value.staged is False


def test_a_withdrawn_import_is_never_replaced_by_a_generated_secret(services: Services) -> None:
    spec, lifecycle = spec_and_lifecycle(services, "cred_imported000000010")
    with pytest.raises(ImportWithdrawnError):
        services.credentials.commit_transition(first_commit(spec, lifecycle))
    with services.store.engine.connect() as db:
        assert db.scalar(select(func.count()).select_from(CredentialVersionRow)) == 0


def test_the_lookup_id_is_keyed_by_a_secret_the_database_keeps_only_sealed(
    services: Services,
) -> None:
    """A reader of the database alone cannot test a guess of an imported key: its lookup id is
    an HMAC under a key sealed by the master key, not a hash anyone can compute."""
    import_and_commit(services, "cred_imported000000011")
    lookup = lookup_of(services.store, "cred_imported000000011")
    with services.store.session() as s:
        secrets_kept = s.execute(select(StoreSecretRow.name, StoreSecretRow.sealed)).all()
    assert [name for name, _ in secrets_kept] == [LOOKUP_KEY]
    key = open_envelope(TEST_KEYRING, secrets_kept[0][1], store_secret_context(LOOKUP_KEY))
    assert key not in secrets_kept[0][1]
    assert lookup == imported_lookup_id(key, DIGEST) != imported_lookup_id(None, DIGEST)
    assert lookup != imported_lookup_id(secrets.token_bytes(32), DIGEST)
    # another process (its own service) finds the same key, and imports under it
    other = CredentialService(services.store, TEST_KEYRING, services.credentials._peppers)
    assert other.verify(LEGACY_KEY).code == VerificationCode.VALID
    digest = hashlib.sha256(b"a second legacy key").digest()
    spec, lifecycle = spec_and_lifecycle(services, "cred_imported000000012")
    other.stage_import(spec, lifecycle, digest, workflow_id(spec.credential_id))
    other.commit_transition(first_commit(spec, lifecycle))
    assert lookup_of(services.store, "cred_imported000000012") == imported_lookup_id(key, digest)
    assert services.credentials.verify("a second legacy key").code == VerificationCode.VALID
    with services.store.session() as s:
        assert s.scalar(select(func.count()).select_from(StoreSecretRow)) == 1


def test_keys_imported_before_the_lookup_key_keep_verifying(services: Services) -> None:
    """Imports made before migration 0013 have an unkeyed lookup id: a process that finds such
    rows also looks a presented key up by it, refuses to import that key again, and moves the
    key to its keyed id when it verifies (the first such move makes the lookup key)."""
    import_and_commit(services, "cred_imported000000013")
    keyed = lookup_of(services.store, "cred_imported000000013")
    unkeyed = imported_lookup_id(None, DIGEST)
    with services.store.write() as s:  # as the import was stored before 0013
        s.execute(
            update(CredentialVersionRow)
            .where(CredentialVersionRow.lookup_id == keyed)
            .values(lookup_id=unkeyed)
        )
        s.execute(
            update(ImportedLookupRow)
            .where(ImportedLookupRow.lookup_id == keyed)
            .values(lookup_id=unkeyed, keyed=False)
        )
        s.execute(delete(StoreSecretRow))
    before = stored(services.store, unkeyed).pepper_id
    fresh = CredentialService(services.store, TEST_KEYRING, services.credentials._peppers)
    fresh.rows.polled_at = time.monotonic() + 3600  # the cache in use, as in the API
    with pytest.raises(WriteNeeded):  # nothing known yet: not on the event loop
        fresh.verify(LEGACY_KEY, writes=False)
    spec, lifecycle = spec_and_lifecycle(services, "cred_imported000000014")
    with pytest.raises(AlreadyImportedError, match="cred_imported000000013"):
        fresh.stage_import(spec, lifecycle, DIGEST, workflow_id(spec.credential_id))
    assert fresh.verify(LEGACY_KEY + "x").code == VerificationCode.NOT_FOUND

    assert fresh.verify(LEGACY_KEY).code == VerificationCode.VALID
    # moved to a salted hash, and to the keyed id under the lookup key this made
    with services.store.session() as s:
        assert s.scalar(select(func.count()).select_from(StoreSecretRow)) == 1
        assert s.get(CredentialVersionRow, unkeyed) is None
        marks = s.execute(select(ImportedLookupRow.lookup_id, ImportedLookupRow.keyed)).all()
    [(moved, is_keyed)] = marks
    assert moved not in (unkeyed, keyed) and is_keyed
    after = stored(services.store, moved)
    assert before.endswith("/imported-sha256") and after.pepper_id == fresh.current_pepper_id
    assert fresh.verify(LEGACY_KEY).code == VerificationCode.VALID
    assert fresh.verify(LEGACY_KEY, writes=False).code == VerificationCode.VALID  # cached
    other = CredentialService(services.store, TEST_KEYRING, services.credentials._peppers)
    assert other.verify(LEGACY_KEY).code == VerificationCode.VALID
    with pytest.raises(AlreadyImportedError, match="cred_imported000000013"):
        other.stage_import(spec, lifecycle, DIGEST, workflow_id(spec.credential_id))

    # another key imported now gets a keyed id, and both verify
    digest = hashlib.sha256(b"imported after 0013").digest()
    fresh.stage_import(spec, lifecycle, digest, workflow_id(spec.credential_id))
    fresh.commit_transition(first_commit(spec, lifecycle))
    assert lookup_of(services.store, "cred_imported000000014") != imported_lookup_id(None, digest)
    assert fresh.verify("imported after 0013").code == VerificationCode.VALID
