"""Secrets that callers present: admin API keys (and, later, API credentials and handles).

A secret is stored only as HMAC-SHA256(pepper, salt || secret) with a per-secret salt; the
pepper is derived from the master key and never stored. Checks are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from core import audit
from core.envelope import MasterKeyring
from core.store.db import Store
from core.store.models import AdminKeyRow

ADMIN_PREFIX = "kra"
PEPPER_PURPOSE = "credential-pepper/v1"


class Role(StrEnum):
    """Admin API roles, from most to least powerful."""

    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class AuthenticationError(Exception):
    """No valid admin key was presented (the message never repeats the key)."""


def keyed_hash(pepper: bytes, salt: bytes, secret: str) -> bytes:
    return hmac.new(pepper, salt + secret.encode(), hashlib.sha256).digest()


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


class AdminKeys:
    """Admin API keys in the store.

    Each hash records which master key its pepper came from, so adding a master key (the
    first one listed becomes current) keeps every admin key working; a key verified under an
    older pepper is re-hashed under the current one.
    """

    def __init__(self, store: Store, keyring: MasterKeyring) -> None:
        self._store = store
        self._keyring = keyring
        self._peppers = {kid: keyring.derive(PEPPER_PURPOSE, kid) for kid in keyring.ids()}
        # Same cost for unknown ids as for known ones: compare against a dummy hash.
        self._dummy_salt = secrets.token_bytes(16)

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
            self._insert(key_id, name, role, secret, "bootstrap")
        else:
            self.authenticate(presented)  # an id that exists with another secret is refused

    def _insert(self, key_id: str, name: str, role: Role, secret: str, actor: str) -> str:
        salt = secrets.token_bytes(16)
        now = datetime.now(UTC)
        pepper_id = self._keyring.current_id
        with self._store.write() as s:
            s.add(
                AdminKeyRow(
                    id=key_id,
                    name=name,
                    role=str(role),
                    salt=salt,
                    secret_hash=keyed_hash(self._peppers[pepper_id], salt, secret),
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
        key_id, secret = parse_admin_key(presented)
        with self._store.session() as s:
            row = s.get(AdminKeyRow, key_id)
        pepper = self._peppers.get(row.pepper_id) if row else None
        salt = row.salt if row else self._dummy_salt
        expected = row.secret_hash if row else b"\0" * 32
        ok = hmac.compare_digest(
            keyed_hash(pepper or self._peppers[self._keyring.current_id], salt, secret), expected
        )
        if row is None or pepper is None or not ok or row.revoked_at is not None:
            raise AuthenticationError("invalid admin key")
        if row.pepper_id != self._keyring.current_id:
            self._rehash(row.id, secret)
        return AdminPrincipal(row.id, row.name, Role(row.role))

    def _rehash(self, key_id: str, secret: str) -> None:
        salt = secrets.token_bytes(16)
        pepper_id = self._keyring.current_id
        with self._store.write() as s:
            row = s.get(AdminKeyRow, key_id)
            if row is not None:
                row.salt = salt
                row.secret_hash = keyed_hash(self._peppers[pepper_id], salt, secret)
                row.pepper_id = pepper_id
