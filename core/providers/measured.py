"""Provider calls measured for `/metrics`: how many, how long, and how each ended, per provider
and operation (`keyrotor_provider_calls_total`, `keyrotor_provider_call_duration_seconds`).

`KeyService.provider` hands out a `MeasuredProvider` around each configured provider; the
counts are this process's (an API process's use path, a worker's commits: under `keyrotor dev`
both are one process).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from core.providers.base import KeyProvider, ProviderHealth, VersionHandle, VersionMaterial

T = TypeVar("T")
Histogram = tuple[list[int], list[float]]  # counts per bucket; [count, sum]
# seconds: a local AES-GCM call takes microseconds, a KMS round trip tens of milliseconds
BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ProviderStats:
    """Counts by (provider, operation, result) and latency histograms by (provider,
    operation); thread-safe. `result` is `ok` or the exception's class name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def record(self, provider: str, operation: str, result: str, seconds: float) -> None:
        with self._lock:
            self.calls[(provider, operation, result)] += 1
            buckets, total = self.latency.setdefault(
                (provider, operation), ([0] * len(BUCKETS), [0.0, 0.0])
            )
            i = bisect.bisect_left(BUCKETS, seconds)
            if i < len(BUCKETS):
                buckets[i] += 1
            total[0] += 1
            total[1] += seconds

    def snapshot(
        self,
    ) -> tuple[
        dict[tuple[str, str, str], int], dict[tuple[str, str], tuple[list[int], list[float]]]
    ]:
        with self._lock:
            return dict(self.calls), {k: (list(b), list(t)) for k, (b, t) in self.latency.items()}


PROVIDER_STATS = ProviderStats()


class MeasuredProvider:
    """A KeyProvider that records every call it passes on."""

    def __init__(self, inner: KeyProvider, stats: ProviderStats = PROVIDER_STATS) -> None:
        self.inner = inner
        self.name = inner.name
        self.disables_older = inner.disables_older
        self._stats = stats

    def _measure(self, operation: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = "ok"
        try:
            return call()
        except Exception as e:
            result = type(e).__name__
            raise
        finally:
            self._stats.record(self.name, operation, result, time.perf_counter() - start)

    def supports(self, algorithm: str) -> bool:
        return self.inner.supports(algorithm)

    def create_version(
        self, key_id: str, number: int, algorithm: str, key_bits: int | None = None
    ) -> VersionMaterial:
        return self._measure(
            "create_version",
            lambda: self.inner.create_version(key_id, number, algorithm, key_bits),
        )

    def encrypt(self, version: VersionHandle, plaintext: bytes, aad: bytes) -> bytes:
        return self._measure("encrypt", lambda: self.inner.encrypt(version, plaintext, aad))

    def decrypt(self, version: VersionHandle, data: bytes, aad: bytes) -> bytes:
        return self._measure("decrypt", lambda: self.inner.decrypt(version, data, aad))

    def sign(self, version: VersionHandle, message: bytes) -> bytes:
        return self._measure("sign", lambda: self.inner.sign(version, message))

    def verify(self, version: VersionHandle, message: bytes, signature: bytes) -> None:
        self._measure("verify", lambda: self.inner.verify(version, message, signature))

    def public_key(self, version: VersionHandle) -> bytes | None:
        return self._measure("public_key", lambda: self.inner.public_key(version))

    def disable_version(self, version: VersionHandle) -> None:
        self._measure("disable_version", lambda: self.inner.disable_version(version))

    def destroy_version(self, version: VersionHandle) -> None:
        self._measure("destroy_version", lambda: self.inner.destroy_version(version))

    def health(self) -> ProviderHealth:
        return self._measure("health", self.inner.health)

    def __getattr__(self, name: str) -> Any:  # anything else a provider offers
        return getattr(self.inner, name)
