"""Azure Key Vault provider behaviour beyond the shared contract.

Runs the real azure-keyvault-keys client against the local HTTPS stand-in of the Key Vault REST
operations (tests/fixtures/azure_keyvault.py): no Azure Key Vault or emulator can run here.
"""

from __future__ import annotations

import re
import uuid

import pytest
from azure.keyvault.keys._shared import http_challenge_cache
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from core.algorithms import AlgorithmError, InvalidSignatureError, UnsupportedOperationError
from core.providers.azure_keyvault import AzureKeyVaultProvider, key_vault_key_name
from core.providers.base import (
    ProviderConfigurationError,
    ProviderError,
    ProviderOperationError,
    ProviderUnavailableError,
    UnsupportedAlgorithmError,
    VersionHandle,
)
from tests.fixtures.azure_keyvault import (
    KeyVaultStandIn,
    StaticTokenCredential,
    azure_client_kwargs,
)
from tests.fixtures.moto_kms import free_port

MESSAGE = b"keyrotor azure message"


@pytest.fixture
def provider(
    azure_keyvault: KeyVaultStandIn, azure_keyvault_credential: StaticTokenCredential
) -> AzureKeyVaultProvider:
    return AzureKeyVaultProvider(
        azure_keyvault.url, azure_keyvault_credential, **azure_client_kwargs(azure_keyvault)
    )


def _new_key_id() -> str:
    return f"key_azure{uuid.uuid4().hex[:12]}"


def _version(
    provider: AzureKeyVaultProvider, key_id: str, number: int, algorithm: str = "ECDSA-P256"
) -> VersionHandle:
    material = provider.create_version(key_id, number, algorithm)
    return VersionHandle(
        key_id=key_id,
        number=number,
        algorithm=algorithm,
        provider_key_ref=material.provider_key_ref,
        wrapped_material=None,
        public_key=material.public_key,
    )


def test_key_names_are_valid_and_distinct() -> None:
    ids = ["a_b", "a-b", "a--b", "a-5fb", "a.b", "a/b", "é", "x" * 300, "x" * 301]
    names = [key_vault_key_name(i) for i in ids]
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"[0-9A-Za-z-]{1,127}", name), name


def test_versions_are_native_versions_of_one_key_tagged_with_their_number(
    provider: AzureKeyVaultProvider, azure_keyvault: KeyVaultStandIn
) -> None:
    key_id = _new_key_id()
    v1 = _version(provider, key_id, 1)
    v2 = _version(provider, key_id, 2)
    name = key_vault_key_name(key_id)
    held = azure_keyvault.versions(name)
    assert [v["tags"]["keyrotor-version"] for v in held] == ["1", "2"]
    assert v1.provider_key_ref == f"{azure_keyvault.url}/keys/{name}/{held[0]['version']}"
    assert v2.provider_key_ref == f"{azure_keyvault.url}/keys/{name}/{held[1]['version']}"


def test_create_is_idempotent_and_pins_the_tagged_version(
    provider: AzureKeyVaultProvider, azure_keyvault: KeyVaultStandIn
) -> None:
    key_id = _new_key_id()
    first = provider.create_version(key_id, 1, "ECDSA-P256")
    _version(provider, key_id, 2)
    # A retry of v1 after v2 exists must find v1, not the key's latest version.
    again = provider.create_version(key_id, 1, "ECDSA-P256")
    assert again.provider_key_ref == first.provider_key_ref
    assert again.public_key == first.public_key
    assert len(azure_keyvault.versions(key_vault_key_name(key_id))) == 2


def _pkcs8(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("algorithm", ["ECDSA-P256", "RSA-2048"])
def test_imported_material_is_what_key_vault_signs_with(
    provider: AzureKeyVaultProvider, azure_keyvault: KeyVaultStandIn, algorithm: str
) -> None:
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ECDSA-P256"
        else rsa.generate_private_key(65537, 2048)
    )
    key_id = _new_key_id()
    made = provider.import_version(key_id, 1, algorithm, _pkcs8(private))
    assert made.public_key == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    name = key_vault_key_name(key_id)
    (held,) = azure_keyvault.versions(name)
    assert held["tags"] == {
        "keyrotor-version": "1",
        "keyrotor-key-id": key_id,
        "keyrotor-algorithm": algorithm,
    }
    assert made.provider_key_ref == f"{azure_keyvault.url}/keys/{name}/{held['version']}"
    # Key Vault holds the very key: its signatures verify outside with the material's public key
    v = VersionHandle(key_id, 1, algorithm, made.provider_key_ref, None, made.public_key)
    signature = provider.sign(v, MESSAGE)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        private.public_key().verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))
    else:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        private.public_key().verify(signature, MESSAGE, pss, hashes.SHA256())
    # later versions are Key Vault's own: an imported key rotates
    v2 = _version(provider, key_id, 2, algorithm)
    assert v2.public_key != made.public_key
    assert len(azure_keyvault.versions(name)) == 2


