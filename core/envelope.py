"""Versioned envelope encryption under the master key (local key material at rest).

Every blob gets its own random 256-bit data key (DEK); the DEK is wrapped under a master key
and the plaintext is encrypted under the DEK, both with AES-256-GCM. Blobs name the master key
that sealed them, so the keyring can hold old master keys while material is re-sealed.

Format, version 1:

    b"KRE" | 0x01 | len(key id) (1 byte) | key id (ASCII)      <- header
    | nonce (12) | wrapped DEK (32 + 16-byte tag)
    | nonce (12) | ciphertext of the plaintext + 16-byte tag

Both AES-GCM operations take header || context as associated data: a blob only opens for the
context it was sealed for (e.g. b"keyrotor/key_abc/v1"), and any change to the header fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"KRE"
FORMAT_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_WRAPPED_DEK_BYTES = KEY_BYTES + TAG_BYTES


class EnvelopeError(Exception):
    """A blob cannot be sealed or opened: bad format, unknown master key, wrong key or context,
    tampering, or a bad keyring. Messages never contain key or plaintext bytes."""


def master_key_id(key: bytes) -> str:
    """A stable, non-secret name for a master key (a domain-separated hash prefix)."""
    return "mk-" + hashlib.sha256(b"keyrotor master key id\0" + key).hexdigest()[:16]


def generate_master_key() -> str:
    """A new master key as unpadded URL-safe base64 of 32 random bytes."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).rstrip(b"=").decode()


def _decode_key(text: str) -> bytes:
    # Accept standard and URL-safe alphabets, with or without padding.
    normalized = text.strip().replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    return base64.b64decode(normalized, validate=True)


class MasterKeyring:
    """Master keys by id; the first one given is current (used to seal), all can open."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise EnvelopeError("the master keyring needs at least one key")
        self._keys: dict[str, bytes] = {}
        for position, key in enumerate(keys, start=1):
            if len(key) != KEY_BYTES:
                raise EnvelopeError(
                    f"master key {position} is {len(key)} bytes; master keys are {KEY_BYTES} bytes"
                )
            key_id = master_key_id(key)
            if key_id in self._keys:
                raise EnvelopeError(f"master key {position} ({key_id}) is listed twice")
            self._keys[key_id] = bytes(key)
        self._current_id = master_key_id(keys[0])
        # keys whose blobs were all re-sealed under a newer one: never used to open again
        self.retired: frozenset[str] = frozenset()

    def retire(self, key_ids: Iterable[str]) -> None:
        """Refuse, from now on, to open blobs sealed under `key_ids` (the store's record of
        retired master keys). The current key cannot be retired."""
        retired = frozenset(key_ids)
        if self._current_id in retired:
            raise EnvelopeError(
                f"the current master key {self._current_id} was retired: list its successor"
                " first in KEYROTOR_MASTER_KEY"
            )
        self.retired = retired

    @classmethod
    def parse(cls, value: str) -> MasterKeyring:
        """Parse comma-separated base64 keys (e.g. KEYROTOR_MASTER_KEY); the first is current."""
        entries = value.split(",")
        keys: list[bytes] = []
        for position, entry in enumerate(entries, start=1):
            # Errors name the position only: the value is a secret.
            where = f"master key {position} of {len(entries)}"
            if not entry.strip():
                raise EnvelopeError(f"{where} is empty")
            try:
                key = _decode_key(entry)
            except (binascii.Error, ValueError):
                raise EnvelopeError(f"{where} is not valid base64") from None
            if len(key) != KEY_BYTES:
                raise EnvelopeError(f"{where} decodes to {len(key)} bytes, expected {KEY_BYTES}")
            keys.append(key)
        return cls(keys)

    @property
    def current_id(self) -> str:
        """The id of the key that seals new blobs."""
        return self._current_id

    def ids(self) -> list[str]:
        """All key ids, current first."""
        return list(self._keys)

    def _key(self, key_id: str) -> bytes:
        # Private on purpose: raw master keys leave this module only as derived subkeys.
        try:
            return self._keys[key_id]
        except KeyError:
            raise EnvelopeError(f"master key {key_id!r} is not in the keyring") from None

    def derive(self, purpose: str, key_id: str | None = None) -> bytes:
        """A 32-byte subkey for `purpose`: HKDF-SHA256(master key, info=b"keyrotor/" + purpose).

        Used for keys that must follow the master key, like the payload codec key and the
        credential pepper; the same key and purpose always give the same bytes.
        """
        master = self._key(self._current_id if key_id is None else key_id)
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_BYTES,
            salt=None,
            info=b"keyrotor/" + purpose.encode(),
        )
        return hkdf.derive(master)

    def __repr__(self) -> str:
        return f"MasterKeyring(ids={self.ids()!r})"


def _header(key_id: str) -> bytes:
    raw_id = key_id.encode("ascii")
    return MAGIC + bytes([FORMAT_VERSION, len(raw_id)]) + raw_id


def _parse_header(blob: bytes) -> tuple[str, int]:
    """Return the master key id and the offset where the header ends."""
    fixed = len(MAGIC) + 2
    if len(blob) < fixed or blob[: len(MAGIC)] != MAGIC:
        raise EnvelopeError("not a keyrotor envelope")
    version = blob[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise EnvelopeError(f"unsupported envelope format version {version}")
    end = fixed + blob[len(MAGIC) + 1]
    if len(blob) < end + 2 * NONCE_BYTES + _WRAPPED_DEK_BYTES + TAG_BYTES:
        raise EnvelopeError("envelope is truncated")
    try:
        key_id = blob[fixed:end].decode("ascii")
    except UnicodeDecodeError:
        raise EnvelopeError("envelope master key id is not ASCII") from None
    return key_id, end


def seal(keyring: MasterKeyring, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt `plaintext` under a fresh data key wrapped by the current master key."""
    header = _header(keyring.current_id)
    aad = header + context
    dek = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    dek_nonce = secrets.token_bytes(NONCE_BYTES)
    wrapped_dek = AESGCM(keyring._key(keyring.current_id)).encrypt(dek_nonce, dek, aad)
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext, aad)
    return header + dek_nonce + wrapped_dek + nonce + ciphertext


def open_envelope(keyring: MasterKeyring, blob: bytes, context: bytes) -> bytes:
    """Decrypt a blob made by `seal` for the same context; EnvelopeError on any failure."""
    key_id, pos = _parse_header(blob)
    if key_id in keyring.retired:
        raise EnvelopeError(f"master key {key_id} was retired: its blobs were re-sealed")
    master = keyring._key(key_id)
    aad = blob[:pos] + context
    dek_nonce = blob[pos : pos + NONCE_BYTES]
    pos += NONCE_BYTES
    wrapped_dek = blob[pos : pos + _WRAPPED_DEK_BYTES]
    pos += _WRAPPED_DEK_BYTES
    nonce = blob[pos : pos + NONCE_BYTES]
    ciphertext = blob[pos + NONCE_BYTES :]
    try:
        dek = AESGCM(master).decrypt(dek_nonce, wrapped_dek, aad)
        return AESGCM(dek).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise EnvelopeError(
            "envelope does not authenticate (wrong master key or context, or tampered)"
        ) from None


def envelope_key_id(blob: bytes) -> str:
    """The id of the master key that sealed `blob` (to find blobs to re-seal)."""
    return _parse_header(blob)[0]
