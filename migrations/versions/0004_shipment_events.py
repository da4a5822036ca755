"""shipment events: carrier events of a shipment; inbox rows waiting for a fulfillment

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 21:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import aftercare.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shipment_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shipment_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("shop_domain", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("shopify_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("message", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("location", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("happened_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("estimated_delivery_at", aftercare.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
        ),
        sa.ForeignKeyConstraint(
            ["shipment_id"],
            ["shipments.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("shop_domain", "shopify_id", name="uq_shipment_event_source"),
    )
    with op.batch_alter_table("shipment_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shipment_events_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_shipment_events_shipment_id"), ["shipment_id"], unique=False)

    with op.batch_alter_table("inbox_waits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fulfillment_shopify_id", sa.BigInteger(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_inbox_waits_fulfillment_shopify_id"), ["fulfillment_shopify_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("inbox_waits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbox_waits_fulfillment_shopify_id"))
        batch_op.drop_column("fulfillment_shopify_id")

    with op.batch_alter_table("shipment_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shipment_events_shipment_id"))
        batch_op.drop_index(batch_op.f("ix_shipment_events_order_id"))

    op.drop_table("shipment_events")
