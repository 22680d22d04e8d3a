"""Hybrid (classical + post-quantum) algorithms for the migration period.

Both halves must hold for an operation to succeed, so a hybrid key is as strong as the stronger
of its halves: safe if ML-DSA / ML-KEM turn out weak, and safe against a quantum attacker.

Ed25519+ML-DSA-65 (composite signature, kind "signature"):

- material: keyrotor container (`core.algorithms.container`, magic KRKM) with two parts,
  Ed25519 PKCS#8 DER then ML-DSA-65 PKCS#8 DER;
- public key: the same container with magic KRPK and the two SubjectPublicKeyInfo DERs;
- signature: 0x01 (format version) || Ed25519 signature (64 bytes) || ML-DSA-65 signature
  (3309 bytes). Each half signs LABEL || message, LABEL naming this composite, so neither half
  is a valid signature of the bare message on its own (no stripping a composite down to one
  algorithm) and halves of different composites do not mix.

X25519+ML-KEM-768 (hybrid KEM encryption, kind "key-encapsulation"):

- material: container KRKM with X25519 PKCS#8 DER then ML-KEM-768 PKCS#8 DER;
- public key: container KRPK with the two SubjectPublicKeyInfo DERs;
- ciphertext: the `core.algorithms.kem` layout with enc = ephemeral X25519 public key (32) ||
  ML-KEM-768 ciphertext (1088). The HKDF input keying material is ML-KEM secret || X25519
  secret || recipient X25519 public key and its info binds enc (as X-Wing does): the combined key
  stays secret while either KEM holds, and is bound to this exact ciphertext and recipient.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from core.algorithms import container
from core.algorithms.asymmetric import Ed25519Algorithm
from core.algorithms.base import (
    Algorithm,
    AlgorithmKind,
    DecryptionError,
    InvalidSignatureError,
    Operation,
)
from core.algorithms.kem import KEMAlgorithm
from core.algorithms.pqc import MLDSAAlgorithm, bad_material, parse_pkcs8, pkcs8, spki

SIGNATURE_FORMAT_VERSION = 1
_ED25519_SIGNATURE_BYTES = 64
_X25519_PUBLIC_BYTES = 32


class CompositeSignatureAlgorithm(Algorithm):
    """Ed25519 and ML-DSA signatures over the same message; both must verify (module doc)."""

    def __init__(self, name: str, classical: Ed25519Algorithm, pq: MLDSAAlgorithm) -> None:
        super().__init__(
            name,
            AlgorithmKind.SIGNATURE,
            frozenset({Operation.SIGN, Operation.VERIFY}),
            pq.default_key_bits,
        )
        self._classical = classical
        self._pq = pq
        self._label = b"keyrotor/composite-signature/v1\x00" + name.encode("ascii") + b"\x00"
        self.signature_bytes = 1 + _ED25519_SIGNATURE_BYTES + pq.signature_bytes

    def generate(self, key_bits: int | None = None) -> bytes:
        self._resolve_bits(key_bits)
        parts = [self._classical.generate(), self._pq.generate()]
        return container.pack(container.PRIVATE_MAGIC, self.name, parts)

    def _load(self, material: bytes) -> tuple[bytes, bytes]:
        classical, pq = container.unpack(
            container.PRIVATE_MAGIC, self.name, material, 2, "private key"
        )
        return classical, pq

    def public_key(self, material: bytes) -> bytes:
        classical, pq = self._load(material)
        parts = [self._classical.public_key(classical), self._pq.public_key(pq)]
        return container.pack(container.PUBLIC_MAGIC, self.name, parts)

    def sign(self, material: bytes, message: bytes) -> bytes:
        classical, pq = self._load(material)
        labelled = self._label + message
        return (
            bytes([SIGNATURE_FORMAT_VERSION])
            + self._classical.sign(classical, labelled)
            + self._pq.sign(pq, labelled)
        )

    def verify(self, material: bytes, message: bytes, signature: bytes) -> None:
        classical, pq = self._load(material)
        bad = InvalidSignatureError(f"{self.name} signature does not verify")
        if len(signature) != self.signature_bytes or signature[0] != SIGNATURE_FORMAT_VERSION:
            raise bad
        split = 1 + _ED25519_SIGNATURE_BYTES
        labelled = self._label + message
        try:
            self._classical.verify(classical, labelled, signature[1:split])
            self._pq.verify(pq, labelled, signature[split:])
        except InvalidSignatureError:
            raise bad from None


class HybridKEMAlgorithm(KEMAlgorithm):
    """X25519 and ML-KEM-768 encapsulations combined into one AES-256-GCM key (module doc)."""

    def __init__(self, name: str, strength: int) -> None:
        super().__init__(name, strength, _X25519_PUBLIC_BYTES + 1088)

    def generate(self, key_bits: int | None = None) -> bytes:
        self._resolve_bits(key_bits)
        classical = x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        parts = [classical, pkcs8(mlkem.MLKEM768PrivateKey.generate())]
        return container.pack(container.PRIVATE_MAGIC, self.name, parts)

    def _load(self, material: bytes) -> tuple[x25519.X25519PrivateKey, mlkem.MLKEM768PrivateKey]:
        classical, pq = container.unpack(
            container.PRIVATE_MAGIC, self.name, material, 2, "private key"
        )
        classical_key, pq_key = parse_pkcs8(classical), parse_pkcs8(pq)
        if not isinstance(classical_key, x25519.X25519PrivateKey) or not isinstance(
            pq_key, mlkem.MLKEM768PrivateKey
        ):
            raise bad_material(self.name, "a part is not the expected PKCS#8 DER")
        return classical_key, pq_key

    def public_key(self, material: bytes) -> bytes:
        classical, pq = self._load(material)
        classical_spki = classical.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        parts = [classical_spki, spki(pq.public_key())]
        return container.pack(container.PUBLIC_MAGIC, self.name, parts)

    def _encapsulate(self, material: bytes) -> tuple[bytes, bytes]:
        classical, pq = self._load(material)
        recipient = classical.public_key()
        ephemeral = x25519.X25519PrivateKey.generate()
        classical_secret = ephemeral.exchange(recipient)
        pq_secret, pq_enc = pq.public_key().encapsulate()
        enc = ephemeral.public_key().public_bytes_raw() + pq_enc
        return pq_secret + classical_secret + recipient.public_bytes_raw(), enc

    def _decapsulator(self, material: bytes) -> Callable[[bytes], bytes]:
        classical, pq = self._load(material)
        recipient = classical.public_key().public_bytes_raw()

        def decapsulate(enc: bytes) -> bytes:
            try:
                ephemeral = x25519.X25519PublicKey.from_public_bytes(enc[:_X25519_PUBLIC_BYTES])
                # exchange() refuses (ValueError) a low-order point's all-zero secret.
                classical_secret = classical.exchange(ephemeral)
                pq_secret = pq.decapsulate(enc[_X25519_PUBLIC_BYTES:])
            except ValueError:
                raise DecryptionError("decryption failed") from None
            return pq_secret + classical_secret + recipient

        return decapsulate
