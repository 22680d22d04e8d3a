"""Keys in the store: commit lifecycle transitions (activities) and use versions (hot path).

Ciphertexts and signatures are `kr:<key id>:<version>:<base64url payload>`, so a ciphertext of
a version in grace still decrypts after rotation, and one of a retired version fails clearly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from core import audit
from core.lifecycle import (
    PROCESS_STATES,
    PROTECT_STATES,
    KeyStatus,
    VersionState,
    next_rotation_at,
)
from core.objects import KeyTransitionCommit
from core.providers.base import KeyProvider, ProviderConfigurationError, VersionHandle
from core.store.db import Store, newest_first
from core.store.models import AuditRecordRow, EventRow, KeyRow, KeyVersionRow

PREFIX = "kr"
_VERSION = re.compile(r"[0-9]{1,9}")
_PROTECT = frozenset(str(s) for s in PROTECT_STATES)
_PROCESS = frozenset(str(s) for s in PROCESS_STATES)
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_KEYS = cast(Table, KeyRow.__table__)
_VERSIONS = cast(Table, KeyVersionRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)


class KeyDomainError(Exception):
    """Base of the key domain errors (the HTTP edge maps each to a status)."""


class KeyNotFoundError(KeyDomainError):
    """No such key."""


class KeyStateError(KeyDomainError):
    """The key or version is in a state that does not allow the operation."""


class MalformedTokenError(KeyDomainError):
    """A ciphertext or signature string is not in keyrotor's format."""


def new_key_id() -> str:
    """`key_` + 20 random base32 characters (100 bits): unguessable, URL- and id-safe."""
    return "key_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def derived_id(prefix: str, principal: str, idempotency_key: str) -> str:
    """The id a create request with this idempotency key gets (stable across retries and
    releases: keys keep the derivation they had before other kinds were added)."""
    scope = "" if prefix == "key_" else f"{prefix}\0"
    digest = hashlib.sha256(f"{scope}{principal}\0{idempotency_key}".encode()).digest()
    return prefix + base64.b32encode(digest).decode().lower()[:20]


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise MalformedTokenError("payload is not base64url") from e


def format_token(key_id: str, version: int, payload: bytes) -> str:
    return f"{PREFIX}:{key_id}:{version}:{_b64e(payload)}"


def parse_token(token: str, key_id: str) -> tuple[int, bytes]:
    """The version and payload of a `kr:` token made by `key_id`."""
    parts = token.split(":")
    if len(parts) != 4 or parts[0] != PREFIX or not _VERSION.fullmatch(parts[2]):
        raise MalformedTokenError("expected kr:<key id>:<version>:<payload>")
    if parts[1] != key_id:
        raise MalformedTokenError(f"this was made with key {parts[1]}, not {key_id}")
    return int(parts[2]), _b64d(parts[3])


def _header(key_id: str, version: int) -> bytes:
    # Bound into the AEAD so that a ciphertext cannot be relabelled with another version.
    return f"{PREFIX}:{key_id}:{version}:".encode()


@dataclass(frozen=True)
class UseResult:
    """The output of a use operation and the version that served it."""

    value: bytes | str
    version: int


