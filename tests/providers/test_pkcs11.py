"""PKCS#11-specific behaviour on a real SoftHSM2 token: where the keys live and with which
attributes, idempotent creation, disable and destroy on the token, configuration errors, threads,
and that the PIN never reaches an error message."""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, ObjectClass

from core.algorithms import InvalidSignatureError, UnsupportedOperationError, resolve
from core.providers.base import (
    ProviderConfigurationError,
    ProviderError,
    ProviderOperationError,
    UnsupportedAlgorithmError,
    VersionHandle,
)
from core.providers.pkcs11 import PKCS11Provider, object_id, object_label
from tests.providers.contract import MESSAGE, new_version

if TYPE_CHECKING:
    from tests.fixtures.softhsm import SoftHSMToken


ALGORITHMS = ("AES-256-GCM", "HMAC-SHA256", "HMAC-SHA512", "ECDSA-P256", "Ed25519", "RSA-2048")
WRONG_PIN = "wrong-pin-71c4e0"


@pytest.fixture
def provider(softhsm_token: SoftHSMToken) -> PKCS11Provider:
    return PKCS11Provider(softhsm_token.module_path, softhsm_token.label, softhsm_token.pin)


@pytest.fixture
def inspector(softhsm_token: SoftHSMToken, provider: PKCS11Provider) -> Iterator[pkcs11.Session]:
    """A second, independent session for reading objects back from the token.

    Login state is per application, so this session sees private objects once the provider has
    logged in; it does not log in itself (a second C_Login would be refused).
    """
    provider.health()  # logs the application in
    token = pkcs11.lib(softhsm_token.module_path).get_token(token_label=softhsm_token.label)
    session = token.open()
    yield session
    session.close()


def objects(session: pkcs11.Session, v: VersionHandle) -> list[Any]:
    label = object_label(v.key_id, v.number)
    return list(session.get_objects({Attribute.LABEL: label, Attribute.ID: object_id(label)}))


def secret_objects(session: pkcs11.Session, v: VersionHandle) -> list[Any]:
    return [
        o
        for o in objects(session, v)
        if o.object_class in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY)
    ]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keys_are_generated_on_the_token_sensitive_and_not_extractable(
    provider: PKCS11Provider, inspector: pkcs11.Session, algorithm: str
) -> None:
    v = new_version(provider, algorithm)
    assert v.provider_key_ref == object_label(v.key_id, v.number)
    assert v.wrapped_material is None  # nothing of the key leaves the token
    [key] = secret_objects(inspector, v)
    attrs = key.get_attributes(
        [
            Attribute.TOKEN,
            Attribute.PRIVATE,
            Attribute.SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.ALWAYS_SENSITIVE,
            Attribute.NEVER_EXTRACTABLE,
            Attribute.LOCAL,
        ]
    )
    assert attrs == {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.ALWAYS_SENSITIVE: True,
        Attribute.NEVER_EXTRACTABLE: True,
        Attribute.LOCAL: True,  # generated on the token, not imported
    }
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        key[Attribute.VALUE if key.object_class == ObjectClass.SECRET_KEY else _private_part(v)]


def _private_part(v: VersionHandle) -> Attribute:
    return Attribute.PRIVATE_EXPONENT if v.algorithm == "RSA-2048" else Attribute.VALUE


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "HMAC-SHA512"])
def test_secret_keys_cannot_be_wrapped_out(
    provider: PKCS11Provider, inspector: pkcs11.Session, algorithm: str
) -> None:
    v = new_version(provider, algorithm)
    [key] = secret_objects(inspector, v)
    wrapper = inspector.generate_key(
        pkcs11.KeyType.AES, 256, template={Attribute.WRAP: True}, store=False
    )
    with pytest.raises(pkcs11.exceptions.PKCS11Error):
        wrapper.wrap_key(key, mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD)
    # The HMAC key's length is what the registry asked for.
    if algorithm == "HMAC-SHA512":
        assert key[Attribute.VALUE_LEN] == 64


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_create_twice_leaves_one_object(
    provider: PKCS11Provider, inspector: pkcs11.Session, algorithm: str
) -> None:
    v = new_version(provider, algorithm)
    again = provider.create_version(v.key_id, v.number, algorithm)
    assert again.provider_key_ref == v.provider_key_ref
    assert again.public_key == v.public_key
    expected = 1 if resolve(algorithm).kind != "signature" else 2  # a secret, or a key pair
    assert len(objects(inspector, v)) == expected


