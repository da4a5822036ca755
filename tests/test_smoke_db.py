from sqlmodel import Session, select

from aftercare.models import InboxEvent
from tests.factories import deliver, order_payload


def test_delivery_is_stored_once(rt):
    first = deliver(rt.engine, order_payload(), webhook_id="w-1")
    again = deliver(rt.engine, order_payload(), webhook_id="w-1")
    assert first is not None and again is None
    with Session(rt.engine) as s:
        assert len(s.exec(select(InboxEvent)).all()) == 1
