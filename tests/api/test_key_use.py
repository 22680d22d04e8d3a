"""The key-use routes beyond encrypt/decrypt/sign/verify: public key, JWKS, rewrap and derive.

Keys are committed straight to the store as their workflow would (no Temporal: these routes
must never need it), rotations likewise, and the app is built without a Temporal client.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from api.app import create_app
from core.algorithms import resolve
from core.credentials import AdminKeys, Role
from core.keys import new_key_id, version_handle
from core.lifecycle import KeyLifecycle, RotationReason, new_key, revoke, rotate
from core.objects import KeySpec, KeyTransitionCommit
from core.services import Services

KEYS = "/api/key-management/keys"
LABEL = b"keyrotor/derive/v1\0"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Key:
    """A key committed to the store, and the lifecycle its workflow would hold."""

    spec: KeySpec
    lifecycle: KeyLifecycle
    commits: int = 1
    versions: list[int] = field(default_factory=lambda: [1])

    @property
    def id(self) -> str:
        return self.spec.key_id


@dataclass
class Env:
    services: Services
    http: httpx.AsyncClient
    headers: dict[str, str]

    def key(self, algorithm: str, key_type: str = "signing") -> Key:
        policy = self.services.policies.key_type(key_type)
        found = resolve(algorithm)
        spec = KeySpec(
            key_id=new_key_id(),
            environment="dev",
            type=policy.name,
            algorithm=found.name,
            provider="local",
            key_bits=found.default_key_bits,
            name=f"test {found.name}",
            created_by="alice",
        )
        key = Key(spec, new_key(policy.lifecycle(), datetime.now(UTC)))
        self._commit(key, "key.created", "keyCreated", 1, new_version=1)
        return key

    def rotate(self, key: Key, grace_seconds: int | None = None) -> None:
        """What the workflow's rotate update commits: a new version, the old one in grace
        (or retired at once with a zero grace)."""
        key.lifecycle = rotate(
            key.lifecycle, datetime.now(UTC), RotationReason.MANUAL, grace_seconds
        )
        number = key.lifecycle.last_version
        key.versions.append(number)
        self._commit(key, "key.rotated", "keyRotated", number, new_version=number)

    def revoke(self, key: Key) -> None:
        key.lifecycle = revoke(key.lifecycle, datetime.now(UTC))
        self._commit(key, "key.revoked", "keyRevoked", key.lifecycle.last_version)

    def _commit(
        self, key: Key, action: str, event: str, version: int, new_version: int | None = None
    ) -> None:
        key.commits += 1
        self.services.keys.commit_transition(
            KeyTransitionCommit(
                transition_id=f"keyrotor/key/dev/{key.id}/{key.commits}",
                spec=key.spec,
                lifecycle=key.lifecycle,
                action=action,
                event=event,
                at=datetime.now(UTC),
                actor="alice",
                version=version,
                new_version=new_version,
            )
        )

    async def post(self, key_id: str, op: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(f"{KEYS}/{key_id}/{op}", json=body, headers=self.headers)

    async def get(self, key_id: str, op: str, **params: Any) -> httpx.Response:
        return await self.http.get(f"{KEYS}/{key_id}/{op}", params=params, headers=self.headers)

    async def ok(self, r: httpx.Response) -> dict[str, Any]:
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def sign(self, key: Key, message: bytes) -> tuple[bytes, int]:
        got = await self.ok(await self.post(key.id, "sign", {"message": b64(message)}))
        token: str = got["signature"]
        return b64url(token.split(":")[3]), got["version"]

    async def snapshot(self, key: Key) -> dict[str, Any]:
        """The key as the API shows it: what bad input must leave unchanged."""
        return await self.ok(await self.http.get(f"{KEYS}/{key.id}", headers=self.headers))


@pytest.fixture(name="env")
async def env_fixture(services: Services) -> AsyncIterator[Env]:
    admin = AdminKeys(services.store, services.keyring)
    headers = {"Authorization": f"Bearer {admin.create('test-admin', Role.ADMIN, 'test')}"}
    app = create_app(services)  # no Temporal client: none of these routes may need one
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyrotor.test") as http:
        yield Env(services, http, headers)


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


# --- public key ----------------------------------------------------------------------------


def key_from_jwk(jwk: dict[str, str]) -> Any:
    """The verifier's side: a cryptography public key from the JWK alone."""
    if jwk["kty"] == "RSA":
        return rsa.RSAPublicNumbers(b64url_int(jwk["e"]), b64url_int(jwk["n"])).public_key()
    if jwk["kty"] == "EC":
        curve = {"P-256": ec.SECP256R1(), "secp256k1": ec.SECP256K1()}[jwk["crv"]]
        numbers = ec.EllipticCurvePublicNumbers(b64url_int(jwk["x"]), b64url_int(jwk["y"]), curve)
        return numbers.public_key()
    if jwk["kty"] == "OKP":
        assert jwk["crv"] == "Ed25519"
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url(jwk["x"]))
    if jwk["kty"] == "AKP":
        assert jwk["alg"] == "ML-DSA-65"
        return mldsa.MLDSA65PublicKey.from_public_bytes(b64url(jwk["pub"]))
    raise AssertionError(f"unexpected kty {jwk['kty']}")


