"""Activities of `CleanupWorkflow` over `core.cleanup`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from activities.keys import store_failure
from core import audit
from core.cleanup import CleanupBatch, CleanupService
from core.store.db import Store


@dataclass(frozen=True)
class CleanupBatchRequest:
    step: str
    cursor: str
    limit: int
    now: datetime  # the run's start: one cutoff per step for the whole run
    actor: str


@dataclass(frozen=True)
class CleanupReport:
    """A finished run, for its audit record."""

    workflow_id: str
    actor: str
    reason: str
    at: datetime
    counts: dict[str, int]


class CleanupActivities:
    def __init__(self, cleanup: CleanupService, store: Store) -> None:
        self._cleanup = cleanup
        self._store = store

    @activity.defn(name="cleanup_batch")
    def batch(self, request: CleanupBatchRequest) -> CleanupBatch:
        """One batch of one cleanup step."""
        try:
            return self._cleanup.batch(
                request.step, request.cursor, request.limit, request.now, request.actor
            )
        except SQLAlchemyError as e:
            raise store_failure(e) from None

    @activity.defn(name="finish_cleanup")
    def finish(self, report: CleanupReport) -> None:
        """Audit a finished run with what each step changed (`cleanup.completed`)."""
        try:
            with self._store.write() as s:
                if not audit.recorded(s, report.workflow_id):
                    audit.append(
                        s,
                        audit.AuditEntry(
                            event_id=report.workflow_id,
                            at=report.at,
                            actor=report.actor,
                            action="cleanup.completed",
                            object_kind="store",
                            object_id="cleanup",
                            reason=report.reason,
                            details=dict(report.counts),
                        ),
                    )
        except SQLAlchemyError as e:
            raise store_failure(e) from None
