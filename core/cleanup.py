"""The store's cleanup, run daily by `CleanupWorkflow` one batch at a time (`CleanupPolicy`):

1. `destroy_material`: key versions that ended (retired, expired, compromised) more than
   `destroy_after` ago have their material destroyed at their provider and their sealed copy
   dropped; the version becomes `destroyed`, audited as `key.version_destroyed`.
2. `delete_ended_hashes`: the hashes of credential and handle versions that ended more than
   `archive_after` ago are deleted (handle families make one version per value). The object's
   usage totals are kept: they are counted on the credential row, not on its versions.
3. `archive_credentials`: API credentials and handle families revoked or expired more than
   `archive_after` ago move to `archived_credentials` (a summary and their totals, no hash),
   audited as `credential.archived` / `handle.archived`.
4. `delete_events`: lifecycle events and finished webhook deliveries older than
   `event_retention` are deleted (but the newest event: its id keeps SQLite from reusing ids).

A version in a final state is no longer in its workflow's state (`core.lifecycle.prune`), and a
revoked or expired object's workflow has ended: the store is the only record the cleanup
changes, so it writes it directly. Every batch is idempotent (its conditions exclude what it
did already) and goes on from a cursor, so a step that fails for one object (a provider that
refuses) moves past it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, delete, func, insert, or_, select, update

from core import audit
from core.keys import KeyService, version_handle
from core.lifecycle import KeyStatus, VersionState
from core.policy import Policies
from core.providers.base import ProviderError
from core.store.db import Store
from core.store.models import (
    ArchivedCredentialRow,
    CredentialRow,
    CredentialVersionRow,
    EventRow,
    KeyVersionRow,
    WarningRow,
    WebhookDeliveryRow,
)

log = logging.getLogger(__name__)

STEPS = ("destroy_material", "delete_ended_hashes", "archive_credentials", "delete_events")
ENDED_VERSION_STATES = tuple(
    str(s) for s in (VersionState.RETIRED, VersionState.EXPIRED, VersionState.COMPROMISED)
)
ENDED_STATUSES = (str(KeyStatus.REVOKED), str(KeyStatus.EXPIRED))

_KV = cast(Table, KeyVersionRow.__table__)
_CV = cast(Table, CredentialVersionRow.__table__)
_CRED = cast(Table, CredentialRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)


@dataclass(frozen=True)
class CleanupBatch:
    """One batch of one step: the cursor to go on from ("" once the step is done), the rows it
    looked at, what it changed and what it had to leave (a provider refused)."""

    cursor: str
    scanned: int
    changed: int
    failed: int = 0


class CleanupService:
    """The cleanup's batches (`STEPS`), each as of `now` (the run's start, so a run has one
    cutoff per step however long it takes)."""

    def __init__(self, store: Store, keys: KeyService, policies: Callable[[], Policies]) -> None:
        self._store = store
        self._keys = keys
        self._policies = policies

    def batch(self, step: str, cursor: str, limit: int, now: datetime, actor: str) -> CleanupBatch:
        policy = self._policies().cleanup
        if step == "destroy_material":
            return self._destroy_material(cursor, limit, now - policy.destroy_after, now, actor)
        if step == "delete_ended_hashes":
            return self._delete_ended_hashes(cursor, limit, now - policy.archive_after)
        if step == "archive_credentials":
            return self._archive(cursor, limit, now - policy.archive_after, now, actor)
        if step == "delete_events":
            return self._delete_events(limit, now - policy.event_retention)
        raise ValueError(f"unknown cleanup step {step!r}")

    def record_request(self, actor: str, workflow_id: str, at: datetime) -> None:
        """Audit an operator's request for a run now (`POST /cleanup/run`): the run itself is
        audited as the cleanup's, so this says who asked for it."""
        with self._store.write() as s:
            audit.append(
                s,
                audit.AuditEntry(
                    event_id=f"{workflow_id}/requested",
                    at=at,
                    actor=actor,
                    action="cleanup.requested",
                    object_kind="store",
                    object_id="cleanup",
                    details={"workflowId": workflow_id},
                ),
            )

    def due(self, now: datetime) -> dict[str, int]:
        """How much each step would change if it ran now (`GET /cleanup`)."""
        policy = self._policies().cleanup
        with self._store.engine.connect() as db:
            return {
                "destroyMaterial": _count(db, _KV, _material_due(now - policy.destroy_after)),
                "deleteEndedHashes": _count(db, _CV, _hashes_due(now - policy.archive_after)),
                "archiveCredentials": _count(db, _CRED, _archive_due(now - policy.archive_after)),
                "deleteEvents": _count(db, _EVENTS, _events_due(now - policy.event_retention)),
            }

    # --- the steps -------------------------------------------------------------------------

    def _destroy_material(
        self, cursor: str, limit: int, cutoff: datetime, now: datetime, actor: str
    ) -> CleanupBatch:
        query = select(_KV).where(_material_due(cutoff)).order_by(_KV.c.key_id, _KV.c.number)
        if cursor:
            key_id, _, number = cursor.rpartition("/")
            query = query.where(
                or_(_KV.c.key_id > key_id, and_(_KV.c.key_id == key_id, _KV.c.number > int(number)))
            )
        with self._store.engine.connect() as db:
            rows = db.execute(query.limit(limit)).all()
        destroyed, failed = [], 0
        for row in rows:
            try:
                self._keys.provider(row.provider).destroy_version(version_handle(row.key_id, row))
            except ProviderError as e:
                if e.retryable:
                    raise  # the batch is tried again; destroying is idempotent
                log.warning(  # the error's type only: a provider's text may say too much
                    "%s v%d: %s refused to destroy it (%s); kept, tried again next run",
                    row.key_id,
                    row.number,
                    row.provider,
                    type(e).__name__,
                )
                failed += 1
                continue
            destroyed.append(row)
        with self._store.write() as s:
            db = s.connection()
            for row in destroyed:
                db.execute(
                    update(_KV)
                    .where(_KV.c.key_id == row.key_id, _KV.c.number == row.number)
                    .values(
                        state=str(VersionState.DESTROYED),
                        wrapped_material=None,
                        state_changed_at=now,
                    )
                )
                audit.append(
                    s,
                    audit.AuditEntry(
                        event_id=f"cleanup/key/{row.key_id}/v{row.number}/destroyed",
                        at=now,
                        actor=actor,
                        action="key.version_destroyed",
                        object_kind="key",
                        object_id=row.key_id,
                        version=row.number,
                        reason="ended more than cleanup.destroy_after ago",
                        details={"was": row.state, "provider": row.provider},
                    ),
                )
        last = f"{rows[-1].key_id}/{rows[-1].number}" if len(rows) == limit else ""
        return CleanupBatch(last, len(rows), len(destroyed), failed)

    def _delete_ended_hashes(self, cursor: str, limit: int, cutoff: datetime) -> CleanupBatch:
        query = select(_CV.c.lookup_id).where(_hashes_due(cutoff)).order_by(_CV.c.lookup_id)
        if cursor:
            query = query.where(_CV.c.lookup_id > cursor)
        with self._store.write() as s:
            lookups = list(s.scalars(query.limit(limit)))
            if lookups:
                s.execute(delete(_CV).where(_CV.c.lookup_id.in_(lookups), _hashes_due(cutoff)))
        return CleanupBatch(
            lookups[-1] if len(lookups) == limit else "", len(lookups), len(lookups)
        )

    def _archive(
        self, cursor: str, limit: int, cutoff: datetime, now: datetime, actor: str
    ) -> CleanupBatch:
        query = select(_CRED).where(_archive_due(cutoff)).order_by(_CRED.c.id)
        if cursor:
            query = query.where(_CRED.c.id > cursor)
        with self._store.write() as s:
            db = s.connection()
            rows = db.execute(query.limit(limit)).all()
            for row in rows:
                versions = _count(db, _CV, _CV.c.credential_id == row.id)
                # an id can end twice (one derived from an Idempotency-Key, made again after
                # Temporal forgot the first): the newer end replaces the older summary
                db.execute(delete(ArchivedCredentialRow).where(ArchivedCredentialRow.id == row.id))
                db.execute(insert(ArchivedCredentialRow), [_archived(row, versions, now)])
                db.execute(delete(_CV).where(_CV.c.credential_id == row.id))
                db.execute(delete(WarningRow).where(WarningRow.object_id == row.id))
                db.execute(delete(_CRED).where(_CRED.c.id == row.id))
                audit.append(
                    s,
                    audit.AuditEntry(
                        event_id=f"cleanup/{row.kind}/{row.id}/archived",
                        at=now,
                        actor=actor,
                        action=f"{row.kind}.archived",
                        object_kind=row.kind,
                        object_id=row.id,
                        reason=f"{row.status} more than cleanup.archive_after ago",
                        details={"status": row.status, "versions": versions},
                    ),
                )
        return CleanupBatch(rows[-1].id if len(rows) == limit else "", len(rows), len(rows))

    def _delete_events(self, limit: int, cutoff: datetime) -> CleanupBatch:
        events = _EVENTS
        deliveries = cast(Table, WebhookDeliveryRow.__table__)
        with self._store.write() as s:
            ids = list(
                s.scalars(
                    select(events.c.id)
                    .where(_events_due(cutoff))
                    .order_by(events.c.id)
                    .limit(limit)
                )
            )
            if ids:
                s.execute(delete(events).where(events.c.id.in_(ids)))
            # deliveries that ended: their event is gone or going (pending ones are kept)
            s.execute(
                delete(deliveries).where(
                    deliveries.c.status != "pending", deliveries.c.updated_at < cutoff
                )
            )
        # the cursor is the rows themselves: deleted ones are not found again
        return CleanupBatch("more" if len(ids) == limit else "", len(ids), len(ids))


