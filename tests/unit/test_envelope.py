"""Envelope encryption under the master key: format, tampering, keyrings and derivation."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from core.envelope import (
    EnvelopeError,
    MasterKeyring,
    envelope_key_id,
    generate_master_key,
    master_key_id,
    open_envelope,
    seal,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
CONTEXT = b"keyrotor/key_abc/v1"


def header_length(blob: bytes) -> int:
    return 5 + blob[4]


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.fixture
def keyring() -> MasterKeyring:
    return MasterKeyring([KEY_A])


# --- format and round trip --------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=4096), context=st.binary(max_size=128))
def test_round_trip(plaintext: bytes, context: bytes) -> None:
    keyring = MasterKeyring([KEY_A])
    blob = seal(keyring, plaintext, context)
    assert open_envelope(keyring, blob, context) == plaintext


def test_format_layout(keyring: MasterKeyring) -> None:
    plaintext = b"some key material"
    blob = seal(keyring, plaintext, CONTEXT)
    key_id = master_key_id(KEY_A).encode()
    assert blob[:3] == b"KRE"
    assert blob[3] == 1
    assert blob[4] == len(key_id)
    assert blob[5 : 5 + len(key_id)] == key_id
    header = blob[: 5 + len(key_id)]
    assert len(blob) == len(header) + 12 + 48 + 12 + len(plaintext) + 16
    assert plaintext not in blob

    # Decode by hand with plain AES-GCM: the layout is exactly as documented.
    pos = len(header)
    dek = AESGCM(KEY_A).decrypt(blob[pos : pos + 12], blob[pos + 12 : pos + 60], header + CONTEXT)
    assert len(dek) == 32
    pos += 60
    assert AESGCM(dek).decrypt(blob[pos : pos + 12], blob[pos + 12 :], header + CONTEXT) == (
        plaintext
    )


def test_every_seal_uses_fresh_randomness(keyring: MasterKeyring) -> None:
    a = seal(keyring, b"same", CONTEXT)
    b = seal(keyring, b"same", CONTEXT)
    assert a != b
    h = header_length(a)
    assert a[:h] == b[:h]
    assert a[h : h + 60] != b[h : h + 60]  # nonce and wrapped DEK differ


# --- failures ---------------------------------------------------------------------------------


def test_wrong_context_fails(keyring: MasterKeyring) -> None:
    blob = seal(keyring, b"material", CONTEXT)
    for other in (b"keyrotor/key_abc/v2", b"keyrotor/key_abd/v1", b"", CONTEXT + b"\0"):
        with pytest.raises(EnvelopeError, match="authenticate"):
            open_envelope(keyring, blob, other)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_fails(data: st.DataObject) -> None:
    """Header, nonces, wrapped DEK and ciphertext are all covered."""
    keyring = MasterKeyring([KEY_A])
    blob = seal(keyring, b"material", CONTEXT)
    index = data.draw(st.integers(0, len(blob) - 1), label="index")
    with pytest.raises(EnvelopeError):
        open_envelope(keyring, flip(blob, index), CONTEXT)


@pytest.mark.parametrize("region", ["dek_nonce", "wrapped_dek", "nonce", "ciphertext", "tag"])
def test_tampered_region_fails(keyring: MasterKeyring, region: str) -> None:
    blob = seal(keyring, b"material", CONTEXT)
    h = header_length(blob)
    index = {
        "dek_nonce": h,
        "wrapped_dek": h + 12 + 5,
        "nonce": h + 60,
        "ciphertext": h + 72,
        "tag": len(blob) - 1,
    }[region]
    with pytest.raises(EnvelopeError, match="authenticate"):
        open_envelope(keyring, flip(blob, index), CONTEXT)


def test_changed_header_key_id_fails_even_if_the_keyring_holds_it() -> None:
    """Swap the id of a two-key keyring: the DEK is wrapped under A, the header claims B."""
    keyring = MasterKeyring([KEY_A, KEY_B])
    blob = seal(keyring, b"material", CONTEXT)
    id_a, id_b = master_key_id(KEY_A).encode(), master_key_id(KEY_B).encode()
    relabelled = blob.replace(id_a, id_b, 1)
    assert envelope_key_id(relabelled) == id_b.decode()
    with pytest.raises(EnvelopeError, match="authenticate"):
        open_envelope(keyring, relabelled, CONTEXT)


def test_wrong_master_key_fails() -> None:
    blob = seal(MasterKeyring([KEY_A]), b"material", CONTEXT)
    with pytest.raises(EnvelopeError, match="not in the keyring"):
        open_envelope(MasterKeyring([KEY_B]), blob, CONTEXT)


def test_unknown_format_version_is_named(keyring: MasterKeyring) -> None:
    blob = bytearray(seal(keyring, b"material", CONTEXT))
    blob[3] = 7
    with pytest.raises(EnvelopeError, match="version 7"):
        open_envelope(keyring, bytes(blob), CONTEXT)
    with pytest.raises(EnvelopeError, match="version 7"):
        envelope_key_id(bytes(blob))


@pytest.mark.parametrize("cut", [0, 2, 4, 10, 30, 80, 96])
def test_truncated_or_foreign_blobs_fail(keyring: MasterKeyring, cut: int) -> None:
    blob = seal(keyring, b"", CONTEXT)
    assert len(blob) > 96
    with pytest.raises(EnvelopeError):
        open_envelope(keyring, blob[:cut], CONTEXT)


def test_wrong_magic_fails(keyring: MasterKeyring) -> None:
    blob = seal(keyring, b"material", CONTEXT)
    with pytest.raises(EnvelopeError, match="not a keyrotor envelope"):
        open_envelope(keyring, b"XYZ" + blob[3:], CONTEXT)


def test_errors_never_contain_secret_bytes(keyring: MasterKeyring) -> None:
    plaintext = b"TOP-SECRET-MATERIAL"
    blob = seal(keyring, plaintext, CONTEXT)
    with pytest.raises(EnvelopeError) as info:
        open_envelope(keyring, flip(blob, len(blob) - 3), CONTEXT)
    message = str(info.value)
    for secret in (plaintext, KEY_A):
        assert secret.decode("latin-1") not in message
        assert secret.hex() not in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# --- keyrings ---------------------------------------------------------------------------------


def test_two_key_keyring_seals_with_first_and_opens_both() -> None:
    old_only = MasterKeyring([KEY_B])
    old_blob = seal(old_only, b"old", CONTEXT)

    rotated = MasterKeyring([KEY_A, KEY_B])
    assert rotated.current_id == master_key_id(KEY_A)
    assert rotated.ids() == [master_key_id(KEY_A), master_key_id(KEY_B)]
    new_blob = seal(rotated, b"new", CONTEXT)

    assert envelope_key_id(new_blob) == master_key_id(KEY_A)
    assert envelope_key_id(old_blob) == master_key_id(KEY_B)
    assert open_envelope(rotated, new_blob, CONTEXT) == b"new"
    assert open_envelope(rotated, old_blob, CONTEXT) == b"old"
    with pytest.raises(EnvelopeError):
        open_envelope(old_only, new_blob, CONTEXT)


def test_master_key_id_is_stable_and_hides_the_key() -> None:
    expected = "mk-" + hashlib.sha256(b"keyrotor master key id\0" + KEY_A).hexdigest()[:16]
    assert master_key_id(KEY_A) == expected
    assert master_key_id(KEY_A) != master_key_id(KEY_B)
    assert len(master_key_id(KEY_A)) == 19
    assert KEY_A.hex()[:16] not in master_key_id(KEY_A)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_keyring_rejects_wrong_key_sizes(size: int) -> None:
    with pytest.raises(EnvelopeError, match="32 bytes"):
        MasterKeyring([b"k" * size])


def test_keyring_rejects_empty_and_duplicates() -> None:
    with pytest.raises(EnvelopeError):
        MasterKeyring([])
    with pytest.raises(EnvelopeError, match="twice"):
        MasterKeyring([KEY_A, KEY_B, KEY_A])


def test_keyring_repr_shows_ids_only() -> None:
    text = repr(MasterKeyring([KEY_A]))
    assert master_key_id(KEY_A) in text
    assert repr(KEY_A) not in text


# --- parse ------------------------------------------------------------------------------------


def b64(key: bytes, *, urlsafe: bool, pad: bool) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.standard_b64encode)(key).decode()
    return text if pad else text.rstrip("=")


# Keys whose encodings use '+' / '/' (resp. '-' / '_'), so both alphabets are exercised.
ALPHABET_KEY = bytes([0xFB, 0xFF, 0xBF] * 10 + [0xFE, 0xEF])


@pytest.mark.parametrize("urlsafe", [True, False])
@pytest.mark.parametrize("pad", [True, False])
def test_parse_accepts_both_alphabets_with_or_without_padding(urlsafe: bool, pad: bool) -> None:
    value = b64(ALPHABET_KEY, urlsafe=urlsafe, pad=pad)
    assert ("-" in value) == urlsafe and ("+" in value) == (not urlsafe)
    assert MasterKeyring.parse(value).current_id == master_key_id(ALPHABET_KEY)


def test_parse_several_keys_first_is_current() -> None:
    value = f" {b64(KEY_A, urlsafe=True, pad=False)} , {b64(KEY_B, urlsafe=False, pad=True)}"
    keyring = MasterKeyring.parse(value)
    assert keyring.ids() == [master_key_id(KEY_A), master_key_id(KEY_B)]
    assert keyring.current_id == master_key_id(KEY_A)


def test_generated_master_keys_parse_and_differ() -> None:
    a, b = generate_master_key(), generate_master_key()
    assert a != b
    assert "+" not in a and "/" not in a
    keyring = MasterKeyring.parse(a)
    assert keyring.current_id != MasterKeyring.parse(b).current_id
    assert open_envelope(keyring, seal(keyring, b"x", CONTEXT), CONTEXT) == b"x"


SECRETISH = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw"  # 31 bytes of base64


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        (f"{b64(KEY_A, urlsafe=True, pad=False)},", "2 of 2 is empty"),
        ("not*base64!at#all~" * 3, "not valid base64"),
        ("secret-value-with-é-in-it", "not valid base64"),
        (SECRETISH, "expected 32"),
        (f"{b64(KEY_A, urlsafe=True, pad=False)},{SECRETISH}", "2 of 2"),
        (b64(b"k" * 48, urlsafe=True, pad=True), "48 bytes"),
    ],
)
def test_parse_errors_are_clear_and_never_echo_the_value(value: str, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason) as info:
        MasterKeyring.parse(value)
    message = str(info.value)
    for part in value.split(","):
        if part.strip():
            assert part.strip() not in message
            assert part.strip()[:8] not in message
    assert info.value.__cause__ is None


# --- derive -----------------------------------------------------------------------------------


def test_derive_is_hkdf_sha256_of_the_current_key() -> None:
    keyring = MasterKeyring([KEY_A, KEY_B])
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyrotor/codec").derive(
        KEY_A
    )
    assert keyring.derive("codec") == expected
    assert keyring.derive("codec", master_key_id(KEY_A)) == expected


def test_derive_is_deterministic_and_separated() -> None:
    keyring = MasterKeyring([KEY_A, KEY_B])
    codec = keyring.derive("codec")
    assert len(codec) == 32
    assert MasterKeyring([KEY_A]).derive("codec") == codec
    assert keyring.derive("pepper") != codec
    assert keyring.derive("codec", master_key_id(KEY_B)) != codec
    assert keyring.derive("codec", master_key_id(KEY_B)) == MasterKeyring([KEY_B]).derive("codec")
    assert not hmac.compare_digest(codec, KEY_A)


def test_derive_with_unknown_key_id_fails() -> None:
    with pytest.raises(EnvelopeError, match="not in the keyring"):
        MasterKeyring([KEY_A]).derive("codec", "mk-0000000000000000")
