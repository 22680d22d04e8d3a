"""The `keyrotor` subcommands (cli/rest.py) send only what their routes take: each option's
field against the API's own OpenAPI description, so a renamed or dropped field fails here
instead of as a 400 (or a silently ignored filter) for the user."""

from __future__ import annotations

import re
from typing import Any

import httpx

from api.app import create_app
from cli.rest import OPERATIONS
from core.credentials import AdminKeys, Role
from core.services import Services
from tests.fixtures.keys import commit_key

API = "/api/key-management"


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def _properties(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        return _properties(spec, spec["components"]["schemas"][schema["$ref"].split("/")[-1]])
    for combined in ("anyOf", "allOf", "oneOf"):
        if combined in schema:
            return set().union(*(_properties(spec, part) for part in schema[combined]))
    return set(schema.get("properties", {}))


def test_every_option_is_a_field_its_route_takes(services: Services) -> None:
    spec = create_app(services).openapi()
    routes = {(_shape(p), m.upper()): o for p, ms in spec["paths"].items() for m, o in ms.items()}
    checked = 0
    for op in OPERATIONS:
        route = routes.get((_shape(API + op.path), op.method))
        assert route is not None, f"keyrotor {op.group} {op.name}: no {op.method} {op.path}"
        if op.method == "GET":
            taken = {p["name"] for p in route.get("parameters", []) if p["in"] == "query"}
        else:
            body = route.get("requestBody", {}).get("content", {}).get("application/json", {})
            taken = _properties(spec, body.get("schema", {}))
        sent = {f.wire for f in op.fields}
        assert sent <= taken, f"keyrotor {op.group} {op.name} sends {sorted(sent - taken)}"
        checked += bool(sent)
    assert checked > 40  # the table is read, not skipped


async def test_keys_list_filters_by_owner_and_environment(services: Services) -> None:
    mine = commit_key(services, owner="team-billing")
    commit_key(services, owner="team-search")
    staging = commit_key(services, environment="staging", owner="team-billing")
    admin = AdminKeys(services.store, services.keyring).create("t", Role.ADMIN, "test")
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://keyrotor.test") as http:

        async def ids(**query: str) -> set[str]:
            r = await http.get(
                f"{API}/keys", params=query, headers={"Authorization": f"Bearer {admin}"}
            )
            assert r.status_code == 200, r.text
            return {k["id"] for k in r.json()["keys"]}

        assert await ids(owner="team-billing") == {mine, staging}
        assert await ids(owner="team-billing", environment="dev") == {mine}
        assert await ids(environment="staging") == {staging}
        assert await ids(owner="nobody") == set()
