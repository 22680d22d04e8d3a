"""The provider contract against the Azure Key Vault provider, through azure-keyvault-keys.

No Azure Key Vault (or emulator) can run here: the client talks HTTPS to the local stand-in of
the Key Vault REST operations in tests/fixtures/azure_keyvault.py. Key Vault's RSA-OAEP cannot
bind keyrotor's aad, so RSA versions are signing keys (SIGN_ONLY).
"""

from __future__ import annotations

import pytest

from core.providers.azure_keyvault import AzureKeyVaultProvider
from tests.fixtures.azure_keyvault import (
    KeyVaultStandIn,
    StaticTokenCredential,
    azure_client_kwargs,
)
from tests.providers.contract import ProviderContract


class TestAzureKeyVaultContract(ProviderContract):
    ALGORITHMS = ("ECDSA-P256", "RSA-2048", "RSA-4096")
    UNSUPPORTED = "AES-256-GCM"
    SIGN_ONLY = frozenset({"RSA-2048", "RSA-4096"})

    @pytest.fixture
    def provider(
        self, azure_keyvault: KeyVaultStandIn, azure_keyvault_credential: StaticTokenCredential
    ) -> AzureKeyVaultProvider:
        return AzureKeyVaultProvider(
            azure_keyvault.url, azure_keyvault_credential, **azure_client_kwargs(azure_keyvault)
        )
