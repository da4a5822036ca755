"""outbox.enqueue_many on SQLite and PostgreSQL: many touchpoints' mails in one statement, exactly
once per touchpoint however often a touchpoint comes (twice in one batch, again in a later batch, from
two workers at the same moment), and a header we refuse fails its own message where it is made,
never a batch half-written."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare.models import Customer, Order, OutboxMessage, OutboxStatus, Touchpoint, utcnow
from aftercare.rendering import RenderedEmail
from aftercare.runtime import Runtime
from aftercare.spine import outbox
from aftercare.spine.email import InvalidHeader
from tests.factories import SHOP

UNSUBSCRIBE = {
    "List-Unsubscribe": "<https://shop.example/unsubscribe/t>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
}
DECIDED_AT = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)


def planned(rt: Runtime, n: int, *, order_id: int = 6_100_000_000) -> list[Touchpoint]:
    """One customer's order with `n` planned survey touchpoints (seq 1..n) and no outbox row."""
    now = utcnow()
    with Session(rt.engine, expire_on_commit=False) as session:
        customer = Customer(
            shop_domain=SHOP, email_key=f"c{order_id}@example.jp", email=f"c{order_id}@example.jp"
        )
        session.add(customer)
        session.flush()
        order = Order(
            shop_domain=SHOP,
            shopify_id=order_id,
            name=f"#{order_id % 10000}",
            customer_id=customer.id,
            email=customer.email,
            currency="JPY",
            placed_at=now,
            source_updated_at=now,
        )
        session.add(order)
        session.flush()
        assert order.id is not None
        tps = [
            Touchpoint(order_id=order.id, kind="delivery_survey", seq=i, due_at=now, policy_version="t")
            for i in range(1, n + 1)
        ]
        session.add_all(tps)
        session.commit()
    return tps


def mail_for(tp: Touchpoint, subject: str = "ご注文はいかがでしたか", **kw: object) -> outbox.TouchpointMail:
    fields: dict[str, object] = {
        "to_email": "hanako@example.jp",
        "to_name": "山田 花子",
        "rendered": RenderedEmail(subject, "本文", "<p>本文</p>"),
        "locale": "ja",
        "order_name": "#1001",
        "is_test": False,
        "headers": UNSUBSCRIBE,
    }
    fields.update(kw)
    return outbox.TouchpointMail.of(tp, **fields)  # type: ignore[arg-type]


def stored(rt: Runtime) -> list[OutboxMessage]:
    with Session(rt.engine) as session:
        return list(session.exec(select(OutboxMessage).order_by(OutboxMessage.id)))  # type: ignore[arg-type]


def test_a_batch_is_stored_once_per_touchpoint_even_with_a_touchpoint_twice(rt: Runtime) -> None:
    a, b, c = planned(rt, 3)
    with Session(rt.engine) as session:
        got = outbox.enqueue_many(
            session,
            [mail_for(a), mail_for(b, headers=None), mail_for(a, subject="the second of a"), mail_for(c)],
            now=DECIDED_AT,
        )
        session.commit()
    rows = stored(rt)
    assert [r.touchpoint_id for r in rows] == [a.id, b.id, c.id]
    by_tp = {r.touchpoint_id: r for r in rows}
    # The first mail of a touchpoint given twice is the one stored; the second finds it.
    assert [(e.id, e.inserted) for e in got] == [
        (by_tp[a.id].id, True),
        (by_tp[b.id].id, True),
        (by_tp[a.id].id, False),
        (by_tp[c.id].id, True),
    ]
    assert by_tp[a.id].subject == "ご注文はいかがでしたか"
    assert all(r.status == OutboxStatus.PENDING and r.attempts == 0 for r in rows)
    assert {r.created_at for r in rows} == {DECIDED_AT}  # the moment it was decided to send them
    assert by_tp[a.id].headers == UNSUBSCRIBE and by_tp[a.id].to_name == "山田 花子"
    # No extra header is SQL NULL, as outbox.enqueue stores it (not a JSON null).
    with rt.engine.connect() as conn:
        nulls = conn.execute(
            sa.select(OutboxMessage.touchpoint_id).where(OutboxMessage.headers.is_(None))  # type: ignore[union-attr]
        ).scalars()
        assert list(nulls) == [b.id]


