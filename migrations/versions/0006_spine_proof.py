"""proving the spine: inbox backoff and ops alert, staff mails in the outbox, global Shopify ids,
review replies claimed with a time

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import aftercare.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("next_attempt_at", aftercare.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("alerted_at", aftercare.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_inbox_next_attempt_at"), ["next_attempt_at"], unique=False)

    # Staff mails (approval requests, escalations, warehouse alerts) are outbox rows without a
    # touchpoint, unique per message key (one row per message per recipient).
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("touchpoint_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(
            sa.Column("message_key", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True)
        )
        batch_op.create_unique_constraint("uq_outbox_message_key", ["message_key"])

    # Shopify ids are global: one order (and one shipment) per id, whatever shop header came with it.
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint("uq_order_source", type_="unique")
        batch_op.create_unique_constraint("uq_order_shopify_id", ["shopify_id"])
    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.drop_constraint("uq_shipment_source", type_="unique")
        batch_op.create_unique_constraint("uq_shipment_shopify_id", ["shopify_id"])

    with op.batch_alter_table("review_replies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("claimed_at", aftercare.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("review_replies", schema=None) as batch_op:
        batch_op.drop_column("claimed_at")

    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.drop_constraint("uq_shipment_shopify_id", type_="unique")
        batch_op.create_unique_constraint("uq_shipment_source", ["shop_domain", "shopify_id"])
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint("uq_order_shopify_id", type_="unique")
        batch_op.create_unique_constraint("uq_order_source", ["shop_domain", "shopify_id"])

    # Staff rows have no touchpoint and cannot survive the NOT NULL: they are history of mails sent.
    op.execute("DELETE FROM outbox WHERE touchpoint_id IS NULL")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_constraint("uq_outbox_message_key", type_="unique")
        batch_op.drop_column("message_key")
        batch_op.alter_column("touchpoint_id", existing_type=sa.Integer(), nullable=False)

    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbox_next_attempt_at"))
        batch_op.drop_column("alerted_at")
        batch_op.drop_column("next_attempt_at")
