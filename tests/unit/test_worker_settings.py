"""The worker takes its workflow cache size from KEYROTOR_WORKER_CACHE_SIZE (docs/scaling.md:
a cache smaller than the live keys replays histories at every timer)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from core.services import Services
from core.settings import Settings
from worker.main import build_worker


async def test_the_cache_size_is_the_setting(
    services: Services, time_skipping_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = time_skipping_env.client
    as_shipped = build_worker(client, services, "cache-as-shipped")
    assert as_shipped.config()["max_cached_workflows"] == 500
    services.settings.worker_cache_size = 12_000
    sized = build_worker(client, services, "cache-sized")
    assert sized.config()["max_cached_workflows"] == 12_000
    monkeypatch.setenv("KEYROTOR_WORKER_CACHE_SIZE", "0")  # keyrotor's commits need a cache
    with pytest.raises(ValidationError, match="worker_cache_size"):
        Settings()
