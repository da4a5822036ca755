"""Migration 0004 (carrier events, rows waiting for a fulfillment) on SQLite and PostgreSQL: the
schema it makes is the one the models declare, and it goes down and up again."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from aftercare.models import InboxEvent, InboxWait
from aftercare.spine.db import alembic_config, make_engine, migrate


def test_migrated_schema_is_the_one_the_models_declare(rt):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with rt.engine.connect() as conn:
        assert "shipment_events" in sa.inspect(conn).get_table_names()
        diffs = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    assert diffs == []


def test_migration_0004_downgrades_keeping_the_waiting_rows_and_upgrades_again(own_database):
    from alembic import command

    settings = own_database
    migrate(settings)
    engine = make_engine(settings)
    try:
        with Session(engine) as session:  # a carrier event waiting for its fulfillment
            row = InboxEvent(
                source="shopify", delivery_id="d1", topic="fulfillment_events/create", body=b"{}"
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            session.add(
                InboxWait(inbox_id=row.id, shop_domain="s", order_shopify_id=42, fulfillment_shopify_id=4201)
            )
            session.commit()
        command.downgrade(alembic_config(settings), "0003")
        inspector = sa.inspect(engine)
        assert "shipment_events" not in inspector.get_table_names()
        assert "fulfillment_shopify_id" not in {c["name"] for c in inspector.get_columns("inbox_waits")}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT order_shopify_id FROM inbox_waits")).scalars().all() == [42]
        migrate(settings)
        assert "shipment_events" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
