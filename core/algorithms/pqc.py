"""Post-quantum algorithms: ML-DSA (FIPS 204), ML-KEM (FIPS 203) and Falcon.

Where they come from:

- ML-DSA-44/65/87 and ML-KEM-768/1024: `cryptography` (OpenSSL 3.5+ backend). Material is
  PKCS#8 DER (the 32- or 64-byte seed form cryptography writes); public keys are
  SubjectPublicKeyInfo DER.
- ML-KEM-512 and Falcon-512/1024: PQClean's C code through the `pqcrypto` package (0.4.x; 1.0
  dropped Falcon), because cryptography has neither. No standard private-key encoding fits
  (Falcon has none yet; cryptography cannot read an ML-KEM-512 PKCS#8), so material is the
  keyrotor container of `core.algorithms.container` with two parts, public key then secret key,
  each in PQClean's raw encoding; `public_key` returns the raw public key bytes (897 / 1793
  bytes for Falcon-512/1024, the 800-byte FIPS 203 encapsulation key for ML-KEM-512).

The Dilithium and Kyber aliases resolve to ML-DSA and ML-KEM as standardized: their outputs do not
interoperate with round-3 Dilithium or Kyber implementations.

`key_bits` has no single meaning for these schemes (private key, seed and public key sizes all
differ), so it is the claimed security strength: NIST category 1 / 3 / 5 = 128 / 192 / 256 bits.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from core.algorithms import container
from core.algorithms.base import (
    Algorithm,
    AlgorithmError,
    AlgorithmKind,
    DecryptionError,
    InvalidSignatureError,
    Operation,
)
from core.algorithms.kem import KEMAlgorithm

MLDSAPrivateKey = mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey
MLKEMPrivateKey = mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey

KeyT = TypeVar("KeyT")

_SIGN_VERIFY = frozenset({Operation.SIGN, Operation.VERIFY})


def parse_pkcs8(material: bytes) -> PrivateKeyTypes | None:
    """The key in unencrypted PKCS#8 DER, or None if it is not one."""
    try:
        return serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def bad_material(name: str, form: str = "PKCS#8 DER") -> AlgorithmError:
    """The error for material that is not a `name` private key (it never shows the material)."""
    return AlgorithmError(f"material is not a {name} private key ({form})")


def load_pkcs8(material: bytes, key_type: type[KeyT], name: str) -> KeyT:
    """Load unencrypted PKCS#8 DER as `key_type`, or raise AlgorithmError."""
    key = parse_pkcs8(material)
    if not isinstance(key, key_type):
        raise bad_material(name)
    return key


def pkcs8(key: MLDSAPrivateKey | MLKEMPrivateKey) -> bytes:
    """The unencrypted PKCS#8 DER of a cryptography private key."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def spki(
    public: mldsa.MLDSA44PublicKey
    | mldsa.MLDSA65PublicKey
    | mldsa.MLDSA87PublicKey
    | mlkem.MLKEM768PublicKey
    | mlkem.MLKEM1024PublicKey,
) -> bytes:
    """The SubjectPublicKeyInfo DER of a cryptography public key."""
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _generate(key_type: type[MLDSAPrivateKey] | type[MLKEMPrivateKey], name: str) -> bytes:
    """PKCS#8 DER of a fresh key of `key_type`; AlgorithmError where the backend lacks it."""
    try:
        return pkcs8(key_type.generate())
    except UnsupportedAlgorithm:
        raise AlgorithmError(
            f"{name} is not supported by this cryptography/OpenSSL build"
        ) from None


# --- cryptography: ML-DSA and ML-KEM-768/1024 -------------------------------------------------


