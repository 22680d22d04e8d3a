"""AWS KMS provider behaviour beyond the contract, observed through the KMS API of a real moto
server: one KMS key per version behind its alias, idempotent creation, key states after disable
and destroy, version pinning, RSA signing keys, and the mapping of failures onto ProviderErrors.
"""

from __future__ import annotations

import hmac
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from core.algorithms import (
    AlgorithmError,
    DecryptionError,
    InvalidSignatureError,
    UnsupportedOperationError,
)
from core.providers.aws_kms import AWSKMSProvider
from core.providers.base import (
    ProviderConfigurationError,
    ProviderError,
    ProviderOperationError,
    ProviderUnavailableError,
    UnsupportedAlgorithmError,
    VersionHandle,
)
from tests.providers.contract import new_version

MESSAGE = b"keyrotor aws-kms message"
AAD = b"aws-kms-aad"
SPECS = {
    "AES-256-GCM": ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
    "HMAC-SHA256": ("HMAC_256", "GENERATE_VERIFY_MAC"),
    "HMAC-SHA512": ("HMAC_512", "GENERATE_VERIFY_MAC"),
    "ECDSA-P256": ("ECC_NIST_P256", "SIGN_VERIFY"),
    "RSA-2048": ("RSA_2048", "SIGN_VERIFY"),
}


@pytest.fixture
def provider(moto_kms_client: Any) -> AWSKMSProvider:
    return AWSKMSProvider(moto_kms_client)


def new_key_id() -> str:
    return f"key_aws{uuid.uuid4().hex[:12]}"


def all_key_ids(client: Any) -> set[str]:
    return {
        k["KeyId"] for page in client.get_paginator("list_keys").paginate() for k in page["Keys"]
    }


def aliases_of(client: Any, key_id: str) -> dict[str, str]:
    """alias name -> target KMS key id, for every alias of keyrotor key `key_id`."""
    prefix = f"alias/keyrotor/{key_id}/"
    return {
        a["AliasName"]: a["TargetKeyId"]
        for page in client.get_paginator("list_aliases").paginate()
        for a in page["Aliases"]
        if a["AliasName"].startswith(prefix)
    }


def metadata(client: Any, v: VersionHandle) -> dict[str, Any]:
    meta: dict[str, Any] = client.describe_key(KeyId=v.provider_key_ref)["KeyMetadata"]
    return meta


# -- one KMS key per version ---------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(SPECS))
def test_each_version_is_its_own_kms_key_behind_its_alias(
    provider: AWSKMSProvider, moto_kms_client: Any, algorithm: str
) -> None:
    v1 = new_version(provider, algorithm, 1)
    v2 = new_version(provider, algorithm, 2, key_id=v1.key_id)

    assert v1.wrapped_material is None and v2.wrapped_material is None
    assert v1.provider_key_ref.startswith("arn:aws:kms:")
    assert v1.provider_key_ref != v2.provider_key_ref
    meta1, meta2 = metadata(moto_kms_client, v1), metadata(moto_kms_client, v2)
    assert aliases_of(moto_kms_client, v1.key_id) == {
        f"alias/keyrotor/{v1.key_id}/v1": meta1["KeyId"],
        f"alias/keyrotor/{v1.key_id}/v2": meta2["KeyId"],
    }
    for meta in (meta1, meta2):
        assert (meta["KeySpec"], meta["KeyUsage"]) == SPECS[algorithm]
        assert meta["KeyState"] == "Enabled"
    tags = moto_kms_client.list_resource_tags(KeyId=meta1["KeyId"])["Tags"]
    assert {"TagKey": "keyrotor:key-id", "TagValue": v1.key_id} in tags


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "ECDSA-P256", "RSA-2048"])
def test_creating_a_version_twice_leaves_one_kms_key(
    provider: AWSKMSProvider, moto_kms_client: Any, algorithm: str
) -> None:
    key_id = new_key_id()
    before = all_key_ids(moto_kms_client)
    first = provider.create_version(key_id, 1, algorithm)
    again = provider.create_version(key_id, 1, algorithm)

    assert again == first  # same ref and, for asymmetric keys, the same public key
    assert len(all_key_ids(moto_kms_client) - before) == 1
    assert len(aliases_of(moto_kms_client, key_id)) == 1


