"""Tests of core.policy: the shipped policies, every validation rule, and ISO 8601 durations."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.algorithms import canonical_names
from core.lifecycle import LifecyclePolicy
from core.policy import (
    KeyTypePolicy,
    PolicyError,
    WarningStages,
    default_policy_path,
    format_duration,
    load_policies,
    parse_duration,
)

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

# The four key types of 001_019c7eb82d54c46f.txt, with the grace periods keyrotor adds.
EXPECTED_KEY_TYPES = {
    "encryption": KeyTypePolicy(
        name="encryption",
        algorithm="AES-256-GCM",
        key_bits=256,
        rotation_interval=30 * DAY,
        warning_threshold=7 * DAY,
        max_lifetime=90 * DAY,
        grace_period=7 * DAY,
        warnings=WarningStages(rotation=(7 * DAY, DAY), expiry=(30 * DAY, 7 * DAY, DAY)),
    ),
    "signing": KeyTypePolicy(
        name="signing",
        algorithm="RSA-2048",
        key_bits=2048,
        rotation_interval=60 * DAY,
        warning_threshold=14 * DAY,
        max_lifetime=365 * DAY,
        grace_period=14 * DAY,
        warnings=WarningStages(rotation=(14 * DAY, 7 * DAY, DAY), expiry=(30 * DAY, 7 * DAY, DAY)),
    ),
    "session": KeyTypePolicy(
        name="session",
        algorithm="HMAC-SHA256",
        key_bits=512,
        rotation_interval=DAY,
        warning_threshold=2 * HOUR,
        max_lifetime=7 * DAY,
        grace_period=2 * HOUR,
    ),
    "api": KeyTypePolicy(
        name="api",
        algorithm="HMAC-SHA512",
        key_bits=1024,
        rotation_interval=7 * DAY,
        warning_threshold=DAY,
        max_lifetime=30 * DAY,
        grace_period=DAY,
    ),
}


# --- the shipped file -----------------------------------------------------------------------


def test_default_policy_path_is_the_repository_config() -> None:
    path = default_policy_path()
    assert path == Path(__file__).resolve().parents[2] / "config" / "keyrotor.toml"
    assert path.is_file()


def test_shipped_audit_retention() -> None:
    policies = load_policies(default_policy_path())
    assert policies.audit_retention == 365 * DAY
    retention = {e: p.audit_retention for e, p in policies.environment_policies.items()}
    assert retention == {"dev": 365 * DAY, "staging": 365 * DAY, "prod": 2555 * DAY}


def test_shipped_policies_have_the_reference_values() -> None:
    policies = load_policies(default_policy_path())
    assert dict(policies.key_types) == EXPECTED_KEY_TYPES
    assert list(policies.key_types) == ["encryption", "signing", "session", "api"]
    assert policies.environments == ("dev", "staging", "prod")
    assert policies.default_environment == "dev"
    assert policies.default_provider == "local"
    assert policies.source == str(default_policy_path())


def test_shipped_policies_in_whole_seconds() -> None:
    policies = load_policies(default_policy_path())
    assert policies.key_type("encryption").lifecycle() == LifecyclePolicy(
        rotation_interval=2_592_000,
        warning_threshold=604_800,
        max_lifetime=7_776_000,
        grace_period=604_800,
        rotation_warnings=(604_800, 86_400),
        expiry_warnings=(2_592_000, 604_800, 86_400),
    )
    assert policies.key_type("signing").lifecycle() == LifecyclePolicy(
        5_184_000,
        1_209_600,
        31_536_000,
        1_209_600,
        rotation_warnings=(1_209_600, 604_800, 86_400),
        expiry_warnings=(2_592_000, 604_800, 86_400),
    )
    credentials = policies.credentials.lifecycle(scheduled=False)
    assert (credentials.rotation_warnings, credentials.expiry_warnings) == (
        (),
        (2_592_000, 604_800, 86_400),
    )
    assert policies.key_type("session").lifecycle() == LifecyclePolicy(
        86_400, 7_200, 604_800, 7_200
    )
    assert policies.key_type("api").lifecycle() == LifecyclePolicy(
        604_800, 86_400, 2_592_000, 86_400
    )


def test_key_type_lookup() -> None:
    policies = load_policies(default_policy_path())
    assert policies.key_type("signing") is policies.key_types["signing"]
    with pytest.raises(PolicyError) as info:
        policies.key_type("signature")
    assert info.value.file == str(default_policy_path())
    assert info.value.field == "key_types"
    assert info.value.reason == (
        "unknown key type 'signature'; known: api, encryption, session, signing"
    )


def test_policies_are_read_only() -> None:
    policies = load_policies(default_policy_path())
    with pytest.raises(TypeError):
        policies.key_types["rogue"] = EXPECTED_KEY_TYPES["api"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        policies.default_provider = "aws"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        policies.key_type("api").key_bits = 8  # type: ignore[misc]


def test_policy_error_message_and_attributes() -> None:
    e = PolicyError("conf.toml", "key_types.api.key_bits", "must be an integer")
    assert isinstance(e, ValueError)
    assert str(e) == "conf.toml: key_types.api.key_bits: must be an integer"
    assert (e.file, e.field, e.reason) == (
        "conf.toml",
        "key_types.api.key_bits",
        "must be an integer",
    )


def test_lifecycle_refuses_fractions_of_a_second() -> None:
    policy = EXPECTED_KEY_TYPES["session"]
    half = KeyTypePolicy(**{**policy.__dict__, "grace_period": timedelta(seconds=1.5)})
    with pytest.raises(ValueError, match=r"PT1\.5S is not a whole number of seconds"):
        half.lifecycle()


# --- validation -----------------------------------------------------------------------------


def _valid() -> dict[str, Any]:
    return {
        "defaults": {
            "environments": ["dev", "staging", "prod"],
            "environment": "dev",
            "provider": "local",
        },
        "key_types": {
            "encryption": {
                "algorithm": "AES-256-GCM",
                "key_bits": 256,
                "rotation_interval": "P30D",
                "warning_threshold": "P7D",
                "max_lifetime": "P90D",
                "grace_period": "P7D",
                "rotation_warnings": ["P7D", "P1D"],
                "expiry_warnings": ["P30D", "P7D", "P1D"],
            },
            "api": {
                "algorithm": "HMAC-SHA512",
                "key_bits": 1024,
                "rotation_interval": "P7D",
                "warning_threshold": "P1D",
                "max_lifetime": "P30D",
                "grace_period": "P1D",
            },
        },
        "credentials": {
            "rotation_interval": "P90D",
            "warning_threshold": "P7D",
            "max_lifetime": "P365D",
            "grace_period": "P1D",
        },
        "handle_types": {
            "workflow": {
                "algorithm": "SHA-512",
                "handle_length": 64,
                "rotation_interval": "PT30M",
                "warning_threshold": "PT5M",
                "max_lifetime": "PT4H",
                "max_usage": 100,
            },
        },
        "security_policies": {
            "prevent_reuse": True,
            "enforce_rotation": True,
            "track_usage": True,
            "anomaly_detection": True,
            "rate_limit_per_handle": 100,
            "max_concurrent_handles": 1000,
            "reuse_interval": "PT2S",
            "context_mismatch": "reject",
            "anomaly_threshold": 5,
            "suspension_timeout": "PT1H",
        },
    }


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for the text used here
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _dump(data: dict[str, Any]) -> str:
    """TOML for `data`: top-level scalars, then [tables], then [key_types.<name>] tables."""
    lines = [f"{json.dumps(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in data.items():
        if not isinstance(table, dict):
            continue
        if name == "key_types" and table and all(isinstance(v, dict) for v in table.values()):
            for type_name, body in table.items():
                lines.append(f"[key_types.{json.dumps(type_name)}]")
                lines += [f"{json.dumps(k)} = {_value(v)}" for k, v in body.items()]
            continue
        lines.append(f"[{json.dumps(name)}]")
        lines += [f"{json.dumps(k)} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "keyrotor.toml"
    path.write_text(data if isinstance(data, str) else _dump(data), encoding="utf-8")
    return path


def _load_error(tmp_path: Path, data: dict[str, Any] | str) -> PolicyError:
    path = _write(tmp_path, data)
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    assert info.value.file == str(path)
    assert str(info.value) == f"{path}: {info.value.field}: {info.value.reason}"
    return info.value


def test_the_valid_fixture_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid())
    policies = load_policies(path)
    assert policies.source == str(path)
    assert dict(policies.key_types) == {
        "encryption": EXPECTED_KEY_TYPES["encryption"],
        "api": EXPECTED_KEY_TYPES["api"],
    }


Mutation = Callable[[dict[str, Any]], object]


def _set(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[p]
        del node[last]

    return mutate


def _key_type(name: str, **changes: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["key_types"][name] = {**data["key_types"]["encryption"], **changes}

    return mutate


def _times(**durations: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["key_types"]["encryption"].update(durations)
        data["key_types"]["encryption"].pop("rotation_warnings")  # it starts at the threshold

    return mutate


ENC = "key_types.encryption"

# (id, mutation, field, reason): the reason is matched exactly.
INVALID: list[tuple[str, Mutation, str, str]] = [
    ("credentials missing", _delete("credentials"), "credentials", "missing"),
    (
        "handle hash unknown",
        _set("handle_types.workflow.algorithm", "MD5"),
        "handle_types.workflow.algorithm",
        "'MD5' is not one of SHA-256, SHA-384, SHA-512",
    ),
    (
        "handle too short",
        _set("handle_types.workflow.handle_length", 16),
        "handle_types.workflow.handle_length",
        "must be between 32 and 128, got 16",
    ),
    (
        "handle max usage zero",
        _set("handle_types.workflow.max_usage", 0),
        "handle_types.workflow.max_usage",
        "must be between 1 and 2147483647, got 0",
    ),
    (
        "handle warning too long",
        _set("handle_types.workflow.warning_threshold", "PT30M"),
        "handle_types.workflow.warning_threshold",
        "PT30M must be shorter than rotation_interval PT30M",
    ),
    (
        "context policy unknown",
        _set("security_policies.context_mismatch", "ignore"),
        "security_policies.context_mismatch",
        'must be "reject" or "flag", not \'ignore\'',
    ),
    (
        "prevent reuse not a boolean",
        _set("security_policies.prevent_reuse", "yes"),
        "security_policies.prevent_reuse",
        "must be true or false, got a string",
    ),
    (
        "no handle types",
        _set("handle_types", {}),
        "handle_types",
        "must be a table defining at least one handle type",
    ),
    (
        "credential grace past lifetime",
        _set("credentials.grace_period", "P400D"),
        "credentials.grace_period",
        "P400D must be at most max_lifetime P365D",
    ),
    (
        "credential unknown field",
        _set("credentials.algorithm", "AES-256-GCM"),
        "credentials.algorithm",
        "unknown field; expected one of rotation_interval, warning_threshold, max_lifetime,"
        " grace_period, rotation_warnings, expiry_warnings",
    ),
    (
        "unknown top-level table",
        _set("key_typess", {"x": 1}),
        "key_typess",
        "unknown field; expected one of defaults, key_types, credentials, handle_types,"
        " security_policies, environments, pqc_policy, cleanup",
    ),
    (
        "unknown cleanup field",
        _set("cleanup", {"destroy_afterr": "P1D"}),
        "cleanup.destroy_afterr",
        "unknown field; expected one of destroy_after, archive_after, event_retention",
    ),
    (
        "zero cleanup duration",
        _set("cleanup", {"archive_after": "PT0S"}),
        "cleanup.archive_after",
        "must be longer than zero",
    ),
    ("missing defaults", _delete("defaults"), "defaults", "missing"),
    ("missing key_types", _delete("key_types"), "key_types", "missing"),
    ("defaults not a table", _set("defaults", "dev"), "defaults", "must be a table, got a string"),
    (
        "unknown defaults field",
        _set("defaults.enviroment", "dev"),
        "defaults.enviroment",
        "unknown field; expected one of environments, environment, provider, audit_retention",
    ),
    ("missing environments", _delete("defaults.environments"), "defaults.environments", "missing"),
    ("missing environment", _delete("defaults.environment"), "defaults.environment", "missing"),
    ("missing provider", _delete("defaults.provider"), "defaults.provider", "missing"),
    (
        "environments not a list",
        _set("defaults.environments", "dev"),
        "defaults.environments",
        "must be a list of names, got a string",
    ),
    (
        "no environments",
        _set("defaults.environments", []),
        "defaults.environments",
        "must name at least one environment",
    ),
    (
        "environment not a string",
        _set("defaults.environments", ["dev", 3]),
        "defaults.environments[1]",
        "must be a string, got an integer",
    ),
    (
        "environment upper case",
        _set("defaults.environments", ["dev", "Prod"]),
        "defaults.environments[1]",
        "'Prod' is not a valid name: lower-case letter, then up to 31 lower-case letters, "
        "digits or '-'",
    ),
    (
        "environment too long",
        _set("defaults.environments", ["dev", "p" * 33]),
        "defaults.environments[1]",
        f"{'p' * 33!r} is not a valid name: lower-case letter, then up to 31 lower-case "
        "letters, digits or '-'",
    ),
    (
        "environment listed twice",
        _set("defaults.environments", ["dev", "prod", "dev"]),
        "defaults.environments[2]",
        "'dev' is listed twice",
    ),
    (
        "default environment not listed",
        _set("defaults.environment", "qa"),
        "defaults.environment",
        "'qa' is not one of environments (dev, staging, prod)",
    ),
    (
        "environment table for an unknown environment",
        lambda d: d.update(environments={"qa": {"provider": "vault"}}),
        "environments.qa",
        "'qa' is not one of defaults.environments (dev, staging, prod)",
    ),
    (
        "environment table with an unknown field",
        lambda d: d.update(environments={"prod": {"kms": "vault"}}),
        "environments.prod.kms",
        "unknown field; expected one of provider, allow_local, audit_retention",
    ),
    (
        "environment audit retention of zero",
        lambda d: d.update(environments={"dev": {"audit_retention": "P0D"}}),
        "environments.dev.audit_retention",
        "must be longer than zero",
    ),
    (
        "default audit retention not a duration",
        _set("defaults.audit_retention", 30),
        "defaults.audit_retention",
        'must be an ISO 8601 duration string such as "P30D", got an integer',
    ),
    (
        "allow_local not a boolean",
        lambda d: d.update(environments={"prod": {"allow_local": "yes"}}),
        "environments.prod.allow_local",
        "must be true or false, got a string",
    ),
    (
        "default environment not a string",
        _set("defaults.environment", ["dev"]),
        "defaults.environment",
        "must be a string, got a list",
    ),
    ("empty provider", _set("defaults.provider", ""), "defaults.provider", "must not be empty"),
    ("blank provider", _set("defaults.provider", "  "), "defaults.provider", "must not be empty"),
    (
        "provider not a string",
        _set("defaults.provider", 1),
        "defaults.provider",
        "must be a string, got an integer",
    ),
    ("no key types", _set("key_types", {}), "key_types", "must define at least one key type"),
    (
        "key types not a table",
        _set("key_types", ["encryption"]),
        "key_types",
        "must be a table, got a list",
    ),
    (
        "key type not a table",
        _set("key_types.encryption", "AES"),
        ENC,
        "must be a table, got a string",
    ),
    (
        "key type name upper case",
        _key_type("Signing"),
        "key_types.Signing",
        "'Signing' is not a valid name: lower-case letter, then up to 31 lower-case letters, "
        "digits or '-'",
    ),
    (
        "key type name with underscore",
        _key_type("api_v2"),
        "key_types.api_v2",
        "'api_v2' is not a valid name: lower-case letter, then up to 31 lower-case letters, "
        "digits or '-'",
    ),
    (
        "key type name starting with a digit",
        _key_type("2fa"),
        "key_types.2fa",
        "'2fa' is not a valid name: lower-case letter, then up to 31 lower-case letters, "
        "digits or '-'",
    ),
    (
        "unknown key type field",
        _set(f"{ENC}.rotaton_interval", "P30D"),
        f"{ENC}.rotaton_interval",
        "unknown field; expected one of algorithm, key_bits, rotation_interval, "
        "warning_threshold, max_lifetime, grace_period, rotation_warnings, expiry_warnings, "
        "usage_window, retire_unused",
    ),
    (
        "retire_unused without a usage window",
        _set(f"{ENC}.retire_unused", True),
        f"{ENC}.retire_unused",
        "needs a usage_window",
    ),
    (
        "usage window of zero",
        _set(f"{ENC}.usage_window", "PT0S"),
        f"{ENC}.usage_window",
        "must be longer than zero",
    ),
    (
        "rotation warnings not a list",
        _set(f"{ENC}.rotation_warnings", "P7D"),
        f"{ENC}.rotation_warnings",
        "must be a list of durations, got a string",
    ),
    (
        "rotation warnings not starting with the threshold",
        _set(f"{ENC}.rotation_warnings", ["P6D", "P1D"]),
        f"{ENC}.rotation_warnings",
        "must start with warning_threshold P7D, got P6D",
    ),
    (
        "expiry warnings out of order",
        _set(f"{ENC}.expiry_warnings", ["P1D", "P7D"]),
        f"{ENC}.expiry_warnings",
        "stages must be listed longest first, each once",
    ),
    (
        "expiry warning of zero",
        _set("credentials.expiry_warnings", ["P1D", "PT0S"]),
        "credentials.expiry_warnings",
        "every stage must be longer than zero",
    ),
    (
        "expiry warning not a duration",
        _set("credentials.expiry_warnings", ["P1D", "tomorrow"]),
        "credentials.expiry_warnings[1]",
        "invalid ISO 8601 duration 'tomorrow': it must start with 'P' (e.g. P30D, PT2H)",
    ),
    *[
        (f"missing {f}", _delete(f"{ENC}.{f}"), f"{ENC}.{f}", "missing")
        for f in (
            "algorithm",
            "key_bits",
            "rotation_interval",
            "warning_threshold",
            "max_lifetime",
            "grace_period",
        )
    ],
    (
        "unknown algorithm",
        _set(f"{ENC}.algorithm", "AES-512-GCM"),
        f"{ENC}.algorithm",
        "unknown algorithm 'AES-512-GCM'; known algorithms: " + ", ".join(canonical_names()),
    ),
    (
        "algorithm not a string",
        _set(f"{ENC}.algorithm", 256),
        f"{ENC}.algorithm",
        "must be a string, got an integer",
    ),
    (
        "key bits the algorithm refuses",
        _set(f"{ENC}.key_bits", 128),
        f"{ENC}.key_bits",
        "AES-256-GCM keys are 256 bits; 128 was requested",
    ),
    (
        "HMAC key bits below the minimum",
        _set("key_types.api.key_bits", 128),
        "key_types.api.key_bits",
        "HMAC-SHA512 keys must be 256 to 8192 bits in whole bytes; 128 was requested",
    ),
    (
        "key bits as a string",
        _set(f"{ENC}.key_bits", "256"),
        f"{ENC}.key_bits",
        "must be an integer, got a string",
    ),
    (
        "key bits as a boolean",
        _set(f"{ENC}.key_bits", True),
        f"{ENC}.key_bits",
        "must be an integer, got a boolean",
    ),
    (
        "key bits as a float",
        _set(f"{ENC}.key_bits", 256.0),
        f"{ENC}.key_bits",
        "must be an integer, got a float",
    ),
    (
        "duration without P",
        _times(rotation_interval="30d"),
        f"{ENC}.rotation_interval",
        "invalid ISO 8601 duration '30d': it must start with 'P' (e.g. P30D, PT2H)",
    ),
    (
        "duration in lower case",
        _times(max_lifetime="p90d"),
        f"{ENC}.max_lifetime",
        "invalid ISO 8601 duration 'p90d': designators must be upper case "
        "(P, Y, M, W, D, T, H, M, S)",
    ),
    (
        "duration hours without T",
        _times(warning_threshold="P2H"),
        f"{ENC}.warning_threshold",
        "invalid ISO 8601 duration 'P2H': hours need a 'T' before them (e.g. PT2H)",
    ),
    (
        "negative duration",
        _times(grace_period="-P1D"),
        f"{ENC}.grace_period",
        "invalid ISO 8601 duration '-P1D': negative durations are not allowed",
    ),
    (
        "duration as a number",
        _times(rotation_interval=30),  # type: ignore[arg-type]
        f"{ENC}.rotation_interval",
        'must be an ISO 8601 duration string such as "P30D", got an integer',
    ),
    (
        "fraction of a second",
        _times(grace_period="PT0.5S"),
        f"{ENC}.grace_period",
        "'PT0.5S' is not a whole number of seconds",
    ),
    (
        "zero rotation interval",
        _times(rotation_interval="P0D", warning_threshold="P0D"),
        f"{ENC}.rotation_interval",
        "must be longer than zero",
    ),
    (
        "warning equal to the rotation interval",
        _times(warning_threshold="P30D"),
        f"{ENC}.warning_threshold",
        "P30D must be shorter than rotation_interval P30D",
    ),
    (
        "warning longer than the rotation interval",
        _times(warning_threshold="P31D"),
        f"{ENC}.warning_threshold",
        "P31D must be shorter than rotation_interval P30D",
    ),
    (
        "rotation interval beyond the max lifetime",
        _times(max_lifetime="P29DT23H59M59S"),
        f"{ENC}.max_lifetime",
        "P29DT23H59M59S must be at least rotation_interval P30D",
    ),
    (
        "grace beyond the max lifetime",
        _times(grace_period="P90DT1S"),
        f"{ENC}.grace_period",
        "P90DT1S must be at most max_lifetime P90D",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [pytest.param(m, f, r, id=i) for i, m, f, r in INVALID],
)
def test_invalid_policy(tmp_path: Path, mutate: Mutation, field: str, reason: str) -> None:
    data = copy.deepcopy(_valid())
    mutate(data)
    error = _load_error(tmp_path, data)
    assert (error.field, error.reason) == (field, reason)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_times(warning_threshold="P0D"), id="zero warning"),
        pytest.param(_times(warning_threshold="P29DT23H59M59S"), id="warning just below rotation"),
        pytest.param(_times(max_lifetime="P30D"), id="max lifetime equal to rotation"),
        pytest.param(_times(grace_period="P0D"), id="zero grace"),
        pytest.param(_times(grace_period="P90D"), id="grace equal to max lifetime"),
        pytest.param(_times(rotation_interval="PT1S", warning_threshold="PT0S"), id="one second"),
        pytest.param(_times(max_lifetime="P1Y", grace_period="P1M"), id="years and months"),
        pytest.param(_key_type("a"), id="one-letter key type"),
        pytest.param(_key_type("a" + "-9" * 15 + "z"), id="32-character key type"),
        pytest.param(
            _set("defaults.environments", ["dev", "eu-west-1"]), id="environment with digits"
        ),
        pytest.param(
            lambda d: d["defaults"].update(environments=["prod"], environment="prod"),
            id="one environment",
        ),
    ],
)
def test_boundary_values_are_accepted(tmp_path: Path, mutate: Mutation) -> None:
    data = copy.deepcopy(_valid())
    mutate(data)
    policies = load_policies(_write(tmp_path, data))
    for name, body in data["key_types"].items():
        got = policies.key_type(name)
        assert got.rotation_interval == parse_duration(body["rotation_interval"])
        assert got.warning_threshold == parse_duration(body["warning_threshold"])
        assert got.max_lifetime == parse_duration(body["max_lifetime"])
        assert got.grace_period == parse_duration(body["grace_period"])
        got.lifecycle()  # agrees with the lifecycle's own rules
    assert policies.environments == tuple(data["defaults"]["environments"])


def test_algorithm_aliases_are_stored_by_canonical_name(tmp_path: Path) -> None:
    data = _valid()
    data["key_types"]["api"]["algorithm"] = "sha-512"
    data["key_types"]["encryption"]["algorithm"] = "aes-256-gcm"
    policies = load_policies(_write(tmp_path, data))
    assert policies.key_type("api").algorithm == "HMAC-SHA512"
    assert policies.key_type("encryption").algorithm == "AES-256-GCM"


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = _dump(_valid()).replace('"P7D"', '"P7D', 1)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.endswith('"P7D'))
    error = _load_error(tmp_path, text)
    assert error.field == "<toml>"
    assert f"line {line}" in error.reason


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "keyrotor.toml"
    path.write_bytes(b'[defaults]\nprovider = "\xff"\n')
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    assert info.value.field == "<toml>"
    assert info.value.reason.startswith("not UTF-8 text")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    assert (info.value.file, info.value.field) == (str(path), "<file>")
    assert info.value.reason == "No such file or directory"


# --- durations ------------------------------------------------------------------------------

VALID_DURATIONS = [
    ("P30D", timedelta(days=30)),
    ("PT2H", timedelta(hours=2)),
    ("P1DT12H", timedelta(days=1, hours=12)),
    ("PT0.5S", timedelta(milliseconds=500)),
    ("PT0.000001S", timedelta(microseconds=1)),
    ("PT1.25S", timedelta(seconds=1, milliseconds=250)),
    ("P0D", timedelta(0)),
    ("PT0S", timedelta(0)),
    ("P2W", timedelta(days=14)),
    ("P1Y", timedelta(days=365)),
    ("P1M", timedelta(days=30)),
    ("PT1M", timedelta(minutes=1)),
    ("P1MT1M", timedelta(days=30, minutes=1)),
    ("P1Y2M3W4DT5H6M7S", timedelta(days=365 + 60 + 21 + 4, hours=5, minutes=6, seconds=7)),
    ("PT36H", timedelta(hours=36)),
    ("PT90M", timedelta(minutes=90)),
    ("PT86400S", timedelta(days=1)),
    ("P007D", timedelta(days=7)),
    ("P365D", timedelta(days=365)),
]


@pytest.mark.parametrize(("text", "expected"), VALID_DURATIONS)
def test_parse_duration_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


INVALID_DURATIONS = [
    ("", "it is empty"),
    ("P", "it has no components after 'P'"),
    ("PT", "'T' must be followed by hours, minutes or seconds"),
    ("P1DT", "'T' must be followed by hours, minutes or seconds"),
    ("-P1D", "negative durations are not allowed"),
    ("P-1D", "negative durations are not allowed"),
    ("PT-5M", "negative durations are not allowed"),
    ("p30d", "designators must be upper case (P, Y, M, W, D, T, H, M, S)"),
    ("P30d", "designators must be upper case (P, Y, M, W, D, T, H, M, S)"),
    ("Pt2H", "designators must be upper case (P, Y, M, W, D, T, H, M, S)"),
    ("30d", "it must start with 'P' (e.g. P30D, PT2H)"),
    ("30D", "it must start with 'P' (e.g. P30D, PT2H)"),
    ("garbage", "it must start with 'P' (e.g. P30D, PT2H)"),
    ("P2H", "hours need a 'T' before them (e.g. PT2H)"),
    ("P1D2H", "hours need a 'T' before them (e.g. PT2H)"),
    ("P30S", "seconds need a 'T' before them (e.g. PT30S)"),
    (" P1D", "it has surrounding whitespace"),
    ("P1D\n", "it has surrounding whitespace"),
    ("PT1.5H", "only seconds may have a fraction, written with '.' (e.g. PT0.5S)"),
    ("P1.5D", "only seconds may have a fraction, written with '.' (e.g. PT0.5S)"),
    ("PT0,5S", "only seconds may have a fraction, written with '.' (e.g. PT0.5S)"),
    ("PT0.1234567S", "fractions of a second stop at microseconds (6 digits)"),
    ("P1D1Y", "expected PnYnMnWnDTnHnMnS with the components in that order, each at most once"),
    ("P1D1D", "expected PnYnMnWnDTnHnMnS with the components in that order, each at most once"),
    ("PT1D", "expected PnYnMnWnDTnHnMnS with the components in that order, each at most once"),
    ("PT5", "expected PnYnMnWnDTnHnMnS with the components in that order, each at most once"),
    ("P1 D", "expected PnYnMnWnDTnHnMnS with the components in that order, each at most once"),
    ("PD", "expected PnYnMnWnDTnHnMnS with the components in that order, each at most once"),
    ("P\u0663D", "expected PnYnMnWnDTnHnMnS with the components in that order, each at most once"),
    ("P9999999999D", "it is too long"),
    ("PT" + "9" * 5000 + "S", "it is too long"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID_DURATIONS)
def test_parse_duration_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == f"invalid ISO 8601 duration {text!r}: {reason}"


@pytest.mark.parametrize(
    ("d", "text"),
    [
        (timedelta(0), "PT0S"),
        (timedelta(days=30), "P30D"),
        (timedelta(days=14), "P14D"),
        (timedelta(days=365), "P365D"),
        (timedelta(hours=2), "PT2H"),
        (timedelta(days=1, hours=2), "P1DT2H"),
        (timedelta(minutes=90), "PT1H30M"),
        (timedelta(seconds=59), "PT59S"),
        (timedelta(days=1, seconds=1), "P1DT1S"),
        (timedelta(milliseconds=500), "PT0.5S"),
        (timedelta(seconds=61, microseconds=120), "PT1M1.00012S"),
    ],
)
def test_format_duration(d: timedelta, text: str) -> None:
    assert format_duration(d) == text


def test_format_duration_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative duration"):
        format_duration(timedelta(seconds=-1))


@given(st.timedeltas(min_value=timedelta(0)))
def test_format_then_parse_round_trips(d: timedelta) -> None:
    text = format_duration(d)
    assert parse_duration(text) == d
    assert format_duration(parse_duration(text)) == text


@given(st.integers(min_value=0, max_value=10**8))
def test_whole_seconds_format_in_the_shortest_form(seconds: int) -> None:
    text = format_duration(timedelta(seconds=seconds))
    if seconds == 0:
        assert text == "PT0S"
        return
    m = re.fullmatch(r"P(?:([0-9]+)D)?(?:T(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+)S)?)?", text)
    assert m is not None and not text.endswith("T"), text
    days, hours, minutes, secs = (int(g) if g is not None else None for g in m.groups())
    # Every component present is non-zero and below what would carry into the next one.
    assert all(c != 0 for c in (days, hours, minutes, secs))
    assert (hours or 0) < 24 and (minutes or 0) < 60 and (secs or 0) < 60
    total = (((days or 0) * 24 + (hours or 0)) * 60 + (minutes or 0)) * 60 + (secs or 0)
    assert total == seconds


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "Y": st.integers(0, 3),
            "M": st.integers(0, 40),
            "W": st.integers(0, 60),
            "D": st.integers(0, 400),
            "TH": st.integers(0, 100),
            "TM": st.integers(0, 100),
            "TS": st.integers(0, 100_000),
        },
    ).filter(bool)
)
def test_parse_duration_adds_its_components(parts: dict[str, int]) -> None:
    date = "".join(f"{parts[u]}{u}" for u in "YMWD" if u in parts)
    time = "".join(f"{parts['T' + u]}{u}" for u in "HMS" if "T" + u in parts)
    text = "P" + date + (f"T{time}" if time else "")
    expected = timedelta(
        days=365 * parts.get("Y", 0)
        + 30 * parts.get("M", 0)
        + 7 * parts.get("W", 0)
        + parts.get("D", 0),
        hours=parts.get("TH", 0),
        minutes=parts.get("TM", 0),
        seconds=parts.get("TS", 0),
    )
    assert parse_duration(text) == expected


def test_shipped_handle_types_and_security_policies_are_the_reference_values() -> None:
    policies = load_policies(default_policy_path())
    minute = timedelta(minutes=1)
    got = {
        name: (
            p.algorithm,
            p.handle_length,
            p.rotation_interval,
            p.warning_threshold,
            p.max_lifetime,
            p.max_usage,
        )
        for name, p in policies.handle_types.items()
    }
    # the handle table of 001_019c7eb82d54c46f.txt
    assert got == {
        "session": ("SHA-256", 32, HOUR, 10 * minute, 24 * HOUR, 1000),
        "workflow": ("SHA-512", 64, 30 * minute, 5 * minute, 4 * HOUR, 100),
        "api": ("SHA-256", 48, 15 * minute, 2 * minute, HOUR, 500),
        "device": ("SHA-384", 56, 5 * minute, minute, 30 * minute, 50),
    }
    sec = policies.security
    assert (sec.prevent_reuse, sec.enforce_rotation, sec.track_usage, sec.anomaly_detection) == (
        True,
        True,
        True,
        True,
    )
    assert (sec.rate_limit_per_handle, sec.max_concurrent_handles) == (100, 1000)
    lifecycle = policies.handle_type("workflow").lifecycle(sec)
    assert (lifecycle.scheduled, lifecycle.grace_period, lifecycle.max_lifetime) == (
        False,
        2,
        14400,
    )


def test_environment_policies(tmp_path: Path) -> None:
    data = copy.deepcopy(_valid())
    data["environments"] = {"staging": {"provider": "aws-kms"}}
    policies = load_policies(_write(tmp_path, data))
    assert policies.provider_for("dev", None) == "local"
    assert policies.provider_for("staging", None) == "aws-kms"
    assert policies.provider_for("staging", "local") == "local"  # staging allows local
    # prod: no table, so the default provider (local), which prod refuses unless allowed
    with pytest.raises(PolicyError, match="keys in prod may not use the local provider"):
        policies.provider_for("prod", None)
    assert policies.provider_for("prod", "vault") == "vault"
    data["environments"] = {"prod": {"allow_local": True}}
    assert load_policies(_write(tmp_path, data)).provider_for("prod", None) == "local"


def test_the_shipped_policy_keeps_prod_off_the_local_provider() -> None:
    policies = load_policies(default_policy_path())
    assert policies.provider_for("prod", None) == "vault"
    with pytest.raises(PolicyError, match="may not use the local provider"):
        policies.provider_for("prod", "local")
    assert policies.provider_for("dev", None) == "local"
