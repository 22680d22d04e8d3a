"""Rate-limit windows shared by the API processes when no Redis is configured.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_windows",
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("resets_at", sa.Float(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("client", name="pk_rate_limit_windows"),
    )
    op.create_index("ix_rate_limit_windows_resets_at", "rate_limit_windows", ["resets_at"])


def downgrade() -> None:
    op.drop_index("ix_rate_limit_windows_resets_at", table_name="rate_limit_windows")
    op.drop_table("rate_limit_windows")