class MLDSAAlgorithm(Algorithm):
    """ML-DSA (FIPS 204, pure mode, empty context) through cryptography.

    Signatures are hedged (randomized) and 2420 / 3309 / 4627 bytes for ML-DSA-44/65/87.
    """

    def __init__(
        self, name: str, key_type: type[MLDSAPrivateKey], strength: int, signature_bytes: int
    ) -> None:
        super().__init__(name, AlgorithmKind.SIGNATURE, _SIGN_VERIFY, strength)
        self._key_type = key_type
        self.signature_bytes = signature_bytes

    def generate(self, key_bits: int | None = None) -> bytes:
        self._resolve_bits(key_bits)
        return _generate(self._key_type, self.name)

    def _load(self, material: bytes) -> MLDSAPrivateKey:
        return load_pkcs8(material, self._key_type, self.name)

    def public_key(self, material: bytes) -> bytes:
        return spki(self._load(material).public_key())

    def sign(self, material: bytes, message: bytes) -> bytes:
        return self._load(material).sign(message)

    def verify(self, material: bytes, message: bytes, signature: bytes) -> None:
        try:
            self._load(material).public_key().verify(signature, message)
        except InvalidSignature:
            raise InvalidSignatureError(f"{self.name} signature does not verify") from None


class MLKEMAlgorithm(KEMAlgorithm):
    """ML-KEM-768/1024 (FIPS 203) through cryptography, encrypting as `core.algorithms.kem`."""

    def __init__(
        self, name: str, key_type: type[MLKEMPrivateKey], strength: int, enc_bytes: int
    ) -> None:
        super().__init__(name, strength, enc_bytes)
        self._key_type = key_type

    def generate(self, key_bits: int | None = None) -> bytes:
        self._resolve_bits(key_bits)
        return _generate(self._key_type, self.name)

    def _load(self, material: bytes) -> MLKEMPrivateKey:
        return load_pkcs8(material, self._key_type, self.name)

    def public_key(self, material: bytes) -> bytes:
        return spki(self._load(material).public_key())

    def _encapsulate(self, material: bytes) -> tuple[bytes, bytes]:
        return self._load(material).public_key().encapsulate()

    def _decapsulator(self, material: bytes) -> Callable[[bytes], bytes]:
        key = self._load(material)

        def decapsulate(enc: bytes) -> bytes:
            try:
                return key.decapsulate(enc)
            except ValueError:
                raise DecryptionError("decryption failed") from None

        return decapsulate


# --- pqcrypto (PQClean): Falcon and ML-KEM-512 ------------------------------------------------


class PQCleanModule:
    """Typed access to one `pqcrypto` 0.4 module (e.g. "pqcrypto.sign.falcon_512").

    Imported on first use, so the registry (and everything that imports it) still loads where
    pqcrypto is missing; only these algorithms then fail, with an AlgorithmError.
    """

    def __init__(self, module: str) -> None:
        self._name = module
        self._module: ModuleType | None = None

    def _get(self) -> ModuleType:
        if self._module is None:
            try:
                self._module = importlib.import_module(self._name)
            except ImportError:
                raise AlgorithmError(
                    f"{self._name} is not installed (needs the pqcrypto package, 0.4.x)"
                ) from None
        return self._module

    def _int(self, attribute: str) -> int:
        value = getattr(self._get(), attribute)
        if not isinstance(value, int):
            raise AlgorithmError(f"{self._name}.{attribute} is not an int")
        return value

    @property
    def public_key_bytes(self) -> int:
        """Length of a raw public key."""
        return self._int("PUBLIC_KEY_SIZE")

    @property
    def secret_key_bytes(self) -> int:
        """Length of a raw secret key."""
        return self._int("SECRET_KEY_SIZE")

    def generate_keypair(self) -> tuple[bytes, bytes]:
        """(public key, secret key)."""
        public, secret = self._get().generate_keypair()
        return _bytes(public), _bytes(secret)

    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        """A signature (detached) of `message`."""
        return _bytes(self._get().sign(secret_key, message))

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """Whether `signature` verifies; malformed input is simply not valid."""
        try:
            # pqcrypto 0.4 returns a bool here rather than raising.
            return self._get().verify(public_key, message, signature) is True
        except (ValueError, TypeError):
            return False

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        """(shared secret, ciphertext) for `public_key`."""
        ciphertext, shared = self._get().encrypt(public_key)
        return _bytes(shared), _bytes(ciphertext)

    def decapsulate(self, secret_key: bytes, ciphertext: bytes) -> bytes:
        """The shared secret in `ciphertext`; DecryptionError if it cannot be processed."""
        try:
            return _bytes(self._get().decrypt(secret_key, ciphertext))
        except (ValueError, TypeError, RuntimeError):
            raise DecryptionError("decryption failed") from None


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise AlgorithmError("pqcrypto returned an unexpected type")
    return value