def test_a_later_batch_stores_only_what_is_new_and_leaves_stored_rows_as_they_are(rt: Runtime) -> None:
    a, b, c = planned(rt, 3)
    with Session(rt.engine) as session:
        [first] = outbox.enqueue_many(session, [mail_for(a)], now=DECIDED_AT)
        session.commit()
    claimed = outbox.claim_due(rt.engine, 10, "w1")  # a is on its way
    assert [x.outbox_id for x in claimed] == [first.id]
    with Session(rt.engine) as session:
        again = outbox.enqueue_many(
            session,
            [mail_for(c), mail_for(a, subject="changed"), mail_for(b)],
            now=DECIDED_AT + timedelta(hours=1),
        )
        session.commit()
    assert [(e.inserted, e.status) for e in again] == [
        (True, "pending"),
        (False, "sending"),
        (True, "pending"),
    ]
    assert again[1].id == first.id
    rows = {r.touchpoint_id: r for r in stored(rt)}
    assert len(rows) == 3
    assert rows[a.id].subject == "ご注文はいかがでしたか" and rows[a.id].status == OutboxStatus.SENDING
    assert rows[a.id].created_at == DECIDED_AT and rows[b.id].created_at == DECIDED_AT + timedelta(hours=1)
    # Each one is claimed, and so sent, once.
    assert sorted(x.outbox_id for x in outbox.claim_due(rt.engine, 10, "w2")) == sorted(
        [rows[b.id].id, rows[c.id].id]
    )
    assert outbox.claim_due(rt.engine, 10, "w3") == []
    with Session(rt.engine) as session:
        assert outbox.enqueue_many(session, []) == []


def test_two_workers_enqueueing_the_same_touchpoints_at_once_store_each_once(rt: Runtime) -> None:
    tps = planned(rt, 40)
    barrier = threading.Barrier(2)
    results: list[list[outbox.Enqueued]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with Session(rt.engine) as session:
                barrier.wait()
                results.append(outbox.enqueue_many(session, [mail_for(tp) for tp in tps], now=DECIDED_AT))
                session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    rows = stored(rt)
    assert len(rows) == 40 == len({r.touchpoint_id for r in rows})
    # Every touchpoint was inserted by exactly one of the two, and both name the same row.
    for i in range(40):
        first, second = results[0][i], results[1][i]
        assert first.id == second.id and first.inserted != second.inserted


@pytest.mark.parametrize(
    "headers",
    [
        {"List-Unsubscribe": "<https://x.example/u>\r\nBcc: victim@example.com"},
        {"From": "evil@example.com"},
        {"X-Note": "a" * 901},
    ],
)
def test_a_bad_header_fails_its_own_message_where_it_is_made_and_no_batch_holds_it(
    rt: Runtime, headers: dict[str, str]
) -> None:
    a, b = planned(rt, 2)
    with pytest.raises(InvalidHeader):
        mail_for(a, headers=headers)
    with Session(rt.engine) as session:
        batch = []
        for tp, h in ((a, headers), (b, UNSUBSCRIBE)):
            try:
                batch.append(mail_for(tp, headers=h))
            except InvalidHeader:
                continue
        [only] = outbox.enqueue_many(session, batch, now=DECIDED_AT)
        session.commit()
    assert [r.touchpoint_id for r in stored(rt)] == [b.id] and only.inserted


def test_a_batch_the_database_refuses_is_refused_whole(rt: Runtime) -> None:
    (a,) = planned(rt, 1)
    ghost = outbox.TouchpointMail(
        987_654_321,
        a.order_id,
        "delivery_survey",
        "x@example.jp",
        None,
        RenderedEmail("s", "t", "h"),
        "ja",
        None,
        False,
    )
    with Session(rt.engine) as session, pytest.raises(sa.exc.IntegrityError):
        outbox.enqueue_many(session, [mail_for(a), ghost], now=DECIDED_AT)  # no such touchpoint
    assert stored(rt) == []
