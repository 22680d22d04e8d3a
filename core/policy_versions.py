"""Policy versions: the policy in force is the newest version in the store.

A process starting with a policy file whose text no version holds yet adds it (so editing the
file and restarting makes a version); `PUT /config` adds one through the API. Every process
reads the newest version at start and checks for a newer one every few seconds
(`Services.refresh_policies`); running workflows get it by the `policy_updated` signal, sent by
a bulk operation that `PUT /config` starts.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from core import audit
from core.lifecycle import KeyStatus, iso
from core.policy import Policies, PolicyError, parse_policies
from core.store.db import Store
from core.store.models import CredentialRow, KeyRow, PolicyVersionRow

LIVE = (str(KeyStatus.ACTIVE), str(KeyStatus.SUSPENDED))


def version_view(row: PolicyVersionRow) -> dict[str, Any]:
    return {
        "version": row.version,
        "source": row.source,
        "sha256": row.sha256,
        "createdBy": row.created_by,
        "createdAt": iso(row.created_at),
        "toml": row.text,
    }


class PolicyVersions:
    def __init__(self, store: Store) -> None:
        self._store = store

    def sync_file(self, text: str) -> None:
        """Store the file's text as a new version unless some version already holds it."""
        sha = hashlib.sha256(text.encode()).hexdigest()
        with self._store.session() as s:
            if s.scalar(select(PolicyVersionRow.version).where(PolicyVersionRow.sha256 == sha)):
                return
        first = self.newest_version() == 0
        try:
            # The first version is where the store starts (like the chain's genesis): it is
            # kept, not audited. Every later one is a change, and audited.
            self._append(text, "file", "keyrotor", "the policy file changed", audited=not first)
        except IntegrityError:
            pass  # another process stored a version at the same moment: newest wins

    def newest(self) -> PolicyVersionRow:
        with self._store.session() as s:
            row = s.scalars(
                select(PolicyVersionRow).order_by(PolicyVersionRow.version.desc()).limit(1)
            ).one()
            s.expunge(row)
            return row

    def newest_version(self) -> int:
        with self._store.session() as s:
            return int(s.scalar(select(func.max(PolicyVersionRow.version))) or 0)

    def get(self, version: int) -> PolicyVersionRow | None:
        with self._store.session() as s:
            row = s.get(PolicyVersionRow, version)
            if row is not None:
                s.expunge(row)
            return row

    def put(self, text: str, actor: str, reason: str) -> tuple[PolicyVersionRow, Policies, bool]:
        """Check `text` and make it the newest version; returns it, the policies, and whether
        it changed anything (the same text as the newest makes no version). PolicyError when
        the text is invalid or drops a key or handle type that live objects use."""
        policies = parse_policies(text, "PUT /config")
        self._check_in_use(policies)
        newest = self.newest()
        if newest.sha256 == hashlib.sha256(text.encode()).hexdigest():
            return newest, policies, False
        return self._append(text, "api", actor, reason), policies, True

    def _check_in_use(self, policies: Policies) -> None:
        with self._store.session() as s:
            key_types = set(
                s.scalars(select(KeyRow.type).where(KeyRow.status.in_(LIVE)).distinct())
            )
            handle_types = set(
                s.scalars(
                    select(CredentialRow.type)
                    .where(CredentialRow.kind == "handle", CredentialRow.status.in_(LIVE))
                    .distinct()
                )
            )
            environments = set(
                s.scalars(select(KeyRow.environment).where(KeyRow.status.in_(LIVE)).distinct())
            )
        for what, used, defined in (
            ("key_types", key_types, policies.key_types),
            ("handle_types", handle_types, policies.handle_types),
            ("defaults.environments", environments, policies.environments),
        ):
            missing = sorted(used - set(defined))
            if missing:
                raise PolicyError(
                    "PUT /config", what, f"{', '.join(missing)} in use by live objects"
                )

    def _append(
        self, text: str, source: str, actor: str, reason: str, audited: bool = True
    ) -> PolicyVersionRow:
        sha = hashlib.sha256(text.encode()).hexdigest()
        now = datetime.now(UTC)
        with self._store.write() as s:
            version = int(s.scalar(select(func.max(PolicyVersionRow.version))) or 0) + 1
            row = PolicyVersionRow(
                version=version,
                text=text,
                sha256=sha,
                source=source,
                created_by=actor,
                created_at=now,
            )
            s.add(row)
            s.flush()
            if audited:
                audit.append(
                    s,
                    audit.AuditEntry(
                        event_id=f"config/{version}/{uuid.uuid4()}",
                        at=now,
                        actor=actor,
                        action="config.updated",
                        object_kind="config",
                        object_id=str(version),
                        version=version,
                        reason=reason,
                        details={"sha256": sha, "source": source},
                    ),
                )
        stored = self.get(version)
        assert stored is not None
        return stored
