"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from temporalio.client import Client

from api import errors
from api.auth import body_schema
from api.routes import codec, credentials, handles, health, keys
from api.schemas import ValidateHandleRequest, VerifyCredentialRequest
from core.api_credentials import CACHE_POLL_INTERVAL
from core.codec import EncryptionCodec
from core.credentials import VALUE_IN_TEXT, AdminKeys, Role
from core.services import Services

log = logging.getLogger("keyrotor.api")
USAGE_FLUSH_INTERVAL = 1.0


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


def add_hot_routes(app: FastAPI) -> None:
    """The routes called most, on the app itself and first: FastAPI tries routes in order, and
    matches a route inside an included router twice (to choose the router, then within it)."""
    app.add_api_route("/livez", health.livez, methods=["GET"], tags=["health"])
    for path, endpoint, body, tag in (
        (
            "credentials/verify",
            credentials.verify_credential,
            VerifyCredentialRequest,
            "credentials",
        ),
        ("handles/validate", handles.validate_handle, ValidateHandleRequest, "handles"),
    ):
        app.add_api_route(
            f"/api/key-management/{path}",
            endpoint,
            methods=["POST"],
            tags=[tag],
            openapi_extra=body_schema(body),
        )
    for operation, use, model in keys.HOT_ROUTES:
        app.add_api_route(
            f"/api/key-management/keys/{{key_id}}/{operation}",
            use,
            methods=["POST"],
            tags=["keys"],
            openapi_extra=body_schema(model),
        )


def create_app(services: Services, client: Client | None = None) -> FastAPI:
    """The REST API over `services`. Without `client` it connects to Temporal on first need,
    so the use path serves even while Temporal is down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        credentials = services.credentials
        tasks = [
            asyncio.create_task(
                _every(USAGE_FLUSH_INTERVAL, "write usage counts", credentials.flush_usage)
            ),
            # lifecycle changes made through other processes reach verification's cache
            asyncio.create_task(
                _every(CACHE_POLL_INTERVAL, "read lifecycle changes", credentials.poll_changes)
            ),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.to_thread(credentials.flush_usage)

    install_log_redaction()
    app = FastAPI(
        lifespan=lifespan,
        title="keyrotor",
        version="0.1.0",
        description="Key lifecycle and rotation on Temporal. Every route except health and "
        "livez needs `Authorization: Bearer <admin key>`.",
    )
    app.state.services = services
    app.state.client = client
    app.state.codec = EncryptionCodec(services.keyring)
    app.state.admin_keys = AdminKeys(services.store, services.keyring)
    admin_key = services.settings.admin_key
    if admin_key is not None:
        app.state.admin_keys.ensure(admin_key.get_secret_value(), "bootstrap", Role.ADMIN)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=services.settings.ui_origins(),
        allow_methods=["POST"],
        allow_headers=["authorization", "content-type", "x-namespace"],
    )
    errors.install(app)
    add_hot_routes(app)
    app.include_router(health.router)
    app.include_router(credentials.router)
    app.include_router(handles.router)
    app.include_router(keys.router)
    app.include_router(codec.router)
    return app
