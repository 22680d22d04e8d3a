"""Provider faults end to end: real Temporal dev server, worker, REST API and a real provider.

A provider that goes away (OpenBao sealed, moto frozen with SIGSTOP) must not lose or double a
rotation: the commit activity retries, `/health` reports the provider down, and once it is back
each rotation completes exactly once, with the provider holding exactly the versions the store
knows. A provider that refuses an operation for good (a Vault token without the right to
rotate) fails that rotation with an audited reason and leaves the current version active.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from api.routes import health as health_routes
from core import audit
from core.policy import default_policy_path
from core.providers.vault_transit import transit_key_name
from core.store.models import AuditRecordRow, EventRow, KeyVersionRow
from tests.e2e.conftest import Stack, build_stack
from tests.fixtures.moto_kms import REGION, MotoServer, kms_client
from tests.fixtures.openbao import OpenBaoServer
from workflows.types import OperatorAction

API = "/api/key-management"
# A key type whose versions rotate on their own every few seconds: its scheduled rotations fall
# inside the outage.
DRILL_TYPE = """
[key_types.drill]
algorithm = "AES-256-GCM"
key_bits = 256
rotation_interval = "PT6S"
warning_threshold = "PT1S"
max_lifetime = "P1D"
grace_period = "PT1H"
"""
# How long a fault may take to show (attempts failing) or to clear (rotations completing).
# The commit's retry policy waits 1 s, 2 s, 4 s... between attempts, so a few seconds suffice.
SETTLE_SECONDS = 20.0


def provider_stack(
    dev_env: WorkflowEnvironment, data_dir: Path, **provider_settings: Any
) -> AbstractAsyncContextManager[Stack]:
    """A worker and the API whose services are built from the given provider settings, with
    the `drill` key type besides the shipped ones."""
    policy = data_dir / "keyrotor.toml"
    policy.write_text(default_policy_path().read_text() + DRILL_TYPE)
    return build_stack(dev_env, data_dir, config=policy, **provider_settings)


async def generate(stack: Stack, provider: str, key_type: str = "encryption") -> dict[str, Any]:
    r = await stack.http.post(
        f"{API}/keys/generate",
        json={"type": key_type, "provider": provider},
        headers=stack.auth(),
    )
    assert r.status_code == 201, r.text
    key: dict[str, Any] = r.json()["key"]
    assert key["provider"] == provider and key["version"] == 1
    return key


async def eventually(what: str, done: Callable[[], bool], timeout: float = SETTLE_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture(autouse=True)
def fresh_health(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each /health here must check again: the providers go down and up within seconds."""
    monkeypatch.setattr(health_routes, "HEALTH_TTL", 0.0)


async def health(stack: Stack) -> dict[str, Any]:
    r = await stack.http.get(f"{API}/health")
    assert r.status_code == 200, r.text  # the store is up: degraded at worst, never 503
    body: dict[str, Any] = r.json()["health"]
    return body


def failed_attempts(caplog: pytest.LogCaptureFixture, workflow_id: str) -> list[int]:
    """The attempt numbers of the commit activity's failures for one workflow, as the Temporal
    worker reports them (each failed attempt logs its activity info)."""
    attempts = []
    for record in caplog.records:
        info = getattr(record, "temporal_activity", None)
        if (
            record.name == "temporalio.activity"
            and isinstance(info, dict)
            and info.get("workflow_id") == workflow_id
            and info.get("activity_type") == "commit_key_transition"
        ):
            attempts.append(int(info["attempt"]))
    return attempts


def store_versions(stack: Stack, key_id: str) -> dict[int, str]:
    with stack.services.store.session() as s:
        rows = s.scalars(select(KeyVersionRow).where(KeyVersionRow.key_id == key_id))
        return {v.number: v.state for v in rows}


