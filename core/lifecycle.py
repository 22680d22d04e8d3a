"""Version states and the pure functions that drive a key's lifecycle.

Nothing here reads a clock or does I/O: every function takes the time it should reason about,
so the workflow (which owns the state) and the tests (which explore it) get the same answers.
States follow NIST SP 800-57: pending -> active -> grace -> retired -> destroyed, with the side
states suspended, compromised (revoked) and expired.
"""

# No `from __future__ import annotations` here: the payload converter resolves the field types of
# these dataclasses with typing.get_type_hints on every conversion, also inside the workflow
# sandbox, whose module table does not hold this module; string annotations would fail to
# resolve there, and cost an eval each time elsewhere (tests/unit/test_payload_types.py).

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise


class VersionState(StrEnum):
    """The state of one numbered version of a managed object."""

    PENDING = "pending"
    ACTIVE = "active"
    GRACE = "grace"
    RETIRED = "retired"
    DESTROYED = "destroyed"
    SUSPENDED = "suspended"
    COMPROMISED = "compromised"
    EXPIRED = "expired"


class KeyStatus(StrEnum):
    """The state of the logical key (its workflow ends in revoked or expired)."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"


class RotationReason(StrEnum):
    """Why a new version was made; `compromise` revokes the old version with no grace."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    USAGE_EXHAUSTED = "usage_exhausted"
    ANOMALY = "anomaly"
    COMPROMISE = "compromise"


class TransitionKind(StrEnum):
    """A time-driven change the workflow must make when its deadline arrives.

    The order of the members is the order in which transitions due at the same instant apply.
    """

    EXPIRE_KEY = "expire_key"
    WARN = "warn"
    WARN_EXPIRY = "warn_expiry"
    ROTATE = "rotate"
    END_GRACE = "end_grace"
    CHECK_USAGE = "check_usage"
    EXPIRE_VERSION = "expire_version"
    REVOKE_SUSPENDED = "revoke_suspended"


# Versions in these states can still be used (or come back into use); the others are final.
LIVE_STATES = frozenset({VersionState.ACTIVE, VersionState.GRACE, VersionState.SUSPENDED})
TERMINAL_KEY_STATUSES = frozenset({KeyStatus.REVOKED, KeyStatus.EXPIRED})

# What each version state allows on the use path: protect (encrypt, sign) only with the
# active version; process (decrypt, verify) with the active version and versions in grace.
PROTECT_STATES = frozenset({VersionState.ACTIVE})
PROCESS_STATES = frozenset({VersionState.ACTIVE, VersionState.GRACE})


class WarningTarget(StrEnum):
    """What a staged warning announces: the active version's scheduled rotation, or the end
    of the object's use (its `expiresAt`, or, when it does not rotate on schedule, its
    version's max lifetime)."""

    ROTATION = "rotation"
    EXPIRY = "expiry"


# A stage raised while earlier stages of the same deadline are still unacknowledged goes one
# step up this ladder per unacknowledged stage.
SEVERITIES = ("notice", "warning", "critical")


def iso(t: datetime | None) -> str | None:
    """A lifecycle time as the API and events show it (UTC, `Z`)."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


class LifecycleError(ValueError):
    """A requested lifecycle change is not allowed in the key's current state."""


