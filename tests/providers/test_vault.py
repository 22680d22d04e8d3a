"""Vault-specific behaviour of the transit provider, against real OpenBao dev servers."""

from __future__ import annotations

import base64
import os
import uuid
from typing import TYPE_CHECKING

import hvac
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.algorithms import AlgorithmError, DecryptionError, InvalidSignatureError
from core.providers.base import (
    ProviderConfigurationError,
    ProviderError,
    ProviderOperationError,
    ProviderUnavailableError,
    VersionHandle,
    VersionMaterial,
)
from core.providers.vault_transit import VaultTransitProvider, transit_key_name
from tests.providers.contract import AAD, MESSAGE, new_version

if TYPE_CHECKING:
    from tests.fixtures.openbao import OpenBaoServer


@pytest.fixture
def provider(openbao: tuple[str, str]) -> VaultTransitProvider:
    url, token = openbao
    return VaultTransitProvider(url, token)


@pytest.fixture
def vault(openbao: tuple[str, str]) -> hvac.Client:
    """A direct client, to look at what the provider left in transit."""
    url, token = openbao
    return hvac.Client(url=url, token=token)


@pytest.fixture
def own_server(openbao_own_server: OpenBaoServer) -> OpenBaoServer:
    return openbao_own_server


def key_id() -> str:
    return f"key_vault{uuid.uuid4().hex[:12]}"


def transit_key(vault: hvac.Client, v: VersionHandle) -> dict[str, object]:
    data: dict[str, object] = vault.secrets.transit.read_key(transit_key_name(v.key_id))["data"]
    return data


def test_versions_are_native_transit_versions(
    provider: VaultTransitProvider, vault: hvac.Client
) -> None:
    v1 = new_version(provider, "AES-256-GCM", 1)
    v2 = new_version(provider, "AES-256-GCM", 2, key_id=v1.key_id)
    data = transit_key(vault, v2)
    assert data["type"] == "aes256-gcm96"
    assert data["latest_version"] == 2
    name = transit_key_name(v1.key_id)
    assert name in v1.provider_key_ref and v1.provider_key_ref.endswith("/v1")
    assert name in v2.provider_key_ref and v2.provider_key_ref.endswith("/v2")
    # Retried creations of either version never rotate further.
    assert provider.create_version(v1.key_id, 2, "AES-256-GCM").provider_key_ref == (
        v2.provider_key_ref
    )
    provider.create_version(v1.key_id, 1, "AES-256-GCM")
    assert transit_key(vault, v2)["latest_version"] == 2
    assert provider.encrypt(v2, MESSAGE, AAD).startswith(b"vault:v2:")


def test_create_rotates_up_to_a_later_number(
    provider: VaultTransitProvider, vault: hvac.Client
) -> None:
    v3 = new_version(provider, "HMAC-SHA256", 3)
    assert transit_key(vault, v3)["latest_version"] == 3
    assert provider.sign(v3, MESSAGE).startswith(b"vault:v3:")


def test_algorithm_maps_to_transit_type(provider: VaultTransitProvider, vault: hvac.Client) -> None:
    for algorithm, key_type in [
        ("ChaCha20-Poly1305", "chacha20-poly1305"),
        ("HMAC-SHA512", "hmac"),
        ("Ed25519", "ed25519"),
        ("ECDSA-P256", "ecdsa-p256"),
        ("RSA-2048", "rsa-2048"),
    ]:
        assert transit_key(vault, new_version(provider, algorithm))["type"] == key_type


def test_existing_key_of_another_type_is_refused(
    provider: VaultTransitProvider, vault: hvac.Client
) -> None:
    kid = key_id()
    vault.secrets.transit.create_key(transit_key_name(kid), key_type="ed25519")
    with pytest.raises(ProviderOperationError, match="ed25519"):
        provider.create_version(kid, 1, "AES-256-GCM")


