"""API credentials in the store: commit lifecycle transitions (activities), verify (hot path).

Each version of a credential is one secret with its own lookup id; the store keeps only its
keyed hash, plus an envelope-encrypted copy until the secret has been handed out once.
Verification reads one row by lookup id and never touches Temporal. Usage counts are buffered in
memory and flushed about once a second (`flush_usage`); usage limits are exact (one atomic
decrement per successful verification, shared by every version of the credential).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update

from core import audit
from core.credentials import (
    MalformedCredentialError,
    PepperRing,
    format_credential,
    keyed_hash,
    new_lookup_id,
    new_secret,
    parse_credential,
)
from core.envelope import MasterKeyring, open_envelope, seal
from core.lifecycle import KeyStatus, VersionState, next_rotation_at
from core.objects import CredentialTransitionCommit
from core.store.db import Store
from core.store.models import CredentialRow, CredentialVersionRow, EventRow

SALT_BYTES = 16
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


class CredentialNotFoundError(LookupError):
    """No such credential (by id; verification answers NOT_FOUND instead of raising)."""


class VerificationCode(StrEnum):
    """The machine-readable outcome of `POST /credentials/verify`."""

    VALID = "VALID"
    NOT_FOUND = "NOT_FOUND"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"
    SUSPENDED = "SUSPENDED"
    INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
    RATE_LIMITED = "RATE_LIMITED"
    USAGE_EXCEEDED = "USAGE_EXCEEDED"


@dataclass(frozen=True)
class Verification:
    """What a verification found. Details are only filled in once the secret matched."""

    code: VerificationCode
    credential_id: str | None = None
    version: int | None = None
    environment: str | None = None
    name: str = ""
    owner: str = ""
    scopes: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    remaining: int | None = None
    retry_after: float | None = None

    @property
    def valid(self) -> bool:
        return self.code == VerificationCode.VALID


def new_credential_id() -> str:
    """`cred_` + 20 random base32 characters (100 bits)."""
    return "cred_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def _secret_context(credential_id: str, number: int) -> bytes:
    return f"keyrotor/credential/{credential_id}/v{number}".encode()


class _RateLimiter:
    """Fixed windows per credential, in this process (shared limits need a shared store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}

    def allow(self, credential_id: str, limit: int, window: int, now: float) -> float | None:
        """None when allowed, else the seconds until the window resets."""
        with self._lock:
            start, count = self._windows.get(credential_id, (now, 0))
            if now - start >= window:
                start, count = now, 0
            if count >= limit:
                return start + window - now
            self._windows[credential_id] = (start, count + 1)
            return None


_VERIFY_COLUMNS = (
    CredentialVersionRow.number,
    CredentialVersionRow.state,
    CredentialVersionRow.salt,
    CredentialVersionRow.secret_hash,
    CredentialVersionRow.pepper_id,
    CredentialVersionRow.grace_until,
    CredentialVersionRow.hard_expiry,
    CredentialRow.id,
    CredentialRow.environment,
    CredentialRow.status,
    CredentialRow.name,
    CredentialRow.owner,
    CredentialRow.scopes,
    CredentialRow.metadata_.label("meta"),
    CredentialRow.expires_at,
    CredentialRow.remaining,
    CredentialRow.rate_limit,
    CredentialRow.rate_limit_window,
)

_STATUS_CODES = {
    KeyStatus.REVOKED: VerificationCode.REVOKED,
    KeyStatus.SUSPENDED: VerificationCode.SUSPENDED,
    KeyStatus.EXPIRED: VerificationCode.EXPIRED,
}
_VERSION_CODES = {
    VersionState.COMPROMISED: VerificationCode.REVOKED,
    VersionState.SUSPENDED: VerificationCode.SUSPENDED,
    VersionState.RETIRED: VerificationCode.EXPIRED,
    VersionState.EXPIRED: VerificationCode.EXPIRED,
    VersionState.DESTROYED: VerificationCode.EXPIRED,
    VersionState.PENDING: VerificationCode.NOT_FOUND,
}


