"""AEAD ciphers: AES-256-GCM and ChaCha20-Poly1305."""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from core.algorithms.base import (
    Algorithm,
    AlgorithmError,
    AlgorithmKind,
    DecryptionError,
    Operation,
)

NONCE_BYTES = 12
TAG_BYTES = 16


class AEADAlgorithm(Algorithm):
    """An AEAD with a 256-bit key whose output is nonce || ciphertext || tag.

    Nonces are 96 random bits per message: safe for up to about 2**32 messages per key, which
    rotation keeps far away.
    """

    def __init__(self, name: str, cipher: type[AESGCM] | type[ChaCha20Poly1305]) -> None:
        super().__init__(
            name,
            AlgorithmKind.SYMMETRIC,
            frozenset({Operation.ENCRYPT, Operation.DECRYPT}),
            256,
        )
        self._cipher = cipher

    def generate(self, key_bits: int | None = None) -> bytes:
        return secrets.token_bytes(self._resolve_bits(key_bits) // 8)

    def _aead(self, material: bytes) -> AESGCM | ChaCha20Poly1305:
        if len(material) * 8 != self.default_key_bits:
            raise AlgorithmError(
                f"{self.name} material must be {self.default_key_bits // 8} bytes, "
                f"got {len(material)}"
            )
        return self._cipher(material)

    def encrypt(self, material: bytes, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead(material).encrypt(nonce, plaintext, aad)

    def decrypt(self, material: bytes, data: bytes, aad: bytes) -> bytes:
        aead = self._aead(material)
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError("decryption failed")
        try:
            return aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError("decryption failed") from None
