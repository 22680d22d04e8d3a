"""API credentials and handle families in the store: commit lifecycle transitions
(activities), verify credentials and validate handles (hot paths).

Each version is one secret with its own lookup id; the store keeps only its keyed hash, plus an
envelope-encrypted copy until the secret has been handed out once. Verification reads one row
by lookup id (or finds it in a cache kept fresh by `core.changes`) and never touches Temporal.
Usage counts are buffered in memory and flushed about once a second (`flush_usage`). Usage
limits and handles' max usage are exact and shared by the API processes: counted in Redis when
configured (`core.ratelimit.RedisLimits.use`; the flush adds those uses to the store), else one
conditional UPDATE per successful use. Rate limits are shared the same way (`core.ratelimit`);
a credential without limits pays nothing for them.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, case, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from core import audit
from core.changes import RowCache
from core.credentials import (
    CREDENTIAL_PREFIX,
    HANDLE_PREFIX,
    IMPORTED_PREFIX,
    IMPORTED_SHA256,
    REHASH_SEPARATOR,
    MalformedCredentialError,
    PepperRing,
    PresentedCredential,
    format_token,
    imported_hash,
    imported_lookup_id,
    new_lookup_id,
    new_secret,
    parse_credential,
    parse_imported,
    parse_token,
    rehash,
    secret_hash,
)
from core.envelope import MasterKeyring, open_envelope, seal
from core.lifecycle import (
    LIVE_STATES,
    KeyLifecycle,
    KeyStatus,
    VersionState,
    iso,
    next_rotation_at,
)
from core.objects import CredentialSpec, CredentialTransitionCommit, ImportWithdrawnError
from core.policy import SecurityPolicies
from core.ratelimit import DatabaseRateLimiter, RateLimiter, RedisLimits
from core.store.db import Store, newest_first
from core.store.models import (
    ArchivedCredentialRow,
    CredentialRow,
    CredentialVersionRow,
    EventRow,
    ImportedLookupRow,
    StoreSecretRow,
    UTCDateTime,
)
from core.warnings import event_data, project_warnings

SALT_BYTES = 16
_HOUR = timedelta(hours=1)
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


class CredentialNotFoundError(LookupError):
    """No such credential (by id; verification answers NOT_FOUND instead of raising)."""


@dataclass(frozen=True)
class RehashBatch:
    """One batch of the forced re-hash: the cursor to go on from ("" once done), the rows it
    looked at and the hashes it re-hashed."""

    cursor: str
    scanned: int
    rehashed: int


_VERSIONS_TABLE = cast(Table, CredentialVersionRow.__table__)
# versions whose hash may still be presented (a pending one may be made active again)
_VERIFYING = LIVE_STATES | {VersionState.PENDING}


def _outer(pepper_id: str) -> str:
    return pepper_id.partition(REHASH_SEPARATOR)[0]


class WriteNeeded(Exception):
    """This verification needs a database write or a round trip to Redis: run it off the event
    loop."""


class HandleNotFoundError(CredentialNotFoundError):
    """No such handle family."""


def _not_found(kind: str, credential_id: str) -> CredentialNotFoundError:
    error = HandleNotFoundError if kind == "handle" else CredentialNotFoundError
    return error(f"{kind} {credential_id} not found")


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


class HandleCode(StrEnum):
    """The machine-readable outcome of `POST /handles/validate`."""

    VALID = "VALID"
    NOT_FOUND = "NOT_FOUND"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"
    SUSPENDED = "SUSPENDED"
    REUSE_DETECTED = "REUSE_DETECTED"
    USER_MISMATCH = "USER_MISMATCH"
    CONTEXT_MISMATCH = "CONTEXT_MISMATCH"
    ROTATION_REQUIRED = "ROTATION_REQUIRED"
    RATE_LIMITED = "RATE_LIMITED"
    USAGE_EXHAUSTED = "USAGE_EXHAUSTED"


@dataclass(frozen=True)
class HandleValidation:
    """What a handle validation found; `anomaly` names what was recorded, if anything."""

    code: HandleCode
    handle_id: str | None = None
    workflow_id: str = ""
    type: str = ""
    user_id: str = ""
    version: int | None = None
    expires_at: datetime | None = None
    rotation_due_at: datetime | None = None
    rotation_required: bool = False
    remaining_uses: int | None = None
    context_match: bool = True
    anomaly: str | None = None
    anomalies: int = 0
    retry_after: float | None = None

    @property
    def valid(self) -> bool:
        return self.code == HandleCode.VALID


def new_credential_id(prefix: str = "cred_") -> str:
    """`cred_` (or `hdl_`) + 20 random base32 characters (100 bits)."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def secret_context(credential_id: str, number: int) -> bytes:
    """The envelope context that binds a sealed pending secret to one credential version."""
    return f"keyrotor/credential/{credential_id}/v{number}".encode()


def store_secret_context(name: str) -> bytes:
    """The envelope context that binds one of the store's own secrets to its name."""
    return f"keyrotor/store-secret/{name}".encode()


LOOKUP_KEY = "imported-lookup"  # the store secret keying imported API keys' lookup ids