def test_same_version_created_concurrently_is_one_object(
    provider: PKCS11Provider, inspector: pkcs11.Session
) -> None:
    key_id = f"key_race{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(lambda _: provider.create_version(key_id, 1, "ECDSA-P256"), range(6))
        )
    assert len({r.public_key for r in results}) == 1
    v = VersionHandle(key_id, 1, "ECDSA-P256", results[0].provider_key_ref, None, None)
    assert len(objects(inspector, v)) == 2


def test_asymmetric_outputs_interoperate_with_the_public_key(provider: PKCS11Provider) -> None:
    ecdsa = new_version(provider, "ECDSA-P256")
    public = serialization.load_der_public_key(ecdsa.public_key or b"")
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(provider.sign(ecdsa, MESSAGE), MESSAGE, ec.ECDSA(hashes.SHA256()))

    ed = new_version(provider, "Ed25519")
    ed_public = serialization.load_der_public_key(ed.public_key or b"")
    assert isinstance(ed_public, ed25519.Ed25519PublicKey)
    ed_public.verify(provider.sign(ed, MESSAGE), MESSAGE)

    rsa_v = new_version(provider, "RSA-2048")
    rsa_public = serialization.load_der_public_key(rsa_v.public_key or b"")
    assert isinstance(rsa_public, rsa.RSAPublicKey) and rsa_public.key_size == 2048
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    rsa_public.verify(provider.sign(rsa_v, MESSAGE), MESSAGE, pss, hashes.SHA256())
    # No RSA encryption on a token (SoftHSM2 has OAEP-SHA1 only): refused, not emulated.
    with pytest.raises(UnsupportedOperationError, match="sign and verify only"):
        provider.encrypt(rsa_v, MESSAGE, b"aad")
    with pytest.raises(UnsupportedOperationError, match="sign and verify only"):
        provider.decrypt(rsa_v, b"x" * 256, b"aad")
    # A signature from a foreign key is refused by the token's verify.
    foreign = ec.generate_private_key(ec.SECP256R1()).sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignatureError):
        provider.verify(ecdsa, MESSAGE, foreign)
    with pytest.raises(InvalidSignatureError):
        provider.verify(ecdsa, MESSAGE, b"not DER")


def test_chacha20_is_unsupported(provider: PKCS11Provider) -> None:
    assert not provider.supports("ChaCha20-Poly1305")
    with pytest.raises(UnsupportedAlgorithmError):
        provider.create_version("key_chacha", 1, "ChaCha20-Poly1305")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_disable_switches_the_key_off_on_the_token(
    provider: PKCS11Provider, inspector: pkcs11.Session, algorithm: str
) -> None:
    v = new_version(provider, algorithm)
    provider.disable_version(v)
    for obj in objects(inspector, v):
        for attribute in (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.SIGN, Attribute.VERIFY):
            try:
                assert obj[attribute] is False, (obj.object_class, attribute)
            except pkcs11.exceptions.AttributeTypeInvalid:
                pass
    ops: list[Any] = []
    if algorithm == "AES-256-GCM":
        ops += [
            lambda: provider.encrypt(v, MESSAGE, b""),
            lambda: provider.decrypt(v, b"x" * 256, b""),
        ]
    if algorithm != "AES-256-GCM":
        ops += [lambda: provider.sign(v, MESSAGE), lambda: provider.verify(v, MESSAGE, b"sig")]
    for op in ops:
        with pytest.raises(ProviderOperationError):
            op()
    # The objects stay (a disabled version can still be described); the public key too.
    assert objects(inspector, v)
    assert provider.public_key(v) == v.public_key


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "Ed25519"])
def test_destroy_removes_the_objects(
    provider: PKCS11Provider, inspector: pkcs11.Session, algorithm: str
) -> None:
    v = new_version(provider, algorithm)
    other = new_version(provider, algorithm, 2, key_id=v.key_id)
    provider.destroy_version(v)
    assert objects(inspector, v) == []
    assert objects(inspector, other)  # only this version's objects went
    provider.destroy_version(v)
    with pytest.raises(ProviderOperationError):
        provider.sign(v, MESSAGE) if algorithm == "Ed25519" else provider.encrypt(v, MESSAGE, b"")
    # The stored copy of a public key is still the answer once the token's copy is gone.
    assert provider.public_key(v) == v.public_key