def verify_with(public: Any, signature: bytes, message: bytes) -> None:
    if isinstance(public, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(signature, message, pss, hashes.SHA256())
    elif isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(signature, message)


CLASSICAL = [
    # algorithm, kty, crv, alg, raw length
    ("Ed25519", "OKP", "Ed25519", "EdDSA", 32),
    ("ECDSA-P256", "EC", "P-256", "ES256", 65),
    ("ECDSA-secp256k1", "EC", "secp256k1", "ES256K", 65),
    ("RSA-2048", "RSA", None, "PS256", None),
]


@pytest.mark.parametrize(("algorithm", "kty", "crv", "alg", "raw_len"), CLASSICAL)
async def test_classical_public_key_verifies_a_signature_from_the_sign_route(
    env: Env, algorithm: str, kty: str, crv: str | None, alg: str, raw_len: int | None
) -> None:
    key = env.key(algorithm)
    got = (await env.ok(await env.get(key.id, "public-key")))["publicKey"]
    assert set(got) == {"pem", "jwk", "raw", "version"} and got["version"] == 1
    jwk = got["jwk"]
    assert (jwk["kty"], jwk.get("crv"), jwk["alg"]) == (kty, crv, alg)
    assert jwk["kid"] == f"{key.id}.v1" and jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)  # public members only
    from_pem = serialization.load_pem_public_key(got["pem"].encode())
    from_jwk = key_from_jwk(jwk)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert from_jwk.public_bytes(*spki) == from_pem.public_bytes(*spki)
    raw = unb64(got["raw"])
    if raw_len is None:  # RSA: raw is the SPKI DER
        assert raw == from_pem.public_bytes(*spki)
    else:
        assert len(raw) == raw_len
        if kty == "EC":
            assert raw[0] == 4 and raw[1:33] == b64url(jwk["x"]) and raw[33:] == b64url(jwk["y"])
        else:
            assert raw == b64url(jwk["x"])

    message = b"pay 10 EUR to bob"
    signature, version = await env.sign(key, message)
    assert version == 1
    verify_with(from_jwk, signature, message)
    with pytest.raises(InvalidSignature):
        verify_with(from_jwk, signature, b"pay 1000 EUR to bob")
    # and another key's JWK does not verify it
    other = key_from_jwk(
        (await env.ok(await env.get(env.key(algorithm).id, "public-key")))["publicKey"]["jwk"]
    )
    with pytest.raises(InvalidSignature):
        verify_with(other, signature, message)


