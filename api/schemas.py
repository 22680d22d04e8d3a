"""Request and response bodies at the HTTP edge (camelCase, as in the reference API)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


class Body(BaseModel):
    """Request bodies: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# Metadata travels in every workflow input and continue-as-new, every cached workflow and every
# listing and verification answer: a few short labels, not a document store.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]


METADATA_VALUE_CHARS = 500


def _scalar(value: object) -> object:
    if not isinstance(value, str | int | float | bool):
        raise PydanticCustomError("metadata", "a metadata value is a string, number or boolean")
    if isinstance(value, str) and len(value) > METADATA_VALUE_CHARS:
        raise PydanticCustomError(
            "metadata", f"a metadata string is at most {METADATA_VALUE_CHARS} characters"
        )
    return value


MetadataValue = Annotated[str | int | float | bool, BeforeValidator(_scalar)]
Metadata = dict[MetadataKey, MetadataValue]
METADATA_ENTRIES = 32


class GenerateKeyRequest(Body):
    type: str = Field(min_length=1, max_length=64)
    metadata: Metadata = Field(default_factory=dict, max_length=METADATA_ENTRIES)
    user_id: str = Field(default="", max_length=200)
    name: str = Field(default="", max_length=200)
    owner: str = Field(default="", max_length=200)
    algorithm: str | None = Field(default=None, max_length=64)
    provider: str | None = Field(default=None, max_length=32)
    environment: str | None = Field(default=None, max_length=32)
    expires_at: datetime | None = None


class ImportKeyRequest(GenerateKeyRequest):
    material: str = Field(
        min_length=1,
        max_length=16384,
        description="base64: the raw key (symmetric, HMAC) or PKCS#8 DER (asymmetric)",
    )


class RotateKeyRequest(Body):
    user_id: str = Field(default="", max_length=200)
    reason: str = Field(default="manual", max_length=1000)
    grace_period: str | None = Field(default=None, max_length=64, description="ISO 8601 duration")


class ReasonRequest(Body):
    user_id: str = Field(default="", max_length=200)
    reason: str = Field(default="", max_length=1000)


class AcknowledgeRequest(ReasonRequest):
    target: Literal["rotation", "expiry"] | None = Field(
        default=None, description="only this target's warnings; default: every open one"
    )


class CreateWebhookRequest(Body):
    url: str = Field(min_length=1, max_length=2000)
    description: str = Field(default="", max_length=500)
    event_types: list[str] = Field(
        default_factory=list, max_length=50, description="event types to send; empty: all"
    )
    min_severity: Literal["notice", "warning", "critical"] | None = Field(
        default=None, description="warnings below it are not sent (other events are)"
    )
    user_id: str = Field(default="", max_length=200)


class BulkFilter(Body):
    owner: str | None = Field(default=None, max_length=200)
    type: str | None = Field(default=None, max_length=64)
    environment: str | None = Field(default=None, max_length=32)
    provider: str | None = Field(default=None, max_length=32)
    algorithm: str | None = Field(default=None, max_length=64)


class BulkRequest(Body):
    action: Literal["rotate", "revoke"]
    kind: Literal["key", "credential", "handle"]
    filter: BulkFilter
    reason: str = Field(min_length=1, max_length=900)
    rate_per_second: int = Field(default=10, ge=1, le=100)
    user_id: str = Field(default="", max_length=200)


class PutConfigRequest(Body):
    toml: str = Field(min_length=1, max_length=256 * 1024, description="the whole policy file")
    reason: str = Field(min_length=1, max_length=900)
    user_id: str = Field(default="", max_length=200)


class StoreJobRequest(Body):
    """Start a maintenance job over the store (master-key rotation, pepper re-hash)."""

    reason: str = Field(min_length=1, max_length=900)
    batch_size: int = Field(default=200, ge=1, le=10_000)
    user_id: str = Field(default="", max_length=200)


