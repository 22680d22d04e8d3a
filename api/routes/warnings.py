"""`/api/key-management/warnings`: the staged warnings the lifecycle workflows raised ahead of
rotations and expiries, for operators to see and acknowledge.

Acknowledging goes to the object's workflow (`POST /keys/{keyId}/warnings/acknowledge`, and
the same under /credentials and /handles; see `api.lifecycle.add_status_routes`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select

from api.deps import Reader, Svc
from core.lifecycle import SEVERITIES, WarningTarget
from core.store.models import WarningRow
from core.warnings import warning_view

router = APIRouter(prefix="/api/key-management/warnings", tags=["warnings"])


class WarningState(StrEnum):
    OPEN = "open"  # its deadline is still ahead, acknowledged or not
    UNACKNOWLEDGED = "unacknowledged"  # open and nobody acknowledged it
    CLOSED = "closed"  # the deadline passed or moved, or the object ended
    ALL = "all"


@router.get("")
def list_warnings(
    svc: Svc,
    who: Reader,
    state: WarningState = WarningState.OPEN,
    severity: Literal["notice", "warning", "critical"] | None = Query(
        default=None, description="this severity or above"
    ),
    target: WarningTarget | None = None,
    object_kind: str | None = Query(default=None, alias="objectKind", max_length=16),
    object_id: str | None = Query(default=None, alias="objectId", max_length=64),
    environment: str | None = Query(default=None, max_length=32),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    """Warnings, most recently raised first."""
    query = select(WarningRow).order_by(WarningRow.raised_at.desc(), WarningRow.id.desc())
    if state != WarningState.ALL:
        closed = WarningRow.closed_at.is_not(None)
        query = query.where(closed if state == WarningState.CLOSED else ~closed)
    if state == WarningState.UNACKNOWLEDGED:
        query = query.where(WarningRow.acknowledged_at.is_(None))
    if severity is not None:
        query = query.where(WarningRow.severity.in_(SEVERITIES[SEVERITIES.index(severity) :]))
    if target is not None:
        query = query.where(WarningRow.target == str(target))
    if object_kind:
        query = query.where(WarningRow.object_kind == object_kind)
    if object_id:
        query = query.where(WarningRow.object_id == object_id)
    served = svc.keys.environment
    if served is not None:
        query = query.where(WarningRow.environment == served)
    if environment:
        query = query.where(WarningRow.environment == environment)
    with svc.store.session() as s:
        rows = s.scalars(query.limit(limit)).all()
        return {"warnings": [warning_view(r) for r in rows]}
