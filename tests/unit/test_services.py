"""Providers come from the settings: configured ones are built, half-configured ones stop the
process with the setting to fix, and a key on a configured provider works through KeyService."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.lifecycle import (
    LifecyclePolicy,
    RotationReason,
    TransitionKind,
    apply_timed,
    new_key,
    next_transition,
    rotate,
)
from core.objects import KeySpec, KeyTransitionCommit
from core.providers.aws_kms import AWSKMSProvider
from core.providers.base import ProviderOperationError, VersionHandle
from core.providers.local import LocalProvider
from core.providers.pkcs11 import PKCS11Provider
from core.providers.vault_transit import VaultTransitProvider
from core.services import ConfigurationError, Services, build_services
from core.settings import Settings
from tests.fixtures.softhsm import SoftHSMToken
from tests.fixtures.temporal import TEST_MASTER_KEY

DAY = 86400


def settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(**{"data_dir": tmp_path, "master_key": SecretStr(TEST_MASTER_KEY)} | extra)


def test_only_local_without_provider_settings(tmp_path: Path) -> None:
    services = build_services(settings(tmp_path))
    assert list(services.providers) == ["local"]
    assert isinstance(services.providers["local"], LocalProvider)
    services.close()


def test_a_process_with_a_database_url_needs_no_data_dir(tmp_path: Path) -> None:
    """The image runs as `nobody` in a directory it cannot write: with KEYROTOR_DATABASE_URL
    set, nothing is written to the data dir (SQLite's default file is the one thing there)."""
    (tmp_path / "not-a-dir").write_text("")
    unwritable = tmp_path / "not-a-dir" / ".keyrotor"  # mkdir fails here, even for root
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'keyrotor.db'}"
    services = build_services(settings(tmp_path, data_dir=unwritable, database_url=url))
    assert list(services.providers) == ["local"]
    services.close()
    assert (tmp_path / "elsewhere" / "keyrotor.db").is_file()


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


def _commit(
    services: Services, spec: KeySpec, seq: int, lc: object, at: datetime, new: int | None
) -> None:
    services.keys.commit_transition(
        KeyTransitionCommit(
            f"keyrotor/key/dev/{spec.key_id}/{seq}",
            spec,
            lc,
            "key.test",
            "keyTest",
            at,  # type: ignore[arg-type]
            new_version=new,
        )
    )


def _handle(services: Services, key_id: str, number: int) -> VersionHandle:
    _, versions = services.keys.get(key_id)
    row = next(v for v in versions if v.number == number)
    return VersionHandle(
        key_id, number, row.algorithm, row.provider_key_ref, row.wrapped_material, row.public_key
    )


@pytest.mark.parametrize("provider", ["vault", "aws-kms", "pkcs11"])
def test_versions_the_lifecycle_ends_are_disabled_at_their_provider(
    all_providers: Services, provider: str
) -> None:
    """Retired and compromised versions are refused by the provider too, not only the store;
    on Vault (disabling a version disables the older ones) a version in grace older than a
    compromised one keeps working until its grace ends."""
    services = all_providers
    spec = KeySpec(
        f"key_disable{provider.replace('-', '')}0001",
        "dev",
        "encryption",
        "AES-256-GCM",
        provider,
        256,
    )
    policy = LifecyclePolicy(30 * DAY, DAY, 60 * DAY, DAY)
    t0 = datetime.now(UTC)
    lc = new_key(policy, t0)
    _commit(services, spec, 1, lc, t0, 1)
    lc = rotate(lc, t0 + timedelta(minutes=1), RotationReason.MANUAL)  # v1 in grace
    _commit(services, spec, 2, lc, t0, 2)
    lc = rotate(lc, t0 + timedelta(minutes=2), RotationReason.COMPROMISE, 0)  # v2 compromised
    _commit(services, spec, 3, lc, t0, 3)
    impl = services.providers[provider]
    v1, v2, v3 = (_handle(services, spec.key_id, n) for n in (1, 2, 3))
    sealed_by_v1 = impl.encrypt(v1, b"x", b"")  # (made now only to have one: v1 is in grace)
    assert impl.decrypt(v1, sealed_by_v1, b"") == b"x"
    if provider != "vault":  # a per-version provider switches the compromised one off at once
        with pytest.raises(ProviderOperationError):
            impl.encrypt(v2, b"x", b"")
    # v1's grace ends: now every version before v3 is done, at every provider
    later = t0 + timedelta(days=2)
    due = next_transition(lc, later)
    assert due is not None and due.kind == TransitionKind.END_GRACE
    lc = apply_timed(lc, due, later)
    _commit(services, spec, 4, lc, later, None)
    for done in (v1, v2):
        with pytest.raises(ProviderOperationError):
            impl.encrypt(done, b"x", b"")
    assert impl.decrypt(v3, impl.encrypt(v3, b"y", b""), b"") == b"y"


def test_an_empty_admin_key_variable_is_unset_and_a_malformed_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYROTOR_ADMIN_KEY", "")
    assert Settings().admin_key is None
    with pytest.raises(ConfigurationError, match="KEYROTOR_ADMIN_KEY is malformed"):
        build_services(settings(tmp_path, admin_key=SecretStr("kra_short")))


def test_an_empty_redis_url_is_unset_and_a_malformed_one_is_refused_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYROTOR_REDIS_URL", "")
    assert Settings().redis_url is None
    for url in ("http://:hunter2@cache:6379", "redis://:hunter2@cache:port/0"):
        with pytest.raises(ConfigurationError, match="KEYROTOR_REDIS_URL is not a Redis URL") as e:
            build_services(settings(tmp_path, redis_url=SecretStr(url)))
        assert "hunter2" not in str(e.value)
