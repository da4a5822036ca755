"""warehouse hand-offs: when ops were alerted (refused, or not acknowledged within the window)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 22:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import aftercare.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("warehouse_handoffs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("alerted_at", aftercare.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("warehouse_handoffs", schema=None) as batch_op:
        batch_op.drop_column("alerted_at")