@dataclass(frozen=True)
class LifecyclePolicy:
    """The timing part of a policy, in whole seconds (workflow payloads carry no timedelta)."""

    rotation_interval: int
    warning_threshold: int
    max_lifetime: int
    grace_period: int
    # False: no scheduled rotation or rotation warning (API credentials opt in); versions still
    # expire at their max lifetime and a rotation can still be asked for.
    scheduled: bool = True
    # > 0: a key suspended this long without being resumed is revoked (handle families)
    suspension_timeout: int = 0
    # Staged warnings: offsets in seconds before the deadline, longest first. Rotation
    # warnings default to the warning threshold alone; no expiry warnings unless configured.
    rotation_warnings: tuple[int, ...] = ()
    expiry_warnings: tuple[int, ...] = ()
    # Usage-aware retirement (0: off): a grace version used (decrypt, verify) within this many
    # seconds when its grace ends is held until it has gone unused that long (never past its
    # hard expiry); with `retire_unused`, one unused that long retires before its grace ends.
    usage_window: int = 0
    retire_unused: bool = False

    def warning_stages(self, target: WarningTarget) -> tuple[int, ...]:
        if target == WarningTarget.ROTATION:
            # a threshold of zero gives no notice ahead of rotation: no warning at all
            threshold = (self.warning_threshold,) if self.warning_threshold else ()
            return self.rotation_warnings or threshold
        return self.expiry_warnings

    def __post_init__(self) -> None:
        if self.rotation_interval <= 0:
            raise LifecycleError("rotation interval must be positive")
        if not 0 <= self.warning_threshold < self.rotation_interval:
            raise LifecycleError("warning threshold must be >= 0 and below the rotation interval")
        if self.max_lifetime < self.rotation_interval:
            raise LifecycleError("max lifetime must be at least the rotation interval")
        if not 0 <= self.grace_period <= self.max_lifetime:
            raise LifecycleError("grace period must be >= 0 and at most the max lifetime")
        if self.suspension_timeout < 0:
            raise LifecycleError("suspension timeout must not be negative")
        for name, stages in (
            ("rotation", self.rotation_warnings),
            ("expiry", self.expiry_warnings),
        ):
            if any(a <= b for a, b in pairwise(stages)) or any(o <= 0 for o in stages):
                raise LifecycleError(f"{name} warnings must be positive and longest first")
        if self.rotation_warnings and self.rotation_warnings[0] != self.warning_threshold:
            raise LifecycleError("the first rotation warning must be the warning threshold")
        if self.usage_window < 0 or (self.retire_unused and not self.usage_window):
            raise LifecycleError("retiring unused versions needs a positive usage window")


@dataclass(frozen=True)
class VersionTimes:
    """One version's state and its deadlines."""

    number: int
    state: VersionState
    created_at: datetime
    rotate_at: datetime
    warn_at: datetime
    hard_expiry: datetime
    grace_until: datetime | None = None
    changed_at: datetime | None = None
    # usage-aware retirement: its grace was extended because it was still in use
    held: bool = False
    # when to look whether this grace version went unused (policy `retire_unused`)
    usage_check_at: datetime | None = None


@dataclass(frozen=True)
class StagedWarning:
    """A warning raised ahead of `deadline`: stage `stage` of `stages` (1 is the earliest).

    `version` is the version it concerns (0: the key's own expiry). Acknowledging it keeps the
    next stage of the same deadline from escalating."""

    target: WarningTarget
    deadline: datetime
    stage: int
    stages: int
    raised_at: datetime
    severity: str
    version: int = 0
    acknowledged_at: datetime | None = None
    acknowledged_by: str = ""


@dataclass(frozen=True)
class KeyLifecycle:
    """A key's lifecycle state: the workflow holds it, the store mirrors it.

    `versions` holds the versions whose state can still change; a version that reached a final
    state is kept until that change is committed and then dropped (`prune`), so the state stays
    small however often the key rotates.
    """

    status: KeyStatus
    policy: LifecyclePolicy
    versions: tuple[VersionTimes, ...] = ()
    last_version: int = 0
    expires_at: datetime | None = None
    suspended_at: datetime | None = None
    # the warnings raised for the current deadlines (stale ones are pruned)
    warnings: tuple[StagedWarning, ...] = ()

    def active(self) -> VersionTimes | None:
        return next((v for v in self.versions if v.state == VersionState.ACTIVE), None)

    def current(self) -> VersionTimes | None:
        """The version that is (or, while suspended, would be) the one in use."""
        return next(
            (
                v
                for v in self.versions
                if v.state == VersionState.ACTIVE
                or (v.state == VersionState.SUSPENDED and v.grace_until is None)
            ),
            None,
        )

    def version(self, number: int) -> VersionTimes:
        for v in self.versions:
            if v.number == number:
                return v
        raise LifecycleError(f"version {number} is not live")


@dataclass(frozen=True)
class Transition:
    """The next time-driven change: what, when, and to which version (0 for the key)."""

    kind: TransitionKind
    at: datetime
    version: int = 0
    stage: int = 0  # the warning stage (WARN, WARN_EXPIRY)


