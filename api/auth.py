"""Admin API keys with roles guard every route except health and livez."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from api.errors import APIError
from core.credentials import AdminKeys, AdminPrincipal, AuthenticationError, Role
from core.ratelimit import ProcessRateLimiter

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
) -> Callable[[Request, AdminPrincipal], Coroutine[Any, Any, AdminPrincipal]]:
    """A dependency that authenticates the caller, checks its role allows `permission`, and
    holds it to the admin API's rate limit (`KEYROTOR_ADMIN_RATE_LIMIT` per admin key, counted
    per API process)."""

    # async: a plain function would run on a worker thread (and wait there for the GIL)
    async def check(
        request: Request,
        who: AdminPrincipal = Depends(principal),  # noqa: B008
    ) -> AdminPrincipal:
        permit(who, permission)
        limit = request.app.state.services.settings.admin_rate_limit
        if limit:
            limiter: ProcessRateLimiter = request.app.state.admin_limiter
            wait = limiter.allow(who.key_id, limit, 60.0, time.monotonic())
            if wait is not None:
                raise APIError(
                    429,
                    "RATE_LIMITED",
                    f"more than {limit} requests a minute with this admin key",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return who

    return check


def permit(who: AdminPrincipal, permission: Permission) -> None:
    if permission not in ROLE_PERMISSIONS[who.role]:
        raise APIError(403, "FORBIDDEN", f"role {who.role} may not {permission}")


async def hot_request(request: Request, permission: Permission, model: type[BodyT]) -> BodyT:
    """Authorize and parse a request on a hot route by hand: the same checks and the same
    error answers as the dependency path (`require` and a body model), without FastAPI's
    dependency resolution, which costs more than the verification itself."""
    # no rate limit here: these routes serve applications, and credentials and handles carry
    # limits of their own
    permit(await principal(request), permission)
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a hot route, so that /docs still shows its body."""
    schema = model.model_json_schema(by_alias=True)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
