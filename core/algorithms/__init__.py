"""The algorithm registry: every algorithm keyrotor can hold, by canonical name and alias.

To add an algorithm, implement it in a module of this package (subclass `Algorithm`) and add one
`_register(...)` line below with its aliases.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, mlkem
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
from core.algorithms.hybrid import CompositeSignatureAlgorithm, HybridKEMAlgorithm
from core.algorithms.mac import HMACAlgorithm
from core.algorithms.pqc import (
    FalconAlgorithm,
    MLDSAAlgorithm,
    MLKEMAlgorithm,
    PQCleanMLKEMAlgorithm,
)
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
_ED25519 = Ed25519Algorithm()
_register(_ED25519, "EdDSA")
_register(ECDSAAlgorithm("ECDSA-P256", ec.SECP256R1(), hashes.SHA256()), "P-256", "ES256")
_register(RSAAlgorithm(2048), "RSA")
_register(ECDSAAlgorithm("ECDSA-secp256k1", ec.SECP256K1(), hashes.SHA256()), "ES256K", "secp256k1")
_register(RSAAlgorithm(4096), "RSA4096")

# Post-quantum (core.algorithms.pqc). key_bits is the NIST security strength, see there. The
# Dilithium / Kyber aliases are the names the reference uses; the algorithms are the standards.
_ML_DSA_65 = MLDSAAlgorithm("ML-DSA-65", mldsa.MLDSA65PrivateKey, 192, 3309)
_register(MLDSAAlgorithm("ML-DSA-44", mldsa.MLDSA44PrivateKey, 128, 2420), "Dilithium2")
_register(_ML_DSA_65, "Dilithium3")
_register(MLDSAAlgorithm("ML-DSA-87", mldsa.MLDSA87PrivateKey, 256, 4627), "Dilithium5")
_register(FalconAlgorithm("Falcon-512", "pqcrypto.sign.falcon_512", 128), "Falcon512")
_register(FalconAlgorithm("Falcon-1024", "pqcrypto.sign.falcon_1024", 256), "Falcon1024")
_register(
    PQCleanMLKEMAlgorithm("ML-KEM-512", "pqcrypto.kem.ml_kem_512", 128, enc_bytes=768, k=2),
    "Kyber512",
)
_register(MLKEMAlgorithm("ML-KEM-768", mlkem.MLKEM768PrivateKey, 192, 1088), "Kyber768")
_register(MLKEMAlgorithm("ML-KEM-1024", mlkem.MLKEM1024PrivateKey, 256, 1568), "Kyber1024")

# Hybrid (core.algorithms.hybrid): both halves must hold.
_register(
    CompositeSignatureAlgorithm("Ed25519+ML-DSA-65", _ED25519, _ML_DSA_65),
    "Ed25519+Dilithium3",
)
_register(HybridKEMAlgorithm("X25519+ML-KEM-768", 192), "X25519+Kyber768", "X25519MLKEM768")


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
