"""Plain records passed between workflows, activities and the store. None carries a secret."""

# No `from __future__ import annotations` here: the payload converter resolves the field types of
# these dataclasses with typing.get_type_hints on every conversion, also inside the workflow
# sandbox, whose module table does not hold this module; string annotations would fail to
# resolve there, and cost an eval each time elsewhere (tests/unit/test_payload_types.py).

from dataclasses import dataclass, field
from datetime import datetime

from core.lifecycle import KeyLifecycle, StagedWarning


class ImportWithdrawnError(LookupError):
    """The first commit of an imported key or credential found no staged version: the API took
    the import back (its start looked refused) while the workflow did start. The workflow must
    not make a version of its own in its place."""


@dataclass(frozen=True)
class KeySpec:
    """What a key is; fixed for its life."""

    key_id: str
    environment: str
    type: str
    algorithm: str
    provider: str
    key_bits: int
    owner: str = ""
    name: str = ""
    created_by: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # "imported": version 1's material was brought in (BYOK, `KeyService.stage_import`)
    origin: str = "generated"


@dataclass(frozen=True)
class KeyTransitionCommit:
    """Activity input: project a lifecycle change into the store, audited, in one transaction.

    `transition_id` is deterministic (workflow id + sequence number), so a retried activity
    commits once. `new_version`, when set, is created at the provider first (idempotently).
    """

    transition_id: str
    spec: KeySpec
    lifecycle: KeyLifecycle
    action: str
    event: str
    at: datetime
    actor: str = "keyrotor"
    reason: str = ""
    version: int | None = None
    new_version: int | None = None
    # the warning this transition raised, for its event
    warning: StagedWarning | None = None


@dataclass(frozen=True)
class CredentialSpec:
    """What an API credential or a handle family is; fixed for its life (its secrets are its
    versions). `kind` is "credential" or "handle"."""

    credential_id: str
    environment: str
    name: str = ""
    owner: str = ""
    scopes: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    created_by: str = ""
    scheduled_rotation: bool = False
    rate_limit: int | None = None
    rate_limit_window: int | None = None
    usage_limit: int | None = None
    kind: str = "credential"
    type: str = "api"
    user_id: str = ""
    context: dict[str, str] = field(default_factory=dict)
    max_usage: int | None = None  # validations per version (handles)
    hash_algorithm: str = "SHA-256"
    secret_bytes: int = 32
    # "imported": version 1 is an existing API key's hash (`CredentialService.stage_import`)
    origin: str = "generated"


@dataclass(frozen=True)
class CredentialTransitionCommit:
    """Activity input: project a credential's lifecycle change (audited, one transaction).

    `new_version`, when set, gets a fresh secret in that transaction: only its keyed hash and an
    envelope-encrypted copy for a one-time reveal are stored, and nothing secret comes back.
    """

    transition_id: str
    spec: CredentialSpec
    lifecycle: KeyLifecycle
    action: str
    event: str
    at: datetime
    actor: str = "keyrotor"
    reason: str = ""
    version: int | None = None
    new_version: int | None = None
    # the warning this transition raised, for its event
    warning: StagedWarning | None = None