def provider_refs(stack: Stack, key_id: str) -> dict[int, str]:
    with stack.services.store.session() as s:
        rows = s.scalars(select(KeyVersionRow).where(KeyVersionRow.key_id == key_id))
        return {v.number: v.provider_key_ref or "" for v in rows}


def audit_trail(stack: Stack, key_id: str) -> list[tuple[str, str]]:
    with stack.services.store.session() as s:
        q = select(AuditRecordRow.action, AuditRecordRow.reason).where(
            AuditRecordRow.object_id == key_id
        )
        return [(a, r) for a, r in s.execute(q.order_by(AuditRecordRow.seq))]


def assert_chain_verifies(stack: Stack) -> None:
    with stack.services.store.session() as s:
        report = audit.verify_chain(s)
    assert report.ok, report


async def rotate_while_down(
    stack: Stack,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    manual: dict[str, Any],
    emergency: dict[str, Any],
    scheduled: dict[str, Any],
) -> asyncio.Task[httpx.Response]:
    """With the provider already down: `manual` rotated through REST (left waiting),
    `emergency` by the `emergency_rotate` signal, `scheduled` by its own timer (a `drill` key,
    6 s). Returns once Temporal has retried all three commits, having checked that nothing
    completed meanwhile and that /health names the provider as down."""
    rest = asyncio.create_task(
        stack.http.post(
            f"{API}/keys/{manual['id']}/rotate",
            json={"reason": "quarterly", "gracePeriod": "PT1H"},
            headers={**stack.auth(), "Idempotency-Key": f"fault-{manual['id']}"},
        )
    )
    await stack.client.get_workflow_handle(emergency["workflowId"]).signal(
        "emergency_rotate", OperatorAction(actor="drill", reason="provider fault drill")
    )
    for key in (manual, emergency, scheduled):
        await eventually(
            f"a retried commit of {key['id']}",
            lambda k=key: max(failed_attempts(caplog, k["workflowId"]), default=0) >= 2,
        )
    assert not rest.done(), "the REST rotation answered while its provider was down"
    for key in (manual, emergency, scheduled):
        assert store_versions(stack, key["id"]) == {1: "active"}
    body = await health(stack)
    assert body["status"] == "degraded", body
    assert body["components"][f"provider:{provider}"]["status"] == "down", body
    assert body["components"]["database"]["status"] == "up", body
    # subscribers hear of it: one providerUnavailable event per transition that met the outage
    with stack.services.store.session() as s:
        events = s.scalars(
            select(EventRow).where(
                EventRow.type == "providerUnavailable", EventRow.object_id == provider
            )
        ).all()
    assert {e.data["keyId"] for e in events} >= {k["id"] for k in (manual, emergency, scheduled)}
    assert all(e.data["error"].endswith("Error") for e in events), [e.data for e in events]
    return rest


async def assert_rotated_once(
    stack: Stack,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    manual: dict[str, Any],
    emergency: dict[str, Any],
    scheduled: dict[str, Any],
    rest: asyncio.Task[httpx.Response],
) -> None:
    """After the provider is back: each rotation completed exactly once, audited once."""
    r = await asyncio.wait_for(rest, SETTLE_SECONDS)
    assert r.status_code == 200, r.text
    assert r.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
    await eventually(
        "the emergency rotation", lambda: len(store_versions(stack, emergency["id"])) == 2
    )
    # a client retrying the REST request after the outage does not rotate again
    again = await stack.http.post(
        f"{API}/keys/{manual['id']}/rotate",
        json={"reason": "quarterly", "gracePeriod": "PT1H"},
        headers={**stack.auth(), "Idempotency-Key": f"fault-{manual['id']}"},
    )
    assert again.status_code == 200 and again.json()["rotation"] == {
        "fromVersion": 1,
        "toVersion": 2,
    }
    assert store_versions(stack, manual["id"]) == {1: "grace", 2: "active"}
    assert store_versions(stack, emergency["id"]) == {1: "compromised", 2: "active"}
    assert [a for a, _ in audit_trail(stack, manual["id"])] == ["key.created", "key.rotated"]
    assert [a for a, _ in audit_trail(stack, emergency["id"])] == [
        "key.created",
        "key.emergency_rotated",
    ]
    # The scheduled key goes on rotating every 6 s once the provider is back: however many
    # rotations there were by now, each made one version and one audit record, in order.
    await eventually(
        "the scheduled rotation", lambda: len(store_versions(stack, scheduled["id"])) >= 2
    )
    for key in (manual, emergency, scheduled):
        # the retries really happened, and the rotation committed after them
        assert max(failed_attempts(caplog, key["workflowId"])) >= 2
    assert (await health(stack))["status"] == "healthy"
    assert_chain_verifies(stack)


