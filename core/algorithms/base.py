"""The errors, operations and base class shared by every algorithm in the registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import NoReturn


class AlgorithmError(ValueError):
    """A bad algorithm request: unknown name, bad key size or material, unsupported operation."""


class UnknownAlgorithmError(AlgorithmError):
    """The name is neither a canonical algorithm name nor an alias of one."""


class UnsupportedOperationError(AlgorithmError):
    """The algorithm exists but cannot do what was asked (e.g. sign with AES-256-GCM)."""


class InvalidSignatureError(Exception):
    """A signature or MAC did not verify."""


class DecryptionError(Exception):
    """Decryption or authentication failed; deliberately says no more than that."""


class Operation(StrEnum):
    """What a caller may do with a key version."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    SIGN = "sign"
    VERIFY = "verify"


class AlgorithmKind(StrEnum):
    """The family an algorithm belongs to (a StrEnum, so it compares equal to plain strings)."""

    SYMMETRIC = "symmetric"
    MAC = "mac"
    SIGNATURE = "signature"
    # Public-key encryption built on a key-encapsulation mechanism (ML-KEM, X25519+ML-KEM):
    # asymmetric like SIGNATURE, but it encrypts and decrypts instead of signing.
    KEY_ENCAPSULATION = "key-encapsulation"


class Algorithm(ABC):
    """One algorithm: generates material and runs the operations it supports on that material.

    Material is secret bytes: the raw key for symmetric and HMAC algorithms, PKCS#8 DER for
    asymmetric ones. Instances are stateless and shared, so they are safe to use from any thread.
    Operations an algorithm lacks raise UnsupportedOperationError; subclasses override only what
    they support and list it in `operations`.
    """

    name: str
    kind: AlgorithmKind
    operations: frozenset[Operation]
    default_key_bits: int

    def __init__(
        self,
        name: str,
        kind: AlgorithmKind,
        operations: frozenset[Operation],
        default_key_bits: int,
    ) -> None:
        self.name = name
        self.kind = kind
        self.operations = operations
        self.default_key_bits = default_key_bits

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def validate_key_bits(self, bits: int) -> None:
        """Raise AlgorithmError unless `bits` is a size this algorithm accepts."""
        if bits != self.default_key_bits:
            raise AlgorithmError(
                f"{self.name} keys are {self.default_key_bits} bits; {bits} was requested"
            )

    def _resolve_bits(self, key_bits: int | None) -> int:
        bits = self.default_key_bits if key_bits is None else key_bits
        self.validate_key_bits(bits)
        return bits

    @abstractmethod
    def generate(self, key_bits: int | None = None) -> bytes:
        """Return fresh secret material of `key_bits` (default: `default_key_bits`)."""

    def public_key(self, material: bytes) -> bytes | None:
        """Return the SubjectPublicKeyInfo DER for asymmetric material, None for symmetric."""
        return None

    def encrypt(self, material: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt `plaintext`, binding `aad` where the algorithm supports it."""
        self._unsupported(Operation.ENCRYPT)

    def decrypt(self, material: bytes, data: bytes, aad: bytes) -> bytes:
        """Decrypt what `encrypt` returned; raise DecryptionError if it does not authenticate."""
        self._unsupported(Operation.DECRYPT)

    def sign(self, material: bytes, message: bytes) -> bytes:
        """Return a signature (or MAC tag) over `message`."""
        self._unsupported(Operation.SIGN)

    def verify(self, material: bytes, message: bytes, signature: bytes) -> None:
        """Return if `signature` is valid for `message`, else raise InvalidSignatureError."""
        self._unsupported(Operation.VERIFY)

    def _unsupported(self, operation: Operation) -> NoReturn:
        raise UnsupportedOperationError(f"{self.name} does not support {operation}")