class KeyService:
    """The store side of keys: one instance per process, shared by activities and the API."""

    def __init__(self, store: Store, providers: Mapping[str, KeyProvider]) -> None:
        self._store = store
        self._providers = providers

    def provider(self, name: str) -> KeyProvider:
        try:
            return self._providers[name]
        except KeyError:
            raise ProviderConfigurationError(f"provider {name!r} is not configured") from None

    # --- lifecycle (called by activities only) -------------------------------------------

    def commit_transition(self, c: KeyTransitionCommit) -> None:
        """Project a lifecycle change and its audit record and event in one transaction.

        Idempotent: the transition id is the audit record's event id, so a retry after a
        commit changes nothing. New material is created before the transaction and stored in
        it; the local provider's material therefore never exists outside a committed version.
        """
        spec = c.spec
        have_version = False
        if c.new_version is not None:
            # Material is made outside the write transaction (a provider may be remote): not
            # again when a retried attempt committed it already.
            with self._store.engine.connect() as db:
                if audit.recorded_on(db, c.transition_id):
                    return
                have_version = (
                    db.scalar(
                        select(_VERSIONS.c.number).where(
                            _VERSIONS.c.key_id == spec.key_id, _VERSIONS.c.number == c.new_version
                        )
                    )
                    is not None
                )
        material = None
        if c.new_version is not None and not have_version:
            material = self.provider(spec.provider).create_version(
                spec.key_id, c.new_version, spec.algorithm, spec.key_bits
            )
        lc = c.lifecycle
        current = lc.current()
        key_values = {
            "status": str(lc.status),
            "updated_at": c.at,
            "expires_at": lc.expires_at,
            "next_rotation_at": next_rotation_at(lc),
        }
        if current is not None:
            key_values["current_version"] = current.number
        # Plain SQL statements, no ORM unit of work: every transition of every key runs this.
        with self._store.write() as s:
            if audit.recorded(s, c.transition_id):
                return
            db = s.connection()
            updated = db.execute(
                update(_KEYS).where(_KEYS.c.id == spec.key_id).values(key_values)
            ).rowcount
            if not updated:
                db.execute(
                    insert(_KEYS).values(
                        {
                            "id": spec.key_id,
                            "environment": spec.environment,
                            "type": spec.type,
                            "name": spec.name,
                            "owner": spec.owner,
                            "algorithm": spec.algorithm,
                            "provider": spec.provider,
                            "workflow_id": c.transition_id.rsplit("/", 1)[0],
                            "created_by": spec.created_by,
                            "metadata": dict(spec.metadata),
                            "created_at": c.at,
                            "current_version": 0,
                        }
                        | key_values
                    )
                )
            stored = set(
                db.scalars(select(_VERSIONS.c.number).where(_VERSIONS.c.key_id == spec.key_id))
            )
            changes = []
            for v in lc.versions:
                deadlines = {
                    "state": str(v.state),
                    "rotate_at": v.rotate_at,
                    "warn_at": v.warn_at,
                    "hard_expiry": v.hard_expiry,
                    "grace_until": v.grace_until,
                    "state_changed_at": v.changed_at or c.at,
                }
                if v.number in stored:
                    changes.append({"b_number": v.number, **deadlines})
                elif material is not None and v.number == c.new_version:
                    db.execute(
                        insert(_VERSIONS).values(
                            key_id=spec.key_id,
                            number=v.number,
                            algorithm=spec.algorithm,
                            provider=spec.provider,
                            provider_key_ref=material.provider_key_ref,
                            wrapped_material=material.wrapped_material,
                            public_key=material.public_key,
                            created_at=v.created_at,
                            **deadlines,
                        )
                    )
                # else: created in an earlier attempt of this same transition
            if changes:
                db.execute(
                    update(_VERSIONS)
                    .where(
                        _VERSIONS.c.key_id == spec.key_id,
                        _VERSIONS.c.number == bindparam("b_number"),
                    )
                    .values({name: bindparam(name) for name in changes[0] if name != "b_number"}),
                    changes,
                )
            # A version numbered past the workflow's last one was committed by a workflow task
            # that was lost (a crash before it completed) and replayed differently: not in use
            # until the workflow makes that version again.
            if any(n > lc.last_version for n in stored):
                db.execute(
                    update(_VERSIONS)
                    .where(
                        _VERSIONS.c.key_id == spec.key_id,
                        _VERSIONS.c.number > lc.last_version,
                        _VERSIONS.c.state != str(VersionState.PENDING),
                    )
                    .values(state=str(VersionState.PENDING), state_changed_at=c.at)
                )
            audit.append(
                s,
                audit.AuditEntry(
                    event_id=c.transition_id,
                    at=c.at,
                    actor=c.actor,
                    action=c.action,
                    object_kind="key",
                    object_id=spec.key_id,
                    version=c.version,
                    reason=c.reason,
                    details={"status": str(lc.status)},
                ),
            )
            db.execute(
                insert(_EVENTS).values(
                    event_id=c.transition_id,
                    type=c.event,
                    object_kind="key",
                    object_id=spec.key_id,
                    at=c.at,
                    data={"keyId": spec.key_id, "version": c.version, "status": str(lc.status)},
                )
            )

    # --- use path --------------------------------------------------------------------------

    def _version(
        self, key_id: str, number: int | None, allowed: frozenset[str]
    ) -> tuple[KeyProvider, VersionHandle]:
        with self._store.session() as s:
            if number is None:
                row = s.scalars(
                    select(KeyVersionRow).where(
                        KeyVersionRow.key_id == key_id, KeyVersionRow.state == "active"
                    )
                ).first()
                if row is None:
                    key = s.get(KeyRow, key_id)
                    if key is None:
                        raise KeyNotFoundError(f"key {key_id} not found")
                    raise KeyStateError(f"key {key_id} is {key.status}: it has no active version")
            else:
                row = s.get(KeyVersionRow, (key_id, number))
                if row is None:
                    if s.get(KeyRow, key_id) is None:
                        raise KeyNotFoundError(f"key {key_id} not found")
                    raise KeyStateError(f"key {key_id} has no version {number}")
            if row.state not in allowed:
                raise KeyStateError(f"version {row.number} of key {key_id} is {row.state}")
            # The workflow moves versions on at their deadlines; should it be late (workers
            # down), the deadlines still hold here.
            now = datetime.now(UTC)
            if row.hard_expiry <= now:
                raise KeyStateError(f"version {row.number} of key {key_id} is past its lifetime")
            if (
                row.state == VersionState.GRACE
                and row.grace_until is not None
                and row.grace_until <= now
            ):
                raise KeyStateError(f"version {row.number} of key {key_id} is past its grace")
            return self.provider(row.provider), VersionHandle(
                key_id=row.key_id,
                number=row.number,
                algorithm=row.algorithm,
                provider_key_ref=row.provider_key_ref,
                wrapped_material=row.wrapped_material,
                public_key=row.public_key,
            )

    def encrypt(self, key_id: str, plaintext: bytes, aad: bytes) -> UseResult:
        provider, v = self._version(key_id, None, _PROTECT)
        data = provider.encrypt(v, plaintext, _header(key_id, v.number) + aad)
        return UseResult(format_token(key_id, v.number, data), v.number)

    def decrypt(self, key_id: str, ciphertext: str, aad: bytes) -> UseResult:
        number, data = parse_token(ciphertext, key_id)
        provider, v = self._version(key_id, number, _PROCESS)
        return UseResult(provider.decrypt(v, data, _header(key_id, number) + aad), number)

    def sign(self, key_id: str, message: bytes) -> UseResult:
        provider, v = self._version(key_id, None, _PROTECT)
        return UseResult(format_token(key_id, v.number, provider.sign(v, message)), v.number)

    def verify(self, key_id: str, message: bytes, signature: str) -> UseResult:
        """Raises InvalidSignatureError when the signature does not verify."""
        number, sig = parse_token(signature, key_id)
        provider, v = self._version(key_id, number, _PROCESS)
        provider.verify(v, message, sig)
        return UseResult(b"", number)

    # --- reads -----------------------------------------------------------------------------

    def workflow_of(self, key_id: str) -> tuple[str, str]:
        """The id of the key's workflow and the key's status (one indexed read)."""
        with self._store.session() as s:
            row = s.execute(
                select(KeyRow.workflow_id, KeyRow.status).where(KeyRow.id == key_id)
            ).first()
        if row is None:
            raise KeyNotFoundError(f"key {key_id} not found")
        return row[0], row[1]

    def get(self, key_id: str) -> tuple[KeyRow, list[KeyVersionRow]]:
        with self._store.session() as s:
            key = s.get(KeyRow, key_id)
            if key is None:
                raise KeyNotFoundError(f"key {key_id} not found")
            versions = list(
                s.scalars(
                    select(KeyVersionRow)
                    .where(KeyVersionRow.key_id == key_id)
                    .order_by(KeyVersionRow.number)
                )
            )
            return key, versions

    def list_keys(
        self,
        *,
        type: str | None,
        status: str | None,
        limit: int,
        offset: int,
        after: tuple[datetime, str] | None,
    ) -> list[KeyRow]:
        """Newest first; `after` (created_at, id) continues from a cursor."""
        with self._store.session() as s:
            q = select(KeyRow)
            if type:
                q = q.where(KeyRow.type == type)
            if status:
                q = q.where(KeyRow.status == status)
            q = newest_first(q, KeyRow, limit=limit, offset=offset, after=after)
            return list(s.scalars(q))

    def statistics(self) -> dict[str, object]:
        with self._store.session() as s:
            by_status = _counts(s, KeyRow.status)
            by_type = _counts(s, KeyRow.type)
            versions = _counts(s, KeyVersionRow.state)
            rotations = s.scalar(
                select(func.count())
                .select_from(AuditRecordRow)
                .where(AuditRecordRow.action.in_(["key.rotated", "key.emergency_rotated"]))
            )
        return {
            "totalKeys": sum(by_status.values()),
            "activeKeys": by_status.get(str(KeyStatus.ACTIVE), 0),
            "byStatus": by_status,
            "byType": by_type,
            "versionsByState": versions,
            "totalRotations": rotations or 0,
        }


def _counts(s: Session, column: InstrumentedAttribute[str]) -> dict[str, int]:
    return {value: n for value, n in s.execute(select(column, func.count()).group_by(column))}
