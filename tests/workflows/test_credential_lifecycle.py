"""CredentialLifecycleWorkflow on the time-skipping test server, with the real activities and
store: opt-in scheduled rotation, the reveal window of a rotated secret, and expiry."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from core.api_credentials import VerificationCode
from core.lifecycle import new_key
from core.objects import CredentialSpec
from core.services import Services
from core.store.models import AuditRecordRow, CredentialVersionRow
from worker.main import build_worker
from workflows.credential_lifecycle import CredentialLifecycleWorkflow
from workflows.handle_lifecycle import HandleLifecycleWorkflow
from workflows.types import (
    CredentialWorkflowInput,
    OperatorAction,
    RotateRequest,
    credential_search_attributes,
    credential_workflow_id,
)

STARTED: list[WorkflowHandle[CredentialLifecycleWorkflow, str]] = []


@pytest.fixture
async def env(
    time_skipping_env: WorkflowEnvironment, services: Services, task_queue: str
) -> AsyncIterator[WorkflowEnvironment]:
    async with build_worker(time_skipping_env.client, services, task_queue):
        yield time_skipping_env
        while STARTED:
            with contextlib.suppress(RPCError):
                await STARTED.pop().terminate("test over")


async def start(
    env: WorkflowEnvironment,
    services: Services,
    task_queue: str,
    *,
    scheduled: bool,
    expires_in: timedelta | None = None,
) -> tuple[WorkflowHandle[CredentialLifecycleWorkflow, str], CredentialSpec, datetime]:
    now = await env.get_current_time()
    spec = CredentialSpec(
        credential_id=f"cred_{uuid.uuid4().hex[:20]}",
        environment="dev",
        owner="team-a",
        scopes=("read",),
        scheduled_rotation=scheduled,
    )
    policy = services.policies.credentials.lifecycle(scheduled=scheduled)
    handle = await env.client.start_workflow(
        CredentialLifecycleWorkflow.run,
        CredentialWorkflowInput(
            spec=spec,
            lifecycle=new_key(policy, now, now + expires_in if expires_in else None),
            publish_search_attributes=False,
        ),
        id=credential_workflow_id("dev", spec.credential_id),
        task_queue=task_queue,
    )
    STARTED.append(handle)
    assert await handle.execute_update(CredentialLifecycleWorkflow.wait_created) == 1
    return handle, spec, now


def states(services: Services, credential_id: str) -> dict[int, tuple[str, bool]]:
    """version -> (state, whether a sealed secret still waits for its reveal)."""
    with services.store.session() as s:
        rows = s.scalars(
            select(CredentialVersionRow).where(CredentialVersionRow.credential_id == credential_id)
        )
        return {r.number: (r.state, r.pending_secret is not None) for r in rows}


def actions(services: Services, credential_id: str) -> list[str]:
    with services.store.session() as s:
        q = select(AuditRecordRow.action).where(AuditRecordRow.object_id == credential_id)
        return list(s.scalars(q.order_by(AuditRecordRow.seq)))


async def test_scheduled_rotation_keeps_the_new_secret_sealed_until_grace_ends(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    # config/keyrotor.toml [credentials]: rotation P90D, warning P7D, grace P1D
    _, spec, _ = await start(env, services, task_queue, scheduled=True)
    first = services.credentials.claim_secret(spec.credential_id, 1, "creator")
    assert first is not None
    assert services.credentials.verify(first).code == VerificationCode.VALID

    await env.sleep(timedelta(days=83) + timedelta(minutes=1))
    assert actions(services, spec.credential_id)[-1] == "credential.rotation_warning"
    await env.sleep(timedelta(days=7))  # day 90: rotated by the schedule
    assert states(services, spec.credential_id) == {1: ("grace", False), 2: ("active", True)}
    # nobody was handed version 2 yet: the old secret still works during grace
    assert services.credentials.verify(first).code == VerificationCode.VALID

    await env.sleep(timedelta(days=1))  # grace over: version 1 retired, version 2 unrevealed
    assert states(services, spec.credential_id) == {1: ("retired", False), 2: ("active", False)}
    assert services.credentials.claim_secret(spec.credential_id, 2, "owner") is None
    assert services.credentials.verify(first).code == VerificationCode.EXPIRED
    assert actions(services, spec.credential_id) == [
        "credential.created",
        "credential.secret_revealed",
        "credential.rotation_warning",
        "credential.rotated",
        "credential.version_retired",
    ]


async def test_revealed_in_time_the_rotated_secret_takes_over(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    _, spec, _ = await start(env, services, task_queue, scheduled=True)
    assert services.credentials.claim_secret(spec.credential_id, 1, "creator") is not None
    await env.sleep(timedelta(days=90, minutes=1))
    second = services.credentials.claim_secret(spec.credential_id, 2, "owner")
    assert second is not None
    assert services.credentials.claim_secret(spec.credential_id, 2, "owner") is None
    result = services.credentials.verify(second)
    assert (result.code, result.version) == (VerificationCode.VALID, 2)


async def test_without_scheduled_rotation_it_only_expires(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    handle, spec, _ = await start(
        env, services, task_queue, scheduled=False, expires_in=timedelta(days=200)
    )
    secret = services.credentials.claim_secret(spec.credential_id, 1, "creator")
    assert secret is not None
    await env.sleep(timedelta(days=199))
    assert states(services, spec.credential_id) == {1: ("active", False)}
    # warned 30, 7 and 1 days ahead of its expiry (the shipped credential policy)
    assert actions(services, spec.credential_id) == [
        "credential.created",
        "credential.secret_revealed",
        *["credential.expiry_warning"] * 3,
    ]
    # a rotation can still be asked for
    await handle.execute_update(
        CredentialLifecycleWorkflow.rotate, RotateRequest(grace_period_seconds=3600)
    )
    assert states(services, spec.credential_id)[2] == ("active", True)
    await env.sleep(timedelta(days=2))
    assert await handle.result() == "expired"
    assert services.credentials.verify(secret).code == VerificationCode.EXPIRED
    assert states(services, spec.credential_id) == {1: ("retired", False), 2: ("expired", False)}


async def test_a_suspended_handle_family_is_revoked_when_nobody_resumes_it(
    env: WorkflowEnvironment, services: Services, task_queue: str
) -> None:
    # the workflow handle type: max lifetime PT4H; suspension timeout PT1H
    policy = services.policies.handle_type("workflow")
    now = await env.get_current_time()
    spec = CredentialSpec(
        credential_id=f"hdl_{uuid.uuid4().hex[:20]}",
        environment="dev",
        kind="handle",
        type="workflow",
        user_id="u1",
        max_usage=policy.max_usage,
        hash_algorithm=policy.algorithm,
        secret_bytes=policy.handle_length,
    )
    handle = await env.client.start_workflow(
        HandleLifecycleWorkflow.run,
        CredentialWorkflowInput(
            spec=spec,
            lifecycle=new_key(
                policy.lifecycle(services.policies.security), now, now + policy.max_lifetime
            ),
            publish_search_attributes=False,
        ),
        id=credential_workflow_id("dev", spec.credential_id, "handle"),
        task_queue=task_queue,
    )
    STARTED.append(handle)  # type: ignore[arg-type]
    await handle.execute_update(HandleLifecycleWorkflow.wait_created)
    await handle.signal(HandleLifecycleWorkflow.suspend, OperatorAction("3 anomalies"))
    await env.sleep(timedelta(minutes=59))
    assert (await handle.query(HandleLifecycleWorkflow.describe)).lifecycle.status == "suspended"
    await env.sleep(timedelta(minutes=2))
    assert await handle.result() == "revoked"
    assert actions(services, spec.credential_id) == [
        "handle.created",
        "handle.suspended",
        "handle.revoked",
    ]
    # resumed in time, a family is not revoked
    now = await env.get_current_time()
    spec2 = CredentialSpec(**{**spec.__dict__, "credential_id": f"hdl_{uuid.uuid4().hex[:20]}"})
    handle2 = await env.client.start_workflow(
        HandleLifecycleWorkflow.run,
        CredentialWorkflowInput(
            spec=spec2,
            lifecycle=new_key(
                policy.lifecycle(services.policies.security), now, now + policy.max_lifetime
            ),
            publish_search_attributes=False,
        ),
        id=credential_workflow_id("dev", spec2.credential_id, "handle"),
        task_queue=task_queue,
    )
    STARTED.append(handle2)  # type: ignore[arg-type]
    await handle2.execute_update(HandleLifecycleWorkflow.wait_created)
    await handle2.signal(HandleLifecycleWorkflow.suspend, OperatorAction("looked odd"))
    await env.sleep(timedelta(minutes=30))
    await handle2.signal(HandleLifecycleWorkflow.resume, OperatorAction("fine"))
    await env.sleep(timedelta(hours=1))
    assert (await handle2.query(HandleLifecycleWorkflow.describe)).lifecycle.status == "active"
    assert await handle2.result() == "expired"  # at its max lifetime, 4 hours after creation


def test_search_attributes_carry_no_personal_data() -> None:
    spec = CredentialSpec(
        "hdl_x", "dev", kind="handle", type="session", user_id="alice@example.com", owner=""
    )
    pairs = {p.key.name: p.value for p in credential_search_attributes(spec, "active", None)}
    assert pairs == {
        "KeyrotorKind": "handle",
        "KeyrotorType": "session",
        "KeyrotorState": "active",
        "KeyrotorOwner": "",
        "KeyrotorEnvironment": "dev",
    }