async def test_ml_dsa_public_key_is_spki_and_an_akp_jwk(env: Env) -> None:
    key = env.key("ML-DSA-65")
    got = (await env.ok(await env.get(key.id, "public-key")))["publicKey"]
    raw = unb64(got["raw"])
    assert len(raw) == 1952  # FIPS 204 ML-DSA-65 public key
    assert got["jwk"] == {
        "kty": "AKP",
        "alg": "ML-DSA-65",
        "pub": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        "use": "sig",
        "kid": f"{key.id}.v1",
    }
    from_pem = serialization.load_pem_public_key(got["pem"].encode())
    assert isinstance(from_pem, mldsa.MLDSA65PublicKey)
    assert from_pem.public_bytes_raw() == raw
    signature, _ = await env.sign(key, b"post-quantum")
    verify_with(key_from_jwk(got["jwk"]), signature, b"post-quantum")
    with pytest.raises(InvalidSignature):
        verify_with(key_from_jwk(got["jwk"]), signature, b"post-quantum!")


@pytest.mark.parametrize(
    ("algorithm", "key_type", "has_pem", "raw_len", "raw_prefix"),
    [
        ("ML-KEM-768", "encryption", True, 1184, b""),
        ("ML-KEM-1024", "encryption", True, 1568, b""),
        ("ML-KEM-512", "encryption", False, 800, b""),
        ("Falcon-512", "signing", False, 897, b""),
        ("Ed25519+ML-DSA-65", "signing", False, None, b"KRPK"),
        ("X25519+ML-KEM-768", "encryption", False, None, b"KRPK"),
    ],
)
async def test_post_quantum_keys_without_a_jwk_form(
    env: Env,
    algorithm: str,
    key_type: str,
    has_pem: bool,
    raw_len: int | None,
    raw_prefix: bytes,
) -> None:
    key = env.key(algorithm, key_type)
    got = (await env.ok(await env.get(key.id, "public-key")))["publicKey"]
    assert got["jwk"] is None and got["version"] == 1
    raw = unb64(got["raw"])
    assert raw.startswith(raw_prefix)
    if raw_len is not None:
        assert len(raw) == raw_len
    if has_pem:
        loaded: Any = serialization.load_pem_public_key(got["pem"].encode())
        assert loaded.public_bytes_raw() == raw
    else:
        assert got["pem"] is None
    # nothing to list in a JWKS, but the key has a public key: not an error
    assert (await env.ok(await env.get(key.id, "jwks"))) == {"keys": []}


@pytest.mark.parametrize(
    ("algorithm", "key_type"),
    [
        ("AES-256-GCM", "encryption"),
        ("ChaCha20-Poly1305", "encryption"),
        ("HMAC-SHA256", "session"),
        ("HMAC-SHA512", "api"),
    ],
)
async def test_symmetric_and_mac_keys_have_no_public_key(
    env: Env, algorithm: str, key_type: str
) -> None:
    key = env.key(algorithm, key_type)
    for op in ("public-key", "jwks"):
        r = await env.get(key.id, op)
        assert_error(r, 400, "NO_PUBLIC_KEY")
        assert algorithm in r.json()["error"]["message"]


async def test_public_key_of_a_grace_version_and_refusals(env: Env) -> None:
    key = env.key("Ed25519")
    v1 = (await env.ok(await env.get(key.id, "public-key")))["publicKey"]
    env.rotate(key)  # v1 in grace, v2 active
    active = (await env.ok(await env.get(key.id, "public-key")))["publicKey"]
    assert active["version"] == 2 and active["raw"] != v1["raw"]
    assert active["jwk"]["kid"] == f"{key.id}.v2"
    grace = (await env.ok(await env.get(key.id, "public-key", version=1)))["publicKey"]
    assert grace == v1
    env.rotate(key, grace_seconds=0)  # v2 retired at once, v3 active
    assert_error(await env.get(key.id, "public-key", version=2), 409, "KEY_STATE")
    assert_error(await env.get(key.id, "public-key", version=9), 409, "KEY_STATE")
    assert_error(await env.get(key.id, "public-key", version=0), 400, "INVALID_REQUEST")
    assert_error(await env.get(key.id, "public-key", version="x"), 400, "INVALID_REQUEST")


