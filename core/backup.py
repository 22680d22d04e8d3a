"""Backups of the store: one encrypted, integrity-checked file (`keyrotor backup`), restored
into an empty database (`keyrotor restore`).

What is in it: every row of every table, read in one transaction (a consistent snapshot).
Key material and sealed secrets stay as they are stored, sealed under the master key; hashes
stay hashes. The file is sealed once more as a whole:

    b"KRBACKUP" | 0x01 | header length (4 bytes, big endian) | header (JSON)
    | nonce (12) | AES-256-GCM(zlib(body)), the header as associated data

The key is derived from the current master key (`MasterKeyring.derive("backup")`); the header
names that key, the schema revision, when it was made, the rows of each table and the SHA-256
of the body. The body is JSON Lines, one row each (`{"t": table, "r": {column: value}}`, bytes
as `{"$b": base64}`, times as `{"$t": ISO 8601}`, JSON columns as `{"$j": value}`). A changed
byte anywhere fails the GCM tag; a body that decrypts but does not match the header's counts or
hash is refused as well.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, func, select, text

from core.envelope import EnvelopeError, MasterKeyring
from core.store.db import Store
from core.store.models import Base

MAGIC = b"KRBACKUP"
FORMAT = 1
PURPOSE = "backup"
NONCE_BYTES = 12
# tables whose integer ids come from a sequence on PostgreSQL: moved past the restored ids
_SERIAL_IDS = ("events", "warnings", "webhook_deliveries")


class BackupError(Exception):
    """A backup cannot be written or restored; the message says why (never a secret)."""


@dataclass(frozen=True)
class BackupSummary:
    created_at: str
    master_key_id: str
    revision: str
    tables: dict[str, int]


Progress = Callable[[str, int], None]


def _tables() -> list[Any]:
    return list(Base.metadata.sorted_tables)  # parents before children


def _encode(value: Any) -> Any:
    """A column's value as JSON: scalars as they are, anything else tagged (a JSON column's
    own objects too, so that metadata shaped like a tag stays what it was)."""
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, dict | list):
        return {"$j": value}
    return value


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    ((tag, inner),) = value.items()
    if tag == "$b":
        return base64.b64decode(inner)
    if tag == "$t":
        return datetime.fromisoformat(inner)
    return inner


def _revision(db: Connection) -> str:
    return str(db.scalar(text("SELECT version_num FROM alembic_version")))


def write_backup(
    store: Store, keyring: MasterKeyring, progress: Progress
) -> tuple[bytes, BackupSummary]:
    """The backup file of the whole store, and what it holds."""
    lines: list[bytes] = []
    counts: dict[str, int] = {}
    with store.engine.connect() as db:
        if db.dialect.name == "postgresql":
            db.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        revision = _revision(db)
        for table in _tables():
            n = 0
            for row in db.execute(select(table)).mappings():
                record = {"t": table.name, "r": {k: _encode(v) for k, v in row.items()}}
                lines.append(json.dumps(record, separators=(",", ":")).encode())
                n += 1
            counts[table.name] = n
            progress(table.name, n)
    body = b"\n".join(lines)
    summary = BackupSummary(datetime.now(UTC).isoformat(), keyring.current_id, revision, counts)
    header = json.dumps(
        {
            "format": FORMAT,
            "createdAt": summary.created_at,
            "masterKeyId": summary.master_key_id,
            "revision": revision,
            "tables": counts,
            "sha256": hashlib.sha256(body).hexdigest(),
        },
        separators=(",", ":"),
    ).encode()
    prefix = MAGIC + bytes([FORMAT]) + struct.pack(">I", len(header)) + header
    nonce = secrets.token_bytes(NONCE_BYTES)
    key = keyring.derive(PURPOSE, keyring.current_id)
    sealed = AESGCM(key).encrypt(nonce, zlib.compress(body, 6), prefix)
    return prefix + nonce + sealed, summary


def read_backup(
    keyring: MasterKeyring, data: bytes
) -> tuple[BackupSummary, Iterator[tuple[str, dict[str, Any]]]]:
    """Check a backup file whole (its tag, hash and counts) and answer what it holds, and its
    rows (table, values) in restore order."""
    fixed = len(MAGIC) + 1 + 4
    if len(data) < fixed or data[: len(MAGIC)] != MAGIC:
        raise BackupError("not a keyrotor backup")
    if data[len(MAGIC)] != FORMAT:
        raise BackupError(f"unsupported backup format {data[len(MAGIC)]}")
    (length,) = struct.unpack(">I", data[len(MAGIC) + 1 : fixed])
    prefix = data[: fixed + length]
    try:
        header = json.loads(data[fixed : fixed + length])
        kid = header["masterKeyId"]
        key = keyring.derive(PURPOSE, kid)
    except (ValueError, KeyError, TypeError):
        raise BackupError("the backup's header is damaged") from None
    except EnvelopeError:
        raise BackupError(
            f"the backup was made under master key {kid}, which KEYROTOR_MASTER_KEY does not hold"
        ) from None
    nonce = data[fixed + length : fixed + length + NONCE_BYTES]
    try:
        body = zlib.decompress(
            AESGCM(key).decrypt(nonce, data[fixed + length + NONCE_BYTES :], prefix)
        )
    except (InvalidTag, zlib.error, ValueError):
        raise BackupError(
            "the backup does not authenticate: it was changed or is cut short"
        ) from None
    if hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise BackupError("the backup's content does not match its header")
    records = [json.loads(line) for line in body.split(b"\n") if line]
    counts: dict[str, int] = {}
    for record in records:
        counts[record["t"]] = counts.get(record["t"], 0) + 1
    expected = {t: n for t, n in header["tables"].items() if n}
    if counts != expected:
        raise BackupError("the backup's rows do not match its header")
    summary = BackupSummary(header["createdAt"], kid, header["revision"], header["tables"])
    rows = ((r["t"], {k: _decode(v) for k, v in r["r"].items()}) for r in records)
    return summary, rows


def restore_backup(
    store: Store, keyring: MasterKeyring, data: bytes, progress: Progress
) -> BackupSummary:
    """Load a backup into an empty, migrated store (all of it in one transaction)."""
    summary, rows = read_backup(keyring, data)
    tables = {t.name: t for t in _tables()}
    unknown = set(summary.tables) - set(tables)
    if unknown:
        raise BackupError(
            f"the backup holds tables this version does not know: {', '.join(sorted(unknown))}"
        )
    with store.write() as s:
        db = s.connection()
        if _revision(db) != summary.revision:
            raise BackupError(
                f"the backup is of schema {summary.revision}, the database is at {_revision(db)}:"
                " restore it with the keyrotor version that made it"
            )
        used = [t.name for t in tables.values() if db.scalar(select(func.count()).select_from(t))]
        if used:
            raise BackupError(
                f"the database is not empty (rows in {', '.join(used)}): restore into an empty one"
            )
        batches: dict[str, list[dict[str, Any]]] = {}
        for name, values in rows:
            batches.setdefault(name, []).append(values)
        for name, batch in batches.items():  # in the file's order: parents first
            db.execute(tables[name].insert(), batch)
            progress(name, len(batch))
        if db.dialect.name == "postgresql":
            for name in _SERIAL_IDS:
                table = tables[name]
                highest = db.scalar(select(func.coalesce(func.max(table.c.id), 0)))
                db.execute(
                    text("SELECT setval(pg_get_serial_sequence(:t, 'id'), :v, false)"),
                    {"t": name, "v": int(highest or 0) + 1},
                )
    return summary
