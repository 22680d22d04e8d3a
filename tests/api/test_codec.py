"""The Temporal remote codec endpoints (`/codec/encode`, `/codec/decode`) the UI and CLI call.

The body is Temporal's codec server protocol: `{"payloads": [{"metadata": {...}, "data": ...}]}`
with every metadata value and the data base64-encoded. No Temporal server is needed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.api.common.v1 import Payload

from api.app import create_app
from core.codec import KEY_ID, EncryptionCodec
from core.credentials import AdminKeys, Role
from core.services import Services
from core.settings import Settings

UI_ORIGIN = "http://localhost:8233"
SECRET = "kr-secret-handle-7f3a9c"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def json_payload(value: Any) -> dict[str, Any]:
    """A payload as the Temporal UI or `temporal workflow signal --input` sends it."""
    return {
        "metadata": {"encoding": b64(b"json/plain")},
        "data": b64(json.dumps(value).encode()),
    }


def new_key(services: Services, role: Role) -> str:
    keys = AdminKeys(services.store, services.keyring)
    return keys.create(f"test-{role}", role, "test")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def http(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyrotor.test") as c:
        yield c


@pytest.fixture
def operator(services: Services) -> dict[str, str]:
    return bearer(new_key(services, Role.OPERATOR))


async def test_encode_then_decode_round_trips_and_hides_the_plaintext(
    http: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    sent = [json_payload({"value": SECRET}), json_payload(["second", 2])]
    r = await http.post("/codec/encode", json={"payloads": sent}, headers=operator)
    assert r.status_code == 200, r.text
    encoded = r.json()["payloads"]
    assert len(encoded) == 2
    for p in encoded:
        assert unb64(p["metadata"]["encoding"]) == b"binary/encrypted"
        assert unb64(p["metadata"][KEY_ID])  # names the codec key that sealed it
        assert SECRET.encode() not in unb64(p["data"])
    assert SECRET not in r.text and b64(SECRET.encode()) not in r.text
    # a fresh nonce per payload: the same input never encodes to the same bytes
    again = await http.post("/codec/encode", json={"payloads": sent[:1]}, headers=operator)
    assert again.json()["payloads"][0]["data"] != encoded[0]["data"]

    r = await http.post("/codec/decode", json={"payloads": encoded}, headers=operator)
    assert r.status_code == 200, r.text
    assert r.json() == {"payloads": sent}
    assert json.loads(unb64(r.json()["payloads"][0]["data"])) == {"value": SECRET}


async def test_decode_passes_unencrypted_payloads_through(
    http: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    plain = json_payload({"reason": "suspected leak", "actor": "ops"})
    r = await http.post("/codec/decode", json={"payloads": [plain]}, headers=operator)
    assert r.status_code == 200, r.text
    assert r.json() == {"payloads": [plain]}


async def test_decode_reads_what_the_worker_codec_wrote(
    services: Services, http: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    codec = EncryptionCodec(services.keyring)
    original = Payload(
        metadata={"encoding": b"json/plain", "messageType": b"RotationResult"},
        data=json.dumps({"fromVersion": 1, "toVersion": 2}).encode(),
    )
    (sealed,) = await codec.encode([original])
    wire = {
        "metadata": {k: b64(v) for k, v in sealed.metadata.items()},
        "data": b64(sealed.data),
    }
    r = await http.post("/codec/decode", json={"payloads": [wire]}, headers=operator)
    assert r.status_code == 200, r.text
    (got,) = r.json()["payloads"]
    assert {k: unb64(v) for k, v in got["metadata"].items()} == dict(original.metadata)
    assert unb64(got["data"]) == original.data

    # and the other way: what the endpoint encodes, the worker's codec decodes
    r = await http.post(
        "/codec/encode", json={"payloads": [json_payload(SECRET)]}, headers=operator
    )
    (enc,) = r.json()["payloads"]
    back = await codec.decode(
        [
            Payload(
                metadata={k: unb64(v) for k, v in enc["metadata"].items()},
                data=unb64(enc["data"]),
            )
        ]
    )
    assert back[0].metadata["encoding"] == b"json/plain"
    assert json.loads(back[0].data) == SECRET


async def test_tampered_or_foreign_payloads_are_refused_with_the_envelope(
    http: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    r = await http.post(
        "/codec/encode", json={"payloads": [json_payload(SECRET)]}, headers=operator
    )
    (enc,) = r.json()["payloads"]
    data = bytearray(unb64(enc["data"]))
    data[-1] ^= 0x01
    tampered = {**enc, "data": b64(bytes(data))}
    r = await http.post("/codec/decode", json={"payloads": [tampered]}, headers=operator)
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert "authentication" in body["error"]["message"]
    assert SECRET not in r.text

    foreign = {**enc, "metadata": {**enc["metadata"], KEY_ID: b64(b"no-such-key")}}
    r = await http.post("/codec/decode", json={"payloads": [foreign]}, headers=operator)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "INVALID_REQUEST"
    assert "unknown codec key" in r.json()["error"]["message"]

    r = await http.post("/codec/decode", content=b"not json", headers=operator)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "INVALID_REQUEST"


async def test_authentication_and_roles(services: Services, http: httpx.AsyncClient) -> None:
    body = {"payloads": [json_payload("x")]}
    for path in ("/codec/encode", "/codec/decode"):
        r = await http.post(path, json=body)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "UNAUTHENTICATED"
        assert r.headers["www-authenticate"] == "Bearer"

        r = await http.post(path, json=body, headers=bearer("kra_0000000000000000_" + "x" * 43))
        assert r.status_code == 401

        r = await http.post(path, json=body, headers=bearer(new_key(services, Role.AUDITOR)))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "FORBIDDEN"

        for role in (Role.OPERATOR, Role.ADMIN):
            r = await http.post(path, json=body, headers=bearer(new_key(services, role)))
            assert r.status_code == 200, (role, r.text)


async def test_ui_origin_needs_no_key_only_under_keyrotor_dev(services: Services) -> None:
    """Only `keyrotor dev` builds its app with `dev_ui_codec`: no setting turns it on, so a
    deployment behind a local proxy (every client 127.0.0.1) cannot open the codec by mistake."""
    assert not any("codec" in name for name in Settings.model_fields)
    body = {"payloads": [json_payload("x")]}
    from_ui = {"Origin": UI_ORIGIN, "X-Namespace": "default"}
    for dev_ui_codec in (False, True):
        app = create_app(services, dev_ui_codec=dev_ui_codec)
        transport = httpx.ASGITransport(app=app)  # requests come from 127.0.0.1
        async with httpx.AsyncClient(transport=transport, base_url="http://keyrotor.test") as c:
            for path in ("/codec/encode", "/codec/decode"):
                r = await c.post(path, json=body, headers=from_ui)
                assert r.status_code == (200 if dev_ui_codec else 401), r.text
                if dev_ui_codec:
                    assert r.headers["access-control-allow-origin"] == UI_ORIGIN
            # the exemption is for the UI's origin only
            r = await c.post(
                "/codec/decode",
                json=body,
                headers={"Origin": "http://evil.example", "X-Namespace": "x"},
            )
            assert r.status_code == 401
            assert "access-control-allow-origin" not in r.headers
            r = await c.post("/codec/decode", json=body)
            assert r.status_code == 401


async def test_cors_preflight_is_allowed_for_the_ui_origin_only(http: httpx.AsyncClient) -> None:
    def preflight(origin: str) -> dict[str, str]:
        return {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace",
        }

    r = await http.options("/codec/decode", headers=preflight(UI_ORIGIN))
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-namespace"} <= allowed

    r = await http.options("/codec/decode", headers=preflight("http://evil.example"))
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
