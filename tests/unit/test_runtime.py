"""Process settings of the long-running commands."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.runtime import FULL_COLLECTION_AFTER, WORKER_FULL_COLLECTION_AFTER, tune_gc

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_what_start_made_and_spaces_full_collections() -> None:
    young, middle, _ = gc.get_threshold()
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 10_000  # the modules and what they built
    assert gc.get_threshold() == (young, middle, FULL_COLLECTION_AFTER)
    assert FULL_COLLECTION_AFTER > 10  # Python's default


@pytest.mark.usefixtures("restored_gc")
def test_the_workers_full_collections_keep_pythons_spacing() -> None:
    young, middle, _ = gc.get_threshold()
    gc.unfreeze()
    tune_gc(WORKER_FULL_COLLECTION_AFTER)
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold() == (young, middle, WORKER_FULL_COLLECTION_AFTER)
    assert WORKER_FULL_COLLECTION_AFTER == 10  # Python's default


# Prints without a newline to a pipe (buffered until flushed), logs, then exits with argv[2]
# (a Python literal); `started` first marks the process as having started Temporal's core. The
# atexit line is printed only if the interpreter finalizes.
EXIT_SCRIPT = """
import atexit, logging, sys
from core.runtime import exit_process, temporal_starting
atexit.register(print, "|finalized")
if sys.argv[1] == "started":
    temporal_starting()
print("output", end="")
logging.getLogger("t").warning("logged")
exit_process(eval(sys.argv[2]))
"""


def run_exit(started: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, started, code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [("3", 3, ""), ("None", 0, ""), ("0", 0, ""), ("'bad thing'", 1, "bad thing\n")],
)
def test_a_process_that_started_temporal_exits_without_finalizing(
    code: str, status: int, message: str
) -> None:
    done = run_exit("started", code)
    assert done.returncode == status
    assert done.stdout == "output"  # flushed, and no atexit line: not finalized
    assert done.stderr == "logged\n" + message


def test_a_process_that_never_started_temporal_exits_as_usual() -> None:
    done = run_exit("not started", "3")
    assert done.returncode == 3
    assert done.stdout == "output|finalized\n"