def plan_version(number: int, created_at: datetime, policy: LifecyclePolicy) -> VersionTimes:
    """The deadlines of a version created at `created_at`."""
    rotate_at = created_at + timedelta(seconds=policy.rotation_interval)
    return VersionTimes(
        number=number,
        state=VersionState.ACTIVE,
        created_at=created_at,
        rotate_at=rotate_at,
        warn_at=rotate_at - timedelta(seconds=policy.warning_threshold),
        hard_expiry=created_at + timedelta(seconds=policy.max_lifetime),
        changed_at=created_at,
    )


def new_key(
    policy: LifecyclePolicy, now: datetime, expires_at: datetime | None = None
) -> KeyLifecycle:
    """A key with its first version active."""
    if expires_at is not None and expires_at <= now:
        raise LifecycleError("expiresAt must be in the future")
    return KeyLifecycle(
        status=KeyStatus.ACTIVE,
        policy=policy,
        versions=(plan_version(1, now, policy),),
        last_version=1,
        expires_at=expires_at,
    )


def next_transition(
    key: KeyLifecycle, now: datetime, *, rotation: bool = True
) -> Transition | None:
    """The earliest time-driven change of `key`, or None when nothing is scheduled.

    With `rotation=False` rotations are left out (while a failed rotation waits for its retry,
    grace periods must still end and versions still expire).

    A policy that is not `scheduled` never warns or rotates by itself.

    A transition whose `at` is not after `now` is due. While the key is suspended it neither
    warns nor rotates, but grace periods still end and versions still expire. An active key
    with no usable version (its version expired while suspended) is due to rotate at `now`.
    """
    if key.status in TERMINAL_KEY_STATUSES:
        return None
    scheduled = key.policy.scheduled
    candidates: list[Transition] = []
    if key.expires_at is not None:
        candidates.append(Transition(TransitionKind.EXPIRE_KEY, key.expires_at))
    for v in key.versions:
        if v.state == VersionState.ACTIVE and key.status == KeyStatus.ACTIVE and scheduled:
            if rotation:
                candidates.append(Transition(TransitionKind.ROTATE, v.rotate_at, v.number))
        if _in_grace(v) and v.grace_until is not None:
            candidates.append(Transition(TransitionKind.END_GRACE, v.grace_until, v.number))
        if v.state == VersionState.GRACE and v.usage_check_at is not None:
            candidates.append(Transition(TransitionKind.CHECK_USAGE, v.usage_check_at, v.number))
        if v.state in LIVE_STATES:
            candidates.append(Transition(TransitionKind.EXPIRE_VERSION, v.hard_expiry, v.number))
    for target in WarningTarget:
        warning = _next_warning(key, target, now)
        if warning is not None:
            candidates.append(warning)
    timeout = key.policy.suspension_timeout
    if key.status == KeyStatus.SUSPENDED and timeout and key.suspended_at is not None:
        at = key.suspended_at + timedelta(seconds=timeout)
        candidates.append(Transition(TransitionKind.REVOKE_SUSPENDED, at))
    if rotation and scheduled and key.status == KeyStatus.ACTIVE and key.active() is None:
        candidates.append(Transition(TransitionKind.ROTATE, now, 0))
    if not candidates:
        return None
    order = list(TransitionKind)
    return min(candidates, key=lambda t: (t.at, order.index(t.kind), t.version))


_WARN_KINDS = {
    WarningTarget.ROTATION: TransitionKind.WARN,
    WarningTarget.EXPIRY: TransitionKind.WARN_EXPIRY,
}


def warning_deadline(key: KeyLifecycle, target: WarningTarget) -> tuple[datetime, int] | None:
    """The deadline `target` warnings announce, and the version it concerns (0: the key)."""
    current = key.current()
    if key.status in TERMINAL_KEY_STATUSES or current is None:
        return None  # nothing in use: the next version's warnings count from its creation
    if target == WarningTarget.ROTATION:
        # while suspended too: its warnings stay raised until the version rotates
        if not key.policy.scheduled:
            return None
        return current.rotate_at, current.number
    ends = [] if key.expires_at is None else [(key.expires_at, 0)]
    if not key.policy.scheduled:
        ends.append((current.hard_expiry, current.number))
    return min(ends) if ends else None


