"""`/api/key-management/audit`: read, verify and export the hash-chained audit trail.

Every route needs the `read` permission (admin, operator, auditor). An export is itself
audited (`audit.exported`).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Reader, Svc
from api.errors import APIError
from core import audit
from core.credentials import AdminPrincipal
from core.lifecycle import iso
from core.services import Services

router = APIRouter(prefix="/api/key-management/audit", tags=["audit"])
EXPORT_BATCH = 1000


def record_view(row: Any) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "eventId": row.event_id,
        "at": iso(row.at),
        "actor": row.actor,
        "action": row.action,
        "objectKind": row.object_kind,
        "objectId": row.object_id,
        "version": row.version,
        "reason": row.reason,
        "details": dict(row.details),
        "prevHash": row.prev_hash,
        "hash": row.hash,
        "cid": audit.content_id(row.hash),
        "redactedBy": row.redacted_by,
    }


def _cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{seq}".encode()).decode().rstrip("=")


def _before(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, seq = text.partition(":")
        if kind != "audit":
            raise ValueError(kind)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise APIError(400, "INVALID_REQUEST", "cursor is not one this API returned") from None


def _aware(name: str, t: datetime | None) -> datetime | None:
    if t is not None and t.tzinfo is None:
        raise APIError(400, "INVALID_REQUEST", f"{name}: give a time zone (Z or +hh:mm)")
    return t


@router.get("")
def list_audit(
    svc: Svc,
    who: Reader,
    object_kind: str | None = Query(default=None, alias="objectKind", max_length=32),
    object_id: str | None = Query(default=None, alias="objectId", max_length=64),
    actor: str | None = Query(default=None, max_length=200),
    action: str | None = Query(default=None, max_length=64),
    since: Annotated[datetime | None, Query(description="records at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="records before (ISO 8601)")] = None,
    limit: int = Query(default=100, ge=1, le=500),
    cursor: str | None = None,
) -> dict[str, Any]:
    """Audit records, newest first; pass `nextCursor` back as `cursor` for the next page."""
    f = audit.RecordFilter(
        object_kind, object_id, actor, action, _aware("since", since), _aware("until", until)
    )
    with svc.store.engine.connect() as db:
        rows = audit.list_records(db, f, _before(cursor) if cursor else None, limit + 1)
    page = rows[:limit]
    return {
        "records": [record_view(r) for r in page],
        "pagination": {
            "limit": limit,
            "count": len(page),
            "nextCursor": _cursor(page[-1].seq) if len(rows) > limit else None,
        },
    }


@router.get("/verify")
def verify_audit(svc: Svc, who: Reader) -> dict[str, Any]:
    """Walk the whole chain: each record's hash, the links between records, no gap, and the
    head. Names the first record that was altered, removed or added behind the chain's back."""
    with svc.store.session() as s:
        report = audit.verify_chain(s)
    return {
        "verification": {
            "ok": report.ok,
            "checked": report.checked,
            "headHash": report.head_hash,
            "firstBrokenSeq": report.first_broken_seq,
            "reason": report.reason or None,
        }
    }


@router.get("/export")
async def export_audit(
    svc: Svc,
    who: Reader,
    format: Literal["jsonl", "csv"] = "jsonl",
    from_seq: int = Query(default=1, alias="fromSeq", ge=1),
) -> StreamingResponse:
    """The records from `fromSeq` to the chain head as it is now, oldest first, as JSON Lines
    (a first line names the head) or CSV; the head is also in the `X-Keyrotor-Audit-Head-Seq`
    and `X-Keyrotor-Audit-Head-Hash` headers. `keyrotor audit verify-export FILE` checks a
    copy with no database."""
    head_seq, head_hash = await run_in_threadpool(
        _head_and_record_export, svc, who, format, from_seq
    )
    rows = _rows(svc, from_seq - 1, head_seq)
    if format == "jsonl":
        header = {
            "format": audit.EXPORT_FORMAT,
            "version": 1,
            "head": {"seq": head_seq, "hash": head_hash},
            "fromSeq": from_seq,
            "exportedAt": iso(datetime.now(UTC)),
        }
        body: Iterator[str] = _jsonl(header, rows)
        media = "application/x-ndjson"
    else:
        body, media = _csv(rows), "text/csv"
    return StreamingResponse(
        body,
        media_type=media,
        headers={
            "X-Keyrotor-Audit-Head-Seq": str(head_seq),
            "X-Keyrotor-Audit-Head-Hash": head_hash,
            "Content-Disposition": (
                f'attachment; filename="keyrotor-audit-{from_seq}-{head_seq}.{format}"'
            ),
        },
    )


def _head_and_record_export(
    svc: Services, who: AdminPrincipal, format: str, from_seq: int
) -> tuple[int, str]:
    """The head the export stops at, and the export's own audit record (after that head)."""
    with svc.store.write() as s:
        head_seq, head_hash = audit.head(s.connection())
        if from_seq > head_seq + 1:
            raise APIError(400, "INVALID_REQUEST", f"fromSeq: the chain ends at {head_seq}")
        audit.append(
            s,
            audit.AuditEntry(
                event_id=f"audit-export/{uuid.uuid4()}",
                at=datetime.now(UTC),
                actor=who.name,
                action="audit.exported",
                object_kind="audit",
                object_id="chain",
                details={"format": format, "fromSeq": from_seq, "headSeq": head_seq},
            ),
        )
    return head_seq, head_hash


def _rows(svc: Services, after: int, to: int) -> Iterator[dict[str, Any]]:
    """The export form of records after..to, read a batch at a time (a sync generator:
    Starlette runs it on a worker thread)."""
    while after < to:
        with svc.store.engine.connect() as db:
            batch = audit.records_between(db, after, to, EXPORT_BATCH)
        if not batch:
            return
        for row in batch:
            yield audit.export_record(row)
        after = batch[-1].seq


def _jsonl(header: dict[str, Any], rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    yield json.dumps(header, separators=(",", ":")) + "\n"
    for record in rows:
        yield json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


def _csv(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=audit.EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for n, record in enumerate(rows, 1):
        details = json.dumps(record["details"], separators=(",", ":"), ensure_ascii=False)
        writer.writerow({**record, "details": details})
        if n % EXPORT_BATCH == 0:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()