def assert_scheduled_rotations_once(stack: Stack, key_id: str) -> list[int]:
    """Versions 1..n, the newest active and the others in grace, and one `key.rotated`
    (reason scheduled) per version after the first; returns the version numbers."""
    versions = store_versions(stack, key_id)
    numbers = sorted(versions)
    assert numbers == list(range(1, len(numbers) + 1)), versions
    assert versions == {n: "active" if n == numbers[-1] else "grace" for n in numbers}
    rotated = [r for a, r in audit_trail(stack, key_id) if a == "key.rotated"]
    assert rotated == ["scheduled"] * (len(numbers) - 1)
    return numbers


# --- OpenBao sealed -------------------------------------------------------------------------


async def unseal_key(server: OpenBaoServer) -> str:
    """The dev server prints its single unseal key once it is up; its stdout is a log file."""
    log = Path(os.readlink(f"/proc/{server.process.pid}/fd/1"))
    pattern = re.compile(r"^Unseal Key:\s*(\S+)$", re.MULTILINE)
    await eventually("the OpenBao unseal key", lambda: bool(pattern.search(log.read_text())), 10)
    found = pattern.search(log.read_text())
    assert found is not None
    return found.group(1)


def transit_versions(root: hvac.Client, key_id: str) -> set[int]:
    data = root.secrets.transit.read_key(name=transit_key_name(key_id))["data"]
    assert int(data["latest_version"]) == max(int(v) for v in data["keys"])
    return {int(v) for v in data["keys"]}


