"""Plain records passed between workflows, activities and the store. None carries a secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.lifecycle import KeyLifecycle


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
