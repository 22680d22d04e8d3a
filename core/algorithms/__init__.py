"""The algorithm registry: every algorithm keyrotor can hold, by canonical name and alias.

To add an algorithm, implement it in a module of this package (subclass `Algorithm`) and add one
`_register(...)` line below with its aliases.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from core.algorithms.asymmetric import ECDSAAlgorithm, Ed25519Algorithm, RSAAlgorithm
from core.algorithms.base import (
    Algorithm,
    AlgorithmError,
    AlgorithmKind,
    DecryptionError,
    InvalidSignatureError,
    Operation,
    UnknownAlgorithmError,
    UnsupportedOperationError,
)
from core.algorithms.mac import HMACAlgorithm
from core.algorithms.symmetric import AEADAlgorithm

__all__ = [
    "Algorithm",
    "AlgorithmError",
    "AlgorithmKind",
    "DecryptionError",
    "InvalidSignatureError",
    "Operation",
    "UnknownAlgorithmError",
    "UnsupportedOperationError",
    "canonical_names",
    "resolve",
]

_CANONICAL: dict[str, Algorithm] = {}
# Lower-cased canonical names and aliases -> algorithm, so lookups are case-insensitive.
_BY_NAME: dict[str, Algorithm] = {}


def _register(algorithm: Algorithm, *aliases: str) -> None:
    for name in (algorithm.name, *aliases):
        key = name.lower()
        existing = _BY_NAME.get(key)
        if existing is not None and existing is not algorithm:
            raise RuntimeError(f"algorithm name {name!r} is already taken by {existing.name}")
        _BY_NAME[key] = algorithm
    _CANONICAL[algorithm.name] = algorithm


_register(AEADAlgorithm("AES-256-GCM", AESGCM))
_register(AEADAlgorithm("ChaCha20-Poly1305", ChaCha20Poly1305))
_register(HMACAlgorithm("HMAC-SHA256", hashes.SHA256()), "sha256", "SHA-256")
_register(HMACAlgorithm("HMAC-SHA512", hashes.SHA512()), "sha512", "SHA-512")
_register(Ed25519Algorithm(), "EdDSA")
_register(ECDSAAlgorithm("ECDSA-P256", ec.SECP256R1(), hashes.SHA256()), "P-256", "ES256")
_register(RSAAlgorithm(2048), "RSA")


def resolve(name: str) -> Algorithm:
    """Return the algorithm for a canonical name or alias, ignoring case."""
    algorithm = _BY_NAME.get(name.lower())
    if algorithm is None:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name[:64]!r}; known algorithms: {', '.join(canonical_names())}"
        )
    return algorithm


def canonical_names() -> list[str]:
    """The canonical names of all registered algorithms, in registration order."""
    return list(_CANONICAL)
