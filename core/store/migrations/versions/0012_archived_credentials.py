"""Archived API credentials and handle families: what the cleanup keeps of one that ended;
every API key ever imported (imported once, ever); and the indexes the cleanup finds what ended
long ago by.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = [
    ("ix_key_versions_state_changed", "key_versions", ["state", "state_changed_at"]),
    ("ix_credential_versions_state_changed", "credential_versions", ["state", "state_changed_at"]),
    ("ix_credentials_status_updated", "credentials", ["status", "updated_at"]),
]


def upgrade() -> None:
    op.create_table(
        "archived_credentials",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("environment", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("versions", sa.Integer(), nullable=False),
        sa.Column("usage_count", sa.BigInteger(), nullable=False),
        sa.Column("failure_count", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_archived_credentials"),
    )
    op.create_index("ix_archived_credentials_owner", "archived_credentials", ["owner"])
    op.create_table(
        "imported_lookups",
        sa.Column("lookup_id", sa.String(32), nullable=False),
        sa.Column("credential_id", sa.String(64), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lookup_id", name="pk_imported_lookups"),
    )
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
    op.drop_table("imported_lookups")
    op.drop_index("ix_archived_credentials_owner", table_name="archived_credentials")
    op.drop_table("archived_credentials")
