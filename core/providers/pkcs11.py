"""The PKCS#11 provider: keys generated on an HSM token (tested against SoftHSM2).

Every keyrotor version is one token object (secret key) or one key pair, generated on the token
(or, for a key brought in, created there by value) as persistent objects that are sensitive and
not extractable, and found again by a label and id derived from the key id and version number.
Material never leaves the token; only public keys do (as SubjectPublicKeyInfo DER).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

from core.algorithms import (
    Algorithm,
    DecryptionError,
    InvalidSignatureError,
    UnsupportedOperationError,
)
from core.providers.base import (
    ProviderConfigurationError,
    ProviderError,
    ProviderHealth,
    ProviderOperationError,
    ProviderUnavailableError,
    VersionHandle,
    VersionMaterial,
    big_endian,
    held,
    holds,
)

T = TypeVar("T")

_GCM_IV_BYTES = 12
_GCM_TAG_BYTES = 16
_RSA_BITS = 2048
_P256_COORDINATE_BYTES = 32
# Ed25519 as CKA_EC_PARAMS: the RFC 8410 object identifier, which SoftHSM2 2.6 accepts.
_ED25519_PARAMS = encode_named_curve_parameters("1.3.101.112")
_P256_PARAMS = encode_named_curve_parameters("secp256r1")
_SHA256_PSS: tuple[Mechanism, pkcs11.MGF, int] = (Mechanism.SHA256, pkcs11.MGF.SHA256, 32)

# What SoftHSM2 (and any reasonable HSM) can hold, by canonical registry name.
# ChaCha20-Poly1305 has no PKCS#11 2.40 mechanism that SoftHSM2 implements.
SUPPORTED_ALGORITHMS = frozenset(
    {"AES-256-GCM", "HMAC-SHA256", "HMAC-SHA512", "ECDSA-P256", "Ed25519", "RSA-2048"}
)
# SoftHSM2 2.6 implements RSA-OAEP with SHA-1 and no label only; the registry's RSA format is
# OAEP-SHA256 with the aad as label. Rather than decode OAEP padding by hand around raw RSA (a
# padding oracle waiting to happen), RSA keys on a token sign and verify only.
_NO_RSA_ENCRYPTION = "RSA-2048 keys of the pkcs11 provider sign and verify only"
_HMAC_MECHANISM = {"HMAC-SHA256": Mechanism.SHA256_HMAC, "HMAC-SHA512": Mechanism.SHA512_HMAC}

# Secret and private halves: on the token, only usable there, never readable.
_PROTECTED = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
}
_PUBLIC = {Attribute.TOKEN: True, Attribute.PRIVATE: False}

# CKR_KEY_FUNCTION_NOT_PERMITTED has no exception class in python-pkcs11.
_CKR_KEY_FUNCTION_NOT_PERMITTED = "0x68"

_CONFIGURATION_ERRORS: tuple[type[Exception], ...] = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinExpired,
    p11e.PinLocked,
    p11e.UserPinNotInitialized,
    p11e.NoSuchToken,
    p11e.MultipleTokensReturned,
    p11e.AnotherUserAlreadyLoggedIn,
)
_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.DeviceError,
    p11e.DeviceMemory,
    p11e.DeviceRemoved,
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.SessionCount,
    p11e.HostMemory,
    p11e.UserNotLoggedIn,
)
# How a tag that does not authenticate surfaces: SoftHSM2 2.6 answers CKR_GENERAL_ERROR for a
# bad GCM tag, other tokens CKR_ENCRYPTED_DATA_INVALID or a length error.
_DECRYPTION_ERRORS: tuple[type[Exception], ...] = (
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
    p11e.DataInvalid,
    p11e.DataLenRange,
    p11e.GeneralError,
)
_SIGNATURE_ERRORS: tuple[type[Exception], ...] = (p11e.SignatureInvalid, p11e.SignatureLenRange)


def object_label(key_id: str, number: int) -> str:
    """The CKA_LABEL of a version's token object(s); also its provider_key_ref."""
    return f"keyrotor/{key_id}/v{number}"


def object_id(label: str) -> bytes:
    """The CKA_ID for a label: fixed length, so any key id fits every token."""
    return hashlib.sha256(label.encode()).digest()[:16]


