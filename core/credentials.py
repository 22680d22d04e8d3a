"""Secrets that callers present: admin API keys and API credentials (formats and hashing).

A secret is stored only as HMAC-SHA256(pepper, salt || secret) with a per-secret salt. The
pepper is never stored: it comes from `KEYROTOR_CREDENTIAL_PEPPER` or, when that is unset, is
derived from the master key; each hash records the id of its pepper so that peppers rotate.
Checks are constant-time.

An API credential looks like `krc_<environment>_<lookup id>_<secret><checksum>`:

- `krc_` and the environment make leaked keys easy to find for secret scanners and people;
- the lookup id (16 base32 characters) finds the stored hash without scanning;
- the secret is 32 random bytes in base64url (43 characters, 256 bits);
- the checksum (CRC32 of everything before it, 6 base62 characters) rejects typos and
  truncated keys before any lookup.

An API key imported from another system keeps its own format: it is found by the SHA-256 of
the whole key, which is what such systems store (`imported_lookup_id`, `parse_imported`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from core import audit
from core.envelope import MasterKeyring, _decode_key
from core.store.db import Store
from core.store.models import AdminKeyRow

ADMIN_PREFIX = "kra"
PEPPER_PURPOSE = "credential-pepper/v1"


class Role(StrEnum):
    """Admin API roles, from most to least powerful."""

    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    # for the services that check their callers' credentials: verify and validate only
    SERVICE = "service"


class AuthenticationError(Exception):
    """No valid admin key was presented (the message never repeats the key)."""


def keyed_hash(pepper: bytes, salt: bytes, secret: str) -> bytes:
    """HMAC-SHA256(pepper, salt || secret)."""
    return secret_hash(pepper, salt, secret, "SHA-256")


PEPPER_BYTES = 32
# between the pepper ids of a re-hashed hash's chain, outermost first (`PepperRing.hash_under`)
REHASH_SEPARATOR = "/"
# the innermost link of an imported API key's chain: the plain SHA-256 of the key, as the system
# it came from stored it (`imported_hash`)
IMPORTED_SHA256 = "imported-sha256"


class PepperError(ValueError):
    """The pepper setting is unusable (the message names the entry, never its value)."""


class PepperRing:
    """Peppers by id; the first is current (hashes new secrets), all verify.

    Rotation: put a new pepper first in `KEYROTOR_CREDENTIAL_PEPPER` and keep the old ones
    after it; each secret is re-hashed under the current pepper the next time it verifies, and
    an old pepper can be dropped once no hash names it.
    """

    def __init__(self, peppers: Sequence[tuple[str, bytes]]) -> None:
        if not peppers:
            raise PepperError("the pepper ring needs at least one pepper")
        self._peppers = dict(peppers)
        self.current_id = peppers[0][0]

    @classmethod
    def from_setting(cls, value: str | None, keyring: MasterKeyring) -> PepperRing:
        """From comma-separated base64 peppers, the first current; the peppers derived from the
        master keys always follow (verify only), so that hashes made before the setting was
        first set keep verifying, and move to the current pepper as they are used."""
        derived = [(kid, keyring.derive(PEPPER_PURPOSE, kid)) for kid in keyring.ids()]
        if not value:
            return cls(derived)
        peppers: list[tuple[str, bytes]] = []
        entries = value.split(",")
        for position, entry in enumerate(entries, start=1):
            where = f"credential pepper {position} of {len(entries)}"
            try:
                pepper = _decode_key(entry)
            except (binascii.Error, ValueError):
                raise PepperError(f"{where} is not valid base64") from None
            if len(pepper) != PEPPER_BYTES:
                raise PepperError(f"{where} decodes to {len(pepper)} bytes, expected 32")
            pid = "pp-" + hashlib.sha256(b"keyrotor pepper id\0" + pepper).hexdigest()[:16]
            peppers.append((pid, pepper))
        return cls(peppers + derived)

    def get(self, pepper_id: str) -> bytes | None:
        return self._peppers.get(pepper_id)

    def hash_under(self, pepper_id: str, salt: bytes, secret: str, algorithm: str) -> bytes | None:
        """The hash of `secret` as stored under `pepper_id`, or None when a pepper it names is
        not in the ring. `pepper_id` is one pepper's id (`secret_hash`), or, after a forced
        re-hash, a chain `outer/inner`: the hash under `inner` re-hashed under `outer`
        (`rehash`)."""
        if pepper_id == IMPORTED_SHA256:
            return hashlib.sha256(secret.encode()).digest()
        outer, _, inner = pepper_id.partition(REHASH_SEPARATOR)
        pepper = self._peppers.get(outer)
        if pepper is None:
            return None
        if not inner:
            return secret_hash(pepper, salt, secret, algorithm)
        below = self.hash_under(inner, salt, secret, algorithm)
        return None if below is None else rehash(pepper, below, algorithm)

    @property
    def current(self) -> bytes:
        return self._peppers[self.current_id]

    def ids(self) -> list[str]:
        return list(self._peppers)

    def __repr__(self) -> str:
        return f"PepperRing(ids={self.ids()!r})"


# --- API credentials and handles ---------------------------------------------------------------

CREDENTIAL_PREFIX = "krc"
HANDLE_PREFIX = "krh"
IMPORTED_PREFIX = ""  # an imported API key keeps the format it had
SECRET_BYTES = 32
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_LOOKUP_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
# secrets of 32 to 128 random bytes: 43 to 171 base64url characters
_TOKEN = re.compile(
    r"(?P<prefix>kr[ch])_(?P<env>[a-z][a-z0-9-]{0,31})_(?P<lookup>[a-z2-7]{16})_"
    r"(?P<secret>[A-Za-z0-9_-]{43,171})(?P<checksum>[0-9A-Za-z]{6})"
)
# a credential or handle value anywhere in a text (log lines), for redaction
VALUE_IN_TEXT = re.compile(r"\b(kr[ch])_[a-z][a-z0-9-]{0,31}_[a-z2-7]{16}_[A-Za-z0-9_-]+")
_HASHES = {"SHA-256": hashlib.sha256, "SHA-384": hashlib.sha384, "SHA-512": hashlib.sha512}


class MalformedCredentialError(ValueError):
    """The presented text is not a keyrotor credential or handle (wrong shape or checksum)."""


def _checksum(body: str) -> str:
    n = zlib.crc32(body.encode())
    digits = []
    for _ in range(6):
        n, r = divmod(n, 62)
        digits.append(_BASE62[r])
    return "".join(reversed(digits))


def new_lookup_id() -> str:
    """16 random base32 characters (80 bits): the public part that finds a secret's hash."""
    return "".join(secrets.choice(_LOOKUP_ALPHABET) for _ in range(16))


