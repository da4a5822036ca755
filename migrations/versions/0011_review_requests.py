"""review requests: the products each request asked about (the per-product memory), and the review
invitations a platform sends for us (Trustpilot), one per order

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import aftercare.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "review_request_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("touchpoint_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("line_id", sa.BigInteger(), nullable=False),
        sa.Column("product_key", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("asked_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"]),
        sa.ForeignKeyConstraint(["touchpoint_id"], ["touchpoints.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("touchpoint_id", "product_key", name="uq_review_request_item"),
    )
    with op.batch_alter_table("review_request_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_request_items_touchpoint_id"), ["touchpoint_id"])
        batch_op.create_index(batch_op.f("ix_review_request_items_order_id"), ["order_id"])
        batch_op.create_index(batch_op.f("ix_review_request_items_product_key"), ["product_key"])

    op.create_table(
        "review_invitations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("touchpoint_id", sa.Integer(), nullable=False),
        sa.Column("platform", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("locale", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("send_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("policy_version", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", aftercare.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", aftercare.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"]),
        sa.ForeignKeyConstraint(["touchpoint_id"], ["touchpoints.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id", name="uq_review_invitation_order"),
        sa.UniqueConstraint("touchpoint_id", name="uq_review_invitation_touchpoint"),
    )
    with op.batch_alter_table("review_invitations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_invitations_status"), ["status"])
        batch_op.create_index(batch_op.f("ix_review_invitations_next_attempt_at"), ["next_attempt_at"])


def downgrade() -> None:
    with op.batch_alter_table("review_invitations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_invitations_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_review_invitations_status"))
    op.drop_table("review_invitations")
    with op.batch_alter_table("review_request_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_request_items_product_key"))
        batch_op.drop_index(batch_op.f("ix_review_request_items_order_id"))
        batch_op.drop_index(batch_op.f("ix_review_request_items_touchpoint_id"))
    op.drop_table("review_request_items")
