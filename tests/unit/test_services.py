"""Providers come from the settings: configured ones are built, half-configured ones stop the
process with the setting to fix, and a key on a configured provider works through KeyService."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.lifecycle import LifecyclePolicy, new_key
from core.objects import KeySpec, KeyTransitionCommit
from core.providers.aws_kms import AWSKMSProvider
from core.providers.local import LocalProvider
from core.providers.pkcs11 import PKCS11Provider
from core.providers.vault_transit import VaultTransitProvider
from core.services import ConfigurationError, Services, build_services
from core.settings import Settings
from tests.fixtures.softhsm import SoftHSMToken
from tests.fixtures.temporal import TEST_MASTER_KEY

DAY = 86400


def settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(data_dir=tmp_path, master_key=SecretStr(TEST_MASTER_KEY), **extra)


def test_only_local_without_provider_settings(tmp_path: Path) -> None:
    services = build_services(settings(tmp_path))
    assert list(services.providers) == ["local"]
    assert isinstance(services.providers["local"], LocalProvider)
    services.close()


def test_half_configured_pkcs11_names_the_missing_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="KEYROTOR_PKCS11_PIN"):
        build_services(settings(tmp_path, pkcs11_module="/usr/lib/softhsm/libsofthsm2.so"))


def test_half_configured_vault_names_the_missing_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="KEYROTOR_VAULT_TOKEN"):
        build_services(settings(tmp_path, vault_addr="http://127.0.0.1:8200"))


@pytest.fixture
def all_providers(
    tmp_path: Path, softhsm_token: SoftHSMToken, openbao: tuple[str, str], moto_kms: str
) -> Iterator[Services]:
    url, token = openbao
    services = build_services(
        settings(
            tmp_path,
            pkcs11_module=softhsm_token.module_path,
            pkcs11_token_label=softhsm_token.label,
            pkcs11_pin=SecretStr(softhsm_token.pin),
            vault_addr=url,
            vault_token=SecretStr(token),
            aws_endpoint_url=moto_kms,
        )
    )
    yield services
    services.close()


def test_every_configured_provider_is_built(all_providers: Services) -> None:
    kinds = {name: type(p) for name, p in all_providers.providers.items()}
    assert kinds == {
        "local": LocalProvider,
        "vault": VaultTransitProvider,
        "aws-kms": AWSKMSProvider,
        "pkcs11": PKCS11Provider,
    }
    for name, provider in all_providers.providers.items():
        assert provider.health().ok, name


@pytest.mark.parametrize("provider", ["local", "vault", "aws-kms", "pkcs11"])
def test_a_key_on_each_provider_through_key_service(all_providers: Services, provider: str) -> None:
    services = all_providers
    spec = KeySpec(
        f"key_services{provider.replace('-', '')}01",
        "dev",
        "encryption",
        "AES-256-GCM",
        provider,
        256,
    )
    now = datetime.now(UTC)
    policy = LifecyclePolicy(30 * DAY, DAY, 60 * DAY, DAY)
    services.keys.commit_transition(
        KeyTransitionCommit(
            f"keyrotor/key/dev/{spec.key_id}/1",
            spec,
            new_key(policy, now),
            "key.created",
            "keyCreated",
            now,
            version=1,
            new_version=1,
        )
    )
    _, versions = services.keys.get(spec.key_id)
    # remote material stays at its provider; the store holds a reference only
    assert (versions[0].wrapped_material is None) == (provider != "local")
    assert bool(versions[0].provider_key_ref) == (provider != "local")
    sealed = services.keys.encrypt(spec.key_id, b"secret", b"aad")
    assert b"secret" not in str(sealed.value).encode()
    assert services.keys.decrypt(spec.key_id, str(sealed.value), b"aad").value == b"secret"


def test_azure_keyvault_needs_azure_identity_for_its_credentials(tmp_path: Path) -> None:
    # azure-identity is an extra (keyrotor[azure]); without it the process names the fix
    with pytest.raises(ConfigurationError, match=r"install azure-identity"):
        build_services(settings(tmp_path, azure_vault_url="https://x.vault.azure.net"))