def new_secret(n_bytes: int = SECRET_BYTES) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(n_bytes)).rstrip(b"=").decode()


def secret_hash(pepper: bytes, salt: bytes, secret: str, algorithm: str) -> bytes:
    """HMAC-<algorithm>(pepper, salt || secret) (SHA-256, SHA-384 or SHA-512)."""
    return hmac.new(pepper, salt + secret.encode(), _HASHES[algorithm]).digest()


def rehash(pepper: bytes, stored: bytes, algorithm: str) -> bytes:
    """A stored hash re-hashed under another pepper, without the secret (the forced part of a
    pepper rotation): HMAC-<algorithm>(pepper, label || stored hash)."""
    return hmac.new(pepper, b"keyrotor pepper rehash\0" + stored, _HASHES[algorithm]).digest()


def imported_lookup_id(lookup_key: bytes | None, key_sha256: bytes) -> str:
    """The lookup id of an imported API key (one not in keyrotor's format), from the SHA-256 of
    the key: what the system it came from stored, and what verification computes from the
    presented key. 16 base32 characters (80 bits), like a generated lookup id.

    Keyed: an HMAC under the store's lookup key (`CredentialService`, sealed under the master
    key), so that the database alone does not let anyone test guesses of a key against it.
    `lookup_key=None` gives the unkeyed id that imports made before migration 0013 keep."""
    message = b"keyrotor imported lookup\0" + key_sha256
    if lookup_key is None:
        digest = hashlib.sha256(message).digest()
    else:
        digest = hmac.new(lookup_key, message, hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:16]


