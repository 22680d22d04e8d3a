"""The state a lifecycle workflow restarts from, read back from the store (after `keyrotor
restore`, on a Temporal server that has never run them).

The store mirrors every committed transition, so a key's (or credential's) spec, its live
versions with their deadlines, its open warnings and its status are all there. The workflow
continues from that state as if continued-as-new: `created` (nothing to commit first), and a
transition sequence past every one already committed (each commit's audit record carries its
transition id, `<workflow id>/<seq>:<action>:<version>`), so a new transition can never be taken
for one already done. Versions in a final state are left out, as the workflow prunes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.algorithms import resolve
from core.lifecycle import (
    LIVE_STATES,
    TERMINAL_KEY_STATUSES,
    KeyLifecycle,
    KeyStatus,
    LifecyclePolicy,
    StagedWarning,
    VersionState,
    VersionTimes,
    WarningTarget,
)
from core.objects import CredentialSpec, KeySpec
from core.policy import Policies
from core.store.db import Store
from core.store.models import (
    AuditRecordRow,
    CredentialRow,
    CredentialVersionRow,
    KeyRow,
    KeyVersionRow,
    WarningRow,
)


@dataclass(frozen=True)
class RestartState:
    kind: str  # key, credential or handle
    workflow_id: str
    spec: KeySpec | CredentialSpec
    lifecycle: KeyLifecycle
    transition_seq: int


def restart_states(store: Store, policies: Policies) -> Iterator[RestartState]:
    """The restart state of every key, credential and handle family that has not ended."""
    ended = [str(s) for s in TERMINAL_KEY_STATUSES]
    with store.session() as db:
        for key in db.scalars(select(KeyRow).where(KeyRow.status.not_in(ended))).all():
            policy = policies.key_type(key.type)
            bits = (
                policy.key_bits
                if key.algorithm == policy.algorithm
                else resolve(key.algorithm).default_key_bits
            )
            spec = KeySpec(
                key.id,
                key.environment,
                key.type,
                key.algorithm,
                key.provider,
                bits,
                owner=key.owner,
                name=key.name,
                created_by=key.created_by,
                metadata={str(k): str(v) for k, v in key.metadata_.items()},
            )
            versions = db.scalars(select(KeyVersionRow).where(KeyVersionRow.key_id == key.id)).all()
            yield RestartState(
                "key",
                key.workflow_id,
                spec,
                _lifecycle(db, "key", key, versions, policy.lifecycle()),
                _last_seq(db, key.id, key.workflow_id),
            )
        rows = db.scalars(select(CredentialRow).where(CredentialRow.status.not_in(ended))).all()
        for row in rows:
            if row.kind == "handle":
                handle_policy = policies.handle_type(row.type)
                lifecycle_policy = handle_policy.lifecycle(policies.security)
                secret_bytes = handle_policy.handle_length
            else:
                lifecycle_policy = policies.credentials.lifecycle(scheduled=row.scheduled_rotation)
                secret_bytes = 32
            cspec = CredentialSpec(
                row.id,
                row.environment,
                name=row.name,
                owner=row.owner,
                scopes=tuple(row.scopes),
                metadata={str(k): str(v) for k, v in row.metadata_.items()},
                created_by=row.created_by,
                scheduled_rotation=row.scheduled_rotation,
                rate_limit=row.rate_limit,
                rate_limit_window=row.rate_limit_window,
                usage_limit=row.usage_limit,
                kind=row.kind,
                type=row.type,
                user_id=row.user_id,
                context={str(k): str(v) for k, v in row.context.items()},
                max_usage=row.max_usage,
                hash_algorithm=row.hash_algorithm,
                secret_bytes=secret_bytes,
            )
            cversions = db.scalars(
                select(CredentialVersionRow).where(CredentialVersionRow.credential_id == row.id)
            ).all()
            yield RestartState(
                row.kind,
                row.workflow_id,
                cspec,
                _lifecycle(db, row.kind, row, cversions, lifecycle_policy),
                _last_seq(db, row.id, row.workflow_id),
            )


def _lifecycle(
    db: Session, kind: str, row: Any, versions: Any, policy: LifecyclePolicy
) -> KeyLifecycle:
    made = [v for v in versions if v.state != VersionState.PENDING]
    live = sorted((v for v in made if v.state in LIVE_STATES), key=lambda v: v.number)
    status = KeyStatus(row.status)
    warnings = db.scalars(
        select(WarningRow).where(
            WarningRow.object_kind == kind,
            WarningRow.object_id == row.id,
            WarningRow.closed_at.is_(None),
        )
    ).all()
    return KeyLifecycle(
        status=status,
        policy=policy,
        versions=tuple(
            VersionTimes(
                number=v.number,
                state=VersionState(v.state),
                created_at=v.created_at,
                rotate_at=v.rotate_at,
                warn_at=v.warn_at,
                hard_expiry=v.hard_expiry,
                grace_until=v.grace_until,
                changed_at=v.state_changed_at,
                held=bool(getattr(v, "held", False)),
            )
            for v in live
        ),
        last_version=max((v.number for v in made), default=0),
        expires_at=row.expires_at,
        # the store keeps no suspension time of its own: the suspension was its last change
        suspended_at=row.updated_at if status == KeyStatus.SUSPENDED else None,
        warnings=tuple(
            StagedWarning(
                target=WarningTarget(w.target),
                deadline=w.deadline,
                stage=w.stage,
                stages=w.stages,
                raised_at=w.raised_at,
                severity=w.severity,
                version=w.version,
                acknowledged_at=w.acknowledged_at,
                acknowledged_by=w.acknowledged_by,
            )
            for w in sorted(warnings, key=lambda w: (w.target, w.deadline, w.stage))
        ),
    )


def _last_seq(db: Session, object_id: str, workflow_id: str) -> int:
    """The highest transition number among the object's audited commits."""
    prefix = workflow_id + "/"
    highest = 0
    for (event_id,) in db.execute(
        select(AuditRecordRow.event_id).where(AuditRecordRow.object_id == object_id)
    ):
        if event_id.startswith(prefix):
            number = event_id[len(prefix) :].split(":", 1)[0]
            if number.isdigit():
                highest = max(highest, int(number))
    return highest
