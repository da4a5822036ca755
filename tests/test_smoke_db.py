from sqlmodel import Session, select

from aftercare.models import InboxEvent
from tests.factories import deliver, order_payload


def test_delivery_is_stored_once(rt):
    first = deliver(rt.engine, order_payload(), webhook_id="w-1")
    again = deliver(rt.engine, order_payload(), webhook_id="w-1")
    assert first is not None and again is None
    with Session(rt.engine) as s:
        assert len(s.exec(select(InboxEvent)).all()) == 1


def test_sqlite_durability_is_what_make_engine_says(rt):
    """The docstring is what a reader trusts about durability: it must name the mode the engine sets
    (NORMAL, chosen in docs/architecture.md), not promise FULL. PostgreSQL has no such pragma."""
    from aftercare.spine.db import make_engine

    doc = " ".join((make_engine.__doc__ or "").split())
    assert "synchronous=NORMAL" in doc and "synchronous=FULL" not in doc
    if rt.engine.dialect.name == "sqlite":
        with rt.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # 1 = NORMAL, 2 = FULL
