"""Tests of core.lifecycle: the schedule of the shipped policy, every error, and a state machine
that drives random keys through random operations and checks the invariants after each step."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from core.lifecycle import (
    LIVE_STATES,
    PROCESS_STATES,
    PROTECT_STATES,
    SEVERITIES,
    TERMINAL_KEY_STATUSES,
    KeyLifecycle,
    KeyStatus,
    LifecycleError,
    LifecyclePolicy,
    RotationReason,
    Transition,
    TransitionKind,
    VersionState,
    VersionTimes,
    WarningTarget,
    apply_timed,
    new_key,
    next_rotation_at,
    next_transition,
    open_warnings,
    plan_version,
    prune,
    resume,
    revoke,
    rotate,
    suspend,
)
from core.policy import default_policy_path, load_policies

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DAY = 86_400
HOUR = 3_600

ENCRYPTION = LifecyclePolicy(
    rotation_interval=30 * DAY,
    warning_threshold=7 * DAY,
    max_lifetime=90 * DAY,
    grace_period=7 * DAY,
)
# Every rotation reason except compromise keeps the old version in grace.
GRACEFUL = [r for r in RotationReason if r != RotationReason.COMPROMISE]

K = TransitionKind
S = VersionState


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def states(key: KeyLifecycle) -> dict[int, VersionState]:
    return {v.number: v.state for v in key.versions}


def run_due(key: KeyLifecycle, now: datetime) -> tuple[KeyLifecycle, list[Transition]]:
    """What the workflow does when it wakes: apply every transition due at `now`, in order."""
    applied: list[Transition] = []
    while (t := next_transition(key, now)) is not None and t.at <= now:
        key = (
            rotate(key, now, RotationReason.SCHEDULED)
            if t.kind == K.ROTATE
            else apply_timed(key, t, now)
        )
        applied.append(t)
        assert len(applied) < 100, "the due transitions never run out"
    return key, applied


def follow_schedule(
    key: KeyLifecycle, until: datetime
) -> tuple[KeyLifecycle, list[tuple[TransitionKind, datetime, int]]]:
    """Sleep from deadline to deadline until `until`; return (kind, time, version) per step."""
    timeline: list[tuple[TransitionKind, datetime, int]] = []
    while (t := next_transition(key, until)) is not None and t.at <= until:
        key = (
            rotate(key, t.at, RotationReason.SCHEDULED)
            if t.kind == K.ROTATE
            else apply_timed(key, t, t.at)
        )
        timeline.append((t.kind, t.at, t.version))
        assert len(timeline) < 1000, "the schedule does not move forward"
    return key, timeline


# --- the shipped encryption policy ----------------------------------------------------------


def test_shipped_encryption_policy_is_the_one_used_here() -> None:
    policies = load_policies(default_policy_path())
    # its timing; the staged warnings have tests of their own (test_warnings.py)
    shipped = policies.key_type("encryption").lifecycle()
    assert replace(shipped, rotation_warnings=(), expiry_warnings=()) == ENCRYPTION


def test_first_version_deadlines() -> None:
    key = new_key(ENCRYPTION, T0)
    assert key.status == KeyStatus.ACTIVE
    assert key.last_version == 1
    assert key.expires_at is None
    assert key.versions == (
        VersionTimes(
            number=1,
            state=S.ACTIVE,
            created_at=T0,
            rotate_at=day(30),
            warn_at=day(23),
            hard_expiry=day(90),
            grace_until=None,
            changed_at=T0,
        ),
    )
    assert key.active() is key.versions[0]
    assert key.current() is key.versions[0]
    assert next_rotation_at(key) == day(30)


def test_encryption_schedule_timeline() -> None:
    key, timeline = follow_schedule(new_key(ENCRYPTION, T0), day(125))
    assert timeline == [
        (K.WARN, day(23), 1),
        (K.ROTATE, day(30), 1),
        (K.END_GRACE, day(37), 1),
        (K.WARN, day(53), 2),
        (K.ROTATE, day(60), 2),
        (K.END_GRACE, day(67), 2),
        (K.WARN, day(83), 3),
        (K.ROTATE, day(90), 3),
        (K.END_GRACE, day(97), 3),
        (K.WARN, day(113), 4),
        (K.ROTATE, day(120), 4),
    ]
    assert states(key) == {1: S.RETIRED, 2: S.RETIRED, 3: S.RETIRED, 4: S.GRACE, 5: S.ACTIVE}
    assert key.version(4).grace_until == day(127)
    v5 = key.version(5)
    assert (v5.created_at, v5.warn_at, v5.rotate_at, v5.hard_expiry) == (
        day(120),
        day(143),
        day(150),
        day(210),
    )
    assert next_transition(key, day(125)) == Transition(K.END_GRACE, day(127), 4)
    assert states(prune(key)) == {4: S.GRACE, 5: S.ACTIVE}


def test_each_step_of_the_first_rotation() -> None:
    key = new_key(ENCRYPTION, T0)
    assert next_transition(key, T0) == Transition(K.WARN, day(23), 1, 1)
    key = apply_timed(key, Transition(K.WARN, day(23), 1, 1), day(23))
    assert [(w.target, w.deadline, w.stage, w.stages, w.severity) for w in key.warnings] == [
        (WarningTarget.ROTATION, day(30), 1, 1, "notice")
    ]
    assert key.version(1).state == S.ACTIVE
    assert key.version(1).changed_at == T0  # a warning is not a state change
    assert next_transition(key, day(23)) == Transition(K.ROTATE, day(30), 1)
    key = rotate(key, day(30), RotationReason.SCHEDULED)
    v1, v2 = key.versions
    assert (v1.state, v1.grace_until, v1.changed_at) == (S.GRACE, day(37), day(30))
    assert (v2.number, v2.state, v2.created_at) == (2, S.ACTIVE, day(30))
    assert open_warnings(key) == ()  # the rotation it announced happened
    assert next_transition(key, day(30)) == Transition(K.END_GRACE, day(37), 1)
    key = apply_timed(key, Transition(K.END_GRACE, day(37), 1), day(37))
    assert (key.version(1).state, key.version(1).changed_at) == (S.RETIRED, day(37))
    assert next_transition(key, day(37)) == Transition(K.WARN, day(53), 2, 1)
    assert prune(key).versions == (key.version(2),)


def test_late_wake_applies_the_backlog_in_order() -> None:
    # A workflow that was down from day 1 to day 100 catches up in one go.
    key, applied = run_due(new_key(ENCRYPTION, T0), day(100))
    assert [(t.kind, t.at, t.version) for t in applied] == [
        (K.WARN, day(23), 1),
        (K.ROTATE, day(30), 1),
    ]
    # Rotated at day 100, past version 1's hard expiry (day 90): no grace is left for it, and
    # the new version's schedule counts from the actual rotation.
    assert (key.version(1).state, key.version(1).grace_until) == (S.RETIRED, None)
    assert key.version(2).created_at == day(100)
    assert next_transition(key, day(100)) == Transition(K.WARN, day(123), 2, 1)


def test_rotation_after_hard_expiry_retires_the_old_version_at_once() -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(95), RotationReason.SCHEDULED)
    assert key.version(1).state == S.RETIRED
    assert key.version(1).grace_until is None


def test_grace_is_capped_at_the_hard_expiry() -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(88), RotationReason.MANUAL)
    assert key.version(1).state == S.GRACE
    assert key.version(1).grace_until == day(90)
    assert next_transition(key, day(88)) == Transition(K.END_GRACE, day(90), 1)


@pytest.mark.parametrize("reason", GRACEFUL)
def test_grace_override(reason: RotationReason) -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(10), reason, grace_period=3 * DAY)
    assert (key.version(1).state, key.version(1).grace_until) == (S.GRACE, day(13))
    key = rotate(new_key(ENCRYPTION, T0), day(10), reason, grace_period=500 * DAY)
    assert key.version(1).grace_until == day(90)


@pytest.mark.parametrize("reason", GRACEFUL)
def test_zero_grace_retires_at_once(reason: RotationReason) -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(10), reason, grace_period=0)
    assert (key.version(1).state, key.version(1).changed_at) == (S.RETIRED, day(10))
    zero = replace(ENCRYPTION, grace_period=0)
    key = rotate(new_key(zero, T0), day(10), reason)
    assert key.version(1).state == S.RETIRED


@pytest.mark.parametrize("grace", [None, 0, 3 * DAY])
def test_compromise_rotation_has_no_grace(grace: int | None) -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(10), RotationReason.COMPROMISE, grace)
    v1 = key.version(1)
    assert (v1.state, v1.grace_until, v1.changed_at) == (S.COMPROMISED, None, day(10))
    assert key.active() == key.version(2)
    assert next_transition(key, day(10)) == Transition(K.WARN, day(33), 2, 1)


def test_manual_rotation_before_the_warning_skips_it() -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(5), RotationReason.MANUAL)
    assert key.warnings == ()
    key, timeline = follow_schedule(key, day(30))
    assert timeline == [(K.END_GRACE, day(12), 1), (K.WARN, day(28), 2)]


def test_simultaneous_transitions_apply_in_enum_order() -> None:
    # grace = rotation interval: the old version's grace ends exactly when the new one rotates;
    # key expiry on the same instant.
    policy = LifecyclePolicy(
        rotation_interval=10, warning_threshold=0, max_lifetime=30, grace_period=10
    )
    key = new_key(policy, T0, expires_at=at(20))
    key, applied = run_due(key, at(10))
    assert [(t.kind, t.version) for t in applied] == [(K.ROTATE, 1)]
    key, applied = run_due(key, at(20))
    assert [(t.kind, t.version, t.at) for t in applied] == [(K.EXPIRE_KEY, 0, at(20))]
    assert key.status == KeyStatus.EXPIRED
    assert states(key) == {1: S.EXPIRED, 2: S.EXPIRED}

    key, timeline = follow_schedule(new_key(policy, T0), at(20))
    assert timeline == [
        (K.ROTATE, at(10), 1),
        (K.ROTATE, at(20), 2),
        (K.END_GRACE, at(20), 1),
    ]
    assert states(key) == {1: S.RETIRED, 2: S.GRACE, 3: S.ACTIVE}


def test_zero_warning_threshold_raises_no_rotation_warning() -> None:
    # PT0S gives no notice ahead of rotation, so there is nothing to warn about; expiry
    # warnings are configured apart and still come.
    policy = LifecyclePolicy(
        rotation_interval=10,
        warning_threshold=0,
        max_lifetime=100,
        grace_period=0,
        expiry_warnings=(5,),
    )
    key, timeline = follow_schedule(new_key(policy, T0, expires_at=at(35)), at(40))
    assert timeline == [
        (K.ROTATE, at(10), 1),
        (K.ROTATE, at(20), 2),
        (K.WARN_EXPIRY, at(30), 0),
        (K.ROTATE, at(30), 3),
        (K.EXPIRE_KEY, at(35), 0),
    ]
    assert [w.target for w in key.warnings] == [WarningTarget.EXPIRY]
    assert policy.warning_stages(WarningTarget.ROTATION) == ()


def test_rotation_on_the_hard_expiry_comes_before_expiry() -> None:
    policy = LifecyclePolicy(
        rotation_interval=10, warning_threshold=5, max_lifetime=10, grace_period=5
    )
    key, timeline = follow_schedule(new_key(policy, T0), at(10))
    assert timeline == [(K.WARN, at(5), 1), (K.ROTATE, at(10), 1)]
    assert key.version(1).state == S.RETIRED  # its grace would start at its hard expiry


def test_key_expiry() -> None:
    key = new_key(ENCRYPTION, T0, expires_at=day(40))
    key, timeline = follow_schedule(key, day(50))
    assert timeline == [
        (K.WARN, day(23), 1),
        (K.ROTATE, day(30), 1),
        (K.END_GRACE, day(37), 1),
        (K.EXPIRE_KEY, day(40), 0),
    ]
    assert key.status == KeyStatus.EXPIRED
    assert states(key) == {1: S.RETIRED, 2: S.EXPIRED}
    assert key.version(2).changed_at == day(40)
    assert next_transition(key, day(50)) is None
    assert next_rotation_at(key) is None
    assert prune(key).versions == ()


def test_key_expiry_while_in_grace_expires_the_grace_version() -> None:
    key = rotate(new_key(ENCRYPTION, T0, expires_at=day(12)), day(10), RotationReason.MANUAL)
    key = apply_timed(key, next_transition(key, day(12)) or pytest.fail("nothing planned"), day(12))
    assert states(key) == {1: S.EXPIRED, 2: S.EXPIRED}


# --- suspension -------------------------------------------------------------------------------


def test_suspended_key_neither_warns_nor_rotates() -> None:
    key = suspend(new_key(ENCRYPTION, T0), day(10))
    assert key.status == KeyStatus.SUSPENDED
    assert states(key) == {1: S.SUSPENDED}
    assert key.version(1).changed_at == day(10)
    assert key.active() is None
    assert key.current() == key.version(1)
    assert next_rotation_at(key) is None
    assert next_transition(key, day(10)) == Transition(K.EXPIRE_VERSION, day(90), 1)


def test_grace_still_ends_while_suspended() -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(30), RotationReason.SCHEDULED)
    key = suspend(key, day(31))
    # a suspended key refuses every version, the one in grace too
    assert states(key) == {1: S.SUSPENDED, 2: S.SUSPENDED}
    key, timeline = follow_schedule(key, day(200))
    assert timeline == [(K.END_GRACE, day(37), 1), (K.EXPIRE_VERSION, day(120), 2)]
    assert states(key) == {1: S.RETIRED, 2: S.EXPIRED}
    # Nothing is usable and nothing is planned until an operator resumes the key.
    assert next_transition(key, day(200)) is None


def test_resume_returns_versions_to_active_and_grace() -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(30), RotationReason.SCHEDULED)
    key = resume(suspend(key, day(31)), day(32))
    assert states(key) == {1: S.GRACE, 2: S.ACTIVE}
    assert key.version(1).grace_until == day(37)
    assert next_transition(key, day(32)) == Transition(K.END_GRACE, day(37), 1)


def test_emergency_rotation_of_a_suspended_key() -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(30), RotationReason.SCHEDULED)
    key = rotate(suspend(key, day(31)), day(32), RotationReason.COMPROMISE)
    assert key.status == KeyStatus.SUSPENDED
    assert states(key) == {1: S.SUSPENDED, 2: S.COMPROMISED, 3: S.SUSPENDED}
    assert key.current() == key.version(3)
    key = resume(key, day(33))
    assert states(key) == {1: S.GRACE, 2: S.COMPROMISED, 3: S.ACTIVE}


def test_resume_makes_an_overdue_rotation_due_at_once() -> None:
    key = resume(suspend(new_key(ENCRYPTION, T0), day(10)), day(40))
    assert key.status == KeyStatus.ACTIVE
    assert states(key) == {1: S.ACTIVE}
    assert key.version(1).changed_at == day(40)
    assert next_rotation_at(key) == day(30)
    key, applied = run_due(key, day(40))
    assert [(t.kind, t.at) for t in applied] == [(K.WARN, day(23)), (K.ROTATE, day(30))]
    assert key.version(2).created_at == day(40)
    assert key.version(1).grace_until == day(47)


def test_resume_before_the_deadlines_keeps_the_schedule() -> None:
    key = resume(suspend(new_key(ENCRYPTION, T0), day(10)), day(20))
    assert next_transition(key, day(20)) == Transition(K.WARN, day(23), 1, 1)


def test_resume_after_the_version_expired_rotates_now() -> None:
    key = suspend(new_key(ENCRYPTION, T0), day(10))
    key, timeline = follow_schedule(key, day(95))
    assert timeline == [(K.EXPIRE_VERSION, day(90), 1)]
    key = resume(key, day(100))
    assert key.active() is None
    assert next_rotation_at(key) is None
    assert next_transition(key, day(100)) == Transition(K.ROTATE, day(100), 0)
    assert next_transition(key, day(101)) == Transition(K.ROTATE, day(101), 0)
    key = rotate(key, day(100), RotationReason.SCHEDULED)
    assert states(key) == {1: S.EXPIRED, 2: S.ACTIVE}
    assert key.version(2).created_at == day(100)


# --- revocation -------------------------------------------------------------------------------


def test_revoke_compromises_every_live_version() -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(30), RotationReason.SCHEDULED)
    key = rotate(key, day(32), RotationReason.MANUAL)
    key = apply_timed(key, Transition(K.END_GRACE, day(37), 1), day(37))
    assert states(key) == {1: S.RETIRED, 2: S.GRACE, 3: S.ACTIVE}
    key = revoke(key, day(38))
    assert key.status == KeyStatus.REVOKED
    assert states(key) == {1: S.RETIRED, 2: S.COMPROMISED, 3: S.COMPROMISED}
    assert key.version(1).changed_at == day(37)
    assert key.version(3).changed_at == day(38)
    assert next_transition(key, day(1000)) is None
    assert next_rotation_at(key) is None
    assert prune(key).versions == ()


def test_revoke_a_suspended_key() -> None:
    key = revoke(suspend(new_key(ENCRYPTION, T0), day(1)), day(2))
    assert key.status == KeyStatus.REVOKED
    assert states(key) == {1: S.COMPROMISED}


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((0, 0, 10, 0), "rotation interval must be positive"),
        ((-5, 0, 10, 0), "rotation interval must be positive"),
        ((10, -1, 10, 0), "warning threshold must be >= 0 and below the rotation interval"),
        ((10, 10, 10, 0), "warning threshold must be >= 0 and below the rotation interval"),
        ((10, 11, 20, 0), "warning threshold must be >= 0 and below the rotation interval"),
        ((10, 5, 9, 0), "max lifetime must be at least the rotation interval"),
        ((10, 5, 20, -1), "grace period must be >= 0 and at most the max lifetime"),
        ((10, 5, 20, 21), "grace period must be >= 0 and at most the max lifetime"),
    ],
)
def test_invalid_lifecycle_policy(fields: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(LifecycleError) as info:
        LifecyclePolicy(*fields)
    assert str(info.value) == message


@pytest.mark.parametrize("fields", [(1, 0, 1, 0), (10, 9, 10, 10), (10, 0, 100, 0)])
def test_boundary_lifecycle_policies_are_valid(fields: tuple[int, int, int, int]) -> None:
    policy = LifecyclePolicy(*fields)
    v = new_key(policy, T0).version(1)
    assert v.created_at < v.warn_at <= v.rotate_at <= v.hard_expiry


@pytest.mark.parametrize("expires_at", [T0, T0 - timedelta(seconds=1)])
def test_new_key_refuses_an_expiry_not_in_the_future(expires_at: datetime) -> None:
    with pytest.raises(LifecycleError, match=r"^expiresAt must be in the future$"):
        new_key(ENCRYPTION, T0, expires_at=expires_at)


def test_version_lookup_of_an_unknown_version() -> None:
    key = new_key(ENCRYPTION, T0)
    with pytest.raises(LifecycleError, match=r"^version 2 is not live$"):
        key.version(2)
    pruned = prune(rotate(key, day(1), RotationReason.MANUAL, grace_period=0))
    assert [v.number for v in pruned.versions] == [2]
    with pytest.raises(LifecycleError, match=r"^version 1 is not live$"):
        pruned.version(1)


def test_apply_timed_refuses_rotations() -> None:
    key = new_key(ENCRYPTION, T0)
    with pytest.raises(LifecycleError, match=r"^use rotate\(\) for rotations$"):
        apply_timed(key, Transition(K.ROTATE, day(30), 1), day(30))


@pytest.mark.parametrize("kind", [K.WARN, K.END_GRACE, K.EXPIRE_VERSION, K.EXPIRE_KEY])
def test_apply_timed_refuses_what_is_not_due(kind: TransitionKind) -> None:
    key = new_key(ENCRYPTION, T0, expires_at=day(50))
    with pytest.raises(LifecycleError) as info:
        apply_timed(key, Transition(kind, day(23), 1), day(23) - timedelta(microseconds=1))
    assert str(info.value) == f"{kind} is not due before 2025-01-24T00:00:00+00:00"


def test_apply_timed_refuses_an_unknown_version() -> None:
    key = new_key(ENCRYPTION, T0)
    with pytest.raises(LifecycleError, match=r"^version 7 is not live$"):
        apply_timed(key, Transition(K.EXPIRE_VERSION, day(23), 7), day(23))
    with pytest.raises(LifecycleError, match=r"^rotation warning 1 for version 7 is not due$"):
        apply_timed(key, Transition(K.WARN, day(23), 7, 1), day(23))


@pytest.mark.parametrize("kind", [K.WARN, K.END_GRACE, K.EXPIRE_VERSION, K.EXPIRE_KEY])
def test_apply_timed_refuses_a_terminal_key(kind: TransitionKind) -> None:
    # The transition was planned before the key was revoked (a message arrived while the
    # workflow slept); applying it must not turn the revocation into an expiry.
    key = rotate(new_key(ENCRYPTION, T0, expires_at=day(40)), day(30), RotationReason.SCHEDULED)
    revoked = revoke(key, day(31))
    with pytest.raises(LifecycleError, match=r"^the key is already revoked$"):
        apply_timed(revoked, Transition(kind, day(37), 1), day(40))
    expired = apply_timed(key, Transition(K.EXPIRE_KEY, day(40)), day(40))
    with pytest.raises(LifecycleError, match=r"^the key is already expired$"):
        apply_timed(expired, Transition(kind, day(37), 1), day(40))


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        (K.END_GRACE, S.ACTIVE),
        (K.END_GRACE, S.RETIRED),
        (K.END_GRACE, S.COMPROMISED),
        (K.EXPIRE_VERSION, S.RETIRED),
        (K.EXPIRE_VERSION, S.COMPROMISED),
        (K.EXPIRE_VERSION, S.EXPIRED),
    ],
)
def test_apply_timed_refuses_a_transition_that_no_longer_applies(
    kind: TransitionKind, state: VersionState
) -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(30), RotationReason.SCHEDULED)
    key = replace(key, versions=(replace(key.version(1), state=state), key.version(2)))
    before = key
    with pytest.raises(LifecycleError) as info:
        apply_timed(key, Transition(kind, day(30), 1), day(100))
    assert str(info.value) == f"{kind} does not apply to version 1, which is {state}"
    assert key == before


@pytest.mark.parametrize("state", [S.GRACE, S.RETIRED, S.SUSPENDED])
def test_no_rotation_warning_for_a_version_that_is_not_active(state: VersionState) -> None:
    key = new_key(ENCRYPTION, T0)
    key = replace(key, versions=(replace(key.version(1), state=state),))
    with pytest.raises(LifecycleError, match=r"^rotation warning 1 for version 1 is not due$"):
        apply_timed(key, Transition(K.WARN, day(23), 1, 1), day(23))


def test_a_transition_applies_once() -> None:
    key = rotate(new_key(ENCRYPTION, T0), day(30), RotationReason.SCHEDULED)
    planned = next_transition(key, day(30))
    assert planned == Transition(K.END_GRACE, day(37), 1)
    key = rotate(key, day(31), RotationReason.MANUAL)  # v2 -> grace, v3 active
    key = apply_timed(key, planned, day(37))  # v1 still in grace: applies
    with pytest.raises(LifecycleError, match="does not apply to version 1, which is retired"):
        apply_timed(key, planned, day(38))


@pytest.mark.parametrize("status", ["suspended", "revoked", "expired"])
def test_rotate_refuses_a_key_that_is_not_active(status: str) -> None:
    key = _key_with_status(status)
    for reason in RotationReason:
        if status == "suspended" and reason == RotationReason.COMPROMISE:
            continue  # an emergency rotation applies to a suspended key
        with pytest.raises(LifecycleError, match=f"^a {status} key cannot rotate$"):
            rotate(key, day(50), reason)


def test_rotate_refuses_a_negative_grace() -> None:
    with pytest.raises(LifecycleError, match=r"^grace period must not be negative$"):
        rotate(new_key(ENCRYPTION, T0), day(1), RotationReason.MANUAL, grace_period=-1)


@pytest.mark.parametrize("status", ["revoked", "expired"])
def test_revoke_refuses_a_final_key(status: str) -> None:
    with pytest.raises(LifecycleError, match=f"^the key is already {status}$"):
        revoke(_key_with_status(status), day(50))


@pytest.mark.parametrize("status", ["suspended", "revoked", "expired"])
def test_suspend_refuses_a_key_that_is_not_active(status: str) -> None:
    with pytest.raises(LifecycleError, match=f"^a {status} key cannot be suspended$"):
        suspend(_key_with_status(status), day(50))


@pytest.mark.parametrize("status", ["active", "revoked", "expired"])
def test_resume_refuses_a_key_that_is_not_suspended(status: str) -> None:
    with pytest.raises(LifecycleError, match=f"^a {status} key cannot be resumed$"):
        resume(_key_with_status(status), day(50))


def _key_with_status(status: str) -> KeyLifecycle:
    key = new_key(ENCRYPTION, T0, expires_at=day(40))
    if status == "suspended":
        key = suspend(key, day(1))
    elif status == "revoked":
        key = revoke(key, day(1))
    elif status == "expired":
        key = apply_timed(key, Transition(K.EXPIRE_KEY, day(40)), day(40))
    assert key.status == status
    return key


def test_use_path_state_sets() -> None:
    # Protect (encrypt, sign) only with the active version; process also with grace versions.
    assert PROTECT_STATES == {S.ACTIVE}
    assert PROCESS_STATES == {S.ACTIVE, S.GRACE}
    assert LIVE_STATES == {S.ACTIVE, S.GRACE, S.SUSPENDED}
    assert TERMINAL_KEY_STATUSES == {KeyStatus.REVOKED, KeyStatus.EXPIRED}


def test_plan_version() -> None:
    policy = LifecyclePolicy(100, 30, 250, 10)
    assert plan_version(4, at(5), policy) == VersionTimes(
        number=4,
        state=S.ACTIVE,
        created_at=at(5),
        rotate_at=at(105),
        warn_at=at(75),
        hard_expiry=at(255),
        changed_at=at(5),
    )


# --- properties -----------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn) -> LifecyclePolicy:
    """Valid policies, small enough that deadlines collide often."""
    rotation = draw(st.integers(1, 50))
    warning = draw(st.integers(0, rotation - 1))
    lifetime = draw(st.integers(rotation, 4 * rotation))
    grace = draw(st.integers(0, lifetime))
    later = draw(st.sets(st.integers(1, max(1, warning - 1)), max_size=2)) if warning > 1 else set()
    rotation_warnings = (warning, *sorted(later, reverse=True)) if later else ()
    expiry = tuple(sorted(draw(st.sets(st.integers(1, 4 * rotation), max_size=3)), reverse=True))
    return LifecyclePolicy(
        rotation,
        warning,
        lifetime,
        grace,
        rotation_warnings=rotation_warnings,
        expiry_warnings=expiry,
    )


class KeyMachine(RuleBasedStateMachine):
    """Random operations on one key, as the workflow would make them, with the invariants of
    DESIGN.md section 3 checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.key = new_key(ENCRYPTION, T0)
        self.warned: set[tuple[WarningTarget, datetime, int]] = set()
        # The largest `at` applied since the last message: within one wake-up (and between
        # wake-ups with no message) the applied deadlines never go back in time.
        self.high_water = T0
        self.resumed = False
        self.final: dict[int, VersionTimes] = {}
        self.pruned: set[int] = set()

    @initialize(
        policy=policies(),
        expires_in=st.none() | st.none() | st.integers(1, 600),
    )
    def start(self, policy: LifecyclePolicy, expires_in: int | None) -> None:
        expires_at = None if expires_in is None else at(expires_in)
        self.key = new_key(policy, T0, expires_at=expires_at)
        assert self.key.expires_at == expires_at

    # -- time ----------------------------------------------------------------------------

    def _apply(self, t: Transition) -> None:
        assert t.at <= self.now
        if t.at >= self.now:
            self.resumed = False  # nothing overdue is left
        if not self.resumed:
            assert t.at >= self.high_water
        self.high_water = max(self.high_water, t.at)
        before = self.key
        if t.kind == K.ROTATE:
            self.key = rotate(self.key, self.now, RotationReason.SCHEDULED)
            self._check_rotation(before, RotationReason.SCHEDULED, None)
            return
        self.key = apply_timed(self.key, t, self.now)
        if t.kind in (K.WARN, K.WARN_EXPIRY):
            w = self.key.warnings[-1]
            assert (w.stage, w.version, w.raised_at) == (t.stage, t.version, self.now)
            assert (w.target, w.deadline, w.stage) not in self.warned, "warned twice"
            self.warned.add((w.target, w.deadline, w.stage))
            offsets = self.key.policy.warning_stages(w.target)
            assert t.at == w.deadline - timedelta(seconds=offsets[t.stage - 1])
            assert w.severity in SEVERITIES and w.acknowledged_at is None
            if w.target == WarningTarget.ROTATION:
                v = self.key.version(t.version)
                assert v.state == S.ACTIVE and w.deadline == v.rotate_at
                assert t.stage > 1 or t.at == v.warn_at
        elif t.kind == K.END_GRACE:
            old = before.version(t.version)
            assert old.state in (S.GRACE, S.SUSPENDED) and t.at == old.grace_until
            assert self.key.version(t.version).state == S.RETIRED
        elif t.kind == K.EXPIRE_VERSION:
            old = before.version(t.version)
            assert old.state in LIVE_STATES and t.at == old.hard_expiry
            assert self.key.version(t.version).state == S.EXPIRED
        elif t.kind == K.EXPIRE_KEY:
            assert t.at == before.expires_at
            assert self.key.status == KeyStatus.EXPIRED

    @rule()
    def sleep_until_next_deadline(self) -> None:
        t = next_transition(self.key, self.now)
        if t is None:
            assert (
                self.key.status in TERMINAL_KEY_STATUSES or self.key.status == KeyStatus.SUSPENDED
            )
            return
        self.now = max(self.now, t.at)
        self._apply(t)

    @rule(seconds=st.integers(0, 30) | st.integers(31, 400))
    def wake_later(self, seconds: int) -> None:
        # The workflow slept through several deadlines (a worker was down) and catches up.
        self.now += timedelta(seconds=seconds)
        steps = 0
        while (t := next_transition(self.key, self.now)) is not None and t.at <= self.now:
            self._apply(t)
            steps += 1
            assert steps < 200, "due transitions never run out"
        if t is not None:
            assert t.at > self.now

    # -- messages ------------------------------------------------------------------------

    def _message(self) -> None:
        self.high_water = self.now
        self.resumed = False

    @rule(
        reason=st.sampled_from(RotationReason),
        grace=st.none() | st.integers(0, 300),
    )
    def rotate_now(self, reason: RotationReason, grace: int | None) -> None:
        before = self.key
        emergency = before.status == KeyStatus.SUSPENDED and reason == RotationReason.COMPROMISE
        if before.status != KeyStatus.ACTIVE and not emergency:
            with pytest.raises(LifecycleError, match="key cannot rotate"):
                rotate(before, self.now, reason, grace)
            return
        self.key = rotate(before, self.now, reason, grace)
        self._message()
        self._check_rotation(before, reason, grace)

    def _check_rotation(
        self, before: KeyLifecycle, reason: RotationReason, grace: int | None
    ) -> None:
        key, now = self.key, self.now
        new = key.versions[-1]
        assert new.number == before.last_version + 1 == key.last_version
        planned = plan_version(new.number, now, key.policy)
        if before.status == KeyStatus.SUSPENDED:
            planned = replace(planned, state=S.SUSPENDED)
        assert new == planned
        old = before.current()
        assert len(key.versions) == len(before.versions) + 1
        for b in before.versions:
            if old is None or b.number != old.number:
                assert key.version(b.number) == b  # rotation touches only the active version
        if old is None:
            return
        moved = key.version(old.number)
        assert moved.changed_at == now
        if reason == RotationReason.COMPROMISE:
            assert moved.state == S.COMPROMISED and moved.grace_until is None
            return
        period = key.policy.grace_period if grace is None else grace
        until = min(now + timedelta(seconds=period), old.hard_expiry)
        if until > now:
            assert (moved.state, moved.grace_until) == (S.GRACE, until)
        else:
            assert (moved.state, moved.grace_until) == (S.RETIRED, None)

    @rule()
    def suspend_key(self) -> None:
        before = self.key
        if before.status != KeyStatus.ACTIVE:
            with pytest.raises(LifecycleError, match="cannot be suspended"):
                suspend(before, self.now)
            return
        self.key = suspend(before, self.now)
        self._message()
        assert self.key.status == KeyStatus.SUSPENDED
        assert self.key.active() is None
        assert not [v for v in self.key.versions if v.state == S.GRACE]
        active = before.active()
        assert self.key.current() == (
            None if active is None else replace(active, state=S.SUSPENDED, changed_at=self.now)
        )
        t = next_transition(self.key, self.now)
        assert t is None or t.kind not in (K.WARN, K.ROTATE)

    @rule()
    def resume_key(self) -> None:
        before = self.key
        if before.status != KeyStatus.SUSPENDED:
            with pytest.raises(LifecycleError, match="cannot be resumed"):
                resume(before, self.now)
            return
        self.key = resume(before, self.now)
        self._message()
        self.resumed = True  # overdue deadlines of the resumed version may now apply
        assert self.key.status == KeyStatus.ACTIVE
        suspended = before.current()
        if suspended is None:
            assert self.key.active() is None
            assert next_transition(self.key, self.now) is not None
        else:
            assert self.key.active() == replace(suspended, state=S.ACTIVE, changed_at=self.now)
        for b in before.versions:
            if b.state == S.SUSPENDED and b.grace_until is not None:
                got = self.key.version(b.number)
                assert (got.state, got.grace_until) == (S.GRACE, b.grace_until)

    # Revocation ends the story, so it is drawn rarely: most runs should live long enough to
    # rotate, suspend and resume many times.
    @rule(roll=st.integers(0, 7))
    def revoke_key(self, roll: int) -> None:
        if roll:
            return
        before = self.key
        if before.status in TERMINAL_KEY_STATUSES:
            with pytest.raises(LifecycleError, match="the key is already"):
                revoke(before, self.now)
            return
        self.key = revoke(before, self.now)
        self._message()
        assert self.key.status == KeyStatus.REVOKED
        for b in before.versions:
            got = self.key.version(b.number)
            if b.state in LIVE_STATES:
                assert (got.state, got.changed_at) == (S.COMPROMISED, self.now)
            else:
                assert got == b

    @rule()
    def prune_versions(self) -> None:
        before = self.key
        self.key = prune(before)
        assert self.key.versions == tuple(v for v in before.versions if v.state in LIVE_STATES)
        assert (self.key.status, self.key.last_version, self.key.expires_at) == (
            before.status,
            before.last_version,
            before.expires_at,
        )
        self.pruned |= {v.number for v in before.versions if v.state not in LIVE_STATES}

    @precondition(
        lambda self: (
            self.key.status not in TERMINAL_KEY_STATUSES
            and any(v.state not in LIVE_STATES for v in self.key.versions)
        )
    )
    @rule(data=st.data())
    def stale_transition_is_refused(self, data: st.DataObject) -> None:
        # A transition for a version that is already final never changes it.
        final = [v for v in self.key.versions if v.state not in LIVE_STATES]
        v = data.draw(st.sampled_from(final))
        kind = data.draw(st.sampled_from([K.END_GRACE, K.EXPIRE_VERSION]))
        with pytest.raises(LifecycleError, match="does not apply"):
            apply_timed(self.key, Transition(kind, self.now, v.number), self.now)

    @precondition(lambda self: self.key.status in TERMINAL_KEY_STATUSES)
    @rule(kind=st.sampled_from([K.WARN, K.END_GRACE, K.EXPIRE_VERSION, K.EXPIRE_KEY]))
    def transitions_of_a_final_key_are_refused(self, kind: TransitionKind) -> None:
        number = self.key.versions[-1].number if self.key.versions else 1
        with pytest.raises(LifecycleError, match="the key is already"):
            apply_timed(self.key, Transition(kind, self.now, number), self.now)

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def versions_are_well_formed(self) -> None:
        key, policy = self.key, self.key.policy
        numbers = [v.number for v in key.versions]
        assert numbers == sorted(set(numbers)), "version numbers strictly increase"
        assert all(1 <= n <= key.last_version for n in numbers)
        assert not set(numbers) & self.pruned, "a pruned version came back"
        for v in key.versions:
            assert v.rotate_at - v.created_at == timedelta(seconds=policy.rotation_interval)
            assert v.rotate_at - v.warn_at == timedelta(seconds=policy.warning_threshold)
            assert v.hard_expiry - v.created_at == timedelta(seconds=policy.max_lifetime)
            assert v.created_at <= (v.changed_at or v.created_at) <= self.now
            if v.state == S.GRACE:
                # Grace starts at the rotation (or a resume) and ends no earlier, never past the
                # hard expiry; a resume at the very end of grace leaves it due at once.
                assert v.grace_until is not None and v.changed_at is not None
                assert v.changed_at <= v.grace_until <= v.hard_expiry
            if v.state == S.ACTIVE:
                assert v.grace_until is None

    @invariant()
    def one_version_in_use(self) -> None:
        key = self.key
        active = [v for v in key.versions if v.state == S.ACTIVE]
        # suspended versions that were in use (not in grace when the key was suspended)
        suspended = [v for v in key.versions if v.state == S.SUSPENDED and v.grace_until is None]
        assert len(active) <= 1
        assert len(suspended) <= 1
        if key.status == KeyStatus.ACTIVE:
            assert not suspended
            if active:
                assert active[0].number == key.last_version == max(v.number for v in key.versions)
                assert next_rotation_at(key) == active[0].rotate_at
        elif key.status == KeyStatus.SUSPENDED:
            assert not active
            assert next_rotation_at(key) is None
            if suspended:
                assert suspended[0].number == key.last_version
        else:
            assert not active and not suspended
            assert not [v for v in key.versions if v.state in LIVE_STATES]
        if key.status != KeyStatus.SUSPENDED:
            assert not [v for v in key.versions if v.state == S.SUSPENDED]

    @invariant()
    def final_states_never_change(self) -> None:
        for v in self.key.versions:
            if v.state in LIVE_STATES:
                assert v.number not in self.final
            elif v.number in self.final:
                assert self.final[v.number] == v
            else:
                self.final[v.number] = v

    @invariant()
    def next_transition_is_consistent(self) -> None:
        key, now = self.key, self.now
        t = next_transition(key, now)
        if key.status in TERMINAL_KEY_STATUSES:
            assert t is None
            return
        if t is None:
            assert key.status == KeyStatus.SUSPENDED and key.expires_at is None
            assert not [v for v in key.versions if v.state in LIVE_STATES]
            return
        # It is the earliest deadline, and (but for "rotate now") it does not depend on the clock.
        later = next_transition(key, now + timedelta(seconds=10_000))
        if t.kind == K.ROTATE and t.version == 0:
            assert t.at == now and key.active() is None and key.status == KeyStatus.ACTIVE
            # Later, it is still "rotate now", unless something else fell due before that.
            assert later is not None and later.at <= now + timedelta(seconds=10_000)
            assert later.at > now or later.kind != K.ROTATE
        elif t.kind in (K.WARN, K.WARN_EXPIRY):
            # a warning stage that is due waits for no one: later, a later stage may be due
            assert later is not None and later.at >= t.at
        else:
            assert later == t
        if key.expires_at is not None:
            assert t.at <= key.expires_at
        for v in key.versions:
            if v.state == S.GRACE:
                assert v.grace_until is not None and t.at <= v.grace_until
            if v.state in LIVE_STATES:
                assert t.at <= v.hard_expiry
            if v.state == S.ACTIVE:
                assert t.at <= v.rotate_at
                raised = any(w.deadline == v.rotate_at for w in key.warnings)
                assert raised or t.at <= v.warn_at or t.kind == K.WARN
        if t.kind in (K.WARN, K.ROTATE):
            assert key.status == KeyStatus.ACTIVE


KeyMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestKeyMachine = KeyMachine.TestCase


# --- unscheduled policies and suspension timeouts (credentials and handle families) ----------


def test_an_unscheduled_policy_never_warns_or_rotates_but_still_expires() -> None:
    policy = LifecyclePolicy(
        rotation_interval=3600,
        warning_threshold=600,
        max_lifetime=7200,
        grace_period=60,
        scheduled=False,
    )
    key = new_key(policy, T0)
    due = next_transition(key, T0)
    assert due == Transition(TransitionKind.EXPIRE_VERSION, T0 + timedelta(hours=2), 1)
    assert next_rotation_at(key) is None
    # a requested rotation still works, and its grace still ends
    rotated = rotate(key, T0 + timedelta(minutes=5), RotationReason.MANUAL)
    assert next_transition(rotated, T0 + timedelta(minutes=5)) == Transition(
        TransitionKind.END_GRACE, T0 + timedelta(minutes=6), 1
    )


def test_a_suspension_timeout_revokes_a_key_that_is_not_resumed() -> None:
    policy = LifecyclePolicy(
        rotation_interval=3600,
        warning_threshold=600,
        max_lifetime=14400,
        grace_period=2,
        scheduled=False,
        suspension_timeout=1800,
    )
    suspended = suspend(new_key(policy, T0), T0 + timedelta(minutes=10))
    assert suspended.suspended_at == T0 + timedelta(minutes=10)
    due = next_transition(suspended, T0 + timedelta(minutes=10))
    assert due == Transition(TransitionKind.REVOKE_SUSPENDED, T0 + timedelta(minutes=40))
    with pytest.raises(LifecycleError):
        apply_timed(suspended, due, T0 + timedelta(minutes=39))
    revoked = apply_timed(suspended, due, T0 + timedelta(minutes=40))
    assert revoked.status == KeyStatus.REVOKED
    assert {v.state for v in revoked.versions} == {VersionState.COMPROMISED}
    # resumed in time: the timeout is gone, and a stale one no longer applies
    resumed = resume(suspended, T0 + timedelta(minutes=20))
    assert resumed.suspended_at is None
    assert next_transition(resumed, T0 + timedelta(minutes=20)).kind != (  # type: ignore[union-attr]
        TransitionKind.REVOKE_SUSPENDED
    )
    with pytest.raises(LifecycleError):
        apply_timed(resumed, due, T0 + timedelta(minutes=40))
    # without a timeout a suspension lasts until the versions expire
    plain = suspend(new_key(replace(policy, suspension_timeout=0), T0), T0)
    assert next_transition(plain, T0).kind == TransitionKind.EXPIRE_VERSION  # type: ignore[union-attr]
