"""Backups of the store: written whole, checked whole, restored into an empty database, and
the restored store still opens what was sealed and encrypts and decrypts as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from core import audit
from core.backup import BackupError, read_backup, restore_backup, write_backup
from core.envelope import MasterKeyring
from core.services import Services, build_services
from core.settings import Settings
from core.store.db import Store
from core.store.models import KeyRow
from tests.fixtures.database import backend_database_url
from tests.fixtures.temporal import TEST_KEYRING, TEST_MASTER_KEY
from tests.unit.test_master_keys import add_key, add_pending_secret


def build(data_dir: Path, url: str) -> Services:
    return build_services(
        Settings(data_dir=data_dir, database_url=url, master_key=SecretStr(TEST_MASTER_KEY))
    )


def fresh_url(tmp_path: Path, name: str) -> str:
    return backend_database_url() or f"sqlite:///{tmp_path / name / 'keyrotor.db'}"


def test_backup_and_restore(tmp_path: Path) -> None:
    source = build(tmp_path / "a", fresh_url(tmp_path, "a"))
    try:
        keys = [add_key(source, n) for n in range(3)]
        ciphertext = source.keys.encrypt(keys[0], b"before the backup", b"").value
        source.webhooks.create("https://hooks.example/", "", [], None, "test")
        with source.store.write() as s:  # metadata shaped like the file's own tags
            s.execute(
                update(KeyRow)
                .where(KeyRow.id == keys[1])
                .values(metadata_={"$t": "not a time", "$b": "x"})
            )
        add_pending_secret(source)
        seen: list[tuple[str, int]] = []
        data, summary = write_backup(source.store, source.keyring, lambda t, n: seen.append((t, n)))
    finally:
        source.close()
    assert summary.tables["keys"] == 3 and summary.tables["key_versions"] == 3
    assert summary.tables["audit_records"] >= 3 and summary.tables["webhooks"] == 1
    assert dict(seen) == summary.tables
    assert b"key_masterrotation" not in data  # the whole file is encrypted

    # checked whole: any changed byte, or another master key, is refused
    for at in (20, len(data) // 2, len(data) - 1):
        damaged = bytearray(data)
        damaged[at] ^= 1
        with pytest.raises(BackupError):
            read_backup(TEST_KEYRING, bytes(damaged))
    with pytest.raises(BackupError, match="does not authenticate"):
        read_backup(TEST_KEYRING, data[:-10])
    other = MasterKeyring.parse("A" * 43)
    with pytest.raises(BackupError, match=f"made under master key {TEST_KEYRING.current_id}"):
        read_backup(other, data)

    url = fresh_url(tmp_path, "b")
    (tmp_path / "b").mkdir(exist_ok=True)
    target = Store(url)
    target.migrate()
    restored: list[tuple[str, int]] = []
    try:
        restore_backup(target, TEST_KEYRING, data, lambda t, n: restored.append((t, n)))
        assert dict(restored) == {t: n for t, n in summary.tables.items() if n}
        with pytest.raises(BackupError, match="not empty"):
            restore_backup(target, TEST_KEYRING, data, lambda t, n: None)
        with target.session() as s:
            assert audit.verify_chain(s).ok
    finally:
        target.dispose()

    copy = build(tmp_path / "b", url)
    try:
        assert copy.keys.decrypt(keys[0], ciphertext, b"").value == b"before the backup"
        assert copy.master_keys.census() == {TEST_KEYRING.current_id: 5}
        assert copy.keys.get(keys[1])[0].metadata_ == {"$t": "not a time", "$b": "x"}
        add_key(copy, 7)  # new rows after a restore (ids from sequences on PostgreSQL)
        with copy.store.session() as s:
            assert audit.verify_chain(s).ok
    finally:
        copy.close()