# --- JWKS --------------------------------------------------------------------------------


async def test_jwks_lists_active_and_grace_and_drops_retired(env: Env) -> None:
    key = env.key("ECDSA-P256")
    old_signature, _ = await env.sign(key, b"signed by v1")
    assert [k["kid"] for k in (await env.ok(await env.get(key.id, "jwks")))["keys"]] == [
        f"{key.id}.v1"
    ]
    env.rotate(key)  # v1 grace, v2 active
    env.rotate(key, grace_seconds=0)  # v2 retired, v1 still in grace, v3 active
    states = {v["version"]: v["state"] for v in (await env.snapshot(key))["key"]["versions"]}
    assert states == {1: "grace", 2: "retired", 3: "active"}
    jwks = (await env.ok(await env.get(key.id, "jwks")))["keys"]
    assert [k["kid"] for k in jwks] == [f"{key.id}.v3", f"{key.id}.v1"]
    assert all(k["kty"] == "EC" and k["alg"] == "ES256" for k in jwks)
    # a verifier picks the JWK by kid: the v1 signature still verifies during grace
    by_kid = {k["kid"]: key_from_jwk(k) for k in jwks}
    verify_with(by_kid[f"{key.id}.v1"], old_signature, b"signed by v1")
    new_signature, version = await env.sign(key, b"signed by v3")
    assert version == 3
    verify_with(by_kid[f"{key.id}.v3"], new_signature, b"signed by v3")
    with pytest.raises(InvalidSignature):
        verify_with(by_kid[f"{key.id}.v1"], new_signature, b"signed by v3")

    env.revoke(key)
    assert (await env.ok(await env.get(key.id, "jwks"))) == {"keys": []}


# --- rewrap ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm",
    ["AES-256-GCM", "ChaCha20-Poly1305", "RSA-2048", "ML-KEM-768", "X25519+ML-KEM-768"],
)
async def test_rewrap_moves_a_grace_ciphertext_to_the_active_version(
    env: Env, algorithm: str
) -> None:
    key = env.key(algorithm, "encryption")
    aad = b64(b"order-7")
    enc = await env.ok(
        await env.post(key.id, "encrypt", {"plaintext": b64(b"card 4111"), "aad": aad})
    )
    old = enc["ciphertext"]
    assert old.startswith(f"kr:{key.id}:1:")
    env.rotate(key)
    got = await env.ok(await env.post(key.id, "rewrap", {"ciphertext": old, "aad": aad}))
    assert set(got) == {"ciphertext", "keyId", "fromVersion", "version"}  # no plaintext
    assert (got["keyId"], got["fromVersion"], got["version"]) == (key.id, 1, 2)
    assert got["ciphertext"].startswith(f"kr:{key.id}:2:")
    assert b64(b"card 4111") not in got["ciphertext"]
    dec = await env.ok(
        await env.post(key.id, "decrypt", {"ciphertext": got["ciphertext"], "aad": aad})
    )
    assert dec == {"plaintext": b64(b"card 4111"), "version": 2}
    # the aad stays bound to the new ciphertext
    r = await env.post(key.id, "decrypt", {"ciphertext": got["ciphertext"]})
    assert_error(r, 400, "DECRYPTION_FAILED")


async def test_rewrap_of_an_active_ciphertext_re_encrypts_it(env: Env) -> None:
    key = env.key("AES-256-GCM", "encryption")
    enc = await env.ok(await env.post(key.id, "encrypt", {"plaintext": b64(b"x")}))
    got = await env.ok(await env.post(key.id, "rewrap", {"ciphertext": enc["ciphertext"]}))
    assert (got["fromVersion"], got["version"]) == (1, 1)
    assert got["ciphertext"] != enc["ciphertext"]  # fresh nonce: a new ciphertext
    dec = await env.ok(await env.post(key.id, "decrypt", {"ciphertext": got["ciphertext"]}))
    assert dec["plaintext"] == b64(b"x")


