"""Admin API keys with roles guard every route except health and livez."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from api.errors import APIError
from core.credentials import AdminKeys, AdminPrincipal, AuthenticationError, Role

BodyT = TypeVar("BodyT", bound=BaseModel)


class Permission(StrEnum):
    """What a route needs."""

    READ = "read"
    LIFECYCLE = "lifecycle"
    USE = "use"
    VERIFY = "verify"
    CODEC = "codec"
    ADMIN = "admin"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {
            Permission.READ,
            Permission.LIFECYCLE,
            Permission.USE,
            Permission.VERIFY,
            Permission.CODEC,
        }
    ),
    Role.AUDITOR: frozenset({Permission.READ}),
    Role.SERVICE: frozenset({Permission.VERIFY}),
}


async def principal(request: Request) -> AdminPrincipal:
    """Authenticate inline: one indexed read and one HMAC cost less than a hop to a worker
    thread (which waits for the GIL behind the event loop)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("missing admin key: send Authorization: Bearer <key>")
    admin_keys: AdminKeys = request.app.state.admin_keys
    return admin_keys.authenticate(token.strip())


def require(
    permission: Permission,
) -> Callable[[AdminPrincipal], Coroutine[Any, Any, AdminPrincipal]]:
    """A dependency that authenticates the caller and checks its role allows `permission`."""

    # async: a plain function would run on a worker thread (and wait there for the GIL)
    async def check(who: AdminPrincipal = Depends(principal)) -> AdminPrincipal:  # noqa: B008
        if permission not in ROLE_PERMISSIONS[who.role]:
            raise APIError(403, "FORBIDDEN", f"role {who.role} may not {permission}")
        return who

    return check


async def hot_request(request: Request, permission: Permission, model: type[BodyT]) -> BodyT:
    """Authorize and parse a request on a hot route by hand: the same checks and the same
    error answers as the dependency path (`require` and a body model), without FastAPI's
    dependency resolution, which costs more than the verification itself."""
    await require(permission)(await principal(request))
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a hot route, so that /docs still shows its body."""
    schema = model.model_json_schema(by_alias=True)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
