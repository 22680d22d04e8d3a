"""The Temporal payload codec: every payload is AES-256-GCM encrypted before it leaves us.

Encrypted payloads carry `encoding: binary/encrypted` and the id of the key that sealed them,
so the codec key can rotate with the master key. Payloads that are not ours (plain JSON sent
from the Temporal UI or `temporal workflow signal`) pass through decode unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import temporalio.converter
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)
from temporalio.service import TLSConfig

from core.envelope import MasterKeyring
from core.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
PURPOSE = "temporal-payload-codec/v1"


class CodecError(ValueError):
    """A payload could not be decrypted (unknown key id or tampered)."""


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM payload codec keyed from the master keyring."""

    def __init__(self, keyring: MasterKeyring) -> None:
        self._key_id = keyring.current_id
        self._ciphers = {kid: AESGCM(keyring.derive(PURPOSE, kid)) for kid in keyring.ids()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encode_one(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decode_one(p) for p in payloads]

    def encode_one(self, p: Payload) -> Payload:
        nonce = os.urandom(12)
        data = nonce + self._ciphers[self._key_id].encrypt(
            nonce, p.SerializeToString(), self._key_id.encode()
        )
        return Payload(metadata={"encoding": ENCODING, KEY_ID: self._key_id.encode()}, data=data)

    def decode_one(self, p: Payload) -> Payload:
        if p.metadata.get("encoding") != ENCODING:
            return p
        kid = p.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise CodecError(f"payload sealed with unknown codec key {kid!r}")
        try:
            plain = cipher.decrypt(p.data[:12], p.data[12:], kid.encode())
        except (InvalidTag, ValueError) as e:
            raise CodecError("payload failed authentication") from e
        return Payload.FromString(plain)


def data_converter(keyring: MasterKeyring) -> DataConverter:
    """The converter every keyrotor Temporal client uses: payloads and failure text encrypted."""
    return dataclasses.replace(
        temporalio.converter.default(),
        payload_codec=EncryptionCodec(keyring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def connect_client(
    address: str,
    namespace: str,
    keyring: MasterKeyring,
    tls: TLSConfig | bool = False,
    api_key: str | None = None,
) -> Client:
    """A Temporal client that encrypts every payload with the keyring's codec key."""
    return await Client.connect(
        address,
        namespace=namespace,
        data_converter=data_converter(keyring),
        tls=tls,
        api_key=api_key,
    )


async def connect_with(settings: Settings, keyring: MasterKeyring) -> Client:
    """`connect_client` to the Temporal of `settings`: address, namespace, TLS, API key."""
    api_key = settings.temporal_api_key
    return await connect_client(
        settings.temporal_address,
        settings.temporal_namespace,
        keyring,
        temporal_tls(settings),
        api_key.get_secret_value() if api_key else None,
    )


class TemporalTLSError(ValueError):
    """The Temporal TLS settings are unusable (the message names the setting)."""


def temporal_tls(settings: Settings) -> TLSConfig | bool:
    """The TLS configuration of `settings`' Temporal connection; False for plain TCP. Reads
    the files now, so that a wrong path stops the start, naming the setting."""
    s = settings
    files = {"ca": s.temporal_tls_ca, "cert": s.temporal_tls_cert, "key": s.temporal_tls_key}
    if not (
        s.temporal_tls or s.temporal_api_key or s.temporal_tls_server_name or any(files.values())
    ):
        return False
    if bool(s.temporal_tls_cert) != bool(s.temporal_tls_key):
        raise TemporalTLSError(
            "KEYROTOR_TEMPORAL_TLS_CERT and KEYROTOR_TEMPORAL_TLS_KEY go together (mTLS)"
        )
    read: dict[str, bytes | None] = {}
    for name, path in files.items():
        try:
            read[name] = path.read_bytes() if path else None
        except OSError as e:
            setting = f"KEYROTOR_TEMPORAL_TLS_{name.upper()}"
            raise TemporalTLSError(f"{setting}: cannot read {path}: {e.strerror}") from None
    if not any(read.values()) and not s.temporal_tls_server_name:
        return True  # the system's roots, no client certificate
    return TLSConfig(
        server_root_ca_cert=read["ca"],
        client_cert=read["cert"],
        client_private_key=read["key"],
        domain=s.temporal_tls_server_name or None,
    )
