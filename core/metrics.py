"""Prometheus metrics, in the text exposition format (no client library: a few counters and
histograms, and gauges read from the store).

Two kinds:
- from the store, the same whichever process answers and across restarts: objects by status,
  versions by state, audit records by action (every lifecycle change, rotation, failure,
  reveal and export is one), the audit chain's head;
- of this API process (each series with a `pid` label): requests, latency and
  results of the hot routes, and the calls it made to key providers. With `keyrotor api
  --workers N` each scrape reaches one process: sum over `pid` in queries, and expect a series
  to restart with its process.
"""

from __future__ import annotations

import bisect
import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, or_, select

from core.lifecycle import RotationReason
from core.store.db import Store
from core.store.models import (
    AuditHeadRow,
    AuditRecordRow,
    CredentialRow,
    KeyRow,
    KeyVersionRow,
    WarningRow,
    WebhookDeliveryRow,
)

# the audit actions of a rotation (`<kind>.<verb>`) and their result
_ROTATION_RESULTS = {"rotated": "ok", "emergency_rotated": "ok", "rotation_failed": "failed"}
_REASONS = frozenset(r.value for r in RotationReason)
_FAILED_ROTATION = re.compile(r"\(rotation: ([a-z_]+)")


def _rotation_reason(verb: str, reason: str) -> str:
    """The RotationReason an audit record's reason text starts with ("manual: quarterly"), or
    names after "(rotation: " for a failure; `other` if none."""
    if verb == "rotation_failed":
        found = _FAILED_ROTATION.search(reason)
        reason = found.group(1) if found else ""
    leading = reason.split(":", 1)[0].strip()
    return leading if leading in _REASONS else "other"


BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


Histogram = tuple[list[int], list[float]]  # counts per bucket; [count, sum]


def _observe(
    histograms: dict[Any, Histogram], key: Any, bounds: tuple[float, ...], seconds: float
) -> None:
    """Count `seconds` into the histogram `key` (the caller holds its lock)."""
    buckets, total = histograms.setdefault(key, ([0] * len(bounds), [0.0, 0.0]))
    i = bisect.bisect_left(bounds, seconds)
    if i < len(bounds):
        buckets[i] += 1
    total[0] += 1
    total[1] += seconds


# seconds: a local AES-GCM call takes microseconds, a KMS round trip tens of milliseconds
PROVIDER_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ProviderStats:
    """Calls to key providers (`core.providers.measured`): counts by (provider, operation,
    result) and latency histograms by (provider, operation); thread-safe. `result` is `ok` or
    the exception's class name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str, str], Histogram] = {}

    def record(self, provider: str, operation: str, result: str, seconds: float) -> None:
        with self._lock:
            self._calls[(provider, operation, result)] += 1
            _observe(self._latency, (provider, operation), PROVIDER_BUCKETS, seconds)

    def snapshot(self) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], Histogram]]:
        with self._lock:
            return dict(self._calls), {k: (list(b), list(t)) for k, (b, t) in self._latency.items()}


PROVIDER_STATS = ProviderStats()


class Metrics:
    """This process's counters and histograms; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        # route -> (bucket counts, count, sum)
        self._latency: dict[str, Histogram] = {}
        self._results: dict[tuple[str, str], int] = defaultdict(int)

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(route, status)] += 1
            _observe(self._latency, route, BUCKETS, seconds)

    def result(self, kind: str, code: str) -> None:
        """One verification (`credential`) or validation (`handle`) answered with `code`."""
        with self._lock:
            self._results[(kind, code)] += 1

    def render(self, store: Store) -> str:
        lines: list[str] = []
        pid = os.getpid()
        with self._lock:
            requests = dict(self._requests)
            latency = {r: (list(b), list(t)) for r, (b, t) in self._latency.items()}
            results = dict(self._results)
        _family(
            lines,
            "keyrotor_hot_requests_total",
            "counter",
            "Requests answered by this process's hot routes.",
            (
                (f'route="{r}",status="{s}",pid="{pid}"', n)
                for (r, s), n in sorted(requests.items())
            ),
        )
        _histogram(
            lines,
            "keyrotor_hot_request_duration_seconds",
            "Time to answer a hot route.",
            BUCKETS,
            ((f'route="{route}",pid="{pid}"', h) for route, h in sorted(latency.items())),
        )
        _family(
            lines,
            "keyrotor_verifications_total",
            "counter",
            "Credential verifications and handle validations answered, by code.",
            ((f'kind="{k}",code="{c}",pid="{pid}"', n) for (k, c), n in sorted(results.items())),
        )
        calls, provider_latency = PROVIDER_STATS.snapshot()
        _family(
            lines,
            "keyrotor_provider_calls_total",
            "counter",
            "Calls to key providers by operation and result (ok, or the error's class).",
            (
                (f'provider="{p}",operation="{o}",result="{r}",pid="{pid}"', n)
                for (p, o, r), n in sorted(calls.items())
            ),
        )
        _histogram(
            lines,
            "keyrotor_provider_call_duration_seconds",
            "Time a key provider took to answer.",
            PROVIDER_BUCKETS,
            (
                (f'provider="{p}",operation="{o}",pid="{pid}"', h)
                for (p, o), h in sorted(provider_latency.items())
            ),
        )
        _store_families(lines, store)
        return "\n".join(lines) + "\n"


