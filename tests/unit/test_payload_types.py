"""The dataclasses that cross the workflow boundary carry real annotations, not strings.

The payload converter resolves their field types with typing.get_type_hints on every
conversion, also inside the workflow sandbox, where the modules they come from are not in the
module table: a string annotation then fails to resolve and the workflow task fails (a
`from __future__ import annotations` in one of these modules did exactly that).
"""

import dataclasses
import inspect
import json
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DefaultPayloadConverter, JSONPlainPayloadConverter

import core.lifecycle
import core.objects
import workflows.types
from core.codec import PayloadConverter
from core.lifecycle import (
    LifecyclePolicy,
    RotationReason,
    StagedWarning,
    WarningTarget,
    new_key,
    rotate,
)
from core.objects import CredentialSpec, CredentialTransitionCommit, KeySpec, KeyTransitionCommit
from workflows.types import KeyDescription, KeyWorkflowInput, RequestOutcome, RotateRequest

MODULES = [core.lifecycle, core.objects, workflows.types]


def payload_dataclasses(module: ModuleType) -> list[type]:
    return [
        c
        for _, c in inspect.getmembers(module, dataclasses.is_dataclass)
        if isinstance(c, type) and c.__module__ == module.__name__
    ]


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_field_annotations_are_types_not_strings(module: ModuleType) -> None:
    classes = payload_dataclasses(module)
    assert classes, f"{module.__name__} defines no dataclass"
    strings = [
        f"{c.__name__}.{f.name}"
        for c in classes
        for f in dataclasses.fields(c)
        if isinstance(f.type, str)
    ]
    assert strings == []


# --- core.codec.PayloadConverter: the SDK's JSON, converted faster -------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = LifecyclePolicy(
    rotation_interval=200,
    warning_threshold=20,
    max_lifetime=2000,
    grace_period=20,
    rotation_warnings=(20, 10),
)
WARNING = StagedWarning(
    target=WarningTarget.ROTATION,
    deadline=NOW,
    stage=1,
    stages=2,
    raised_at=NOW,
    severity="info",
    version=2,
)
LIFECYCLE = dataclasses.replace(
    rotate(new_key(POLICY, NOW, NOW + timedelta(days=9)), NOW, RotationReason.SCHEDULED, 5),
    warnings=(WARNING,),
)
SPEC = KeySpec(
    key_id="k1",
    environment="prod",
    type="scale",
    algorithm="AES-256-GCM",
    provider="local",
    key_bits=256,
    metadata={"team": "payments"},
)
CREDENTIAL = CredentialSpec(credential_id="c1", environment="prod", scopes=("a", "b"))
VALUES = [
    KeyTransitionCommit(
        transition_id="key-k1/3:key.rotated:2",
        spec=SPEC,
        lifecycle=LIFECYCLE,
        action="key.rotated",
        event="keyRotated",
        at=NOW,
        version=2,
        new_version=2,
        warning=WARNING,
    ),
    KeyWorkflowInput(
        spec=SPEC,
        lifecycle=LIFECYCLE,
        recent_requests=(RequestOutcome("r1", 1, 2),),
        rotation_retry_at=NOW,
    ),
    KeyDescription(
        spec=SPEC, lifecycle=LIFECYCLE, next_transition=None, created=True, policy_version=3
    ),
    CredentialTransitionCommit(
        transition_id="cred-c1/1:credential.created:1",
        spec=CREDENTIAL,
        lifecycle=LIFECYCLE,
        action="credential.created",
        event="credentialCreated",
        at=NOW,
    ),
    RotateRequest(reason="manual", grace_period_seconds=None, comment="é ✓"),
]


@pytest.mark.parametrize("value", VALUES, ids=[type(v).__name__ for v in VALUES])
def test_payload_converter_writes_and_reads_what_the_sdks_does(value: Any) -> None:
    sdk, ours = DefaultPayloadConverter(), PayloadConverter()
    payloads = ours.to_payloads([value])
    assert payloads == sdk.to_payloads([value])  # the same bytes in history
    assert ours.from_payloads(payloads, [type(value)]) == [value]
    assert sdk.from_payloads(payloads, [type(value)]) == [value]


def commit_json() -> dict[str, Any]:
    """The first value's JSON, to be changed by a test."""
    raw: dict[str, Any] = json.loads(PayloadConverter().to_payloads([VALUES[0]])[0].data)
    return raw


def as_payload(raw: dict[str, Any]) -> Payload:
    payload = JSONPlainPayloadConverter().to_payload(raw)
    assert payload is not None
    return payload


def test_payload_converter_reads_like_the_sdk_ignoring_unknown_keys() -> None:
    raw = commit_json()
    raw["added_by_a_newer_worker"] = 1
    raw["spec"]["origin_detail"] = "x"
    payload = as_payload(raw)
    assert PayloadConverter().from_payloads([payload], [KeyTransitionCommit]) == [VALUES[0]]


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("at",), 5),  # not an ISO 8601 string
        (("at",), "yesterday"),
        (("lifecycle", "versions"), "v1"),  # not a list
        (("lifecycle", "status"), "melted"),  # not a KeyStatus
        (("spec",), ["k1"]),  # not an object
        (("version",), "two"),
    ],
)
def test_payload_converter_refuses_what_the_sdk_refuses(path: tuple[str, ...], bad: Any) -> None:
    raw = commit_json()
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    payload = as_payload(raw)
    for converter in (DefaultPayloadConverter(), PayloadConverter()):
        with pytest.raises((TypeError, ValueError)):
            converter.from_payloads([payload], [KeyTransitionCommit])


def test_payload_converter_refuses_a_missing_required_field() -> None:
    raw = commit_json()
    del raw["lifecycle"]
    payload = as_payload(raw)
    with pytest.raises(TypeError, match="lifecycle"):
        PayloadConverter().from_payloads([payload], [KeyTransitionCommit])