async def test_rotations_survive_a_sealed_vault(
    dev_env: WorkflowEnvironment,
    openbao_own_server: OpenBaoServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = openbao_own_server
    root = hvac.Client(url=server.url, token=server.token)
    key = await unseal_key(server)
    caplog.set_level(logging.WARNING, logger="temporalio.activity")
    async with provider_stack(
        dev_env, tmp_path, vault_addr=server.url, vault_token=SecretStr(server.token)
    ) as stack:
        assert (await health(stack))["components"]["provider:vault"]["status"] == "up"
        manual, emergency = await generate(stack, "vault"), await generate(stack, "vault")
        scheduled = await generate(stack, "vault", "drill")
        root.sys.seal()
        try:
            rest = await rotate_while_down(stack, caplog, "vault", manual, emergency, scheduled)
        finally:
            root.sys.submit_unseal_key(key)
        assert not root.sys.read_seal_status()["sealed"]
        await assert_rotated_once(stack, caplog, "vault", manual, emergency, scheduled, rest)
        # transit holds exactly the versions the store knows (read in this order: a rotation
        # committing in between adds a transit version first)
        numbers = assert_scheduled_rotations_once(stack, scheduled["id"])
        assert set(numbers) <= transit_versions(root, scheduled["id"])
        assert transit_versions(root, scheduled["id"]) <= set(
            assert_scheduled_rotations_once(stack, scheduled["id"])
        ) | {max(numbers) + 1}
        for k in (manual, emergency):
            # no orphaned version at the provider: transit made exactly the store's versions;
            # the compromised v1 of the emergency key is switched off there too
            data = root.secrets.transit.read_key(name=transit_key_name(k["id"]))["data"]
            assert int(data["latest_version"]) == 2
            assert int(data["min_decryption_version"]) == (2 if k is emergency else 1)
            refs = provider_refs(stack, k["id"])
            assert refs == {n: f"transit/keys/{transit_key_name(k['id'])}/v{n}" for n in (1, 2)}


# --- moto (AWS KMS) frozen ------------------------------------------------------------------


def kms_inventory(endpoint_url: str, key_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """(alias name -> target key id, KMS key id -> key state) of everything keyrotor made
    for `key_id`: aliases by their name, keys by the keyrotor:key-id tag that CreateKey sets,
    so that a key orphaned before its alias was created is counted too."""
    kms = kms_client(endpoint_url)
    prefix = f"alias/keyrotor/{key_id}/"
    aliases = {
        a["AliasName"]: a["TargetKeyId"]
        for page in kms.get_paginator("list_aliases").paginate()
        for a in page["Aliases"]
        if a["AliasName"].startswith(prefix)
    }
    keys = {}
    for page in kms.get_paginator("list_keys").paginate():
        for k in page["Keys"]:
            tags = kms.list_resource_tags(KeyId=k["KeyId"])["Tags"]
            if {"TagKey": "keyrotor:key-id", "TagValue": key_id} in tags:
                keys[k["KeyId"]] = kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"]
    return aliases, keys


async def test_rotations_survive_a_frozen_kms(
    dev_env: WorkflowEnvironment,
    private_moto_server: MotoServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = private_moto_server.endpoint_url
    process = private_moto_server._process  # the fixture's own process, to freeze and thaw
    assert process is not None
    caplog.set_level(logging.WARNING, logger="temporalio.activity")
    # A frozen endpoint answers nothing: each call waits for its read timeout (1 s here).
    async with provider_stack(
        dev_env, tmp_path, aws_endpoint_url=endpoint, aws_region=REGION, provider_timeout=1.0
    ) as stack:
        assert (await health(stack))["components"]["provider:aws-kms"]["status"] == "up"
        manual, emergency = await generate(stack, "aws-kms"), await generate(stack, "aws-kms")
        scheduled = await generate(stack, "aws-kms", "drill")
        # Frozen before any rotation starts, so the calls that hang are the first, read-only
        # DescribeKey of each attempt: requests queued in the socket run when moto thaws, and
        # a queued CreateKey would make a key no alias names (what the inventory would catch).
        os.kill(process.pid, signal.SIGSTOP)
        try:
            rest = await rotate_while_down(stack, caplog, "aws-kms", manual, emergency, scheduled)
        finally:
            os.kill(process.pid, signal.SIGCONT)
        await assert_rotated_once(stack, caplog, "aws-kms", manual, emergency, scheduled, rest)
        # one KMS key behind one alias per stored version, nothing orphaned (read in this
        # order: a rotation committing in between adds a KMS key first)
        numbers = assert_scheduled_rotations_once(stack, scheduled["id"])
        aliases, keys = await asyncio.to_thread(kms_inventory, endpoint, scheduled["id"])
        later = set(assert_scheduled_rotations_once(stack, scheduled["id"]))
        prefix = f"alias/keyrotor/{scheduled['id']}/v"
        made = {int(name.removeprefix(prefix)) for name in aliases}
        assert set(numbers) <= made <= later | {max(later) + 1}
        assert set(keys) == set(aliases.values()) and set(keys.values()) == {"Enabled"}
        for k in (manual, emergency):
            aliases, keys = await asyncio.to_thread(kms_inventory, endpoint, k["id"])
            assert set(aliases) == {f"alias/keyrotor/{k['id']}/v{n}" for n in (1, 2)}
            # exactly one KMS key per version, each behind its alias: nothing orphaned; the
            # compromised v1 of the emergency key is disabled at KMS too
            v1 = aliases[f"alias/keyrotor/{k['id']}/v1"]
            assert keys == {
                target: "Disabled" if (k is emergency and target == v1) else "Enabled"
                for target in aliases.values()
            }
            refs = provider_refs(stack, k["id"])
            assert sorted(refs) == [1, 2]
            for n, arn in refs.items():
                assert arn.endswith(aliases[f"alias/keyrotor/{k['id']}/v{n}"])


# --- a permanent refusal --------------------------------------------------------------------

# Create, read and use the transit keys, but not rotate them: `+` matches one path segment,
# so `transit/keys/+` does not reach `transit/keys/<name>/rotate` (Vault globs, `*`, would).
NO_ROTATE_POLICY = """
path "transit/keys/+" { capabilities = ["create", "read", "update"] }
path "transit/keys" { capabilities = ["list"] }
path "transit/encrypt/+" { capabilities = ["update"] }
path "transit/decrypt/+" { capabilities = ["update"] }
"""
ROTATE_POLICY = NO_ROTATE_POLICY + 'path "transit/keys/+/rotate" { capabilities = ["update"] }\n'


async def test_a_refused_rotation_is_audited_and_changes_nothing(
    dev_env: WorkflowEnvironment, openbao: tuple[str, str], tmp_path: Path
) -> None:
    url, root_token = openbao
    root = hvac.Client(url=url, token=root_token)
    policy = f"keyrotor-no-rotate-{uuid.uuid4().hex[:8]}"
    root.sys.create_or_update_policy(name=policy, policy=NO_ROTATE_POLICY)
    token = root.auth.token.create(policies=[policy], no_default_policy=True, ttl="10m")["auth"][
        "client_token"
    ]
    async with provider_stack(dev_env, tmp_path, vault_addr=url, vault_token=SecretStr(token)) as (
        stack
    ):
        key = await generate(stack, "vault")  # version 1 is a create: allowed
        kid = key["id"]
        enc = await stack.http.post(
            f"{API}/keys/{kid}/encrypt", json={"plaintext": "c2VjcmV0"}, headers=stack.auth()
        )
        assert enc.status_code == 200, enc.text

        r = await stack.http.post(
            f"{API}/keys/{kid}/rotate", json={"reason": "quarterly"}, headers=stack.auth()
        )
        # refused for good: an immediate client error naming the cause, not a 503 to retry
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "PROVIDER_NOT_CONFIGURED"
        assert "permission denied" in error["message"]

        # the current version stays active and usable; only the audit record is new
        assert store_versions(stack, kid) == {1: "active"}
        got = (await stack.http.get(f"{API}/keys/{kid}", headers=stack.auth())).json()["key"]
        assert got["version"] == 1 and got["status"] == "active"
        dec = await stack.http.post(
            f"{API}/keys/{kid}/decrypt",
            json={"ciphertext": enc.json()["ciphertext"]},
            headers=stack.auth(),
        )
        assert dec.status_code == 200 and dec.json()["plaintext"] == "c2VjcmV0"
        trail = audit_trail(stack, kid)
        assert [a for a, _ in trail] == ["key.created", "key.rotation_failed"]
        reason = trail[-1][1]
        assert reason.startswith("ProviderConfigurationError: Vault refused the token"), reason
        assert "permission denied" in reason and "(rotation: manual: quarterly)" in reason
        assert token not in reason and root_token not in reason
        assert transit_versions(root, kid) == {1}  # nothing made at the provider either
        assert_chain_verifies(stack)

        # the workflow is unharmed: with the permission granted, the next rotation works
        root.sys.create_or_update_policy(name=policy, policy=ROTATE_POLICY)
        r = await stack.http.post(f"{API}/keys/{kid}/rotate", json={}, headers=stack.auth())
        assert r.status_code == 200, r.text
        assert r.json()["rotation"] == {"fromVersion": 1, "toVersion": 2}
        assert transit_versions(root, kid) == {1, 2}