class _PQCleanKeyPair:
    """Packs and checks the (public key, secret key) container of a PQClean-backed algorithm."""

    def __init__(self, name: str, module: PQCleanModule) -> None:
        self._name = name
        self._module = module

    def generate(self) -> bytes:
        public, secret = self._module.generate_keypair()
        return container.pack(container.PRIVATE_MAGIC, self._name, [public, secret])

    def load(self, material: bytes) -> tuple[bytes, bytes]:
        public, secret = container.unpack(
            container.PRIVATE_MAGIC, self._name, material, 2, "private key"
        )
        if (
            len(public) != self._module.public_key_bytes
            or len(secret) != self._module.secret_key_bytes
        ):
            raise AlgorithmError(f"material is not a {self._name} private key (wrong key sizes)")
        return public, secret


class FalconAlgorithm(Algorithm):
    """Falcon-512/1024 (round-3 Falcon, PQClean's compressed variable-length signatures).

    Material: keyrotor container (public key, secret key); public_key: the raw Falcon public
    key, since Falcon (FN-DSA) has no standard SubjectPublicKeyInfo yet.
    """

    def __init__(self, name: str, module: str, strength: int) -> None:
        super().__init__(name, AlgorithmKind.SIGNATURE, _SIGN_VERIFY, strength)
        self._module = PQCleanModule(module)
        self._pair = _PQCleanKeyPair(name, self._module)

    def generate(self, key_bits: int | None = None) -> bytes:
        self._resolve_bits(key_bits)
        return self._pair.generate()

    def public_key(self, material: bytes) -> bytes:
        return self._pair.load(material)[0]

    def sign(self, material: bytes, message: bytes) -> bytes:
        return self._module.sign(self._pair.load(material)[1], message)

    def verify(self, material: bytes, message: bytes, signature: bytes) -> None:
        public = self._pair.load(material)[0]
        if not self._module.verify(public, message, signature):
            raise InvalidSignatureError(f"{self.name} signature does not verify")


class PQCleanMLKEMAlgorithm(KEMAlgorithm):
    """ML-KEM-512 (FIPS 203) through pqcrypto, encrypting as `core.algorithms.kem`.

    Material: keyrotor container (encapsulation key, decapsulation key), both in FIPS 203
    encoding; public_key: the raw encapsulation key.
    """

    # FIPS 203: the decapsulation key is dk_pke (384*k bytes) || ek || H(ek) || z.
    _DK_PKE_BYTES_PER_K = 384

    def __init__(self, name: str, module: str, strength: int, enc_bytes: int, k: int) -> None:
        super().__init__(name, strength, enc_bytes)
        self._module = PQCleanModule(module)
        self._pair = _PQCleanKeyPair(name, self._module)
        self._k = k

    def generate(self, key_bits: int | None = None) -> bytes:
        self._resolve_bits(key_bits)
        return self._pair.generate()

    def _load(self, material: bytes) -> tuple[bytes, bytes]:
        public, secret = self._pair.load(material)
        # The decapsulation key embeds the encapsulation key and its hash: a container whose
        # halves do not belong together would encrypt to a key nobody can decrypt with.
        start = self._DK_PKE_BYTES_PER_K * self._k
        embedded = secret[start : start + len(public)]
        digest = secret[start + len(public) : start + len(public) + 32]
        if embedded != public or digest != hashlib.sha3_256(public).digest():
            raise AlgorithmError(f"material is not a {self.name} private key (inconsistent)")
        return public, secret

    def public_key(self, material: bytes) -> bytes:
        return self._load(material)[0]

    def _encapsulate(self, material: bytes) -> tuple[bytes, bytes]:
        return self._module.encapsulate(self._load(material)[0])

    def _decapsulator(self, material: bytes) -> Callable[[bytes], bytes]:
        secret = self._load(material)[1]
        return lambda enc: self._module.decapsulate(secret, enc)
