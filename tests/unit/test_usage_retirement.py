"""Usage-aware retirement: a grace version still in use is held (never past its hard expiry),
and with `retire_unused` one that goes unused retires before its grace ends."""

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
    VersionState,
    VersionTimes,
    apply_timed,
    needs_usage,
    new_key,
    next_transition,
    rotate,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
HOUR = 3600
K = TransitionKind
# rotates daily, grace 2 hours, a version lives 3 days; used within an hour counts as in use
POLICY = LifecyclePolicy(
    rotation_interval=24 * HOUR,
    warning_threshold=HOUR,
    max_lifetime=72 * HOUR,
    grace_period=2 * HOUR,
    usage_window=HOUR,
)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def rotated(policy: LifecyclePolicy = POLICY) -> tuple[KeyLifecycle, VersionTimes]:
    key = rotate(new_key(policy, T0), at(24), RotationReason.SCHEDULED)
    return key, key.version(1)


def test_a_version_used_when_its_grace_ends_is_held() -> None:
    key, v1 = rotated()
    end = next_transition(key, at(25))
    assert end == Transition(K.END_GRACE, at(26), 1) and needs_usage(key, end)
    # used 20 minutes before the grace ends: held until an hour after that use
    key = apply_timed(key, end, at(26), last_used=at(26) - timedelta(minutes=20))
    v1 = key.version(1)
    assert (v1.state, v1.held, v1.grace_until) == (VersionState.GRACE, True, at(26 + 2 / 3))
    # not used since: retired when the hold ends
    end = next_transition(key, at(26))
    assert end == Transition(K.END_GRACE, at(26 + 2 / 3), 1)
    key = apply_timed(key, end, end.at, last_used=at(26) - timedelta(minutes=20))
    assert key.version(1).state == VersionState.RETIRED


def test_a_hold_never_passes_the_hard_expiry() -> None:
    key, _ = rotated()
    until = at(26)
    for _ in range(100):  # in use, hour after hour
        key = apply_timed(key, Transition(K.END_GRACE, until, 1), until, last_used=until)
        v1 = key.version(1)
        if v1.state != VersionState.GRACE:
            break
        assert v1.held and v1.grace_until is not None and v1.grace_until <= at(72)
        until = v1.grace_until
    # held to the hard expiry (made at 0, lives 72 hours), and no further, though still in use
    assert until == at(72) and key.version(1).state == VersionState.RETIRED


def test_unused_or_without_a_window_it_retires_on_time() -> None:
    key, _ = rotated()
    old_use = at(24) - timedelta(minutes=5)  # last used while it was still active
    end = Transition(K.END_GRACE, at(26), 1)
    assert apply_timed(key, end, at(26), last_used=None).version(1).state == VersionState.RETIRED
    assert apply_timed(key, end, at(26), last_used=old_use).version(1).state == "retired"
    plain, _ = rotated(replace(POLICY, usage_window=0))
    assert not needs_usage(plain, end)
    assert apply_timed(plain, end, at(26), last_used=at(26)).version(1).state == "retired"


def test_unused_versions_retire_early_when_policy_allows() -> None:
    key, v1 = rotated(replace(POLICY, retire_unused=True))
    assert v1.usage_check_at == at(25)  # a window into its grace
    check = next_transition(key, at(24))
    assert check == Transition(K.CHECK_USAGE, at(25), 1)
    # used half an hour in: looked at again an hour after that use
    key = apply_timed(key, check, at(25), last_used=at(24.5))
    assert key.version(1).state == VersionState.GRACE
    assert key.version(1).usage_check_at == at(25.5)
    key = apply_timed(key, Transition(K.CHECK_USAGE, at(25.5), 1), at(25.5), last_used=at(24.5))
    assert (key.version(1).state, key.version(1).changed_at) == (VersionState.RETIRED, at(25.5))
    # a use late in grace: no check is left before the grace ends, which then decides
    late, _ = rotated(replace(POLICY, retire_unused=True))
    late = apply_timed(late, Transition(K.CHECK_USAGE, at(25), 1), at(25), last_used=at(25))
    assert late.version(1).usage_check_at is None
    assert next_transition(late, at(25)) == Transition(K.END_GRACE, at(26), 1)


def test_a_check_of_a_version_no_longer_in_grace_is_refused() -> None:
    key, _ = rotated(replace(POLICY, retire_unused=True))
    key = apply_timed(key, Transition(K.CHECK_USAGE, at(25), 1), at(25), last_used=None)
    with pytest.raises(LifecycleError, match="check_usage does not apply to version 1"):
        apply_timed(key, Transition(K.CHECK_USAGE, at(25), 1), at(25), last_used=None)


def test_retiring_unused_needs_a_window() -> None:
    with pytest.raises(LifecycleError, match="needs a positive usage window"):
        replace(POLICY, usage_window=0, retire_unused=True)
