"""Staged warnings raised ahead of rotations and expiries, and their acknowledgements.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "warnings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("object_kind", sa.String(16), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("environment", sa.String(32), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        _ts("deadline"),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("stages", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        _ts("raised_at"),
        _ts("acknowledged_at", nullable=True),
        sa.Column("acknowledged_by", sa.String(200), nullable=False),
        _ts("closed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_warnings"),
    )
    op.create_index(
        "ix_warnings_object_stage",
        "warnings",
        ["object_kind", "object_id", "target", "deadline", "stage"],
        unique=True,
    )
    op.create_index("ix_warnings_closed_raised", "warnings", ["closed_at", "raised_at"])


def downgrade() -> None:
    op.drop_table("warnings")