_VERIFY_COLUMNS = (
    CredentialVersionRow.lookup_id,
    CredentialVersionRow.number,
    CredentialVersionRow.state,
    CredentialVersionRow.salt,
    CredentialVersionRow.secret_hash,
    CredentialVersionRow.pepper_id,
    CredentialVersionRow.grace_until,
    CredentialVersionRow.hard_expiry,
    CredentialVersionRow.rotate_at,
    CredentialVersionRow.warn_at,
    CredentialRow.id,
    CredentialRow.kind,
    CredentialRow.type,
    CredentialRow.user_id,
    CredentialRow.context,
    CredentialRow.max_usage,
    CredentialRow.hash_algorithm,
    CredentialRow.workflow_id,
    CredentialRow.anomaly_count,
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


CACHE_ENTRIES = 50_000
FLUSH_CHUNK = 200  # usage rows bound per statement (about 1.2 ms of holding the GIL)
# One use of a credential with a usage limit, or of a handle value with a max usage: exact
# (conditional), and group-committed with the other uses in flight (`Store.write_batched`).
_USE_CREDENTIAL = (
    update(CredentialRow)
    .where(CredentialRow.id == bindparam("cid"), CredentialRow.remaining > 0)
    .values(remaining=CredentialRow.remaining - 1)
    .returning(CredentialRow.remaining)
)
_USE_HANDLE = (
    update(CredentialVersionRow)
    .where(
        CredentialVersionRow.lookup_id == bindparam("lookup"),
        CredentialVersionRow.uses < bindparam("max_usage"),
    )
    .values(uses=CredentialVersionRow.uses + 1)
    .returning(CredentialVersionRow.uses)
)
# With Redis (`RedisLimits.use`) the count lives there; these seed it, and the flush adds the
# uses each process counted there to the store.
_CREDENTIAL_LEFT = select(CredentialRow.remaining).where(CredentialRow.id == bindparam("key"))
_HANDLE_USES = select(CredentialVersionRow.uses).where(
    CredentialVersionRow.lookup_id == bindparam("key")
)
_FLUSH_CREDENTIAL_USES = (
    update(CredentialRow)
    .where(CredentialRow.id == bindparam("key"))
    .values(
        remaining=case(
            (CredentialRow.remaining > bindparam("n"), CredentialRow.remaining - bindparam("n")),
            else_=0,
        )
    )
)
_FLUSH_HANDLE_USES = (
    update(CredentialVersionRow)
    .where(CredentialVersionRow.lookup_id == bindparam("key"))
    .values(uses=CredentialVersionRow.uses + bindparam("n"))
)


@dataclass(frozen=True)
class _Usage:
    """A usage limit's two ways to the store: `seed` reads the uses left, `spend` counts one
    use there (exact) and returns the uses left after it, -1 when none were left."""

    seed: Callable[[], int]
    spend: Callable[[], int]


class _FailureTally:
    """Verifications and validations answered other than VALID, by kind and code, since
    `since`; the known objects they named (up to `MAX_OBJECTS` a kind)."""

    MAX_OBJECTS = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codes: dict[tuple[str, str], int] = {}
        self._objects: dict[str, set[str]] = {}
        self.since = datetime.now(UTC)

    def add(self, kind: str, code: str, object_id: str | None) -> None:
        with self._lock:
            self._codes[(kind, str(code))] = self._codes.get((kind, str(code)), 0) + 1
            named = self._objects.setdefault(kind, set())
            if object_id is not None and len(named) < self.MAX_OBJECTS:
                named.add(object_id)

    def take(
        self, now: datetime
    ) -> tuple[datetime, dict[tuple[str, str], int], dict[str, set[str]]]:
        with self._lock:
            taken = self.since, self._codes, self._objects
            self._codes, self._objects, self.since = {}, {}, now
        return taken


def _new_credential_row(spec: CredentialSpec, workflow_id: str, at: datetime) -> CredentialRow:
    return CredentialRow(
        id=spec.credential_id,
        kind=spec.kind,
        type=spec.type,
        user_id=spec.user_id,
        context=dict(spec.context),
        max_usage=spec.max_usage,
        hash_algorithm=spec.hash_algorithm,
        anomaly_count=0,
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
        workflow_id=workflow_id,
        created_by=spec.created_by,
        created_at=at,
        # the first commit sets these, as the workflow sees them
        status=str(KeyStatus.ACTIVE),
        updated_at=at,
    )


class CredentialArchivedError(LookupError):
    """The credential or handle family ended long ago and was archived (`core.cleanup`)."""


class AlreadyImportedError(Exception):
    """An API key with this hash was imported already (the message names its credential);
    `staged`: that credential's workflow has not committed it (yet)."""

    def __init__(self, message: str, credential_id: str, staged: bool) -> None:
        super().__init__(message)
        self.credential_id = credential_id
        self.staged = staged


class CredentialService:
    """The store side of API credentials: one per process, shared by activities and the API."""

    def __init__(
        self,
        store: Store,
        keyring: MasterKeyring,
        peppers: PepperRing,
        limiter: RateLimiter | None = None,
        redis_limits: RedisLimits | None = None,
        environment: str | None = None,
    ) -> None:
        self._store = store
        # KEYROTOR_ENVIRONMENT of an API process: credentials and handle families of another
        # environment do not exist here (as keys, `KeyService.environment`); None: every one
        self.environment = environment
        self._keyring = keyring
        self._peppers = peppers
        # shared by the API processes: Redis when configured (`build_services`), else the store
        self._limiter = limiter if limiter is not None else DatabaseRateLimiter(store)
        self._usage_lock = threading.Lock()
        # credential id -> [successes, failures, last success]
        self._usage: dict[str, list[Any]] = {}
        # usage limits: counted in Redis when configured (`build_services`), else in the store
        self._redis_limits = redis_limits
        # uses counted in Redis and not yet added to the store, by (kind, credential id or
        # handle value's lookup id)
        self._redis_uses: dict[tuple[str, str], int] = {}
        self._dummy_salt = secrets.token_bytes(SALT_BYTES)
        self._dummy_hash = secrets.token_bytes(32)
        # verification rows by lookup id, kept fresh by the API's `core.changes.ChangeFeed`
        self.rows = RowCache(CACHE_ENTRIES)
        self._failures = _FailureTally()
        self._lookup_key: bytes | None = None  # once it exists (`_imported_lookup_key`)
        self._unkeyed_imports: bool | None = None  # once read (`_unkeyed_lookup_ids`)
        # one statement object, executed with a parameter: SQLAlchemy then reuses its compiled
        # form and result map as they are (a new `.where()` per call costs ~1 ms to adapt)
        self._verify_query = (
            select(*_VERIFY_COLUMNS)
            .join(CredentialRow, CredentialRow.id == CredentialVersionRow.credential_id)
            .where(CredentialVersionRow.lookup_id == bindparam("lookup"))
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
                cred = _new_credential_row(spec, c.transition_id.rsplit("/", 1)[0], c.at)
                s.add(cred)
            current = lc.current()
            if cred.status == KeyStatus.SUSPENDED and lc.status == KeyStatus.ACTIVE:
                cred.anomaly_count = 0  # resumed: the anomalies were looked into
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
                staged = spec.origin == "imported" and v.number == c.new_version == 1
                if row is not None and row.state == VersionState.PENDING and not staged:
                    # parked: made by a lost workflow task; this version gets a secret of its
                    # own, and the lost one (which may have been revealed) never comes back
                    s.delete(row)
                    s.flush()
                    row = None
                if row is None:
                    if v.number != c.new_version:
                        continue
                    if staged:
                        raise ImportWithdrawnError(
                            f"the import of credential {spec.credential_id} was taken back"
                        )
                    row = self._new_version_row(spec, v.number)
                    row.created_at = v.created_at
                    s.add(row)
                    rows[v.number] = row
                row.state = str(v.state)
                row.rotate_at = v.rotate_at
                row.warn_at = v.warn_at
                row.hard_expiry = v.hard_expiry
                row.grace_until = v.grace_until
                row.state_changed_at = v.changed_at or c.at
            # A sealed secret waits for its one reveal while it is the secret in use (active, or
            # suspended) and the one before it is still in grace, or it was made just now.
            in_grace = any(v.grace_until is not None for v in lc.versions if v.state in LIVE_STATES)
            in_use = current.number if current else None
            for row in rows.values():
                keep = row.number == in_use and (in_grace or row.number == c.new_version)
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
                    object_kind=spec.kind,
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
                    object_kind=spec.kind,
                    object_id=spec.credential_id,
                    at=c.at,
                    data=event_data(
                        {
                            f"{spec.kind}Id": spec.credential_id,
                            "version": c.version,
                            "status": str(lc.status),
                        },
                        c,
                    ),
                )
            )
            project_warnings(
                s.connection(), spec.kind, spec.credential_id, spec.environment, lc, c.at
            )

    def _new_version_row(self, spec: CredentialSpec, number: int) -> CredentialVersionRow:
        lookup_id, salt = new_lookup_id(), secrets.token_bytes(SALT_BYTES)
        secret = new_secret(spec.secret_bytes)
        prefix = HANDLE_PREFIX if spec.kind == "handle" else CREDENTIAL_PREFIX
        plaintext = format_token(prefix, spec.environment, lookup_id, secret)
        return CredentialVersionRow(
            lookup_id=lookup_id,
            credential_id=spec.credential_id,
            number=number,
            salt=salt,
            secret_hash=secret_hash(self._peppers.current, salt, secret, spec.hash_algorithm),
            pepper_id=self._peppers.current_id,
            uses=0,
            pending_secret=seal(
                self._keyring, plaintext.encode(), secret_context(spec.credential_id, number)
            ),
        )

    # --- import --------------------------------------------------------------------------------

    def stage_import(
        self, spec: CredentialSpec, lifecycle: KeyLifecycle, key_sha256: bytes, workflow_id: str
    ) -> None:
        """Store an existing API key, known by the SHA-256 its old system kept, as the pending
        version 1 of a new credential, before the credential's workflow starts; its first commit
        then activates it (audited as `credential.imported`). The holder keeps presenting the
        same key; it is found by the SHA-256 of what is presented (`parse_imported`).

        A key is imported once, ever: `imported_lookups` remembers it after its credential is
        revoked and archived, so a revoked key cannot come back by importing it again.
        AlreadyImportedError names the credential that took it, and says whether that one is
        only staged (its workflow has not committed it yet)."""
        first = lifecycle.versions[0]
        lookup_id = imported_lookup_id(self._imported_lookup_key(make=True), key_sha256)
        # the same key imported before migration 0013, under its unkeyed id
        unkeyed = imported_lookup_id(None, key_sha256) if self._unkeyed_lookup_ids() else None
        try:
            with self._store.write() as s:
                self._refuse_taken(s, lookup_id, unkeyed)
                s.add(_new_credential_row(spec, workflow_id, first.created_at))
                s.flush()
                s.add(
                    ImportedLookupRow(
                        lookup_id=lookup_id,
                        credential_id=spec.credential_id,
                        imported_at=first.created_at,
                    )
                )
                s.add(
                    CredentialVersionRow(
                        lookup_id=lookup_id,
                        credential_id=spec.credential_id,
                        number=1,
                        state=str(VersionState.PENDING),
                        salt=b"",
                        secret_hash=imported_hash(self._peppers.current, key_sha256),
                        pepper_id=f"{self._peppers.current_id}{REHASH_SEPARATOR}{IMPORTED_SHA256}",
                        uses=0,
                        created_at=first.created_at,
                        rotate_at=first.rotate_at,
                        warn_at=first.warn_at,
                        hard_expiry=first.hard_expiry,
                        grace_until=None,
                        state_changed_at=first.created_at,
                    )
                )
        except IntegrityError:  # another process imported the same key at the same instant
            with self._store.session() as s:
                self._refuse_taken(s, lookup_id, unkeyed)
            raise

    def _refuse_taken(self, s: Any, *lookup_ids: str | None) -> None:
        taken = next(
            (t for i in lookup_ids if i is not None and (t := s.get(ImportedLookupRow, i))), None
        )
        if taken is None:
            return
        cred = s.get(CredentialRow, taken.credential_id)
        if cred is not None and self._elsewhere(cred.environment):
            # imported once, ever, across environments; but not named outside its own
            raise AlreadyImportedError(
                "this API key was imported already, in another environment", "", False
            )
        staged = cred is not None and cred.current_version == 0
        raise AlreadyImportedError(
            f"this API key was imported already, as {taken.credential_id}"
            + (" (not yet committed by its workflow)" if staged else ""),
            taken.credential_id,
            staged,
        )

    def unstage_import(self, credential_id: str) -> None:
        """Remove a staged import whose workflow never committed it (its start failed, or it
        never reached Temporal); a committed one is left alone."""
        with self._store.write() as s:
            cred = s.get(CredentialRow, credential_id)
            if cred is not None and cred.current_version == 0:
                s.execute(
                    delete(ImportedLookupRow).where(
                        ImportedLookupRow.credential_id == credential_id
                    )
                )
                s.delete(cred)  # its version goes with it (ON DELETE CASCADE)

    # --- one-time hand-over ----------------------------------------------------------------

    def claim_secret(self, credential_id: str, number: int, actor: str) -> str | None:
        """The plaintext of version `number` if it has not been handed out yet (then never
        again); None when it was revealed already or its reveal window has passed."""
        with self._store.write() as s:
            # lock the row while taking the sealed copy: two concurrent claims must not both
            # get it (SQLite's write transaction serialises them already; PostgreSQL needs it)
            where = (
                CredentialVersionRow.credential_id == credential_id,
                CredentialVersionRow.number == number,
            )
            sealed = s.scalar(
                select(CredentialVersionRow.pending_secret).where(*where).with_for_update()
            )
            if sealed is None:
                return None
            s.execute(update(CredentialVersionRow).where(*where).values(pending_secret=None))
            plaintext = open_envelope(
                self._keyring, sealed, secret_context(credential_id, number)
            ).decode()
            kind = s.scalar(select(CredentialRow.kind).where(CredentialRow.id == credential_id))
            audit.append(
                s,
                audit.AuditEntry(
                    event_id=f"{credential_id}/v{number}:{kind}.secret_revealed",
                    at=datetime.now(UTC),
                    actor=actor,
                    action=f"{kind}.secret_revealed",
                    object_kind=str(kind),
                    object_id=credential_id,
                    version=number,
                ),
            )
        return plaintext

    # --- verification (hot path) -----------------------------------------------------------

    def verify(
        self, presented: str, required_scopes: Sequence[str] = (), *, writes: bool = True
    ) -> Verification:
        """`_verify`, counting an answer other than VALID for the audit trail's aggregate."""
        v = self._verify(presented, required_scopes, writes=writes)
        if v.code != VerificationCode.VALID:
            self._failures.add("credential", v.code, v.credential_id)
        return v

    def _verify(
        self, presented: str, required_scopes: Sequence[str], *, writes: bool
    ) -> Verification:
        """Check a presented API credential. Costs one indexed read and one HMAC whether or
        not the lookup id exists, so timing does not tell a wrong secret from an unknown key.

        With `writes=False` (the event loop's fast path) a credential that would need a write
        or a round trip (its usage limit, its rate limit, a re-hash under a new pepper, a move
        to a keyed lookup id) raises
        `WriteNeeded` before anything is counted: call again on a thread."""
        try:
            p = parse_credential(presented)
        except MalformedCredentialError:
            if presented.startswith(f"{CREDENTIAL_PREFIX}_"):
                return Verification(VerificationCode.NOT_FOUND)  # a typo: no lookup
            imported = self._presented_import(presented, writes=writes)
            if imported is None:
                return Verification(VerificationCode.NOT_FOUND)
            p = imported
        row, _ = self._lookup(p, "credential")
        if row is None:
            return Verification(VerificationCode.NOT_FOUND)
        # imported before migration 0013: found by its unkeyed lookup id, moved when it verifies
        unkeyed = (
            p.prefix == IMPORTED_PREFIX
            and self._unkeyed_imports is True
            and row.lookup_id == parse_imported(None, p.secret).lookup_id
        )
        if not writes and (
            row.remaining is not None
            or (row.rate_limit is not None and row.rate_limit_window)
            or row.pepper_id != self._peppers.current_id
            or unkeyed
        ):
            raise WriteNeeded
        code, retry_after, remaining = self._check(row, required_scopes)
        self._record(row.id, ok=code == VerificationCode.VALID)
        if code == VerificationCode.NOT_FOUND:  # a parked version: nothing to tell
            return Verification(code)
        if code == VerificationCode.VALID:
            self._upgrade_hash(row, p)
            if unkeyed:
                self._key_lookup_id(row, p)
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

    def _presented_import(self, presented: str, *, writes: bool) -> PresentedCredential | None:
        """A presented key not in keyrotor's format, as an imported key; None when no key has
        been imported (no lookup key), so that it is nobody's. An uncached read raises
        WriteNeeded when `writes` is False: not on the event loop."""
        if writes:
            key = self._imported_lookup_key()
            if key is None and not self._unkeyed_lookup_ids():
                return None
        else:
            key = self._lookup_key
            if key is None and self._unkeyed_imports is not True:
                raise WriteNeeded  # not known yet: read on a thread
        p = parse_imported(key, presented)
        if not writes and not self.rows.get(p.lookup_id)[0]:
            raise WriteNeeded
        return p

    def _imported_lookup_key(self, *, make: bool = False) -> bytes | None:
        """The key of imported API keys' lookup ids (`imported_lookup_id`): 32 random bytes
        made by the first import (`make`), kept in the store sealed under the master key. None
        while no import has made it. Read once per process once it exists: it never changes."""
        if self._lookup_key is None:
            blob = self._read_lookup_key()
            if blob is None and make:
                sealed = seal(
                    self._keyring, secrets.token_bytes(32), store_secret_context(LOOKUP_KEY)
                )
                try:
                    with self._store.write() as s:
                        s.add(
                            StoreSecretRow(
                                name=LOOKUP_KEY, sealed=sealed, created_at=datetime.now(UTC)
                            )
                        )
                except IntegrityError:
                    pass  # another process made it at the same moment: theirs is the key
                blob = self._read_lookup_key()
                if blob is None:
                    raise RuntimeError("the imported lookup key was stored but is not found")
            if blob is not None:
                self._lookup_key = open_envelope(
                    self._keyring, blob, store_secret_context(LOOKUP_KEY)
                )
        return self._lookup_key

    def _read_lookup_key(self) -> bytes | None:
        row = self._store.read_one(
            select(StoreSecretRow.sealed).where(StoreSecretRow.name == bindparam("name")),
            {"name": LOOKUP_KEY},
        )
        return None if row is None else bytes(row[0])

    def _unkeyed_lookup_ids(self) -> bool:
        """Whether keys imported before migration 0013 exist: their lookup ids stay unkeyed,
        so a presented key is also looked up by its unkeyed id. Read once per process: no
        more are made."""
        if self._unkeyed_imports is None:
            self._unkeyed_imports = (
                self._store.read_one(
                    select(ImportedLookupRow.lookup_id)
                    .where(ImportedLookupRow.keyed.is_(False))
                    .limit(1),
                    {},
                )
                is not None
            )
        return self._unkeyed_imports

    def _lookup(self, p: PresentedCredential, kind: str) -> tuple[Any, Any]:
        """(the row of the presented secret if it matches, else None; the row of its lookup id
        if the secret is wrong) - one read and one HMAC either way. A wrong secret for a known
        lookup id counts as a failure of that credential."""
        hit, row = self.rows.get(p.lookup_id)
        if not hit:
            generation = self.rows.generation
            row = self._store.read_one(self._verify_query, {"lookup": p.lookup_id})
            if row is None and p.prefix == IMPORTED_PREFIX and self._unkeyed_lookup_ids():
                unkeyed = parse_imported(None, p.secret).lookup_id  # imported before 0013
                if unkeyed != p.lookup_id:
                    row = self._store.read_one(self._verify_query, {"lookup": unkeyed})
            # Not what an imported key did not find: the key may be imported later, and only
            # a credential's own changes drop its cached rows.
            if row is not None or p.prefix != IMPORTED_PREFIX:
                self.rows.put(p.lookup_id, row.id if row else None, row, generation)
        computed = (
            self._peppers.hash_under(row.pepper_id, row.salt, p.secret, row.hash_algorithm)
            if row is not None
            else None
        )
        known = computed is not None
        if computed is None:  # the same work for an unknown lookup id or pepper
            computed = secret_hash(self._peppers.current, self._dummy_salt, p.secret, "SHA-256")
        matches = hmac.compare_digest(computed, row.secret_hash if row else self._dummy_hash)
        if row is None or row.kind != kind or self._elsewhere(row.environment):
            return None, None
        environment = row.environment if p.prefix == IMPORTED_PREFIX else p.environment
        if not known or not matches or row.environment != environment:
            self._record(row.id, ok=False)
            return None, row
        return row, None

    def forget(self, credential_id: str) -> None:
        """Drop a credential's cached rows now (this process made a change to it)."""
        self.rows.drop([credential_id])

    def _key_lookup_id(self, row: Any, p: PresentedCredential) -> None:
        """Move a key imported before migration 0013 from its unkeyed lookup id to the keyed
        one, now that it has been presented (the id needs the key's SHA-256, which the store
        does not keep). Makes the lookup key if no import has yet."""
        key = self._imported_lookup_key(make=True)
        keyed = parse_imported(key, p.secret).lookup_id
        self.forget(row.id)
        with self._store.write() as s:
            s.execute(
                update(CredentialVersionRow)
                .where(CredentialVersionRow.lookup_id == row.lookup_id)
                .values(lookup_id=keyed)
            )
            s.execute(
                update(ImportedLookupRow)
                .where(ImportedLookupRow.lookup_id == row.lookup_id)
                .values(lookup_id=keyed, keyed=True)
            )

    def _upgrade_hash(self, row: Any, p: PresentedCredential) -> None:
        """Move a hash made under an old pepper to the current one (pepper rotation)."""
        if row.pepper_id == self._peppers.current_id:
            return
        self.forget(row.id)
        salt = secrets.token_bytes(SALT_BYTES)
        with self._store.write() as s:
            s.execute(
                update(CredentialVersionRow)
                .where(CredentialVersionRow.lookup_id == row.lookup_id)
                .values(
                    salt=salt,
                    secret_hash=secret_hash(
                        self._peppers.current, salt, p.secret, row.hash_algorithm
                    ),
                    pepper_id=self._peppers.current_id,
                )
            )

    # --- pepper rotation: the forced part ------------------------------------------------------

    @property
    def current_pepper_id(self) -> str:
        return self._peppers.current_id

    def rehash_batch(self, cursor: str, limit: int) -> RehashBatch:
        """Re-hash under the current pepper the stored hashes of up to `limit` versions after
        `cursor` ("": from the start) whose outermost pepper is an older one; the secret is not
        needed (`rehash`: the hash under the old pepper becomes the inner layer). Idempotent: a
        row is only rewritten if its pepper is still the one read. Versions that can no longer
        verify (retired, expired, destroyed) are left as they are."""
        current = self._peppers.current_id
        t = _VERSIONS_TABLE
        query = (
            select(
                t.c.lookup_id,
                t.c.credential_id,
                t.c.state,
                t.c.pepper_id,
                t.c.secret_hash,
                CredentialRow.hash_algorithm,
            )
            .join(CredentialRow, CredentialRow.id == t.c.credential_id)
            .order_by(t.c.lookup_id)
            .limit(limit)
        )
        if cursor:
            query = query.where(t.c.lookup_id > cursor)
        with self._store.engine.connect() as db:
            rows = db.execute(query).all()
        stale = [r for r in rows if r.state in _VERIFYING and _outer(r.pepper_id) != current]
        rehashed = 0
        if stale:
            with self._store.write() as s:  # the batch's rows in one transaction
                for row in stale:
                    done = s.connection().execute(
                        update(t)
                        .where(t.c.lookup_id == row.lookup_id, t.c.pepper_id == row.pepper_id)
                        .values(
                            secret_hash=rehash(
                                self._peppers.current, row.secret_hash, row.hash_algorithm
                            ),
                            pepper_id=f"{current}{REHASH_SEPARATOR}{row.pepper_id}",
                        )
                    )
                    rehashed += done.rowcount
            self.rows.drop({row.credential_id for row in stale})
        last = rows[-1].lookup_id if len(rows) == limit else ""
        return RehashBatch(last, len(rows), rehashed)

    def pepper_status(self) -> dict[str, Any]:
        """Each pepper the stored hashes of versions that can still verify name: how many it
        is the outermost pepper of, and how many more need it underneath."""
        counts: dict[str, list[int]] = {pid: [0, 0] for pid in self._peppers.ids()}
        t = _VERSIONS_TABLE
        with self._store.engine.connect() as db:
            for (pepper_id,) in db.execute(
                select(t.c.pepper_id).where(t.c.state.in_([str(s) for s in _VERIFYING]))
            ):
                outer, *inner = pepper_id.split(REHASH_SEPARATOR)
                counts.setdefault(outer, [0, 0])[0] += 1
                for pid in inner:
                    if pid != IMPORTED_SHA256:  # not a pepper: an imported key's plain hash
                        counts.setdefault(pid, [0, 0])[1] += 1
        current = self._peppers.current_id
        listed = set(self._peppers.ids())

        def state(pid: str) -> str:
            return "current" if pid == current else "previous" if pid in listed else "unknown"

        return {
            "current": current,
            "peppers": [
                {"id": pid, "state": state(pid), "outermost": n, "underneath": below}
                for pid, (n, below) in counts.items()
            ],
        }

    # --- handles (hot path) -------------------------------------------------------------------

    def validate_handle(
        self,
        presented: str,
        user_id: str,
        context: dict[str, str],
        security: SecurityPolicies,
    ) -> HandleValidation:
        """`_validate_handle`, counting an answer other than VALID for the audit trail."""
        v = self._validate_handle(presented, user_id, context, security)
        if v.code != HandleCode.VALID:
            self._failures.add("handle", v.code, v.handle_id)
        return v

    def _validate_handle(
        self,
        presented: str,
        user_id: str,
        context: dict[str, str],
        security: SecurityPolicies,
    ) -> HandleValidation:
        """Validate a handle value for `user_id` in `context`; counts one use when VALID.

        A value that was exchanged for the next one and is presented after the reuse interval
        is a reuse (`REUSE_DETECTED`): the caller revokes the family. Anomalies (reuse, context
        drift, another user, bursts over the rate limit) are counted on the family."""
        row, code = self.handle_state(presented, security)
        if row is None or code is not None:
            anomaly = {
                HandleCode.REUSE_DETECTED: "reuse",
                HandleCode.NOT_FOUND: "failed validation",
            }.get(code or HandleCode.NOT_FOUND)
            return self._handle_answer(code or HandleCode.NOT_FOUND, row, security, anomaly)
        now = datetime.now(UTC)
        if row.user_id and user_id != row.user_id:  # an omitted user id is another user
            return self._handle_answer(HandleCode.USER_MISMATCH, row, security, "other user")
        bound = row.context or {}
        match = all(str(bound[k]) == str(v) for k, v in context.items() if k in bound)
        if not match and security.context_mismatch == "reject":
            return self._handle_answer(
                HandleCode.CONTEXT_MISMATCH, row, security, "context drift", match=False
            )
        rotation_required = row.state == VersionState.ACTIVE and now >= row.rotate_at
        if rotation_required and security.enforce_rotation:
            return self._handle_answer(HandleCode.ROTATION_REQUIRED, row, security, None, match)
        wait, left = self._limit(
            "handle",
            row.lookup_id,
            (security.rate_limit_per_handle, 60),
            self._handle_usage(row.lookup_id, row.max_usage),
        )
        if wait is not None:
            return self._handle_answer(
                HandleCode.RATE_LIMITED, row, security, "burst", match, retry_after=wait
            )
        if left is None or left < 0:
            return self._handle_answer(HandleCode.USAGE_EXHAUSTED, row, security, None, match)
        return self._handle_answer(
            HandleCode.VALID,
            row,
            security,
            None if match else "context drift",
            match,
            remaining=left,
            rotation_required=rotation_required,
        )

    def handle_state(
        self, presented: str, security: SecurityPolicies
    ) -> tuple[Any, HandleCode | None]:
        """The row of a presented handle value and why it cannot be used (None: it can)."""
        try:
            p = parse_token(presented, HANDLE_PREFIX)
        except MalformedCredentialError:
            return None, HandleCode.NOT_FOUND
        row, failed = self._lookup(p, "handle")
        if row is None:  # `failed`: a wrong value for a known lookup id
            return failed, HandleCode.NOT_FOUND
        now = datetime.now(UTC)
        status_code = _STATUS_CODES.get(row.status)
        if status_code is not None:
            return row, HandleCode(status_code.value)
        if row.expires_at is not None and row.expires_at <= now:
            return row, HandleCode.EXPIRED
        rotated_away = row.state == VersionState.RETIRED or (
            row.state == VersionState.GRACE
            and row.grace_until is not None
            and row.grace_until <= now
        )
        if rotated_away:
            return row, HandleCode.REUSE_DETECTED if security.prevent_reuse else HandleCode.EXPIRED
        version_code = _VERSION_CODES.get(row.state)
        if version_code is not None:
            return row, HandleCode(version_code.value)
        if row.hard_expiry <= now:
            return row, HandleCode.EXPIRED
        return row, None

    def _handle_answer(
        self,
        code: HandleCode,
        row: Any,
        security: SecurityPolicies,
        anomaly: str | None,
        match: bool = True,
        *,
        remaining: int | None = None,
        rotation_required: bool = False,
        retry_after: float | None = None,
    ) -> HandleValidation:
        if row is None:
            return HandleValidation(code)
        if security.track_usage and code != HandleCode.NOT_FOUND:  # failures: see _lookup
            self._record(row.id, ok=code == HandleCode.VALID)
        anomalies = row.anomaly_count
        if anomaly is not None and security.anomaly_detection:
            with self._store.write() as s:
                anomalies = s.execute(
                    update(CredentialRow)
                    .where(CredentialRow.id == row.id)
                    .values(anomaly_count=CredentialRow.anomaly_count + 1)
                    .returning(CredentialRow.anomaly_count)
                ).scalar_one()
                s.add(
                    EventRow(
                        event_id=f"handle/{row.id}/anomaly/{uuid.uuid4()}",
                        type="handleAnomalyDetected",
                        object_kind="handle",
                        object_id=row.id,
                        at=datetime.now(UTC),
                        data={"familyId": row.id, "anomaly": anomaly, "anomalies": anomalies},
                    )
                )
        if code == HandleCode.NOT_FOUND:  # tell the caller nothing about the family
            return HandleValidation(
                code, workflow_id=row.workflow_id, anomaly=anomaly, anomalies=anomalies
            )
        return HandleValidation(
            code=code,
            handle_id=row.id,
            workflow_id=row.workflow_id,
            type=row.type,
            user_id=row.user_id,
            version=row.number,
            expires_at=row.expires_at,
            rotation_due_at=row.rotate_at,
            rotation_required=rotation_required or code == HandleCode.ROTATION_REQUIRED,
            remaining_uses=remaining,
            context_match=match,
            anomaly=anomaly,
            anomalies=anomalies,
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
        rate = (
            (row.rate_limit, row.rate_limit_window)
            if row.rate_limit is not None and row.rate_limit_window
            else None
        )
        usage = self._credential_usage(row.id) if row.remaining is not None else None
        wait, left = self._limit("credential", row.id, rate, usage)
        if wait is not None:
            return VerificationCode.RATE_LIMITED, wait, row.remaining if left is None else left
        if left is None:
            return VerificationCode.VALID, None, None
        if left < 0:
            return VerificationCode.USAGE_EXCEEDED, None, 0
        return VerificationCode.VALID, None, left

    def _credential_usage(self, credential_id: str) -> _Usage:
        def seed() -> int:
            row = self._store.read_one(_CREDENTIAL_LEFT, {"key": credential_id})
            return int(row[0] or 0) if row is not None else 0

        def spend() -> int:
            left = self._store.write_batched(
                lambda db: db.execute(_USE_CREDENTIAL, {"cid": credential_id}).scalar_one_or_none()
            )
            return -1 if left is None else int(left)

        return _Usage(seed, spend)

    def _handle_usage(self, lookup_id: str, max_usage: int) -> _Usage:
        def seed() -> int:
            row = self._store.read_one(_HANDLE_USES, {"key": lookup_id})
            return max_usage - int(row[0]) if row is not None else 0

        def spend() -> int:
            uses = self._store.write_batched(
                lambda db: db.execute(
                    _USE_HANDLE, {"lookup": lookup_id, "max_usage": max_usage}
                ).scalar_one_or_none()
            )
            return -1 if uses is None else max_usage - int(uses)

        return _Usage(seed, spend)

    def _limit(
        self, kind: str, key: str, rate: tuple[int, float] | None, usage: _Usage | None
    ) -> tuple[float | None, int | None]:
        """Count one request of a credential or handle value (`key`: its id or lookup id)
        against its rate limit, and when that allows it, one use of its usage limit (either
        may be None): (the seconds to wait, the uses left if Redis counts them, else None)
        when rate limited, else (None, the uses left after this one: -1 when none were left;
        None without a usage limit). Exact, and shared by the API processes: with Redis one
        round trip for both, else the store's writes."""
        client = f"{kind}/{key}"
        if usage is not None and self._redis_limits is not None:
            counted = self._redis_limits.use(client, usage.seed, rate)
            if counted is not None:
                wait, left = counted
                if wait is None and left is not None and left >= 0:  # a use was counted
                    with self._usage_lock:
                        self._redis_uses[(kind, key)] = self._redis_uses.get((kind, key), 0) + 1
                return wait, left
        if rate is not None:
            wait = self._limiter.allow(client, *rate, time.time())
            if wait is not None:
                return wait, None
        return None, usage.spend() if usage is not None else None

    def _record(self, credential_id: str, *, ok: bool) -> None:
        with self._usage_lock:
            entry = self._usage.setdefault(credential_id, [0, 0, None])
            if ok:
                entry[0] += 1
                entry[2] = datetime.now(UTC)
            else:
                entry[1] += 1

    def audit_failures(self) -> int:
        """Append one audit record per kind (credential, handle) summing the verifications and
        validations answered other than VALID since the last call, by code, with how many
        distinct known credentials or handle families they named; returns how many records.
        The API calls this every minute: a flood of bad keys is one record a minute, not one
        per request."""
        now = datetime.now(UTC)
        since, codes, objects = self._failures.take(now)
        kinds = sorted({kind for kind, _ in codes})
        if not kinds:
            return 0
        with self._store.write() as s:
            for kind in kinds:
                details: dict[str, str | int] = {
                    code: n for (k, code), n in sorted(codes.items()) if k == kind
                }
                details |= {"distinct": len(objects.get(kind, ())), "since": since.isoformat()}
                audit.append(
                    s,
                    audit.AuditEntry(
                        event_id=f"{kind}.verification_failures/{uuid.uuid4()}",
                        at=now,
                        actor="keyrotor",
                        action=f"{kind}.verification_failures",
                        object_kind=kind,
                        object_id="*",
                        details=details,
                    ),
                )
        return len(kinds)

    def close(self) -> None:
        self._limiter.close()

    def flush_usage(self) -> int:
        """Write the buffered usage counts, and the uses counted in Redis, to the store, in one
        transaction; returns how many rows it updated. If the store fails, they stay buffered
        for the next flush."""
        with self._usage_lock:
            usage, self._usage = self._usage, {}
            redis_uses, self._redis_uses = self._redis_uses, {}
        if not usage and not redis_uses:
            return 0
        # one executemany: a busy second touches thousands of credentials. In the order of
        # their ids, as every process does: two processes' flushes then lock shared rows in
        # the same order (PostgreSQL), and the deadlock left between the statements is retried.
        rows = [
            {"cid": cid, "ok": ok, "failed": failed, "last": last}
            for cid, (ok, failed, last) in sorted(usage.items())
        ]
        statement = (
            update(CredentialRow)
            .where(CredentialRow.id == bindparam("cid"))
            .values(
                usage_count=CredentialRow.usage_count + bindparam("ok"),
                failure_count=CredentialRow.failure_count + bindparam("failed"),
                last_used_at=func.coalesce(
                    bindparam("last", type_=UTCDateTime()), CredentialRow.last_used_at
                ),
            )
        )
        flushes = [(statement, rows)] + [
            (
                _FLUSH_CREDENTIAL_USES if kind == "credential" else _FLUSH_HANDLE_USES,
                [{"key": key, "n": n} for (k, key), n in sorted(redis_uses.items()) if k == kind],
            )
            for kind in ("credential", "handle")
        ]

        def write(connection: Connection) -> None:
            for flush, values in flushes:
                for start in range(0, len(values), FLUSH_CHUNK):
                    connection.execute(flush, values[start : start + FLUSH_CHUNK])
                    # This thread holds the GIL while it binds a chunk: let the event loop in
                    # between, so a busy second's flush never stalls verification long.
                    time.sleep(0)

        try:
            self._store.write_retried(write)
        except Exception:  # nothing was written: keep it for the next flush
            with self._usage_lock:
                for cid, (ok, failed, last) in usage.items():
                    entry = self._usage.setdefault(cid, [0, 0, None])
                    entry[0] += ok
                    entry[1] += failed
                    entry[2] = max((t for t in (entry[2], last) if t is not None), default=None)
                for key, n in redis_uses.items():
                    self._redis_uses[key] = self._redis_uses.get(key, 0) + n
            raise
        return len(usage) + len(redis_uses)

    # --- reads -----------------------------------------------------------------------------

    def workflow_of(self, credential_id: str, kind: str = "credential") -> tuple[str, str]:
        """The id of the credential's (or handle family's) workflow and its status."""
        with self._store.session() as s:
            row = s.execute(
                select(
                    CredentialRow.workflow_id, CredentialRow.status, CredentialRow.environment
                ).where(CredentialRow.id == credential_id, CredentialRow.kind == kind)
            ).first()
        if row is None or self._elsewhere(row.environment):
            raise _not_found(kind, credential_id)
        return row[0], row[1]

    def _elsewhere(self, environment: str) -> bool:
        """Whether an object of `environment` is out of this process's KEYROTOR_ENVIRONMENT."""
        return self.environment is not None and environment != self.environment

    def get(
        self, credential_id: str, kind: str = "credential"
    ) -> tuple[CredentialRow, list[CredentialVersionRow]]:
        with self._store.session() as s:
            cred = s.get(CredentialRow, credential_id)
            if cred is None:
                archived = s.get(ArchivedCredentialRow, credential_id)
                if (
                    archived is not None
                    and archived.kind == kind
                    and not self._elsewhere(archived.environment)
                ):
                    raise CredentialArchivedError(
                        f"{kind} {credential_id} was {archived.status} and is archived since "
                        f"{iso(archived.archived_at)}: its audit trail has its history"
                    )
            if cred is None or cred.kind != kind or self._elsewhere(cred.environment):
                raise _not_found(kind, credential_id)
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
        kind: str = "credential",
        type: str | None = None,
    ) -> list[CredentialRow]:
        """Newest first; `after` (created_at, id) continues from a cursor."""
        with self._store.session() as s:
            q = select(CredentialRow).where(CredentialRow.kind == kind)
            if self.environment is not None:
                q = q.where(CredentialRow.environment == self.environment)
            if owner:
                q = q.where(CredentialRow.owner == owner)
            if type:
                q = q.where(CredentialRow.type == type)
            if status:
                q = q.where(CredentialRow.status == status)
            q = newest_first(q, CredentialRow, limit=limit, offset=offset, after=after)
            return list(s.scalars(q))

    def live_handles(self, user_id: str, type: str) -> int:
        """Active or suspended handle families of one user and type (the concurrency cap)."""
        with self._store.session() as s:
            q = select(func.count()).where(
                CredentialRow.kind == "handle",
                CredentialRow.user_id == user_id,
                CredentialRow.type == type,
                CredentialRow.status.in_([str(KeyStatus.ACTIVE), str(KeyStatus.SUSPENDED)]),
            )
            if self.environment is not None:
                q = q.where(CredentialRow.environment == self.environment)
            return s.scalar(q) or 0

    def handle_health(self, now: datetime) -> dict[str, int]:
        """Active and suspended families, those ending within an hour, and rotations due."""
        with self._store.session() as s:
            live = (CredentialRow.kind == "handle") & (CredentialRow.status == "active")

            def count(*where: Any) -> int:
                q = select(func.count()).select_from(CredentialRow).where(*where)
                return s.scalar(q) or 0

            due = (
                select(func.count())
                .select_from(CredentialVersionRow)
                .join(CredentialRow, CredentialRow.id == CredentialVersionRow.credential_id)
                .where(live, CredentialVersionRow.state == "active")
                .where(CredentialVersionRow.rotate_at <= now)
            )
            return {
                "activeHandles": count(live),
                "suspendedHandles": count(
                    CredentialRow.kind == "handle", CredentialRow.status == "suspended"
                ),
                "expiringWithin1h": count(live, CredentialRow.expires_at <= now + _HOUR),
                "rotationRequired": s.scalar(due) or 0,
            }

    def handle_statistics(self) -> dict[str, Any]:
        """Handle families by status and type, validations, failures and anomalies."""
        with self._store.session() as s:
            handles = CredentialRow.kind == "handle"
            by_status: dict[str, int] = {
                status: n
                for status, n in s.execute(
                    select(CredentialRow.status, func.count())
                    .where(handles)
                    .group_by(CredentialRow.status)
                )
            }
            by_type: dict[str, int] = {
                type_: n
                for type_, n in s.execute(
                    select(CredentialRow.type, func.count())
                    .where(handles)
                    .group_by(CredentialRow.type)
                )
            }
            sums = s.execute(
                select(
                    func.coalesce(func.sum(CredentialRow.usage_count), 0),
                    func.coalesce(func.sum(CredentialRow.failure_count), 0),
                    func.coalesce(func.sum(CredentialRow.anomaly_count), 0),
                ).where(handles)
            ).one()
        return {
            "totalHandles": sum(by_status.values()),
            "activeHandles": by_status.get(str(KeyStatus.ACTIVE), 0),
            "byStatus": by_status,
            "byType": by_type,
            "validations": int(sums[0]),
            "failedValidations": int(sums[1]),
            "anomalies": int(sums[2]),
        }
