"""Keys in the store: commit lifecycle transitions (activities) and use versions (hot path).

Ciphertexts and signatures are `kr:<key id>:<version>:<base64url payload>`, so a ciphertext of
a version in grace still decrypts after rotation, and one of a retired version fails clearly.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import re
import secrets
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from sqlalchemy import Connection, Table, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from core import audit
from core.algorithms import AlgorithmError, AlgorithmKind, Operation, resolve
from core.algorithms.base import Algorithm, UnsupportedOperationError
from core.changes import RowCache
from core.lifecycle import (
    LIVE_STATES,
    PROCESS_STATES,
    PROTECT_STATES,
    KeyLifecycle,
    KeyStatus,
    VersionState,
    next_rotation_at,
)
from core.objects import ImportWithdrawnError, KeySpec, KeyTransitionCommit
from core.policy import NO_MIGRATION, PQCPolicy
from core.providers.base import (
    KeyProvider,
    ProviderConfigurationError,
    ProviderError,
    VersionHandle,
    VersionMaterial,
)
from core.providers.measured import MeasuredProvider
from core.store.db import Store, newest_first
from core.store.models import AuditRecordRow, EventRow, KeyRow, KeyVersionRow
from core.warnings import event_data, project_warnings

log = logging.getLogger("keyrotor.keys")
PREFIX = "kr"
WRAPPED_PREFIX = "krw"
WRAPPABLE_BYTES = (16, 64)  # key material: AES-128 to 512-bit keys
_VERSION = re.compile(r"[0-9]{1,9}")
_PROTECT = frozenset(str(s) for s in PROTECT_STATES)
# versions still in play; any other state (retired, compromised, expired) is done for good
_LIVE_OR_PENDING = frozenset(str(s) for s in (*LIVE_STATES, VersionState.PENDING))
_PROCESS = frozenset(str(s) for s in PROCESS_STATES)
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_KEYS = cast(Table, KeyRow.__table__)
_VERSIONS = cast(Table, KeyVersionRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)
# The reads of every transition's commit, built once (building a statement costs more than
# running it on an indexed column).
_STORED_VERSIONS = select(
    _VERSIONS.c.number,
    _VERSIONS.c.state,
    _VERSIONS.c.algorithm,
    _VERSIONS.c.provider_key_ref,
    _VERSIONS.c.wrapped_material,
    _VERSIONS.c.public_key,
).where(_VERSIONS.c.key_id == bindparam("key_id"))
_VERSION_NUMBERS = select(_VERSIONS.c.number).where(_VERSIONS.c.key_id == bindparam("key_id"))
_UPDATE_KEY = update(_KEYS).where(_KEYS.c.id == bindparam("b_id"))
_INSERT_KEY = insert(_KEYS)
_INSERT_VERSION = insert(_VERSIONS)
_UPDATE_VERSION = update(_VERSIONS).where(
    _VERSIONS.c.key_id == bindparam("b_key"), _VERSIONS.c.number == bindparam("b_number")
)
_INSERT_EVENT = insert(_EVENTS)
PROVIDER_CACHE_ENTRIES = 100_000
VERSION_CACHE_ENTRIES = 50_000
_USE = (
    select(
        _VERSIONS.c.number,
        _VERSIONS.c.state,
        _VERSIONS.c.algorithm,
        _VERSIONS.c.provider,
        _VERSIONS.c.provider_key_ref,
        _VERSIONS.c.wrapped_material,
        _VERSIONS.c.public_key,
        _VERSIONS.c.hard_expiry,
        _VERSIONS.c.grace_until,
        _KEYS.c.environment,
    )
    .join(_KEYS, _KEYS.c.id == _VERSIONS.c.key_id)
    .where(_VERSIONS.c.key_id == bindparam("key"))
)
_ACTIVE_VERSION = _USE.where(_VERSIONS.c.state == "active").limit(1)
_NUMBERED_VERSION = _USE.where(_VERSIONS.c.number == bindparam("number"))


class KeyDomainError(Exception):
    """Base of the key domain errors (the HTTP edge maps each to a status)."""


class KeyNotFoundError(KeyDomainError):
    """No such key."""


class KeyStateError(KeyDomainError):
    """The key or version is in a state that does not allow the operation."""


class MalformedTokenError(KeyDomainError):
    """A ciphertext or signature string is not in keyrotor's format."""


class InvalidMaterialError(KeyDomainError):
    """Imported material is not a key of the algorithm it was given for."""


class ReservedMessageError(KeyDomainError):
    """A MAC key was asked to sign a message that begins with `DERIVE_LABEL`: its tag would
    be the secret `derive` expands for a context."""


class NoPublicKeyError(UnsupportedOperationError):
    """The key's algorithm has no public half (symmetric and MAC keys)."""