def test_an_alias_holding_another_key_spec_is_refused(
    provider: AWSKMSProvider, moto_kms_client: Any
) -> None:
    v = new_version(provider, "AES-256-GCM")
    before = all_key_ids(moto_kms_client)
    with pytest.raises(ProviderOperationError, match="SYMMETRIC_DEFAULT"):
        provider.create_version(v.key_id, 1, "ECDSA-P256")
    assert all_key_ids(moto_kms_client) == before


def test_alias_prefix_separates_deployments(moto_kms_client: Any) -> None:
    provider = AWSKMSProvider(moto_kms_client, alias_prefix="keyrotor-staging")
    v = new_version(provider, "HMAC-SHA256")
    names = [
        a["AliasName"]
        for page in moto_kms_client.get_paginator("list_aliases").paginate()
        for a in page["Aliases"]
    ]
    assert f"alias/keyrotor-staging/{v.key_id}/v1" in names
    assert f"alias/keyrotor/{v.key_id}/v1" not in names


# -- key states ----------------------------------------------------------------------------


def test_disable_leaves_the_kms_key_disabled(
    provider: AWSKMSProvider, moto_kms_client: Any
) -> None:
    v = new_version(provider, "AES-256-GCM")
    data = provider.encrypt(v, MESSAGE, AAD)
    provider.disable_version(v)

    meta = metadata(moto_kms_client, v)
    assert meta["KeyState"] == "Disabled" and meta["Enabled"] is False
    with pytest.raises(ProviderOperationError, match="Disabled"):
        provider.decrypt(v, data, AAD)


def test_another_process_sees_a_disabled_key_once_its_state_cache_expires(
    moto_kms_client: Any,
) -> None:
    writer = AWSKMSProvider(moto_kms_client)
    reader = AWSKMSProvider(moto_kms_client, key_state_ttl=0.2)
    v = new_version(writer, "ECDSA-P256")
    reader.sign(v, MESSAGE)
    writer.disable_version(v)
    time.sleep(0.3)
    with pytest.raises(ProviderOperationError):
        reader.sign(v, MESSAGE)


def test_destroy_schedules_deletion_after_the_minimum_window(
    provider: AWSKMSProvider, moto_kms_client: Any
) -> None:
    v = new_version(provider, "HMAC-SHA512")
    provider.destroy_version(v)
    provider.destroy_version(v)  # already pending deletion: still fine

    meta = metadata(moto_kms_client, v)
    assert meta["KeyState"] == "PendingDeletion"
    deletion = meta["DeletionDate"]
    expected = datetime.now(UTC) + timedelta(days=7)
    assert abs(deletion - expected) < timedelta(hours=1)
    provider.disable_version(v)  # disabling a destroyed version is a no-op, not an error
    with pytest.raises(ProviderOperationError, match="PendingDeletion"):
        provider.sign(v, MESSAGE)


def test_destroy_of_a_version_the_kms_no_longer_has_is_a_no_op(provider: AWSKMSProvider) -> None:
    v = new_version(provider, "AES-256-GCM")
    gone = VersionHandle(
        key_id=v.key_id,
        number=v.number,
        algorithm=v.algorithm,
        provider_key_ref=v.provider_key_ref.rsplit("/", 1)[0] + f"/{uuid.uuid4()}",
        wrapped_material=None,
        public_key=None,
    )
    provider.destroy_version(gone)
    with pytest.raises(ProviderOperationError):
        provider.encrypt(gone, MESSAGE, AAD)


# -- operations ----------------------------------------------------------------------------


def test_a_ciphertext_of_v1_is_refused_under_v2(provider: AWSKMSProvider) -> None:
    v1 = new_version(provider, "AES-256-GCM", 1)
    v2 = new_version(provider, "AES-256-GCM", 2, key_id=v1.key_id)
    data = provider.encrypt(v1, MESSAGE, AAD)

    with pytest.raises(DecryptionError):
        provider.decrypt(v2, data, AAD)
    assert provider.decrypt(v1, data, AAD) == MESSAGE  # the refusal was about the version


def test_aad_is_bound_including_the_empty_aad(provider: AWSKMSProvider) -> None:
    v = new_version(provider, "AES-256-GCM")
    plain = provider.encrypt(v, MESSAGE, b"")
    assert provider.decrypt(v, plain, b"") == MESSAGE
    with pytest.raises(DecryptionError):
        provider.decrypt(v, plain, AAD)
    with pytest.raises(DecryptionError):
        provider.decrypt(v, provider.encrypt(v, MESSAGE, AAD), b"")


