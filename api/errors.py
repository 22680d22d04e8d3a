"""One table from domain errors to HTTP statuses; every error body is the same envelope.

`{"error": {"code": ..., "message": ...}}`. No stack trace and no provider text leaks: the
messages come from our own exceptions, never from an SDK.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from core.algorithms import AlgorithmError, DecryptionError, InvalidSignatureError
from core.api_credentials import (
    CredentialArchivedError,
    CredentialNotFoundError,
    HandleNotFoundError,
)
from core.bulk import BulkError, BulkNotFoundError
from core.credentials import AuthenticationError
from core.keys import KeyNotFoundError, KeyStateError, MalformedTokenError, ReservedMessageError
from core.lifecycle import LifecycleError
from core.policy import PolicyError
from core.providers.base import ProviderConfigurationError, ProviderError
from core.webhooks import WebhookError, WebhookNotFoundError, WebhookStateError

log = logging.getLogger("keyrotor.api")


class APIError(Exception):
    """An error raised by a route with its status and code."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def temporal_failed(e: RPCError) -> APIError:
    """503 TEMPORAL_UNAVAILABLE for a Temporal call that failed, logged by its status. A
    namespace without keyrotor's search attributes refuses every new workflow: said so, since
    nothing else tells the operator (the server's own text is not passed on)."""
    log.warning("a Temporal call failed: %s", e.status.name)
    if e.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in e.message:
        return APIError(
            503,
            "TEMPORAL_UNAVAILABLE",
            "the Temporal namespace does not have keyrotor's search attributes: register them"
            " (README, Deployment)",
        )
    return APIError(503, "TEMPORAL_UNAVAILABLE", "the lifecycle service failed")


# (exception class, status, code); the first matching row wins, so subclasses come first.
ERROR_TABLE: list[tuple[type[Exception], int, str]] = [
    (AuthenticationError, 401, "UNAUTHENTICATED"),
    (KeyNotFoundError, 404, "KEY_NOT_FOUND"),
    (CredentialArchivedError, 410, "ARCHIVED"),
    (HandleNotFoundError, 404, "HANDLE_NOT_FOUND"),
    (CredentialNotFoundError, 404, "CREDENTIAL_NOT_FOUND"),
    (KeyStateError, 409, "KEY_STATE"),
    (LifecycleError, 409, "KEY_STATE"),
    (MalformedTokenError, 400, "MALFORMED_INPUT"),
    (ReservedMessageError, 400, "INVALID_REQUEST"),
    (DecryptionError, 400, "DECRYPTION_FAILED"),
    (InvalidSignatureError, 400, "INVALID_SIGNATURE"),
    (AlgorithmError, 400, "UNSUPPORTED_ALGORITHM"),
    (PolicyError, 400, "INVALID_POLICY"),
    (ProviderConfigurationError, 400, "PROVIDER_NOT_CONFIGURED"),
    (ProviderError, 503, "PROVIDER_UNAVAILABLE"),
    (WebhookNotFoundError, 404, "WEBHOOK_NOT_FOUND"),
    (WebhookStateError, 409, "WEBHOOK_STATE"),
    (WebhookError, 400, "INVALID_REQUEST"),
    (BulkNotFoundError, 404, "BULK_NOT_FOUND"),
    (BulkError, 400, "INVALID_REQUEST"),
]

SAFE_MESSAGES = {
    DecryptionError: "the ciphertext could not be decrypted",
    ProviderError: "the key provider failed",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into the envelope."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = first.get("msg", "invalid request")
        return error_response(400, "INVALID_REQUEST", f"{where}: {msg}" if where else msg)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "REQUEST_TOO_LARGE"}.get(
            e.status_code, "HTTP_ERROR"
        )
        return error_response(e.status_code, code, str(e.detail))

    async def _domain(request: Request, e: Exception) -> JSONResponse:
        for cls, status, code in ERROR_TABLE:
            if isinstance(e, cls):
                safe = next((m for c, m in SAFE_MESSAGES.items() if isinstance(e, c)), None)
                if isinstance(e, PolicyError):  # the field and why, not the server's file path
                    safe = f"{e.field}: {e.reason}"
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                return error_response(status, code, safe or str(e), headers)
        raise e

    for cls, _, _ in ERROR_TABLE:
        app.add_exception_handler(cls, _domain)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(e).__name__, request.method, request.url.path)
        return error_response(500, "INTERNAL", "internal error")
