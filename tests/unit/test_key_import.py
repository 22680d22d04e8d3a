"""Staging an imported key (BYOK) in the store, and taking it back when its workflow never
started."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import hvac
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from core.keys import InvalidMaterialError, KeyStateError
from core.lifecycle import KeyLifecycle, new_key
from core.objects import ImportWithdrawnError, KeySpec, KeyTransitionCommit
from core.providers.vault_transit import transit_key_name
from core.services import Services, build_services
from core.settings import Settings
from core.store.models import KeyRow, KeyVersionRow
from tests.fixtures.database import backend_database_url
from tests.fixtures.temporal import TEST_MASTER_KEY

WORKFLOW_ID = "keyrotor/key/dev/staged"


def spec_and_lifecycle(
    services: Services, key_id: str, provider: str = "local"
) -> tuple[KeySpec, KeyLifecycle]:
    policy = services.policies.key_type("encryption")
    now = datetime.now(UTC)
    spec = KeySpec(key_id, "dev", "encryption", policy.algorithm, provider, 256, origin="imported")
    return spec, new_key(policy.lifecycle(), now, now + timedelta(days=100))


def counts(services: Services) -> tuple[int, int]:
    with services.store.engine.connect() as db:
        return (
            db.scalar(select(func.count()).select_from(KeyRow)) or 0,
            db.scalar(select(func.count()).select_from(KeyVersionRow)) or 0,
        )


def test_stage_and_unstage(services: Services) -> None:
    spec, lifecycle = spec_and_lifecycle(services, "key_importstaged00001")
    services.keys.stage_import(spec, lifecycle, secrets.token_bytes(32), WORKFLOW_ID)
    assert counts(services) == (1, 1)
    with services.store.engine.connect() as db:
        state, material = db.execute(
            select(KeyVersionRow.state, KeyVersionRow.wrapped_material)
        ).one()
    assert state == "pending" and material is not None
    with pytest.raises(KeyStateError, match="exists already"):
        services.keys.stage_import(spec, lifecycle, secrets.token_bytes(32), WORKFLOW_ID)
    services.keys.unstage_import(spec.key_id)
    assert counts(services) == (0, 0)


def test_bad_material_stores_nothing(services: Services) -> None:
    spec, lifecycle = spec_and_lifecycle(services, "key_importrefused0001")
    with pytest.raises(InvalidMaterialError, match="248 bits, expected 256"):
        services.keys.stage_import(spec, lifecycle, secrets.token_bytes(31), WORKFLOW_ID)
    assert counts(services) == (0, 0)


def test_a_remote_import_taken_back_is_destroyed_at_its_provider(
    openbao: tuple[str, str], tmp_path: Path
) -> None:
    url, token = openbao
    settings = Settings(
        data_dir=tmp_path,
        database_url=backend_database_url(),
        master_key=SecretStr(TEST_MASTER_KEY),
        vault_addr=url,
        vault_token=SecretStr(token),
    )
    services = build_services(settings)
    try:
        spec, lifecycle = spec_and_lifecycle(services, "key_importvault000001", "vault")
        services.keys.stage_import(spec, lifecycle, secrets.token_bytes(32), WORKFLOW_ID)
        transit = hvac.Client(url=url, token=token).secrets.transit
        name = transit_key_name(spec.key_id)
        assert transit.read_key(name)["data"]["latest_version"] == 1
        services.keys.unstage_import(spec.key_id)
        assert counts(services) == (0, 0)
        # the imported version is gone from Vault too (transit keeps a generated successor)
        assert transit.read_key(name)["data"]["min_available_version"] == 2

        # material the store cannot record (the id is taken) is destroyed at Vault at once
        taken, _ = spec_and_lifecycle(services, "key_importvault000002", "local")
        services.keys.stage_import(taken, lifecycle, secrets.token_bytes(32), WORKFLOW_ID)
        spec, _ = spec_and_lifecycle(services, taken.key_id, "vault")
        with pytest.raises(KeyStateError, match="exists already"):
            services.keys.stage_import(spec, lifecycle, secrets.token_bytes(32), WORKFLOW_ID)
        name = transit_key_name(spec.key_id)
        assert transit.read_key(name)["data"]["min_available_version"] == 2
        assert counts(services) == (1, 1)  # the local one
    finally:
        services.close()


def test_a_withdrawn_key_import_is_never_replaced_by_generated_material(
    services: Services,
) -> None:
    spec, lifecycle = spec_and_lifecycle(services, "key_importwithdrawn01")
    commit = KeyTransitionCommit(
        transition_id=f"{WORKFLOW_ID}/1",
        spec=spec,
        lifecycle=lifecycle,
        action="key.imported",
        event="keyCreated",
        at=datetime.now(UTC),
        version=1,
        new_version=1,
    )
    with pytest.raises(ImportWithdrawnError):
        services.keys.commit_transition(commit)
    assert counts(services) == (0, 0)
