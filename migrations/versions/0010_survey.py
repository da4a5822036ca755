"""survey answers numbered per survey: `seq`, unique with the touchpoint, so that the same answer
posted twice at once is stored once (aftercare/surveys/answers.py)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 20:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("survey_responses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=False, server_default="1"))
    # Answers stored before this migration are numbered in the order they came.
    op.execute(
        "UPDATE survey_responses SET seq = (SELECT count(*) FROM survey_responses AS earlier "
        "WHERE earlier.touchpoint_id = survey_responses.touchpoint_id AND earlier.id <= survey_responses.id)"
    )
    with op.batch_alter_table("survey_responses", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_survey_response_seq", ["touchpoint_id", "seq"])


def downgrade() -> None:
    with op.batch_alter_table("survey_responses", schema=None) as batch_op:
        batch_op.drop_constraint("uq_survey_response_seq", type_="unique")
        batch_op.drop_column("seq")
