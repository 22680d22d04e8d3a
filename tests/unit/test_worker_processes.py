"""`worker.processes.supervise`, the supervisor of `keyrotor worker --processes N`, with stand-in
children: `python -c` one-liners injected in place of the keyrotor worker command, so that each
path runs in about a second without Temporal. The supervisor runs in a process of its own (it
takes over SIGINT and SIGTERM). tests/e2e/test_worker_processes.py runs it with real workers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cli.main import app
from core.settings import Settings

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHER = [sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"]
STUBBORN = [  # ignores SIGTERM once it has said so
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ignoring SIGTERM', flush=True); time.sleep(60)",
]
SUPERVISOR = (
    "import json, logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s');"
    "from worker.processes import supervise;"
    "sys.exit(supervise(json.loads(sys.argv[1]), float(sys.argv[2])))"
)


class Supervised:
    """A supervisor process over `commands`, its output (and its children's) in a file."""

    def __init__(self, commands: list[list[str]], stop_timeout: float, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", SUPERVISOR, json.dumps(commands), str(stop_timeout)],
                stdout=out,
                stderr=out,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in {self.output()!r}")

    def pids(self) -> list[int]:
        return [int(p) for p in self.wait_for(r"started: pids ([\d, ]+)")[1].split(", ")]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_child_that_exits_stops_the_others(tmp_path: Path) -> None:
    supervised = Supervised([SLEEPER, CRASHER], 10, tmp_path / "log")
    try:
        sleeper, crasher = supervised.pids()
        assert supervised.process.wait(10) == 1  # not restarted: the whole thing fails
    finally:
        supervised.close()
    output = supervised.output()
    assert f"worker process 2 of 2 (pid {crasher}) exited with code 3: stopping the others" in (
        output
    )
    assert f"ended: pid {sleeper} signal 15, pid {crasher} code 3" in output
    assert not running(sleeper)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_child(tmp_path: Path, sig: signal.Signals) -> None:
    supervised = Supervised([SLEEPER, SLEEPER], 10, tmp_path / "log")
    try:
        pids = supervised.pids()
        supervised.process.send_signal(sig)
        assert supervised.process.wait(10) == 0
    finally:
        supervised.close()
    output = supervised.output()
    assert f"{sig.name}: stopping the worker processes" in output
    # SIGTERM whatever the supervisor got: SIGINT may be ignored where it was started
    assert f"ended: pid {pids[0]} signal 15, pid {pids[1]} signal 15" in output
    assert not any(running(pid) for pid in pids)


@pytest.mark.parametrize("second_signal", [False, True])
def test_a_child_that_does_not_stop_is_killed(tmp_path: Path, second_signal: bool) -> None:
    """After the stop timeout, or at once on a second signal."""
    stop_timeout = 60 if second_signal else 1
    supervised = Supervised([STUBBORN, SLEEPER], stop_timeout, tmp_path / "log")
    try:
        stubborn, sleeper = supervised.pids()
        supervised.wait_for("ignoring SIGTERM")
        asked = time.monotonic()
        supervised.process.send_signal(signal.SIGTERM)
        if second_signal:
            supervised.wait_for("stopping the worker processes")
            supervised.process.send_signal(signal.SIGTERM)
        assert supervised.process.wait(10) == 1
        assert time.monotonic() - asked < 5
    finally:
        supervised.close()
    output = supervised.output()
    assert re.search(rf"pids {stubborn}\) had not stopped [\d.]+ s after SIGTERM: killed", output)
    assert f"ended: pid {stubborn} signal 9, pid {sleeper} signal 15" in output
    assert not running(stubborn)


def test_the_setting_and_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYROTOR_WORKER_PROCESSES", raising=False)
    assert Settings().worker_processes == 1
    monkeypatch.setenv("KEYROTOR_WORKER_PROCESSES", "0")
    with pytest.raises(ValidationError, match="worker_processes"):
        Settings()
    result = CliRunner().invoke(app, ["worker", "--processes", "0"])
    assert result.exit_code == 2 and "--processes" in result.output
