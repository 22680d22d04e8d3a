"""The provider contract against the local provider."""

from __future__ import annotations

import pytest

from core.algorithms import canonical_names
from core.envelope import MasterKeyring
from core.providers.local import LocalProvider
from tests.providers.contract import ProviderContract


class TestLocalContract(ProviderContract):
    ALGORITHMS = tuple(canonical_names())
    UNSUPPORTED = "NOT-AN-ALGORITHM"

    @pytest.fixture
    def provider(self) -> LocalProvider:
        return LocalProvider(MasterKeyring([bytes(range(32))]))