def test_wrong_pin_is_a_configuration_error(
    softhsm_token: SoftHSMToken, provider: PKCS11Provider
) -> None:
    good = new_version(provider, "HMAC-SHA256")  # the process is logged in with the right PIN
    bad = PKCS11Provider(softhsm_token.module_path, softhsm_token.label, WRONG_PIN)
    with pytest.raises(ProviderConfigurationError) as info:
        bad.create_version("key_wrongpin", 1, "AES-256-GCM")
    assert not info.value.retryable
    health = bad.health()
    assert not health.ok and "PinIncorrect" in health.detail
    # The wrong PIN did not break the logged-in provider, nor get in through its login.
    provider.verify(good, MESSAGE, provider.sign(good, MESSAGE))
    with pytest.raises(ProviderConfigurationError):
        bad.sign(good, MESSAGE)


def test_missing_token_and_module_are_configuration_errors(softhsm_token: SoftHSMToken) -> None:
    no_token = PKCS11Provider(softhsm_token.module_path, "no-such-token", softhsm_token.pin)
    with pytest.raises(ProviderConfigurationError, match="no-such-token"):
        no_token.create_version("key_x", 1, "AES-256-GCM")
    assert not no_token.health().ok
    no_module = PKCS11Provider("/nonexistent/libpkcs11.so", softhsm_token.label, softhsm_token.pin)
    with pytest.raises(ProviderConfigurationError, match="does not exist"):
        no_module.create_version("key_x", 1, "AES-256-GCM")


def test_health_names_the_token(softhsm_token: SoftHSMToken, provider: PKCS11Provider) -> None:
    health = provider.health()
    assert health.ok
    assert softhsm_token.label in health.detail
    assert softhsm_token.pin not in health.detail


