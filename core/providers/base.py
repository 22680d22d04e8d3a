"""The KeyProvider interface every backend implements, and the errors providers raise.

Providers turn their SDK's errors into the ProviderError tree (`raise ... from e`) with a
`retryable` flag that activities map onto Temporal retry behaviour. InvalidSignatureError and
DecryptionError from core.algorithms are not provider faults: they propagate unchanged, as do
AlgorithmErrors for bad requests (bad key size, operation the algorithm lacks).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from core.algorithms import Algorithm, UnknownAlgorithmError, resolve


class ProviderError(Exception):
    """A provider could not do what was asked; `retryable` says whether trying again may help."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ProviderUnavailableError(ProviderError):
    """The provider cannot be reached right now (network, throttling, HSM busy)."""

    retryable = True


class ProviderConfigurationError(ProviderError):
    """The provider is misconfigured (credentials, endpoint, missing key ring or slot)."""


class UnsupportedAlgorithmError(ProviderError):
    """The provider cannot hold keys of this algorithm; refused when the key is created."""


class ProviderOperationError(ProviderError):
    """The provider refused or failed an operation on an existing version."""


def holds(names: Collection[str], algorithm: str) -> bool:
    """`supports` of a provider that holds the algorithms `names` (canonical names):
    whether `algorithm`, a name or an alias, is one of them."""
    try:
        return resolve(algorithm).name in names
    except UnknownAlgorithmError:
        return False


def held(provider: str, names: Collection[str], algorithm: str) -> Algorithm:
    """The algorithm `algorithm` names, if `provider` holds it (one of `names`); else
    UnsupportedAlgorithmError, so that a key is refused when it is created."""
    try:
        found = resolve(algorithm)
    except UnknownAlgorithmError as e:
        raise UnsupportedAlgorithmError(str(e)) from e
    if found.name not in names:
        raise UnsupportedAlgorithmError(
            f"{provider} cannot hold {found.name} keys; it holds {', '.join(sorted(names))}"
        )
    return found


@dataclass(frozen=True)
class VersionMaterial:
    """What `create_version` returns, for the caller to store with the version.

    `provider_key_ref` is the provider's id for the version ("" for local); `wrapped_material`
    is envelope-sealed secret material (local provider only); `public_key` is SubjectPublicKeyInfo
    DER for asymmetric algorithms.
    """

    provider_key_ref: str
    # Sealed material is safe to store but has no business in logs or error reports.
    wrapped_material: bytes | None = field(repr=False)
    public_key: bytes | None = field(repr=False)


@dataclass(frozen=True)
class VersionHandle:
    """Everything a provider needs to use one stored key version."""

    key_id: str
    number: int
    algorithm: str
    provider_key_ref: str
    wrapped_material: bytes | None = field(repr=False)
    public_key: bytes | None = field(repr=False)


@dataclass(frozen=True)
class ProviderHealth:
    """The result of a provider health check; `detail` is safe to show to operators."""

    ok: bool
    detail: str


class KeyProvider(Protocol):
    """A backend that creates key versions and runs cryptographic operations with them.

    Material never leaves a remote provider (KMS, HSM, Vault): those return a `provider_key_ref`.
    The local provider returns the material sealed under the master key instead.
    """

    name: str
    # True where disabling a version disables every older one too (Vault's
    # min_decryption_version): keyrotor then disables a version only once all older ones are
    # done, so that a version in grace keeps working.
    disables_older: bool

    def supports(self, algorithm: str) -> bool:
        """Whether this provider can create and use keys of `algorithm` (name or alias)."""
        ...

    def create_version(
        self, key_id: str, number: int, algorithm: str, key_bits: int | None = None
    ) -> VersionMaterial:
        """Generate version `number` of `key_id`; UnsupportedAlgorithmError if it cannot."""
        ...

    def import_version(
        self, key_id: str, number: int, algorithm: str, material: bytes
    ) -> VersionMaterial:
        """Make version 1 of a new key of material brought in (BYOK: the raw key for symmetric
        and MAC algorithms, PKCS#8 DER for asymmetric ones); ProviderOperationError if the
        version exists already or the provider refuses the material."""
        ...

    def encrypt(self, version: VersionHandle, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt with this version."""
        ...

    def decrypt(self, version: VersionHandle, data: bytes, aad: bytes) -> bytes:
        """Decrypt with this version; DecryptionError if the data does not authenticate."""
        ...

    def sign(self, version: VersionHandle, message: bytes) -> bytes:
        """Sign (or MAC) `message` with this version."""
        ...

    def verify(self, version: VersionHandle, message: bytes, signature: bytes) -> None:
        """Return if `signature` is valid, else raise InvalidSignatureError."""
        ...

    def public_key(self, version: VersionHandle) -> bytes | None:
        """SubjectPublicKeyInfo DER of an asymmetric version (from the provider, or the copy
        stored at creation); None for symmetric and MAC versions."""
        ...

    def disable_version(self, version: VersionHandle) -> None:
        """Make the provider refuse every further use of this version (it is retired or
        compromised); idempotent. Afterwards its operations raise ProviderOperationError."""
        ...

    def destroy_version(self, version: VersionHandle) -> None:
        """Destroy the version's material at the provider, or schedule it for the earliest
        destruction the provider allows; idempotent. The version is disabled first."""
        ...

    def health(self) -> ProviderHealth:
        """Check that the provider is usable."""
        ...


def big_endian(value: int) -> bytes:
    """A non-negative integer as the shortest big-endian bytes (JWK and PKCS#11 key numbers)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


OAEP_SHA256 = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)


def rsa_aes_key_wrap(wrapping_key: rsa.RSAPublicKey, material: bytes) -> bytes:
    """`material` wrapped for a provider's import (CKM_RSA_AES_KEY_WRAP, as Vault's transit
    import and KMS's RSA_AES_KEY_WRAP_SHA_256 take it): an ephemeral AES-256 key under the
    provider's RSA wrapping key with OAEP-SHA256, then the material under that key with AES key
    wrap with padding (RFC 5649)."""
    ephemeral = os.urandom(32)
    return wrapping_key.encrypt(ephemeral, OAEP_SHA256) + aes_key_wrap_with_padding(
        ephemeral, material
    )
