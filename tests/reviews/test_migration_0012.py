"""Migration 0012 (the review form's revisions, moderation, reviews.revision) goes up on a database
holding reviews, down, and up again, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from aftercare.spine.db import alembic_config, make_engine


def test_migration_0012_goes_up_down_and_up_with_reviews_kept(own_database):
    from alembic import command

    settings = own_database
    cfg = alembic_config(settings)
    command.upgrade(cfg, "0011")
    engine = make_engine(settings)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO reviews (public_id, platform, platform_review_id, shop_domain, rating, "
                    "body, source_created_at, received_at, triage_negative, triage_score, "
                    "triage_reasons, status) "
                    "VALUES ('p' || 'x', 'own', '1/SKU', 's', 2, 'b', '2026-11-01', '2026-11-01', true, 0.9, "
                    "'[]', 'new')"
                )
            )
        command.upgrade(cfg, "0012")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT rating, revision FROM reviews")).all() == [(2, None)]
            tables = set(sa.inspect(conn).get_table_names())
            assert {"review_revisions", "review_moderations"} <= tables
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(
                    sa.text(
                        "INSERT INTO review_moderations (review_id, action, reason, moderator, decided_at) "
                        "VALUES (1, 'hide', 'one_star', 'x', '2026-11-02')"
                    )
                )
            conn.rollback()
        command.downgrade(cfg, "0011")
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert "revision" not in {c["name"] for c in inspector.get_columns("reviews")}
            assert "review_revisions" not in inspector.get_table_names()
            assert conn.execute(sa.text("SELECT rating FROM reviews")).all() == [(2,)]
        command.upgrade(cfg, "0012")
    finally:
        engine.dispose()
