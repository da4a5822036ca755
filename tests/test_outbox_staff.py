"""Staff mails are outbox rows: one per message per recipient, sent by the same claim machinery."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare.models import OutboxMessage, OutboxStatus
from aftercare.rendering import RenderedEmail
from aftercare.spine import outbox
from aftercare.spine.email import make_backend

MAIL = RenderedEmail(subject="A reply waits", text="Please decide.", html="<p>Please decide.</p>")


def test_staff_mail_is_one_row_per_message_per_recipient_and_sent_once(rt):
    with Session(rt.engine) as session:
        for _ in range(2):  # planned twice (a resumed run, a retried task): still one row each
            for to in ("a@shop.example", "B@shop.example "):
                outbox.enqueue_staff(
                    session, key="draft-7", kind="approval_request", to_email=to, rendered=MAIL, locale="en"
                )
        session.commit()
        rows = session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert [(r.to_email, r.message_key, r.touchpoint_id) for r in rows] == [
        ("a@shop.example", "approval_request:draft-7:a@shop.example", None),
        ("B@shop.example", "approval_request:draft-7:b@shop.example", None),
    ]
    backend = make_backend(rt.settings)
    claimed = outbox.claim_due(rt.engine, 10, "w1")
    assert len(claimed) == 2
    results = [outbox.deliver(rt.engine, c.outbox_id, backend, rt.settings) for c in claimed]
    assert {r.status for r in results} == {OutboxStatus.SENT}
    files = sorted(p.name for p in (rt.settings.outbox_dir / "staff").glob("*.eml"))
    assert files == [f"{r.id:08d}.eml" for r in rows]
    assert not list(rt.settings.outbox_dir.glob("*.eml"))  # none among the customers' mail
    assert outbox.claim_due(rt.engine, 10, "w2") == []  # sent rows are never claimed again
    with rt.engine.connect() as conn:
        ids = conn.execute(sa.select(OutboxMessage.provider_message_id)).scalars().all()
    assert len(set(ids)) == 2 and all(i.startswith("file:staff/") for i in ids)
