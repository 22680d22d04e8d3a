"""HMAC with SHA-2: sign produces the tag, verify compares it in constant time."""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from core.algorithms.base import (
    Algorithm,
    AlgorithmError,
    AlgorithmKind,
    InvalidSignatureError,
    Operation,
)

MIN_KEY_BITS = 256
MAX_KEY_BITS = 8192


class HMACAlgorithm(Algorithm):
    """HMAC over one hash; keys of 256 to 8192 bits in whole bytes, default the hash size."""

    def __init__(self, name: str, hash_algorithm: hashes.HashAlgorithm) -> None:
        super().__init__(
            name,
            AlgorithmKind.MAC,
            frozenset({Operation.SIGN, Operation.VERIFY}),
            hash_algorithm.digest_size * 8,
        )
        self._hash = hash_algorithm

    def validate_key_bits(self, bits: int) -> None:
        if not MIN_KEY_BITS <= bits <= MAX_KEY_BITS or bits % 8:
            raise AlgorithmError(
                f"{self.name} keys must be {MIN_KEY_BITS} to {MAX_KEY_BITS} bits in whole "
                f"bytes; {bits} was requested"
            )

    def generate(self, key_bits: int | None = None) -> bytes:
        return secrets.token_bytes(self._resolve_bits(key_bits) // 8)

    def _hmac(self, material: bytes) -> hmac.HMAC:
        # The same bounds as generation: a short key would silently weaken every tag.
        self.validate_key_bits(len(material) * 8)
        return hmac.HMAC(material, self._hash)

    def sign(self, material: bytes, message: bytes) -> bytes:
        mac = self._hmac(material)
        mac.update(message)
        return mac.finalize()

    def verify(self, material: bytes, message: bytes, signature: bytes) -> None:
        mac = self._hmac(material)
        mac.update(message)
        try:
            mac.verify(signature)  # constant-time comparison
        except InvalidSignature:
            raise InvalidSignatureError(f"{self.name} tag does not verify") from None
