"""Request-scoped access to the process services and the Temporal client."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import Depends, Request
from temporalio.client import Client

from api.auth import Permission, require
from api.errors import APIError
from core.codec import connect_with
from core.credentials import AdminPrincipal
from core.services import Services

log = logging.getLogger("keyrotor.api")
CONNECT_TIMEOUT = 3.0


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def temporal(request: Request) -> Client:
    """The Temporal client, connecting on first use; 503 while Temporal is unreachable.

    The use path never calls this: encryption and validation keep working without Temporal.
    """
    client: Client | None = request.app.state.client
    if client is not None:
        return client
    svc: Services = request.app.state.services
    s = svc.settings
    try:
        client = await asyncio.wait_for(
            connect_with(s, svc.keyring),
            CONNECT_TIMEOUT,
        )
    except Exception as e:  # any connection failure means the same thing to the caller
        log.warning("Temporal at %s is unreachable: %s", s.temporal_address, type(e).__name__)
        raise APIError(
            503, "TEMPORAL_UNAVAILABLE", "the lifecycle service is unavailable; retry later"
        ) from e
    request.app.state.client = client
    return client


# What routes declare: the services and the caller with a permission.
Svc = Annotated[Services, Depends(services)]
Reader = Annotated[AdminPrincipal, Depends(require(Permission.READ))]
Operator = Annotated[AdminPrincipal, Depends(require(Permission.LIFECYCLE))]
User = Annotated[AdminPrincipal, Depends(require(Permission.USE))]
Admin = Annotated[AdminPrincipal, Depends(require(Permission.ADMIN))]