class CredentialService:
    """The store side of API credentials: one per process, shared by activities and the API."""

    def __init__(self, store: Store, keyring: MasterKeyring, peppers: PepperRing) -> None:
        self._store = store
        self._keyring = keyring
        self._peppers = peppers
        self._limiter = _RateLimiter()
        self._usage_lock = threading.Lock()
        # credential id -> [successes, failures, last success]
        self._usage: dict[str, list[Any]] = {}
        self._dummy_salt = secrets.token_bytes(SALT_BYTES)
        self._dummy_hash = secrets.token_bytes(32)
        self._verify_query = select(*_VERIFY_COLUMNS).join(
            CredentialRow, CredentialRow.id == CredentialVersionRow.credential_id
        )

    # --- lifecycle (called by activities only) -------------------------------------------

    def commit_transition(self, c: CredentialTransitionCommit) -> None:
        """Project a lifecycle change, its audit record and event in one transaction.

        Idempotent by `transition_id`. A new version's secret is generated here, inside the
        transaction: it exists only as its hash and a sealed copy, never outside a commit.
        """
        spec, lc = c.spec, c.lifecycle
        with self._store.write() as s:
            if audit.recorded(s, c.transition_id):
                return
            cred = s.get(CredentialRow, spec.credential_id)
            if cred is None:
                cred = CredentialRow(
                    id=spec.credential_id,
                    environment=spec.environment,
                    name=spec.name,
                    owner=spec.owner,
                    scopes=list(spec.scopes),
                    metadata_=dict(spec.metadata),
                    scheduled_rotation=spec.scheduled_rotation,
                    rate_limit=spec.rate_limit,
                    rate_limit_window=spec.rate_limit_window,
                    usage_limit=spec.usage_limit,
                    remaining=spec.usage_limit,
                    usage_count=0,
                    failure_count=0,
                    workflow_id=c.transition_id.rsplit("/", 1)[0],
                    created_by=spec.created_by,
                    created_at=c.at,
                )
                s.add(cred)
            current = lc.current()
            cred.status = str(lc.status)
            cred.current_version = current.number if current else cred.current_version or 0
            cred.updated_at = c.at
            cred.expires_at = lc.expires_at
            cred.next_rotation_at = next_rotation_at(lc)
            s.flush()
            rows = {
                r.number: r
                for r in s.scalars(
                    select(CredentialVersionRow).where(
                        CredentialVersionRow.credential_id == spec.credential_id
                    )
                )
            }
            for v in lc.versions:
                row = rows.get(v.number)
                if row is None:
                    if v.number != c.new_version:
                        continue
                    row = self._new_version_row(spec.credential_id, spec.environment, v.number)
                    row.created_at = v.created_at
                    s.add(row)
                    rows[v.number] = row
                row.state = str(v.state)
                row.rotate_at = v.rotate_at
                row.warn_at = v.warn_at
                row.hard_expiry = v.hard_expiry
                row.grace_until = v.grace_until
                row.state_changed_at = v.changed_at or c.at
            in_grace = any(v.state == VersionState.GRACE for v in lc.versions)
            for row in rows.values():
                # A sealed secret waits for its one reveal while it is the active secret and
                # the one before it is still in grace (or it was made by this transition).
                keep = row.state == VersionState.ACTIVE and (
                    in_grace or row.number == c.new_version
                )
                if row.number > lc.last_version:
                    # made by a lost workflow task (see KeyService.commit_transition)
                    row.state, keep = str(VersionState.PENDING), False
                if not keep:
                    row.pending_secret = None
            audit.append(
                s,
                audit.AuditEntry(
                    event_id=c.transition_id,
                    at=c.at,
                    actor=c.actor,
                    action=c.action,
                    object_kind="credential",
                    object_id=spec.credential_id,
                    version=c.version,
                    reason=c.reason,
                    details={"status": str(lc.status)},
                ),
            )
            s.add(
                EventRow(
                    event_id=c.transition_id,
                    type=c.event,
                    object_kind="credential",
                    object_id=spec.credential_id,
                    at=c.at,
                    data={
                        "credentialId": spec.credential_id,
                        "version": c.version,
                        "status": str(lc.status),
                    },
                )
            )

    def _new_version_row(
        self, credential_id: str, environment: str, number: int
    ) -> CredentialVersionRow:
        lookup_id, secret, salt = new_lookup_id(), new_secret(), secrets.token_bytes(SALT_BYTES)
        plaintext = format_credential(environment, lookup_id, secret)
        return CredentialVersionRow(
            lookup_id=lookup_id,
            credential_id=credential_id,
            number=number,
            salt=salt,
            secret_hash=keyed_hash(self._peppers.current, salt, secret),
            pepper_id=self._peppers.current_id,
            pending_secret=seal(
                self._keyring, plaintext.encode(), _secret_context(credential_id, number)
            ),
        )

    # --- one-time hand-over ----------------------------------------------------------------

    def claim_secret(self, credential_id: str, number: int, actor: str) -> str | None:
        """The plaintext of version `number` if it has not been handed out yet (then never
        again); None when it was revealed already or its reveal window has passed."""
        with self._store.write() as s:
            row = s.scalars(
                select(CredentialVersionRow).where(
                    CredentialVersionRow.credential_id == credential_id,
                    CredentialVersionRow.number == number,
                )
            ).one_or_none()
            if row is None or row.pending_secret is None:
                return None
            plaintext = open_envelope(
                self._keyring, row.pending_secret, _secret_context(credential_id, number)
            ).decode()
            row.pending_secret = None
            audit.append(
                s,
                audit.AuditEntry(
                    event_id=f"{credential_id}/v{number}:credential.secret_revealed",
                    at=datetime.now(UTC),
                    actor=actor,
                    action="credential.secret_revealed",
                    object_kind="credential",
                    object_id=credential_id,
                    version=number,
                ),
            )
        return plaintext

    # --- verification (hot path) -----------------------------------------------------------

    def verify(self, presented: str, required_scopes: Sequence[str] = ()) -> Verification:
        """Check a presented credential. Costs one indexed read and one HMAC whether or not
        the lookup id exists, so timing does not tell a wrong secret from an unknown key."""
        try:
            p = parse_credential(presented)
        except MalformedCredentialError:
            return Verification(VerificationCode.NOT_FOUND)
        with self._store.engine.connect() as conn:
            row = conn.execute(
                self._verify_query.where(CredentialVersionRow.lookup_id == p.lookup_id)
            ).first()
        pepper = self._peppers.get(row.pepper_id) if row is not None else None
        computed = keyed_hash(
            pepper or self._peppers.current, row.salt if row else self._dummy_salt, p.secret
        )
        matches = hmac.compare_digest(computed, row.secret_hash if row else self._dummy_hash)
        if row is None or pepper is None or not matches or row.environment != p.environment:
            if row is not None:
                self._record(row.id, ok=False)
            return Verification(VerificationCode.NOT_FOUND)
        code, retry_after, remaining = self._check(row, required_scopes)
        self._record(row.id, ok=code == VerificationCode.VALID)
        if code == VerificationCode.VALID and row.pepper_id != self._peppers.current_id:
            self._rehash(p.lookup_id, p.secret)
        return Verification(
            code=code,
            credential_id=row.id,
            version=row.number,
            environment=row.environment,
            name=row.name,
            owner=row.owner,
            scopes=tuple(row.scopes),
            metadata=dict(row.meta),
            expires_at=row.expires_at,
            remaining=remaining,
            retry_after=retry_after,
        )

    def _check(
        self, row: Any, required_scopes: Sequence[str]
    ) -> tuple[VerificationCode, float | None, int | None]:
        now = datetime.now(UTC)
        status_code = _STATUS_CODES.get(row.status)
        if status_code is not None:
            return status_code, None, row.remaining
        if row.expires_at is not None and row.expires_at <= now:
            return VerificationCode.EXPIRED, None, row.remaining
        version_code = _VERSION_CODES.get(row.state)
        if version_code is not None:
            return version_code, None, row.remaining
        # The workflow moves versions on at their deadlines; should it be late, they hold here.
        if row.hard_expiry <= now or (
            row.state == VersionState.GRACE
            and row.grace_until is not None
            and row.grace_until <= now
        ):
            return VerificationCode.EXPIRED, None, row.remaining
        if not set(required_scopes) <= set(row.scopes):
            return VerificationCode.INSUFFICIENT_SCOPE, None, row.remaining
        if row.rate_limit is not None and row.rate_limit_window:
            wait = self._limiter.allow(
                row.id, row.rate_limit, row.rate_limit_window, time.monotonic()
            )
            if wait is not None:
                return VerificationCode.RATE_LIMITED, wait, row.remaining
        if row.remaining is None:
            return VerificationCode.VALID, None, None
        with self._store.write() as s:
            left = s.execute(
                update(CredentialRow)
                .where(CredentialRow.id == row.id, CredentialRow.remaining > 0)
                .values(remaining=CredentialRow.remaining - 1)
                .returning(CredentialRow.remaining)
            ).scalar_one_or_none()
        if left is None:
            return VerificationCode.USAGE_EXCEEDED, None, 0
        return VerificationCode.VALID, None, left

    def _rehash(self, lookup_id: str, secret: str) -> None:
        """Move a hash made under an old pepper to the current one (pepper rotation)."""
        salt = secrets.token_bytes(SALT_BYTES)
        with self._store.write() as s:
            s.execute(
                update(CredentialVersionRow)
                .where(CredentialVersionRow.lookup_id == lookup_id)
                .values(
                    salt=salt,
                    secret_hash=keyed_hash(self._peppers.current, salt, secret),
                    pepper_id=self._peppers.current_id,
                )
            )

    def _record(self, credential_id: str, *, ok: bool) -> None:
        with self._usage_lock:
            entry = self._usage.setdefault(credential_id, [0, 0, None])
            if ok:
                entry[0] += 1
                entry[2] = datetime.now(UTC)
            else:
                entry[1] += 1

    def flush_usage(self) -> int:
        """Write the buffered usage counts to the store; returns how many credentials."""
        with self._usage_lock:
            usage, self._usage = self._usage, {}
        if not usage:
            return 0
        with self._store.write() as s:
            for credential_id, (ok, failed, last) in usage.items():
                values: dict[str, Any] = {
                    "usage_count": CredentialRow.usage_count + ok,
                    "failure_count": CredentialRow.failure_count + failed,
                }
                if last is not None:
                    values["last_used_at"] = last
                s.execute(
                    update(CredentialRow).where(CredentialRow.id == credential_id).values(values)
                )
        return len(usage)

    # --- reads -----------------------------------------------------------------------------

    def workflow_of(self, credential_id: str) -> tuple[str, str]:
        """The id of the credential's workflow and its status."""
        with self._store.session() as s:
            row = s.execute(
                select(CredentialRow.workflow_id, CredentialRow.status).where(
                    CredentialRow.id == credential_id
                )
            ).first()
        if row is None:
            raise CredentialNotFoundError(f"credential {credential_id} not found")
        return row[0], row[1]

    def get(self, credential_id: str) -> tuple[CredentialRow, list[CredentialVersionRow]]:
        with self._store.session() as s:
            cred = s.get(CredentialRow, credential_id)
            if cred is None:
                raise CredentialNotFoundError(f"credential {credential_id} not found")
            versions = list(
                s.scalars(
                    select(CredentialVersionRow)
                    .where(CredentialVersionRow.credential_id == credential_id)
                    .order_by(CredentialVersionRow.number)
                )
            )
            return cred, versions

    def list_credentials(
        self,
        *,
        owner: str | None,
        status: str | None,
        limit: int,
        offset: int,
        after: tuple[datetime, str] | None,
    ) -> list[CredentialRow]:
        """Newest first; `after` (created_at, id) continues from a cursor."""
        with self._store.session() as s:
            q = select(CredentialRow)
            if owner:
                q = q.where(CredentialRow.owner == owner)
            if status:
                q = q.where(CredentialRow.status == status)
            if after is not None:
                at, cid = after
                q = q.where(
                    (CredentialRow.created_at < at)
                    | ((CredentialRow.created_at == at) & (CredentialRow.id < cid))
                )
            q = q.order_by(CredentialRow.created_at.desc(), CredentialRow.id.desc())
            return list(s.scalars(q.offset(offset).limit(limit)))

    def count(self) -> int:
        with self._store.session() as s:
            return s.scalar(select(func.count()).select_from(CredentialRow)) or 0
