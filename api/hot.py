"""The hot routes, served in front of FastAPI's middleware and router.

A hot route (livez, verify and validate, the key use operations) is answered by its endpoint
directly: no middleware stack, no route search, no dependency resolution. Those layers cost
several times what verifying a credential or encrypting a kilobyte does. The endpoints are the
same functions FastAPI has registered for these paths (so /docs shows them, and a request that
needs a middleware still gets it), and an error becomes the same answer through the same
exception handlers.

A request carrying an `Origin` header goes through the full app instead: CORS belongs to the
middleware, and browsers are not the callers of these routes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from re import Pattern
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import Message, Receive, Scope, Send

from api.errors import error_response
from core.metrics import Metrics

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    method: str
    path: str
    endpoint: Endpoint
    body: type[BaseModel] | None
    tag: str

    @property
    def pattern(self) -> Pattern[str]:
        return compile_path(self.path)[0]

    @property
    def name(self) -> str:
        """The route in metrics: `livez`, `credentials/verify`, `keys/encrypt`, ..."""
        return (
            self.path.removeprefix("/").removeprefix("api/key-management/").replace("{key_id}/", "")
        )


class HotPath:
    """Matches and serves the hot routes of `app`; `serve` answers False for any other.
    Counts and times what it serves in `metrics`."""

    def __init__(self, app: FastAPI, routes: list[HotRoute], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.exact: dict[tuple[str, str], HotRoute] = {}
        self.patterns: list[tuple[Pattern[str], HotRoute]] = []
        for r in routes:
            if "{" in r.path:
                self.patterns.append((r.pattern, r))
            else:
                self.exact[(r.method, r.path)] = r

    def match(self, scope: Scope) -> tuple[HotRoute, dict[str, str]] | None:
        method, path = scope["method"], scope["path"]
        route = self.exact.get((method, path))
        if route is not None:
            return route, {}
        for pattern, route in self.patterns:
            if route.method == method and (found := pattern.match(path)):
                return route, found.groupdict()
        return None

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> bool:
        hit = self.match(scope)
        if hit is None or any(name == b"origin" for name, _ in scope["headers"]):
            return False
        started = time.perf_counter()
        route, params = hit
        scope["app"] = self.app
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except Exception as e:  # the app's own handlers shape every error
            response = await self._error(request, e)
        await response(scope, receive, send)
        self.metrics.request(route.name, response.status_code, time.perf_counter() - started)
        return True

    async def _error(self, request: Request, e: Exception) -> Response:
        handlers: dict[Any, Any] = self.app.exception_handlers
        for cls in type(e).__mro__:
            handler = handlers.get(cls)
            if handler is not None:
                response: Response = await handler(request, e)
                return response
        raise e


def body_limit(max_bytes: int, scope: Scope, receive: Receive) -> tuple[Response | None, Receive]:
    """(a 413 answer for a request whose Content-Length is over `max_bytes`, else None;
    `receive` refusing a body that grows past it, as an HTTP 413 error for the handlers)."""
    declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
    message = f"the body exceeds {max_bytes} bytes"
    if not declared.isdigit() or int(declared) > max_bytes:
        return error_response(413, "REQUEST_TOO_LARGE", message), receive
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        received = await receive()
        seen += len(received.get("body", b""))
        if seen > max_bytes:
            raise HTTPException(413, message)
        return received

    return None, capped