def test_garbage_and_oversized_inputs(provider: AWSKMSProvider) -> None:
    v = new_version(provider, "AES-256-GCM")
    with pytest.raises(DecryptionError):
        provider.decrypt(v, b"\x00" * 80, AAD)
    with pytest.raises(AlgorithmError, match="4096"):
        provider.encrypt(v, b"x" * 4097, AAD)
    assert provider.decrypt(v, provider.encrypt(v, b"x" * 4096, AAD), AAD) == b"x" * 4096
    mac = new_version(provider, "HMAC-SHA256")
    with pytest.raises(AlgorithmError, match="4096"):
        provider.sign(mac, b"x" * 4097)
    with pytest.raises(AlgorithmError, match="empty"):
        provider.sign(mac, b"")


def test_ecdsa_signatures_are_standard_der_over_sha256(provider: AWSKMSProvider) -> None:
    v = new_version(provider, "ECDSA-P256")
    signature = provider.sign(v, MESSAGE)
    assert v.public_key is not None
    public = serialization.load_der_public_key(v.public_key)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    public.verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))  # raises if not


def test_rsa_2048_versions_sign_with_pss_and_refuse_encryption(provider: AWSKMSProvider) -> None:
    v1 = new_version(provider, "RSA-2048", 1)
    v2 = new_version(provider, "RSA-2048", 2, key_id=v1.key_id)
    signature = provider.sign(v1, MESSAGE)
    provider.verify(v1, MESSAGE, signature)

    assert v1.public_key is not None and provider.public_key(v1) == v1.public_key
    public = serialization.load_der_public_key(v1.public_key)
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    # PSS with SHA-256 and MGF1-SHA256. Real KMS uses a 32-byte salt (as the registry does);
    # moto uses the longest salt, so accept any length here.
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    public.verify(signature, MESSAGE, pss, hashes.SHA256())

    with pytest.raises(InvalidSignatureError):
        provider.verify(v1, MESSAGE + b"!", signature)
    with pytest.raises(InvalidSignatureError):
        provider.verify(v2, MESSAGE, signature)
    with pytest.raises(UnsupportedOperationError):
        provider.encrypt(v1, MESSAGE, AAD)
    with pytest.raises(UnsupportedOperationError):
        provider.decrypt(v1, b"anything", AAD)
    provider.disable_version(v1)
    with pytest.raises(ProviderOperationError):
        provider.sign(v1, MESSAGE)
    assert provider.public_key(v1) == v1.public_key  # still served for verifiers


# -- import (BYOK); GetParametersForImport and ImportKeyMaterial are the fixture's stand-in ----