def _histogram(
    lines: list[str],
    name: str,
    help: str,
    bounds: Iterable[float],
    series: Iterable[tuple[str, tuple[list[int], list[float]]]],
) -> None:
    lines += [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
    bounds = list(bounds)
    for labels, (buckets, (count, total)) in series:
        running = 0
        for bound, n in zip(bounds, buckets, strict=True):
            running += n
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {int(count)}')
        lines.append(f"{name}_count{{{labels}}} {int(count)}")
        lines.append(f"{name}_sum{{{labels}}} {total}")


def _family(
    lines: list[str], name: str, kind: str, help: str, samples: Iterable[tuple[str, float]]
) -> None:
    lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
    lines += [
        f"{name}{{{labels}}} {value}" if labels else f"{name} {value}" for labels, value in samples
    ]


def _store_families(lines: list[str], store: Store) -> None:
    with store.engine.connect() as db:
        keys = db.execute(select(KeyRow.status, func.count()).group_by(KeyRow.status)).all()
        versions = db.execute(
            select(KeyVersionRow.state, func.count()).group_by(KeyVersionRow.state)
        ).all()
        credentials = db.execute(
            select(CredentialRow.kind, CredentialRow.status, func.count()).group_by(
                CredentialRow.kind, CredentialRow.status
            )
        ).all()
        actions = db.execute(
            select(AuditRecordRow.action, func.count()).group_by(AuditRecordRow.action)
        ).all()
        head = db.scalar(select(AuditHeadRow.seq)) or 0
        deliveries = db.execute(
            select(
                WebhookDeliveryRow.status,
                func.count(),
                func.coalesce(func.sum(WebhookDeliveryRow.attempts), 0),
            ).group_by(WebhookDeliveryRow.status)
        ).all()
        warnings = db.execute(
            select(WarningRow.severity, func.count())
            .where(WarningRow.closed_at.is_(None), WarningRow.acknowledged_at.is_(None))
            .group_by(WarningRow.severity)
        ).all()
        rotation_records = db.execute(
            select(AuditRecordRow.action, AuditRecordRow.reason, func.count())
            .where(or_(*(AuditRecordRow.action.like(f"%.{verb}") for verb in _ROTATION_RESULTS)))
            .group_by(AuditRecordRow.action, AuditRecordRow.reason)
        ).all()
    _family(
        lines, "keyrotor_keys", "gauge", "Keys by status.", ((f'status="{s}"', n) for s, n in keys)
    )
    _family(
        lines,
        "keyrotor_key_versions",
        "gauge",
        "Key versions by state.",
        ((f'state="{s}"', n) for s, n in versions),
    )
    _family(
        lines,
        "keyrotor_credentials",
        "gauge",
        "API credentials and handle families by status.",
        ((f'kind="{k}",status="{s}"', n) for k, s, n in credentials),
    )
    _family(
        lines,
        "keyrotor_audit_records_total",
        "counter",
        "Audit records by action: every lifecycle change (creations, rotations, rotation "
        "failures, revocations, expiries), reveal, admin key and export.",
        ((f'action="{a}"', n) for a, n in actions),
    )
    rotations: dict[tuple[str, str, str], int] = defaultdict(int)
    for action, reason, n in rotation_records:
        kind, _, verb = action.partition(".")
        rotations[(kind, _rotation_reason(verb, reason), _ROTATION_RESULTS[verb])] += n
    _family(
        lines,
        "keyrotor_rotations_total",
        "counter",
        "Rotations of keys, credentials and handles by reason and result (from the audit trail).",
        (
            (f'kind="{k}",reason="{r}",result="{res}"', n)
            for (k, r, res), n in sorted(rotations.items())
        ),
    )
    _family(
        lines,
        "keyrotor_webhook_deliveries",
        "gauge",
        "Webhook deliveries by status (pending, delivered, failed).",
        ((f'status="{st}"', n) for st, n, _ in deliveries),
    )
    _family(
        lines,
        "keyrotor_webhook_delivery_attempts_total",
        "counter",
        "Attempts at webhook deliveries, by the delivery's status.",
        ((f'status="{st}"', a) for st, _, a in deliveries),
    )
    _family(
        lines,
        "keyrotor_unacknowledged_warnings",
        "gauge",
        "Open warnings nobody acknowledged, by severity.",
        ((f'severity="{sev}"', n) for sev, n in warnings),
    )
    _family(
        lines,
        "keyrotor_audit_head_seq",
        "gauge",
        "Sequence number of the audit chain's head.",
        [("", head)],
    )
