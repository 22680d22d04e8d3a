"""Frozen dataclasses that cross the workflow boundary. None of them carries a secret.

Signal argument shapes are a public interface (operators send them from the Temporal UI and
`temporal workflow signal --input '{"reason": "..."}'`): keep them stable.
"""

# No `from __future__ import annotations` here: the payload converter resolves the field types of
# these dataclasses with typing.get_type_hints on every conversion, also inside the workflow
# sandbox, whose module table does not hold this module; string annotations would fail to
# resolve there, and cost an eval each time elsewhere (tests/unit/test_payload_types.py).

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from core.lifecycle import KeyLifecycle, LifecyclePolicy, Transition
from core.objects import CredentialSpec, KeySpec

KEY_WORKFLOW = "KeyLifecycleWorkflow"
CREDENTIAL_WORKFLOW = "CredentialLifecycleWorkflow"
HANDLE_WORKFLOW = "HandleLifecycleWorkflow"

# Search attributes: what operators filter on in the UI and what `GET /keys` can list by.
# Never encrypted, so never anything secret or personal.
SA_KIND = SearchAttributeKey.for_keyword("KeyrotorKind")
SA_TYPE = SearchAttributeKey.for_keyword("KeyrotorType")
SA_STATE = SearchAttributeKey.for_keyword("KeyrotorState")
SA_OWNER = SearchAttributeKey.for_keyword("KeyrotorOwner")
SA_ENVIRONMENT = SearchAttributeKey.for_keyword("KeyrotorEnvironment")
SA_ALGORITHM = SearchAttributeKey.for_keyword("KeyrotorAlgorithm")
SA_PROVIDER = SearchAttributeKey.for_keyword("KeyrotorProvider")
SA_NEXT_ROTATION = SearchAttributeKey.for_datetime("KeyrotorNextRotation")
SEARCH_ATTRIBUTE_KEYS = (
    SA_KIND,
    SA_TYPE,
    SA_STATE,
    SA_OWNER,
    SA_ENVIRONMENT,
    SA_ALGORITHM,
    SA_PROVIDER,
    SA_NEXT_ROTATION,
)


def key_search_attributes(
    spec: KeySpec, status: str, next_rotation: datetime | None
) -> TypedSearchAttributes:
    """The search attributes of a key's workflow."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(SA_KIND, "key"),
        SearchAttributePair(SA_TYPE, spec.type),
        SearchAttributePair(SA_STATE, status),
        SearchAttributePair(SA_OWNER, spec.owner),
        SearchAttributePair(SA_ENVIRONMENT, spec.environment),
        SearchAttributePair(SA_ALGORITHM, spec.algorithm),
        SearchAttributePair(SA_PROVIDER, spec.provider),
    ]
    if next_rotation is not None:
        pairs.append(SearchAttributePair(SA_NEXT_ROTATION, next_rotation))
    return TypedSearchAttributes(pairs)


def key_workflow_id(environment: str, key_id: str) -> str:
    """`keyrotor/key/<environment>/<key id>`: operators find keys by it in the UI."""
    return f"keyrotor/key/{environment}/{key_id}"


def credential_search_attributes(
    spec: CredentialSpec, status: str, next_rotation: datetime | None
) -> TypedSearchAttributes:
    """The search attributes of a credential's or handle family's workflow (no algorithm or
    provider)."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(SA_KIND, spec.kind),
        SearchAttributePair(SA_TYPE, spec.type),
        SearchAttributePair(SA_STATE, status),
        # never the user id of a handle: search attributes are not encrypted (no personal data)
        SearchAttributePair(SA_OWNER, spec.owner),
        SearchAttributePair(SA_ENVIRONMENT, spec.environment),
    ]
    if next_rotation is not None:
        pairs.append(SearchAttributePair(SA_NEXT_ROTATION, next_rotation))
    return TypedSearchAttributes(pairs)


