"""The provider contract: the same cases run against every KeyProvider.

Each provider's test module subclasses `ProviderContract`, sets `ALGORITHMS` (what it must hold)
and `UNSUPPORTED` (an algorithm it must refuse at creation), and defines a `provider` fixture
(a real server behind it where section 8 of DESIGN.md lists one). `conftest.py` parametrizes
`algorithm` over `ALGORITHMS`.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

import pytest
from cryptography.hazmat.primitives import serialization

from core.algorithms import (
    AlgorithmKind,
    DecryptionError,
    InvalidSignatureError,
    Operation,
    UnsupportedOperationError,
    resolve,
)
from core.providers.base import (
    KeyProvider,
    ProviderError,
    ProviderOperationError,
    UnsupportedAlgorithmError,
    VersionHandle,
)

MESSAGE = b"keyrotor contract message"
AAD = b"contract-aad"


def new_version(
    provider: KeyProvider, algorithm: str, number: int = 1, key_id: str = ""
) -> VersionHandle:
    key_id = key_id or f"key_contract{uuid.uuid4().hex[:12]}"
    material = provider.create_version(key_id, number, algorithm)
    return VersionHandle(
        key_id=key_id,
        number=number,
        algorithm=resolve(algorithm).name,
        provider_key_ref=material.provider_key_ref,
        wrapped_material=material.wrapped_material,
        public_key=material.public_key,
    )


class ProviderContract:
    """Cases every provider must pass. Subclasses provide the `provider` fixture."""

    ALGORITHMS: ClassVar[tuple[str, ...]]
    UNSUPPORTED: ClassVar[str]
    # Algorithms this provider holds for signing only, though the registry can also encrypt
    # with them; encrypting must then fail with UnsupportedOperationError, never emulate.
    SIGN_ONLY: ClassVar[frozenset[str]] = frozenset()

    def operations(self, algorithm: str) -> frozenset[Operation]:
        ops = resolve(algorithm).operations
        if resolve(algorithm).name in self.SIGN_ONLY:
            return ops - {Operation.ENCRYPT, Operation.DECRYPT}
        return ops

    def test_sign_only_algorithms_refuse_encryption(self, provider: KeyProvider) -> None:
        for algorithm in self.SIGN_ONLY:
            v = new_version(provider, algorithm)
            with pytest.raises(UnsupportedOperationError):
                provider.encrypt(v, MESSAGE, AAD)

    def test_is_a_key_provider(self, provider: KeyProvider) -> None:
        assert isinstance(provider.name, str) and provider.name
        for name in (
            "create_version",
            "encrypt",
            "decrypt",
            "sign",
            "verify",
            "public_key",
            "disable_version",
            "destroy_version",
            "health",
        ):
            assert callable(getattr(provider, name))

    def test_health(self, provider: KeyProvider) -> None:
        health = provider.health()
        assert health.ok, health.detail
        assert health.detail

    def test_supports(self, provider: KeyProvider, algorithm: str) -> None:
        assert provider.supports(algorithm)
        assert not provider.supports("NO-SUCH-ALGORITHM")

    def test_unsupported_algorithm_is_refused_at_creation(self, provider: KeyProvider) -> None:
        assert not provider.supports(self.UNSUPPORTED)
        with pytest.raises(UnsupportedAlgorithmError):
            provider.create_version("key_contractunsupported", 1, self.UNSUPPORTED)

    def test_round_trip(self, provider: KeyProvider, algorithm: str) -> None:
        v = new_version(provider, algorithm)
        ops = self.operations(algorithm)
        if Operation.ENCRYPT in ops:
            data = provider.encrypt(v, MESSAGE, AAD)
            assert MESSAGE not in data
            assert provider.decrypt(v, data, AAD) == MESSAGE
            tampered = data[:-1] + bytes([data[-1] ^ 1])
            with pytest.raises(DecryptionError):
                provider.decrypt(v, tampered, AAD)
            if resolve(algorithm).kind == AlgorithmKind.SYMMETRIC:
                with pytest.raises(DecryptionError):
                    provider.decrypt(v, data, b"other-aad")
        if Operation.SIGN in ops:
            signature = provider.sign(v, MESSAGE)
            provider.verify(v, MESSAGE, signature)
            with pytest.raises(InvalidSignatureError):
                provider.verify(v, MESSAGE + b"!", signature)

    def test_versions_are_independent(self, provider: KeyProvider, algorithm: str) -> None:
        v1 = new_version(provider, algorithm, 1)
        v2 = new_version(provider, algorithm, 2, key_id=v1.key_id)
        ops = self.operations(algorithm)
        if Operation.ENCRYPT in ops:
            with pytest.raises(DecryptionError):
                provider.decrypt(v2, provider.encrypt(v1, MESSAGE, AAD), AAD)
        if Operation.SIGN in ops:
            with pytest.raises(InvalidSignatureError):
                provider.verify(v2, MESSAGE, provider.sign(v1, MESSAGE))

    def test_public_key(self, provider: KeyProvider, algorithm: str) -> None:
        v = new_version(provider, algorithm)
        public = provider.public_key(v)
        # Asymmetric kinds (signing and key encapsulation) have a public key; the others none.
        if resolve(algorithm).kind not in (
            AlgorithmKind.SIGNATURE,
            AlgorithmKind.KEY_ENCAPSULATION,
        ):
            assert public is None
            return
        assert public is not None
        assert public == v.public_key  # what creation returned is what the provider holds
        if resolve(algorithm).name in (
            "Ed25519",
            "ECDSA-P256",
            "RSA-2048",
            "ML-KEM-768",
            "ML-KEM-1024",
        ):
            serialization.load_der_public_key(public)  # a standard SubjectPublicKeyInfo

    def test_create_is_idempotent_per_version(self, provider: KeyProvider, algorithm: str) -> None:
        v = new_version(provider, algorithm)
        again = provider.create_version(v.key_id, v.number, algorithm)
        # A retried activity must not leave a second key behind at the provider.
        assert again.provider_key_ref == v.provider_key_ref

    def test_disabled_version_is_refused(self, provider: KeyProvider, algorithm: str) -> None:
        if provider.name == "local":
            pytest.skip("local material is refused by the store's version state, not here")
        v = new_version(provider, algorithm)
        provider.disable_version(v)
        provider.disable_version(v)  # idempotent
        with pytest.raises(ProviderOperationError):
            use(provider, v)

    def test_destroy_is_idempotent(self, provider: KeyProvider, algorithm: str) -> None:
        v = new_version(provider, algorithm)
        provider.destroy_version(v)
        provider.destroy_version(v)
        if provider.name != "local":  # local material goes with the store's row
            with pytest.raises(ProviderError):
                use(provider, v)


def use(provider: KeyProvider, v: VersionHandle) -> None:
    """One operation the version's algorithm supports (signing where it can: every provider
    that holds a signature algorithm signs with it)."""
    if Operation.SIGN in resolve(v.algorithm).operations:
        provider.sign(v, MESSAGE)
    else:
        provider.encrypt(v, MESSAGE, AAD)
