"""`keyrotor worker --processes 2` on the real dev server: both processes poll the task queue, a
key is committed, and SIGTERM to the supervisor stops all three processes cleanly; SIGKILL to
the supervisor takes the two workers with it (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from core.lifecycle import new_key
from core.objects import KeySpec
from tests.e2e.test_multi_process import wait_for_pollers
from tests.fixtures.database import backend_database_url
from tests.fixtures.temporal import make_services, process_env
from worker.processes import STOP_MARGIN
from workflows.audit_retention import retention_schedule_id
from workflows.cleanup import cleanup_schedule_id
from workflows.key_lifecycle import KeyLifecycleWorkflow
from workflows.types import KeyWorkflowInput, key_workflow_id
from workflows.webhooks import dispatcher_id

KEYROTOR = Path(sys.executable).parent / "keyrotor"
# A stop takes about a second; the supervisor would kill a worker only after STOP_MARGIN.
STOPPED_WITHIN = STOP_MARGIN - 5


@dataclass
class Supervisor:
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_time(pid: int) -> str | None:
    """The process's start time (to tell it from a later process given the same pid), or None
    when it is gone or only a zombie (an orphan stays one until init reaps it: up to a few
    seconds on the development machines)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if stat[0] == "Z" else stat[19]


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(KEYROTOR), "worker", "--processes", "2"], env=env, stdout=out, stderr=out
        )


@pytest.fixture
async def supervisor(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Supervisor]:
    """`keyrotor worker --processes 2` on a task queue and store of its own, logging to a file
    (a pipe nobody reads would block the workers once full)."""
    env = process_env(
        dev_env.client,
        tmp_path,
        backend_database_url() or f"sqlite:///{tmp_path / 'k.db'}",
        f"procs-{uuid.uuid4().hex[:8]}",
        LOG_FORMAT="text",
    )
    log = tmp_path / "worker.log"
    process = start(env, log)
    try:
        yield Supervisor(process, log, env)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        # what every worker starts (worker.main.start_background_workflows), off the shared server
        queue = env["KEYROTOR_TASK_QUEUE"]
        with contextlib.suppress(RPCError):
            await dev_env.client.get_workflow_handle(dispatcher_id(queue)).terminate("test over")
        for schedule in (retention_schedule_id(queue), cleanup_schedule_id(queue)):
            with contextlib.suppress(RPCError):
                await dev_env.client.get_schedule_handle(schedule).delete()


async def started_pids(supervisor: Supervisor) -> list[int]:
    """The pids the supervisor's start line names (each checked to be its child)."""
    for _ in range(600):
        found = re.search(r"2 worker processes started: pids (\d+), (\d+)", supervisor.output())
        if found:
            pids = [int(p) for p in found.groups()]
            for pid in pids:
                ppid = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1]
                assert int(ppid) == supervisor.process.pid
            return pids
        assert supervisor.process.poll() is None, supervisor.output()
        await asyncio.sleep(0.1)
    pytest.fail(f"no start line in 60 s: {supervisor.output()}")


async def test_two_processes_poll_commit_and_stop_on_sigterm(
    dev_env: WorkflowEnvironment, supervisor: Supervisor, tmp_path: Path
) -> None:
    pids = await started_pids(supervisor)
    started = {pid: start_time(pid) for pid in pids}
    # each process is a whole worker: both poll the workflow task queue under their own pid
    await wait_for_pollers(dev_env, supervisor.env["KEYROTOR_TASK_QUEUE"], pids)

    services = make_services(tmp_path, supervisor.env["KEYROTOR_DATABASE_URL"])
    try:
        policy = services.policies.key_type("encryption")
        key_id = f"key_procs{uuid.uuid4().hex[:12]}"
        spec = KeySpec(key_id, "dev", "encryption", policy.algorithm, "local", policy.key_bits)
        now = await dev_env.get_current_time()
        handle = await dev_env.client.start_workflow(
            KeyLifecycleWorkflow.run,
            KeyWorkflowInput(spec=spec, lifecycle=new_key(policy.lifecycle(), now)),
            id=key_workflow_id("dev", key_id),
            task_queue=supervisor.env["KEYROTOR_TASK_QUEUE"],
        )
        await asyncio.wait_for(handle.execute_update(KeyLifecycleWorkflow.wait_created), 60)
        key, versions = services.keys.get(key_id)
        assert key.current_version == 1
        assert [(v.number, v.state) for v in versions] == [(1, "active")]
        await handle.terminate("test over")
    finally:
        services.close()

    asked = time.monotonic()
    supervisor.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(supervisor.process.wait, STOPPED_WITHIN)
    took = time.monotonic() - asked
    output = supervisor.output()
    assert code == 0, output
    # each stopped gracefully (the SDK's shutdown, then exit 0), not by SIGTERM's default action
    assert f"worker processes ended: pid {pids[0]} code 0, pid {pids[1]} code 0" in output, output
    # the supervisor waited for both: neither is left running, nor a zombie
    assert all(not Path(f"/proc/{pid}").exists() or start_time(pid) != started[pid] for pid in pids)
    assert "killed" not in output and "Traceback" not in output, output
    assert "Fatal Python error" not in output, output  # see core.runtime.exit_process
    print(f"stopped in {took:.2f} s")


async def test_sigterm_while_the_processes_start(supervisor: Supervisor) -> None:
    """SIGTERM as soon as the workers are started (importing, migrating, connecting): each ends
    at once, by SIGTERM's default action before its event loop runs, or by a graceful stop
    after; either is a clean stop."""
    pids = await started_pids(supervisor)
    supervisor.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(supervisor.process.wait, STOPPED_WITHIN)
    output = supervisor.output()
    assert code == 0, output
    ended = re.search(r"ended: pid \d+ (.+), pid \d+ (.+)", output)
    assert ended and set(ended.groups()) <= {"code 0", "signal 15"}, output
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


async def test_the_processes_die_with_a_killed_supervisor(
    dev_env: WorkflowEnvironment, supervisor: Supervisor
) -> None:
    pids = await started_pids(supervisor)
    started = {pid: start_time(pid) for pid in pids}
    await wait_for_pollers(dev_env, supervisor.env["KEYROTOR_TASK_QUEUE"], pids)
    supervisor.process.kill()  # nothing of it runs: no forwarding, only the kernel
    supervisor.process.wait()
    try:
        for _ in range(100):
            if all(start_time(pid) != started[pid] for pid in pids):
                return
            await asyncio.sleep(0.1)
        pytest.fail(f"worker processes outlived their supervisor by 10 s: {supervisor.output()}")
    finally:
        for pid in pids:  # had the test failed, leave no worker behind
            if start_time(pid) == started[pid]:
                os.kill(pid, signal.SIGKILL)