def test_a_ciphertext_of_another_version_is_refused(
    provider: VaultTransitProvider, vault: hvac.Client
) -> None:
    v1 = new_version(provider, "AES-256-GCM", 1)
    v2 = new_version(provider, "AES-256-GCM", 2, key_id=v1.key_id)
    old = provider.encrypt(v1, MESSAGE, AAD)
    # Vault alone would decrypt it (the version is in the ciphertext): the pin is the provider's.
    direct = vault.secrets.transit.decrypt_data(
        transit_key_name(v1.key_id),
        old.decode(),
        associated_data=base64.b64encode(AAD).decode(),
    )
    assert base64.b64decode(direct["data"]["plaintext"]) == MESSAGE
    with pytest.raises(DecryptionError):
        provider.decrypt(v2, old, AAD)
    assert provider.decrypt(v1, old, AAD) == MESSAGE


def test_a_signature_of_another_version_is_refused(provider: VaultTransitProvider) -> None:
    for algorithm in ("Ed25519", "HMAC-SHA256"):
        v1 = new_version(provider, algorithm, 1)
        v2 = new_version(provider, algorithm, 2, key_id=v1.key_id)
        with pytest.raises(InvalidSignatureError):
            provider.verify(v2, MESSAGE, provider.sign(v1, MESSAGE))
        with pytest.raises(InvalidSignatureError):
            provider.verify(v1, MESSAGE, b"\xffnot ascii")


def test_disable_sets_min_decryption_version(
    provider: VaultTransitProvider, vault: hvac.Client
) -> None:
    v1 = new_version(provider, "AES-256-GCM", 1)
    v2 = new_version(provider, "AES-256-GCM", 2, key_id=v1.key_id)
    old = provider.encrypt(v1, MESSAGE, AAD)
    provider.disable_version(v1)
    data = transit_key(vault, v1)
    assert data["min_decryption_version"] == 2
    assert data["min_encryption_version"] == 2
    assert data["latest_version"] == 2
    with pytest.raises(ProviderOperationError, match="disabled"):
        provider.decrypt(v1, old, AAD)
    with pytest.raises(ProviderOperationError):
        provider.encrypt(v1, MESSAGE, AAD)
    # The successor is untouched.
    assert provider.decrypt(v2, provider.encrypt(v2, MESSAGE, AAD), AAD) == MESSAGE


def test_disabled_signing_version_is_an_operation_error_not_an_outage(
    provider: VaultTransitProvider,
) -> None:
    # Vault answers signing with a retired version with a 500, which alone would read as an
    # outage: the provider must not report it as retryable.
    v1 = new_version(provider, "ECDSA-P256", 1)
    new_version(provider, "ECDSA-P256", 2, key_id=v1.key_id)
    signature = provider.sign(v1, MESSAGE)
    provider.disable_version(v1)
    with pytest.raises(ProviderOperationError) as info:
        provider.sign(v1, MESSAGE)
    assert not info.value.retryable
    with pytest.raises(ProviderOperationError):
        provider.verify(v1, MESSAGE, signature)
    # The public key stays available for verifiers of old signatures.
    assert provider.public_key(v1) == v1.public_key


def test_disabling_the_latest_version_makes_a_successor_that_create_adopts(
    provider: VaultTransitProvider, vault: hvac.Client
) -> None:
    v1 = new_version(provider, "Ed25519", 1)
    provider.disable_version(v1)
    assert transit_key(vault, v1)["latest_version"] == 2
    assert transit_key(vault, v1)["min_decryption_version"] == 2
    v2 = new_version(provider, "Ed25519", 2, key_id=v1.key_id)
    assert transit_key(vault, v1)["latest_version"] == 2
    provider.verify(v2, MESSAGE, provider.sign(v2, MESSAGE))
    with pytest.raises(ProviderOperationError):
        provider.create_version(v1.key_id, 1, "Ed25519")


def test_destroy_trims_the_version(provider: VaultTransitProvider, vault: hvac.Client) -> None:
    v1 = new_version(provider, "ChaCha20-Poly1305", 1)
    v2 = new_version(provider, "ChaCha20-Poly1305", 2, key_id=v1.key_id)
    provider.destroy_version(v1)
    provider.destroy_version(v1)
    data = transit_key(vault, v1)
    assert data["min_available_version"] == 2
    assert data["min_decryption_version"] == 2
    assert set(data["keys"]) == {"2"}  # type: ignore[arg-type]
    with pytest.raises(ProviderOperationError, match="destroyed"):
        provider.encrypt(v1, MESSAGE, AAD)
    assert provider.decrypt(v2, provider.encrypt(v2, MESSAGE, AAD), AAD) == MESSAGE


