"""Process-wide settings of the long-running keyrotor processes (`keyrotor api`, `keyrotor
worker`, `keyrotor dev`), and how every `keyrotor` process ends."""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import NoReturn

# collections of the middle generation between two full collections (Python's default: 10)
FULL_COLLECTION_AFTER = 100
# the worker's: Python's default (see tune_gc)
WORKER_FULL_COLLECTION_AFTER = 10


def tune_gc(full_collection_after: int = FULL_COLLECTION_AFTER) -> None:
    """Keep the cyclic garbage collector's full collections short and rare.

    A full collection walks every tracked object, and a running process holds many: the
    modules and the app (about a quarter of a million objects), the use path's row caches (up
    to 50,000 rows each) and the worker's cached workflows. With the default thresholds one
    ran every few seconds under load and stopped the event loop for up to 130 ms (measured:
    the p99 of a verification that misses the cache went from 130 ms to 6 ms with the
    collector off). Everything allocated while starting is frozen (never collected, never
    walked again), and a full collection waits for `full_collection_after` collections of the
    middle generation: 100 in the API instead of Python's 10. Young garbage, where nearly all of
    the API's cycles are, is collected as before.

    The worker keeps Python's 10 (WORKER_FULL_COLLECTION_AFTER): a workflow evicted from its
    cache is old cyclic garbage, which only a full collection frees. With 100, 1,500 keys
    created through a cache of 200 left the worker at 246 to 249 MiB RSS, against 193 to 196
    MiB with 10 (docs/scaling.md)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, full_collection_after)


# Whether this process has started the Temporal SDK's Rust core (a client or a worker).
_temporal_started = False


def temporal_starting() -> None:
    """Called before this process first connects to Temporal (`core.codec.connect_client`)."""
    global _temporal_started
    _temporal_started = True


def exit_process(code: str | int | None) -> NoReturn:
    """`sys.exit(code)`, but a process that has started the Temporal SDK ends without
    finalizing the interpreter.

    The SDK's Rust threads can call into Python while the interpreter finalizes, which crashes
    the process: "Fatal Python error: PyGILState_Release" or a segmentation fault
    (temporalio/sdk-python#300). Measured on a script that starts and terminates one workflow:
    6 crashes in 90 runs (exit 134 or 139 after it had done its work); 0 in 40 ending with
    `os._exit`. Such a process flushes its logs and output and ends with the same code
    `sys.exit` would have given. Nothing else runs at exit: keyrotor closes its stores and
    files before it gets here."""
    if not _temporal_started:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # as sys.exit does with a message
        print(code, file=sys.stderr)
        status = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