def _next_warning(key: KeyLifecycle, target: WarningTarget, now: datetime) -> Transition | None:
    """The next stage of `target`'s warnings. Stages that fell due before the version in use
    was made are skipped (a credential made to expire in two days gets no "14 days left"
    warning); of stages that fell due while none was raised (a key resumed late in its
    version's life), only the latest is raised."""
    found = warning_deadline(key, target)
    if found is None:
        return None
    if target == WarningTarget.ROTATION and (key.status != KeyStatus.ACTIVE or not key.active()):
        return None
    deadline, version = found
    raised = max(
        (w.stage for w in key.warnings if w.target == target and w.deadline == deadline),
        default=0,
    )
    current = key.current()
    since = current.created_at if current else deadline  # warning_deadline found one in use
    stages = key.policy.warning_stages(target)
    pending = [
        (stage, at)
        for stage, offset in enumerate(stages, start=1)
        if stage > raised and (at := deadline - timedelta(seconds=offset)) > since
    ]
    if not pending:
        return None
    due = [p for p in pending if p[1] <= now]
    stage, at = due[-1] if due else pending[0]
    return Transition(_WARN_KINDS[target], at, version, stage)


def open_warnings(key: KeyLifecycle) -> tuple[StagedWarning, ...]:
    """The warnings whose deadline is still ahead (a rotation or a new version ends them)."""
    current = {t: warning_deadline(key, t) for t in WarningTarget}
    return tuple(w for w in key.warnings if (found := current[w.target]) and found[0] == w.deadline)


def _raise_warning(key: KeyLifecycle, t: Transition, now: datetime) -> KeyLifecycle:
    target = WarningTarget.ROTATION if t.kind == TransitionKind.WARN else WarningTarget.EXPIRY
    found = warning_deadline(key, target)
    expected = _next_warning(key, target, now)
    due = expected is not None and (expected.stage, expected.version) == (t.stage, t.version)
    if found is None or not due:
        raise LifecycleError(f"{target} warning {t.stage} for version {t.version} is not due")
    deadline, version = found
    earlier = [w for w in open_warnings(key) if w.target == target and w.deadline == deadline]
    unacknowledged = sum(1 for w in earlier if w.acknowledged_at is None)
    warning = StagedWarning(
        target=target,
        deadline=deadline,
        stage=t.stage,
        stages=len(key.policy.warning_stages(target)),
        raised_at=now,
        severity=SEVERITIES[min(unacknowledged, len(SEVERITIES) - 1)],
        version=version,
    )
    return replace(key, warnings=(*open_warnings(key), warning))


def acknowledge(
    key: KeyLifecycle, now: datetime, actor: str, target: WarningTarget | None = None
) -> KeyLifecycle:
    """Acknowledge every open warning (of `target`, when given)."""
    pending = [
        w
        for w in open_warnings(key)
        if w.acknowledged_at is None and (target is None or w.target == target)
    ]
    if not pending:
        raise LifecycleError("there is no unacknowledged warning")
    return replace(
        key,
        warnings=tuple(
            replace(w, acknowledged_at=now, acknowledged_by=actor) if w in pending else w
            for w in open_warnings(key)
        ),
    )


def _in_grace(v: VersionTimes) -> bool:
    """In grace, or suspended while in grace: its grace ends on time either way.

    Only a version that left `active` through rotation has `grace_until`, so a suspended
    version with one was in grace and returns there on resume."""
    return v.state == VersionState.GRACE or (
        v.state == VersionState.SUSPENDED and v.grace_until is not None
    )


def _set_version(key: KeyLifecycle, new: VersionTimes) -> KeyLifecycle:
    return replace(key, versions=tuple(new if v.number == new.number else v for v in key.versions))


def _move(v: VersionTimes, state: VersionState, now: datetime) -> VersionTimes:
    return replace(v, state=state, changed_at=now)


