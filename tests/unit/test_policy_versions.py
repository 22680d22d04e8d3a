"""Policy versions across processes and restarts: the newest version is in force."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from core.policy import default_policy_path
from core.services import Services, build_services
from core.settings import Settings
from tests.fixtures.temporal import TEST_MASTER_KEY


def start(data_dir: Path, config: Path) -> Services:
    return build_services(
        Settings(data_dir=data_dir, master_key=SecretStr(TEST_MASTER_KEY), config=config)
    )


def test_versions_follow_the_file_and_the_api(tmp_path: Path) -> None:
    config = tmp_path / "keyrotor.toml"
    shipped = default_policy_path().read_text()
    config.write_text(shipped)
    one, two = start(tmp_path, config), start(tmp_path, config)
    try:
        assert (one.policy_version, two.policy_version) == (1, 1)  # stored once
        changed = shipped.replace('rotation_interval = "P30D"', 'rotation_interval = "P20D"', 1)
        row, policies, made = one.policy_versions.put(changed, "alice", "shorter")
        assert (row.version, row.source, made) == (2, "api", True)
        assert policies.key_type("encryption").rotation_interval.days == 20
        # the other process takes it up when it looks
        assert two.refresh_policies() is True
        assert two.policies.key_type("encryption").rotation_interval.days == 20
        assert two.refresh_policies() is False
    finally:
        one.close()
        two.close()
    # a restart with the unchanged file keeps the API's version
    again = start(tmp_path, config)
    try:
        assert again.policy_version == 2
        assert again.policies.key_type("encryption").rotation_interval.days == 20
    finally:
        again.close()
    # an edited file is a new version, and in force
    config.write_text(shipped.replace('grace_period = "P7D"', 'grace_period = "P6D"', 1))
    edited = start(tmp_path, config)
    try:
        assert edited.policy_version == 3
        assert edited.policy_versions.newest().source == "file"
        assert edited.policies.key_type("encryption").grace_period.days == 6
    finally:
        edited.close()
