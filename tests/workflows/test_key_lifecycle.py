"""KeyLifecycleWorkflow on the time-skipping test server: months pass in milliseconds.

The activities are the real ones, writing a real SQLite store with the local provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from core.keys import KeyStateError
from core.lifecycle import LifecyclePolicy, iso, new_key
from core.objects import KeySpec
from core.providers.base import ProviderConfigurationError
from core.services import Services
from core.store.models import AuditRecordRow, EventRow, KeyRow, KeyVersionRow, WarningRow
from worker.main import build_worker
from workflows.key_lifecycle import KeyLifecycleWorkflow
from workflows.managed import MAX_RUN_EVENTS
from workflows.types import (
    AcknowledgeWarning,
    KeyDescription,
    KeyWorkflowInput,
    OperatorAction,
    RotateRequest,
    RotationResult,
    StatusChange,
    key_workflow_id,
)

DAY = 86400
# the default encryption policy of config/keyrotor.toml: P30D / P7D / P90D, grace P7D
POLICY = LifecyclePolicy(
    rotation_interval=30 * DAY,
    warning_threshold=7 * DAY,
    max_lifetime=90 * DAY,
    grace_period=7 * DAY,
)


STARTED: list[WorkflowHandle[KeyLifecycleWorkflow, str]] = []


@pytest.fixture
async def env(
    time_skipping_env: WorkflowEnvironment, services: Services, task_queue: str
) -> AsyncIterator[WorkflowEnvironment]:
    async with build_worker(time_skipping_env.client, services, task_queue):
        yield time_skipping_env
        # A workflow left running without its worker would hold the shared server's clock.
        while STARTED:
            handle = STARTED.pop()
            with contextlib.suppress(RPCError):
                await handle.terminate("test over")


async def start_key(
    env: WorkflowEnvironment,
    task_queue: str,
    expires_in: timedelta | None = None,
    policy: LifecyclePolicy = POLICY,
) -> tuple[WorkflowHandle[KeyLifecycleWorkflow, str], KeySpec, datetime]:
    now = await env.get_current_time()
    spec = KeySpec(
        key_id=f"key_{uuid.uuid4().hex[:20]}",
        environment="dev",
        type="encryption",
        algorithm="AES-256-GCM",
        provider="local",
        key_bits=256,
        owner="team-a",
    )
    lifecycle = new_key(policy, now, now + expires_in if expires_in else None)
    handle = await env.client.start_workflow(
        KeyLifecycleWorkflow.run,
        KeyWorkflowInput(spec=spec, lifecycle=lifecycle, publish_search_attributes=False),
        id=key_workflow_id("dev", spec.key_id),
        task_queue=task_queue,
    )
    STARTED.append(handle)
    assert await handle.execute_update(KeyLifecycleWorkflow.wait_created) == 1
    return handle, spec, now


def versions(services: Services, key_id: str) -> dict[int, str]:
    with services.store.session() as s:
        rows = s.scalars(select(KeyVersionRow).where(KeyVersionRow.key_id == key_id))
        return {v.number: v.state for v in rows}


def actions(services: Services, key_id: str) -> list[str]:
    with services.store.session() as s:
        q = select(AuditRecordRow.action).where(AuditRecordRow.object_id == key_id)
        return list(s.scalars(q.order_by(AuditRecordRow.seq)))


async def test_scheduled_lifecycle_warn_rotate_grace_retire(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, t0 = await start_key(env, task_queue)
    assert versions(services, spec.key_id) == {1: "active"}
    old = services.keys.encrypt(spec.key_id, b"before rotation", b"")

    await env.sleep(timedelta(days=23) - timedelta(minutes=1))
    assert "key.rotation_warning" not in actions(services, spec.key_id)
    await env.sleep(timedelta(minutes=2))
    assert actions(services, spec.key_id) == ["key.created", "key.rotation_warning"]
    with services.store.session() as s:
        events = list(s.scalars(select(EventRow.type).where(EventRow.object_id == spec.key_id)))
    assert events == ["keyCreated", "keyExpiring"]

    await env.sleep(timedelta(days=7))  # day 30 + 1 min: rotated
    assert versions(services, spec.key_id) == {1: "grace", 2: "active"}
    with services.store.session() as s:
        v1 = s.get(KeyVersionRow, (spec.key_id, 1))
        assert v1 is not None and v1.grace_until is not None
        assert abs(v1.grace_until - (t0 + timedelta(days=37))) < timedelta(seconds=1)
        key = s.get(KeyRow, spec.key_id)
        assert key is not None and key.current_version == 2
        assert key.next_rotation_at is not None
        assert abs(key.next_rotation_at - (t0 + timedelta(days=60))) < timedelta(seconds=1)
    # grace: the old ciphertext still decrypts, new encryptions use version 2
    assert services.keys.decrypt(spec.key_id, str(old.value), b"").value == b"before rotation"
    assert services.keys.encrypt(spec.key_id, b"x", b"").version == 2

    await env.sleep(timedelta(days=7))  # day 37 + 1 min: grace over
    assert versions(services, spec.key_id)[1] == "retired"
    with pytest.raises(KeyStateError, match="retired"):
        services.keys.decrypt(spec.key_id, str(old.value), b"")

    desc = await handle.query(KeyLifecycleWorkflow.describe)
    assert [v.number for v in desc.lifecycle.versions] == [2]  # retired v1 pruned
    assert desc.next_transition is not None and desc.next_transition.kind == "warn"
    assert actions(services, spec.key_id) == [
        "key.created",
        "key.rotation_warning",
        "key.rotated",
        "key.version_retired",
    ]


async def test_emergency_rotation_compromises_at_once(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue)
    old = services.keys.encrypt(spec.key_id, b"secret data", b"")
    await handle.signal(KeyLifecycleWorkflow.emergency_rotate, OperatorAction(reason="leaked"))
    desc = await _wait(handle, lambda d: d.lifecycle.last_version == 2)
    assert desc.lifecycle.status == "active"
    assert versions(services, spec.key_id) == {1: "compromised", 2: "active"}
    with pytest.raises(KeyStateError, match="compromised"):
        services.keys.decrypt(spec.key_id, str(old.value), b"")
    with services.store.session() as s:
        rec = s.scalars(
            select(AuditRecordRow).where(AuditRecordRow.action == "key.emergency_rotated")
        ).one()
        assert rec.reason == "compromise: leaked" and rec.actor == "operator"


async def test_rotate_update_is_idempotent_and_honours_grace_override(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue)
    req = RotateRequest(reason="manual", grace_period_seconds=3600, request_id="req-1")
    first = await handle.execute_update(KeyLifecycleWorkflow.rotate, req)
    again = await handle.execute_update(KeyLifecycleWorkflow.rotate, req)
    assert first == again == RotationResult(from_version=1, to_version=2)
    assert versions(services, spec.key_id) == {1: "grace", 2: "active"}
    with services.store.session() as s:
        v1 = s.get(KeyVersionRow, (spec.key_id, 1))
        assert v1 is not None and v1.grace_until is not None
        assert v1.grace_until - v1.state_changed_at == timedelta(hours=1)
    await env.sleep(timedelta(hours=1, minutes=1))
    assert versions(services, spec.key_id) == {1: "retired", 2: "active"}


async def test_validator_rejects_bad_requests_before_history(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue)
    for bad in (
        RotateRequest(reason="because"),
        RotateRequest(grace_period_seconds=-1),
        RotateRequest(grace_period_seconds=91 * DAY),
    ):
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(KeyLifecycleWorkflow.rotate, bad)
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(KeyLifecycleWorkflow.change_status, StatusChange("resume"))
    history = await handle.fetch_history()
    accepted = [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    assert accepted == [] or all(
        a.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        == "wait_created"
        for a in accepted
    )
    assert versions(services, spec.key_id) == {1: "active"}


async def test_suspend_resume_and_expiry_while_suspended(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue)
    assert (
        await handle.execute_update(
            KeyLifecycleWorkflow.change_status, StatusChange("suspend", "investigating")
        )
        == "suspended"
    )
    assert versions(services, spec.key_id) == {1: "suspended"}
    with pytest.raises(KeyStateError):
        services.keys.encrypt(spec.key_id, b"x", b"")
    # no rotation while suspended, but the version still hits its max lifetime (90 days)
    await env.sleep(timedelta(days=91))
    assert versions(services, spec.key_id) == {1: "expired"}
    assert "key.rotated" not in actions(services, spec.key_id)
    await handle.signal(KeyLifecycleWorkflow.resume, OperatorAction(reason="all clear"))
    await _wait(handle, lambda d: d.lifecycle.last_version == 2)
    assert versions(services, spec.key_id) == {1: "expired", 2: "active"}
    assert services.keys.encrypt(spec.key_id, b"x", b"").version == 2


async def test_revoke_ends_the_workflow(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue)
    await handle.execute_update(KeyLifecycleWorkflow.rotate, RotateRequest())
    await handle.signal(KeyLifecycleWorkflow.revoke, OperatorAction(reason="decommissioned"))
    assert await handle.result() == "revoked"
    assert versions(services, spec.key_id) == {1: "compromised", 2: "compromised"}
    with services.store.session() as s:
        key = s.get(KeyRow, spec.key_id)
        assert key is not None and key.status == "revoked" and key.next_rotation_at is None


async def test_key_expiry_ends_the_workflow(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue, expires_in=timedelta(days=45))
    assert await handle.result() == "expired"  # the test server skips the 45 days
    assert versions(services, spec.key_id) == {1: "retired", 2: "expired"}
    assert actions(services, spec.key_id)[-1] == "key.expired"


async def test_a_long_lived_key_continues_as_new_with_short_runs(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    """A wakeup of an evicted workflow replays its run: runs end at MAX_RUN_EVENTS, and the
    next one goes on with the same versions, each rotation once."""
    daily = LifecyclePolicy(
        rotation_interval=DAY, warning_threshold=0, max_lifetime=90 * DAY, grace_period=0
    )
    handle, spec, _ = await start_key(env, task_queue, policy=daily)
    first = (await handle.describe()).run_id
    await env.sleep(timedelta(days=20, hours=12))
    d = await _wait(handle, lambda d: d.lifecycle.last_version == 21)
    assert d.created
    assert versions(services, spec.key_id) == {n: "retired" for n in range(1, 21)} | {21: "active"}
    assert actions(services, spec.key_id).count("key.rotated") == 20
    lengths, run_id = [], first
    while run_id:
        history = await env.client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
        lengths.append(len(history.events))
        last = history.events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.HasField("workflow_execution_continued_as_new_event_attributes")
            else ""
        )
    assert len(lengths) >= 3, lengths
    # A run ends in the first task that starts at or past the limit: past it by at most the
    # last transition's events and that task's own.
    assert all(MAX_RUN_EVENTS <= n <= MAX_RUN_EVENTS + 10 for n in lengths[:-1]), lengths
    assert lengths[-1] < MAX_RUN_EVENTS


async def _wait(
    handle: WorkflowHandle[KeyLifecycleWorkflow, str], done: Callable[[KeyDescription], bool]
) -> KeyDescription:
    for _ in range(200):
        d = await handle.query(KeyLifecycleWorkflow.describe)
        if done(d):
            return d
        await asyncio.sleep(0.02)
    raise AssertionError("workflow did not reach the expected state")


def test_policy_matches_config(services: Services) -> None:
    # the timing; staged warnings are tested with STAGED below
    shipped = services.policies.key_type("encryption").lifecycle()
    assert replace(shipped, rotation_warnings=(), expiry_warnings=()) == POLICY


# the shipped encryption policy's warnings: rotation 7 and 1 day ahead, expiry 30, 7 and 1
STAGED = replace(POLICY, rotation_warnings=(7 * DAY, DAY), expiry_warnings=(30 * DAY, 7 * DAY, DAY))


def warning_rows(services: Services, key_id: str) -> list[tuple[str, int, str, str, bool]]:
    with services.store.session() as s:
        rows = s.scalars(
            select(WarningRow).where(WarningRow.object_id == key_id).order_by(WarningRow.id)
        )
        return [
            (r.target, r.stage, r.severity, r.acknowledged_by, r.closed_at is not None)
            for r in rows
        ]


async def test_staged_warnings_escalate_until_acknowledged(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    # expires on day 45: expiry stages on days 15, 38 and 44; rotation stages on 23 and 29
    handle, spec, t0 = await start_key(env, task_queue, timedelta(days=45), STAGED)
    await env.sleep(timedelta(days=15, minutes=1))
    assert warning_rows(services, spec.key_id) == [("expiry", 1, "notice", "", False)]
    # an acknowledgement through the update answers how many it acknowledged
    ack = AcknowledgeWarning(reason="ticket SEC-1", actor="alice")
    assert await handle.execute_update(KeyLifecycleWorkflow.acknowledge_warnings, ack) == 1
    with pytest.raises(WorkflowUpdateFailedError):  # nothing left to acknowledge
        await handle.execute_update(KeyLifecycleWorkflow.acknowledge_warnings, ack)
    await env.sleep(timedelta(days=14))  # day 29: both rotation stages, unacknowledged
    assert warning_rows(services, spec.key_id) == [
        ("expiry", 1, "notice", "alice", False),
        ("rotation", 1, "notice", "", False),
        ("rotation", 2, "warning", "", False),
    ]
    await env.sleep(timedelta(days=2))  # day 31: rotated, the rotation warnings are closed
    assert [w[4] for w in warning_rows(services, spec.key_id)] == [False, True, True]
    await env.sleep(timedelta(days=7))  # day 38: expiry stage 2 follows an acknowledged one
    # the signal is what an operator sends from the Temporal UI
    await handle.signal(KeyLifecycleWorkflow.acknowledge_warning, AcknowledgeWarning())
    await env.sleep(timedelta(days=6))  # day 44: stage 3
    assert warning_rows(services, spec.key_id)[3:] == [
        ("expiry", 2, "notice", "operator", False),
        ("expiry", 3, "notice", "", False),
    ]
    d = await handle.query(KeyLifecycleWorkflow.describe)
    assert [(w.stage, w.acknowledged_by) for w in d.lifecycle.warnings] == [
        (1, "alice"),
        (2, "operator"),
        (3, ""),
    ]
    await env.sleep(timedelta(days=1))  # expired: every warning is closed
    assert await handle.result() == "expired"
    assert all(w[4] for w in warning_rows(services, spec.key_id))
    acts = actions(services, spec.key_id)
    assert acts.count("key.expiry_warning") == 3 and acts.count("key.rotation_warning") == 2
    assert acts.count("key.warning_acknowledged") == 2
    with services.store.session() as s:
        records = s.scalars(
            select(AuditRecordRow)
            .where(
                AuditRecordRow.object_id == spec.key_id,
                AuditRecordRow.action == "key.warning_acknowledged",
            )
            .order_by(AuditRecordRow.seq)
        ).all()
        assert [(r.actor, r.reason) for r in records] == [
            ("alice", "expiry stage 1: ticket SEC-1"),
            ("operator", "expiry stage 2"),
        ]
        events = s.scalars(
            select(EventRow)
            .where(EventRow.object_id == spec.key_id, EventRow.type == "keyExpiring")
            .order_by(EventRow.id)
        ).all()
        assert [
            (e.data["warning"]["target"], e.data["warning"]["stage"], e.data["warning"]["severity"])
            for e in events
        ] == [
            ("expiry", 1, "notice"),
            ("rotation", 1, "notice"),
            ("rotation", 2, "warning"),
            ("expiry", 2, "notice"),
            ("expiry", 3, "notice"),
        ]
        deadline = t0 + timedelta(days=45)
        assert events[0].data["warning"]["deadline"] == iso(deadline)


async def test_emergency_rotation_reaches_a_suspended_key(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue)
    await handle.execute_update(KeyLifecycleWorkflow.rotate, RotateRequest())
    await handle.execute_update(KeyLifecycleWorkflow.change_status, StatusChange("suspend"))
    # suspension stops the grace version too
    assert versions(services, spec.key_id) == {1: "suspended", 2: "suspended"}
    await handle.signal(KeyLifecycleWorkflow.emergency_rotate, OperatorAction(reason="leak"))
    await _wait(handle, lambda d: d.lifecycle.last_version == 3)
    assert versions(services, spec.key_id) == {1: "suspended", 2: "compromised", 3: "suspended"}
    await handle.execute_update(KeyLifecycleWorkflow.change_status, StatusChange("resume"))
    assert versions(services, spec.key_id) == {1: "grace", 2: "compromised", 3: "active"}


async def test_signals_sent_without_input_apply(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    # `temporal workflow signal --name suspend` with no --input, or an empty form in the UI
    handle, spec, _ = await start_key(env, task_queue)
    await handle.signal("suspend")
    await _wait(handle, lambda d: d.lifecycle.status == "suspended")
    await handle.signal("resume")
    await _wait(handle, lambda d: d.lifecycle.status == "active")
    assert actions(services, spec.key_id)[-2:] == ["key.suspended", "key.resumed"]


async def test_concurrent_status_changes_fail_cleanly(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue)
    outcomes = await asyncio.gather(
        *(
            handle.execute_update(KeyLifecycleWorkflow.change_status, StatusChange("suspend"))
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    assert outcomes.count("suspended") == 1
    assert all(isinstance(o, WorkflowUpdateFailedError) for o in outcomes if o != "suspended")
    # the workflow is healthy: it still takes messages
    assert (
        await handle.execute_update(KeyLifecycleWorkflow.change_status, StatusChange("resume"))
        == "active"
    )
    assert actions(services, spec.key_id).count("key.suspended") == 1


class BrokenProvider:
    """A provider that cannot make versions (as if removed from the configuration)."""

    name = "local"
    disables_older = False

    def create_version(self, *args: object, **kwargs: object) -> None:
        raise ProviderConfigurationError("provider 'local' is not configured")

    def disable_version(self, *args: object) -> None:
        raise ProviderConfigurationError("provider 'local' is not configured")


async def test_failed_emergency_rotation_still_stops_the_compromised_version(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue)
    await handle.execute_update(KeyLifecycleWorkflow.rotate, RotateRequest())  # v1 in grace 7 d
    working = services.providers["local"]
    services.providers["local"] = BrokenProvider()  # type: ignore[assignment]
    await handle.signal(KeyLifecycleWorkflow.emergency_rotate, OperatorAction(reason="leak"))
    await _wait(handle, lambda d: d.lifecycle.current() is None)
    assert versions(services, spec.key_id) == {1: "grace", 2: "compromised"}
    with pytest.raises(KeyStateError):  # fails closed: no version to encrypt with
        services.keys.encrypt(spec.key_id, b"x", b"")
    # each rotation that failed for good is audited with its reason: the emergency one, then
    # the scheduled one that falls due at once (its hourly retries are not audited again)
    assert actions(services, spec.key_id)[-3:] == [
        "key.rotation_failed",
        "key.version_compromised",
        "key.rotation_failed",
    ]
    # the rotation that is now due keeps failing, but other deadlines still apply
    await env.sleep(timedelta(days=8))
    assert versions(services, spec.key_id) == {1: "retired", 2: "compromised"}
    services.providers["local"] = working
    await env.sleep(timedelta(hours=1, minutes=1))  # the next rotation attempt succeeds
    assert versions(services, spec.key_id) == {1: "retired", 2: "compromised", 3: "active"}


USAGE_AWARE = replace(POLICY, usage_window=3600)


def set_last_use(services: Services, key_id: str, number: int, at: datetime) -> None:
    """What the API's flush of grace uses writes (`KeyService.flush_grace_uses`)."""
    with services.store.write() as s:
        s.execute(
            update(KeyVersionRow)
            .where(KeyVersionRow.key_id == key_id, KeyVersionRow.number == number)
            .values(last_used_at=at)
        )


