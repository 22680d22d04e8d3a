"""The codec endpoints the Temporal UI and CLI call to show decrypted payloads to operators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from api.auth import Permission, principal, require
from api.errors import APIError
from core.codec import CodecError, EncryptionCodec

router = APIRouter(prefix="/codec", tags=["codec"])


async def _authorize(request: Request) -> None:
    settings = request.app.state.services.settings
    origin = request.headers.get("origin")
    client = request.client.host if request.client else ""
    if (
        request.app.state.dev_ui_codec
        and origin in settings.ui_origins()
        and client in ("127.0.0.1", "::1")
    ):
        return  # `keyrotor dev` only: the local dev UI has no way to present an admin key
    await require(Permission.CODEC)(request, await principal(request))


async def _payloads(request: Request) -> Payloads:
    try:
        return json_format.Parse(await request.body(), Payloads())
    except (json_format.ParseError, UnicodeDecodeError, ValueError):
        raise APIError(400, "INVALID_REQUEST", 'body must be {"payloads": [...]}') from None


@router.post("/encode")
async def encode(request: Request) -> dict[str, Any]:
    """Encrypt payloads (Temporal codec server protocol)."""
    await _authorize(request)
    codec: EncryptionCodec = request.app.state.codec
    out = Payloads(payloads=await codec.encode(list((await _payloads(request)).payloads)))
    return json_format.MessageToDict(out)


@router.post("/decode")
async def decode(request: Request) -> dict[str, Any]:
    """Decrypt payloads for an authenticated operator (Temporal codec server protocol)."""
    await _authorize(request)
    codec: EncryptionCodec = request.app.state.codec
    try:
        out = Payloads(payloads=await codec.decode(list((await _payloads(request)).payloads)))
    except CodecError as e:
        raise APIError(400, "INVALID_REQUEST", str(e)) from None
    return json_format.MessageToDict(out)