def _material_due(cutoff: datetime) -> Any:
    return and_(_KV.c.state.in_(ENDED_VERSION_STATES), _KV.c.state_changed_at < cutoff)


def _hashes_due(cutoff: datetime) -> Any:
    final = (*ENDED_VERSION_STATES, str(VersionState.DESTROYED))
    return and_(_CV.c.state.in_(final), _CV.c.state_changed_at < cutoff)


def _archive_due(cutoff: datetime) -> Any:
    return and_(_CRED.c.status.in_(ENDED_STATUSES), _CRED.c.updated_at < cutoff)


def _events_due(cutoff: datetime) -> Any:
    # never the newest: SQLite would then hand out its id again, and the webhook dispatcher's
    # and /events' cursors would skip the events that get it
    newest = select(func.max(_EVENTS.c.id)).scalar_subquery()
    return and_(_EVENTS.c.at < cutoff, _EVENTS.c.id < newest)


def _count(db: Any, table: Table, where: Any) -> int:
    return int(db.scalar(select(func.count()).select_from(table).where(where)) or 0)


def _archived(row: Any, versions: int, now: datetime) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "type": row.type,
        "environment": row.environment,
        "name": row.name,
        "owner": row.owner,
        "status": row.status,
        "versions": versions,
        "usage_count": row.usage_count,
        "failure_count": row.failure_count,
        "last_used_at": row.last_used_at,
        "created_at": row.created_at,
        "ended_at": row.updated_at,
        "archived_at": now,
    }
