"""Append-only, hash-chained audit records and their verification.

Each record stores the hash of the record before it (`prev_hash`) and its own `hash`, a SHA-256
over a canonical JSON form of its content and `prev_hash`. Altering, removing or reordering a
record breaks the chain at that record. A single head row (`audit_head`, id 1) holds the last
sequence number and hash; appenders lock it, so concurrent appends queue instead of forking the
chain, and sequence numbers are dense (1, 2, 3, ...) so that a removed record shows as a gap.

Truncating the newest records *and* rewinding the head cannot be detected from inside the
database; export `ChainReport.head_hash` elsewhere (logs, a notary) to anchor the chain.

keyrotor never deletes audit records, and changes one only when its retention has passed
(`apply_retention`): an `audit.retention_applied` record is appended that counts the old
records by environment and action and names them, and their actor, reason and details are
erased while their hashes stay. Verification then checks a redacted record's links but not its
content, and that the summary naming it is in the chain and names exactly the records that
point at it: nothing is dropped silently.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.store.db import WRITE_TRANSACTION_OPTION
from core.store.models import (
    ArchivedCredentialRow,
    AuditHeadRow,
    AuditRecordRow,
    CredentialRow,
    KeyRow,
)

GENESIS_HASH: Final = "0" * 64
HEAD_ID: Final = 1

DetailValue = str | int | bool | None

_RECORDS: Final = cast(Table, AuditRecordRow.__table__)
_HEAD: Final = cast(Table, AuditHeadRow.__table__)

_TEXT_LIMITS: Final = {
    name: getattr(_RECORDS.c[name].type, "length", None)
    for name in ("event_id", "actor", "action", "object_kind", "object_id")
}


@dataclass(frozen=True)
class AuditEntry:
    """The content of one audit record, as the caller states it (no chain fields).

    `event_id` makes appends idempotent: derive it from the operation (workflow id + transition
    number), so a retried activity appends nothing new.
    """

    event_id: str
    at: datetime
    actor: str
    action: str
    object_kind: str
    object_id: str
    version: int | None = None
    reason: str = ""
    details: Mapping[str, DetailValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError("AuditEntry.at must be timezone-aware")
        for name, limit in _TEXT_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"AuditEntry.{name} must be a string")
            # The actor may come from an operator's signal; an unnamed one must not block the
            # transition it records. The other fields are ours.
            if not value and name != "actor":
                raise ValueError(f"AuditEntry.{name} must not be empty")
            # PostgreSQL enforces these lengths and SQLite does not: check on both.
            if limit is not None and len(value) > limit:
                raise ValueError(f"AuditEntry.{name} is longer than {limit} characters")
        if self.version is not None and (
            not isinstance(self.version, int) or isinstance(self.version, bool)
        ):
            raise ValueError("AuditEntry.version must be an int or None")
        if not isinstance(self.reason, str):
            raise ValueError("AuditEntry.reason must be a string")
        for key, value in self.details.items():
            # Only types that survive a JSON round trip unchanged, or the hash would not verify.
            if not isinstance(key, str):
                raise ValueError("AuditEntry.details keys must be strings")
            if value is not None and not isinstance(value, str | int | bool):
                raise ValueError(
                    f"AuditEntry.details[{key!r}] must be str, int, bool or None,"
                    f" not {type(value).__name__}"
                )
        # Freeze a private copy: the caller's mapping may change after the hash is computed.
        object.__setattr__(self, "details", dict(self.details))


def _utc_iso(at: datetime) -> str:
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_json(prev_hash: str, entry: AuditEntry) -> bytes:
    """The exact bytes `record_hash` hashes: sorted keys, no whitespace, UTF-8."""
    document: dict[str, Any] = {
        "event_id": entry.event_id,
        "at": _utc_iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "object_kind": entry.object_kind,
        "object_id": entry.object_id,
        "version": entry.version,
        "reason": entry.reason,
        "details": dict(entry.details),
        "prev_hash": prev_hash,
    }
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_hash(prev_hash: str, entry: AuditEntry) -> str:
    """SHA-256 (hex) of the canonical JSON of `entry` and `prev_hash`."""
    return hashlib.sha256(canonical_json(prev_hash, entry)).hexdigest()


def append(session: Session, entry: AuditEntry) -> int:
    """Append `entry` to the chain inside the caller's transaction (the caller commits).

    Returns the record's sequence number; when a record with `entry.event_id` is already stored,
    that record's, and nothing is written. On SQLite the transaction must come
    from `Store.write()` (BEGIN IMMEDIATE); a deferred transaction would fail with "database is
    locked" as soon as another writer is active. Plain SQL statements (no ORM unit of work): a
    transition commits one record, and this is on its path.
    """
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "sqlite" and not connection.get_execution_options().get(WRITE_TRANSACTION_OPTION):
        raise RuntimeError("audit.append on SQLite must run inside Store.write()")

    head_seq, head_hash = _lock_head(connection, dialect)
    # checked under the head lock: another transaction may have appended it while we waited
    existing = _seq_of(connection, entry.event_id)
    if existing is not None:
        return existing

    # The seq is assigned here, under the head lock, rather than by the database sequence: a
    # rolled-back transaction would burn a sequence value and leave a gap that looks like a
    # deleted record.
    values = {
        "seq": head_seq + 1,
        "event_id": entry.event_id,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "object_kind": entry.object_kind,
        "object_id": entry.object_id,
        "version": entry.version,
        "reason": entry.reason,
        "details": dict(entry.details),
        "prev_hash": head_hash,
        "hash": record_hash(head_hash, entry),
    }
    connection.execute(insert(_RECORDS), values)
    connection.execute(_MOVE_HEAD, {"seq": values["seq"], "hash": values["hash"]})
    return head_seq + 1


def recorded(session: Session, event_id: str) -> bool:
    """Whether a record with `event_id` exists (the idempotency check of a transition)."""
    return recorded_on(session.connection(), event_id)


def recorded_on(connection: Connection, event_id: str) -> bool:
    """`recorded` on a plain connection."""
    return _seq_of(connection, event_id) is not None


# built once: every transition runs them, and building a statement costs more than running it
_SEQ_OF = select(_RECORDS.c.seq).where(_RECORDS.c.event_id == bindparam("event_id"))
_MOVE_HEAD = update(_HEAD).where(_HEAD.c.id == HEAD_ID)
_LOCKED_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID).with_for_update()


def _seq_of(connection: Connection, event_id: str) -> int | None:
    return connection.scalar(_SEQ_OF, {"event_id": event_id})


def _lock_head(connection: Connection, dialect: str) -> tuple[int, str]:
    locked = _LOCKED_HEAD
    head = connection.execute(locked).one_or_none()
    if head is not None:
        return head.seq, head.hash
    # First append ever: create the head; a concurrent first appender may win the insert.
    values = {"id": HEAD_ID, "seq": 0, "hash": GENESIS_HASH}
    if dialect == "postgresql":
        connection.execute(postgresql.insert(_HEAD).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        connection.execute(sqlite.insert(_HEAD).values(values).on_conflict_do_nothing())
    else:
        raise RuntimeError(f"unsupported database dialect for the audit chain: {dialect}")
    head = connection.execute(locked).one()
    return head.seq, head.hash


def content_matches(row: Any) -> bool:
    """Whether `row` (anything with the record's fields as attributes) hashes to its `hash`."""
    try:
        if not isinstance(row.details, Mapping):
            raise ValueError("details is not a JSON object")
        entry = AuditEntry(
            event_id=row.event_id,
            at=row.at,
            actor=row.actor,
            action=row.action,
            object_kind=row.object_kind,
            object_id=row.object_id,
            version=row.version,
            reason=row.reason,
            details=row.details,
        )
    except ValueError:
        return False  # content no valid entry could have: it was altered
    return bool(record_hash(row.prev_hash, entry) == row.hash)


def content_id(record_hash_hex: str) -> str:
    """The record's content identifier: a CIDv1 (multibase base32, codec json, multihash
    sha2-256) of its canonical JSON, the same bytes its `hash` is the SHA-256 of."""
    multihash = bytes([0x12, 0x20]) + bytes.fromhex(record_hash_hex)  # sha2-256, 32 bytes
    cid = bytes([0x01, 0x80, 0x04]) + multihash  # CIDv1, json (0x0200 as a varint)
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


@dataclass(frozen=True)
class ChainReport:
    """The result of `verify_chain`.

    `checked` counts the records that verified before the first break (all of them when `ok`);
    `head_hash` is the head the walk verified against (`GENESIS_HASH` for an empty chain).
    """

    ok: bool
    checked: int
    head_hash: str
    first_broken_seq: int | None
    reason: str


def verify_chain(session: Session, batch_size: int = 1000) -> ChainReport:
    """Walk every record in `seq` order, `batch_size` at a time, and check the whole chain.

    Checks, per record: no gap in the sequence, `prev_hash` equals the previous record's hash
    (`GENESIS_HASH` for record 1), `hash` matches the content. Then that the head points at the
    last record. Stops at the first break. Safe while appends run concurrently: it verifies the
    chain up to the head it read first.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    head = session.execute(
        select(AuditHeadRow.seq, AuditHeadRow.hash).where(AuditHeadRow.id == HEAD_ID)
    ).one_or_none()
    head_seq, head_hash = (0, GENESIS_HASH) if head is None else (head.seq, head.hash)

    def broken(seq: int, checked: int, reason: str) -> ChainReport:
        return ChainReport(False, checked, head_hash, seq, reason)

    columns = (
        AuditRecordRow.seq,
        AuditRecordRow.event_id,
        AuditRecordRow.at,
        AuditRecordRow.actor,
        AuditRecordRow.action,
        AuditRecordRow.object_kind,
        AuditRecordRow.object_id,
        AuditRecordRow.version,
        AuditRecordRow.reason,
        AuditRecordRow.details,
        AuditRecordRow.prev_hash,
        AuditRecordRow.hash,
        AuditRecordRow.redacted_by,
    )
    last_seq, last_hash, checked = 0, GENESIS_HASH, 0
    summaries = _Summaries()
    while True:
        # Plain column rows, not ORM objects: nothing accumulates in the session.
        rows = session.execute(
            select(*columns)
            .where(AuditRecordRow.seq > last_seq, AuditRecordRow.seq <= head_seq)
            .order_by(AuditRecordRow.seq)
            .limit(batch_size)
        ).all()
        for row in rows:
            expected = last_seq + 1
            if row.seq != expected:
                return broken(expected, checked, f"record {expected} missing (gap in sequence)")
            if row.prev_hash != last_hash:
                what = "the genesis hash" if expected == 1 else f"record {last_seq}"
                return broken(
                    row.seq, checked, f"record {row.seq}: prev_hash does not match {what}"
                )
            problem = summaries.check(row)
            if problem:
                return broken(row.seq, checked, problem)
            last_seq, last_hash = row.seq, row.hash
            checked += 1
        if len(rows) < batch_size:
            break
    problem = summaries.unclaimed()
    if problem:
        return broken(last_seq, checked, problem)

    if last_seq != head_seq:
        return broken(
            last_seq + 1,
            checked,
            f"head points at record {head_seq} but the last record is {last_seq}",
        )
    if last_hash != head_hash:
        return broken(head_seq, checked, f"head hash does not match record {head_seq}")
    # Records past the head. Max first, head second: `append` moves the head forward in the same
    # transaction as its record, so a record past the head read afterwards was not appended.
    max_seq = session.scalar(select(func.max(AuditRecordRow.seq))) or 0
    current_head_seq = session.scalar(select(AuditHeadRow.seq).where(AuditHeadRow.id == HEAD_ID))
    if current_head_seq is None and max_seq > 0:
        first = session.scalar(select(func.min(AuditRecordRow.seq))) or 1
        return broken(first, checked, "the audit head is missing but records exist")
    if current_head_seq is not None and max_seq > current_head_seq:
        return broken(
            current_head_seq + 1,
            checked,
            f"record {max_seq} is past the head (record {current_head_seq})",
        )
    return ChainReport(True, checked, head_hash, None, "")


# --- retention ------------------------------------------------------------------------------

RETENTION_ACTION: Final = "audit.retention_applied"
RETENTION_BATCH: Final = 5000


def _ranges(seqs: list[int]) -> str:
    """1,2,3,5 -> "1-3,5"."""
    parts: list[str] = []
    start = prev = seqs[0]
    for n in [*seqs[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if n is not None:
            start = prev = n
    return ",".join(parts)


def _parse_ranges(text: object) -> list[int]:
    if not isinstance(text, str) or not text:
        raise ValueError("no seqs")
    seqs: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seqs.extend(range(int(low), int(high or low) + 1))
    return seqs


class _Summaries:
    """While walking the chain in order: a redacted record's content cannot be checked, but it
    must point at a later retention summary that names it, and each summary must name exactly
    the records that point at it."""

    def __init__(self) -> None:
        self._pending: dict[int, list[int]] = {}

    def check(self, row: Any) -> str:
        """The problem with `row`, or ""."""
        if row.redacted_by is not None:
            if row.redacted_by <= row.seq:
                return f"record {row.seq}: redacted by record {row.redacted_by}, not a later one"
            self._pending.setdefault(row.redacted_by, []).append(row.seq)
            return ""
        if not content_matches(row):
            return f"record {row.seq}: hash does not match its content"
        claimed = self._pending.pop(row.seq, [])
        if row.action != RETENTION_ACTION:
            if claimed:
                return f"records {_ranges(claimed)} name record {row.seq}, not a summary"
            return ""
        try:
            named = _parse_ranges(row.details.get("seqs"))
        except ValueError:
            return f"record {row.seq}: a retention summary that names no records"
        if named != claimed:
            return (
                f"record {row.seq}: the retention summary names records {_ranges(named)}, "
                f"but {_ranges(claimed) if claimed else 'none'} are redacted by it"
            )
        return ""

    def unclaimed(self, after: int | None = None) -> str:
        """Redacted records whose summary never came (those past `after` may be beyond an
        export's end)."""
        missing = {s: seqs for s, seqs in self._pending.items() if after is None or s <= after}
        if not missing:
            return ""
        summary, seqs = min(missing.items())
        return f"records {_ranges(seqs)} are redacted by record {summary}, which is no summary"


def apply_retention(
    session: Session,
    cutoffs: Mapping[str, datetime],
    default_cutoff: datetime,
    now: datetime,
    limit: int = RETENTION_BATCH,
) -> int:
    """Summarise and redact up to `limit` of the oldest records that are past their retention:
    a record of a key, credential or handle follows its environment's cutoff (`cutoffs`), any
    other record `default_cutoff`. Appends one `audit.retention_applied` record (counts by
    environment and action, the period, and the redacted seqs) and erases the redacted records'
    actor, reason and details in the caller's write transaction. Returns how many it redacted;
    call again until 0."""
    latest = max([default_cutoff, *cutoffs.values()])
    # an archived credential keeps its environment's retention (`core.cleanup`)
    environment = func.coalesce(
        KeyRow.environment, CredentialRow.environment, ArchivedCredentialRow.environment
    )
    rows = session.execute(
        select(
            AuditRecordRow.seq, AuditRecordRow.at, AuditRecordRow.action, environment.label("env")
        )
        .outerjoin(
            KeyRow, (AuditRecordRow.object_kind == "key") & (KeyRow.id == AuditRecordRow.object_id)
        )
        .outerjoin(
            CredentialRow,
            AuditRecordRow.object_kind.in_(("credential", "handle"))
            & (CredentialRow.id == AuditRecordRow.object_id),
        )
        .outerjoin(
            ArchivedCredentialRow,
            AuditRecordRow.object_kind.in_(("credential", "handle"))
            & (ArchivedCredentialRow.id == AuditRecordRow.object_id),
        )
        .where(
            AuditRecordRow.redacted_by.is_(None),
            AuditRecordRow.at < latest,
            AuditRecordRow.action != RETENTION_ACTION,
        )
        .order_by(AuditRecordRow.seq)
        .limit(limit)
    ).all()
    due = [r for r in rows if r.at < cutoffs.get(r.env, default_cutoff)]
    if not due:
        return 0
    counts: dict[str, DetailValue] = {}
    for r in due:
        name = f"count:{r.env or '-'}:{r.action}"
        counts[name] = int(counts.get(name) or 0) + 1
    seqs = [r.seq for r in due]
    summary = append(
        session,
        AuditEntry(
            event_id=f"audit/retention/{seqs[0]}-{seqs[-1]}/{now.isoformat()}",
            at=now,
            actor="keyrotor",
            action=RETENTION_ACTION,
            object_kind="audit",
            object_id="chain",
            reason=f"{len(due)} records past their retention summarised",
            details={
                "seqs": _ranges(seqs),
                "count": len(due),
                "from": _utc_iso(min(r.at for r in due)),
                "to": _utc_iso(max(r.at for r in due)),
                **counts,
            },
        ),
    )
    connection = session.connection()
    for i in range(0, len(seqs), 500):
        connection.execute(
            update(_RECORDS)
            .where(_RECORDS.c.seq.in_(seqs[i : i + 500]))
            .values(actor="", reason="", details={}, redacted_by=summary)
        )
    return len(due)


# --- export and offline verification ----------------------------------------------------------

EXPORT_FORMAT: Final = "keyrotor-audit-export"
# Each exported record: the canonical fields its hash covers, with their canonical names and
# forms (`at` as `_utc_iso` writes it), plus `seq`, `hash` and `cid`.
EXPORT_FIELDS: Final = (
    "seq",
    "event_id",
    "at",
    "actor",
    "action",
    "object_kind",
    "object_id",
    "version",
    "reason",
    "details",
    "prev_hash",
    "hash",
    "cid",
    "redacted_by",
)


def export_record(row: Any) -> dict[str, Any]:
    """A stored record (a row of `audit_records`) in the export form."""
    return {
        "seq": row.seq,
        "event_id": row.event_id,
        "at": _utc_iso(row.at),
        "actor": row.actor,
        "action": row.action,
        "object_kind": row.object_kind,
        "object_id": row.object_id,
        "version": row.version,
        "reason": row.reason,
        "details": dict(row.details),
        "prev_hash": row.prev_hash,
        "hash": row.hash,
        "cid": content_id(row.hash),
        "redacted_by": row.redacted_by,
    }


@dataclass(frozen=True)
class ExportReport:
    """What `verify_export` found: `checked` records verified before the first problem (all
    of them when `ok`), from `first_seq` to `last_seq`, the last one hashing to `last_hash`."""

    ok: bool
    checked: int
    first_seq: int | None
    last_seq: int | None
    last_hash: str
    problem: str


def verify_export(records: Iterable[Mapping[str, Any]], head_hash: str | None) -> ExportReport:
    """Check exported records with no database: consecutive `seq`, each `prev_hash` the hash of
    the record before (the genesis hash before record 1), each hash and cid recomputed from the
    content, and, given `head_hash`, that the last record is the chain head the export named.

    An export that starts after record 1 is anchored by its first `prev_hash` only: compare
    it with the hash of that record in an earlier export."""
    first: int | None = None
    last_seq: int | None = None
    last_hash = GENESIS_HASH
    checked = 0
    summaries = _Summaries()

    def problem(text: str) -> ExportReport:
        return ExportReport(False, checked, first, last_seq, last_hash, text)

    for n, record in enumerate(records, 1):
        try:
            row = _ExportedRow.parse(record)
        except (KeyError, ValueError, TypeError) as e:
            return problem(f"record {n} of the export: unreadable ({e})")
        if last_seq is None:
            first = row.seq
            if row.seq == 1 and row.prev_hash != GENESIS_HASH:
                return problem("record 1: prev_hash is not the genesis hash")
        elif row.seq != last_seq + 1:
            return problem(f"record {last_seq + 1} missing (the next is {row.seq})")
        elif row.prev_hash != last_hash:
            return problem(f"record {row.seq}: prev_hash does not match record {last_seq}")
        found = summaries.check(row)
        if found:
            return problem(found)
        if row.cid != content_id(row.hash):
            return problem(f"record {row.seq}: cid does not match its hash")
        last_seq, last_hash = row.seq, row.hash
        checked += 1
    if last_seq is None:
        return problem("the export holds no records")
    found = summaries.unclaimed(after=last_seq)
    if found:
        return problem(found)
    if head_hash is not None and last_hash != head_hash:
        return problem(f"the export ends at record {last_seq}, whose hash is not the head's")
    return ExportReport(True, checked, first, last_seq, last_hash, "")


@dataclass(frozen=True)
class _ExportedRow:
    seq: int
    event_id: str
    at: datetime
    actor: str
    action: str
    object_kind: str
    object_id: str
    version: int | None
    reason: str
    details: Any
    prev_hash: str
    hash: str
    cid: str
    redacted_by: int | None

    @classmethod
    def parse(cls, record: Mapping[str, Any]) -> _ExportedRow:
        """From a JSON Lines object or a CSV row (all strings; details as JSON, version empty
        for none)."""
        at = datetime.fromisoformat(str(record["at"]).replace("Z", "+00:00"))
        version = record["version"]
        details = record["details"]
        redacted_by = record.get("redacted_by")  # absent from exports made before retention
        return cls(
            seq=int(record["seq"]),
            event_id=str(record["event_id"]),
            at=at,
            actor=str(record["actor"]),
            action=str(record["action"]),
            object_kind=str(record["object_kind"]),
            object_id=str(record["object_id"]),
            version=None if version in (None, "") else int(version),
            reason=str(record["reason"]),
            details=json.loads(details) if isinstance(details, str) else details,
            prev_hash=str(record["prev_hash"]),
            hash=str(record["hash"]),
            cid=str(record["cid"]),
            redacted_by=None if redacted_by in (None, "") else int(redacted_by),
        )


# --- reading the trail --------------------------------------------------------------------------

_COLUMNS: Final = tuple(_RECORDS.c[name] for name in EXPORT_FIELDS if name != "cid")


@dataclass(frozen=True)
class RecordFilter:
    """Which records `list_records` answers; None matches anything."""

    object_kind: str | None = None
    object_id: str | None = None
    actor: str | None = None
    action: str | None = None
    since: datetime | None = None  # at >= since
    until: datetime | None = None  # at < until


def list_records(
    connection: Connection, f: RecordFilter, before_seq: int | None, limit: int
) -> list[Any]:
    """Records matching `f`, newest first, with `seq` below `before_seq` (a page's cursor)."""
    query = select(*_COLUMNS).order_by(_RECORDS.c.seq.desc()).limit(limit)
    for column, value in (
        (_RECORDS.c.object_kind, f.object_kind),
        (_RECORDS.c.object_id, f.object_id),
        (_RECORDS.c.actor, f.actor),
        (_RECORDS.c.action, f.action),
    ):
        if value is not None:
            query = query.where(column == value)
    if f.since is not None:
        query = query.where(_RECORDS.c.at >= f.since)
    if f.until is not None:
        query = query.where(_RECORDS.c.at < f.until)
    if before_seq is not None:
        query = query.where(_RECORDS.c.seq < before_seq)
    return list(connection.execute(query).all())


def head(connection: Connection) -> tuple[int, str]:
    """(sequence number, hash) of the chain head; (0, the genesis hash) for an empty chain."""
    row = connection.execute(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID)).first()
    return (0, GENESIS_HASH) if row is None else (row.seq, row.hash)


def records_between(connection: Connection, after_seq: int, to_seq: int, limit: int) -> list[Any]:
    """Records with `after_seq` < seq <= `to_seq`, oldest first, at most `limit`."""
    query = (
        select(*_COLUMNS)
        .where(_RECORDS.c.seq > after_seq, _RECORDS.c.seq <= to_seq)
        .order_by(_RECORDS.c.seq)
        .limit(limit)
    )
    return list(connection.execute(query).all())