# The version states each version transition applies to (what next_transition plans them for).
_APPLIES_TO = {
    TransitionKind.EXPIRE_VERSION: LIVE_STATES,
    TransitionKind.CHECK_USAGE: frozenset({VersionState.GRACE}),
}


def needs_usage(key: KeyLifecycle, t: Transition) -> bool:
    """Whether applying `t` needs the version's last use (`apply_timed`'s `last_used`)."""
    return bool(key.policy.usage_window) and t.kind in (
        TransitionKind.END_GRACE,
        TransitionKind.CHECK_USAGE,
    )


def apply_timed(
    key: KeyLifecycle, t: Transition, now: datetime, last_used: datetime | None = None
) -> KeyLifecycle:
    """Apply a due transition other than ROTATE (rotation needs new material: use `rotate`).

    `last_used`, for END_GRACE and CHECK_USAGE under a usage window: when the version was last
    used (decrypt, verify) in grace, None if never. A grace version used within the window when
    its grace ends is held (its grace extended to the window after that use, never past its
    hard expiry); at CHECK_USAGE, one unused for the whole window retires early, else the next
    check is a window after its last use."""
    if t.kind == TransitionKind.ROTATE:
        raise LifecycleError("use rotate() for rotations")
    if t.at > now:
        raise LifecycleError(f"{t.kind} is not due before {t.at.isoformat()}")
    # A transition computed before a message changed the key may no longer apply: applying it
    # anyway would turn a revoked key into an expired one, or a compromised version into an
    # expired one, and lose the revocation.
    if key.status in TERMINAL_KEY_STATUSES:
        raise LifecycleError(f"the key is already {key.status}")
    if t.kind == TransitionKind.REVOKE_SUSPENDED:
        if key.status != KeyStatus.SUSPENDED:
            raise LifecycleError(f"a {key.status} key is not waiting to be revoked")
        return revoke(key, now)
    if t.kind in (TransitionKind.WARN, TransitionKind.WARN_EXPIRY):
        return _raise_warning(key, t, now)
    if t.kind == TransitionKind.EXPIRE_KEY:
        versions = tuple(
            _move(v, VersionState.EXPIRED, now) if v.state in LIVE_STATES else v
            for v in key.versions
        )
        return replace(key, status=KeyStatus.EXPIRED, versions=versions)
    v = key.version(t.version)
    applies = _in_grace(v) if t.kind == TransitionKind.END_GRACE else v.state in _APPLIES_TO[t.kind]
    if not applies:
        raise LifecycleError(f"{t.kind} does not apply to version {v.number}, which is {v.state}")
    window = timedelta(seconds=key.policy.usage_window)
    recent = last_used is not None and window and now - last_used < window
    if t.kind == TransitionKind.CHECK_USAGE:
        if not recent:
            return _set_version(key, _move(v, VersionState.RETIRED, now))
        assert last_used is not None and v.grace_until is not None
        check = last_used + window
        return _set_version(
            key, replace(v, usage_check_at=check if check < v.grace_until else None)
        )
    if t.kind == TransitionKind.END_GRACE:
        if recent and v.state == VersionState.GRACE and now < v.hard_expiry:
            assert last_used is not None
            until = min(last_used + window, v.hard_expiry)
            return _set_version(key, replace(v, grace_until=until, held=True, usage_check_at=None))
        return _set_version(key, _move(v, VersionState.RETIRED, now))
    return _set_version(key, _move(v, VersionState.EXPIRED, now))


def may_rotate(status: KeyStatus | str, reason: RotationReason | str) -> bool:
    """An active key rotates for any reason; a suspended one only for a compromise."""
    return status == KeyStatus.ACTIVE or (
        status == KeyStatus.SUSPENDED and reason == RotationReason.COMPROMISE
    )


