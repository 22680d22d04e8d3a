"""Providers come from the settings: configured ones are built, half-configured ones stop the
process with the setting to fix, and a key on a configured provider works through KeyService."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.lifecycle import LifecyclePolicy, new_key
from core.objects import KeySpec, KeyTransitionCommit
from core.providers.local import LocalProvider
from core.providers.pkcs11 import PKCS11Provider
from core.services import ConfigurationError, build_services
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


def test_a_key_on_the_pkcs11_provider_through_key_service(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    services = build_services(
        settings(
            tmp_path,
            pkcs11_module=softhsm_token.module_path,
            pkcs11_token_label=softhsm_token.label,
            pkcs11_pin=SecretStr(softhsm_token.pin),
        )
    )
    assert isinstance(services.providers["pkcs11"], PKCS11Provider)
    spec = KeySpec("key_servicespkcs11001", "dev", "encryption", "AES-256-GCM", "pkcs11", 256)
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
    assert versions[0].wrapped_material is None  # the material stays on the token
    assert versions[0].provider_key_ref == f"keyrotor/{spec.key_id}/v1"
    sealed = services.keys.encrypt(spec.key_id, b"secret", b"aad")
    assert services.keys.decrypt(spec.key_id, str(sealed.value), b"aad").value == b"secret"
    services.close()
