"""The lifecycle loop every managed object's workflow runs (keys, API credentials).

The workflow is the single writer of its object's lifecycle state. It sleeps until the next
deadline computed by `core.lifecycle.next_transition` or until a message arrives, applies the
change, and has its commit activity project it (audited) into the store. Subclasses name the
kind, build the commit activity's input and carry their input into continue-as-new.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.keys import VersionRef
    from core.lifecycle import (
        TERMINAL_KEY_STATUSES,
        KeyLifecycle,
        LifecycleError,
        RotationReason,
        StagedWarning,
        TransitionKind,
        VersionState,
        WarningTarget,
        acknowledge,
        apply_timed,
        compromise,
        iso,
        may_rotate,
        needs_usage,
        next_rotation_at,
        next_transition,
        prune,
        resume,
        revoke,
        rotate,
        suspend,
    )
    from workflows.types import (
        SA_ALGORITHM,
        SA_NEXT_ROTATION,
        SA_STATE,
        AcknowledgeWarning,
        OperatorAction,
        PolicyUpdate,
        RequestOutcome,
        RotateRequest,
        RotationResult,
        StatusChange,
    )

# Generous for a local commit; short enough that a task lost with a crashed worker is
# retried on another within seconds.
COMMIT_TIMEOUT = timedelta(seconds=15)
COMMIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
)
# How a failed commit surfaces in the workflow (a local activity's failure arrives as its
# ApplicationError itself, a regular activity's wrapped in an ActivityError).
COMMIT_FAILED = (ActivityError, ApplicationError)
# After a rotation fails for a reason retrying cannot fix, try again after this long.
FAILED_ROTATION_BACKOFF = timedelta(hours=1)
RECENT_REQUESTS_KEPT = 64
MAX_COMMENT = 1000
MAX_ACTOR = 200
# histories from before the algorithm search attribute followed migrations replay without it
ALGORITHM_PATCH = "algorithm-search-attribute"
# A run continues as new once its history holds this many events (a timer-driven transition
# adds about seven). Replaying a run costs the worker 3 to 4 ms for each transition in it,
# and starting the next run costs the server about what one transition does (docs/scaling.md).
# Read when a workflow task starts: requests handled together in one task can take a run past
# it until the next. Running workflows depend on it: a new value needs a new patch id.
MAX_RUN_EVENTS = 40
# runs from before MAX_RUN_EVENTS replay without it (they continue when the server suggests)
RUN_LENGTH_PATCH = "continue-as-new-by-length"

# The audit action (`<kind>.<action>`) and event name (`<kind><Event>`) of each time-driven
# transition and status change.
TIMED_ACTIONS = {
    TransitionKind.WARN: ("rotation_warning", "Expiring"),
    TransitionKind.WARN_EXPIRY: ("expiry_warning", "Expiring"),
    TransitionKind.END_GRACE: ("version_retired", "VersionRetired"),
    TransitionKind.CHECK_USAGE: ("version_retired", "VersionRetired"),
    TransitionKind.EXPIRE_VERSION: ("version_expired", "VersionExpired"),
    TransitionKind.EXPIRE_KEY: ("expired", "Expired"),
    TransitionKind.REVOKE_SUSPENDED: ("revoked", "Revoked"),
}
STATUS_CHANGES = {
    "revoke": (revoke, "revoked", "Revoked"),
    "suspend": (suspend, "suspended", "Suspended"),
    "resume": (resume, "resumed", "Resumed"),
}


def permanent_failure(e: BaseException) -> ApplicationError | None:
    """The error of a commit that failed for good (raised non-retryable by the activity), or
    None. COMMIT_RETRY sets no attempt limit, so in practice every failed commit is one."""
    cause = e.cause if isinstance(e, ActivityError) else e
    if isinstance(cause, ApplicationError) and cause.non_retryable:
        return cause
    return None


class ManagedLifecycleWorkflow:
    """Generates, warns, rotates with grace, retires and expires one managed object.

    Messages: update `rotate` (RotateRequest -> RotationResult), update `change_status`
    (StatusChange), update `acknowledge_warnings` (AcknowledgeWarning -> int), update
    `wait_created`; signals `emergency_rotate`, `revoke`, `suspend`, `resume` (OperatorAction)
    and `acknowledge_warning` (AcknowledgeWarning); query `describe`.
    """

    KIND: ClassVar[str]
    # the commit activity (a method reference), its input type and the workflow's input type
    COMMIT: ClassVar[Callable[..., Any]]
    COMMIT_INPUT: ClassVar[type]
    INPUT: ClassVar[type]
    # the local activity answering a version's last use (keys: usage-aware retirement)
    LAST_USED: ClassVar[Callable[..., Any] | None] = None

    def __init__(self, input: Any) -> None:
        self._spec = input.spec
        self._key = input.lifecycle
        self._publish = input.publish_search_attributes
        self._created = input.created
        self._seq = input.transition_seq
        self._recent = list(input.recent_requests)
        self._lock = asyncio.Lock()
        self._wake = False
        self._rotation_retry_at = input.rotation_retry_at
        self._policy_version = input.policy_version
        self._skip_unchanged = input.skip_unchanged_search_attributes

    def _carry(self) -> Any:
        """The input of the next run (continue-as-new)."""
        return self.INPUT(
            spec=self._spec,
            lifecycle=self._key,
            publish_search_attributes=self._publish,
            created=True,
            transition_seq=self._seq,
            recent_requests=tuple(self._recent[-RECENT_REQUESTS_KEPT:]),
            rotation_retry_at=self._rotation_retry_at,
            policy_version=self._policy_version,
            skip_unchanged_search_attributes=self._skip_unchanged,
        )

    def _names(self, action: str, event: str) -> tuple[str, str]:
        return f"{self.KIND}.{action}", f"{self.KIND}{event}"

    async def _run(self) -> str:
        if not self._created:
            async with self._lock:
                imported = getattr(self._spec, "origin", "") == "imported"
                await self._commit(
                    self._key,
                    *self._names("imported" if imported else "created", "Created"),
                    version=1,
                    new_version=1,
                    actor=self._spec.created_by or "keyrotor",
                )
                self._created = True
        while self._key.status not in TERMINAL_KEY_STATUSES:
            if workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new()
            now = workflow.now()
            due = next_transition(self._key, now, rotation=self._rotation_allowed(now))
            if due is not None and due.at <= now:
                async with self._lock:
                    await self._apply_due()
                continue
            # Rather than sleep, in the task that applied the last transition: a wakeup of a
            # workflow the worker no longer caches replays the whole run.
            long_run = workflow.info().get_current_history_length() >= MAX_RUN_EVENTS
            if long_run and workflow.patched(RUN_LENGTH_PATCH):
                await self._continue_as_new()
            retry = self._rotation_retry_at
            wakes = [t for t in (due.at if due else None, retry) if t is not None and t > now]
            wake_at = min(wakes) if wakes else None
            self._wake = False
            try:
                await workflow.wait_condition(
                    lambda: self._wake,
                    timeout=None if wake_at is None else wake_at - now,
                    timeout_summary=None if due is None else f"{due.kind} v{due.version}",
                )
            except TimeoutError:
                pass
        await workflow.wait_condition(workflow.all_handlers_finished)
        return str(self._key.status)

    async def _continue_as_new(self) -> None:
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() and not self._lock.locked()
        )
        workflow.continue_as_new(self._carry())

    async def _apply_due(self) -> None:
        """Apply the transition that is due now (re-read under the lock: a handler may have
        changed the state while this waited)."""
        now = workflow.now()
        due = next_transition(self._key, now, rotation=self._rotation_allowed(now))
        if due is None or due.at > now:
            return
        if due.kind == TransitionKind.ROTATE:
            try:
                # Audit the first failure of a run only: a rotation that fails for good is
                # tried again every FAILED_ROTATION_BACKOFF, and one record per hour says nothing.
                await self._rotate(
                    RotationReason.SCHEDULED,
                    None,
                    "keyrotor",
                    "",
                    audit_failure=self._rotation_retry_at is None,
                )
                self._rotation_retry_at = None
            except COMMIT_FAILED as e:
                workflow.logger.error("scheduled rotation failed; retrying later: %s", e)
                self._rotation_retry_at = now + FAILED_ROTATION_BACKOFF
            return
        last_used = None
        ask = type(self).LAST_USED
        if needs_usage(self._key, due) and ask is not None:
            last_used = await workflow.execute_local_activity_method(
                ask,
                VersionRef(self._spec.key_id, due.version),
                start_to_close_timeout=COMMIT_TIMEOUT,
                retry_policy=COMMIT_RETRY,
            )
        new = apply_timed(self._key, due, now, last_used)
        reason = "suspended too long" if due.kind == TransitionKind.REVOKE_SUSPENDED else ""
        action = TIMED_ACTIONS[due.kind]
        if due.kind in (TransitionKind.END_GRACE, TransitionKind.CHECK_USAGE):
            v = new.version(due.version)
            if v.state == VersionState.GRACE and due.kind == TransitionKind.CHECK_USAGE:
                self._key = new  # still in use: looked at again later, nothing to commit
                return
            if v.state == VersionState.GRACE:
                action = ("version_held", "VersionHeld")
                reason = f"in use (last {iso(last_used)}): held until {iso(v.grace_until)}"
            elif due.kind == TransitionKind.CHECK_USAGE:
                reason = f"unused for {self._key.policy.usage_window} s in grace: retired early"
        warning = None
        if due.kind in (TransitionKind.WARN, TransitionKind.WARN_EXPIRY):
            warning = new.warnings[-1]
            reason = (
                f"{warning.severity}: stage {warning.stage} of {warning.stages}, "
                f"{warning.target} at {iso(warning.deadline)}"
            )
        await self._commit(
            new,
            *self._names(*action),
            version=due.version or None,
            reason=reason,
            warning=warning,
        )

    def _rotation_allowed(self, now: datetime) -> bool:
        return self._rotation_retry_at is None or now >= self._rotation_retry_at

    async def _rotate(
        self,
        reason: RotationReason,
        grace: int | None,
        actor: str,
        comment: str,
        *,
        audit_failure: bool = True,
    ) -> RotationResult:
        old = self._key.current()
        new = rotate(self._key, workflow.now(), reason, grace)
        verb = "emergency_rotated" if reason == RotationReason.COMPROMISE else "rotated"
        why = f"{reason}: {comment}" if comment else str(reason)
        try:
            await self._commit(
                new,
                *self._names(verb, "Rotated"),
                version=new.last_version,
                new_version=new.last_version,
                actor=actor,
                reason=why,
            )
        except COMMIT_FAILED as e:
            permanent = permanent_failure(e)
            if permanent is not None and audit_failure:
                # Retrying cannot help (permission, unsupported algorithm): leave a record of why
                # the rotation did not happen. The lifecycle is unchanged, so the current
                # version stays active; only the audit record and event are new.
                with contextlib.suppress(*COMMIT_FAILED):
                    await self._commit(
                        self._key,
                        *self._names("rotation_failed", "RotationFailed"),
                        version=old.number if old else None,
                        actor=actor,
                        reason=f"{permanent.type}: {permanent.message} (rotation: {why})",
                    )
            if reason == RotationReason.COMPROMISE and old is not None:
                # No new version, but the compromised one must stop being used all the same.
                with contextlib.suppress(*COMMIT_FAILED):
                    await self._commit(
                        compromise(self._key, workflow.now()),
                        *self._names("version_compromised", "VersionCompromised"),
                        version=old.number,
                        actor=actor,
                        reason=f"{why} (no new version could be made)",
                    )
            raise
        return RotationResult(from_version=old.number if old else 0, to_version=new.last_version)

    async def _commit(
        self,
        new: KeyLifecycle,
        action: str,
        event: str,
        *,
        version: int | None = None,
        new_version: int | None = None,
        actor: str = "keyrotor",
        reason: str = "",
        warning: StagedWarning | None = None,
    ) -> None:
        """Project `new` into the store (one audited transaction), then adopt it."""
        self._seq += 1
        # A local activity: the commit is short and idempotent, and running it inside the
        # workflow task saves two server round trips and a workflow task per transition.
        made = await workflow.execute_local_activity_method(
            type(self).COMMIT,
            self.COMMIT_INPUT(
                # What is committed is part of its id: a local activity leaves no trace in
                # history until its workflow task completes, so after a crash the same number
                # can be replayed by a different transition, which must not count as done.
                transition_id=f"{workflow.info().workflow_id}/{self._seq}:{action}:{version}",
                spec=self._spec,
                lifecycle=new,
                action=action,
                event=event,
                at=workflow.now(),
                # signals carry whatever an operator typed: keep it within the audit columns
                actor=actor[:MAX_ACTOR],
                reason=reason[:MAX_COMMENT],
                version=version,
                new_version=new_version,
                warning=warning,
            ),
            start_to_close_timeout=COMMIT_TIMEOUT,
            retry_policy=COMMIT_RETRY,
        )
        self._key = prune(new)
        self._wake = True
        if self._publish:
            nxt = next_rotation_at(self._key)
            updates: list[SearchAttributeUpdate[Any]] = [
                SA_STATE.value_set(str(self._key.status)),
                SA_NEXT_ROTATION.value_set(nxt)
                if nxt is not None
                else SA_NEXT_ROTATION.value_unset(),
            ]
            # a key's commit answers the new version's algorithm: a PQC migration changes it
            shown = workflow.info().typed_search_attributes.get(SA_ALGORITHM)
            if isinstance(made, str) and made != shown and workflow.patched(ALGORITHM_PATCH):
                updates.append(SA_ALGORITHM.value_set(made))
            # The start sets them as the first commit leaves them; an upsert that changes
            # nothing would still cost an event and a visibility write.
            current = workflow.info().typed_search_attributes
            unchanged = all(current.get(u.key) == u.value for u in updates)
            if not (unchanged and self._skip_unchanged):
                workflow.upsert_search_attributes(updates)

    # --- updates -------------------------------------------------------------------------

    @workflow.update
    async def wait_created(self) -> int:
        """Returns the active version once the key's first version is committed."""
        await workflow.wait_condition(lambda: self._created)
        current = self._key.current()
        return current.number if current else 0

    @workflow.update
    async def rotate(self, request: RotateRequest) -> RotationResult:
        """Rotate now; idempotent by `request_id`."""
        await workflow.wait_condition(lambda: self._created)
        async with self._lock:
            for done in self._recent:
                if request.request_id and done.request_id == request.request_id:
                    return RotationResult(done.from_version, done.to_version)
            if not may_rotate(self._key.status, request.reason):
                raise ApplicationError(
                    f"a {self._key.status} {self.KIND} cannot rotate", type="KeyStateError"
                )
            if request.expected_version and not self._is_current(request.expected_version):
                raise ApplicationError(
                    f"version {request.expected_version} was rotated already",
                    type="KeyStateError",
                )
            result = await self._rotate(
                RotationReason(request.reason),
                0 if request.reason == RotationReason.COMPROMISE else request.grace_period_seconds,
                request.actor or "api",
                request.comment,
            )
            if request.request_id:
                self._recent.append(
                    RequestOutcome(request.request_id, result.from_version, result.to_version)
                )
                del self._recent[:-RECENT_REQUESTS_KEPT]
            return result

    @rotate.validator
    def _validate_rotate(self, request: RotateRequest) -> None:
        if request.reason not in RotationReason.__members__.values():
            allowed = ", ".join(r.value for r in RotationReason)
            raise ValueError(f"reason must be one of {allowed}")
        grace = request.grace_period_seconds
        if grace is not None and not 0 <= grace <= self._key.policy.max_lifetime:
            raise ValueError("grace period must be between zero and the key's max lifetime")
        if len(request.comment) > MAX_COMMENT:
            raise ValueError(f"comment is longer than {MAX_COMMENT} characters")
        if any(r.request_id == request.request_id for r in self._recent if request.request_id):
            return
        if not may_rotate(self._key.status, request.reason):
            raise ValueError(f"a {self._key.status} {self.KIND} cannot rotate")
        if request.expected_version and not self._is_current(request.expected_version):
            # a state conflict (409), not bad input
            raise ApplicationError(
                f"version {request.expected_version} was rotated already", type="KeyStateError"
            )

    @workflow.update
    async def change_status(self, change: StatusChange) -> str:
        """Revoke, suspend or resume; answers the new status once it is committed."""
        await workflow.wait_condition(lambda: self._created)
        async with self._lock:
            try:
                await self._change_status(change.action, change.reason, change.actor or "api")
            except LifecycleError as e:
                # the state changed between validation and the lock (a concurrent request)
                raise ApplicationError(str(e), type="KeyStateError", non_retryable=True) from e
            return str(self._key.status)

    def _is_current(self, number: int) -> bool:
        current = self._key.current()
        return current is not None and current.number == number

    @change_status.validator
    def _validate_change_status(self, change: StatusChange) -> None:
        if change.action not in STATUS_CHANGES:
            raise ValueError(f"action must be one of {', '.join(STATUS_CHANGES)}")
        if len(change.reason) > MAX_COMMENT:
            raise ValueError(f"reason is longer than {MAX_COMMENT} characters")
        STATUS_CHANGES[change.action][0](self._key, workflow.now())  # raises LifecycleError

    async def _change_status(self, action: str, reason: str, actor: str) -> None:
        change, verb, event = STATUS_CHANGES[action]
        await self._commit(
            change(self._key, workflow.now()),
            *self._names(verb, event),
            actor=actor,
            reason=reason,
        )

    @workflow.update
    async def acknowledge_warnings(self, ack: AcknowledgeWarning) -> int:
        """Acknowledge the open warnings (of `ack.target` when given); answers how many."""
        await workflow.wait_condition(lambda: self._created)
        async with self._lock:
            try:
                return await self._acknowledge(ack, ack.actor or "api")
            except LifecycleError as e:  # acknowledged meanwhile (a concurrent request)
                raise ApplicationError(str(e), type="KeyStateError", non_retryable=True) from e

    @acknowledge_warnings.validator
    def _validate_acknowledge(self, ack: AcknowledgeWarning) -> None:
        if ack.target and ack.target not in WarningTarget.__members__.values():
            raise ValueError(f"target must be one of {', '.join(WarningTarget)}")
        if len(ack.reason) > MAX_COMMENT:
            raise ValueError(f"reason is longer than {MAX_COMMENT} characters")
        acknowledge(self._key, workflow.now(), "", self._target(ack))  # raises LifecycleError

    @staticmethod
    def _target(ack: AcknowledgeWarning) -> WarningTarget | None:
        return WarningTarget(ack.target) if ack.target else None

    async def _acknowledge(self, ack: AcknowledgeWarning, actor: str) -> int:
        before = self._key
        new = acknowledge(before, workflow.now(), actor[:MAX_ACTOR], self._target(ack))
        done = [w for w in new.warnings if w not in before.warnings]
        stages = ", ".join(f"{w.target} stage {w.stage}" for w in done)
        await self._commit(
            new,
            *self._names("warning_acknowledged", "WarningAcknowledged"),
            actor=actor,
            reason=f"{stages}: {ack.reason}" if ack.reason else stages,
        )
        return len(done)

    # --- signals (fire and forget: what cannot apply is logged and ignored) ------------------

    @workflow.signal
    async def acknowledge_warning(self, ack: AcknowledgeWarning | None = None) -> None:
        """Acknowledge the open warnings, so that the next stage does not escalate."""
        ack = ack or AcknowledgeWarning()
        await workflow.wait_condition(lambda: self._created)
        async with self._lock:
            try:
                await self._acknowledge(ack, ack.actor)
            except (LifecycleError, ValueError) as e:
                workflow.logger.warning("acknowledge_warning ignored: %s", e)
            except COMMIT_FAILED as e:
                workflow.logger.error("acknowledge_warning failed: %s", e)

    @workflow.signal
    async def policy_updated(self, update: PolicyUpdate) -> None:
        """Run under policy version `update.version` from now on (newer versions only)."""
        async with self._lock:
            if update.version <= self._policy_version:
                return
            self._key = replace(self._key, policy=update.policy)
            self._policy_version = update.version
            self._wake = True

    @workflow.signal
    async def emergency_rotate(self, action: OperatorAction | None = None) -> None:
        """The active version is compromised: replace it now, with no grace."""
        action = action or OperatorAction()
        await workflow.wait_condition(lambda: self._created)
        async with self._lock:
            if not may_rotate(self._key.status, RotationReason.COMPROMISE):
                workflow.logger.warning(
                    "emergency_rotate ignored: %s is %s", self.KIND, self._key.status
                )
                return
            try:
                await self._rotate(RotationReason.COMPROMISE, 0, action.actor, action.reason)
            except COMMIT_FAILED as e:
                workflow.logger.error("emergency rotation failed: %s", e)

    @workflow.signal
    async def revoke(self, action: OperatorAction | None = None) -> None:
        """Revoke the key: every live version is compromised and the workflow ends."""
        await self._signalled_status("revoke", action)

    @workflow.signal
    async def suspend(self, action: OperatorAction | None = None) -> None:
        """Suspend the key until `resume`."""
        await self._signalled_status("suspend", action)

    @workflow.signal
    async def resume(self, action: OperatorAction | None = None) -> None:
        """Resume a suspended key."""
        await self._signalled_status("resume", action)

    async def _signalled_status(self, name: str, action: OperatorAction | None) -> None:
        # A signal sent with no input (an empty form in the UI) must not fail the workflow task.
        action = action or OperatorAction()
        await workflow.wait_condition(lambda: self._created)
        async with self._lock:
            try:
                await self._change_status(name, action.reason, action.actor)
            except LifecycleError as e:
                workflow.logger.warning("%s ignored: %s", name, e)
            except COMMIT_FAILED as e:
                workflow.logger.error("%s failed: %s", name, e)