def version_handle(key_id: str, row: Any) -> VersionHandle:
    """What a provider needs of a stored key version (a `key_versions` row)."""
    return VersionHandle(
        key_id=key_id,
        number=row.number,
        algorithm=row.algorithm,
        provider_key_ref=row.provider_key_ref,
        wrapped_material=row.wrapped_material,
        public_key=row.public_key,
    )


PROBE = b"keyrotor import check"


def _check_material(algo: Algorithm, material: bytes, key_bits: int) -> None:
    """Refuse imported `material` unless it works as a key of `algo`: symmetric and MAC keys
    must be exactly `key_bits` long, asymmetric ones must parse (PKCS#8), and an encryption or
    signature with it must come back."""
    what = f"the material is not a key of {algo.name}"
    if algo.kind in (AlgorithmKind.SYMMETRIC, AlgorithmKind.MAC) and len(material) * 8 != key_bits:
        raise InvalidMaterialError(f"{what}: {len(material) * 8} bits, expected {key_bits}")
    try:
        public = algo.public_key(material)
        if Operation.ENCRYPT in algo.operations:
            ok = algo.decrypt(material, algo.encrypt(material, PROBE, b""), b"") == PROBE
        else:
            algo.verify(material, PROBE, algo.sign(material, PROBE))
            ok = True
    except Exception:  # whatever the parser or the operation raised: never the material
        ok = False
    asymmetric = algo.kind not in (AlgorithmKind.SYMMETRIC, AlgorithmKind.MAC)
    if not ok or (asymmetric and public is None):
        raise InvalidMaterialError(what)


def _new_key_row(spec: KeySpec, workflow_id: str, at: datetime) -> dict[str, Any]:
    """The columns of a new key's row that come from its spec (no version in use yet)."""
    return {
        "id": spec.key_id,
        "environment": spec.environment,
        "type": spec.type,
        "name": spec.name,
        "owner": spec.owner,
        "algorithm": spec.algorithm,
        "provider": spec.provider,
        "workflow_id": workflow_id,
        "created_by": spec.created_by,
        "metadata": dict(spec.metadata),
        "created_at": at,
        "current_version": 0,
    }


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


def format_token(key_id: str, version: int, payload: bytes, prefix: str = PREFIX) -> str:
    return f"{prefix}:{key_id}:{version}:{_b64e(payload)}"


def parse_token(token: str, key_id: str, prefix: str = PREFIX) -> tuple[int, bytes]:
    """The version and payload of a `kr:` token (`krw:` for wrapped keys) made by `key_id`."""
    parts = token.split(":")
    if len(parts) != 4 or parts[0] != prefix or not _VERSION.fullmatch(parts[2]):
        raise MalformedTokenError(f"expected {prefix}:<key id>:<version>:<payload>")
    if parts[1] != key_id:
        raise MalformedTokenError(f"this was made with key {parts[1]}, not {key_id}")
    return int(parts[2]), _b64d(parts[3])


def _header(key_id: str, version: int, prefix: str = PREFIX) -> bytes:
    # Bound into the AEAD so that a ciphertext cannot be relabelled with another version, nor
    # a wrapped key (prefix `krw`) be decrypted as data or data be unwrapped as a key.
    return f"{prefix}:{key_id}:{version}:".encode()


@dataclass(frozen=True)
class UseResult:
    """The output of a use operation and the version that served it."""

    value: bytes | str
    version: int


@dataclass(frozen=True)
class RewrapResult:
    """A ciphertext re-encrypted under the active version (the plaintext stays inside)."""

    ciphertext: str
    from_version: int
    version: int


@dataclass(frozen=True)
class DerivedKey:
    """Key material derived from a MAC key version: a secret for its caller only."""

    # repr=False: a derived key is as secret as a plaintext and must not reach a log line.
    material: bytes = field(repr=False)
    version: int


@dataclass(frozen=True)
class PublicKeyView:
    """One version's public key in the encodings verifiers use; nothing in it is secret.

    `raw`: the EC point (uncompressed X9.62), the 32 Ed25519 bytes, SubjectPublicKeyInfo DER
    for RSA (it carries the exponent as well as the modulus), the FIPS 203/204 or PQClean raw
    key for post-quantum algorithms, and keyrotor's KRPK container for hybrids. `pem`: SPKI
    PEM where a standard SPKI encoding exists. `jwk`: RFC 7517/7518/8037/8812 for classical
    keys, the draft "AKP" key type for ML-DSA; None where no JOSE encoding is registered.
    """

    version: int
    raw: bytes
    pem: str | None
    jwk: dict[str, str] | None


