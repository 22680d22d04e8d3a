"""core.keys on a real store: the use path honours deadlines even when the workflow is late, and a
commit reconciles versions left by a lost workflow task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.keys import KeyStateError, MalformedTokenError, parse_token
from core.lifecycle import LifecyclePolicy, RotationReason, new_key, revoke, rotate
from core.objects import KeySpec, KeyTransitionCommit
from core.services import Services

DAY = 86400
POLICY = LifecyclePolicy(
    rotation_interval=30 * DAY, warning_threshold=DAY, max_lifetime=60 * DAY, grace_period=DAY
)
SPEC = KeySpec("key_unitkeys000000001", "dev", "encryption", "AES-256-GCM", "local", 256)
WID = "keyrotor/key/dev/key_unitkeys000000001"


def commit(
    services: Services, seq: int, lifecycle: object, new_version: int | None, at: datetime
) -> None:
    services.keys.commit_transition(
        KeyTransitionCommit(
            transition_id=f"{WID}/{seq}:test:{new_version}",
            spec=SPEC,
            lifecycle=lifecycle,  # type: ignore[arg-type]
            action="test",
            event="test",
            at=at,
            new_version=new_version,
        )
    )


def test_past_lifetime_is_refused_even_if_the_workflow_is_late(services: Services) -> None:
    t0 = datetime.now(UTC) - timedelta(days=61)
    commit(services, 1, new_key(POLICY, t0), 1, t0)  # still "active" in the store
    with pytest.raises(KeyStateError, match="past its lifetime"):
        services.keys.encrypt(SPEC.key_id, b"x", b"")


def test_past_grace_is_refused_even_if_the_workflow_is_late(services: Services) -> None:
    t0 = datetime.now(UTC) - timedelta(days=3)
    key = new_key(POLICY, t0)
    commit(services, 1, key, 1, t0)
    old = services.keys.encrypt(SPEC.key_id, b"x", b"")
    key = rotate(key, t0 + timedelta(hours=1), RotationReason.MANUAL)  # grace ends t0 + 25 h
    commit(services, 2, key, 2, t0 + timedelta(hours=1))
    with pytest.raises(KeyStateError, match="past its grace"):
        services.keys.decrypt(SPEC.key_id, str(old.value), b"")


def test_a_commit_parks_versions_from_a_lost_timeline(services: Services) -> None:
    t0 = datetime.now(UTC)
    key = new_key(POLICY, t0)
    commit(services, 1, key, 1, t0)
    commit(services, 2, rotate(key, t0, RotationReason.MANUAL), 2, t0)  # then the task is lost
    commit(services, 2, revoke(key, t0), None, t0)  # the replay did a revoke at the same step
    _, versions = services.keys.get(SPEC.key_id)
    assert {v.number: v.state for v in versions} == {1: "compromised", 2: "pending"}
    with pytest.raises(KeyStateError):
        services.keys.encrypt(SPEC.key_id, b"x", b"")


@pytest.mark.parametrize("version", ["\u00b2", "1" * 10, "-1", "", "1.0"])
def test_token_versions_are_plain_small_numbers(version: str) -> None:
    with pytest.raises(MalformedTokenError):
        parse_token(f"kr:key_a:{version}:AAAA", "key_a")


def test_uses_of_grace_versions_are_recorded_for_usage_aware_retirement(
    services: Services,
) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=2)
    key = new_key(POLICY, t0)
    commit(services, 1, key, 1, t0)
    old = services.keys.encrypt(SPEC.key_id, b"x", b"")
    services.keys.decrypt(SPEC.key_id, str(old.value), b"")  # active: not a grace use
    assert services.keys.flush_grace_uses() == 0
    key = rotate(key, t0 + timedelta(hours=1), RotationReason.MANUAL)
    commit(services, 2, key, 2, t0 + timedelta(hours=1))
    before = datetime.now(UTC)
    for _ in range(3):
        services.keys.decrypt(SPEC.key_id, str(old.value), b"")
    services.keys.encrypt(SPEC.key_id, b"y", b"")  # the active version: not recorded
    assert services.keys.last_used(SPEC.key_id, 1) is None  # written by the flush
    assert services.keys.flush_grace_uses() == 1
    used = services.keys.last_used(SPEC.key_id, 1)
    assert used is not None and before <= used <= datetime.now(UTC)
    assert services.keys.last_used(SPEC.key_id, 2) is None
    assert services.keys.flush_grace_uses() == 0
