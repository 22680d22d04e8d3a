"""Public-key encryption from a key-encapsulation mechanism: KEM, then HKDF-SHA256, then AES-GCM.

Every KEM algorithm (ML-KEM, X25519+ML-KEM-768) encrypts the same way. Ciphertext layout:

    version    1 byte    0x01
    name_len   1 byte    length of the canonical algorithm name
    name       name_len  the canonical algorithm name, ASCII (e.g. b"ML-KEM-768")
    enc        fixed     the KEM ciphertext; its length is fixed by the algorithm
    sealed     rest      AES-256-GCM ciphertext || 16-byte tag, with the caller's aad

The AES key and nonce are HKDF-SHA256(ikm = the KEM's shared secret, salt = empty,
info = LABEL || version .. name || enc), 32 + 12 bytes. Each message has its own encapsulation
and therefore its own key, so the derived nonce is never reused under a key; binding the header
and enc into the KDF means altering any byte of them changes the key and fails the tag.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.algorithms.base import Algorithm, AlgorithmKind, DecryptionError, Operation

FORMAT_VERSION = 1
# Domain separation: a key derived here is never equal to one derived for another purpose.
KDF_LABEL = b"keyrotor/kem-aes-256-gcm/v1\x00"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16


class KEMAlgorithm(Algorithm):
    """An algorithm that encrypts to its own public key through a KEM (see the module layout).

    Subclasses provide encapsulation against the public half of the material and
    decapsulation with the private half; this class frames, derives and seals.
    """

    def __init__(self, name: str, default_key_bits: int, enc_bytes: int) -> None:
        super().__init__(
            name,
            AlgorithmKind.KEY_ENCAPSULATION,
            frozenset({Operation.ENCRYPT, Operation.DECRYPT}),
            default_key_bits,
        )
        self.enc_bytes = enc_bytes
        encoded = name.encode("ascii")
        self._header = bytes([FORMAT_VERSION, len(encoded)]) + encoded

    @abstractmethod
    def _encapsulate(self, material: bytes) -> tuple[bytes, bytes]:
        """Return (input keying material, enc) for a fresh encapsulation to the public key."""

    @abstractmethod
    def _decapsulator(self, material: bytes) -> Callable[[bytes], bytes]:
        """Load the private key (AlgorithmError if bad) and return enc -> input keying material.

        The function raises DecryptionError for an enc it cannot process.
        """

    def _key_and_nonce(self, ikm: bytes, enc: bytes) -> tuple[AESGCM, bytes]:
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=_KEY_BYTES + _NONCE_BYTES,
            salt=None,
            info=KDF_LABEL + self._header + enc,
        ).derive(ikm)
        return AESGCM(okm[:_KEY_BYTES]), okm[_KEY_BYTES:]

    def encrypt(self, material: bytes, plaintext: bytes, aad: bytes) -> bytes:
        ikm, enc = self._encapsulate(material)
        aead, nonce = self._key_and_nonce(ikm, enc)
        return self._header + enc + aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, material: bytes, data: bytes, aad: bytes) -> bytes:
        decapsulate = self._decapsulator(material)
        start = len(self._header)
        if not data.startswith(self._header) or len(data) < start + self.enc_bytes + _TAG_BYTES:
            raise DecryptionError("decryption failed")
        enc = data[start : start + self.enc_bytes]
        aead, nonce = self._key_and_nonce(decapsulate(enc), enc)
        try:
            return aead.decrypt(nonce, data[start + self.enc_bytes :], aad)
        except InvalidTag:
            raise DecryptionError("decryption failed") from None
