"""Every admin-API route against every admin role, and every way of presenting a bad key.

The routes come from the application itself (so a new route is covered the day it is added)
and must match the hand-written table below, which is where each route's permission is decided.
The app has no Temporal client and points at a port nobody listens on: a lifecycle route that
gets past authorization answers 503, so a 403 or 401 there also shows the refusal came first.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from api.app import create_app
from api.auth import ROLE_PERMISSIONS, Permission, require
from api.deps import temporal
from core.credentials import ADMIN_PREFIX, AdminKeys, Role
from core.services import Services
from core.store.models import AdminKeyRow
from tests.fixtures.temporal import make_services

Route = tuple[str, str]  # (method, path template)

API = "/api/key-management"
KEYS = f"{API}/keys"
CREDS = f"{API}/credentials"
HANDLES = f"{API}/handles"

# The decision for every route: the permission it needs, or None for the unauthenticated ones.
EXPECTED: dict[Route, Permission | None] = {
    ("GET", "/livez"): None,
    ("GET", f"{API}/health"): None,
    ("GET", f"{API}/health/keys"): None,
    ("GET", f"{API}/health/handles"): None,
    ("POST", f"{KEYS}/generate"): Permission.LIFECYCLE,
    ("GET", KEYS): Permission.READ,
    ("GET", f"{KEYS}/statistics"): Permission.READ,
    ("GET", f"{KEYS}/{{key_id}}"): Permission.READ,
    ("POST", f"{KEYS}/{{key_id}}/rotate"): Permission.LIFECYCLE,
    ("DELETE", f"{KEYS}/{{key_id}}"): Permission.LIFECYCLE,
    ("POST", f"{KEYS}/{{key_id}}/suspend"): Permission.LIFECYCLE,
    ("POST", f"{KEYS}/{{key_id}}/resume"): Permission.LIFECYCLE,
    ("POST", f"{KEYS}/{{key_id}}/warnings/acknowledge"): Permission.LIFECYCLE,
    ("POST", f"{KEYS}/{{key_id}}/encrypt"): Permission.USE,
    ("POST", f"{KEYS}/{{key_id}}/wrap"): Permission.USE,
    ("POST", f"{KEYS}/{{key_id}}/unwrap"): Permission.USE,
    ("POST", f"{KEYS}/{{key_id}}/decrypt"): Permission.USE,
    ("POST", f"{KEYS}/{{key_id}}/sign"): Permission.USE,
    ("POST", f"{KEYS}/{{key_id}}/verify"): Permission.USE,
    ("POST", f"{KEYS}/{{key_id}}/rewrap"): Permission.USE,
    ("POST", f"{KEYS}/{{key_id}}/derive"): Permission.USE,
    # public keys are not secret: whoever may read a key may read them (auditors too)
    ("GET", f"{KEYS}/{{key_id}}/public-key"): Permission.READ,
    ("GET", f"{KEYS}/{{key_id}}/jwks"): Permission.READ,
    ("POST", CREDS): Permission.LIFECYCLE,
    ("GET", CREDS): Permission.READ,
    ("POST", f"{CREDS}/verify"): Permission.VERIFY,
    ("GET", f"{CREDS}/{{credential_id}}"): Permission.READ,
    ("POST", f"{CREDS}/{{credential_id}}/rotate"): Permission.LIFECYCLE,
    ("POST", f"{CREDS}/{{credential_id}}/reveal"): Permission.LIFECYCLE,
    ("DELETE", f"{CREDS}/{{credential_id}}"): Permission.LIFECYCLE,
    ("POST", f"{CREDS}/{{credential_id}}/suspend"): Permission.LIFECYCLE,
    ("POST", f"{CREDS}/{{credential_id}}/resume"): Permission.LIFECYCLE,
    ("POST", f"{CREDS}/{{credential_id}}/warnings/acknowledge"): Permission.LIFECYCLE,
    ("POST", f"{HANDLES}/generate"): Permission.LIFECYCLE,
    ("GET", HANDLES): Permission.READ,
    ("GET", f"{HANDLES}/statistics"): Permission.READ,
    ("POST", f"{HANDLES}/validate"): Permission.VERIFY,
    ("GET", f"{HANDLES}/{{family_id}}"): Permission.READ,
    ("POST", f"{HANDLES}/{{family_id}}/rotate"): Permission.LIFECYCLE,
    ("DELETE", f"{HANDLES}/{{family_id}}"): Permission.LIFECYCLE,
    ("POST", f"{HANDLES}/{{family_id}}/suspend"): Permission.LIFECYCLE,
    ("POST", f"{HANDLES}/{{family_id}}/resume"): Permission.LIFECYCLE,
    ("POST", f"{HANDLES}/{{family_id}}/warnings/acknowledge"): Permission.LIFECYCLE,
    ("POST", "/codec/encode"): Permission.CODEC,
    ("POST", "/codec/decode"): Permission.CODEC,
    ("GET", "/metrics"): Permission.READ,
    ("GET", f"{API}/events"): Permission.READ,
    ("GET", f"{API}/events/stream"): Permission.READ,
    ("GET", f"{API}/audit"): Permission.READ,
    ("GET", f"{API}/audit/verify"): Permission.READ,
    ("GET", f"{API}/audit/export"): Permission.READ,
    ("GET", f"{API}/warnings"): Permission.READ,
    ("POST", f"{API}/webhooks"): Permission.ADMIN,
    ("GET", f"{API}/webhooks"): Permission.READ,
    ("POST", f"{API}/bulk"): Permission.ADMIN,
    ("GET", f"{API}/config"): Permission.READ,
    ("PUT", f"{API}/config"): Permission.ADMIN,
    ("GET", f"{API}/bulk"): Permission.READ,
    ("GET", f"{API}/bulk/{{operation_id}}"): Permission.READ,
    ("DELETE", f"{API}/bulk/{{operation_id}}"): Permission.ADMIN,
    ("GET", f"{API}/master-key"): Permission.READ,
    ("POST", f"{API}/keys/import"): Permission.ADMIN,
    ("POST", f"{CREDS}/import"): Permission.ADMIN,
    ("GET", f"{API}/cleanup"): Permission.READ,
    ("POST", f"{API}/cleanup/run"): Permission.ADMIN,
    ("POST", f"{API}/master-key/rotate"): Permission.ADMIN,
    ("GET", f"{API}/peppers"): Permission.READ,
    ("POST", f"{API}/peppers/rehash"): Permission.ADMIN,
    ("GET", f"{API}/webhooks/{{webhook_id}}"): Permission.READ,
    ("DELETE", f"{API}/webhooks/{{webhook_id}}"): Permission.ADMIN,
    ("GET", f"{API}/webhooks/{{webhook_id}}/deliveries"): Permission.READ,
    ("POST", f"{API}/webhooks/{{webhook_id}}/deliveries/{{delivery_id}}/replay"): Permission.ADMIN,
}
# The codec routes check their permission in the handler, after the `keyrotor dev` UI-origin
# bypass, so no `require` dependency declares it; the matrix still checks they enforce it.
# The hot routes (verify, validate) authorize by hand for speed (`api.auth.hot_request`).
CHECKED_IN_HANDLER: set[Route] = {
    ("POST", "/codec/encode"),
    ("POST", "/codec/decode"),
    ("POST", f"{CREDS}/verify"),
    ("POST", f"{HANDLES}/validate"),
    ("POST", f"{KEYS}/{{key_id}}/encrypt"),
    ("POST", f"{KEYS}/{{key_id}}/decrypt"),
    ("POST", f"{KEYS}/{{key_id}}/sign"),
    ("POST", f"{KEYS}/{{key_id}}/verify"),
    ("POST", f"{KEYS}/{{key_id}}/wrap"),
    ("POST", f"{KEYS}/{{key_id}}/unwrap"),
}
# The routes that connect to Temporal once the caller is authorized.
USES_TEMPORAL: set[Route] = {
    ("POST", f"{KEYS}/generate"),
    ("POST", f"{KEYS}/{{key_id}}/rotate"),
    ("DELETE", f"{KEYS}/{{key_id}}"),
    ("POST", f"{KEYS}/{{key_id}}/suspend"),
    ("POST", f"{KEYS}/{{key_id}}/resume"),
    ("POST", CREDS),
    ("POST", f"{CREDS}/{{credential_id}}/rotate"),
    ("DELETE", f"{CREDS}/{{credential_id}}"),
    ("POST", f"{CREDS}/{{credential_id}}/suspend"),
    ("POST", f"{CREDS}/{{credential_id}}/resume"),
    ("POST", f"{HANDLES}/generate"),
    ("POST", f"{HANDLES}/{{family_id}}/rotate"),
    ("DELETE", f"{HANDLES}/{{family_id}}"),
    ("POST", f"{HANDLES}/{{family_id}}/suspend"),
    ("POST", f"{HANDLES}/{{family_id}}/resume"),
}
# FastAPI's own documentation routes: plain Starlette routes, public by design (DESIGN 7).
DOCS_ROUTES: set[Route] = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
# The roles as the README documents them.
DOCUMENTED_ROLES: dict[Role, set[Permission]] = {
    Role.ADMIN: set(Permission),
    Role.OPERATOR: {
        Permission.READ,
        Permission.LIFECYCLE,
        Permission.USE,
        Permission.VERIFY,
        Permission.CODEC,
    },
    Role.AUDITOR: {Permission.READ},
    Role.SERVICE: {Permission.VERIFY},
}

_CHECK_CODE = require(Permission.READ).__code__  # the closure every `require(...)` returns


@dataclass(frozen=True)
class Discovered:
    """What a route's dependencies declare."""

    permissions: frozenset[Permission]
    uses_temporal: bool


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _declared(dependant: Dependant) -> Discovered:
    permissions = set()
    uses_temporal = False
    for call in _calls(dependant):
        if getattr(call, "__code__", None) is _CHECK_CODE:
            permissions.add(Permission(inspect.getclosurevars(call).nonlocals["permission"]))
        uses_temporal |= call is temporal
    return Discovered(frozenset(permissions), uses_temporal)


