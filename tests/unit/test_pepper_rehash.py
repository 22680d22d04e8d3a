"""The forced part of a pepper rotation: stored hashes re-hashed under the current pepper
without their secrets, still verifying, and no longer checkable with the old pepper alone."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from core.api_credentials import CredentialService, VerificationCode
from core.credentials import PepperRing, format_credential, new_lookup_id, new_secret, secret_hash
from core.store.db import Store
from core.store.models import CredentialRow, CredentialVersionRow
from tests.fixtures.temporal import TEST_KEYRING

OLD, NEW = secrets.token_bytes(32), secrets.token_bytes(32)
OLD_ID, NEW_ID = "pp-old0000000000000", "pp-new0000000000000"


def ring(*peppers: tuple[str, bytes]) -> PepperRing:
    return PepperRing(list(peppers))


def add_credential(store: Store, peppers: PepperRing, n: int, state: str = "active") -> str:
    """A credential whose one version's secret is hashed under the ring's current pepper."""
    now = datetime.now(UTC)
    far = now + timedelta(days=30)
    cid, lookup, secret = f"cred_rehash{n:09d}", new_lookup_id(), new_secret(32)
    salt = secrets.token_bytes(16)
    with store.write() as s:
        s.execute(
            insert(CredentialRow).values(
                id=cid,
                kind="credential",
                type="api",
                environment="dev",
                status="active",
                current_version=1,
                hash_algorithm="SHA-256",
                workflow_id=f"keyrotor/credential/dev/{cid}",
                created_by="test",
                created_at=now,
                updated_at=now,
                expires_at=far,
            )
        )
        s.execute(
            insert(CredentialVersionRow).values(
                lookup_id=lookup,
                credential_id=cid,
                number=1,
                state=state,
                salt=salt,
                secret_hash=secret_hash(peppers.current, salt, secret, "SHA-256"),
                pepper_id=peppers.current_id,
                created_at=now,
                rotate_at=far,
                warn_at=far,
                hard_expiry=far,
                state_changed_at=now,
            )
        )
    return format_credential("dev", lookup, secret)


def pepper_ids(store: Store) -> dict[str, str]:
    with store.engine.connect() as db:
        rows = db.execute(
            select(CredentialVersionRow.credential_id, CredentialVersionRow.pepper_id)
        )
        return dict(rows.all())


def test_forced_rehash(store: Store) -> None:
    before = ring((OLD_ID, OLD))
    keys = [add_credential(store, before, n) for n in range(5)]
    add_credential(store, before, 9, state="retired")  # cannot verify: left alone
    rotated = CredentialService(store, TEST_KEYRING, ring((NEW_ID, NEW), (OLD_ID, OLD)))
    # one verifies first: moved lazily to a plain hash under the new pepper
    assert rotated.verify(keys[0]).code == VerificationCode.VALID
    assert pepper_ids(store)["cred_rehash000000000"] == NEW_ID
    status = {
        p["id"]: (p["outermost"], p["underneath"]) for p in rotated.pepper_status()["peppers"]
    }
    assert status == {NEW_ID: (1, 0), OLD_ID: (4, 0)}

    cursor, batches, rehashed = "", 0, 0
    while True:  # two rows a batch, as the workflow goes
        batch = rotated.rehash_batch(cursor, 2)
        cursor, batches, rehashed = batch.cursor, batches + 1, rehashed + batch.rehashed
        if not cursor:
            break
    assert (batches, rehashed) == (4, 4)  # 6 rows: 2, 2, 2 and an empty last look
    assert rotated.rehash_batch("", 100).rehashed == 0  # again: nothing left
    ids = pepper_ids(store)
    assert ids["cred_rehash000000009"] == OLD_ID
    assert {ids[f"cred_rehash{n:09d}"] for n in range(1, 5)} == {f"{NEW_ID}/{OLD_ID}"}
    status = {
        p["id"]: (p["outermost"], p["underneath"]) for p in rotated.pepper_status()["peppers"]
    }
    assert status == {NEW_ID: (5, 0), OLD_ID: (0, 4)}

    # a copy of the store with the old pepper alone verifies none of them
    stolen = CredentialService(store, TEST_KEYRING, ring((OLD_ID, OLD)))
    assert stolen.verify(keys[1], writes=False).code == VerificationCode.NOT_FOUND
    # with both, they verify, and each becomes a plain hash under the new one on its use
    assert rotated.verify(keys[1]).code == VerificationCode.VALID
    assert pepper_ids(store)["cred_rehash000000001"] == NEW_ID
    assert rotated.verify(keys[1]).code == VerificationCode.VALID