def rotate(
    key: KeyLifecycle,
    now: datetime,
    reason: RotationReason,
    grace_period: int | None = None,
) -> KeyLifecycle:
    """A new active version; the old one enters grace, or is compromised at once.

    The grace period (the policy's unless overridden) never runs past the old version's hard
    expiry; a zero grace retires the old version immediately. A suspended key can only take a
    compromise rotation: its old version is compromised and the new one stays suspended
    until the key is resumed (a suspicion must not block an emergency rotation).
    """
    if not may_rotate(key.status, reason):
        raise LifecycleError(f"a {key.status} key cannot rotate")
    suspended = key.status == KeyStatus.SUSPENDED
    grace = key.policy.grace_period if grace_period is None else grace_period
    if grace < 0:
        raise LifecycleError("grace period must not be negative")
    versions = list(key.versions)
    old = key.current()
    if old is not None:
        if reason == RotationReason.COMPROMISE:
            moved = _move(old, VersionState.COMPROMISED, now)
        else:
            until = min(now + timedelta(seconds=grace), old.hard_expiry)
            if until <= now:
                moved = _move(old, VersionState.RETIRED, now)
            else:
                policy = key.policy
                check = now + timedelta(seconds=policy.usage_window)
                moved = replace(
                    _move(old, VersionState.GRACE, now),
                    grace_until=until,
                    usage_check_at=check if policy.retire_unused and check < until else None,
                )
        versions = [moved if v.number == old.number else v for v in versions]
    number = key.last_version + 1
    new = plan_version(number, now, key.policy)
    versions.append(replace(new, state=VersionState.SUSPENDED) if suspended else new)
    return replace(key, versions=tuple(versions), last_version=number)


def compromise(key: KeyLifecycle, now: datetime) -> KeyLifecycle:
    """Mark the version in use compromised without a successor: what an emergency rotation
    leaves when the new version cannot be made. Use fails closed until a rotation succeeds
    (an active key without an active version is due to rotate at once)."""
    current = key.current()
    if key.status in TERMINAL_KEY_STATUSES or current is None:
        raise LifecycleError(f"a {key.status} key has no version in use to compromise")
    return _set_version(key, _move(current, VersionState.COMPROMISED, now))


def revoke(key: KeyLifecycle, now: datetime) -> KeyLifecycle:
    """Revoke the key: every live version is compromised at once and the key is final."""
    if key.status in TERMINAL_KEY_STATUSES:
        raise LifecycleError(f"the key is already {key.status}")
    versions = tuple(
        _move(v, VersionState.COMPROMISED, now) if v.state in LIVE_STATES else v
        for v in key.versions
    )
    return replace(key, status=KeyStatus.REVOKED, versions=versions)


def suspend(key: KeyLifecycle, now: datetime) -> KeyLifecycle:
    """Suspend the key: its active and grace versions stop being usable until it is resumed
    (as a disabled key in AWS KMS or Vault refuses every version)."""
    if key.status != KeyStatus.ACTIVE:
        raise LifecycleError(f"a {key.status} key cannot be suspended")
    versions = tuple(
        _move(v, VersionState.SUSPENDED, now)
        if v.state in (VersionState.ACTIVE, VersionState.GRACE)
        else v
        for v in key.versions
    )
    return replace(key, status=KeyStatus.SUSPENDED, versions=versions, suspended_at=now)


def resume(key: KeyLifecycle, now: datetime) -> KeyLifecycle:
    """Resume a suspended key: versions go back to active or grace; a rotation that fell
    due meanwhile becomes due at once."""
    if key.status != KeyStatus.SUSPENDED:
        raise LifecycleError(f"a {key.status} key cannot be resumed")
    versions = tuple(
        _move(v, VersionState.GRACE if v.grace_until is not None else VersionState.ACTIVE, now)
        if v.state == VersionState.SUSPENDED
        else v
        for v in key.versions
    )
    return replace(key, status=KeyStatus.ACTIVE, versions=versions, suspended_at=None)


def prune(key: KeyLifecycle) -> KeyLifecycle:
    """Drop versions in final states (they are committed to the store already) and warnings
    whose deadline has passed or changed."""
    live = replace(key, versions=tuple(v for v in key.versions if v.state in LIVE_STATES))
    return replace(live, warnings=open_warnings(live))


def next_rotation_at(key: KeyLifecycle) -> datetime | None:
    """When the key rotates next on its schedule, if it is active."""
    active = key.active()
    if key.status != KeyStatus.ACTIVE or active is None or not key.policy.scheduled:
        return None
    return active.rotate_at
