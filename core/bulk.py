"""Bulk operations: rotate or revoke every key, credential or handle family that matches a
filter, as one durable batch (`workflows.bulk.BulkOperationWorkflow`).

The targets are the objects that matched when the operation started, stored in order; the
workflow's activity works through them a page at a time at the operation's rate, records each
outcome here, and resumes after the last recorded one if it is retried. Each target's own
workflow makes (and audits) the change; the operation's start and end are audited too.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from core import audit
from core.lifecycle import KeyStatus, LifecyclePolicy, iso
from core.policy import Policies
from core.store.db import Store
from core.store.models import BulkOperationRow, BulkTargetRow, CredentialRow, KeyRow

# apply_policy: send each live object's workflow its lifecycle policy of a new policy version
# (the rollout PUT /config starts; it takes no filter)
ACTIONS = {
    "key": ("rotate", "revoke", "apply_policy"),
    "credential": ("rotate", "revoke", "apply_policy"),
    "handle": ("revoke", "apply_policy"),  # a handle is rotated by its holder
}
# the filters each kind takes, and the column each reads
FILTERS: dict[str, dict[str, Any]] = {
    "key": {
        "owner": KeyRow.owner,
        "type": KeyRow.type,
        "environment": KeyRow.environment,
        "provider": KeyRow.provider,
        "algorithm": KeyRow.algorithm,
    },
    "credential": {
        "owner": CredentialRow.owner,
        "environment": CredentialRow.environment,
    },
    "handle": {
        "owner": CredentialRow.user_id,  # the user the family was issued to
        "type": CredentialRow.type,
        "environment": CredentialRow.environment,
    },
}
MAX_RATE = 100


class BulkError(ValueError):
    """A bulk request that cannot be accepted."""


class BulkNotFoundError(LookupError):
    """No such bulk operation."""


def operation_view(row: BulkOperationRow) -> dict[str, Any]:
    finished = row.done + row.failed
    return {
        "id": row.id,
        "action": row.action,
        "kind": row.kind,
        "filter": dict(row.filter),
        "reason": row.reason,
        "ratePerSecond": row.rate_per_second,
        "status": row.status,
        "total": row.total,
        "done": row.done,
        "failed": row.failed,
        "progress": round(finished / row.total, 4) if row.total else 1.0,
        "createdBy": row.created_by,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
        "finishedAt": iso(row.finished_at),
        "workflowId": bulk_workflow_id(row.id),
    }


def bulk_workflow_id(operation_id: str) -> str:
    return f"keyrotor/bulk/{operation_id}"


class BulkService:
    def __init__(self, store: Store) -> None:
        self._store = store

    def start(
        self,
        action: str,
        kind: str,
        filters: dict[str, str],
        reason: str,
        rate: int,
        actor: str,
    ) -> dict[str, Any]:
        """Record a new operation and its targets (what matches now, oldest first)."""
        if kind not in ACTIONS:
            raise BulkError(f"kind must be one of {', '.join(ACTIONS)}")
        if action not in ACTIONS[kind]:
            raise BulkError(
                f"a {kind} cannot be bulk-{action}d; allowed: {', '.join(ACTIONS[kind])}"
            )
        unknown = set(filters) - set(FILTERS[kind])
        if unknown:
            allowed = ", ".join(FILTERS[kind])
            raise BulkError(f"a {kind} filter takes {allowed}; not {', '.join(sorted(unknown))}")
        if not filters and action != "apply_policy":
            raise BulkError(
                "give at least one filter (a bulk operation over everything is refused)"
            )
        if not 1 <= rate <= MAX_RATE:
            raise BulkError(f"ratePerSecond must be between 1 and {MAX_RATE}")
        table = KeyRow if kind == "key" else CredentialRow
        live = [KeyStatus.ACTIVE, KeyStatus.SUSPENDED]
        if action == "rotate":
            live = [KeyStatus.ACTIVE]
        query = (
            select(table.id, table.workflow_id)
            .where(table.status.in_([str(s) for s in live]))
            .order_by(table.created_at, table.id)
        )
        if table is CredentialRow:
            query = query.where(CredentialRow.kind == kind)
        for name, value in filters.items():
            query = query.where(FILTERS[kind][name] == value)
        now = datetime.now(UTC)
        operation_id = "blk_" + secrets.token_hex(10)
        with self._store.write() as s:
            targets = s.execute(query).all()
            row = BulkOperationRow(
                id=operation_id,
                action=action,
                kind=kind,
                filter=dict(filters),
                reason=reason,
                rate_per_second=rate,
                status="running",
                total=len(targets),
                done=0,
                failed=0,
                created_by=actor,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            s.add_all(
                BulkTargetRow(
                    operation_id=operation_id,
                    seq=n,
                    object_id=t.id,
                    workflow_id=t.workflow_id,
                    status="pending",
                    error="",
                )
                for n, t in enumerate(targets, 1)
            )
            self._audit(s, row, "started", now, f"{action} {len(targets)} {kind}s: {reason}")
            return operation_view(row)

    def lifecycle_policy(self, kind: str, object_id: str, policies: Policies) -> LifecyclePolicy:
        """The lifecycle policy `policies` give the object, as its creation would have."""
        with self._store.session() as s:
            if kind == "key":
                key_type = s.scalar(select(KeyRow.type).where(KeyRow.id == object_id))
                return policies.key_type(str(key_type)).lifecycle()
            row = s.execute(
                select(CredentialRow.type, CredentialRow.scheduled_rotation).where(
                    CredentialRow.id == object_id
                )
            ).one()
        if kind == "handle":
            return policies.handle_type(row.type).lifecycle(policies.security)
        return policies.credentials.lifecycle(scheduled=row.scheduled_rotation)

    def abandon(self, operation_id: str) -> None:
        """Its workflow could not be started: nothing was done."""
        self.finish(operation_id, "cancelled")

    def page(self, operation_id: str, after_seq: int, size: int) -> list[tuple[int, str, str]]:
        """The next pending targets after `after_seq`: (seq, object id, workflow id)."""
        with self._store.session() as s:
            rows = s.execute(
                select(BulkTargetRow.seq, BulkTargetRow.object_id, BulkTargetRow.workflow_id)
                .where(
                    BulkTargetRow.operation_id == operation_id,
                    BulkTargetRow.seq > after_seq,
                    BulkTargetRow.status == "pending",
                )
                .order_by(BulkTargetRow.seq)
                .limit(size)
            ).all()
        return [(r.seq, r.object_id, r.workflow_id) for r in rows]

    def record(self, operation_id: str, seq: int, error: str | None) -> None:
        """One target's outcome (None: done), counted once."""
        with self._store.write() as s:
            changed = (
                s.connection()
                .execute(
                    update(BulkTargetRow)
                    .where(
                        BulkTargetRow.operation_id == operation_id,
                        BulkTargetRow.seq == seq,
                        BulkTargetRow.status == "pending",
                    )
                    .values(status="failed" if error else "done", error=(error or "")[:500])
                )
                .rowcount
            )
            if changed:
                counter = BulkOperationRow.failed if error else BulkOperationRow.done
                s.execute(
                    update(BulkOperationRow)
                    .where(BulkOperationRow.id == operation_id)
                    .values({counter.key: counter + 1, "updated_at": datetime.now(UTC)})
                )

    def finish(self, operation_id: str, status: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        with self._store.write() as s:
            row = self._row(s, operation_id)
            if row.status == "running":
                row.status, row.finished_at, row.updated_at = status, now, now
                self._audit(
                    s, row, status, now, f"{row.done} done, {row.failed} failed of {row.total}"
                )
            return operation_view(row)

    def get(self, operation_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The operation, and its failed targets (the first 100)."""
        with self._store.session() as s:
            row = self._row(s, operation_id)
            failures = s.scalars(
                select(BulkTargetRow)
                .where(BulkTargetRow.operation_id == operation_id, BulkTargetRow.status == "failed")
                .order_by(BulkTargetRow.seq)
                .limit(100)
            ).all()
            return operation_view(row), [
                {"objectId": f.object_id, "error": f.error} for f in failures
            ]

    def all(self, limit: int) -> list[dict[str, Any]]:
        with self._store.session() as s:
            rows = s.scalars(
                select(BulkOperationRow).order_by(BulkOperationRow.created_at.desc()).limit(limit)
            ).all()
            return [operation_view(r) for r in rows]

    @staticmethod
    def _row(s: Any, operation_id: str) -> BulkOperationRow:
        row = s.get(BulkOperationRow, operation_id)
        if row is None:
            raise BulkNotFoundError(f"bulk operation {operation_id} not found")
        found: BulkOperationRow = row
        return found

    @staticmethod
    def _audit(s: Any, row: BulkOperationRow, verb: str, at: datetime, reason: str) -> None:
        audit.append(
            s,
            audit.AuditEntry(
                event_id=f"bulk/{row.id}/{verb}/{uuid.uuid4()}",
                at=at,
                actor=row.created_by,
                action=f"bulk.{verb}",
                object_kind="bulk",
                object_id=row.id,
                reason=reason[:1000],
                details={"action": row.action, "kind": row.kind, "total": row.total},
            ),
        )
