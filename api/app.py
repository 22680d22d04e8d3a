"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send
from temporalio.client import Client

from api import errors
from api.auth import body_schema
from api.hot import HotPath, HotRoute, body_limit
from api.routes import (
    audit,
    bulk,
    cleanup,
    codec,
    config,
    credentials,
    events,
    handles,
    health,
    keys,
    master_key,
    warnings,
    webhooks,
)
from api.schemas import ValidateHandleRequest, VerifyCredentialRequest
from core.changes import CACHE_POLL_INTERVAL
from core.codec import EncryptionCodec
from core.credentials import VALUE_IN_TEXT, AdminKeys, Role
from core.logs import request_id, setup_logging
from core.metrics import Metrics
from core.ratelimit import ProcessRateLimiter
from core.runtime import tune_gc
from core.services import Services, build_services
from core.settings import Settings

log = logging.getLogger("keyrotor.api")
USAGE_FLUSH_INTERVAL = 1.0
# how often each API process looks for a newer policy version (PUT /config from another one)
POLICY_POLL_INTERVAL = 2.0
FAILURE_AUDIT_INTERVAL = 60.0
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RedactSecrets(logging.Filter):
    """Replaces credential and handle values in log records: they never belong in a URL, but a
    client may put one there, and access logs print paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = VALUE_IN_TEXT.sub(r"\1_<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def install_log_redaction() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


async def _every(seconds: float, what: str, job: Callable[[], object]) -> None:
    """Run `job` in a thread every `seconds` until cancelled; a failure is logged and retried."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(job)
        except Exception as e:  # the store may be briefly unavailable: try again next time
            log.warning("could not %s: %s", what, type(e).__name__)


def hot_routes() -> list[HotRoute]:
    """The routes called most: served by `HotPath` ahead of the middleware and the router."""
    api = "/api/key-management"
    return [
        HotRoute("GET", "/livez", health.livez, None, "health"),
        HotRoute(
            "POST",
            f"{api}/credentials/verify",
            credentials.verify_credential,
            VerifyCredentialRequest,
            "credentials",
        ),
        HotRoute(
            "POST",
            f"{api}/handles/validate",
            handles.validate_handle,
            ValidateHandleRequest,
            "handles",
        ),
        *(
            HotRoute("POST", f"{api}/keys/{{key_id}}/{operation}", use, model, "keys")
            for operation, use, model in keys.HOT_ROUTES
        ),
    ]


class KeyrotorAPI(FastAPI):
    """FastAPI with the hot routes answered before its middleware stack (`api.hot`)."""

    hot: HotPath | None = None
    max_body_bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.hot is None:
            await super().__call__(scope, receive, send)
            return
        # the caller's X-Request-Id if it is a sane one, else a new one: on every log line
        # written while serving the request (`core.logs`) and in the answer's headers
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        rid = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        token = request_id.set(rid.decode())
        try:
            refused, receive = body_limit(self.max_body_bytes, scope, receive)
            if refused is not None:
                await refused(scope, receive, send_with_id)
            elif not await self.hot.serve(scope, receive, send_with_id):
                await super().__call__(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def from_environment() -> KeyrotorAPI:
    """The app of one `keyrotor api` process, with services of its own from the environment
    (closed when it shuts down)."""
    setup_logging()  # a process uvicorn spawned has none yet
    services = build_services(Settings())
    app = create_app(services)
    app.state.close_services = True
    tune_gc()
    return app


def create_app(
    services: Services, client: Client | None = None, *, dev_ui_codec: bool = False
) -> KeyrotorAPI:
    """The REST API over `services`. Without `client` it connects to Temporal on first need,
    so the use path serves even while Temporal is down. `dev_ui_codec` (`keyrotor dev` only,
    never a setting) lets the local Temporal UI call the codec without an admin key."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        credentials = services.credentials
        tasks = [
            asyncio.create_task(
                _every(USAGE_FLUSH_INTERVAL, "write usage counts", credentials.flush_usage)
            ),
            asyncio.create_task(
                _every(USAGE_FLUSH_INTERVAL, "write grace uses", services.keys.flush_grace_uses)
            ),
            asyncio.create_task(
                _every(POLICY_POLL_INTERVAL, "read the policy", services.refresh_policies)
            ),
            asyncio.create_task(
                _every(
                    FAILURE_AUDIT_INTERVAL,
                    "audit failed verifications",
                    credentials.audit_failures,
                )
            ),
            # lifecycle changes made through other processes reach the use path's caches
            asyncio.create_task(
                _every(CACHE_POLL_INTERVAL, "read lifecycle changes", services.changes.poll)
            ),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            # what this process still holds, written once more; a failure is logged and the
            # stop goes on (the counts are lost: a stop is no place to wait for the store)
            for what, job in (
                ("write usage counts", credentials.flush_usage),
                ("write grace uses", services.keys.flush_grace_uses),
                ("audit failed verifications", credentials.audit_failures),
            ):
                try:
                    await asyncio.to_thread(job)
                except Exception as e:
                    log.error("could not %s before stopping: %s", what, type(e).__name__)
            if app.state.close_services:
                services.close()

    install_log_redaction()
    app = KeyrotorAPI(
        lifespan=lifespan,
        title="keyrotor",
        version="0.1.0",
        description="Key lifecycle and rotation on Temporal. Every route except health and "
        "livez needs `Authorization: Bearer <admin key>`.",
    )
    app.state.services = services
    app.state.close_services = False
    app.state.dev_ui_codec = dev_ui_codec
    app.state.health_checks = health.HealthChecks()
    app.state.client = client
    app.state.codec = EncryptionCodec(services.keyring)
    app.state.admin_keys = AdminKeys(services.store, services.keyring)
    # per process, by choice (`core.ratelimit`): a guard against runaway scripts, which a
    # shared count would make cost a round trip or a database write on every admin request
    app.state.admin_limiter = ProcessRateLimiter()
    admin_key = services.settings.admin_key
    if admin_key is not None:
        app.state.admin_keys.ensure(admin_key.get_secret_value(), "bootstrap", Role.ADMIN)
    settings = services.settings
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.ui_origins() + settings.browser_origins(),
        allow_methods=["POST", "GET", "DELETE"] if settings.browser_origins() else ["POST"],
        allow_headers=["authorization", "content-type", "x-namespace", "idempotency-key"],
        expose_headers=["retry-after", "x-keyrotor-audit-head-seq", "x-keyrotor-audit-head-hash"],
    )
    errors.install(app)
    hot = hot_routes()
    for route in hot:  # registered too: /docs shows them, and a CORS request is served here
        app.add_api_route(
            route.path,
            route.endpoint,
            methods=[route.method],
            tags=[route.tag],
            openapi_extra=body_schema(route.body) if route.body else None,
        )
    app.state.metrics = Metrics()
    app.hot = HotPath(app, hot, app.state.metrics)
    app.max_body_bytes = services.settings.max_request_bytes
    app.include_router(health.router)
    app.include_router(credentials.router)
    app.include_router(handles.router)
    app.include_router(keys.router)
    app.include_router(codec.router)
    app.include_router(audit.router)
    app.include_router(events.router)
    app.include_router(warnings.router)
    app.include_router(webhooks.router)
    app.include_router(bulk.router)
    app.include_router(master_key.router)
    app.include_router(cleanup.router)
    app.include_router(config.router)
    return app
