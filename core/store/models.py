"""SQLAlchemy 2 models: the store is the projection of the workflows' state.

Indexes serve the use path first: the live versions of a key, and a key by id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import false


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        from datetime import UTC

        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        from datetime import UTC

        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    # Named constraints, as in the migrations: SQLite batch migrations need the names.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class KeyRow(Base):
    """A logical key; its versions hold the material."""

    __tablename__ = "keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    environment: Mapped[str] = mapped_column(String(32), index=True)
    type: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    algorithm: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    workflow_id: Mapped[str] = mapped_column(String(255), unique=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    next_rotation_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_keys_type_status", "type", "status"),)


class KeyVersionRow(Base):
    """One numbered version of a key: state, deadlines and (wrapped) material."""

    __tablename__ = "key_versions"

    key_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("keys.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    algorithm: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(32))
    provider_key_ref: Mapped[str] = mapped_column(String(512), default="")
    wrapped_material: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime]
    rotate_at: Mapped[datetime]
    warn_at: Mapped[datetime]
    hard_expiry: Mapped[datetime]
    grace_until: Mapped[datetime | None]
    state_changed_at: Mapped[datetime]
    # usage-aware retirement: the last decrypt or verify while in grace (written by the API
    # about once a second), and whether its grace was extended because of it
    last_used_at: Mapped[datetime | None]
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_key_versions_key_state", "key_id", "state"),
        # the cleanup's search for versions that ended long ago (`core.cleanup`)
        Index("ix_key_versions_state_changed", "state", "state_changed_at"),
    )


class AuditRecordRow(Base):
    """An append-only audit record; `hash` chains it to the record before it."""

    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), index=True)
    object_kind: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # past its retention: the seq of the `audit.retention_applied` record that summarised it
    # (its actor, reason and details are erased; its hash stays, so the chain still links)
    redacted_by: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), nullable=True
    )

    __table_args__ = (Index("ix_audit_object", "object_kind", "object_id"),)


class AuditHeadRow(Base):
    """One row holding the chain head; appenders lock it so the chain never forks."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)
    hash: Mapped[str] = mapped_column(String(64))


