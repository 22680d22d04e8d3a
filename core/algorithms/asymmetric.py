"""Classical asymmetric algorithms: Ed25519, ECDSA and RSA (PSS signatures, OAEP encryption).

Material is the private key as unencrypted PKCS#8 DER (it is protected by the provider, e.g. the
envelope of the local provider); public keys are SubjectPublicKeyInfo DER.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from typing import Generic, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from core.algorithms.base import (
    Algorithm,
    AlgorithmError,
    AlgorithmKind,
    DecryptionError,
    InvalidSignatureError,
    Operation,
)

PrivateKeyT = TypeVar(
    "PrivateKeyT",
    bound=ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
)

_SIGN_VERIFY = frozenset({Operation.SIGN, Operation.VERIFY})


class AsymmetricAlgorithm(Algorithm, Generic[PrivateKeyT]):
    """Shared PKCS#8 / SPKI handling; subclasses make keys and run the operations."""

    _key_type: type[PrivateKeyT]

    @abstractmethod
    def _new_key(self) -> PrivateKeyT: ...

    def _check_key(self, key: PrivateKeyT) -> bool:
        """Whether a loaded key of the right type also has the right parameters."""
        return True

    def generate(self, key_bits: int | None = None) -> bytes:
        self._resolve_bits(key_bits)
        return self._new_key().private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def _deserialize(self, material: bytes) -> PrivateKeyTypes:
        return serialization.load_der_private_key(material, password=None)

    def _load(self, material: bytes) -> PrivateKeyT:
        try:
            key = self._deserialize(material)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, self._key_type) or not self._check_key(key):
            # Never include the material: it is a private key.
            raise AlgorithmError(f"material is not a {self.name} private key (PKCS#8 DER)")
        return key

    def public_key(self, material: bytes) -> bytes:
        return (
            self._load(material)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        )

    def _bad_signature(self) -> InvalidSignatureError:
        return InvalidSignatureError(f"{self.name} signature does not verify")


class Ed25519Algorithm(AsymmetricAlgorithm[ed25519.Ed25519PrivateKey]):
    """Ed25519 (RFC 8032) signatures over the whole message."""

    _key_type = ed25519.Ed25519PrivateKey

    def __init__(self) -> None:
        super().__init__("Ed25519", AlgorithmKind.SIGNATURE, _SIGN_VERIFY, 256)

    def _new_key(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.generate()

    def sign(self, material: bytes, message: bytes) -> bytes:
        return self._load(material).sign(message)

    def verify(self, material: bytes, message: bytes, signature: bytes) -> None:
        try:
            self._load(material).public_key().verify(signature, message)
        except InvalidSignature:
            raise self._bad_signature() from None


class ECDSAAlgorithm(AsymmetricAlgorithm[ec.EllipticCurvePrivateKey]):
    """ECDSA on one curve with one hash; signatures are DER-encoded (r, s)."""

    _key_type = ec.EllipticCurvePrivateKey

    def __init__(
        self, name: str, curve: ec.EllipticCurve, hash_algorithm: hashes.HashAlgorithm
    ) -> None:
        super().__init__(name, AlgorithmKind.SIGNATURE, _SIGN_VERIFY, curve.key_size)
        self._curve = curve
        self._hash = hash_algorithm

    def _new_key(self) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(self._curve)

    def _check_key(self, key: ec.EllipticCurvePrivateKey) -> bool:
        return key.curve.name == self._curve.name

    def sign(self, material: bytes, message: bytes) -> bytes:
        return self._load(material).sign(message, ec.ECDSA(self._hash))

    def verify(self, material: bytes, message: bytes, signature: bytes) -> None:
        try:
            self._load(material).public_key().verify(signature, message, ec.ECDSA(self._hash))
        except InvalidSignature:
            raise self._bad_signature() from None


class RSAAlgorithm(AsymmetricAlgorithm[rsa.RSAPrivateKey]):
    """RSA of one modulus size: PSS-SHA256 signatures and OAEP-SHA256 encryption.

    Associated data is bound as the OAEP label: decryption with any other aad fails.
    """

    _key_type = rsa.RSAPrivateKey
    _PUBLIC_EXPONENT = 65537
    _HASH = hashes.SHA256()

    # OpenSSL's full RSA key check (primality of p and q) costs tens of milliseconds, far more
    # than the operation itself. Each distinct material is checked once per process; later loads
    # of the same bytes skip it. Only digests are remembered, and the set is simply emptied when
    # full (re-checking is slow, never wrong). Races only cause an extra check.
    _MAX_CHECKED = 4096

    def __init__(self, bits: int) -> None:
        super().__init__(
            f"RSA-{bits}",
            AlgorithmKind.SIGNATURE,
            frozenset(Operation),
            bits,
        )
        self._checked: set[bytes] = set()

    def _remember_checked(self, digest: bytes) -> None:
        if len(self._checked) >= self._MAX_CHECKED:
            self._checked.clear()
        self._checked.add(digest)

    def _deserialize(self, material: bytes) -> PrivateKeyTypes:
        digest = hashlib.sha256(material).digest()
        key = serialization.load_der_private_key(
            material, password=None, unsafe_skip_rsa_key_validation=digest in self._checked
        )
        self._remember_checked(digest)
        return key

    def _new_key(self) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(self._PUBLIC_EXPONENT, self.default_key_bits)

    def generate(self, key_bits: int | None = None) -> bytes:
        material = super().generate(key_bits)
        # Freshly generated by OpenSSL: valid by construction.
        self._remember_checked(hashlib.sha256(material).digest())
        return material

    def _check_key(self, key: rsa.RSAPrivateKey) -> bool:
        return key.key_size == self.default_key_bits

    def _pss(self) -> padding.PSS:
        return padding.PSS(mgf=padding.MGF1(self._HASH), salt_length=32)

    def _oaep(self, aad: bytes) -> padding.OAEP:
        return padding.OAEP(mgf=padding.MGF1(self._HASH), algorithm=self._HASH, label=aad or None)

    @property
    def max_plaintext_bytes(self) -> int:
        """The longest plaintext OAEP-SHA256 can encrypt with this modulus."""
        return self.default_key_bits // 8 - 2 * self._HASH.digest_size - 2

    def sign(self, material: bytes, message: bytes) -> bytes:
        return self._load(material).sign(message, self._pss(), self._HASH)

    def verify(self, material: bytes, message: bytes, signature: bytes) -> None:
        try:
            self._load(material).public_key().verify(signature, message, self._pss(), self._HASH)
        except InvalidSignature:
            raise self._bad_signature() from None

    def encrypt(self, material: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if len(plaintext) > self.max_plaintext_bytes:
            raise AlgorithmError(
                f"{self.name} OAEP can encrypt at most {self.max_plaintext_bytes} bytes; "
                f"got {len(plaintext)}"
            )
        return self._load(material).public_key().encrypt(plaintext, self._oaep(aad))

    def decrypt(self, material: bytes, data: bytes, aad: bytes) -> bytes:
        key = self._load(material)
        try:
            return key.decrypt(data, self._oaep(aad))
        except ValueError:
            raise DecryptionError("decryption failed") from None
