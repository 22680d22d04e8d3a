"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from temporalio.client import Client

from api import errors
from api.routes import codec, health, keys
from core.codec import EncryptionCodec
from core.credentials import AdminKeys, Role
from core.services import Services


def create_app(services: Services, client: Client | None = None) -> FastAPI:
    """The REST API over `services`. Without `client` it connects to Temporal on first need,
    so the use path serves even while Temporal is down."""

    app = FastAPI(
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
    app.include_router(health.router)
    app.include_router(keys.router)
    app.include_router(codec.router)
    return app
