"""approval links: signed, single-use links to the approval page; decisions say from where

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 17:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import aftercare.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "approval_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("draft_id", sa.Integer(), nullable=False),
        sa.Column("approver", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("nonce", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("issued_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", aftercare.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["draft_id"], ["review_drafts.id"]),
        sa.ForeignKeyConstraint(["review_id"], ["reviews.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("draft_id", "approver", name="uq_approval_link_draft_approver"),
        sa.UniqueConstraint("nonce", name="uq_approval_link_nonce"),
    )
    with op.batch_alter_table("approval_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approval_links_review_id"), ["review_id"], unique=False)

    # Every decision says where it was made; those before this migration came through Prefect. One
    # decision per draft: the flow has only ever recorded one, and now the page and Prefect race.
    with op.batch_alter_table("review_decisions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "via",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                nullable=False,
                server_default="prefect",
            )
        )
        batch_op.add_column(sa.Column("link_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("client_ip", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(
            sa.Column("client_agent", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True)
        )
        batch_op.create_foreign_key("fk_review_decisions_link_id", "approval_links", ["link_id"], ["id"])
        batch_op.create_unique_constraint("uq_review_decision_draft", ["draft_id"])


def downgrade() -> None:
    with op.batch_alter_table("review_decisions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_review_decision_draft", type_="unique")
        batch_op.drop_constraint("fk_review_decisions_link_id", type_="foreignkey")
        batch_op.drop_column("client_agent")
        batch_op.drop_column("client_ip")
        batch_op.drop_column("link_id")
        batch_op.drop_column("via")
    with op.batch_alter_table("approval_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_links_review_id"))
    op.drop_table("approval_links")