def imported_hash(pepper: bytes, key_sha256: bytes) -> bytes:
    """The stored hash of an imported API key: its SHA-256 re-hashed under the pepper
    (`rehash`), so the store never keeps the plain SHA-256. Verified through the pepper id
    `<pepper>/imported-sha256`, and replaced by an ordinary salted hash on its first use."""
    return rehash(pepper, key_sha256, "SHA-256")


def parse_imported(lookup_key: bytes | None, text: str) -> PresentedCredential:
    """A presented key that is not in keyrotor's format, as an imported key: found by the
    SHA-256 of the whole text (`imported_lookup_id`). Its environment is the credential's (the
    key does not say)."""
    digest = hashlib.sha256(text.encode()).digest()
    return PresentedCredential("", imported_lookup_id(lookup_key, digest), text, IMPORTED_PREFIX)


def format_token(prefix: str, environment: str, lookup_id: str, secret: str) -> str:
    body = f"{prefix}_{environment}_{lookup_id}_{secret}"
    return body + _checksum(body)


def format_credential(environment: str, lookup_id: str, secret: str) -> str:
    return format_token(CREDENTIAL_PREFIX, environment, lookup_id, secret)


@dataclass(frozen=True)
class PresentedCredential:
    environment: str
    lookup_id: str
    secret: str
    prefix: str = CREDENTIAL_PREFIX

    def __repr__(self) -> str:  # never print the secret
        return f"PresentedCredential({self.environment!r}, {self.lookup_id!r}, secret=***)"


def parse_token(text: str, prefix: str) -> PresentedCredential:
    """Split a presented credential (`krc_`) or handle (`krh_`); MalformedCredentialError if its
    shape or checksum is wrong (a typo or a truncated copy is caught here, before any lookup)."""
    m = _TOKEN.fullmatch(text)
    if m is None or m["prefix"] != prefix:
        raise MalformedCredentialError(f"not a keyrotor {prefix}_ value")
    if not hmac.compare_digest(_checksum(text[:-6]), m["checksum"]):
        raise MalformedCredentialError("the checksum does not match (a typo?)")
    return PresentedCredential(m["env"], m["lookup"], m["secret"], prefix)


def parse_credential(text: str) -> PresentedCredential:
    """`parse_token` for API credentials, whose secrets are always 32 bytes."""
    presented = parse_token(text, CREDENTIAL_PREFIX)
    if len(presented.secret) != 43:
        raise MalformedCredentialError("not a keyrotor API credential")
    return presented


@dataclass(frozen=True)
class AdminPrincipal:
    """Who is calling the admin API."""

    key_id: str
    name: str
    role: Role


def parse_admin_key(presented: str) -> tuple[str, str]:
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != ADMIN_PREFIX or not parts[1] or len(parts[2]) < 32:
        raise AuthenticationError("malformed admin key")
    return parts[1], parts[2]


AUTH_CACHE_SECONDS = 1.0
AUTH_CACHE_ENTRIES = 10_000

# one statement object, so SQLAlchemy reuses its compiled form on every request
_ADMIN_KEY_BY_ID = select(
    AdminKeyRow.id,
    AdminKeyRow.name,
    AdminKeyRow.role,
    AdminKeyRow.salt,
    AdminKeyRow.secret_hash,
    AdminKeyRow.pepper_id,
    AdminKeyRow.revoked_at,
).where(AdminKeyRow.id == bindparam("id"))