def discover(app: FastAPI) -> tuple[dict[Route, Discovered], set[Route]]:
    """The app's API routes with what they declare, and its other (plain Starlette) routes.

    `app.routes` holds one `_IncludedRouter` per `include_router` since FastAPI 0.137;
    `iter_route_contexts` flattens them into the routes as served (prefix included)."""
    api: dict[Route, Discovered] = {}
    other: set[Route] = set()
    for context in iter_route_contexts(app.routes):
        methods = sorted((context.methods or set()) - {"HEAD"})
        assert context.path is not None
        for method in methods:
            if isinstance(context.original_route, APIRoute):
                api[(method, context.path)] = _declared(context.dependant)
            else:
                other.add((method, context.path))
    return api, other


def _discover_at_collection() -> tuple[dict[Route, Discovered], set[Route]]:
    with tempfile.TemporaryDirectory(prefix="keyrotor-roles-") as d:
        services = make_services(Path(d))
        try:
            return discover(create_app(services))
        finally:
            services.close()


DISCOVERED, OTHER_ROUTES = _discover_at_collection()
ALL_ROUTES: list[Route] = sorted(set(DISCOVERED) | set(EXPECTED), key=lambda r: (r[1], r[0]))


def permission_of(route: Route) -> Permission | None:
    """The table's decision; a route missing from it (a failure below) by what it declares."""
    if route in EXPECTED:
        return EXPECTED[route]
    found = DISCOVERED[route].permissions
    return next(iter(found)) if len(found) == 1 else None


