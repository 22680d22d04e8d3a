"""`KEYROTOR_PROVIDER_TIMEOUT` bounds every call to a remote provider: against a server that
accepts the connection and never answers, a call fails as unavailable (retryable) after about
that long, not after the SDK's own default (a minute or more, or never)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from core.envelope import MasterKeyring
from core.providers.base import ProviderUnavailableError
from core.services import build_providers
from core.settings import Settings
from tests.fixtures.temporal import TEST_MASTER_KEY


@pytest.fixture
def silent_server() -> Iterator[str]:
    """http://127.0.0.1:<port> that completes TCP handshakes (the kernel's backlog) and never
    reads or answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("provider", ["vault", "aws-kms"])
def test_a_provider_that_never_answers_fails_after_the_timeout(
    provider: str, silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    settings = Settings(
        master_key=SecretStr(TEST_MASTER_KEY),
        provider_timeout=1.0,
        vault_addr=silent_server if provider == "vault" else "",
        vault_token=SecretStr("t"),
        aws_endpoint_url=silent_server if provider == "aws-kms" else "",
        aws_region="us-east-1",
    )
    built = build_providers(settings, MasterKeyring.parse(TEST_MASTER_KEY))[provider]
    started = time.monotonic()
    with pytest.raises(ProviderUnavailableError) as raised:
        built.create_version("key_timeoutprobe0000000", 1, "AES-256-GCM")
    elapsed = time.monotonic() - started
    assert raised.value.retryable
    # one attempt of about a second (the defaults would wait 8 s per attempt)
    assert 0.9 <= elapsed < 5, elapsed


def test_the_timeout_leaves_room_for_the_commit() -> None:
    with pytest.raises(ValueError, match="provider_timeout"):
        Settings(master_key=SecretStr(TEST_MASTER_KEY), provider_timeout=14)
    assert Settings(provider_timeout=0.5).provider_connect_timeout == 0.5
    assert Settings(provider_timeout=9).provider_connect_timeout == 3.0
