"""public review ids: `/reviews/<public id>` instead of the sequential database id

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 17:30:00.000000
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As aftercare.models.PUBLIC_ID_BYTES when this was written; kept here so the migration does not
# change if the model does.
_PUBLIC_ID_BYTES = 16
_BATCH = 500


def upgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("public_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )

    # Every existing review gets its own random id, drawn here (not in SQL: neither SQLite nor
    # PostgreSQL without pgcrypto has a cryptographic random function we could rely on).
    conn = op.get_bind()
    reviews = sa.table("reviews", sa.column("id", sa.Integer), sa.column("public_id", sa.String))
    ids = conn.execute(sa.select(reviews.c.id).where(reviews.c.public_id.is_(None))).scalars().all()
    update = (
        sa.update(reviews).where(reviews.c.id == sa.bindparam("rid")).values(public_id=sa.bindparam("pid"))
    )
    for start in range(0, len(ids), _BATCH):
        conn.execute(
            update,
            [
                {"rid": rid, "pid": secrets.token_urlsafe(_PUBLIC_ID_BYTES)}
                for rid in ids[start : start + _BATCH]
            ],
        )

    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.alter_column(
            "public_id", existing_type=sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        )
        batch_op.create_unique_constraint("uq_review_public_id", ["public_id"])


def downgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_constraint("uq_review_public_id", type_="unique")
        batch_op.drop_column("public_id")
