"""The commit activity: idempotent under retries, and typed, non-retryable domain failures."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.keys import KeyActivities
from core.lifecycle import LifecyclePolicy, new_key
from core.objects import KeySpec, KeyTransitionCommit
from core.providers.base import ProviderConfigurationError, ProviderUnavailableError
from core.services import Services
from core.store.models import AuditRecordRow, KeyVersionRow

POLICY = LifecyclePolicy(
    rotation_interval=3600, warning_threshold=60, max_lifetime=7200, grace_period=60
)


def commit_for(spec: KeySpec) -> KeyTransitionCommit:
    now = datetime.now(UTC)
    return KeyTransitionCommit(
        transition_id=f"keyrotor/key/dev/{spec.key_id}/1:key.created:1",
        spec=spec,
        lifecycle=new_key(POLICY, now),
        action="key.created",
        event="keyCreated",
        at=now,
        version=1,
        new_version=1,
    )


def spec(key_id: str) -> KeySpec:
    return KeySpec(key_id, "dev", "signing", "Ed25519", "local", 256)


def test_a_retried_commit_commits_once(services: Services) -> None:
    env = ActivityEnvironment()
    commit = commit_for(spec("key_activitytest0000001"))
    for _ in range(3):
        env.run(KeyActivities(services.keys).commit_key_transition, commit)
    with services.store.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditRecordRow)) == 1
        rows = s.scalars(select(KeyVersionRow)).all()
        assert [(r.number, r.state) for r in rows] == [(1, "active")]
        material = rows[0].wrapped_material
    env.run(KeyActivities(services.keys).commit_key_transition, commit)
    with services.store.session() as s:  # material made once: a retry never replaces it
        assert s.scalars(select(KeyVersionRow)).one().wrapped_material == material


class FailingProvider:
    name = "local"
    disables_older = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    def create_version(self, *args: object, **kwargs: object) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (ProviderUnavailableError("vault is down"), True),
        (ProviderConfigurationError("provider 'vault' is not configured"), False),
    ],
)
def test_provider_errors_become_typed_application_errors(
    services: Services, error: Exception, retryable: bool
) -> None:
    services.providers["local"] = FailingProvider(error)  # type: ignore[assignment]
    with pytest.raises(ApplicationError) as failed:
        ActivityEnvironment().run(
            KeyActivities(services.keys).commit_key_transition,
            commit_for(spec("key_activitytest0000002")),
        )
    assert failed.value.type == type(error).__name__
    assert failed.value.non_retryable is (not retryable)
    with services.store.session() as s:  # nothing half-committed
        assert s.scalar(select(func.count()).select_from(AuditRecordRow)) == 0
