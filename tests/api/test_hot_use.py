"""The use routes run a local key's operation on the event loop and a remote provider's on a
worker thread; both answer the same way, and an unknown key is a 404 either way."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from core.credentials import AdminKeys, Role
from core.services import Services, build_services
from core.settings import Settings
from tests.fixtures.keys import commit_key
from tests.fixtures.softhsm import SoftHSMToken
from tests.fixtures.temporal import TEST_MASTER_KEY

KEYS = "/api/key-management/keys"


@pytest.fixture
async def api(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    services = build_services(
        Settings(
            data_dir=tmp_path,
            master_key=SecretStr(TEST_MASTER_KEY),
            pkcs11_module=softhsm_token.module_path,
            pkcs11_token_label=softhsm_token.label,
            pkcs11_pin=SecretStr(softhsm_token.pin),
        )
    )
    admin = AdminKeys(services.store, services.keyring).create("t", Role.OPERATOR, "t")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(services)),
        base_url="http://keyrotor.test",
        headers={"Authorization": f"Bearer {admin}"},
    ) as http:
        yield http, services
    services.close()


@pytest.mark.parametrize(("provider", "in_process"), [("local", True), ("pkcs11", False)])
async def test_encrypt_and_decrypt_on_either_path(
    api: tuple[httpx.AsyncClient, Services], provider: str, in_process: bool
) -> None:
    http, services = api
    key_id = commit_key(services, provider=provider)
    assert services.keys.in_process(key_id) is in_process
    plaintext = base64.b64encode(b"attack at dawn").decode()
    r = await http.post(f"{KEYS}/{key_id}/encrypt", json={"plaintext": plaintext})
    assert r.status_code == 200, r.text
    ciphertext = r.json()["ciphertext"]
    assert ciphertext.startswith(f"kr:{key_id}:1:")
    r = await http.post(f"{KEYS}/{key_id}/decrypt", json={"ciphertext": ciphertext})
    assert r.json() == {"plaintext": plaintext, "version": 1}
    tampered = ciphertext[:-2] + ("A" if ciphertext[-2] != "A" else "B") + ciphertext[-1]
    r = await http.post(f"{KEYS}/{key_id}/decrypt", json={"ciphertext": tampered})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "DECRYPTION_FAILED")


async def test_unknown_key_and_bad_input(api: tuple[httpx.AsyncClient, Services]) -> None:
    http, services = api
    r = await http.post(f"{KEYS}/key_nosuchkey00000000/encrypt", json={"plaintext": "eA=="})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "KEY_NOT_FOUND")
    key_id = commit_key(services, provider="local")
    r = await http.post(f"{KEYS}/{key_id}/encrypt", json={"plaintext": "not base64!"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_REQUEST")
    r = await http.post(f"{KEYS}/{key_id}/sign", json={})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_REQUEST")
    r = await http.post(
        f"{KEYS}/{key_id}/encrypt", json={"plaintext": "eA=="}, headers={"Authorization": ""}
    )
    assert r.status_code == 401


@pytest.mark.parametrize("provider", ["local", "pkcs11"])
async def test_wrap_and_unwrap_a_data_key(
    api: tuple[httpx.AsyncClient, Services], provider: str
) -> None:
    http, services = api
    key_id = commit_key(services, provider=provider)
    data_key = base64.b64encode(bytes(range(32))).decode()
    aad = base64.b64encode(b"tenant-7").decode()
    r = await http.post(f"{KEYS}/{key_id}/wrap", json={"key": data_key, "aad": aad})
    assert r.status_code == 200, r.text
    wrapped = r.json()["wrapped"]
    assert wrapped.startswith(f"krw:{key_id}:1:") and data_key not in wrapped
    r = await http.post(f"{KEYS}/{key_id}/unwrap", json={"wrapped": wrapped, "aad": aad})
    assert r.json() == {"key": data_key, "version": 1}
    # the aad is bound
    r = await http.post(f"{KEYS}/{key_id}/unwrap", json={"wrapped": wrapped})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "DECRYPTION_FAILED")
    # a wrapped key is not data, and data is not a wrapped key, whatever the token says
    relabelled = "kr:" + wrapped.removeprefix("krw:")
    r = await http.post(f"{KEYS}/{key_id}/decrypt", json={"ciphertext": relabelled, "aad": aad})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "DECRYPTION_FAILED")
    r = await http.post(f"{KEYS}/{key_id}/encrypt", json={"plaintext": data_key, "aad": aad})
    as_wrapped = "krw:" + r.json()["ciphertext"].removeprefix("kr:")
    r = await http.post(f"{KEYS}/{key_id}/unwrap", json={"wrapped": as_wrapped, "aad": aad})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "DECRYPTION_FAILED")


async def test_wrap_refuses_what_is_not_a_key(api: tuple[httpx.AsyncClient, Services]) -> None:
    http, services = api
    key_id = commit_key(services, provider="local")
    for size in (15, 65):
        r = await http.post(
            f"{KEYS}/{key_id}/wrap", json={"key": base64.b64encode(b"k" * size).decode()}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (400, "UNSUPPORTED_ALGORITHM")
        assert "16 to 64 bytes" in r.json()["error"]["message"]
    r = await http.post(f"{KEYS}/{key_id}/unwrap", json={"wrapped": "kr:x:1:AAAA"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "MALFORMED_INPUT")