DERIVE_LABEL = b"keyrotor/derive/v1\0"
DERIVE_MIN_BYTES = 16
DERIVE_MAX_BYTES = 64
_PUBLIC_KINDS = frozenset({AlgorithmKind.SIGNATURE, AlgorithmKind.KEY_ENCAPSULATION})
# JOSE names (RFC 7518 3.4, RFC 8812 3.2) of the curves keyrotor signs with, and their `alg`.
_EC_JOSE = {"secp256r1": ("P-256", "ES256"), "secp256k1": ("secp256k1", "ES256K")}
_MLDSA_PUBLIC = (mldsa.MLDSA44PublicKey, mldsa.MLDSA65PublicKey, mldsa.MLDSA87PublicKey)
_MLKEM_PUBLIC = (mlkem.MLKEM768PublicKey, mlkem.MLKEM1024PublicKey)


def _fixed(n: int, size: int) -> str:
    return _b64e(n.to_bytes(size, "big"))


def public_key_view(key_id: str, number: int, algorithm: str, public: bytes) -> PublicKeyView:
    """Encode the public key a provider answered for a version (SPKI DER, or raw bytes for the
    algorithms without a standard SPKI: Falcon, ML-KEM-512, hybrids)."""
    try:
        loaded = serialization.load_der_public_key(public)
    except (ValueError, UnsupportedAlgorithm):
        # Not SPKI: the provider's raw encoding is the only one there is.
        return PublicKeyView(number, public, None, None)
    pem = loaded.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    spki = loaded.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    base = {"kid": f"{key_id}.v{number}"}
    jwk: dict[str, str] | None = None
    if isinstance(loaded, rsa.RSAPublicKey):
        nums = loaded.public_numbers()
        # keyrotor signs RSA with PSS, SHA-256, MGF1-SHA-256 and a 32-byte salt: that is PS256.
        jwk = {
            "kty": "RSA",
            "n": _fixed(nums.n, (nums.n.bit_length() + 7) // 8),
            "e": _fixed(nums.e, (nums.e.bit_length() + 7) // 8),
            "alg": "PS256",
            "use": "sig",
        } | base
        raw = spki
    elif isinstance(loaded, ec.EllipticCurvePublicKey):
        raw = loaded.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        jose = _EC_JOSE.get(loaded.curve.name)
        if jose is not None:
            size = (loaded.curve.key_size + 7) // 8
            point = loaded.public_numbers()
            jwk = {
                "kty": "EC",
                "crv": jose[0],
                "x": _fixed(point.x, size),
                "y": _fixed(point.y, size),
                "alg": jose[1],
                "use": "sig",
            } | base
    elif isinstance(loaded, ed25519.Ed25519PublicKey):
        raw = loaded.public_bytes_raw()
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64e(raw), "alg": "EdDSA", "use": "sig"}
        jwk |= base
    elif isinstance(loaded, _MLDSA_PUBLIC):
        raw = loaded.public_bytes_raw()
        # draft-ietf-cose-dilithium: kty AKP, alg the parameter set, pub the FIPS 204 key.
        jwk = {"kty": "AKP", "alg": algorithm, "pub": _b64e(raw), "use": "sig"} | base
    elif isinstance(loaded, _MLKEM_PUBLIC):
        # The JOSE ML-KEM drafts name KEM + key-wrap compositions, not what keyrotor's
        # encryption does: a JWK with one of their `alg`s would mislead, so none.
        raw = loaded.public_bytes_raw()
    else:
        raw = spki
    return PublicKeyView(number, raw, pem, jwk)


class KeyService:
    """The store side of keys: one instance per process, shared by activities and the API."""

    def __init__(
        self,
        store: Store,
        providers: Mapping[str, KeyProvider],
        environment: str | None = None,
        pqc: PQCPolicy = NO_MIGRATION,
    ) -> None:
        self._store = store
        self._providers = providers
        self.pqc = pqc
        self._provider_of: dict[str, str] = {}
        self._measured: dict[str, MeasuredProvider] = {}
        # the use path's version rows by (key id, number or None for the active one), kept
        # fresh by the API's `core.changes.ChangeFeed`
        self.rows = RowCache(VERSION_CACHE_ENTRIES)
        # The only environment whose keys this process reads and uses (None: every one); a key
        # of another environment does not exist here, so its id tells a caller nothing.
        self.environment = environment
        # uses of grace versions since the last flush (usage-aware retirement), by version
        self._grace_uses: dict[tuple[str, int], datetime] = {}
        self._grace_lock = threading.Lock()

    def forget(self, key_id: str) -> None:
        """Drop a key's cached versions now (this process saw a change to it committed)."""
        self.rows.drop([key_id])

    def in_process(self, key_id: str) -> bool:
        """Whether using this key runs in this process (the local provider), so that the API
        may call it on its event loop. A key's provider never changes: remembered once read."""
        name = self._provider_of.get(key_id)
        if name is None:
            with self._store.engine.connect() as db:
                name = db.scalar(select(_KEYS.c.provider).where(_KEYS.c.id == key_id))
            if name is None:
                return False  # unknown here: the caller's thread finds out and says so
            if len(self._provider_of) < PROVIDER_CACHE_ENTRIES:
                self._provider_of[key_id] = name
        return name == "local"

    def _outside(self, environment: str) -> bool:
        """Whether a key of `environment` is out of this process's scope."""
        return self.environment is not None and environment != self.environment

    def _check_scope(self, s: Session, key_id: str) -> None:
        if self.environment is not None:
            found = s.scalar(select(KeyRow.environment).where(KeyRow.id == key_id))
            if found is not None and self._outside(found):
                raise KeyNotFoundError(f"key {key_id} not found")

    def provider(self, name: str) -> KeyProvider:
        """The provider `name`, measured (`core.providers.measured`)."""
        measured = self._measured.get(name)
        if measured is None or measured.inner is not self._providers.get(name):
            try:
                measured = self._measured[name] = MeasuredProvider(self._providers[name])
            except KeyError:
                raise ProviderConfigurationError(f"provider {name!r} is not configured") from None
        return measured

    # --- lifecycle (called by activities only) -------------------------------------------

    def commit_transition(self, c: KeyTransitionCommit) -> str | None:
        """Project a lifecycle change and its audit record and event in one transaction;
        returns the algorithm of the version it made (`c.new_version`; a PQC migration may have
        chosen another than the key's), None when it made none.

        Idempotent: the transition id is the audit record's event id, so a retry after a
        commit changes nothing. New material is created before the transaction and stored in
        it; the local provider's material therefore never exists outside a committed version.
        """
        spec = c.spec
        have_version = False
        algorithm: str = spec.algorithm
        key_bits: int | None = spec.key_bits
        # Provider calls happen outside the write transaction (a provider may be remote), and
        # before it: a failed call is retried with the whole transition, and each call is
        # idempotent, so a retry after a commit that failed repeats them harmlessly.
        with self._store.engine.connect() as db:
            if audit.recorded_on(db, c.transition_id):
                return self._algorithm_of(db, spec.key_id, c.new_version)
            stored = db.execute(_STORED_VERSIONS, {"key_id": spec.key_id}).all()
        self._disable_at_provider(spec.key_id, spec.provider, c.lifecycle, stored)
        if c.new_version is not None:
            algorithms = {row.number: row.algorithm for row in stored}
            have_version = c.new_version in algorithms
            if spec.origin == "imported" and c.new_version == 1 and not have_version:
                raise ImportWithdrawnError(f"the import of key {spec.key_id} was taken back")
            previous = algorithms.get(c.new_version - 1)
            if previous is not None and self.pqc.enabled:
                # A rotation: the PQC policy may move the key to another algorithm. Decided by
                # the transition's own time, so a retried attempt decides the same.
                algorithm = self.pqc.next_algorithm(
                    previous, c.at, self.provider(spec.provider).supports
                )
                key_bits = spec.key_bits if algorithm == spec.algorithm else None
        material = None
        made: str | None = None  # the algorithm of the version this transition makes
        if c.new_version is not None:
            made = algorithms[c.new_version] if have_version else algorithm
            if not have_version:
                material = self.provider(spec.provider).create_version(
                    spec.key_id, c.new_version, algorithm, key_bits
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
        if material is not None:
            key_values["algorithm"] = algorithm  # a new version is the active one
        # Plain SQL statements, no ORM unit of work: every transition of every key runs this.
        with self._store.write() as s:
            if audit.recorded(s, c.transition_id):
                return self._algorithm_of(s.connection(), spec.key_id, c.new_version)
            db = s.connection()
            # Statements with their values passed at execution, not `.values(...)`: SQLAlchemy
            # then reuses the compiled statement instead of coercing each value into a new one.
            updated = db.execute(_UPDATE_KEY, {"b_id": spec.key_id, **key_values}).rowcount
            if not updated:
                workflow_id = c.transition_id.rsplit("/", 1)[0]
                db.execute(_INSERT_KEY, _new_key_row(spec, workflow_id, c.at) | key_values)
            in_store = set(db.scalars(_VERSION_NUMBERS, {"key_id": spec.key_id}))
            changes = []
            for v in lc.versions:
                deadlines = {
                    "state": str(v.state),
                    "rotate_at": v.rotate_at,
                    "warn_at": v.warn_at,
                    "hard_expiry": v.hard_expiry,
                    "grace_until": v.grace_until,
                    "state_changed_at": v.changed_at or c.at,
                    "held": v.held,
                }
                if v.number in in_store:
                    changes.append({"b_number": v.number, **deadlines})
                elif material is not None and v.number == c.new_version:
                    db.execute(
                        _INSERT_VERSION,
                        {
                            "key_id": spec.key_id,
                            "number": v.number,
                            "algorithm": algorithm,
                            "provider": spec.provider,
                            "provider_key_ref": material.provider_key_ref,
                            "wrapped_material": material.wrapped_material,
                            "public_key": material.public_key,
                            "created_at": v.created_at,
                            **deadlines,
                        },
                    )
                # else: created in an earlier attempt of this same transition
            if changes:
                db.execute(_UPDATE_VERSION, [{"b_key": spec.key_id, **c} for c in changes])
            # A version numbered past the workflow's last one was committed by a workflow task
            # that was lost (a crash before it completed) and replayed differently: not in use
            # until the workflow makes that version again.
            if any(n > lc.last_version for n in in_store):
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
            project_warnings(db, "key", spec.key_id, spec.environment, lc, c.at)
            db.execute(
                _INSERT_EVENT,
                {
                    "event_id": c.transition_id,
                    "type": c.event,
                    "object_kind": "key",
                    "object_id": spec.key_id,
                    "at": c.at,
                    "data": event_data(
                        {"keyId": spec.key_id, "version": c.version, "status": str(lc.status)}, c
                    ),
                },
            )
        return made

    def stage_import(
        self, spec: KeySpec, lifecycle: KeyLifecycle, material: bytes, workflow_id: str
    ) -> None:
        """Store an imported key's version 1 (BYOK), sealed, before its workflow starts: the
        workflow's first commit then finds the version made and activates it (audited as
        `key.imported`) instead of generating one. The provider must be able to import (local:
        sealed under the master key; Vault/OpenBao transit and AWS KMS: wrapped to the
        provider's wrapping key; Azure Key Vault: its key import; PKCS#11: token objects made by
        value).
        The material must be a key of `spec.algorithm` (the raw key for symmetric and MAC
        algorithms, PKCS#8 DER for asymmetric ones) and must work: it is used once here before
        it is sent anywhere."""
        provider = self.provider(spec.provider)
        _check_material(resolve(spec.algorithm), material, spec.key_bits)
        try:
            made = provider.import_version(spec.key_id, 1, spec.algorithm, material)
        except ProviderError as e:
            if e.retryable or isinstance(e, ProviderConfigurationError):
                raise
            # the error's type only: a provider's own text is not for the API's callers
            raise InvalidMaterialError(
                f"provider {spec.provider} refused it ({type(e).__name__})"
            ) from None
        try:
            self._store_import(spec, lifecycle, made, workflow_id)
        except Exception:
            if made.provider_key_ref:  # do not leave the material at the provider unowned
                with contextlib.suppress(ProviderError):
                    provider.destroy_version(
                        VersionHandle(
                            spec.key_id,
                            1,
                            spec.algorithm,
                            made.provider_key_ref,
                            made.wrapped_material,
                            made.public_key,
                        )
                    )
            raise

    def _store_import(
        self, spec: KeySpec, lifecycle: KeyLifecycle, made: VersionMaterial, workflow_id: str
    ) -> None:
        first = lifecycle.versions[0]
        now = first.created_at
        with self._store.write() as s:
            db = s.connection()
            if db.scalar(select(_KEYS.c.id).where(_KEYS.c.id == spec.key_id)) is not None:
                raise KeyStateError(f"key {spec.key_id} exists already")
            db.execute(
                _INSERT_KEY,
                _new_key_row(spec, workflow_id, now)  # none in use until the workflow commits it
                | {
                    "updated_at": now,
                    "status": str(lifecycle.status),
                    "expires_at": lifecycle.expires_at,
                    "next_rotation_at": None,
                },
            )
            db.execute(
                _INSERT_VERSION,
                {
                    "key_id": spec.key_id,
                    "number": 1,
                    "algorithm": spec.algorithm,
                    "provider": spec.provider,
                    "provider_key_ref": made.provider_key_ref,
                    "wrapped_material": made.wrapped_material,
                    "public_key": made.public_key,
                    "created_at": first.created_at,
                    "state": str(VersionState.PENDING),
                    "rotate_at": first.rotate_at,
                    "warn_at": first.warn_at,
                    "hard_expiry": first.hard_expiry,
                    "grace_until": None,
                    "state_changed_at": now,
                    "held": False,
                },
            )

    def unstage_import(self, key_id: str) -> None:
        """Remove a staged import whose workflow never committed it (the start failed), and
        destroy what a remote provider holds of it."""
        with self._store.write() as s:
            db = s.connection()
            if db.scalar(select(_KEYS.c.current_version).where(_KEYS.c.id == key_id)) != 0:
                return
            staged = db.execute(select(_VERSIONS).where(_VERSIONS.c.key_id == key_id)).first()
            db.execute(delete(_VERSIONS).where(_VERSIONS.c.key_id == key_id))
            db.execute(delete(_KEYS).where(_KEYS.c.id == key_id))
        if staged is not None and staged.provider_key_ref:
            try:
                self.provider(staged.provider).destroy_version(version_handle(key_id, staged))
            except ProviderError as e:
                log.warning(  # the error's type only, as for the cleanup's destructions
                    "%s: the staged import stays at %s (%s)",
                    key_id,
                    staged.provider,
                    type(e).__name__,
                )

    def flush_grace_uses(self) -> int:
        """Write the last use of each grace version used since the last call (the API calls
        this about once a second); returns how many versions."""
        with self._grace_lock:
            uses, self._grace_uses = self._grace_uses, {}
        if not uses:
            return 0
        # in key order, and retried on a deadlock, as the credentials' usage flush
        self._store.write_retried(
            lambda connection: connection.execute(
                update(_VERSIONS)
                .where(
                    _VERSIONS.c.key_id == bindparam("k"),
                    _VERSIONS.c.number == bindparam("n"),
                    or_(
                        _VERSIONS.c.last_used_at.is_(None),
                        _VERSIONS.c.last_used_at < bindparam("t"),
                    ),
                )
                .values(last_used_at=bindparam("t")),
                [{"k": k, "n": n, "t": t} for (k, n), t in sorted(uses.items())],
            )
        )
        return len(uses)

    def last_used(self, key_id: str, number: int) -> datetime | None:
        """When version `number` was last used in grace (None: never), as last flushed."""
        with self._store.engine.connect() as db:
            found: datetime | None = db.scalar(
                select(KeyVersionRow.last_used_at).where(
                    KeyVersionRow.key_id == key_id, KeyVersionRow.number == number
                )
            )
        return found

    def record_provider_unavailable(self, provider: str, key_id: str, error: str) -> None:
        """Event `providerUnavailable`: a transition of `key_id` found `provider` unreachable
        (the activity retries it). `error` is the error's class, never its text."""
        with self._store.write() as s:
            s.add(
                EventRow(
                    event_id=f"provider/{provider}/unavailable/{uuid.uuid4()}",
                    type="providerUnavailable",
                    object_kind="provider",
                    object_id=provider,
                    at=datetime.now(UTC),
                    data={"provider": provider, "keyId": key_id, "error": error},
                )
            )

    @staticmethod
    def _algorithm_of(db: Connection, key_id: str, number: int | None) -> str | None:
        if number is None:
            return None
        found: str | None = db.scalar(
            select(_VERSIONS.c.algorithm).where(
                _VERSIONS.c.key_id == key_id, _VERSIONS.c.number == number
            )
        )
        return found

    def _disable_at_provider(
        self, key_id: str, provider_name: str, lc: KeyLifecycle, stored: Sequence[Any]
    ) -> None:
        """Switch off at the provider the versions this transition ends (retired, compromised,
        expired): the store already refuses them, and the provider then refuses them too.

        Where the provider disables older versions with a newer one (`disables_older`), only
        the newest version below which every version is done is disabled, once: a version in
        grace older than a compromised one keeps working until its grace ends."""
        states = {row.number: row.state for row in stored}
        states |= {v.number: str(v.state) for v in lc.versions}  # versions pruned: done
        done = {n for n, state in states.items() if state not in _LIVE_OR_PENDING}
        was_done = {row.number for row in stored if row.state not in _LIVE_OR_PENDING}
        if done <= was_done:
            return  # this transition ends no version (most do not)
        provider = self.provider(provider_name)
        rows = {row.number: row for row in stored}
        if provider.disables_older:
            newest = _done_prefix(done)
            targets = [newest] if newest > _done_prefix(was_done) and newest in rows else []
        else:
            targets = sorted((done - was_done) & rows.keys())
        for number in targets:
            row = rows[number]
            handle = version_handle(key_id, row)
            try:
                provider.disable_version(handle)
            except ProviderError as e:
                if e.retryable:
                    raise  # the whole transition is tried again
                # The store refuses the version whatever the provider says: a provider that
                # refuses for good (permission) must not keep a compromised version in use.
                log.warning(
                    "%s v%d stays enabled at %s: %s",
                    key_id,
                    number,
                    provider_name,
                    type(e).__name__,
                )

    # --- use path --------------------------------------------------------------------------

    def _version(
        self, key_id: str, number: int | None, allowed: frozenset[str]
    ) -> tuple[KeyProvider, VersionHandle]:
        # A cached row, else one prepared statement (the use path runs this for every request);
        # the other reads below happen only on the way to an error.
        hit, row = self.rows.get((key_id, number))
        if not hit:
            query, params = (
                (_ACTIVE_VERSION, {"key": key_id})
                if number is None
                else (_NUMBERED_VERSION, {"key": key_id, "number": number})
            )
            generation = self.rows.generation
            row = self._store.read_one(query, params)
            if row is not None:
                self.rows.put((key_id, number), key_id, row, generation)
        if row is None or (self.environment is not None and row.environment != self.environment):
            with self._store.engine.connect() as db:
                key = db.execute(
                    select(KeyRow.status, KeyRow.environment).where(KeyRow.id == key_id)
                ).first()
            if key is None or (
                self.environment is not None and key.environment != self.environment
            ):
                raise KeyNotFoundError(f"key {key_id} not found")
            if number is None:
                raise KeyStateError(f"key {key_id} is {key.status}: it has no active version")
            raise KeyStateError(f"key {key_id} has no version {number}")
        if row.state not in allowed:
            raise KeyStateError(f"version {row.number} of key {key_id} is {row.state}")
        # The workflow moves versions on at their deadlines; should it be late (workers
        # down), the deadlines still hold here.
        now = datetime.now(UTC)
        if row.hard_expiry <= now:
            raise KeyStateError(f"version {row.number} of key {key_id} is past its lifetime")
        if row.state == VersionState.GRACE:
            if row.grace_until is not None and row.grace_until <= now:
                raise KeyStateError(f"version {row.number} of key {key_id} is past its grace")
            with self._grace_lock:  # flushed by flush_grace_uses
                self._grace_uses[(key_id, row.number)] = now
        return self.provider(row.provider), version_handle(key_id, row)

    def encrypt(self, key_id: str, plaintext: bytes, aad: bytes) -> UseResult:
        provider, v = self._version(key_id, None, _PROTECT)
        data = provider.encrypt(v, plaintext, _header(key_id, v.number) + aad)
        return UseResult(format_token(key_id, v.number, data), v.number)

    def decrypt(self, key_id: str, ciphertext: str, aad: bytes) -> UseResult:
        number, data = parse_token(ciphertext, key_id)
        provider, v = self._version(key_id, number, _PROCESS)
        return UseResult(provider.decrypt(v, data, _header(key_id, number) + aad), number)

    def wrap(self, key_id: str, key_material: bytes, aad: bytes) -> UseResult:
        """Encrypt a data key (16 to 64 bytes) under the active version, as a `krw:` token that
        only `unwrap` opens: /decrypt refuses it, and /unwrap refuses ordinary ciphertexts."""
        low, high = WRAPPABLE_BYTES
        if not low <= len(key_material) <= high:
            raise AlgorithmError(f"a wrapped key is {low} to {high} bytes; got {len(key_material)}")
        provider, v = self._version(key_id, None, _PROTECT)
        _require(v.algorithm, Operation.ENCRYPT, "wrap")
        header = _header(key_id, v.number, WRAPPED_PREFIX)
        data = provider.encrypt(v, key_material, header + aad)
        return UseResult(format_token(key_id, v.number, data, WRAPPED_PREFIX), v.number)

    def unwrap(self, key_id: str, wrapped: str, aad: bytes) -> UseResult:
        """The data key a `wrap` sealed, with the version (active or in grace) that sealed it."""
        number, data = parse_token(wrapped, key_id, WRAPPED_PREFIX)
        provider, v = self._version(key_id, number, _PROCESS)
        _require(v.algorithm, Operation.DECRYPT, "unwrap")
        header = _header(key_id, number, WRAPPED_PREFIX)
        return UseResult(provider.decrypt(v, data, header + aad), number)

    def sign(self, key_id: str, message: bytes) -> UseResult:
        provider, v = self._version(key_id, None, _PROTECT)
        if message.startswith(DERIVE_LABEL) and resolve(v.algorithm).kind == AlgorithmKind.MAC:
            raise ReservedMessageError(
                "a message beginning with keyrotor/derive/v1 cannot be signed with an HMAC key:"
                " its tag is the secret of a derived key"
            )
        return UseResult(format_token(key_id, v.number, provider.sign(v, message)), v.number)

    def verify(self, key_id: str, message: bytes, signature: str) -> UseResult:
        """Raises InvalidSignatureError when the signature does not verify."""
        number, sig = parse_token(signature, key_id)
        provider, v = self._version(key_id, number, _PROCESS)
        provider.verify(v, message, sig)
        return UseResult(b"", number)

    def rewrap(self, key_id: str, ciphertext: str, aad: bytes) -> RewrapResult:
        """Re-encrypt `ciphertext` (of the active or a grace version) under the active version.

        Always decrypts and encrypts, even a ciphertext of the active version (as AWS KMS
        ReEncrypt and Vault's rewrap do): the answer then proves the input authenticated, and
        carries a fresh nonce. The plaintext exists only inside this call."""
        number, data = parse_token(ciphertext, key_id)
        old_provider, old = self._version(key_id, number, _PROCESS)
        _require(old.algorithm, Operation.DECRYPT, "rewrap")
        new_provider, new = self._version(key_id, None, _PROTECT)
        _require(new.algorithm, Operation.ENCRYPT, "rewrap")
        plaintext = old_provider.decrypt(old, data, _header(key_id, number) + aad)
        out = new_provider.encrypt(new, plaintext, _header(key_id, new.number) + aad)
        return RewrapResult(format_token(key_id, new.number, out), number, new.number)

    def derive(
        self, key_id: str, context: bytes, length: int, number: int | None = None
    ) -> DerivedKey:
        """`length` bytes derived from a MAC key version and `context` (HKDF-SHA256, RFC 5869).

        The extract step is the provider's own MAC over a fixed label and the context, so the
        key never leaves a remote provider; the expand step binds the length as well, so a
        shorter output is not a prefix of a longer one. The active version unless `number`
        names one (active or in grace, like decrypt)."""
        if not DERIVE_MIN_BYTES <= length <= DERIVE_MAX_BYTES:
            raise AlgorithmError(
                f"length must be {DERIVE_MIN_BYTES} to {DERIVE_MAX_BYTES} bytes; got {length}"
            )
        provider, v = self._version(key_id, number, _PROTECT if number is None else _PROCESS)
        algorithm = resolve(v.algorithm)
        if algorithm.kind != AlgorithmKind.MAC:
            raise UnsupportedOperationError(
                f"derive needs an HMAC key; key {key_id} is {algorithm.name}"
            )
        prk = provider.sign(v, DERIVE_LABEL + context)
        info = DERIVE_LABEL + length.to_bytes(2, "big")
        okm = HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)
        return DerivedKey(okm, v.number)

    def public_key(self, key_id: str, number: int | None = None) -> PublicKeyView:
        """The public key of the active version, or of version `number` (active or in grace)."""
        provider, v = self._version(key_id, number, _PROTECT if number is None else _PROCESS)
        return self._public_view(key_id, provider, v)

    def jwks(self, key_id: str) -> list[dict[str, str]]:
        """The JWKs of the versions a verifier must accept now: active first, then grace.

        Versions without a JWK form are left out; a key with no usable version has none."""
        with self._store.session() as s:
            self._check_scope(s, key_id)
            key = s.get(KeyRow, key_id)
            if key is None:
                raise KeyNotFoundError(f"key {key_id} not found")
            numbers = list(
                s.scalars(
                    select(KeyVersionRow.number)
                    .where(KeyVersionRow.key_id == key_id, KeyVersionRow.state.in_(_PROCESS))
                    .order_by(KeyVersionRow.number.desc())
                )
            )
            algorithm = key.algorithm
        _require_public(key_id, algorithm)
        keys: list[dict[str, str]] = []
        for number in numbers:
            try:
                provider, v = self._version(key_id, number, _PROCESS)
            except KeyStateError:
                continue  # its deadline passed though the workflow has not moved it on yet
            jwk = self._public_view(key_id, provider, v).jwk
            if jwk is not None:
                keys.append(jwk)
        # newest first puts the active version (always the highest live number) first
        return keys

    def _public_view(self, key_id: str, provider: KeyProvider, v: VersionHandle) -> PublicKeyView:
        _require_public(key_id, v.algorithm)
        public = provider.public_key(v)
        if public is None:
            raise NoPublicKeyError(f"key {key_id} version {v.number} has no public key")
        return public_key_view(key_id, v.number, resolve(v.algorithm).name, public)

    # --- reads -----------------------------------------------------------------------------

    def workflow_of(self, key_id: str) -> tuple[str, str]:
        """The id of the key's workflow and the key's status (one indexed read)."""
        with self._store.session() as s:
            self._check_scope(s, key_id)
            row = s.execute(
                select(KeyRow.workflow_id, KeyRow.status).where(KeyRow.id == key_id)
            ).first()
        if row is None:
            raise KeyNotFoundError(f"key {key_id} not found")
        return row[0], row[1]

    def get(self, key_id: str) -> tuple[KeyRow, list[KeyVersionRow]]:
        with self._store.session() as s:
            self._check_scope(s, key_id)
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
        owner: str | None = None,
        environment: str | None = None,
    ) -> list[KeyRow]:
        """Newest first; `after` (created_at, id) continues from a cursor."""
        with self._store.session() as s:
            q = select(KeyRow)
            if self.environment is not None:
                q = q.where(KeyRow.environment == self.environment)
            for column, value in (
                (KeyRow.type, type),
                (KeyRow.status, status),
                (KeyRow.owner, owner),
                (KeyRow.environment, environment),
            ):
                if value:
                    q = q.where(column == value)
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


def _done_prefix(done: set[int]) -> int:
    """The highest n such that versions 1..n are all done (0: none)."""
    n = 0
    while n + 1 in done:
        n += 1
    return n


def _counts(s: Session, column: InstrumentedAttribute[str]) -> dict[str, int]:
    return {value: n for value, n in s.execute(select(column, func.count()).group_by(column))}


def _require(algorithm: str, operation: Operation, what: str) -> None:
    found = resolve(algorithm)
    if operation not in found.operations:
        raise UnsupportedOperationError(f"{what} needs a key that can {operation}: {found.name}")


def _require_public(key_id: str, algorithm: str) -> None:
    if resolve(algorithm).kind not in _PUBLIC_KINDS:
        raise NoPublicKeyError(
            f"key {key_id} is {resolve(algorithm).name}: symmetric and MAC keys have no public key"
        )
