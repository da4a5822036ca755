"""service recovery: `recovery_cases`, one per survey whose answer was low or negative, with the
clock of its first answer (issue 11 item 5; aftercare/recovery/)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from aftercare.models import UTCDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recovery_cases",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("touchpoint_id", sa.Integer(), sa.ForeignKey("touchpoints.id"), nullable=False),
        sa.Column("order_id", sa.Integer(), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("review_id", sa.Integer(), sa.ForeignKey("reviews.id"), nullable=True),
        sa.Column("scale", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("response_id", sa.Integer(), sa.ForeignKey("survey_responses.id"), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("answers", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("first_answer_due_at", UTCDateTime(), nullable=False),
        sa.Column("escalated_at", UTCDateTime(), nullable=True),
        sa.Column("answered_at", UTCDateTime(), nullable=True),
        sa.Column("apology_outbox_id", sa.Integer(), sa.ForeignKey("outbox.id"), nullable=True),
        sa.Column("policy_version", sa.String(length=32), nullable=False),
        sa.UniqueConstraint("touchpoint_id", name="uq_recovery_case_survey"),
        sa.UniqueConstraint("review_id", name="uq_recovery_case_review"),
    )
    op.create_index("ix_recovery_cases_order_id", "recovery_cases", ["order_id"])
    op.create_index("ix_recovery_cases_status", "recovery_cases", ["status"])
    op.create_index("ix_recovery_cases_status_due", "recovery_cases", ["status", "first_answer_due_at"])


def downgrade() -> None:
    op.drop_index("ix_recovery_cases_status_due", table_name="recovery_cases")
    op.drop_index("ix_recovery_cases_status", table_name="recovery_cases")
    op.drop_index("ix_recovery_cases_order_id", table_name="recovery_cases")
    op.drop_table("recovery_cases")
