"""Staged warnings in the store: the projection of what the workflows raised and operators
acknowledged, for `GET /warnings` and for the warning events' payloads.

The workflow owns the warnings (`KeyLifecycle.warnings`, see `core.lifecycle`); every commit of
an object brings this table in line with its open warnings in the commit's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, select, update

from core.lifecycle import KeyLifecycle, StagedWarning, iso, open_warnings
from core.objects import CredentialTransitionCommit, KeyTransitionCommit
from core.store.db import Store
from core.store.models import WarningRow

_WARNINGS: Table = WarningRow.__table__  # type: ignore[assignment]
# built once: every commit of every object runs it
_OPEN_WARNINGS = select(
    _WARNINGS.c.id,
    _WARNINGS.c.target,
    _WARNINGS.c.deadline,
    _WARNINGS.c.stage,
    _WARNINGS.c.acknowledged_at,
).where(
    _WARNINGS.c.object_kind == bindparam("kind"),
    _WARNINGS.c.object_id == bindparam("object_id"),
    _WARNINGS.c.closed_at.is_(None),
)


def warning_data(w: StagedWarning) -> dict[str, Any]:
    """A raised warning as events and the API show it."""
    return {
        "target": str(w.target),
        "deadline": iso(w.deadline),
        "stage": w.stage,
        "stages": w.stages,
        "severity": w.severity,
        "escalated": w.severity != "notice",
        "version": w.version,
    }


def event_data(
    data: dict[str, Any], commit: KeyTransitionCommit | CredentialTransitionCommit
) -> dict[str, Any]:
    """An event's data, with the warning its transition raised (if any)."""
    if commit.warning is not None:
        data["warning"] = warning_data(commit.warning)
    return data


def project_warnings(
    db: Connection, kind: str, object_id: str, environment: str, lc: KeyLifecycle, at: datetime
) -> None:
    """Insert the newly raised warnings of `lc`, record acknowledgements, and close the rows
    of warnings that are no longer open (their deadline passed or moved, or the object ended)."""
    current = {(str(w.target), w.deadline, w.stage): w for w in open_warnings(lc)}
    rows = db.execute(_OPEN_WARNINGS, {"kind": kind, "object_id": object_id}).all()
    stored = {(r.target, r.deadline, r.stage): r for r in rows}
    for key, w in current.items():
        row = stored.get(key)
        if row is None:
            db.execute(
                insert(_WARNINGS).values(
                    object_kind=kind,
                    object_id=object_id,
                    environment=environment,
                    target=str(w.target),
                    deadline=w.deadline,
                    stage=w.stage,
                    stages=w.stages,
                    version=w.version,
                    severity=w.severity,
                    raised_at=w.raised_at,
                    acknowledged_at=w.acknowledged_at,
                    acknowledged_by=w.acknowledged_by,
                )
            )
        elif w.acknowledged_at is not None and row.acknowledged_at is None:
            db.execute(
                update(_WARNINGS)
                .where(_WARNINGS.c.id == row.id)
                .values(acknowledged_at=w.acknowledged_at, acknowledged_by=w.acknowledged_by)
            )
    gone = [row.id for key, row in stored.items() if key not in current]
    if gone:
        db.execute(update(_WARNINGS).where(_WARNINGS.c.id.in_(gone)).values(closed_at=at))


def warning_view(row: WarningRow) -> dict[str, Any]:
    """A stored warning as `GET /warnings` answers it."""
    return {
        "id": row.id,
        "objectKind": row.object_kind,
        "objectId": row.object_id,
        "environment": row.environment,
        "target": row.target,
        "deadline": iso(row.deadline),
        "stage": row.stage,
        "stages": row.stages,
        "version": row.version,
        "severity": row.severity,
        "raisedAt": iso(row.raised_at),
        "acknowledgedAt": iso(row.acknowledged_at),
        "acknowledgedBy": row.acknowledged_by or None,
        "closedAt": iso(row.closed_at),
    }


def object_warnings(store: Store, object_id: str) -> list[dict[str, Any]]:
    """The open warnings of one object, oldest first."""
    query = (
        select(WarningRow)
        .where(WarningRow.object_id == object_id, WarningRow.closed_at.is_(None))
        .order_by(WarningRow.id)
    )
    with store.session() as s:
        return [warning_view(r) for r in s.scalars(query)]
