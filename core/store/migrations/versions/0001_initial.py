"""Initial schema: keys, key versions, audit chain, events, admin keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations must not import the models (they change after this file is frozen).
_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("environment", sa.String(32), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("expires_at", nullable=True),
        _ts("next_rotation_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_keys"),
        sa.UniqueConstraint("workflow_id", name="uq_keys_workflow_id"),
    )
    op.create_index("ix_keys_environment", "keys", ["environment"])
    op.create_index("ix_keys_type_status", "keys", ["type", "status"])

    op.create_table(
        "key_versions",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_key_ref", sa.String(512), nullable=False),
        sa.Column("wrapped_material", sa.LargeBinary(), nullable=True),
        sa.Column("public_key", sa.LargeBinary(), nullable=True),
        _ts("created_at"),
        _ts("rotate_at"),
        _ts("warn_at"),
        _ts("hard_expiry"),
        _ts("grace_until", nullable=True),
        _ts("state_changed_at"),
        sa.PrimaryKeyConstraint("key_id", "number", name="pk_key_versions"),
        sa.ForeignKeyConstraint(
            ["key_id"], ["keys.id"], name="fk_key_versions_key_id_keys", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_key_versions_key_state", "key_versions", ["key_id", "state"])

    op.create_table(
        "audit_records",
        sa.Column("seq", _BIGINT, nullable=False, autoincrement=True),
        sa.Column("event_id", sa.String(255), nullable=False),
        _ts("at"),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_kind", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_records"),
        sa.UniqueConstraint("event_id", name="uq_audit_records_event_id"),
    )
    op.create_index("ix_audit_records_action", "audit_records", ["action"])
    op.create_index("ix_audit_object", "audit_records", ["object_kind", "object_id"])

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("seq", _BIGINT, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )

    op.create_table(
        "events",
        sa.Column("id", _BIGINT, nullable=False, autoincrement=True),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("object_kind", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        _ts("at"),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    )
    op.create_index("ix_events_type", "events", ["type"])
    op.create_index("ix_events_object_id", "events", ["object_id"])

    op.create_table(
        "admin_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("pepper_id", sa.String(32), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        _ts("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_admin_keys"),
    )


def downgrade() -> None:
    op.drop_table("admin_keys")
    op.drop_index("ix_events_object_id", table_name="events")
    op.drop_index("ix_events_type", table_name="events")
    op.drop_table("events")
    op.drop_table("audit_head")
    op.drop_index("ix_audit_object", table_name="audit_records")
    op.drop_index("ix_audit_records_action", table_name="audit_records")
    op.drop_table("audit_records")
    op.drop_index("ix_key_versions_key_state", table_name="key_versions")
    op.drop_table("key_versions")
    op.drop_index("ix_keys_type_status", table_name="keys")
    op.drop_index("ix_keys_environment", table_name="keys")
    op.drop_table("keys")