class EventRow(Base):
    """A lifecycle event (keyCreated, keyRotated, keyExpiring, ...) for subscribers."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    object_kind: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AdminKeyRow(Base):
    """An admin API key, stored only as a keyed hash of its secret."""

    __tablename__ = "admin_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    # the master key the pepper of `secret_hash` was derived from (peppers rotate with it)
    pepper_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class CredentialRow(Base):
    """An API credential or a handle family (`kind`); its versions are the secrets it has had
    (for a handle family: the handle values, each exchanged for the next)."""

    __tablename__ = "credentials"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="credential")
    # the handle type (session, workflow, api, device); "api" for API credentials
    type: Mapped[str] = mapped_column(String(64), default="api")
    environment: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    scheduled_rotation: Mapped[bool] = mapped_column(Boolean, default=False)
    # requests per `rate_limit_window` seconds, counted across the API processes
    # (`core.ratelimit`: in Redis when configured, else in `rate_limit_windows`)
    rate_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_limit_window: Mapped[int | None] = mapped_column(Integer, nullable=True)
    usage_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # what is left of `usage_limit`, shared by every version (decremented atomically)
    remaining: Mapped[int | None] = mapped_column(Integer, nullable=True)
    usage_count: Mapped[int] = mapped_column(BigInteger, default=0)
    failure_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_used_at: Mapped[datetime | None]
    # handles: the user they were issued to, the context they are bound to, validations per
    # handle value, and the anomalies seen (context drift, bursts, failures, reuse)
    user_id: Mapped[str] = mapped_column(String(200), default="")
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    max_usage: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hash_algorithm: Mapped[str] = mapped_column(String(16), default="SHA-256")
    anomaly_count: Mapped[int] = mapped_column(Integer, default=0)
    workflow_id: Mapped[str] = mapped_column(String(255), unique=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    next_rotation_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_credentials_kind_user_type_status", "kind", "user_id", "type", "status"),
        Index("ix_credentials_status_updated", "status", "updated_at"),  # `core.cleanup`
    )


class CredentialVersionRow(Base):
    """One secret of a credential, stored only as a keyed hash; found by its lookup id.

    `pending_secret` holds the secret envelope-encrypted until its requester or owner has
    fetched it once (or the previous secret's grace ends); it is NULL afterwards.
    """

    __tablename__ = "credential_versions"

    lookup_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    credential_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("credentials.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    # the pepper's id, or after a forced re-hash the chain `outer/inner` (`PepperRing.hash_under`)
    pepper_id: Mapped[str] = mapped_column(String(128))
    pending_secret: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)  # validations (handles' max_usage)
    created_at: Mapped[datetime]
    rotate_at: Mapped[datetime]
    warn_at: Mapped[datetime]
    hard_expiry: Mapped[datetime]
    grace_until: Mapped[datetime | None]
    state_changed_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_credential_versions_credential_number", "credential_id", "number", unique=True),
        Index("ix_credential_versions_state_changed", "state", "state_changed_at"),  # cleanup
    )


class WarningRow(Base):
    """A staged warning a lifecycle workflow raised (ahead of a rotation or an expiry), and
    whether an operator acknowledged it. `closed_at`: the deadline passed or moved (the object
    rotated), or the object ended; a closed warning is kept as history."""

    __tablename__ = "warnings"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    object_kind: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(64))
    environment: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(16))
    deadline: Mapped[datetime]
    stage: Mapped[int] = mapped_column(Integer)
    stages: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    severity: Mapped[str] = mapped_column(String(16))
    raised_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str] = mapped_column(String(200), default="")
    closed_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_warnings_object_stage",
            "object_kind",
            "object_id",
            "target",
            "deadline",
            "stage",
            unique=True,
        ),
        Index("ix_warnings_closed_raised", "closed_at", "raised_at"),
    )


class WebhookRow(Base):
    """A webhook subscription: events of `event_types` (all when empty) are POSTed to `url`,
    signed with its secret, which is stored only envelope-encrypted under the master key.
    Warnings below `min_severity` are not sent to it."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500), default="")
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    min_severity: Mapped[str | None] = mapped_column(String(16), nullable=True)
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))  # active, deleted
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookDeliveryRow(Base):
    """One event sent (or being sent) to one webhook: pending, delivered or failed."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    webhook_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("webhooks.id", ondelete="CASCADE")
    )
    event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_webhook_deliveries_webhook_event", "webhook_id", "event_id", unique=True),
        Index("ix_webhook_deliveries_status", "status"),
    )


class BulkOperationRow(Base):
    """A batch rotate or revoke of every key, credential or handle family that matched a filter
    when it started; its progress, updated as it goes."""

    __tablename__ = "bulk_operations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    action: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    filter: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(String(1000), default="")
    rate_per_second: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # running, completed, cancelled
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class BulkTargetRow(Base):
    """One object of a bulk operation: pending, done or failed (with why)."""

    __tablename__ = "bulk_targets"

    operation_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("bulk_operations.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_id: Mapped[str] = mapped_column(String(64))
    workflow_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(String(500), default="")


class PolicyVersionRow(Base):
    """One version of the policy (config/keyrotor.toml): the newest is in force. A process
    started with a file no version holds yet adds it (`source` file); PUT /config adds one
    (`source` api)."""

    __tablename__ = "policy_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]


class MasterKeyRetirementRow(Base):
    """A master key retired once every blob it sealed was re-sealed under `successor_id`
    (`MasterKeyRotationWorkflow`): no process opens a blob sealed under it any more."""

    __tablename__ = "master_key_retirements"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    successor_id: Mapped[str] = mapped_column(String(32))
    retired_at: Mapped[datetime]
    retired_by: Mapped[str] = mapped_column(String(200))


class RateLimitWindowRow(Base):
    """The current rate-limit window of one client (a credential, a handle value), shared by
    the API processes when no Redis is configured (`core.ratelimit.DatabaseRateLimiter`).
    `client` is a SHA-256 of the client's id, never the id or a value itself."""

    __tablename__ = "rate_limit_windows"

    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    # seconds since the epoch (the API processes' clock); ended windows are deleted now and then
    resets_at: Mapped[float] = mapped_column(Float, index=True)
    hits: Mapped[int] = mapped_column(Integer)


class ArchivedCredentialRow(Base):
    """What the cleanup keeps of an API credential or handle family that was revoked or expired
    long enough ago (`CleanupPolicy.archive_after`): no hash, no secret, its totals."""

    __tablename__ = "archived_credentials"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(64))
    environment: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16))
    versions: Mapped[int] = mapped_column(Integer)
    usage_count: Mapped[int] = mapped_column(BigInteger)
    failure_count: Mapped[int] = mapped_column(BigInteger)
    last_used_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    ended_at: Mapped[datetime]
    archived_at: Mapped[datetime]


class ImportedLookupRow(Base):
    """Every API key ever imported, by its lookup id: a key is imported once, so a revoked one
    cannot come back by importing it again after its credential was archived."""

    __tablename__ = "imported_lookups"

    lookup_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    credential_id: Mapped[str] = mapped_column(String(64))
    imported_at: Mapped[datetime]
    # False for the imports made before the lookup id was keyed (migration 0013): their
    # lookup id stays the unkeyed hash (`core.credentials.imported_lookup_id`)
    keyed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=false())


class StoreSecretRow(Base):
    """The store's own secrets, by name, sealed under the master key (its rotation re-seals
    them, backups carry them sealed): the key of imported API keys' lookup ids."""

    __tablename__ = "store_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