def test_public_keys_are_spki_der_and_signatures_verify_outside_vault(
    provider: VaultTransitProvider, vault: hvac.Client
) -> None:
    ed = new_version(provider, "Ed25519")
    raw = transit_key(vault, ed)["keys"]["1"]["public_key"]  # type: ignore[index]
    ed_key = serialization.load_der_public_key(provider.public_key(ed) or b"")
    assert isinstance(ed_key, ed25519.Ed25519PublicKey)
    assert ed_key.public_bytes_raw() == base64.b64decode(raw)
    # Vault signatures are "vault:vN:" + base64 of a standard signature with the parameters
    # core.algorithms uses, so anyone holding the public key can check them.
    ed_key.verify(_raw_signature(provider.sign(ed, MESSAGE)), MESSAGE)

    p256 = new_version(provider, "ECDSA-P256")
    ec_key = serialization.load_der_public_key(provider.public_key(p256) or b"")
    assert isinstance(ec_key, ec.EllipticCurvePublicKey)
    ec_key.verify(_raw_signature(provider.sign(p256, MESSAGE)), MESSAGE, ec.ECDSA(hashes.SHA256()))

    r = new_version(provider, "RSA-2048")
    rsa_key = serialization.load_der_public_key(provider.public_key(r) or b"")
    assert isinstance(rsa_key, rsa.RSAPublicKey) and rsa_key.key_size == 2048
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    rsa_key.verify(_raw_signature(provider.sign(r, MESSAGE)), MESSAGE, pss, hashes.SHA256())


def _raw_signature(signature: bytes) -> bytes:
    prefix, _, body = signature.decode().rpartition(":")
    assert prefix == "vault:v1"
    return base64.b64decode(body)


def test_rsa_binds_the_associated_data(provider: VaultTransitProvider) -> None:
    v = new_version(provider, "RSA-2048")
    data = provider.encrypt(v, MESSAGE, AAD)
    assert provider.decrypt(v, data, AAD) == MESSAGE
    with pytest.raises(DecryptionError):
        provider.decrypt(v, data, b"other-aad")
    secret = b"s" * 200
    with pytest.raises(AlgorithmError) as info:
        provider.encrypt(v, secret, AAD)
    assert secret.decode() not in str(info.value)


def test_health_ok(provider: VaultTransitProvider, openbao: tuple[str, str]) -> None:
    health = provider.health()
    assert health.ok, health.detail
    assert "transit" in health.detail
    assert openbao[1] not in health.detail


def test_health_reports_a_missing_mount(openbao: tuple[str, str]) -> None:
    url, token = openbao
    health = VaultTransitProvider(url, token, mount="no-such-mount").health()
    assert not health.ok
    assert "mount" in health.detail


def test_bad_token_is_a_configuration_error(openbao: tuple[str, str]) -> None:
    url, _ = openbao
    token = f"bad-{uuid.uuid4().hex}"
    provider = VaultTransitProvider(url, token)
    with pytest.raises(ProviderConfigurationError) as info:
        provider.create_version(key_id(), 1, "AES-256-GCM")
    assert not info.value.retryable
    assert_no_secret(info.value, token)
    health = provider.health()
    assert not health.ok
    assert token not in health.detail


def test_stopped_server_is_unavailable_and_retryable(own_server: OpenBaoServer) -> None:
    provider = VaultTransitProvider(own_server.url, own_server.token)
    v = new_version(provider, "AES-256-GCM")
    own_server.stop()
    for call in (
        lambda: provider.encrypt(v, MESSAGE, AAD),
        lambda: provider.create_version(key_id(), 1, "Ed25519"),
        lambda: provider.disable_version(v),
    ):
        with pytest.raises(ProviderUnavailableError) as info:
            call()
        assert info.value.retryable
        assert_no_secret(info.value, own_server.token, MESSAGE.decode())
    health = provider.health()
    assert not health.ok
    assert own_server.token not in health.detail


