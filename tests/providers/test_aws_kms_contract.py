"""The provider contract against the AWS KMS provider, through boto3, on a real moto server.

A KMS key has a single usage, so RSA-2048 versions are signing keys (SIGN_ONLY): encrypting with
them must raise UnsupportedOperationError. tests/providers/test_aws_kms.py covers the rest.
"""

from __future__ import annotations

from typing import Any

import pytest

from core.providers.aws_kms import AWSKMSProvider
from tests.providers.contract import ProviderContract


class TestAWSKMSContract(ProviderContract):
    ALGORITHMS = ("AES-256-GCM", "HMAC-SHA256", "HMAC-SHA512", "ECDSA-P256", "RSA-2048")
    UNSUPPORTED = "ChaCha20-Poly1305"
    SIGN_ONLY = frozenset({"RSA-2048"})

    @pytest.fixture
    def provider(self, moto_kms_client: Any) -> AWSKMSProvider:
        return AWSKMSProvider(moto_kms_client)
