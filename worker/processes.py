"""`keyrotor worker --processes N`: N worker processes on one machine under a small supervisor.

One keyrotor worker is one Python process and saturates at about one core (docs/scaling.md).
Each process started here is the ordinary single-process worker, with its own workflow cache and
sticky queue, polling the same task queue. The supervisor only starts them, passes a stop on to
them, and stops them all when one ends on its own: it never restarts one (the process manager
that runs `keyrotor worker` restarts the whole).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("keyrotor.worker")
PR_SET_PDEATHSIG = 1
TICK = 0.1  # seconds between looks at the children
# Seconds a stopping worker may take beyond its graceful shutdown timeout: an activity cancelled
# in the middle of a provider call or a webhook delivery ends when that call does (timeouts of
# at most 10 s), and the worker then reports it before exiting.
STOP_MARGIN = 20.0
# What a child asked to stop may end with: its own clean exit, or SIGTERM's (or a terminal's
# SIGINT's) default action when it came before the child's event loop took over the signals.
STOPPED = (0, -signal.SIGTERM, -signal.SIGINT)


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A `preexec_fn` for a child that must not outlive this process: on Linux the kernel sends
    it `sig` when this process dies (PR_SET_PDEATHSIG, SIGKILL of this process included), and a
    child whose parent died before that exits at once. Elsewhere it only does the latter."""
    # looked up here, in the parent: the child, between fork and exec, only calls it
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    parent = os.getpid()

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def worker_command() -> list[str]:
    """One single-process `keyrotor worker`, run by this Python, in this environment."""
    return [sys.executable, "-c", "from cli.main import main; main()", "worker", "--processes=1"]


def supervise(commands: Sequence[Sequence[str]], stop_timeout: float) -> int:
    """Run each of `commands` as a process until SIGINT or SIGTERM, or until one of them exits;
    then stop the others (SIGTERM, and SIGKILL after `stop_timeout` seconds or a second
    signal), wait for every one, and return the exit code: 0 after a clean stop on a signal,
    1 otherwise."""
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    die_with_supervisor = die_with_parent(signal.SIGKILL)
    # the commands are this program's own (worker_command), not input
    children = [
        subprocess.Popen(list(c), preexec_fn=die_with_supervisor)  # noqa: S603
        for c in commands
    ]
    pids = ", ".join(str(c.pid) for c in children)
    log.info("%d worker processes started: pids %s", len(children), pids)
    ended = None
    while ended is None:
        time.sleep(TICK)
        if signals:  # first: under systemd the same SIGTERM may have reached a child directly
            log.info("%s: stopping the worker processes", signal.Signals(signals[0]).name)
            break
        ended = next((c for c in children if c.poll() is not None), None)
    if ended is not None:
        log.error(
            "worker process %d of %d (pid %d) exited with %s: stopping the others",
            children.index(ended) + 1,
            len(children),
            ended.pid,
            _exit_status(ended.returncode),
        )
    asked = [c for c in children if c.poll() is None]
    for child in asked:
        child.send_signal(signal.SIGTERM)
    asked_at, signalled = time.monotonic(), len(signals)
    while any(c.poll() is None for c in asked) and len(signals) == signalled:
        if time.monotonic() - asked_at > stop_timeout:
            break
        time.sleep(TICK)
    stragglers = [c for c in asked if c.poll() is None]
    if stragglers:
        log.warning(
            "worker processes (pids %s) had not stopped %.1f s after SIGTERM: killed",
            ", ".join(str(c.pid) for c in stragglers),
            time.monotonic() - asked_at,
        )
        for child in stragglers:
            child.kill()
    for child in children:
        child.wait()  # none outlives the supervisor, nor is left a zombie for an init to reap
    clean = ended is None and all(c.returncode in STOPPED for c in children)
    log.log(
        logging.INFO if clean else logging.ERROR,
        "worker processes ended: %s",
        ", ".join(f"pid {c.pid} {_exit_status(c.returncode)}" for c in children),
    )
    return 0 if clean else 1


def _exit_status(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"code {code}"