def test_sealed_server_is_unavailable(own_server: OpenBaoServer) -> None:
    provider = VaultTransitProvider(own_server.url, own_server.token)
    v = new_version(provider, "HMAC-SHA512")
    hvac.Client(url=own_server.url, token=own_server.token).sys.seal()
    with pytest.raises(ProviderUnavailableError) as info:
        provider.sign(v, MESSAGE)
    assert info.value.retryable
    assert_no_secret(info.value, own_server.token)
    health = provider.health()
    assert not health.ok
    assert "sealed" in health.detail


def test_errors_never_carry_the_token_or_plaintext(openbao: tuple[str, str]) -> None:
    url, token = openbao
    provider = VaultTransitProvider(url, token)
    plaintext = f"plaintext-{uuid.uuid4().hex}"
    v = new_version(provider, "AES-256-GCM", 1)
    errors: list[BaseException] = []
    provider.disable_version(v)
    for call in (
        lambda: provider.encrypt(v, plaintext.encode(), AAD),
        lambda: provider.create_version(v.key_id, 1, "AES-256-GCM"),
        lambda: provider.create_version(v.key_id, 3, "Ed25519"),
        lambda: provider.create_version("bad/id", 1, "AES-256-GCM"),
    ):
        with pytest.raises(ProviderError) as info:
            call()
        errors.append(info.value)
    assert len(errors) == 4
    for error in errors:
        assert_no_secret(error, token, plaintext)
    assert token not in repr(provider)


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    """Neither the error nor anything it was raised from names one of `secrets`."""
    seen: BaseException | None = error
    while seen is not None:
        text = f"{seen!s} {seen!r}"
        for secret in secrets:
            assert secret not in text, f"{type(seen).__name__} carries a secret"
        seen = seen.__cause__ or seen.__context__


def test_imported_material_is_what_transit_uses(provider: VaultTransitProvider) -> None:
    # AES: a transit ciphertext opens with the material brought in, outside Vault
    material = os.urandom(32)
    made = provider.import_version(key_id(), 1, "AES-256-GCM", material)
    assert made.wrapped_material is None and made.provider_key_ref.endswith("/v1")
    v = VersionHandle(made_key(made), 1, "AES-256-GCM", made.provider_key_ref, None, None)
    ciphertext = provider.encrypt(v, MESSAGE, AAD)
    raw = base64.b64decode(ciphertext.decode().split(":", 2)[2])
    assert AESGCM(material).decrypt(raw[:12], raw[12:], AAD) == MESSAGE
    assert provider.decrypt(v, ciphertext, AAD) == MESSAGE
    # later versions are transit's own: rotation works on an imported key
    v2 = provider.create_version(v.key_id, 2, "AES-256-GCM")
    assert v2.provider_key_ref.endswith("/v2")

    # Ed25519 (PKCS#8): transit signs with the holder's key
    private = ed25519.Ed25519PrivateKey.generate()
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    made = provider.import_version(key_id(), 1, "Ed25519", der)
    assert made.public_key == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signer = VersionHandle(made_key(made), 1, "Ed25519", made.provider_key_ref, None, None)
    private.public_key().verify(_raw_signature(provider.sign(signer, MESSAGE)), MESSAGE)


def test_import_refuses_a_later_version_or_an_existing_key(provider: VaultTransitProvider) -> None:
    with pytest.raises(ProviderOperationError, match="first version"):
        provider.import_version(key_id(), 2, "AES-256-GCM", os.urandom(32))
    existing = new_version(provider, "AES-256-GCM", 1)
    with pytest.raises(ProviderOperationError, match="already"):
        provider.import_version(existing.key_id, 1, "AES-256-GCM", os.urandom(32))


def made_key(made: VersionMaterial) -> str:
    """The keyrotor key id of a transit reference `<mount>/keys/keyrotor-<key id>/v<n>`."""
    return made.provider_key_ref.split("/keys/")[1].rsplit("/", 1)[0].removeprefix("keyrotor-")