class AdminKeys:
    """Admin API keys in the store.

    Each hash records which master key its pepper came from, so adding a master key (the
    first one listed becomes current) keeps every admin key working; a key verified under an
    older pepper is re-hashed under the current one.
    """

    def __init__(self, store: Store, keyring: MasterKeyring) -> None:
        self._store = store
        # Admin keys always use peppers derived from the master keys.
        self._peppers = PepperRing.from_setting(None, keyring)
        # Same cost for unknown ids as for known ones: compare against a dummy hash.
        self._dummy_salt = secrets.token_bytes(16)
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[bytes, tuple[AdminPrincipal, float]] = {}

    def create(self, name: str, role: Role, actor: str, secret: str | None = None) -> str:
        """A new admin key; returns its plaintext, which is never stored."""
        key_id = secrets.token_hex(8)
        if secret is None:
            secret = secrets.token_urlsafe(32)
        return self._insert(key_id, name, role, secret, actor)

    def ensure(self, presented: str, name: str, role: Role) -> None:
        """Make sure `presented` (e.g. KEYROTOR_ADMIN_KEY) is a valid key with `role`."""
        key_id, secret = parse_admin_key(presented)
        with self._store.session() as s:
            exists = s.get(AdminKeyRow, key_id) is not None
        if not exists:
            try:
                self._insert(key_id, name, role, secret, "bootstrap")
                return
            except IntegrityError:
                pass  # another process starting at the same time inserted it first
        self.authenticate(presented)  # an id that exists with another secret is refused

    def _insert(self, key_id: str, name: str, role: Role, secret: str, actor: str) -> str:
        salt = secrets.token_bytes(16)
        now = datetime.now(UTC)
        pepper_id = self._peppers.current_id
        with self._store.write() as s:
            s.add(
                AdminKeyRow(
                    id=key_id,
                    name=name,
                    role=str(role),
                    salt=salt,
                    secret_hash=keyed_hash(self._peppers.current, salt, secret),
                    pepper_id=pepper_id,
                    created_at=now,
                )
            )
            audit.append(
                s,
                audit.AuditEntry(
                    event_id=f"admin-key/{key_id}/created",
                    at=now,
                    actor=actor,
                    action="admin_key.created",
                    object_kind="admin_key",
                    object_id=key_id,
                    details={"role": str(role), "name": name},
                ),
            )
        return f"{ADMIN_PREFIX}_{key_id}_{secret}"

    def authenticate(self, presented: str) -> AdminPrincipal:
        """The principal of a presented admin key (one indexed read and one HMAC).

        A key that authenticated is remembered for `AUTH_CACHE_SECONDS` (keyed by an HMAC of
        it under a per-process random key, never the key itself): a change to an admin key
        takes effect within that time."""
        digest = hmac.new(self._cache_key, presented.encode(), hashlib.sha256).digest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        principal = self._authenticate(presented)
        if len(self._cache) >= AUTH_CACHE_ENTRIES:
            self._cache.clear()
        self._cache[digest] = (principal, now + AUTH_CACHE_SECONDS)
        return principal

    def _authenticate(self, presented: str) -> AdminPrincipal:
        key_id, secret = parse_admin_key(presented)
        row = self._store.read_one(_ADMIN_KEY_BY_ID, {"id": key_id})
        pepper = self._peppers.get(row.pepper_id) if row else None
        salt = row.salt if row else self._dummy_salt
        expected = row.secret_hash if row else b"\0" * 32
        ok = hmac.compare_digest(
            keyed_hash(pepper or self._peppers.current, salt, secret), expected
        )
        if row is None or pepper is None or not ok or row.revoked_at is not None:
            raise AuthenticationError("invalid admin key")
        if row.pepper_id != self._peppers.current_id:
            self._rehash(row.id, secret)
        return AdminPrincipal(row.id, row.name, Role(row.role))

    def _rehash(self, key_id: str, secret: str) -> None:
        salt = secrets.token_bytes(16)
        pepper_id = self._peppers.current_id
        with self._store.write() as s:
            row = s.get(AdminKeyRow, key_id)
            if row is not None:
                row.salt = salt
                row.secret_hash = keyed_hash(self._peppers.current, salt, secret)
                row.pepper_id = pepper_id
