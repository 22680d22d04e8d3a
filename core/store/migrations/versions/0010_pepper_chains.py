"""A credential version's pepper id may be a chain (`outer/inner`) after a forced re-hash.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch: SQLite cannot alter a column in place, so Alembic copies the table there
    with op.batch_alter_table("credential_versions") as batch:
        batch.alter_column(
            "pepper_id", type_=sa.String(128), existing_type=sa.String(32), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("credential_versions") as batch:
        batch.alter_column(
            "pepper_id", type_=sa.String(32), existing_type=sa.String(128), existing_nullable=False
        )
