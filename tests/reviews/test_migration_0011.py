"""Migration 0011 (review request items, review invitations) on SQLite and PostgreSQL: the schema it
makes is the one the models declare, and it goes down to 0010 and up again."""

from __future__ import annotations

import sqlalchemy as sa

from aftercare.spine.db import alembic_config, make_engine, migrate

TABLES = {"review_request_items", "review_invitations"}


def test_migrated_schema_is_the_one_the_models_declare(rt):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with rt.engine.connect() as conn:
        assert TABLES <= set(sa.inspect(conn).get_table_names())
        diffs = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    assert diffs == []


def test_migration_0011_goes_down_and_up_again(own_database):
    from alembic import command

    settings = own_database
    migrate(settings)
    engine = make_engine(settings)
    try:
        command.downgrade(alembic_config(settings), "0010")
        assert not TABLES & set(sa.inspect(engine).get_table_names())
        migrate(settings)
        inspector = sa.inspect(engine)
        assert TABLES <= set(inspector.get_table_names())
        uniques = {u["name"] for u in inspector.get_unique_constraints("review_invitations")}
        assert {"uq_review_invitation_order", "uq_review_invitation_touchpoint"} <= uniques
    finally:
        engine.dispose()