def pkcs8(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def imported(provider: AWSKMSProvider, algorithm: str, material: bytes) -> VersionHandle:
    key_id = new_key_id()
    made = provider.import_version(key_id, 1, algorithm, material)
    return VersionHandle(key_id, 1, algorithm, made.provider_key_ref, None, made.public_key)


def test_imported_material_is_what_kms_uses(provider: AWSKMSProvider, moto_kms_client: Any) -> None:
    # HMAC (wrapped with RSAES_OAEP_SHA_256): KMS's MAC is the one the material computes
    mac_key = os.urandom(32)
    v = imported(provider, "HMAC-SHA256", mac_key)
    assert provider.sign(v, MESSAGE) == hmac.new(mac_key, MESSAGE, "sha256").digest()
    meta = metadata(moto_kms_client, v)
    assert (meta["Origin"], meta["KeyState"], meta["KeySpec"]) == (
        "EXTERNAL",
        "Enabled",
        "HMAC_256",
    )
    assert aliases_of(moto_kms_client, v.key_id) == {f"alias/keyrotor/{v.key_id}/v1": meta["KeyId"]}

    # private keys (wrapped with RSA_AES_KEY_WRAP_SHA_256): KMS signs with the holder's key
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    v = imported(provider, "ECDSA-P256", pkcs8(ecdsa))
    assert v.public_key == ecdsa.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ecdsa.public_key().verify(provider.sign(v, MESSAGE), MESSAGE, ec.ECDSA(hashes.SHA256()))
    rsa_key = rsa.generate_private_key(65537, 2048)
    v = imported(provider, "RSA-2048", pkcs8(rsa_key))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    rsa_key.public_key().verify(provider.sign(v, MESSAGE), MESSAGE, pss, hashes.SHA256())

    # AES: KMS's ciphertexts are its own format; they open under the imported key only
    aes = imported(provider, "AES-256-GCM", os.urandom(32))
    ciphertext = provider.encrypt(aes, MESSAGE, AAD)
    assert provider.decrypt(aes, ciphertext, AAD) == MESSAGE
    # later versions are generated in KMS as usual: an imported key rotates
    v2 = new_version(provider, "AES-256-GCM", 2, key_id=aes.key_id)
    assert metadata(moto_kms_client, v2)["Origin"] == "AWS_KMS"
    with pytest.raises(DecryptionError):
        provider.decrypt(v2, ciphertext, AAD)


def test_a_refused_import_leaves_no_alias_and_no_usable_key(
    provider: AWSKMSProvider, moto_kms_client: Any
) -> None:
    with pytest.raises(ProviderOperationError, match="first version"):
        provider.import_version(new_key_id(), 2, "AES-256-GCM", os.urandom(32))
    existing = new_version(provider, "AES-256-GCM")
    with pytest.raises(ProviderOperationError, match="exists already"):
        provider.import_version(existing.key_id, 1, "AES-256-GCM", os.urandom(32))

    # KMS refuses the material (HMAC_512 takes 64 to 128 bytes): its key goes, no alias names it
    key_id, material = new_key_id(), os.urandom(32)
    before = all_key_ids(moto_kms_client)
    with pytest.raises(ProviderOperationError, match="IncorrectKeyMaterialException") as refused:
        provider.import_version(key_id, 1, "HMAC-SHA512", material)
    assert material.hex() not in str(refused.value) and repr(material) not in str(refused.value)
    (made,) = all_key_ids(moto_kms_client) - before
    meta = moto_kms_client.describe_key(KeyId=made)["KeyMetadata"]
    assert (meta["Origin"], meta["KeyState"]) == ("EXTERNAL", "PendingDeletion")
    assert aliases_of(moto_kms_client, key_id) == {}


def test_operations_the_algorithm_lacks_are_refused(provider: AWSKMSProvider) -> None:
    aes = new_version(provider, "AES-256-GCM")
    mac = new_version(provider, "HMAC-SHA256")
    with pytest.raises(UnsupportedOperationError):
        provider.sign(aes, MESSAGE)
    with pytest.raises(UnsupportedOperationError):
        provider.encrypt(mac, MESSAGE, AAD)
    assert provider.public_key(aes) is None and provider.public_key(mac) is None


@pytest.mark.parametrize("algorithm", ["ChaCha20-Poly1305", "Ed25519", "EdDSA", "nope"])
def test_algorithms_kms_cannot_hold_are_refused(
    provider: AWSKMSProvider, moto_kms_client: Any, algorithm: str
) -> None:
    before = all_key_ids(moto_kms_client)
    assert not provider.supports(algorithm)
    with pytest.raises(UnsupportedAlgorithmError):
        provider.create_version(new_key_id(), 1, algorithm)
    assert all_key_ids(moto_kms_client) == before


def test_aliases_and_key_sizes(provider: AWSKMSProvider) -> None:
    for name in ("aes-256-gcm", "sha256", "ES256", "P-256", "RSA"):
        assert provider.supports(name)
    with pytest.raises(UnsupportedAlgorithmError, match="256 bits only"):
        provider.create_version(new_key_id(), 1, "HMAC-SHA256", key_bits=512)
    with pytest.raises(AlgorithmError):
        provider.create_version(new_key_id(), 1, "AES-256-GCM", key_bits=128)
    with pytest.raises(ProviderOperationError, match="KMS alias"):
        provider.create_version("key with spaces", 1, "AES-256-GCM")


# -- health and error mapping --------------------------------------------------------------


def test_health_is_a_real_call_that_names_the_endpoint(moto_kms: str) -> None:
    # Built from endpoint and region; credentials from the AWS_* variables, as the caller does.
    provider = AWSKMSProvider(endpoint_url=moto_kms, region_name="us-east-1")
    health = provider.health()
    assert health.ok, health.detail
    assert moto_kms in health.detail and "us-east-1" in health.detail


def test_unreachable_endpoint_is_retryable_unavailability(
    make_kms_client: Any, unreachable_endpoint: str, fake_aws_secrets: tuple[str, str]
) -> None:
    provider = AWSKMSProvider(make_kms_client(unreachable_endpoint, connect_timeout=1))
    with pytest.raises(ProviderUnavailableError) as caught:
        provider.create_version(new_key_id(), 1, "AES-256-GCM")
    assert caught.value.retryable
    health = provider.health()
    assert not health.ok
    assert "unreachable" in health.detail
    for secret in fake_aws_secrets:
        assert secret not in health.detail and secret not in str(caught.value)


def test_a_stopped_server_is_retryable_unavailability_without_secrets(
    private_moto_server: Any, make_kms_client: Any, fake_aws_secrets: tuple[str, str]
) -> None:
    provider = AWSKMSProvider(make_kms_client(private_moto_server.endpoint_url, connect_timeout=1))
    aes = new_version(provider, "AES-256-GCM")
    mac = new_version(provider, "HMAC-SHA256")
    plaintext = b"TOP-SECRET-PLAINTEXT-4242"
    data = provider.encrypt(aes, plaintext, AAD)
    private_moto_server.stop()

    errors: list[ProviderError] = []
    for call in (
        lambda: provider.encrypt(aes, plaintext, AAD),
        lambda: provider.decrypt(aes, data, AAD),
        lambda: provider.sign(mac, plaintext),
        lambda: provider.disable_version(mac),
    ):
        with pytest.raises(ProviderUnavailableError) as caught:
            call()
        errors.append(caught.value)
    for error in errors:
        assert error.retryable
        text = f"{error} {error!r} {error.__cause__}"
        for secret in (*fake_aws_secrets, plaintext.decode()):
            assert secret not in text


def test_access_denied_is_a_configuration_error(
    moto_kms_client: Any,
) -> None:
    provider = AWSKMSProvider(moto_kms_client, key_state_ttl=0)
    v = new_version(provider, "AES-256-GCM")
    deny = (
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*",'
        ' "Action": "kms:DescribeKey", "Resource": "*"}]}'
    )
    moto_kms_client.put_key_policy(KeyId=v.provider_key_ref, PolicyName="default", Policy=deny)

    with pytest.raises(ProviderConfigurationError) as caught:
        provider.create_version(v.key_id, v.number, "AES-256-GCM")
    assert not caught.value.retryable
    assert "AccessDenied" in str(caught.value)
    with pytest.raises(ProviderConfigurationError):
        provider.encrypt(v, MESSAGE, AAD)


def test_missing_credentials_are_a_configuration_error(
    moto_kms: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    provider = AWSKMSProvider(endpoint_url=moto_kms, region_name="us-east-1")
    with pytest.raises(ProviderConfigurationError, match="credentials") as caught:
        provider.create_version(new_key_id(), 1, "AES-256-GCM")
    assert not caught.value.retryable
    assert not provider.health().ok


def test_missing_region_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ProviderConfigurationError, match="region"):
        AWSKMSProvider()


class _FailingClient:
    """Answers every KMS call with one ClientError: for codes a moto server cannot produce."""

    def __init__(self, code: str, status: int) -> None:
        self._response = {
            "Error": {"Code": code, "Message": "echoes AKIA-SECRET-IN-MESSAGE"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }

    def __getattr__(self, operation: str) -> Any:
        def fail(**_: Any) -> Any:
            raise ClientError(self._response, operation)

        return fail


@pytest.mark.parametrize(
    ("code", "status", "expected", "retryable"),
    [
        ("ThrottlingException", 400, ProviderUnavailableError, True),
        ("KMSInternalException", 500, ProviderUnavailableError, True),
        ("DependencyTimeoutException", 503, ProviderUnavailableError, True),
        ("SomethingNew", 502, ProviderUnavailableError, True),
        ("AccessDeniedException", 400, ProviderConfigurationError, False),
        ("UnrecognizedClientException", 400, ProviderConfigurationError, False),
        ("InvalidSignatureException", 400, ProviderConfigurationError, False),
        ("DisabledException", 400, ProviderOperationError, False),
        ("KMSInvalidStateException", 400, ProviderOperationError, False),
        ("NotFoundException", 400, ProviderOperationError, False),
    ],
)
def test_error_codes_map_onto_provider_errors(
    code: str, status: int, expected: type[ProviderError], retryable: bool
) -> None:
    provider = AWSKMSProvider(_FailingClient(code, status))
    with pytest.raises(expected) as caught:
        provider.create_version(new_key_id(), 1, "AES-256-GCM")
    assert type(caught.value) is expected
    assert caught.value.retryable is retryable
    assert code in str(caught.value)
    assert "SECRET" not in str(caught.value)  # AWS's own message text is never passed on
