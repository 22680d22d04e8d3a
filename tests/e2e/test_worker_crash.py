"""Kill the worker (SIGKILL) in the middle of 80 concurrent rotations: after a restart every key
has exactly one new version, one audit record for it, and no material outside a version."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import func, select
from temporalio.client import WorkflowUpdateStage
from temporalio.testing import WorkflowEnvironment

from core import audit
from core.lifecycle import new_key
from core.objects import KeySpec
from core.store.models import AuditRecordRow, KeyVersionRow
from tests.fixtures.temporal import make_services, process_env
from workflows.key_lifecycle import KeyLifecycleWorkflow
from workflows.types import KeyWorkflowInput, RotateRequest, RotationResult, key_workflow_id

KEYS = 80


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    keyrotor = Path(sys.executable).parent / "keyrotor"
    return subprocess.Popen(
        [str(keyrotor), "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


async def test_worker_killed_mid_rotation(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    services = make_services(tmp_path)
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    env = process_env(dev_env.client, tmp_path, services.store.url, queue)
    worker = start_worker(env)
    try:
        policy = services.policies.key_type("signing")  # RSA-2048: slow key generation
        now = await dev_env.get_current_time()
        handles = []
        for i in range(KEYS):
            spec = KeySpec(
                f"key_crash{i:02d}{uuid.uuid4().hex[:8]}",
                "dev",
                "signing",
                policy.algorithm,
                "local",
                policy.key_bits,
            )
            handles.append(await dev_env.client.start_workflow(
                KeyLifecycleWorkflow.run,
                KeyWorkflowInput(spec=spec, lifecycle=new_key(policy.lifecycle(), now)),
                id=key_workflow_id("dev", spec.key_id),
                task_queue=queue,
            ))  # fmt: skip
        for h in handles:
            await h.execute_update(KeyLifecycleWorkflow.wait_created)

        def rotated() -> int:
            with services.store.session() as s:
                n = s.scalar(
                    select(func.count()).select_from(KeyVersionRow).where(KeyVersionRow.number == 2)
                )
                return n or 0

        starting = asyncio.gather(
            *(
                h.start_update(
                    KeyLifecycleWorkflow.rotate,
                    RotateRequest(reason="manual", request_id="crash-test"),
                    wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                )
                for h in handles
            )
        )
        for _ in range(1000):  # kill as soon as the first rotation is committed
            if rotated():
                break
            await asyncio.sleep(0.005)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        done_before_kill = rotated()
        assert 0 < done_before_kill < KEYS, done_before_kill

        worker = start_worker(env)
        updates = await asyncio.wait_for(starting, 120)
        results = await asyncio.wait_for(asyncio.gather(*(u.result() for u in updates)), 120)
        assert results == [RotationResult(1, 2)] * KEYS
    finally:
        worker.kill()
        worker.wait(timeout=10)

    with services.store.session() as s:
        for h in handles:
            key_id = h.id.rsplit("/", 1)[1]
            rows = s.scalars(select(KeyVersionRow).where(KeyVersionRow.key_id == key_id)).all()
            assert {r.number: r.state for r in rows} == {1: "grace", 2: "active"}
            assert all(r.wrapped_material for r in rows)
            rotations = s.scalar(
                select(func.count())
                .select_from(AuditRecordRow)
                .where(AuditRecordRow.object_id == key_id, AuditRecordRow.action == "key.rotated")
            )
            assert rotations == 1
        total = s.scalar(select(func.count()).select_from(KeyVersionRow))
        assert total == 2 * KEYS
        report = audit.verify_chain(s)
        assert report.ok and report.checked == 2 * KEYS, report
    services.close()