def test_an_import_is_refused_for_a_later_version_an_existing_key_or_other_material(
    provider: AzureKeyVaultProvider, azure_keyvault: KeyVaultStandIn
) -> None:
    ecdsa = _pkcs8(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ProviderOperationError, match="first version"):
        provider.import_version(_new_key_id(), 2, "ECDSA-P256", ecdsa)
    existing = _version(provider, _new_key_id(), 1)
    with pytest.raises(ProviderOperationError, match="exists already"):
        provider.import_version(existing.key_id, 1, "ECDSA-P256", ecdsa)
    assert len(azure_keyvault.versions(key_vault_key_name(existing.key_id))) == 1
    key_id = _new_key_id()
    for algorithm, material in (
        ("RSA-4096", _pkcs8(rsa.generate_private_key(65537, 2048))),
        ("RSA-2048", ecdsa),
        ("ECDSA-P256", _pkcs8(ec.generate_private_key(ec.SECP384R1()))),
        ("ECDSA-P256", b"not a key"),
    ):
        with pytest.raises(ProviderOperationError) as refused:
            provider.import_version(key_id, 1, algorithm, material)
        assert material.hex() not in str(refused.value)
    assert not azure_keyvault.has_key(key_vault_key_name(key_id))


def test_signatures_verify_with_cryptography_against_the_public_key(
    provider: AzureKeyVaultProvider,
) -> None:
    ecdsa = _version(provider, _new_key_id(), 1, "ECDSA-P256")
    public = serialization.load_der_public_key(provider.public_key(ecdsa) or b"")
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(provider.sign(ecdsa, MESSAGE), MESSAGE, ec.ECDSA(hashes.SHA256()))  # DER

    rsa_version = _version(provider, _new_key_id(), 1, "RSA-2048")
    rsa_public = serialization.load_der_public_key(provider.public_key(rsa_version) or b"")
    assert isinstance(rsa_public, rsa.RSAPublicKey) and rsa_public.key_size == 2048
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    rsa_public.verify(provider.sign(rsa_version, MESSAGE), MESSAGE, pss, hashes.SHA256())


def test_signature_of_another_version_fails(provider: AzureKeyVaultProvider) -> None:
    key_id = _new_key_id()
    v1, v2 = _version(provider, key_id, 1), _version(provider, key_id, 2)
    with pytest.raises(InvalidSignatureError):
        provider.verify(v2, MESSAGE, provider.sign(v1, MESSAGE))
    with pytest.raises(InvalidSignatureError):
        provider.verify(v1, MESSAGE, b"not a signature")


def test_disabled_version_is_refused_but_its_public_key_stays_available(
    provider: AzureKeyVaultProvider, azure_keyvault: KeyVaultStandIn
) -> None:
    key_id = _new_key_id()
    v1, v2 = _version(provider, key_id, 1), _version(provider, key_id, 2)
    signature = provider.sign(v1, MESSAGE)
    provider.disable_version(v1)
    held = azure_keyvault.versions(key_vault_key_name(key_id))
    assert [v["enabled"] for v in held] == [False, True]
    with pytest.raises(ProviderOperationError, match="KeyDisabled"):
        provider.sign(v1, MESSAGE)
    with pytest.raises(ProviderOperationError):
        provider.verify(v1, MESSAGE, signature)
    assert provider.public_key(v1) == v1.public_key
    provider.verify(v2, MESSAGE, provider.sign(v2, MESSAGE))  # the other version is untouched


def test_destroy_disables_versions_and_deletes_the_key_with_its_last_version(
    provider: AzureKeyVaultProvider, azure_keyvault: KeyVaultStandIn
) -> None:
    key_id = _new_key_id()
    name = key_vault_key_name(key_id)
    v1, v2 = _version(provider, key_id, 1), _version(provider, key_id, 2)
    provider.destroy_version(v1)
    held = azure_keyvault.versions(name)
    assert held[0]["enabled"] is False and held[0]["tags"]["keyrotor-destroyed"] == "true"
    assert held[0]["tags"]["keyrotor-version"] == "1"  # the tag set is extended, not replaced
    assert held[1]["enabled"] is True
    provider.destroy_version(v2)
    assert not azure_keyvault.has_key(name)
    provider.destroy_version(v2)  # idempotent on a deleted key
    provider.disable_version(v1)
    with pytest.raises(ProviderOperationError):
        provider.sign(v2, MESSAGE)


@pytest.mark.parametrize(
    "algorithm", ["AES-256-GCM", "ChaCha20-Poly1305", "HMAC-SHA256", "Ed25519", "ML-DSA-65"]
)
def test_what_a_standard_vault_cannot_hold_is_refused(
    provider: AzureKeyVaultProvider, azure_keyvault: KeyVaultStandIn, algorithm: str
) -> None:
    key_id = _new_key_id()
    assert not provider.supports(algorithm)
    with pytest.raises(UnsupportedAlgorithmError):
        provider.create_version(key_id, 1, algorithm)
    assert not azure_keyvault.has_key(key_vault_key_name(key_id))


