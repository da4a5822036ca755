"""Migration 0014 (what a redaction erased, by Shopify id) on SQLite and PostgreSQL: one subject is
marked once, and the migration goes down and up again."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from aftercare.models import Erasure, InboxEvent
from aftercare.spine.db import alembic_config, make_engine, migrate


def test_migration_0014_marks_a_subject_once_and_goes_down_and_up_again(own_database):
    from alembic import command

    settings = own_database
    migrate(settings)
    engine = make_engine(settings)
    try:
        with Session(engine) as session:
            row = InboxEvent(source="shopify", delivery_id="d1", topic="customers/redact", body=b"{}")
            session.add(row)
            session.flush()
            assert row.id is not None
            session.add(Erasure(kind="order", shopify_id=820001, shop_domain="s", inbox_id=row.id))
            session.commit()
            session.add(Erasure(kind="order", shopify_id=820001, shop_domain="s", inbox_id=row.id))
            with pytest.raises(IntegrityError):
                session.commit()
        command.downgrade(alembic_config(settings), "0013")
        assert "erasures" not in sa.inspect(engine).get_table_names()
        migrate(settings)
        assert "erasures" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
