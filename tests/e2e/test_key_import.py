"""BYOK: a key brought in with its material is used as it was and then lives under keyrotor's
lifecycle; material that does not work is refused and leaves nothing behind."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import hvac
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import SecretStr
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from core import audit
from core.credentials import Role
from core.keys import parse_token
from core.providers.vault_transit import transit_key_name
from core.store.models import KeyVersionRow
from tests.e2e.conftest import Stack, build_stack, keyrotor, serve
from tests.e2e.test_rest_flow import API, b64
from tests.fixtures.moto_kms import REGION, kms_client


async def test_import_an_ed25519_key_and_rotate_it(stack: Stack) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    body = {"type": "signing", "algorithm": "Ed25519", "material": b64(der), "name": "brought"}
    r = await stack.http.post(f"{API}/keys/import", json=body, headers=stack.auth())
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert (key["version"], key["status"], key["algorithm"]) == (1, "active", "Ed25519")

    # signed with the imported material: the holder's own public key verifies it
    message = b"signed by the key we brought"
    r = await stack.http.post(
        f"{API}/keys/{key['id']}/sign", json={"message": b64(message)}, headers=stack.auth()
    )
    number, signature = parse_token(r.json()["signature"], key["id"])
    assert number == 1
    private.public_key().verify(signature, message)  # raises if not

    with stack.services.store.engine.connect() as db:
        records = audit.list_records(
            db, audit.RecordFilter(object_id=key["id"], action="key.imported"), None, 10
        )
    assert len(records) == 1
    history = await stack.client.get_workflow_handle(key["workflowId"]).fetch_history()
    raw = b"".join(e.SerializeToString() for e in history.events)
    assert der not in raw and b64(der).encode() not in raw

    # from then on it is a keyrotor key: rotation makes a generated version 2
    r = await stack.http.post(f"{API}/keys/{key['id']}/rotate", json={}, headers=stack.auth())
    assert r.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
    r = await stack.http.post(
        f"{API}/keys/{key['id']}/verify",
        json={
            "message": b64(message),
            "signature": f"kr:{key['id']}:1:"
            + base64.urlsafe_b64encode(signature).rstrip(b"=").decode(),
        },
        headers=stack.auth(),
    )
    assert r.json() == {"valid": True, "version": 1}  # version 1 is in grace


async def test_material_that_does_not_work_is_refused(stack: Stack) -> None:
    before = (await stack.http.get(f"{API}/keys?limit=500", headers=stack.auth())).json()
    cases = [
        (
            {"type": "encryption", "material": b64(secrets.token_bytes(16))},
            "128 bits, expected 256",
        ),
        (
            {"type": "signing", "algorithm": "Ed25519", "material": b64(b"x" * 48)},
            "not a key of Ed25519",
        ),
        ({"type": "encryption", "material": "not base64!"}, "material must be base64"),
        ({"type": "encryption", "material": b64(b"k" * 32), "provider": "vault"}, ""),
    ]
    for body, message in cases:
        r = await stack.http.post(f"{API}/keys/import", json=body, headers=stack.auth())
        assert r.status_code == 400, r.text
        assert message in r.json()["error"]["message"]
    after = (await stack.http.get(f"{API}/keys?limit=500", headers=stack.auth())).json()
    assert len(after["keys"]) == len(before["keys"])
    # an operator may generate keys but not bring material in
    operator = stack.new_admin_key(Role.OPERATOR)
    body = {"type": "encryption", "material": b64(secrets.token_bytes(32))}
    r = await stack.http.post(f"{API}/keys/import", json=body, headers=stack.auth(operator))
    assert r.status_code == 403


async def test_an_imported_aes_key_encrypts_and_decrypts(stack: Stack) -> None:
    body = {"type": "encryption", "material": b64(secrets.token_bytes(32))}
    r = await stack.http.post(f"{API}/keys/import", json=body, headers=stack.auth())
    assert r.status_code == 201, r.text
    key_id = r.json()["key"]["id"]
    r = await stack.http.post(
        f"{API}/keys/{key_id}/encrypt", json={"plaintext": b64(b"hello")}, headers=stack.auth()
    )
    r = await stack.http.post(
        f"{API}/keys/{key_id}/decrypt",
        json={"ciphertext": r.json()["ciphertext"]},
        headers=stack.auth(),
    )
    assert r.json() == {"plaintext": b64(b"hello"), "version": 1}


async def test_import_from_the_command_line(stack: Stack, tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "key.der"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    async with serve(stack) as url:
        code, out, err = await keyrotor(
            url,
            stack.admin_key,
            "keys",
            "import",
            "--type",
            "signing",
            "--algorithm",
            "Ed25519",
            "--material-file",
            str(path),
            "--json",
        )
    assert code == 0, err
    key = json.loads(out)["key"]
    r = await stack.http.get(f"{API}/keys/{key['id']}/public-key", headers=stack.auth())
    assert r.status_code == 200, r.text
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert base64.b64decode(r.json()["publicKey"]["raw"]) == raw


async def test_import_into_vault_transit(
    dev_env: WorkflowEnvironment, openbao: tuple[str, str], tmp_path: Path
) -> None:
    url, token = openbao
    async with build_stack(dev_env, tmp_path, vault_addr=url, vault_token=SecretStr(token)) as s:
        material = secrets.token_bytes(32)
        body = {"type": "encryption", "provider": "vault", "material": b64(material)}
        r = await s.http.post(f"{API}/keys/import", json=body, headers=s.auth())
        assert r.status_code == 201, r.text
        key = r.json()["key"]
        assert (key["provider"], key["version"], key["status"]) == ("vault", 1, "active")
        # Vault holds it (not the store), as version 1 of the key's transit key
        transit = hvac.Client(url=url, token=token).secrets.transit
        assert transit.read_key(transit_key_name(key["id"]))["data"]["latest_version"] == 1
        with s.services.store.engine.connect() as db:
            stored = db.scalar(
                select(KeyVersionRow.wrapped_material).where(KeyVersionRow.key_id == key["id"])
            )
        assert stored is None
        r = await s.http.post(
            f"{API}/keys/{key['id']}/encrypt", json={"plaintext": b64(b"byok")}, headers=s.auth()
        )
        ciphertext = r.json()["ciphertext"]
        r = await s.http.post(f"{API}/keys/{key['id']}/rotate", json={}, headers=s.auth())
        assert r.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
        r = await s.http.post(
            f"{API}/keys/{key['id']}/decrypt", json={"ciphertext": ciphertext}, headers=s.auth()
        )
        assert r.json() == {"plaintext": b64(b"byok"), "version": 1}
        with s.services.store.engine.connect() as db:
            records = audit.list_records(
                db, audit.RecordFilter(object_id=key["id"], action="key.imported"), None, 10
            )
        assert len(records) == 1
        # Vault refuses material that its transit type does not take: 400, nothing stored
        bad = {"type": "encryption", "provider": "vault", "material": b64(b"k" * 31)}
        r = await s.http.post(f"{API}/keys/import", json=bad, headers=s.auth())
        assert r.status_code == 400, r.text


async def test_import_into_aws_kms(
    dev_env: WorkflowEnvironment, moto_kms: str, tmp_path: Path
) -> None:
    async with build_stack(dev_env, tmp_path, aws_endpoint_url=moto_kms, aws_region=REGION) as s:
        private = ec.generate_private_key(ec.SECP256R1())
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (tmp_path / "key.der").write_bytes(der)
        async with serve(s) as url:  # through the command line, which names the provider
            code, out, err = await keyrotor(
                url,
                s.admin_key,
                *("keys", "import", "--type", "signing", "--algorithm", "ECDSA-P256"),
                *("--provider", "aws-kms", "--material-file", str(tmp_path / "key.der"), "--json"),
            )
        assert code == 0, err
        key = json.loads(out)["key"]
        assert (key["provider"], key["version"], key["status"]) == ("aws-kms", 1, "active")
        # KMS holds it (not the store): a key of origin EXTERNAL behind version 1's alias
        kms = kms_client(moto_kms)
        alias = f"alias/keyrotor/{key['id']}/v1"
        meta = kms.describe_key(KeyId=alias)["KeyMetadata"]
        assert (meta["Origin"], meta["KeyState"]) == ("EXTERNAL", "Enabled")
        with s.services.store.engine.connect() as db:
            stored = db.scalar(
                select(KeyVersionRow.wrapped_material).where(KeyVersionRow.key_id == key["id"])
            )
        assert stored is None
        # KMS signs with the material brought in
        message = b"release 1.0"
        r = await s.http.post(
            f"{API}/keys/{key['id']}/sign", json={"message": b64(message)}, headers=s.auth()
        )
        assert r.status_code == 200, r.text
        token = r.json()["signature"]
        number, signature = parse_token(token, key["id"])
        assert number == 1
        private.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))
        # it rotates like any key: version 2 is KMS's own, version 1 still verifies
        r = await s.http.post(f"{API}/keys/{key['id']}/rotate", json={}, headers=s.auth())
        assert r.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
        meta2 = kms.describe_key(KeyId=f"alias/keyrotor/{key['id']}/v2")["KeyMetadata"]
        assert meta2["Origin"] == "AWS_KMS"
        r = await s.http.post(
            f"{API}/keys/{key['id']}/verify",
            json={"message": b64(message), "signature": token},
            headers=s.auth(),
        )
        assert r.json() == {"valid": True, "version": 1}
        with s.services.store.engine.connect() as db:
            records = audit.list_records(
                db, audit.RecordFilter(object_id=key["id"], action="key.imported"), None, 10
            )
        assert len(records) == 1
        # material that is not a key of the algorithm: 400, nothing stored, nothing sent to KMS
        listed = await s.http.get(f"{API}/keys", headers=s.auth())
        before = {k["KeyId"] for k in kms.list_keys(Limit=1000)["Keys"]}
        other = rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        body = {"type": "signing", "algorithm": "ECDSA-P256", "provider": "aws-kms"}
        r = await s.http.post(
            f"{API}/keys/import", json={**body, "material": b64(other)}, headers=s.auth()
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "INVALID_MATERIAL"
        assert (await s.http.get(f"{API}/keys", headers=s.auth())).json() == listed.json()
        assert {k["KeyId"] for k in kms.list_keys(Limit=1000)["Keys"]} == before
