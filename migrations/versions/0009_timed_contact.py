"""timed contact: consent records and the state held, suppressions (by address hash), survey
answers, privacy requests; the contact rules' verdict on touchpoints and the due index; outbox headers

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 20:21:28.392250
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import aftercare.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consent_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shop_domain", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("email_key", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("customer_shopify_id", sa.BigInteger(), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("opt_in_level", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("consent_updated_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("weak", sa.Boolean(), nullable=False),
        sa.Column("wording_version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("inbox_id", sa.Integer(), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("recorded_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["inbox_id"],
            ["inbox.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.create_index("ix_consent_records_subject", ["shop_domain", "email_key"], unique=False)

    op.create_table(
        "privacy_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("inbox_id", sa.Integer(), nullable=False),
        sa.Column("topic", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("shop_domain", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("customer_shopify_id", sa.BigInteger(), nullable=True),
        sa.Column("email_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("export_path", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("done_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["inbox_id"],
            ["inbox.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("inbox_id", name="uq_privacy_request_inbox"),
    )
    op.create_table(
        "customer_consents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shop_domain", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("email_key", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("opt_in_level", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("consent_updated_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("weak", sa.Boolean(), nullable=False),
        sa.Column("wording_version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("record_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["record_id"],
            ["consent_records.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("shop_domain", "email_key", name="uq_customer_consent"),
    )
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shop_domain", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("email_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("list_name", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("touchpoint_id", sa.Integer(), nullable=True),
        sa.Column("created_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["touchpoint_id"],
            ["touchpoints.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("shop_domain", "email_hash", "list_name", name="uq_suppression"),
    )
    op.create_table(
        "survey_responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("touchpoint_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("scale", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("comment", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("answered_at", aftercare.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("client_agent", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
        ),
        sa.ForeignKeyConstraint(
            ["touchpoint_id"],
            ["touchpoints.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("survey_responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_survey_responses_answered_at"), ["answered_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_survey_responses_order_id"), ["order_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_survey_responses_touchpoint_id"), ["touchpoint_id"], unique=False
        )

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("headers", sa.JSON(), nullable=True))

    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verdict", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("decided_at", aftercare.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("held_until", aftercare.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_touchpoints_status_due", ["status", "due_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("touchpoints", schema=None) as batch_op:
        batch_op.drop_index("ix_touchpoints_status_due")
        batch_op.drop_column("held_until")
        batch_op.drop_column("decided_at")
        batch_op.drop_column("verdict")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("headers")

    with op.batch_alter_table("survey_responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_survey_responses_touchpoint_id"))
        batch_op.drop_index(batch_op.f("ix_survey_responses_order_id"))
        batch_op.drop_index(batch_op.f("ix_survey_responses_answered_at"))

    op.drop_table("survey_responses")
    op.drop_table("suppressions")
    op.drop_table("customer_consents")
    op.drop_table("privacy_requests")
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_records_subject")

    op.drop_table("consent_records")