def credential_workflow_id(environment: str, credential_id: str, kind: str = "credential") -> str:
    """`keyrotor/credential/<environment>/<id>` (or `keyrotor/handle/...`)."""
    return f"keyrotor/{kind}/{environment}/{credential_id}"


@dataclass(frozen=True)
class RequestOutcome:
    """The result of an idempotent request, remembered across continue-as-new."""

    request_id: str
    from_version: int
    to_version: int


@dataclass(frozen=True)
class KeyWorkflowInput:
    """Start input of `KeyLifecycleWorkflow`, and what it carries into continue-as-new."""

    spec: KeySpec
    lifecycle: KeyLifecycle
    # The time-skipping test server has no custom search attributes.
    publish_search_attributes: bool = True
    # Set only on continue-as-new: the key already exists and its state is committed.
    created: bool = False
    transition_seq: int = 0
    recent_requests: tuple[RequestOutcome, ...] = ()
    # When a rotation failed for a reason retrying cannot fix: the next attempt.
    rotation_retry_at: datetime | None = None
    # the policy version its lifecycle policy comes from (`policy_updated` moves it)
    policy_version: int = 0
    # An upsert that changes no search attribute is left out. Off in the inputs of older
    # workflows, whose histories upserted at every commit and must replay so.
    skip_unchanged_search_attributes: bool = False


@dataclass(frozen=True)
class CredentialWorkflowInput:
    """Start input of `CredentialLifecycleWorkflow` and `HandleLifecycleWorkflow` (fields as in
    `KeyWorkflowInput`)."""

    spec: CredentialSpec
    lifecycle: KeyLifecycle
    publish_search_attributes: bool = True
    created: bool = False
    transition_seq: int = 0
    recent_requests: tuple[RequestOutcome, ...] = ()
    rotation_retry_at: datetime | None = None
    # the policy version its lifecycle policy comes from (`policy_updated` moves it)
    policy_version: int = 0
    skip_unchanged_search_attributes: bool = False


@dataclass(frozen=True)
class RotateRequest:
    """Update `rotate`: `reason` is one of the rotation reasons; `compromise` means no grace."""

    reason: str = "manual"
    comment: str = ""
    grace_period_seconds: int | None = None
    actor: str = ""
    request_id: str = ""
    # when set, rotate only if this is still the version in use (a handle value is exchanged
    # once: the second of two concurrent exchanges is refused)
    expected_version: int = 0


@dataclass(frozen=True)
class RotationResult:
    """What a rotation did."""

    from_version: int
    to_version: int


@dataclass(frozen=True)
class OperatorAction:
    """Argument of the signals `emergency_rotate`, `revoke`, `suspend`, `resume`."""

    reason: str = ""
    actor: str = "operator"


@dataclass(frozen=True)
class AcknowledgeWarning:
    """Signal `acknowledge_warning` and update `acknowledge_warnings`: acknowledge the open
    warnings, of one `target` ("rotation" or "expiry") when given."""

    target: str = ""
    reason: str = ""
    actor: str = "operator"


@dataclass(frozen=True)
class PolicyUpdate:
    """Signal `policy_updated`: the object's lifecycle policy in policy version `version`
    (sent by the rollout PUT /config starts; an older version than the one held is ignored).
    New deadlines follow it; those already set (the current versions' rotation, grace and
    expiry) stay."""

    version: int
    policy: LifecyclePolicy


@dataclass(frozen=True)
class StatusChange:
    """Update `change_status`: the REST path's synchronous revoke, suspend and resume."""

    action: str
    reason: str = ""
    actor: str = ""


@dataclass(frozen=True)
class KeyDescription:
    """Query `describe`: the key's spec, lifecycle state and what happens next."""

    spec: KeySpec
    lifecycle: KeyLifecycle
    next_transition: Transition | None
    created: bool
    policy_version: int = 0


@dataclass(frozen=True)
class CredentialDescription:
    """Query `describe` of a credential's workflow (no secret: only states and deadlines)."""

    spec: CredentialSpec
    lifecycle: KeyLifecycle
    next_transition: Transition | None
    created: bool
    policy_version: int = 0
