"""erasures: the orders, customers and shops a customers/redact or shop/redact erased, by Shopify id,
so a later delivery for one of them is erased again instead of writing the personal data back

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 05:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from aftercare.models import UTCDateTime

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("shopify_id", sa.BigInteger(), nullable=False),
        sa.Column("shop_domain", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("inbox_id", sa.Integer(), sa.ForeignKey("inbox.id"), nullable=False),
        sa.Column("erased_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("kind", "shopify_id", "shop_domain", name="uq_erasure_subject"),
    )


def downgrade() -> None:
    op.drop_table("erasures")
