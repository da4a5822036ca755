"""our own review form: every revision a customer sends (review_revisions), moderation that hides a
review for abuse or personal data only (review_moderations), and the revision a review row holds

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import aftercare.models

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "review_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("touchpoint_id", sa.Integer(), nullable=True),
        sa.Column("product_ref", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("review_key", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("body", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("display_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("submitted_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("inbox_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"]),
        sa.ForeignKeyConstraint(["touchpoint_id"], ["touchpoints.id"]),
        sa.ForeignKeyConstraint(["inbox_id"], ["inbox.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id", "product_ref", "seq", name="uq_review_revision_seq"),
    )
    with op.batch_alter_table("review_revisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_revisions_order_id"), ["order_id"], unique=False)
    op.create_table(
        "review_moderations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("moderator", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("decided_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("action IN ('hide', 'show')", name="ck_review_moderation_action"),
        sa.CheckConstraint("reason IN ('abuse', 'personal_data')", name="ck_review_moderation_reason"),
        sa.ForeignKeyConstraint(["review_id"], ["reviews.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("review_moderations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_moderations_review_id"), ["review_id"], unique=False)
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_column("revision")
    with op.batch_alter_table("review_moderations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_moderations_review_id"))
    op.drop_table("review_moderations")
    with op.batch_alter_table("review_revisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_revisions_order_id"))
    op.drop_table("review_revisions")