async def test_rewrap_refuses_what_it_cannot_authenticate_and_changes_nothing(env: Env) -> None:
    key = env.key("AES-256-GCM", "encryption")
    aad = b64(b"order-7")
    v1 = (await env.ok(await env.post(key.id, "encrypt", {"plaintext": b64(b"a"), "aad": aad})))[
        "ciphertext"
    ]
    env.rotate(key)
    v2 = (await env.ok(await env.post(key.id, "encrypt", {"plaintext": b64(b"b")})))["ciphertext"]
    env.rotate(key, grace_seconds=0)  # v2 retired: its ciphertexts are refused
    before = await env.snapshot(key)
    other = env.key("AES-256-GCM", "encryption")
    payload = v1.split(":")[3]
    tampered = v1[:-2] + ("AA" if not v1.endswith("AA") else "BB")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"ciphertext": v1, "aad": b64(b"order-8")}, 400, "DECRYPTION_FAILED"),
        ({"ciphertext": v1}, 400, "DECRYPTION_FAILED"),  # the aad is required back
        ({"ciphertext": tampered, "aad": aad}, 400, "DECRYPTION_FAILED"),
        ({"ciphertext": v2}, 409, "KEY_STATE"),
        ({"ciphertext": f"kr:{key.id}:7:{payload}", "aad": aad}, 409, "KEY_STATE"),
        ({"ciphertext": f"kr:{other.id}:1:{payload}", "aad": aad}, 400, "MALFORMED_INPUT"),
        ({"ciphertext": "not a ciphertext"}, 400, "MALFORMED_INPUT"),
        ({"ciphertext": v1, "aad": "***"}, 400, "INVALID_REQUEST"),
        ({"ciphertext": v1, "plaintext": b64(b"a")}, 400, "INVALID_REQUEST"),
        ({}, 400, "INVALID_REQUEST"),
    ]
    for body, status, code in cases:
        assert_error(await env.post(key.id, "rewrap", body), status, code)
    assert await env.snapshot(key) == before
    # and the good request still works afterwards
    got = await env.ok(await env.post(key.id, "rewrap", {"ciphertext": v1, "aad": aad}))
    assert (got["fromVersion"], got["version"]) == (1, 3)


async def test_rewrap_needs_an_encryption_key(env: Env) -> None:
    key = env.key("Ed25519")
    token = f"kr:{key.id}:1:AAAA"
    r = await env.post(key.id, "rewrap", {"ciphertext": token})
    assert_error(r, 400, "UNSUPPORTED_ALGORITHM")
    assert "rewrap" in r.json()["error"]["message"]


# --- derive ------------------------------------------------------------------------------


def expected_derive(prk: bytes, length: int) -> bytes:
    """The documented construction, computed here from the MAC the sign route answers."""
    info = LABEL + length.to_bytes(2, "big")
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


@pytest.mark.parametrize(
    ("algorithm", "key_type"), [("HMAC-SHA256", "session"), ("HMAC-SHA512", "api")]
)
async def test_derive_is_hkdf_over_the_provider_mac(
    env: Env, algorithm: str, key_type: str
) -> None:
    key = env.key(algorithm, key_type)
    context = b"tenant-42/files"
    got = await env.ok(await env.post(key.id, "derive", {"context": b64(context), "length": 32}))
    assert set(got) == {"derived", "version"} and got["version"] == 1
    derived = unb64(got["derived"])
    assert len(derived) == 32
    # the extract step: the provider's own MAC of label and context
    _, [row] = env.services.keys.get(key.id)
    mac = env.services.keys.provider(row.provider).sign(
        version_handle(key.id, row), LABEL + context
    )
    assert derived == expected_derive(mac, 32)
    # and no caller gets that MAC from the sign route: it is the derived key's secret
    before = await env.snapshot(key)
    for message in (LABEL + context, LABEL):
        r = await env.post(key.id, "sign", {"message": b64(message)})
        assert_error(r, 400, "INVALID_REQUEST")
        assert "derive" in r.json()["error"]["message"]
    assert await env.snapshot(key) == before
    signed, _ = await env.sign(key, b"x" + LABEL + context)  # the label elsewhere: signed
    assert signed