class _Connection:
    """The one logged-in session this process keeps per (module, token).

    PKCS#11 login state belongs to the application, not to a session: a second C_Login answers
    CKR_USER_ALREADY_LOGGED_IN whatever the PIN. So every provider on the same token shares one
    session, and all calls into one module go through one lock, because python-pkcs11 initialises
    the module without OS locking and its sessions are not safe to use from two threads at once.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self.session: pkcs11.Session | None = None
        self.pin: str | None = None

    def close(self) -> None:
        session, self.session, self.pin = self.session, None, None
        if session is not None:
            try:
                session.close()
            except p11e.PKCS11Error:
                pass  # the session is already gone (token removed, handle invalid)


_registry_lock = threading.Lock()
_module_locks: dict[str, threading.RLock] = {}
_connections: dict[tuple[str, str], _Connection] = {}


def _connection(module_path: str, token_label: str) -> _Connection:
    with _registry_lock:
        lock = _module_locks.setdefault(module_path, threading.RLock())
        return _connections.setdefault((module_path, token_label), _Connection(lock))


class PKCS11Provider:
    """Creates and uses key versions on a PKCS#11 token, logged in with the user PIN.

    The caller reads the module path, token label and PIN from its settings. The PIN is kept
    only to log in again after the token's session is lost, and never appears in a message.
    """

    name: str = "pkcs11"
    disables_older: bool = False

    def __init__(self, module_path: str, token_label: str, user_pin: str) -> None:
        self._module_path = module_path
        self._token_label = token_label
        self._pin = user_pin
        self._conn = _connection(module_path, token_label)

    def __repr__(self) -> str:
        return f"<PKCS11Provider token={self._token_label!r} module={self._module_path!r}>"

    # -- sessions and errors -------------------------------------------------------------------

    def _open(self) -> pkcs11.Session:
        if not os.path.exists(self._module_path):
            raise ProviderConfigurationError(f"PKCS#11 module {self._module_path} does not exist")
        try:
            lib = pkcs11.lib(self._module_path)
        except p11e.PKCS11Error as e:
            raise ProviderConfigurationError(
                f"cannot load PKCS#11 module {self._module_path}: {type(e).__name__}"
            ) from e
        try:
            token = lib.get_token(token_label=self._token_label)
        except p11e.NoSuchToken as e:
            raise ProviderConfigurationError(
                f"no PKCS#11 token labelled {self._token_label!r} in {self._module_path}"
            ) from e
        # Any other failure here (device errors) is mapped by the caller's _translate.
        return token.open(rw=True, user_pin=self._pin)

    def _session(self) -> pkcs11.Session:
        """The shared session, logged in with this provider's PIN; call with the lock held."""
        conn = self._conn
        if conn.session is not None and conn.pin is not None:
            if hmac.compare_digest(conn.pin.encode(), self._pin.encode()):
                return conn.session
            # Another provider logged in with a different PIN: this one's PIN must prove itself
            # too, which needs a logout; on failure the previous login is restored.
            previous = conn.pin
            conn.close()
            try:
                conn.session = self._open()
            except (ProviderError, p11e.PKCS11Error):
                try:
                    conn.session = PKCS11Provider(
                        self._module_path, self._token_label, previous
                    )._open()
                    conn.pin = previous
                except (ProviderError, p11e.PKCS11Error):
                    conn.close()
                raise
            conn.pin = self._pin
            return conn.session
        conn.close()
        conn.session = self._open()
        conn.pin = self._pin
        return conn.session

    def _translate(self, e: p11e.PKCS11Error, what: str) -> ProviderError:
        # Messages name the operation and the PKCS#11 error class: never the PIN or data.
        kind = type(e).__name__
        if isinstance(e, _CONFIGURATION_ERRORS):
            # Keep the connection: _session has already restored another provider's login.
            return ProviderConfigurationError(
                f"PKCS#11 token {self._token_label!r} refused {what}: {kind}"
            )
        if isinstance(e, _UNAVAILABLE_ERRORS):
            # The session is unusable; the next call opens and logs in afresh.
            self._conn.close()
            return ProviderUnavailableError(
                f"PKCS#11 token {self._token_label!r} unavailable during {what}: {kind}"
            )
        if type(e) is p11e.PKCS11Error and _CKR_KEY_FUNCTION_NOT_PERMITTED in str(e):
            return ProviderOperationError(
                f"PKCS#11 token does not permit {what} with this key (the version is disabled)"
            )
        return ProviderOperationError(f"PKCS#11 {what} failed: {kind}")

    def _call(self, what: str, fn: Callable[[pkcs11.Session], T]) -> T:
        with self._conn.lock:
            try:
                return fn(self._session())
            except p11e.PKCS11Error as e:
                raise self._translate(e, what) from e

    # -- objects -------------------------------------------------------------------------------

    def _algorithm(self, name: str) -> Algorithm:
        return held(self.name, SUPPORTED_ALGORITHMS, name)

    @staticmethod
    def _ref(version: VersionHandle) -> str:
        return version.provider_key_ref or object_label(version.key_id, version.number)

    @staticmethod
    def _objects(session: pkcs11.Session, ref: str) -> list[Any]:
        return list(session.get_objects({Attribute.ID: object_id(ref), Attribute.LABEL: ref}))

    def _find(self, session: pkcs11.Session, ref: str, object_class: ObjectClass) -> Any:
        found = [o for o in self._objects(session, ref) if o.object_class == object_class]
        if not found:
            raise ProviderOperationError(f"PKCS#11 object {ref} ({object_class.name}) not found")
        if len(found) > 1:
            raise ProviderOperationError(f"PKCS#11 object {ref} exists {len(found)} times")
        return found[0]

    @staticmethod
    def _usable(obj: Any, method: str, what: str) -> Any:
        # python-pkcs11 gives an object the encrypt/sign/... methods only while the matching
        # CKA_ attribute is true, so a disabled version's object lacks them altogether.
        if not hasattr(obj, method):
            raise ProviderOperationError(
                f"PKCS#11 token does not permit {what} with this key (the version is disabled)"
            )
        return obj

    def _main_class(self, algo: Algorithm) -> ObjectClass:
        if algo.name == "AES-256-GCM" or algo.name in _HMAC_MECHANISM:
            return ObjectClass.SECRET_KEY
        return ObjectClass.PRIVATE_KEY

    # -- KeyProvider ---------------------------------------------------------------------------

    def supports(self, algorithm: str) -> bool:
        return holds(SUPPORTED_ALGORITHMS, algorithm)

    def create_version(
        self, key_id: str, number: int, algorithm: str, key_bits: int | None = None
    ) -> VersionMaterial:
        algo = self._algorithm(algorithm)
        bits = algo.default_key_bits if key_bits is None else key_bits
        algo.validate_key_bits(bits)
        ref = object_label(key_id, number)

        def create(session: pkcs11.Session) -> VersionMaterial:
            # Find-then-generate runs under the module lock, so two threads of this process
            # retrying the same activity cannot both generate.
            existing = self._objects(session, ref)
            if not existing:
                self._generate(session, algo, bits, ref)
            main = self._find(session, ref, self._main_class(algo))
            if main.key_type != self._key_type(algo):
                raise ProviderOperationError(
                    f"PKCS#11 object {ref} exists with key type {main.key_type.name}, "
                    f"not {algo.name}"
                )
            return VersionMaterial(
                provider_key_ref=ref,
                wrapped_material=None,
                public_key=self._spki(session, algo, ref),
            )

        return self._call(f"create {algo.name} key", create)

    def import_version(
        self, key_id: str, number: int, algorithm: str, material: bytes
    ) -> VersionMaterial:
        """A version made on the token of material brought in (BYOK), protected like a
        generated one (secret and private halves sensitive, not extractable): a secret key
        (AES, HMAC: the raw key) or a key pair (PKCS#8 DER of the private key), created by value
        (C_CreateObject). A token that takes no private keys by value refuses it, and nothing is
        left on it."""
        algo = self._algorithm(algorithm)
        ref = object_label(key_id, number)
        identity = {
            Attribute.KEY_TYPE: self._key_type(algo),
            Attribute.LABEL: ref,
            Attribute.ID: object_id(ref),
        }
        if self._main_class(algo) == ObjectClass.SECRET_KEY:
            usage = (Attribute.ENCRYPT, Attribute.DECRYPT)
            if algo.name in _HMAC_MECHANISM:
                usage = (Attribute.SIGN, Attribute.VERIFY)
            templates = [
                {
                    **_PROTECTED,
                    **identity,
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.VALUE: material,
                    **dict.fromkeys(usage, True),
                }
            ]
        else:
            private, public = _pair_values(algo, material)
            templates = [
                {
                    **_PROTECTED,
                    **identity,
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.SIGN: True,
                    **private,
                },
                {
                    **_PUBLIC,
                    **identity,
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.VERIFY: True,
                    **public,
                },
            ]

        def create(session: pkcs11.Session) -> VersionMaterial:
            if self._objects(session, ref):
                raise ProviderOperationError(f"PKCS#11 object {ref} exists already")
            made = []
            try:
                for template in templates:
                    made.append(session.create_object(template))
            except p11e.PKCS11Error:
                for obj in made:  # no half of a pair stays behind
                    obj.destroy()
                raise
            return VersionMaterial(
                provider_key_ref=ref,
                wrapped_material=None,
                public_key=self._spki(session, algo, ref),
            )

        return self._call(f"import {algo.name} key", create)

    @staticmethod
    def _key_type(algo: Algorithm) -> KeyType:
        return {
            "AES-256-GCM": KeyType.AES,
            "HMAC-SHA256": KeyType.GENERIC_SECRET,
            "HMAC-SHA512": KeyType.GENERIC_SECRET,
            "ECDSA-P256": KeyType.EC,
            "Ed25519": KeyType.EC_EDWARDS,
            "RSA-2048": KeyType.RSA,
        }[algo.name]

    def _generate(self, session: pkcs11.Session, algo: Algorithm, bits: int, ref: str) -> None:
        oid = object_id(ref)
        if algo.name == "AES-256-GCM":
            session.generate_key(
                KeyType.AES,
                bits,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template=_PROTECTED,
                id=oid,
                label=ref,
                store=True,
            )
        elif algo.name in _HMAC_MECHANISM:
            session.generate_key(
                KeyType.GENERIC_SECRET,
                bits,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                template=_PROTECTED,
                id=oid,
                label=ref,
                store=True,
            )
        elif algo.name == "ECDSA-P256":
            session.generate_keypair(
                KeyType.EC,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={**_PUBLIC, Attribute.EC_PARAMS: _P256_PARAMS},
                private_template=_PROTECTED,
                id=oid,
                label=ref,
                store=True,
            )
        elif algo.name == "Ed25519":
            session.generate_keypair(
                KeyType.EC_EDWARDS,
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={**_PUBLIC, Attribute.EC_PARAMS: _ED25519_PARAMS},
                private_template=_PROTECTED,
                id=oid,
                label=ref,
                store=True,
            )
        else:  # RSA-2048
            session.generate_keypair(
                KeyType.RSA,
                bits,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={**_PUBLIC, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
                private_template=_PROTECTED,
                id=oid,
                label=ref,
                store=True,
            )

    def _spki(self, session: pkcs11.Session, algo: Algorithm, ref: str) -> bytes | None:
        if self._main_class(algo) == ObjectClass.SECRET_KEY:
            return None
        pub = self._find(session, ref, ObjectClass.PUBLIC_KEY)
        key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
        if algo.name == "RSA-2048":
            key = rsa.RSAPublicNumbers(
                int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"),
                int.from_bytes(pub[Attribute.MODULUS], "big"),
            ).public_key()
        else:
            point = _unwrap_octet_string(pub[Attribute.EC_POINT])
            if algo.name == "Ed25519":
                key = ed25519.Ed25519PublicKey.from_public_bytes(point)
            else:
                key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def encrypt(self, version: VersionHandle, plaintext: bytes, aad: bytes) -> bytes:
        algo = self._algorithm(version.algorithm)
        if algo.name == "RSA-2048":
            raise UnsupportedOperationError(_NO_RSA_ENCRYPTION)
        # Rejects MAC and signature algorithms with the registry's own error.
        if algo.name != "AES-256-GCM":
            return algo.encrypt(b"", plaintext, aad)
        ref = self._ref(version)

        def run(session: pkcs11.Session) -> bytes:
            key = self._usable(
                self._find(session, ref, ObjectClass.SECRET_KEY), "encrypt", "encrypt"
            )
            # The token's RNG makes the IV: a random 96-bit IV per message, as for the local
            # provider, so the ciphertext format (iv || ct || tag) is the same.
            iv = session.generate_random(_GCM_IV_BYTES * 8)
            ciphertext: bytes = key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=pkcs11.GCMParams(iv, aad)
            )
            return iv + ciphertext

        return self._call("encrypt", run)

    def decrypt(self, version: VersionHandle, data: bytes, aad: bytes) -> bytes:
        algo = self._algorithm(version.algorithm)
        if algo.name == "RSA-2048":
            raise UnsupportedOperationError(_NO_RSA_ENCRYPTION)
        if algo.name != "AES-256-GCM":
            return algo.decrypt(b"", data, aad)
        if len(data) < _GCM_IV_BYTES + _GCM_TAG_BYTES:
            raise DecryptionError("decryption failed")
        ref = self._ref(version)

        def run(session: pkcs11.Session) -> bytes:
            key = self._usable(
                self._find(session, ref, ObjectClass.SECRET_KEY), "decrypt", "decrypt"
            )
            params = pkcs11.GCMParams(data[:_GCM_IV_BYTES], aad)
            with _decryption_errors():
                plaintext: bytes = key.decrypt(
                    data[_GCM_IV_BYTES:], mechanism=Mechanism.AES_GCM, mechanism_param=params
                )
            return plaintext

        return self._call("decrypt", run)

    def sign(self, version: VersionHandle, message: bytes) -> bytes:
        algo = self._algorithm(version.algorithm)
        ref = self._ref(version)
        if algo.name == "AES-256-GCM":
            return algo.sign(b"", message)

        def run(session: pkcs11.Session) -> bytes:
            if algo.name in _HMAC_MECHANISM:
                key = self._usable(self._find(session, ref, ObjectClass.SECRET_KEY), "sign", "sign")
                tag: bytes = key.sign(message, mechanism=_HMAC_MECHANISM[algo.name])
                return tag
            key = self._usable(self._find(session, ref, ObjectClass.PRIVATE_KEY), "sign", "sign")
            if algo.name == "ECDSA-P256":
                raw: bytes = key.sign(hashlib.sha256(message).digest(), mechanism=Mechanism.ECDSA)
                half = len(raw) // 2
                # DER (r, s), the format of the local provider and of `cryptography`.
                return encode_dss_signature(
                    int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
                )
            if algo.name == "Ed25519":
                signature: bytes = key.sign(message, mechanism=Mechanism.EDDSA)
                return signature
            pss: bytes = key.sign(
                message, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=_SHA256_PSS
            )
            return pss

        return self._call("sign", run)

    def verify(self, version: VersionHandle, message: bytes, signature: bytes) -> None:
        algo = self._algorithm(version.algorithm)
        ref = self._ref(version)
        if algo.name == "AES-256-GCM":
            algo.verify(b"", message, signature)
            return
        bad = InvalidSignatureError(f"{algo.name} signature does not verify")

        def run(session: pkcs11.Session) -> bool:
            if algo.name in _HMAC_MECHANISM:
                key = self._usable(
                    self._find(session, ref, ObjectClass.SECRET_KEY), "verify", "verify"
                )
                return bool(key.verify(message, signature, mechanism=_HMAC_MECHANISM[algo.name]))
            key = self._usable(self._find(session, ref, ObjectClass.PUBLIC_KEY), "verify", "verify")
            if algo.name == "ECDSA-P256":
                try:
                    r, s = decode_dss_signature(signature)
                    raw = r.to_bytes(_P256_COORDINATE_BYTES, "big") + s.to_bytes(
                        _P256_COORDINATE_BYTES, "big"
                    )
                except (ValueError, OverflowError):
                    return False
                digest = hashlib.sha256(message).digest()
                return bool(key.verify(digest, raw, mechanism=Mechanism.ECDSA))
            if algo.name == "Ed25519":
                return bool(key.verify(message, signature, mechanism=Mechanism.EDDSA))
            return bool(
                key.verify(
                    message,
                    signature,
                    mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                    mechanism_param=_SHA256_PSS,
                )
            )

        try:
            ok = self._call("verify", run)
        except ProviderOperationError as e:
            # A malformed signature of the wrong size is a bad signature, not a token fault.
            if isinstance(e.__cause__, _SIGNATURE_ERRORS):
                raise bad from None
            raise
        if not ok:
            raise bad

    def public_key(self, version: VersionHandle) -> bytes | None:
        algo = self._algorithm(version.algorithm)
        ref = self._ref(version)

        def run(session: pkcs11.Session) -> bytes | None:
            try:
                return self._spki(session, algo, ref)
            except ProviderOperationError:
                # Destroyed on the token: the copy stored at creation is still the public key.
                return version.public_key

        return self._call("public key read", run)

    def disable_version(self, version: VersionHandle) -> None:
        ref = self._ref(version)
        # Switch off every function the objects have; the token then refuses with
        # CKR_KEY_FUNCTION_NOT_PERMITTED. Setting an attribute that is already false is a no-op,
        # so this is idempotent.
        usage = {
            ObjectClass.SECRET_KEY: (
                Attribute.ENCRYPT,
                Attribute.DECRYPT,
                Attribute.SIGN,
                Attribute.VERIFY,
            ),
            ObjectClass.PRIVATE_KEY: (Attribute.SIGN, Attribute.DECRYPT),
            ObjectClass.PUBLIC_KEY: (Attribute.VERIFY, Attribute.ENCRYPT),
        }

        def run(session: pkcs11.Session) -> None:
            for obj in self._objects(session, ref):
                for attribute in usage.get(obj.object_class, ()):
                    try:
                        if obj[attribute]:
                            obj[attribute] = False
                    except p11e.AttributeTypeInvalid:
                        pass  # this key type lacks the function altogether

        self._call("disable", run)

    def destroy_version(self, version: VersionHandle) -> None:
        ref = self._ref(version)

        def run(session: pkcs11.Session) -> None:
            # Not finding the objects means an earlier call destroyed them: idempotent.
            for obj in self._objects(session, ref):
                obj.destroy()

        self._call("destroy", run)

    def health(self) -> ProviderHealth:
        def run(session: pkcs11.Session) -> ProviderHealth:
            token = session.token
            return ProviderHealth(
                ok=True,
                detail=(
                    f"PKCS#11 token {token.label!r} ({token.manufacturer_id} {token.model}), "
                    f"module {self._module_path}"
                ),
            )

        try:
            return self._call("health check", run)
        except ProviderError as e:
            return ProviderHealth(ok=False, detail=str(e))


