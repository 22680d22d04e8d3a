"""Master-key rotation in the store: re-seal batch by batch, retire, refuse the old key."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import insert, select, update

from core.api_credentials import VerificationCode, secret_context
from core.envelope import EnvelopeError, MasterKeyring, envelope_key_id, open_envelope, seal
from core.lifecycle import new_key
from core.master_keys import SEALED, MasterKeyError
from core.objects import KeySpec, KeyTransitionCommit
from core.services import ConfigurationError, Services, build_services
from core.settings import Settings
from core.store.models import CredentialRow, CredentialVersionRow, KeyVersionRow, WebhookRow
from tests.fixtures.database import backend_database_url
from tests.fixtures.temporal import TEST_KEYRING, TEST_MASTER_KEY
from tests.unit.test_credential_import import LEGACY_KEY, import_and_commit

NEW_MASTER_KEY = base64.b64encode(bytes(range(100, 132))).decode()
NEW_ID = MasterKeyring.parse(NEW_MASTER_KEY).current_id
OLD_ID = TEST_KEYRING.current_id


def build(tmp_path: Path, master_key: str, database_url: str) -> Services:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, master_key=SecretStr(master_key)
    )
    return build_services(settings)


def add_key(svc: Services, n: int) -> str:
    policy = svc.policies.key_type("encryption")
    now = datetime.now(UTC)
    key_id = f"key_masterrotation{n:03d}"
    svc.keys.commit_transition(
        KeyTransitionCommit(
            transition_id=f"keyrotor/key/dev/{key_id}/1:key.created:1",
            spec=KeySpec(key_id, "dev", "encryption", policy.algorithm, "local", 256),
            lifecycle=new_key(policy.lifecycle(), now, now + timedelta(days=200)),
            action="key.created",
            event="keyCreated",
            at=now,
            actor="test",
            reason="",
            version=1,
            new_version=1,
            warning=None,
        )
    )
    return key_id


def add_pending_secret(svc: Services) -> bytes:
    now = datetime.now(UTC)
    far = now + timedelta(days=30)
    sealed = seal(svc.keyring, b"the pending secret", secret_context("cred_masterrotation", 2))
    with svc.store.write() as s:
        s.execute(
            insert(CredentialRow).values(
                id="cred_masterrotation",
                kind="credential",
                type="api",
                environment="dev",
                status="active",
                current_version=2,
                hash_algorithm="SHA-256",
                workflow_id="keyrotor/credential/dev/cred_masterrotation",
                created_by="test",
                created_at=now,
                updated_at=now,
                expires_at=far,
            )
        )
        s.execute(
            insert(CredentialVersionRow).values(
                lookup_id="lkmasterrotation",
                credential_id="cred_masterrotation",
                number=2,
                state="active",
                salt=b"s" * 16,
                secret_hash=b"h" * 32,
                pepper_id="p",
                pending_secret=sealed,
                created_at=now,
                rotate_at=far,
                warn_at=far,
                hard_expiry=far,
                state_changed_at=now,
            )
        )
    return sealed


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return backend_database_url() or f"sqlite:///{tmp_path / 'keyrotor.db'}"


def test_rotation_reseals_everything_then_refuses_the_old_key(
    tmp_path: Path, database_url: str
) -> None:
    old = build(tmp_path, TEST_MASTER_KEY, database_url)
    try:
        key_ids = [add_key(old, n) for n in range(5)]
        ciphertext = old.keys.encrypt(key_ids[0], b"kept across the rotation", b"").value
        _, webhook_secret = old.webhooks.create("https://hooks.example/", "", [], None, "test")
        pending = add_pending_secret(old)
        import_and_commit(old, "cred_importedbefore01")  # makes the imported lookup key
        with old.store.engine.connect() as db:
            old_material = db.scalar(select(KeyVersionRow.wrapped_material).limit(1))
        assert old.master_keys.census() == {OLD_ID: 8}
    finally:
        old.close()

    svc = build(tmp_path, f"{NEW_MASTER_KEY},{TEST_MASTER_KEY}", database_url)
    try:
        with pytest.raises(
            MasterKeyError, match=f"still sealed under older master keys: 8 under {OLD_ID}"
        ):
            svc.master_keys.retire_old("alice", "too early", "rotation-early")
        totals = {}
        for sealed in SEALED:  # two rows a batch, as the workflow goes
            cursor, batches, resealed = "", 0, 0
            while True:
                batch = svc.master_keys.reseal_batch(sealed.name, cursor, 2)
                batches, resealed, cursor = batches + 1, resealed + batch.resealed, batch.cursor
                if not cursor:
                    break
            totals[sealed.name] = (batches, resealed)
        assert totals == {
            "key_versions": (3, 5),
            "credential_versions": (2, 1),  # the imported key has no sealed secret
            "webhooks": (1, 1),
            "store_secrets": (1, 1),
        }
        assert svc.master_keys.census() == {NEW_ID: 8}
        # again: nothing left to do
        assert svc.master_keys.reseal_batch("key_versions", "", 100).resealed == 0

        assert svc.master_keys.retire_old("alice", "scheduled", "rotation-1") == [OLD_ID]
        assert svc.master_keys.retire_old("alice", "scheduled", "rotation-2") == []
        status = {k["id"]: (k["state"], k["sealed"]) for k in svc.master_keys.status()["keys"]}
        assert status == {NEW_ID: ("current", 8), OLD_ID: ("retired", 0)}

        # everything still works, under the new key
        assert svc.keys.decrypt(key_ids[0], ciphertext, b"").value == b"kept across the rotation"
        # the imported key's lookup key was re-sealed, not replaced: the key is still found
        assert svc.credentials.verify(LEGACY_KEY).code == VerificationCode.VALID
        with svc.store.engine.connect() as db:
            blobs = {
                name: db.scalar(select(column))
                for name, column in (
                    ("pending", CredentialVersionRow.pending_secret),
                    ("webhook", WebhookRow.sealed_secret),
                )
            }
        assert (
            open_envelope(svc.keyring, blobs["pending"], secret_context("cred_masterrotation", 2))
            == b"the pending secret"
        )
        assert envelope_key_id(blobs["webhook"]) == NEW_ID
        # a copy of a blob from before the rotation is refused, though its key is still listed
        with pytest.raises(EnvelopeError, match=f"master key {OLD_ID} was retired"):
            open_envelope(svc.keyring, pending, secret_context("cred_masterrotation", 2))
        assert envelope_key_id(old_material) == OLD_ID
        assert webhook_secret
    finally:
        svc.close()

    # the old key alone no longer starts a process; the new one alone does
    with pytest.raises(ConfigurationError, match=f"current master key {OLD_ID} was retired"):
        build(tmp_path, TEST_MASTER_KEY, database_url)
    alone = build(tmp_path, NEW_MASTER_KEY, database_url)
    try:
        assert alone.keys.decrypt(key_ids[0], ciphertext, b"").value == b"kept across the rotation"
        records = alone.master_keys.status()
        assert records["current"] == NEW_ID
    finally:
        alone.close()


def test_a_blob_no_listed_key_opens_stops_the_rotation(tmp_path: Path, database_url: str) -> None:
    svc = build(tmp_path, TEST_MASTER_KEY, database_url)
    try:
        add_key(svc, 1)
        stranger = MasterKeyring.parse(base64.b64encode(bytes(range(50, 82))).decode())
        with svc.store.write() as s:
            s.execute(
                update(KeyVersionRow).values(
                    wrapped_material=seal(stranger, b"x" * 32, b"keyrotor/key_masterrotation001/v1")
                )
            )
        with pytest.raises(
            MasterKeyError,
            match=r"key_versions \(key_id key_masterrotation001, number 1\): master key 'mk-\w+' is not in the keyring",
        ):
            svc.master_keys.reseal_batch("key_versions", "", 10)
    finally:
        svc.close()
