"""API credentials and handle families, and their versions (secrets stored as keyed hashes).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "credentials",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("environment", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("scheduled_rotation", sa.Boolean(), nullable=False),
        sa.Column("rate_limit", sa.Integer(), nullable=True),
        sa.Column("rate_limit_window", sa.Integer(), nullable=True),
        sa.Column("usage_limit", sa.Integer(), nullable=True),
        sa.Column("remaining", sa.Integer(), nullable=True),
        sa.Column("usage_count", sa.BigInteger(), nullable=False),
        sa.Column("failure_count", sa.BigInteger(), nullable=False),
        _ts("last_used_at", nullable=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("max_usage", sa.Integer(), nullable=True),
        sa.Column("hash_algorithm", sa.String(16), nullable=False),
        sa.Column("anomaly_count", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("expires_at", nullable=True),
        _ts("next_rotation_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_credentials"),
        sa.UniqueConstraint("workflow_id", name="uq_credentials_workflow_id"),
    )
    op.create_index("ix_credentials_environment", "credentials", ["environment"])
    op.create_index("ix_credentials_owner", "credentials", ["owner"])
    op.create_index(
        "ix_credentials_kind_user_type_status", "credentials", ["kind", "user_id", "type", "status"]
    )

    op.create_table(
        "credential_versions",
        sa.Column("lookup_id", sa.String(32), nullable=False),
        sa.Column("credential_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("pepper_id", sa.String(32), nullable=False),
        sa.Column("pending_secret", sa.LargeBinary(), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("rotate_at"),
        _ts("warn_at"),
        _ts("hard_expiry"),
        _ts("grace_until", nullable=True),
        _ts("state_changed_at"),
        sa.PrimaryKeyConstraint("lookup_id", name="pk_credential_versions"),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.id"],
            name="fk_credential_versions_credential_id_credentials",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_credential_versions_credential_number",
        "credential_versions",
        ["credential_id", "number"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_table("credential_versions")
    op.drop_table("credentials")
