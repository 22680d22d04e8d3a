"""The `keyrotor` command's REST operations against a real API: tables by default, the API's
JSON with --json, the API's error and exit 1 when it refuses."""

from __future__ import annotations

import base64
import json

from tests.e2e.conftest import Stack, keyrotor, serve


async def test_the_rest_operations_from_the_command_line(stack: Stack) -> None:
    async with serve(stack) as url:

        async def run(*args: str) -> str:
            code, out, err = await keyrotor(url, stack.admin_key, *args)
            assert code == 0, err
            return out

        key = json.loads(
            await run("keys", "create", "--type", "encryption", "--owner", "team-cli2", "--json")
        )["key"]
        table = await run("keys", "list", "--owner", "team-cli2")
        assert key["id"] in table and "encryption" in table and "team-cli2" in table
        rotated = json.loads(await run("keys", "rotate", key["id"], "--reason", "manual", "--json"))
        assert rotated["rotation"] == {"fromVersion": 1, "toVersion": 2}
        sealed = json.loads(await run("keys", "encrypt", key["id"], "--text", "hello", "--json"))
        opened = json.loads(
            await run("keys", "decrypt", key["id"], "--ciphertext", sealed["ciphertext"], "--json")
        )
        assert base64.b64decode(opened["plaintext"]) == b"hello"
        shown = await run("keys", "get", key["id"])
        assert "status" in shown and "active" in shown

        created = json.loads(
            await run(
                "credentials",
                "create",
                "--owner",
                "team-cli2",
                "--scope",
                "read",
                "--scope",
                "write",
                "--json",
            )
        )
        assert created["credential"]["scopes"] == ["read", "write"]
        verified = json.loads(
            await run(
                "credentials", "verify", "--key", created["secret"], "--scope", "read", "--json"
            )
        )
        assert verified["verification"]["code"] == "VALID"

        hook = json.loads(
            await run(
                "webhooks",
                "create",
                "--url",
                "https://hooks.example/k",
                "--event-type",
                "keyRotated",
                "--json",
            )
        )
        assert hook["webhook"]["eventTypes"] == ["keyRotated"] and hook["secret"]
        assert hook["webhook"]["id"] in await run("webhooks", "list")

        records = await run("audit", "list", "--object-id", key["id"])
        assert "key.rotated" in records and "key.created" in records
        assert json.loads(await run("audit", "verify", "--json"))["verification"]["ok"] is True
        config = json.loads(await run("config", "get", "--json"))["config"]
        assert config["version"] >= 1 and "[key_types.encryption]" in config["toml"]
        assert "keyrotor_keys" in await run("metrics")
        health = json.loads(await run("health", "show", "--json"))["health"]
        assert health["status"] in ("healthy", "degraded")

        code, _, err = await keyrotor(
            url, stack.admin_key, "keys", "get", "key_doesnotexist0000000"
        )
        assert code == 1 and "KEY_NOT_FOUND" in err
        code, _, err = await keyrotor(url, "kra_0000000000000000_bad", "keys", "list")
        assert (code, err) == (1, "keyrotor: UNAUTHENTICATED: malformed admin key\n")
