"""The provider contract against the PKCS#11 provider on a fresh SoftHSM2 token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from core.providers.pkcs11 import PKCS11Provider
from tests.providers.contract import ProviderContract

if TYPE_CHECKING:
    # Imported only for typing: tests/conftest.py registers the fixture module, so that its
    # assertions are rewritten.
    from tests.fixtures.softhsm import SoftHSMToken


class TestPKCS11Contract(ProviderContract):
    ALGORITHMS = (
        "AES-256-GCM",
        "HMAC-SHA256",
        "HMAC-SHA512",
        "ECDSA-P256",
        "Ed25519",
        "RSA-2048",
    )
    UNSUPPORTED = "ChaCha20-Poly1305"
    SIGN_ONLY = frozenset({"RSA-2048"})

    @pytest.fixture
    def provider(self, softhsm_token: SoftHSMToken) -> PKCS11Provider:
        return PKCS11Provider(softhsm_token.module_path, softhsm_token.label, softhsm_token.pin)
