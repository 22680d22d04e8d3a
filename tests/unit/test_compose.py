"""docker-compose.yml cannot run here (no Docker engine): check that it says what the code
expects: its services, settings that exist, the search attributes the workflows write, and an
image that holds every package."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from core.settings import Settings
from workflows.types import SEARCH_ATTRIBUTE_KEYS

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services() -> None:
    assert set(compose()["services"]) == {
        "postgresql",
        "temporal",
        "temporal-setup",
        "temporal-ui",
        "openbao",
        "openbao-setup",
        "redis",
        "keyrotor-worker",
        "keyrotor-api",
    }


def test_keyrotor_variables_are_settings() -> None:
    services = compose()["services"]
    for name in ("keyrotor-worker", "keyrotor-api"):
        variables = [v for v in services[name]["environment"] if v.startswith("KEYROTOR_")]
        assert variables, name
        for variable in variables:
            assert variable.removeprefix("KEYROTOR_").lower() in Settings.model_fields, variable


def test_commands_are_keyrotor_commands() -> None:
    services = compose()["services"]
    assert services["keyrotor-worker"]["command"] == ["worker"]
    assert services["keyrotor-api"]["command"][0] == "api"


def test_search_attributes_are_the_workflows() -> None:
    command = " ".join(compose()["services"]["temporal-setup"]["command"])
    keyword_loop = re.search(r"for attribute in (.*?); do", command)
    assert keyword_loop is not None
    registered = {name: "Keyword" for name in keyword_loop.group(1).split()}
    registered |= dict(re.findall(r"--name (Keyrotor\w+) --type (\w+)", command))
    expected = {
        key.name: "Datetime" if key.indexed_value_type.name == "DATETIME" else "Keyword"
        for key in SEARCH_ATTRIBUTE_KEYS
    }
    assert registered == expected


def test_image_copies_every_package() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) ", dockerfile, re.MULTILINE))
    assert {p.rstrip("*") for p in packages} <= copied
    assert "config" in copied  # the policy file


def test_the_image_names_a_policy_file_it_holds() -> None:
    """Installed with `pip install .` (not editable), the packages live in site-packages and
    the default policy path beside them does not exist: the image must name the file."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    [workdir] = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE)
    variables = dict(re.findall(r"^ENV (KEYROTOR_\w+)=(\S+)$", dockerfile, re.MULTILINE))
    for variable in variables:
        assert variable.removeprefix("KEYROTOR_").lower() in Settings.model_fields, variable
    policy = Path(variables["KEYROTOR_CONFIG"])
    assert policy.is_relative_to(workdir)
    copied = policy.relative_to(workdir)
    assert re.search(rf"^COPY {copied.parts[0]} {copied.parts[0]}$", dockerfile, re.MULTILINE)
    assert (ROOT / copied).is_file()
