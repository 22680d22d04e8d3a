"""Retired master keys: a master key whose blobs were all re-sealed under a newer one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "master_key_retirements",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("successor_id", sa.String(32), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_master_key_retirements"),
    )


def downgrade() -> None:
    op.drop_table("master_key_retirements")