PROTECTED = [r for r in ALL_ROUTES if permission_of(r) is not None]
PUBLIC = [r for r in ALL_ROUTES if permission_of(r) is None]


def route_id(route: Route) -> str:
    return f"{route[0]} {route[1]}"


def url_of(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "does-not-exist", path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class Env:
    services: Services
    http: httpx.AsyncClient
    keys: dict[Role, str]
    revoked: str

    async def call(self, route: Route, authorization: str | None) -> httpx.Response:
        method, path = route
        headers = {} if authorization is None else {"Authorization": authorization}
        if route == ("GET", f"{API}/events/stream"):
            # an event stream never ends (and the test transport waits for the end): a bad
            # Last-Event-ID is refused once the caller is authorized, before the stream starts
            headers["Last-Event-ID"] = "not an id"
        # no Origin header: the codec routes' dev bypass must never apply here
        body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH", "DELETE") else None
        return await self.http.request(method, url_of(path), headers=headers, json=body)


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    services = make_services(tmp_path_factory.mktemp("roles"))
    services.settings.temporal_address = f"127.0.0.1:{closed_port()}"
    admin_keys = AdminKeys(services.store, services.keyring)
    keys = {role: admin_keys.create(f"test-{role}", role, "test") for role in Role}
    # the most powerful role, so that any route ignoring revocation would let it through
    revoked = admin_keys.create("test-revoked", Role.ADMIN, "test")
    with services.store.write() as s:
        row = s.get(AdminKeyRow, revoked.split("_")[1])
        assert row is not None
        row.revoked_at = datetime.now(UTC)
    app = create_app(services)  # no client: it would connect on first need
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield Env(services, http, keys, revoked)
    services.close()


# --- the table ---------------------------------------------------------------------------


def test_every_route_has_a_decided_permission() -> None:
    declared = {
        route: frozenset()
        if route in CHECKED_IN_HANDLER or permission is None
        else frozenset({permission})
        for route, permission in EXPECTED.items()
    }
    assert {route: d.permissions for route, d in DISCOVERED.items()} == declared


def test_no_route_takes_the_temporal_client_as_a_dependency() -> None:
    # The lifecycle routes (USES_TEMPORAL) ask for the client only once they have checked the
    # request and found the object: bad input and unknown ids are 4xx even while Temporal is
    # down (test_role_on_route shows it for each of them).
    assert {route for route, d in DISCOVERED.items() if d.uses_temporal} == set()


def test_the_only_other_routes_are_the_docs() -> None:
    assert OTHER_ROUTES == DOCS_ROUTES


def test_roles_have_their_documented_permissions() -> None:
    assert {role: set(p) for role, p in ROLE_PERMISSIONS.items()} == DOCUMENTED_ROLES
    assert set(ROLE_PERMISSIONS) == set(Role)


# --- role x route ------------------------------------------------------------------------


def _matrix() -> Iterator[Any]:
    for route in PROTECTED:
        for role in Role:
            yield pytest.param(route, role, id=f"{route_id(route)}-{role}")


@pytest.mark.parametrize(("route", "role"), list(_matrix()))
async def test_role_on_route(env: Env, route: Route, role: Role) -> None:
    permission = permission_of(route)
    assert permission is not None
    r = await env.call(route, f"Bearer {env.keys[role]}")
    if permission not in ROLE_PERMISSIONS[role]:
        assert r.status_code == 403, r.text
        assert r.json() == {
            "error": {"code": "FORBIDDEN", "message": f"role {role} may not {permission}"}
        }
        return
    if route == ("POST", f"{HANDLES}/{{family_id}}/rotate") and role != Role.ADMIN:
        # without the holder's current value, replacing a handle is for admins only
        assert r.status_code == 403, r.text
        assert r.json()["error"]["message"] == "present the current value (handle) or be an admin"
        return
    assert r.status_code not in (401, 403), r.text
    # a whole request (`{}` creates a credential, none is needed to run the cleanup): then it
    # needs Temporal, which is down
    if route in (("POST", CREDS), ("POST", f"{API}/cleanup/run")):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "TEMPORAL_UNAVAILABLE"
    elif route in USES_TEMPORAL:  # no `type`, or an unknown id: refused before Temporal is asked
        assert r.json()["error"]["code"] in (
            "INVALID_REQUEST",
            "KEY_NOT_FOUND",
            "CREDENTIAL_NOT_FOUND",
            "HANDLE_NOT_FOUND",
        ), r.text
    elif route == ("GET", "/metrics"):  # Prometheus text
        assert r.status_code == 200 and "keyrotor_audit_head_seq" in r.text, r.text
    elif route == ("GET", f"{API}/audit/export"):  # JSON Lines, not one JSON document
        assert r.status_code == 200 and r.headers["x-keyrotor-audit-head-seq"].isdigit(), r.text
    else:
        assert r.status_code < 500, r.text
        # a miss in the router (a wrong dummy url) would not say anything about the role
        assert r.json().get("error", {}).get("code") not in ("NOT_FOUND", "METHOD_NOT_ALLOWED")


# --- bad or missing keys -----------------------------------------------------------------

BAD_KEYS: dict[str, Callable[[Env], str | None]] = {
    "no key": lambda env: None,
    "empty bearer": lambda env: "Bearer ",
    "basic scheme": lambda env: f"Basic {env.keys[Role.ADMIN]}",
    "malformed key": lambda env: "Bearer not-an-admin-key",
    "unknown key": lambda env: (
        f"Bearer {ADMIN_PREFIX}_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    ),
    "wrong secret": lambda env: (
        f"Bearer {env.keys[Role.ADMIN].rsplit('_', 1)[0]}_{secrets.token_urlsafe(32)}"
    ),
    "revoked key": lambda env: f"Bearer {env.revoked}",
}


def _bad_key_cases() -> Iterator[Any]:
    for route in PROTECTED:
        for name in BAD_KEYS:
            yield pytest.param(route, name, id=f"{route_id(route)}-{name}")


@pytest.mark.parametrize(("route", "bad_key"), list(_bad_key_cases()))
async def test_bad_key_is_unauthenticated(env: Env, route: Route, bad_key: str) -> None:
    authorization = BAD_KEYS[bad_key](env)
    r = await env.call(route, authorization)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "UNAUTHENTICATED"
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}
    if authorization is not None and len(authorization.split(" ", 1)[-1]) > 8:
        assert authorization.split(" ", 1)[-1] not in r.text  # the key is never echoed


@pytest.mark.parametrize("route", PUBLIC, ids=route_id)
async def test_health_answers_without_a_key(env: Env, route: Route) -> None:
    for authorization in (None, "Bearer not-an-admin-key", f"Bearer {env.revoked}"):
        r = await env.call(route, authorization)
        assert r.status_code == 200, r.text
        assert "www-authenticate" not in r.headers


# --- refusal before Temporal ---------------------------------------------------------------


async def test_refusal_comes_before_any_temporal_connection(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener stands in for Temporal and counts connections: refused callers make none."""
    connections = 0

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(env.services.settings, "temporal_address", f"127.0.0.1:{port}")
    async with server:
        refused = 0
        for route in sorted(USES_TEMPORAL):
            permission = permission_of(route)
            assert permission is not None
            for role in Role:
                if permission not in ROLE_PERMISSIONS[role]:
                    r = await env.call(route, f"Bearer {env.keys[role]}")
                    assert r.status_code == 403, (route, role, r.text)
                    refused += 1
            r = await env.call(route, None)
            assert r.status_code == 401, (route, r.text)
            r = await env.call(route, f"Bearer {env.revoked}")
            assert r.status_code == 401, (route, r.text)
        assert refused >= len(USES_TEMPORAL)
        assert connections == 0
        # control: an authorized caller does reach the listener, so the count above can move
        r = await env.call(("POST", CREDS), f"Bearer {env.keys[Role.ADMIN]}")
        assert r.status_code == 503, r.text
        assert connections >= 1


async def test_a_webhook_url_shows_whole_to_admins_only(env: Env) -> None:
    """Its path can be the credential (Slack, Teams): the other roles see its origin."""
    view, _ = env.services.webhooks.create(
        "https://hooks.example:8443/services/T0/B0/hook-path-secret?k=v", "", [], None, "test"
    )
    for role, shown in (
        (Role.ADMIN, "https://hooks.example:8443/services/T0/B0/hook-path-secret?k=v"),
        (Role.AUDITOR, "https://hooks.example:8443"),
        (Role.OPERATOR, "https://hooks.example:8443"),
    ):
        headers = {"Authorization": f"Bearer {env.keys[role]}"}
        one = await env.http.get(f"{API}/webhooks/{view['id']}", headers=headers)
        assert one.json()["webhook"]["url"] == shown, role
        listed = (await env.http.get(f"{API}/webhooks", headers=headers)).json()["webhooks"]
        assert [w["url"] for w in listed if w["id"] == view["id"]] == [shown], role
