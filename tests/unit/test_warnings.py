"""Staged warnings ahead of rotation and expiry: stages, escalation, acknowledgement."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from core.lifecycle import (
    KeyLifecycle,
    LifecycleError,
    LifecyclePolicy,
    RotationReason,
    Transition,
    TransitionKind,
    WarningTarget,
    acknowledge,
    apply_timed,
    new_key,
    next_transition,
    open_warnings,
    prune,
    resume,
    rotate,
    suspend,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DAY = 86_400
K = TransitionKind
ROTATION, EXPIRY = WarningTarget.ROTATION, WarningTarget.EXPIRY

# rotates every 30 days; warned 7, 3 and 1 day ahead; expiry warned 30, 7 and 1 day ahead
STAGED = LifecyclePolicy(
    rotation_interval=30 * DAY,
    warning_threshold=7 * DAY,
    max_lifetime=90 * DAY,
    grace_period=2 * DAY,
    rotation_warnings=(7 * DAY, 3 * DAY, DAY),
    expiry_warnings=(30 * DAY, 7 * DAY, DAY),
)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def step(key: KeyLifecycle, now: datetime) -> tuple[KeyLifecycle, Transition]:
    """Apply the next transition, which must be due by `now`, as the workflow does."""
    t = next_transition(key, now)
    assert t is not None and t.at <= now, t
    if t.kind == K.ROTATE:
        return prune(rotate(key, now, RotationReason.SCHEDULED)), t
    return prune(apply_timed(key, t, now)), t


def seen(key: KeyLifecycle) -> list[tuple[str, int, str, bool]]:
    return [(w.target, w.stage, w.severity, w.acknowledged_at is not None) for w in key.warnings]


def test_unacknowledged_stages_escalate() -> None:
    key = new_key(STAGED, T0)
    assert next_transition(key, T0) == Transition(K.WARN, day(23), 1, 1)
    key, _ = step(key, day(23))
    key, t = step(key, day(27))
    assert t == Transition(K.WARN, day(27), 1, 2)
    key, t = step(key, day(29))
    assert t == Transition(K.WARN, day(29), 1, 3)
    assert seen(key) == [
        (ROTATION, 1, "notice", False),
        (ROTATION, 2, "warning", False),
        (ROTATION, 3, "critical", False),
    ]
    assert {(w.deadline, w.stages, w.version) for w in key.warnings} == {(day(30), 3, 1)}
    # the rotation ends them: the next version's stages start again at notice
    key, t = step(key, day(30))
    assert t.kind == K.ROTATE and key.warnings == ()
    key, _ = step(key, day(32))  # the grace period ends
    assert next_transition(key, day(33)) == Transition(K.WARN, day(53), 2, 1)


def test_acknowledged_stages_do_not_escalate() -> None:
    key, _ = step(new_key(STAGED, T0), day(23))
    key = acknowledge(key, day(24), "alice")
    assert key.warnings[0].acknowledged_by == "alice"
    assert key.warnings[0].acknowledged_at == day(24)
    key, _ = step(key, day(27))
    key, _ = step(key, day(29))
    # stage 2 followed an acknowledged stage; stage 3 follows the unacknowledged stage 2
    assert seen(key) == [
        (ROTATION, 1, "notice", True),
        (ROTATION, 2, "notice", False),
        (ROTATION, 3, "warning", False),
    ]


def test_acknowledge_needs_an_open_warning_of_the_target() -> None:
    key = new_key(STAGED, T0)
    with pytest.raises(LifecycleError, match="no unacknowledged warning"):
        acknowledge(key, T0, "alice")
    key, _ = step(key, day(23))
    with pytest.raises(LifecycleError, match="no unacknowledged warning"):
        acknowledge(key, day(23), "alice", EXPIRY)
    key = acknowledge(key, day(23), "alice", ROTATION)
    with pytest.raises(LifecycleError, match="no unacknowledged warning"):
        acknowledge(key, day(24), "bob")
    assert key.warnings[0].acknowledged_by == "alice"


def test_expiry_warnings_before_the_key_expires() -> None:
    # expires on day 50: the 30-day stage falls on day 20, the 7-day on day 43, the 1-day on 49
    key = new_key(STAGED, T0, expires_at=day(50))
    timeline = []
    now = T0
    while (t := next_transition(key, now)) is not None and t.kind != K.EXPIRE_KEY:
        now = max(now, t.at)
        key, t = step(key, now)
        timeline.append((t.kind, t.at, t.stage))
    assert timeline == [
        (K.WARN_EXPIRY, day(20), 1),
        (K.WARN, day(23), 1),
        (K.WARN, day(27), 2),
        (K.WARN, day(29), 3),
        (K.ROTATE, day(30), 0),
        (K.END_GRACE, day(32), 0),
        (K.WARN_EXPIRY, day(43), 2),
        (K.WARN_EXPIRY, day(49), 3),
    ]
    # the rotation did not end the expiry warnings: the key's deadline did not move
    assert [(w.stage, w.version, w.deadline, w.severity) for w in key.warnings] == [
        (1, 0, day(50), "notice"),
        (2, 0, day(50), "warning"),
        (3, 0, day(50), "critical"),
    ]


def test_stages_already_past_when_the_key_is_made_are_skipped() -> None:
    key = new_key(STAGED, T0, expires_at=day(5))
    assert next_transition(key, T0) == Transition(K.WARN_EXPIRY, day(4), 0, 3)


def test_a_late_wake_raises_only_the_latest_due_stage() -> None:
    key = suspend(new_key(STAGED, T0), day(1))
    assert next_transition(key, day(28)).kind == K.EXPIRE_VERSION  # type: ignore[union-attr]
    key = resume(key, day(28))
    assert next_transition(key, day(28)) == Transition(K.WARN, day(27), 1, 2)
    key, _ = step(key, day(28))
    assert seen(key) == [(ROTATION, 2, "notice", False)]
    assert next_transition(key, day(28)) == Transition(K.WARN, day(29), 1, 3)


def test_unscheduled_objects_are_warned_before_their_version_expires() -> None:
    # an API credential without scheduled rotation: its secret ends at its max lifetime
    policy = replace(STAGED, scheduled=False)
    key = new_key(policy, T0)
    assert next_transition(key, T0) == Transition(K.WARN_EXPIRY, day(60), 1, 1)
    key, _ = step(key, day(60))
    assert open_warnings(key)[0].deadline == day(90)
    # a reroll gives a new secret with its own max lifetime: the old warning is moot
    key = prune(rotate(key, day(61), RotationReason.MANUAL))
    assert key.warnings == ()
    assert next_transition(key, day(61)) == Transition(K.END_GRACE, day(63), 1)
    key, _ = step(key, day(63))
    assert next_transition(key, day(64)) == Transition(K.WARN_EXPIRY, day(121), 2, 1)


def test_warnings_stay_raised_while_suspended() -> None:
    key, _ = step(new_key(STAGED, T0), day(23))
    key = prune(suspend(key, day(24)))
    assert seen(key) == [(ROTATION, 1, "notice", False)]
    key = prune(resume(key, day(25)))
    assert next_transition(key, day(25)) == Transition(K.WARN, day(27), 1, 2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rotation_warnings": (7 * DAY, 7 * DAY)}, "rotation warnings must be positive"),
        ({"rotation_warnings": (7 * DAY, 9 * DAY)}, "rotation warnings must be positive"),
        ({"rotation_warnings": (6 * DAY, DAY)}, "first rotation warning must be the warning"),
        ({"expiry_warnings": (DAY, 0)}, "expiry warnings must be positive"),
    ],
)
def test_bad_stages_are_refused(changes: dict[str, tuple[int, ...]], message: str) -> None:
    with pytest.raises(LifecycleError, match=message):
        replace(STAGED, **changes)