def test_concurrent_use_from_threads(provider: PKCS11Provider) -> None:
    aes = new_version(provider, "AES-256-GCM")
    mac = new_version(provider, "HMAC-SHA256")
    ecdsa = new_version(provider, "ECDSA-P256")

    def work(i: int) -> None:
        message = MESSAGE + str(i).encode()
        aad = f"aad{i}".encode()
        assert provider.decrypt(aes, provider.encrypt(aes, message, aad), aad) == message
        provider.verify(mac, message, provider.sign(mac, message))
        provider.verify(ecdsa, message, provider.sign(ecdsa, message))
        new_version(provider, "HMAC-SHA512", key_id=f"key_thread{i}_{uuid.uuid4().hex[:6]}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(48)))  # re-raises the first failure of any thread


def test_no_pin_in_any_error_message(softhsm_token: SoftHSMToken, provider: PKCS11Provider) -> None:
    errors: list[BaseException] = []
    v = new_version(provider, "ECDSA-P256")
    provider.disable_version(v)
    d = new_version(provider, "AES-256-GCM")
    provider.destroy_version(d)
    attempts: list[Any] = [
        lambda: provider.sign(v, MESSAGE),
        lambda: provider.encrypt(d, MESSAGE, b""),
        lambda: PKCS11Provider(softhsm_token.module_path, softhsm_token.label, WRONG_PIN).sign(
            v, MESSAGE
        ),
        lambda: PKCS11Provider(softhsm_token.module_path, "absent", softhsm_token.pin).sign(
            v, MESSAGE
        ),
        lambda: PKCS11Provider("/nonexistent.so", softhsm_token.label, softhsm_token.pin).sign(
            v, MESSAGE
        ),
    ]
    for attempt in attempts:
        with pytest.raises(ProviderError) as info:
            attempt()
        errors.append(info.value)
    assert len(errors) == len(attempts)
    texts = [
        PKCS11Provider(softhsm_token.module_path, softhsm_token.label, WRONG_PIN).health().detail,
        repr(provider),
    ]
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            texts += [str(chain), repr(chain)]
            chain = chain.__cause__ or chain.__context__
    for text in texts:
        assert softhsm_token.pin not in text
        assert WRONG_PIN not in text


def test_imported_secret_keys_are_used_on_the_token_and_protected(
    provider: PKCS11Provider, inspector: pkcs11.Session
) -> None:
    material = os.urandom(32)
    key_id = f"key_p11import{uuid.uuid4().hex[:10]}"
    made = provider.import_version(key_id, 1, "AES-256-GCM", material)
    v = VersionHandle(key_id, 1, "AES-256-GCM", made.provider_key_ref, None, None)
    [key] = secret_objects(inspector, v)
    assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
    # the token encrypts with the material brought in: it opens outside the token with it
    ciphertext = provider.encrypt(v, MESSAGE, b"aad")
    assert AESGCM(material).decrypt(ciphertext[:12], ciphertext[12:], b"aad") == MESSAGE

    mac_key = os.urandom(32)
    made = provider.import_version(key_id, 2, "HMAC-SHA256", mac_key)
    mac = VersionHandle(key_id, 2, "HMAC-SHA256", made.provider_key_ref, None, None)
    assert provider.sign(mac, MESSAGE) == hmac.new(mac_key, MESSAGE, hashlib.sha256).digest()

    with pytest.raises(ProviderOperationError, match="exists already"):
        provider.import_version(key_id, 1, "AES-256-GCM", material)


@pytest.mark.parametrize("algorithm", ["ECDSA-P256", "Ed25519", "RSA-2048"])
def test_imported_key_pairs_sign_on_the_token_and_are_protected(
    provider: PKCS11Provider, inspector: pkcs11.Session, algorithm: str
) -> None:
    private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey = {
        "ECDSA-P256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "Ed25519": ed25519.Ed25519PrivateKey.generate,
        "RSA-2048": lambda: rsa.generate_private_key(65537, 2048),
    }[algorithm]()
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_id = f"key_p11import{uuid.uuid4().hex[:10]}"
    made = provider.import_version(key_id, 1, algorithm, der)
    assert made.public_key == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    v = VersionHandle(key_id, 1, algorithm, made.provider_key_ref, None, made.public_key)
    [key] = secret_objects(inspector, v)
    assert key.object_class == ObjectClass.PRIVATE_KEY
    assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
    # the token signs with the key brought in: the signature verifies outside with its public key
    signature = provider.sign(v, MESSAGE)
    resolve(algorithm).verify(der, MESSAGE, signature)  # raises unless made with that key
    provider.verify(v, MESSAGE, signature)
    with pytest.raises(InvalidSignatureError):
        provider.verify(v, MESSAGE + b"!", signature)


def test_material_that_is_not_a_key_of_the_algorithm_leaves_nothing_on_the_token(
    provider: PKCS11Provider, inspector: pkcs11.Session
) -> None:
    key_id = f"key_p11import{uuid.uuid4().hex[:10]}"
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    rsa_3072 = rsa.generate_private_key(65537, 3072).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for algorithm, material in (
        ("ECDSA-P256", p384),
        ("Ed25519", p384),
        ("RSA-2048", rsa_3072),
        ("RSA-2048", b"der"),
    ):
        with pytest.raises(ProviderOperationError, match="not a PKCS#8"):
            provider.import_version(key_id, 1, algorithm, material)
    v = VersionHandle(key_id, 1, "ECDSA-P256", object_label(key_id, 1), None, None)
    assert objects(inspector, v) == []
