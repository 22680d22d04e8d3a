"""Activities over `core.audit`: applying the audit retention of the policy."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from activities.keys import store_failure
from core import audit
from core.policy import Policies
from core.store.db import Store


class AuditActivities:
    def __init__(self, store: Store, policies: Callable[[], Policies]) -> None:
        self._store = store
        self._policies = policies  # the policy in force now (PUT /config changes it)

    @activity.defn(name="apply_audit_retention")
    def apply_retention(self) -> int:
        """Summarise every record past its environment's retention, batch by batch; returns
        how many. A retried attempt goes on where the last one stopped (redacted records are
        not looked at again)."""
        now = datetime.now(UTC)
        policies = self._policies()
        cutoffs = {
            env: now - policy.audit_retention
            for env, policy in policies.environment_policies.items()
        }
        default = now - policies.audit_retention
        total = 0
        try:
            while True:
                with self._store.write() as s:
                    done = audit.apply_retention(s, cutoffs, default, now)
                if not done:
                    return total
                total += done
                activity.heartbeat(total)
        except SQLAlchemyError as e:
            raise store_failure(e) from None
