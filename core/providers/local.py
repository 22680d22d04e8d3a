"""The local provider: material generated in-process and stored sealed under the master key."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from core.algorithms import Algorithm, UnknownAlgorithmError, resolve
from core.envelope import EnvelopeError, MasterKeyring, open_envelope, seal
from core.providers.base import (
    ProviderHealth,
    ProviderOperationError,
    UnsupportedAlgorithmError,
    VersionHandle,
    VersionMaterial,
)

DEFAULT_CACHE_SIZE = 1024

_CacheKey = tuple[str, int, bytes]


def material_context(key_id: str, number: int) -> bytes:
    """The envelope context that binds sealed material to exactly one key version."""
    return f"keyrotor/{key_id}/v{number}".encode()


class _MaterialCache:
    """A thread-safe LRU of opened material, so the hot path does not unwrap on every call.

    Keyed by a digest of the sealed blob too, so a re-sealed or replaced version never hits a
    stale entry.
    """

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[_CacheKey, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _CacheKey) -> bytes | None:
        with self._lock:
            material = self._entries.get(key)
            if material is not None:
                self._entries.move_to_end(key)
            return material

    def put(self, key: _CacheKey, material: bytes) -> None:
        if self._max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = material
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def forget(self, key_id: str, number: int) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[:2] == (key_id, number)]:
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class LocalProvider:
    """Generates material with core.algorithms and seals it with core.envelope.

    The caller stores the sealed blob with the version; every operation opens it again (through
    a small in-process cache) under the context of the version it claims to be, so a blob copied
    onto another key or version number does not open.
    """

    name: str = "local"
    disables_older: bool = False

    def __init__(self, keyring: MasterKeyring, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._keyring = keyring
        self._cache = _MaterialCache(cache_size)

    def supports(self, algorithm: str) -> bool:
        try:
            resolve(algorithm)
        except UnknownAlgorithmError:
            return False
        return True

    def _algorithm(self, name: str) -> Algorithm:
        try:
            return resolve(name)
        except UnknownAlgorithmError as e:
            raise UnsupportedAlgorithmError(str(e)) from e

    def create_version(
        self, key_id: str, number: int, algorithm: str, key_bits: int | None = None
    ) -> VersionMaterial:
        algo = self._algorithm(algorithm)
        material = algo.generate(key_bits)
        return VersionMaterial(
            provider_key_ref="",
            wrapped_material=seal(self._keyring, material, material_context(key_id, number)),
            public_key=algo.public_key(material),
        )

    def import_version(
        self, key_id: str, number: int, algorithm: str, material: bytes
    ) -> VersionMaterial:
        """A version made of material brought in (BYOK), sealed like generated material."""
        algo = self._algorithm(algorithm)
        return VersionMaterial(
            provider_key_ref="",
            wrapped_material=seal(self._keyring, material, material_context(key_id, number)),
            public_key=algo.public_key(material),
        )

    def _material(self, version: VersionHandle) -> bytes:
        blob = version.wrapped_material
        if blob is None:
            raise ProviderOperationError(
                f"key {version.key_id} v{version.number} has no local material"
            )
        cache_key = (version.key_id, version.number, hashlib.sha256(blob).digest())
        material = self._cache.get(cache_key)
        if material is None:
            try:
                material = open_envelope(
                    self._keyring, blob, material_context(version.key_id, version.number)
                )
            except EnvelopeError as e:
                raise ProviderOperationError(
                    f"cannot open material of key {version.key_id} v{version.number}: {e}"
                ) from e
            self._cache.put(cache_key, material)
        return material

    def encrypt(self, version: VersionHandle, plaintext: bytes, aad: bytes) -> bytes:
        algo = self._algorithm(version.algorithm)
        return algo.encrypt(self._material(version), plaintext, aad)

    def decrypt(self, version: VersionHandle, data: bytes, aad: bytes) -> bytes:
        algo = self._algorithm(version.algorithm)
        return algo.decrypt(self._material(version), data, aad)

    def sign(self, version: VersionHandle, message: bytes) -> bytes:
        algo = self._algorithm(version.algorithm)
        return algo.sign(self._material(version), message)

    def verify(self, version: VersionHandle, message: bytes, signature: bytes) -> None:
        algo = self._algorithm(version.algorithm)
        algo.verify(self._material(version), message, signature)

    def public_key(self, version: VersionHandle) -> bytes | None:
        return version.public_key

    def disable_version(self, version: VersionHandle) -> None:
        # The material lives in the store, sealed: the store's version state is what refuses
        # a retired version, so there is nothing to switch off here but the opened copy.
        self._cache.forget(version.key_id, version.number)

    def destroy_version(self, version: VersionHandle) -> None:
        # Destroying local material is dropping the sealed blob from the store (the caller's).
        self._cache.forget(version.key_id, version.number)

    def health(self) -> ProviderHealth:
        # A real seal/open round trip: proves the keyring and the crypto backend work.
        context = b"keyrotor/health"
        try:
            ok = open_envelope(self._keyring, seal(self._keyring, b"ok", context), context) == b"ok"
        except EnvelopeError as e:
            return ProviderHealth(ok=False, detail=f"local provider: {e}")
        return ProviderHealth(
            ok=ok,
            detail=f"local provider, sealing with master key {self._keyring.current_id}",
        )
