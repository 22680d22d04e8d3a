"""The provider contract against the Vault transit provider, on a real OpenBao dev server."""

from __future__ import annotations

import pytest

from core.algorithms import canonical_names
from core.providers.vault_transit import VaultTransitProvider
from tests.providers.contract import ProviderContract

# Every registered algorithm transit holds; the registry today has nothing Vault lacks, so the
# refused one is a name that resolves to nothing unless an algorithm transit lacks appears.
VAULT_ALGORITHMS = (
    "AES-256-GCM",
    "ChaCha20-Poly1305",
    "HMAC-SHA256",
    "HMAC-SHA512",
    "Ed25519",
    "ECDSA-P256",
    "RSA-2048",
    # Registered by the algorithm work running alongside; tested here once the registry has it.
    *(("RSA-4096",) if "RSA-4096" in canonical_names() else ()),
)


def _first_unsupported() -> str:
    probe = VaultTransitProvider("http://127.0.0.1:1", "unused")
    return next((n for n in canonical_names() if not probe.supports(n)), "NOT-AN-ALGORITHM")


class TestVaultContract(ProviderContract):
    ALGORITHMS = VAULT_ALGORITHMS
    UNSUPPORTED = _first_unsupported()

    @pytest.fixture
    def provider(self, openbao: tuple[str, str]) -> VaultTransitProvider:
        url, token = openbao
        return VaultTransitProvider(url, token)

    def test_every_supported_registry_algorithm_is_tested(self) -> None:
        probe = VaultTransitProvider("http://127.0.0.1:1", "unused")
        supported = {n for n in canonical_names() if probe.supports(n)}
        assert supported == set(self.ALGORITHMS)
