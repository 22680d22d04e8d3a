"""The local provider: material sealed under the master key, bound to its key version."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from cryptography.hazmat.primitives import serialization

from core.algorithms import (
    AlgorithmError,
    DecryptionError,
    InvalidSignatureError,
    Operation,
    UnsupportedOperationError,
    canonical_names,
    resolve,
)
from core.envelope import MasterKeyring, envelope_key_id, master_key_id, open_envelope
from core.providers.base import (
    KeyProvider,
    ProviderError,
    ProviderOperationError,
    ProviderUnavailableError,
    UnsupportedAlgorithmError,
    VersionHandle,
    VersionMaterial,
)
from core.providers.local import LocalProvider, material_context

KEY_A = bytes(range(32))
KEY_B = bytes(range(50, 82))


@pytest.fixture
def provider() -> LocalProvider:
    return LocalProvider(MasterKeyring([KEY_A]))


def handle(key_id: str, number: int, algorithm: str, material: VersionMaterial) -> VersionHandle:
    return VersionHandle(
        key_id=key_id,
        number=number,
        algorithm=algorithm,
        provider_key_ref=material.provider_key_ref,
        wrapped_material=material.wrapped_material,
        public_key=material.public_key,
    )


def use(provider: KeyProvider, version: VersionHandle) -> None:
    """Run every operation the algorithm has and check it round-trips."""
    operations = resolve(version.algorithm).operations
    if Operation.ENCRYPT in operations:
        aad = b"" if version.algorithm.startswith("RSA") else b"aad"
        data = provider.encrypt(version, b"plaintext", aad)
        assert b"plaintext" not in data
        assert provider.decrypt(version, data, aad) == b"plaintext"
    if Operation.SIGN in operations:
        signature = provider.sign(version, b"message")
        provider.verify(version, b"message", signature)
        with pytest.raises(InvalidSignatureError):
            provider.verify(version, b"other message", signature)


def test_is_a_key_provider(provider: LocalProvider) -> None:
    typed: KeyProvider = provider
    assert typed.name == "local"


@pytest.mark.parametrize("algorithm", canonical_names())
def test_create_version_and_use_it(provider: LocalProvider, algorithm: str) -> None:
    assert provider.supports(algorithm)
    material = provider.create_version("key_abc", 1, algorithm)
    assert material.provider_key_ref == ""
    assert material.wrapped_material is not None
    assert envelope_key_id(material.wrapped_material) == master_key_id(KEY_A)
    version = handle("key_abc", 1, algorithm, material)
    use(provider, version)

    # A fresh provider (a restarted process: empty cache) with the same keyring can use it.
    use(LocalProvider(MasterKeyring([KEY_A])), version)


@pytest.mark.parametrize("algorithm", canonical_names())
def test_material_is_not_in_clear(provider: LocalProvider, algorithm: str) -> None:
    material = provider.create_version("key_abc", 3, algorithm)
    assert material.wrapped_material is not None
    raw = open_envelope(
        MasterKeyring([KEY_A]), material.wrapped_material, material_context("key_abc", 3)
    )
    assert len(raw) >= 32
    assert raw not in material.wrapped_material
    # No 16-byte window of the secret appears either (e.g. a partially unwrapped key).
    for start in range(0, len(raw) - 16, 8):
        assert raw[start : start + 16] not in material.wrapped_material
    assert "wrapped_material" not in repr(material)


@pytest.mark.parametrize(
    ("algorithm", "has_public_key"),
    [
        ("AES-256-GCM", False),
        ("ChaCha20-Poly1305", False),
        ("HMAC-SHA256", False),
        ("HMAC-SHA512", False),
        ("Ed25519", True),
        ("ECDSA-P256", True),
        ("RSA-2048", True),
    ],
)
def test_public_key_matches_the_sealed_private_key(
    provider: LocalProvider, algorithm: str, has_public_key: bool
) -> None:
    material = provider.create_version("key_abc", 1, algorithm)
    assert (material.public_key is not None) == has_public_key
    if material.public_key is not None:
        assert material.wrapped_material is not None
        raw = open_envelope(
            MasterKeyring([KEY_A]), material.wrapped_material, material_context("key_abc", 1)
        )
        private = serialization.load_der_private_key(raw, password=None)
        assert (
            private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == material.public_key
        )


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "Ed25519", "HMAC-SHA256"])
def test_sealed_material_is_bound_to_key_and_version(
    provider: LocalProvider, algorithm: str
) -> None:
    material = provider.create_version("key_abc", 2, algorithm)
    version = handle("key_abc", 2, algorithm, material)
    use(provider, version)  # the right version is cached now: the wrong ones must still fail
    for wrong in (
        dataclasses.replace(version, number=1),
        dataclasses.replace(version, number=3),
        dataclasses.replace(version, key_id="key_abd"),
    ):
        with pytest.raises(ProviderOperationError, match="cannot open") as info:
            operation = resolve(algorithm).operations
            if Operation.SIGN in operation:
                provider.sign(wrong, b"message")
            else:
                provider.encrypt(wrong, b"plaintext", b"")
        assert info.value.retryable is False


def test_versions_of_the_same_key_are_independent(provider: LocalProvider) -> None:
    v1 = handle("key_abc", 1, "Ed25519", provider.create_version("key_abc", 1, "Ed25519"))
    v2 = handle("key_abc", 2, "Ed25519", provider.create_version("key_abc", 2, "Ed25519"))
    assert v1.public_key != v2.public_key
    signature = provider.sign(v1, b"message")
    provider.verify(v1, b"message", signature)
    with pytest.raises(InvalidSignatureError):
        provider.verify(v2, b"message", signature)


def test_ciphertext_of_one_version_does_not_decrypt_under_another(provider: LocalProvider) -> None:
    v1 = handle("key_abc", 1, "AES-256-GCM", provider.create_version("key_abc", 1, "AES-256-GCM"))
    v2 = handle("key_abc", 2, "AES-256-GCM", provider.create_version("key_abc", 2, "AES-256-GCM"))
    data = provider.encrypt(v1, b"plaintext", b"aad")
    with pytest.raises(DecryptionError):
        provider.decrypt(v2, data, b"aad")
    with pytest.raises(DecryptionError):
        provider.decrypt(v1, data, b"other aad")


def test_unknown_master_key_fails(provider: LocalProvider) -> None:
    material = provider.create_version("key_abc", 1, "AES-256-GCM")
    other = LocalProvider(MasterKeyring([KEY_B]))
    with pytest.raises(ProviderOperationError, match="not in the keyring"):
        other.encrypt(handle("key_abc", 1, "AES-256-GCM", material), b"x", b"")


def test_master_key_rotation_keeps_old_versions_usable(provider: LocalProvider) -> None:
    old = handle("key_abc", 1, "HMAC-SHA256", provider.create_version("key_abc", 1, "HMAC-SHA256"))
    rotated = LocalProvider(MasterKeyring([KEY_B, KEY_A]))
    new_material = rotated.create_version("key_abc", 2, "HMAC-SHA256")
    assert new_material.wrapped_material is not None
    assert envelope_key_id(new_material.wrapped_material) == master_key_id(KEY_B)
    use(rotated, old)
    use(rotated, handle("key_abc", 2, "HMAC-SHA256", new_material))


def test_version_without_material_fails(provider: LocalProvider) -> None:
    version = VersionHandle("key_abc", 1, "AES-256-GCM", "arn:elsewhere", None, None)
    with pytest.raises(ProviderOperationError, match="no local material"):
        provider.encrypt(version, b"x", b"")


def test_unsupported_algorithm_is_refused(provider: LocalProvider) -> None:
    assert not provider.supports("DES")
    with pytest.raises(UnsupportedAlgorithmError) as info:
        provider.create_version("key_abc", 1, "DES")
    assert isinstance(info.value, ProviderError)
    assert "AES-256-GCM" in str(info.value)


def test_aliases_and_key_bits(provider: LocalProvider) -> None:
    assert provider.supports("es256")
    material = provider.create_version("key_abc", 1, "sha512", key_bits=1024)
    version = handle("key_abc", 1, "sha512", material)
    use(provider, version)
    assert len(provider.sign(version, b"m")) == 64
    with pytest.raises(AlgorithmError):
        provider.create_version("key_abc", 1, "AES-256-GCM", key_bits=128)


def test_algorithm_errors_propagate_unchanged(provider: LocalProvider) -> None:
    aes = handle("key_abc", 1, "AES-256-GCM", provider.create_version("key_abc", 1, "AES-256-GCM"))
    with pytest.raises(UnsupportedOperationError):
        provider.sign(aes, b"m")
    with pytest.raises(DecryptionError):
        provider.decrypt(aes, b"\0" * 40, b"")


def test_cache_is_bounded_and_keyed_by_blob() -> None:
    provider = LocalProvider(MasterKeyring([KEY_A]), cache_size=2)
    versions = [
        handle("key_abc", n, "AES-256-GCM", provider.create_version("key_abc", n, "AES-256-GCM"))
        for n in (1, 2, 3)
    ]
    for version in versions:
        use(provider, version)
    assert len(provider._cache) == 2
    # A replaced blob for the same version (e.g. re-sealed) is opened afresh, not served stale.
    replaced = handle(
        "key_abc", 3, "AES-256-GCM", provider.create_version("key_abc", 3, "AES-256-GCM")
    )
    data = provider.encrypt(replaced, b"x", b"")
    with pytest.raises(DecryptionError):
        provider.decrypt(versions[2], data, b"")


def test_concurrent_use_is_safe() -> None:
    provider = LocalProvider(MasterKeyring([KEY_A]), cache_size=4)
    versions = [
        handle("key_abc", n, "HMAC-SHA256", provider.create_version("key_abc", n, "HMAC-SHA256"))
        for n in range(8)
    ]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(200):
                version = versions[(offset + i) % len(versions)]
                provider.verify(version, b"m", provider.sign(version, b"m"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(provider._cache) <= 4


def test_health(provider: LocalProvider) -> None:
    health = provider.health()
    assert health.ok
    assert master_key_id(KEY_A) in health.detail


def test_provider_error_retryable_flags() -> None:
    assert ProviderError("x").retryable is False
    assert ProviderUnavailableError("x").retryable is True
    assert ProviderUnavailableError("x", retryable=False).retryable is False
    assert ProviderOperationError("x", retryable=True).retryable is True
    assert ProviderOperationError("x").retryable is False
    assert str(ProviderError("boom")) == "boom"