class EncryptRequest(Body):
    plaintext: str = Field(description="base64", max_length=4 * 1024 * 1024)
    aad: str | None = Field(default=None, description="base64", max_length=65536)


class WrapRequest(Body):
    key: str = Field(description="base64 key material, 16 to 64 bytes", max_length=128)
    aad: str | None = Field(default=None, description="base64", max_length=65536)


class UnwrapRequest(Body):
    wrapped: str = Field(description="a krw: token from /wrap", max_length=1024)
    aad: str | None = Field(default=None, description="base64", max_length=65536)


class DecryptRequest(Body):
    ciphertext: str = Field(max_length=6 * 1024 * 1024)
    aad: str | None = Field(default=None, description="base64", max_length=65536)


class SignRequest(Body):
    message: str = Field(description="base64", max_length=4 * 1024 * 1024)


class VerifyRequest(Body):
    message: str = Field(description="base64", max_length=4 * 1024 * 1024)
    signature: str = Field(max_length=65536)


class RewrapRequest(Body):
    ciphertext: str = Field(max_length=6 * 1024 * 1024)
    aad: str | None = Field(
        default=None, description="base64; the aad the ciphertext was bound to", max_length=65536
    )


class DeriveRequest(Body):
    context: str = Field(description="base64, up to 4 KiB", max_length=5464)
    length: int = Field(ge=16, le=64, strict=True, description="bytes to derive")
    version: int | None = Field(
        default=None, ge=1, strict=True, description="a version in grace; default: the active"
    )


Scope = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[!-~]+$")]


class RateLimit(Body):
    limit: int = Field(ge=1, le=1_000_000, description="verifications per window")
    duration: str = Field(max_length=64, description="the window, ISO 8601 (PT1M)")


class CreateCredentialRequest(Body):
    name: str = Field(default="", max_length=200)
    owner: str = Field(default="", max_length=200)
    scopes: list[Scope] = Field(default_factory=list, max_length=100)
    expires_at: datetime | None = None
    metadata: Metadata = Field(default_factory=dict, max_length=METADATA_ENTRIES)
    environment: str | None = Field(default=None, max_length=32)
    rate_limit: RateLimit | None = None
    usage_limit: int | None = Field(default=None, ge=1, le=2**31 - 1)
    scheduled_rotation: bool = False
    user_id: str = Field(default="", max_length=200)


class ImportCredentialRequest(CreateCredentialRequest):
    sha256: str = Field(
        max_length=100,
        description="the SHA-256 of the existing API key, as its old system stored it: "
        "64 hex digits or base64",
    )


class RotateCredentialRequest(Body):
    grace_period: str | None = Field(default=None, max_length=64, description="ISO 8601 duration")
    reason: str = Field(default="manual", max_length=1000)
    user_id: str = Field(default="", max_length=200)


class VerifyCredentialRequest(Body):
    key: str = Field(max_length=512)
    scopes: list[Scope] = Field(default_factory=list, max_length=100)


ContextValue = Annotated[str, StringConstraints(max_length=500)]


class GenerateHandleRequest(Body):
    type: str = Field(min_length=1, max_length=64)
    context: dict[str, ContextValue | int | float | bool] = Field(
        default_factory=dict, max_length=32
    )
    user_id: str = Field(default="", max_length=200)
    environment: str | None = Field(default=None, max_length=32)


class ValidateHandleRequest(Body):
    handle_id: str = Field(max_length=512, description="the handle value (krh_...)")
    context: dict[str, ContextValue | int | float | bool] = Field(
        default_factory=dict, max_length=32
    )
    user_id: str = Field(default="", max_length=200)


class RotateHandleRequest(Body):
    handle: str | None = Field(
        default=None,
        max_length=512,
        description="the holder's current value (krh_...): exchange it, once; omit to replace "
        "the current value as an operator",
    )
    reason: str = Field(default="", max_length=1000)
    user_id: str = Field(default="", max_length=200)
