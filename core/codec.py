"""The Temporal payload codec: every payload is AES-256-GCM encrypted before it leaves us.

Encrypted payloads carry `encoding: binary/encrypted` and the id of the key that sealed them,
so the codec key can rotate with the master key. Payloads that are not ours (plain JSON sent
from the Temporal UI or `temporal workflow signal`) pass through decode unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import temporalio.converter
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import (
    AdvancedJSONEncoder,
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
    PayloadCodec,
    value_to_type,
)
from temporalio.service import TLSConfig

from core.envelope import MasterKeyring
from core.runtime import temporal_starting
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


# --- JSON payloads: the SDK's format, converted faster ----------------------------------------
#
# Every transition converts its commit's input and result (the key's spec and lifecycle) to
# JSON and back. The SDK's converter deep-copies each dataclass (`dataclasses.asdict`) and
# evaluates its type hints again for every value it decodes; these produce the same JSON and
# the same objects from a plan built once per type. Types they do not plan for go to the SDK.

Decode = Callable[[Any], Any]


class _Encoder(AdvancedJSONEncoder):
    """`AdvancedJSONEncoder` without the deep copy: a dataclass becomes a flat dict of its
    fields and the encoder recurses into them (same JSON, `sort_keys` orders both alike)."""

    def default(self, o: Any) -> Any:
        names = _field_names(type(o))
        if names is not None:
            return {name: getattr(o, name) for name in names}
        return super().default(o)


_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


def _field_names(cls: type) -> tuple[str, ...] | None:
    try:
        return _FIELD_NAMES[cls]
    except KeyError:
        is_dc = dataclasses.is_dataclass(cls)
        names = tuple(f.name for f in dataclasses.fields(cls)) if is_dc else None
        _FIELD_NAMES[cls] = names
        return names


def _sdk(hint: Any) -> Decode:
    return lambda value: value_to_type(hint, value, _CONVERTERS)


def _plan(hint: Any) -> Decode:
    """A function turning decoded JSON into `hint`, as `value_to_type` does (same errors: a
    TypeError for a value of the wrong shape)."""
    if hint is datetime:
        return _datetime
    if hint is str or hint is bool:
        return _sdk(hint)  # checks only: cheap in the SDK
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _plan(args[0] if args[1] is type(None) else args[1])
        return lambda value: None if value is None else inner(value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _plan(args[0])
        return lambda value: tuple(item(v) for v in _list(value))
    if isinstance(hint, type) and issubclass(hint, enum.Enum) and issubclass(hint, str):
        return lambda value: hint(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        fields = dataclasses.fields(hint)
        if all(f.init for f in fields):
            return _dataclass(hint, fields)
    return _sdk(hint)


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise TypeError(f"Expected datetime or ISO8601 string, got {type(value)}")
    try:
        return datetime.fromisoformat(value)
    except ValueError as err:
        raise TypeError(f"Failed parsing datetime string: {value}") from err


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"Expected a list, got {type(value)}")
    return value


def _dataclass(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> Decode:
    hints = typing.get_type_hints(cls)
    plans: dict[str, Decode] | None = None

    def decode(value: Any) -> Any:
        nonlocal plans
        if not isinstance(value, dict):
            raise TypeError(f"Cannot convert to dataclass {cls}, value is {type(value)} not dict")
        if plans is None:  # planned on first use (a dataclass may refer to itself), whole:
            # activity threads decode at the same time, and none may see half a plan
            plans = {f.name: _plan(hints[f.name]) for f in fields}
        kwargs = {}
        for name, plan in plans.items():
            if name in value:  # unknown keys are ignored, missing ones fail in __init__
                try:
                    kwargs[name] = plan(value[name])
                except Exception as err:
                    raise TypeError(f"Failed converting field {name} on dataclass {cls}") from err
        return cls(**kwargs)

    return decode


class _DataclassConverter(JSONTypeConverter):
    """Decodes dataclasses by their plans; everything else is the SDK's."""

    def __init__(self) -> None:
        self._plans: dict[type, Decode] = {}

    def to_typed_value(self, hint: type, value: Any) -> Any:
        plan = self._plans.get(hint)
        if plan is None:
            if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
                return JSONTypeConverter.Unhandled
            plan = self._plans[hint] = _plan(hint)
        return plan(value)


_CONVERTERS: list[JSONTypeConverter] = [_DataclassConverter()]


# Stateless, so shared, as the SDK shares its own: every workflow instance makes a converter.
_ENCODINGS = tuple(
    JSONPlainPayloadConverter(encoder=_Encoder, custom_type_converters=_CONVERTERS)
    if isinstance(c, JSONPlainPayloadConverter)
    else c
    for c in DefaultPayloadConverter.default_encoding_payload_converters
)


class PayloadConverter(CompositePayloadConverter):
    """The SDK's default payload converter with the JSON part above."""

    def __init__(self) -> None:
        super().__init__(*_ENCODINGS)


def data_converter(keyring: MasterKeyring) -> DataConverter:
    """The converter every keyrotor Temporal client uses: payloads and failure text encrypted."""
    return dataclasses.replace(
        temporalio.converter.default(),
        payload_converter_class=PayloadConverter,
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
    temporal_starting()  # the SDK's runtime starts even if the connection then fails
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