async def test_a_grace_version_in_use_is_held_then_retired(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start_key(env, task_queue, policy=USAGE_AWARE)
    await env.sleep(timedelta(days=37) - timedelta(minutes=10))  # rotated at 30, grace to 37
    used = await env.get_current_time()
    set_last_use(services, spec.key_id, 1, used)
    await env.sleep(timedelta(minutes=20))  # grace over, but used 10 minutes before
    with services.store.session() as s:
        v1 = s.get(KeyVersionRow, (spec.key_id, 1))
        assert v1 is not None and (v1.state, v1.held) == ("grace", True)
        assert v1.grace_until is not None
        assert abs(v1.grace_until - (used + timedelta(hours=1))) < timedelta(seconds=1)
    d = await handle.query(KeyLifecycleWorkflow.describe)
    assert d.lifecycle.version(1).held
    await env.sleep(timedelta(hours=1))  # unused since: retired when the hold ends
    assert versions(services, spec.key_id) == {1: "retired", 2: "active"}
    acts = actions(services, spec.key_id)
    assert acts[acts.index("key.version_held") + 1] == "key.version_retired"
    with services.store.session() as s:
        held = s.scalars(
            select(AuditRecordRow).where(
                AuditRecordRow.object_id == spec.key_id,
                AuditRecordRow.action == "key.version_held",
            )
        ).one()
        assert held.version == 1 and held.reason.startswith("in use (last ")


async def test_an_unused_grace_version_retires_early(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    policy = replace(USAGE_AWARE, retire_unused=True)
    _, spec, t0 = await start_key(env, task_queue, policy=policy)
    await env.sleep(timedelta(days=30, minutes=30))
    # used 30 minutes into its grace: kept for a window after that use
    set_last_use(services, spec.key_id, 1, await env.get_current_time())
    await env.sleep(timedelta(minutes=40))  # the first check, an hour into grace: in use
    assert versions(services, spec.key_id)[1] == "grace"
    await env.sleep(timedelta(minutes=30))  # an hour after the use: unused since
    assert versions(services, spec.key_id) == {1: "retired", 2: "active"}
    with services.store.session() as s:
        retired = s.scalars(
            select(AuditRecordRow).where(
                AuditRecordRow.object_id == spec.key_id,
                AuditRecordRow.action == "key.version_retired",
            )
        ).one()
        assert retired.reason == "unused for 3600 s in grace: retired early"
        assert retired.at < t0 + timedelta(days=31)  # days before its grace would have ended