@contextmanager
def _decryption_errors() -> Iterator[None]:
    try:
        yield
    except _DECRYPTION_ERRORS:
        raise DecryptionError("decryption failed") from None


def _pair_values(
    algo: Algorithm, material: bytes
) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
    """The value attributes of the private and public key objects of a PKCS#8 private key of
    `algo` (ProviderOperationError if it is not one)."""
    try:
        private = serialization.load_der_private_key(material, None)
    except ValueError:
        raise ProviderOperationError(f"not a PKCS#8 {algo.name} private key") from None
    if (
        algo.name == "RSA-2048"
        and isinstance(private, rsa.RSAPrivateKey)
        and private.key_size == _RSA_BITS
    ):
        n = private.private_numbers()
        values = {
            Attribute.PRIVATE_EXPONENT: n.d,
            Attribute.PRIME_1: n.p,
            Attribute.PRIME_2: n.q,
            Attribute.EXPONENT_1: n.dmp1,
            Attribute.EXPONENT_2: n.dmq1,
            Attribute.COEFFICIENT: n.iqmp,
        }
        public = {
            Attribute.MODULUS: big_endian(n.public_numbers.n),
            Attribute.PUBLIC_EXPONENT: big_endian(n.public_numbers.e),
        }
        return {**public, **{a: big_endian(v) for a, v in values.items()}}, public
    if algo.name == "ECDSA-P256" and isinstance(private, ec.EllipticCurvePrivateKey):
        if isinstance(private.curve, ec.SECP256R1):
            point = private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            value = private.private_numbers().private_value.to_bytes(_P256_COORDINATE_BYTES, "big")
            return {Attribute.EC_PARAMS: _P256_PARAMS, Attribute.VALUE: value}, {
                Attribute.EC_PARAMS: _P256_PARAMS,
                Attribute.EC_POINT: _octet_string(point),
            }
    if algo.name == "Ed25519" and isinstance(private, ed25519.Ed25519PrivateKey):
        raw = serialization.Encoding.Raw
        seed = private.private_bytes(
            raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        point = private.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
        return {Attribute.EC_PARAMS: _ED25519_PARAMS, Attribute.VALUE: seed}, {
            Attribute.EC_PARAMS: _ED25519_PARAMS,
            Attribute.EC_POINT: _octet_string(point),
        }
    raise ProviderOperationError(f"not a PKCS#8 {algo.name} private key")


def _octet_string(value: bytes) -> bytes:
    """A short DER OCTET STRING (CKA_EC_POINT's encoding): the points here are under 128 bytes."""
    return bytes((0x04, len(value))) + value


def _unwrap_octet_string(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING on most tokens, the raw point on a few."""
    if len(value) >= 2 and value[0] == 0x04:
        length = value[1]
        if length < 0x80 and length == len(value) - 2:
            return value[2:]
        if length == 0x81 and len(value) > 3 and value[2] == len(value) - 3:
            return value[3:]
    return value
