"""Provider calls measured for `/metrics`: how many, how long, and how each ended, per provider
and operation (`keyrotor_provider_calls_total`, `keyrotor_provider_call_duration_seconds`).

`KeyService.provider` hands out a `MeasuredProvider` around each configured provider; the
counts are this process's (an API process's use path, a worker's commits: under `keyrotor dev`
both are one process).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from core.metrics import PROVIDER_STATS, ProviderStats
from core.providers.base import KeyProvider, ProviderHealth, VersionHandle, VersionMaterial

T = TypeVar("T")


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

    def import_version(
        self, key_id: str, number: int, algorithm: str, material: bytes
    ) -> VersionMaterial:
        return self._measure(
            "import_version",
            lambda: self.inner.import_version(key_id, number, algorithm, material),
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