async def test_derive_is_deterministic_per_version_context_and_length(env: Env) -> None:
    key = env.key("HMAC-SHA256", "session")

    async def derive(context: bytes, length: int, **extra: int) -> tuple[bytes, int]:
        body: dict[str, Any] = {"context": b64(context), "length": length, **extra}
        got = await env.ok(await env.post(key.id, "derive", body))
        return unb64(got["derived"]), got["version"]

    a, v = await derive(b"ctx-a", 32)
    assert v == 1
    assert (await derive(b"ctx-a", 32)) == (a, 1)
    assert (await derive(b"ctx-b", 32))[0] != a
    assert (await derive(b"", 32))[0] != a
    for length in (16, 33, 64):
        out, _ = await derive(b"ctx-a", length)
        assert len(out) == length and out[:16] != a[:16]  # not a prefix of another length
    env.rotate(key)
    b, v = await derive(b"ctx-a", 32)
    assert v == 2 and b != a
    # the grace version still derives what it derived before (for data made with it)
    assert (await derive(b"ctx-a", 32, version=1)) == (a, 1)
    env.rotate(key, grace_seconds=0)  # v2 retired
    r = await env.post(key.id, "derive", {"context": b64(b"ctx-a"), "length": 32, "version": 2})
    assert_error(r, 409, "KEY_STATE")


async def test_derive_refuses_bad_input_and_other_kinds(env: Env) -> None:
    key = env.key("HMAC-SHA256", "session")
    before = await env.snapshot(key)
    ctx = b64(b"c")
    bad: list[dict[str, Any]] = [
        {"context": ctx, "length": 15},
        {"context": ctx, "length": 65},
        {"context": ctx, "length": "32"},
        {"context": ctx, "length": 32.5},
        {"context": ctx},
        {"length": 32},
        {"context": "not base64!", "length": 32},
        {"context": ctx, "length": 32, "version": 0},
        {"context": ctx, "length": 32, "salt": "x"},
        {"context": "A" * 6000, "length": 32},
    ]
    for body in bad:
        assert_error(await env.post(key.id, "derive", body), 400, "INVALID_REQUEST")
    assert await env.snapshot(key) == before
    for algorithm, key_type in (("AES-256-GCM", "encryption"), ("Ed25519", "signing")):
        other = env.key(algorithm, key_type)
        r = await env.post(other.id, "derive", {"context": ctx, "length": 32})
        assert_error(r, 400, "UNSUPPORTED_ALGORITHM")
        assert "HMAC" in r.json()["error"]["message"]


async def test_derived_bytes_never_reach_the_logs(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    key = env.key("HMAC-SHA512", "api")
    with caplog.at_level(logging.DEBUG):
        got = await env.ok(await env.post(key.id, "derive", {"context": b64(b"ctx"), "length": 64}))
        await env.post(key.id, "derive", {"context": b64(b"ctx"), "length": 99})
    derived = unb64(got["derived"])
    text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    for form in (got["derived"], derived.hex(), repr(derived)):
        assert form not in text
    result = env.services.keys.derive(key.id, b"ctx", 64)
    assert result.material == derived
    assert got["derived"] not in repr(result) and derived.hex() not in repr(result)


# --- unknown keys ------------------------------------------------------------------------


async def test_unknown_key_is_404_on_every_route(env: Env) -> None:
    missing = new_key_id()
    token = f"kr:{missing}:1:AAAA"
    calls = [
        env.get(missing, "public-key"),
        env.get(missing, "public-key", version=1),
        env.get(missing, "jwks"),
        env.post(missing, "rewrap", {"ciphertext": token}),
        env.post(missing, "derive", {"context": b64(b"c"), "length": 32}),
    ]
    for call in calls:
        assert_error(await call, 404, "KEY_NOT_FOUND")