def test_rsa_is_sign_only_and_wrong_key_sizes_are_refused(provider: AzureKeyVaultProvider) -> None:
    v = _version(provider, _new_key_id(), 1, "RSA-2048")
    with pytest.raises(UnsupportedOperationError):
        provider.encrypt(v, MESSAGE, b"aad")
    with pytest.raises(UnsupportedOperationError):
        provider.decrypt(v, b"x" * 256, b"aad")
    with pytest.raises(AlgorithmError):  # the registry's own size check
        provider.create_version(_new_key_id(), 1, "RSA-2048", key_bits=4096)


def test_a_reference_to_another_key_is_refused(provider: AzureKeyVaultProvider) -> None:
    a = _version(provider, _new_key_id(), 1)
    b = _version(provider, _new_key_id(), 1)
    forged = VersionHandle(b.key_id, 1, "ECDSA-P256", a.provider_key_ref, None, b.public_key)
    with pytest.raises(ProviderOperationError):
        provider.sign(forged, MESSAGE)


def test_requests_use_challenge_auth_and_the_api_version(
    azure_keyvault: KeyVaultStandIn, azure_keyvault_credential: StaticTokenCredential
) -> None:
    # The SDK caches challenges per vault for the whole process: forget them to see one.
    http_challenge_cache.clear()
    before = len(azure_keyvault.requests)
    fresh = AzureKeyVaultProvider(
        azure_keyvault.url, azure_keyvault_credential, **azure_client_kwargs(azure_keyvault)
    )
    _version(fresh, _new_key_id(), 1)
    sent = azure_keyvault.requests[before:]
    assert sent[0][3] is False  # the first request goes without a token, to get the challenge
    assert all(had_token for (_, _, _, had_token) in sent[1:])
    assert all(api_version for (_, _, api_version, _) in sent)
    assert azure_keyvault_credential.token in azure_keyvault.tokens_seen


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_throttling_are_retryable(
    provider: AzureKeyVaultProvider,
    azure_keyvault: KeyVaultStandIn,
    azure_keyvault_credential: StaticTokenCredential,
    status: int,
) -> None:
    v = _version(provider, _new_key_id(), 1)
    azure_keyvault.fail(status, "ServiceUnavailable")
    with pytest.raises(ProviderUnavailableError) as caught:
        provider.sign(v, MESSAGE)
    assert caught.value.retryable
    assert str(status) in str(caught.value)
    assert azure_keyvault_credential.token not in str(caught.value)
    health = provider.health()
    assert not health.ok and azure_keyvault_credential.token not in health.detail
    azure_keyvault.reset_faults()
    assert provider.health().ok


def test_forbidden_is_a_configuration_error_without_the_token(
    provider: AzureKeyVaultProvider,
    azure_keyvault: KeyVaultStandIn,
    azure_keyvault_credential: StaticTokenCredential,
) -> None:
    v = _version(provider, _new_key_id(), 1)
    azure_keyvault.fail(403, "Forbidden")
    with pytest.raises(ProviderConfigurationError) as caught:
        provider.sign(v, MESSAGE)
    assert not caught.value.retryable
    chain: BaseException | None = caught.value
    while chain is not None:  # not in the message, nor in what it was raised from
        assert azure_keyvault_credential.token not in str(chain)
        chain = chain.__cause__
    with pytest.raises(ProviderConfigurationError):
        provider.create_version(_new_key_id(), 1, "ECDSA-P256")


def test_missing_version_is_an_operation_error(
    provider: AzureKeyVaultProvider, azure_keyvault: KeyVaultStandIn
) -> None:
    v = _version(provider, _new_key_id(), 1)
    azure_keyvault.fail(404, "KeyNotFound", path_contains="/sign")
    with pytest.raises(ProviderOperationError) as caught:
        provider.sign(v, MESSAGE)
    assert not isinstance(caught.value, ProviderConfigurationError | ProviderUnavailableError)


def test_unreachable_vault_is_retryable(azure_keyvault_credential: StaticTokenCredential) -> None:
    closed = AzureKeyVaultProvider(
        f"https://127.0.0.1:{free_port()}", azure_keyvault_credential, retry_total=0
    )
    with pytest.raises(ProviderUnavailableError):
        closed.create_version(_new_key_id(), 1, "ECDSA-P256")
    assert not closed.health().ok


def test_vault_url_must_be_https(azure_keyvault_credential: StaticTokenCredential) -> None:
    with pytest.raises(ProviderError):
        AzureKeyVaultProvider("http://127.0.0.1:1", azure_keyvault_credential)
