"""The dispatcher on SQLite and PostgreSQL: due surveys decided by the contact rules right before
sending, in the customer's own time, capped, consented, and sent exactly once."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare import timed
from aftercare.contact import dispatch as dispatcher
from aftercare.contact import links, store
from aftercare.contact.compose import BatchComposer, Write
from aftercare.contact.consent import Consent
from aftercare.models import Customer, Order, OutboxMessage, Refund, Touchpoint, UTCDateTime
from aftercare.spine import outbox
from tests.contact.survey_setup import BERLIN, COMPOSERS, NEW_YORK, make_survey, touchpoint
from tests.factories import SHOP
from tests.pipeline import rows

TOKYO_TZ = ZoneInfo("Asia/Tokyo")


def jst(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO_TZ).astimezone(UTC)


def run(rt, now, composers=COMPOSERS, limit=1000):
    return timed.dispatch_due(rt, now, limit=limit, composers=composers)


def survey_mails(rt):
    return rows(rt, OutboxMessage, OutboxMessage.kind == "delivery_survey")


def test_a_survey_due_at_3am_in_tokyo_is_held_until_9_then_sent_with_one_click_unsubscribe(rt):
    tp_id = make_survey(rt, 1, due_at=jst(2026, 12, 3, 3, 0))
    early = run(rt, jst(2026, 12, 3, 3, 0))
    assert [d.touchpoint_id for d in early.held] == [tp_id] and not early.sent
    held = touchpoint(rt, tp_id)
    assert held.status == "planned" and held.held_until == jst(2026, 12, 3, 9, 0)
    assert held.verdict is not None and held.verdict["line"] == "held until 09:00 JST (quiet hours)"
    assert {r["rule"]: r["status"] for r in held.verdict["rules"]}["send_window"] == "held"
    assert survey_mails(rt) == []
    # Nothing is due again before 09:00 JST: the run at 08:59 does not even look at it.
    assert run(rt, jst(2026, 12, 3, 8, 59)).counts() == {"sent": 0, "held": 0, "skipped": 0, "failed": 0}
    sent = run(rt, jst(2026, 12, 3, 9, 0))
    assert [d.touchpoint_id for d in sent.sent] == [tp_id]
    [mail] = survey_mails(rt)
    assert mail.touchpoint_id == tp_id and mail.status == "pending" and mail.to_email == "buyer1@example.jp"
    assert mail.created_at == jst(2026, 12, 3, 9, 0)
    # RFC 8058: exactly one https URL first, a mailto after it, and the one-click POST header.
    assert mail.headers is not None
    assert mail.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = mail.headers["List-Unsubscribe"].split(", ")
    assert https.startswith("<" + rt.settings.customer_base_url.rstrip("/") + "/unsubscribe/")
    assert mailto.startswith("<mailto:")
    token = https.strip("<>").rsplit("/", 1)[1]
    claims = links.read_unsubscribe_token(
        rt.settings.link_secret.get_secret_value(), token, now=jst(2026, 12, 3, 9, 0)
    )
    assert (claims.list_name, claims.touchpoint_id, claims.shop_domain) == ("surveys", tp_id, SHOP)
    assert claims.email_hash == store.email_hash("buyer1@example.jp") and "buyer1" not in token
    assert https.strip("<>") in mail.text_body
    after = touchpoint(rt, tp_id)
    assert after.status == "planned" and after.held_until is None and after.verdict["outcome"] == "send"
    # The outbox sends it; the touchpoint is done then, as an order confirmation's is.
    [result] = outbox.send_now(rt.engine, [mail.id], rt.backend, rt.settings, "test")
    assert result.status == "sent" and touchpoint(rt, tp_id).status == "done"
    # Sent once: a later run finds nothing to do.
    assert run(rt, jst(2026, 12, 3, 10, 0)).counts()["sent"] == 0
    assert len(survey_mails(rt)) == 1


def test_new_york_across_the_spring_forward_goes_at_9_edt(rt):
    # 2027-03-14: clocks in New York jump from 02:00 EST to 03:00 EDT. Due 03:30 EDT (07:30 UTC).
    due = datetime(2027, 3, 14, 7, 30, tzinfo=UTC)
    tp_id = make_survey(rt, 2, due_at=due, shipping=NEW_YORK)
    result = run(rt, due)
    [held] = result.held
    assert held.send_at == datetime(2027, 3, 14, 13, 0, tzinfo=UTC)  # 09:00 EDT (UTC-4), not 14:00
    assert held.zone == "America/New_York" and held.line == "held until 09:00 EDT (quiet hours)"
    # The day before, 09:00 EST is 14:00 UTC: the same wall time, another instant.
    tp2 = make_survey(rt, 3, due_at=datetime(2027, 3, 13, 8, 0, tzinfo=UTC), shipping=NEW_YORK)
    [held2] = run(rt, datetime(2027, 3, 13, 8, 0, tzinfo=UTC)).held
    assert held2.touchpoint_id == tp2 and held2.send_at == datetime(2027, 3, 13, 14, 0, tzinfo=UTC)
    assert sorted(d.touchpoint_id for d in run(rt, datetime(2027, 3, 14, 13, 0, tzinfo=UTC)).sent) == sorted(
        [tp_id, tp2]
    )


def test_no_address_and_an_unknown_country_are_timed_in_the_shops_zone(rt):
    bare = make_survey(rt, 4, due_at=jst(2026, 12, 3, 22, 0), shipping=None, billing=None)
    odd = make_survey(rt, 5, due_at=jst(2026, 12, 3, 22, 0), shipping={"country_code": "ZZ", "city": "?"})
    result = run(rt, jst(2026, 12, 3, 22, 0))
    assert sorted(d.touchpoint_id for d in result.held) == sorted([bare, odd])
    for tp_id in (bare, odd):
        tp = touchpoint(rt, tp_id)
        assert tp.verdict["zone"] == "Asia/Tokyo" and "shop" in tp.verdict["zone_reason"]
        assert tp.held_until == jst(2026, 12, 4, 9, 0)
    assert "ZZ" in touchpoint(rt, odd).verdict["zone_reason"]
    assert len(run(rt, jst(2026, 12, 4, 9, 0)).sent) == 2


def test_the_billing_address_decides_when_there_is_no_shipping_address(rt):
    tp_id = make_survey(rt, 6, due_at=jst(2026, 12, 3, 10, 0), shipping=None, billing=NEW_YORK)
    # 10:00 JST is 20:00 EST the evening before: quiet hours in New York.
    [held] = run(rt, jst(2026, 12, 3, 10, 0)).held
    assert held.touchpoint_id == tp_id and held.zone == "America/New_York"
    assert "billing address: US/NY" in touchpoint(rt, tp_id).verdict["zone_reason"]


def test_the_frequency_cap_postpones_the_second_survey_and_never_drops_it(rt):
    first = make_survey(rt, 7, email="same@example.jp", due_at=jst(2026, 12, 3, 10, 0))
    second = make_survey(rt, 8, email="same@example.jp", due_at=jst(2026, 12, 3, 10, 0))
    result = run(rt, jst(2026, 12, 3, 10, 0))
    assert [d.touchpoint_id for d in result.sent] == [first]
    [held] = result.held
    assert held.touchpoint_id == second and held.send_at == jst(2026, 12, 4, 10, 0)
    assert held.line.startswith("postponed until 2026-12-04 10:00 JST (one feedback mail per 24 h")
    # Even when the first is still pending in the outbox (claimed, not yet sent), it counts.
    assert run(rt, jst(2026, 12, 4, 9, 59)).counts()["sent"] == 0
    assert [d.touchpoint_id for d in run(rt, jst(2026, 12, 4, 10, 0)).sent] == [second]
    assert len(survey_mails(rt)) == 2


def test_a_backfill_of_old_orders_mails_nobody(rt):
    ids = [make_survey(rt, 10 + i, due_at=jst(2026, 11, 1, 10, 0) - timedelta(days=i)) for i in range(3)]
    result = run(rt, jst(2026, 11, 16, 10, 1))  # 15 days and a minute later
    assert sorted(d.touchpoint_id for d in result.skipped) == sorted(ids) and not result.sent
    for tp_id in ids:
        tp = touchpoint(rt, tp_id)
        assert tp.status == "skipped" and tp.reason.startswith("not sent: stale: 1")
        assert tp.reason.endswith("days past due (limit 14 days)")
    assert survey_mails(rt) == []


def test_unsubscribed_and_suppressed_customers_are_skipped_with_the_reason(rt):
    gone = make_survey(rt, 20, due_at=jst(2026, 12, 3, 10, 0))
    redacted = make_survey(rt, 21, due_at=jst(2026, 12, 3, 10, 0))
    with Session(rt.engine) as s:
        contact, _shop = timed.policies_of(rt)
        store.record_consent(
            s,
            shop_domain=SHOP,
            email_key="buyer20@example.jp",
            event=Consent("unsubscribed", jst(2026, 12, 1, 12, 0), "customers/update"),
        )
        # Suppressed by the address's hash only (what a redaction leaves): nothing cancelled up front.
        store.suppress(
            s,
            shop_domain=SHOP,
            email_key=None,
            address_hash=store.email_hash("buyer21@example.jp"),
            list_name="surveys",
            source="unsubscribe page",
            now=jst(2026, 12, 1, 12, 0),
            policy=contact,
        )
        s.commit()
    result = run(rt, jst(2026, 12, 3, 10, 0))
    assert not result.sent and len(result.skipped) == 2
    assert touchpoint(rt, gone).reason == (
        "not sent: unsubscribed from the shop's emails on 2026-12-01 (Shopify: customers/update)"
    )
    assert touchpoint(rt, redacted).reason == "not sent: unsubscribed from surveys on 2026-12-01"
    assert survey_mails(rt) == []


def test_cancelled_and_fully_refunded_orders_are_skipped(rt):
    cancelled = make_survey(rt, 30, due_at=jst(2026, 12, 3, 10, 0))
    refunded = make_survey(rt, 31, due_at=jst(2026, 12, 3, 10, 0))
    partly = make_survey(rt, 32, due_at=jst(2026, 12, 3, 10, 0))
    with Session(rt.engine) as s:
        # Written straight to the tables: the rules must see what happened after the survey was
        # planned even when nothing cancelled the touchpoint (a race with the dispatcher).
        s.execute(
            sa.update(Order).where(Order.shopify_id == 9_100_030).values(cancelled_at=jst(2026, 12, 2, 9, 0))
        )
        for n, share in ((31, 1.0), (32, 0.0)):
            order = s.exec(select(Order).where(Order.shopify_id == 9_100_000 + n)).one()
            lines = [{"line_id": li["id"], "quantity": li["quantity"]} for li in order.raw["line_items"]]
            if share == 0.0:
                lines = lines[:1]
                lines[0]["quantity"] = (
                    max(1, lines[0]["quantity"] - 1) if len(order.raw["line_items"]) == 1 else 1
                )
            s.add(
                Refund(
                    order_id=order.id,
                    shop_domain=SHOP,
                    shopify_id=5_000_000 + n,
                    lines=lines,
                    refunded_at=jst(2026, 12, 2, 9, 0),
                    raw={},
                )
            )
        s.commit()
    result = run(rt, jst(2026, 12, 3, 10, 0))
    assert touchpoint(rt, cancelled).reason == "not sent: order cancelled on 2026-12-02"
    assert touchpoint(rt, refunded).reason == "not sent: order refunded in full"
    assert [d.touchpoint_id for d in result.sent] == [partly]


def test_germany_needs_opt_in_for_a_survey(rt):
    without = make_survey(rt, 40, due_at=jst(2026, 12, 3, 18, 0), shipping=BERLIN)  # 10:00 in Berlin
    opted = make_survey(rt, 41, due_at=jst(2026, 12, 3, 18, 0), shipping=BERLIN)
    with Session(rt.engine) as s:
        store.record_consent(
            s,
            shop_domain=SHOP,
            email_key="buyer41@example.jp",
            event=Consent("subscribed", jst(2026, 11, 1, 12, 0), "customers/update", "confirmed_opt_in"),
        )
        s.commit()
    result = run(rt, jst(2026, 12, 3, 18, 0))
    assert [d.touchpoint_id for d in result.sent] == [opted]
    tp = touchpoint(rt, without)
    assert tp.status == "skipped"
    assert tp.reason.startswith("not sent: no consent for feedback mail in DE (opt-in; no consent on record")


def test_kinds_without_a_composer_and_transactional_mail_are_never_touched(rt):
    tp_id = make_survey(rt, 50, due_at=jst(2026, 12, 3, 10, 0))
    with Session(rt.engine) as s:
        s.execute(
            sa.update(Touchpoint)
            .where(Touchpoint.kind == "review_request")
            .values(due_at=jst(2026, 12, 3, 9, 0))
        )
        s.commit()
    before = {t.id: (t.status, t.verdict, t.decided_at) for t in rows(rt, Touchpoint) if t.id != tp_id}
    assert run(rt, jst(2026, 12, 3, 10, 0), composers={}).counts()["sent"] == 0
    assert touchpoint(rt, tp_id).verdict is None
    run(rt, jst(2026, 12, 3, 10, 0))
    after = {t.id: (t.status, t.verdict, t.decided_at) for t in rows(rt, Touchpoint) if t.id != tp_id}
    assert after == before
    assert any(t.kind == "review_request" and t.status == "planned" for t in rows(rt, Touchpoint))


def test_a_composer_that_raises_leaves_the_survey_planned_and_says_why(rt):
    tp_id = make_survey(rt, 51, due_at=jst(2026, 12, 3, 10, 0))
    other = make_survey(rt, 52, due_at=jst(2026, 12, 3, 10, 0))

    def flaky(ctx):
        if ctx.touchpoint.id == tp_id:
            raise KeyError("missing template variable 'score_links'")
        return COMPOSERS["delivery_survey"](ctx)

    result = run(rt, jst(2026, 12, 3, 10, 0), composers={"delivery_survey": flaky})
    [failed] = result.failed
    assert failed.touchpoint_id == tp_id and "score_links" in failed.line
    assert [d.touchpoint_id for d in result.sent] == [other]
    tp = touchpoint(rt, tp_id)
    assert tp.status == "planned" and tp.verdict is None
    assert [d.touchpoint_id for d in run(rt, jst(2026, 12, 3, 10, 5)).sent] == [tp_id]


def test_a_header_the_outbox_refuses_fails_that_survey_alone_and_the_batch_goes(rt):
    bad = make_survey(rt, 53, due_at=jst(2026, 12, 3, 10, 0))
    others = [make_survey(rt, n, due_at=jst(2026, 12, 3, 10, 0)) for n in (54, 55)]

    def injecting(ctx):
        composed = COMPOSERS["delivery_survey"](ctx)
        if ctx.touchpoint.id == bad:
            return dataclasses.replace(composed, headers={"X-Campaign": "a\r\nBcc: victim@example.com"})
        return composed

    result = run(rt, jst(2026, 12, 3, 10, 0), composers={"delivery_survey": injecting})
    [failed] = result.failed
    assert failed.touchpoint_id == bad and "InvalidHeader" in failed.line
    assert sorted(d.touchpoint_id for d in result.sent) == sorted(others)
    mails = survey_mails(rt)
    assert sorted(m.touchpoint_id for m in mails) == sorted(others)
    assert sorted(d.outbox_id for d in result.sent) == sorted(m.id for m in mails)
    assert touchpoint(rt, bad).status == "planned" and touchpoint(rt, bad).verdict is None


def test_due_uses_held_until_and_limit(rt):
    a = make_survey(rt, 60, due_at=jst(2026, 12, 3, 3, 0))
    b = make_survey(rt, 61, due_at=jst(2026, 12, 3, 10, 0))
    run(rt, jst(2026, 12, 3, 3, 0))  # a held until 09:00
    with Session(rt.engine) as s:
        contact, _ = timed.policies_of(rt)
        assert dispatcher.due(s, jst(2026, 12, 3, 8, 0), policy=contact) == []
        assert [
            d.id
            for d in dispatcher.due(s, jst(2026, 12, 3, 8, 0), before=jst(2026, 12, 3, 10, 0), policy=contact)
        ] == [a, b]
        assert [d.id for d in dispatcher.due(s, jst(2026, 12, 3, 11, 0), limit=1, policy=contact)] == [a]
        kinds = ["delivery_survey"]
        assert not dispatcher.needs_dispatch_now(s, jst(2026, 12, 3, 8, 0), kinds)  # a was decided
        assert dispatcher.needs_dispatch_now(s, jst(2026, 12, 3, 10, 0), kinds)  # b never was
        nxt = dispatcher.next_send(s, jst(2026, 12, 3, 8, 0), kinds)
        assert nxt is not None and nxt.at == jst(2026, 12, 3, 9, 0) and nxt.count == 1


def test_two_dispatchers_at_once_send_each_survey_once_and_keep_the_cap(rt):
    # 30 customers with two surveys each, all due now: one of each pair may go, the other waits a day.
    due = jst(2026, 12, 3, 10, 0)
    for i in range(30):
        for j in range(2):
            make_survey(rt, 100 + 2 * i + j, email=f"pair{i}@example.jp", due_at=due)
    barrier = threading.Barrier(2)
    results: list[dispatcher.DispatchResult] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(run(rt, due))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    mails = survey_mails(rt)
    assert len(mails) == 30 == sum(len(r.sent) for r in results)
    assert len({m.touchpoint_id for m in mails}) == 30
    assert sorted(m.to_email for m in mails) == sorted(f"pair{i}@example.jp" for i in range(30))
    assert sum(len(r.held) for r in results) == 30
    held = [t for t in rows(rt, Touchpoint, Touchpoint.kind == "delivery_survey") if t.held_until]
    assert len(held) == 30 and {t.held_until for t in held} == {due + timedelta(days=1)}


def test_an_order_whose_address_is_not_one_is_skipped_and_a_hostile_name_never_reaches_the_header(rt):
    bad = make_survey(rt, 70, due_at=jst(2026, 12, 3, 10, 0))
    hostile = make_survey(rt, 71, due_at=jst(2026, 12, 3, 10, 0))
    with Session(rt.engine) as s:
        s.execute(sa.update(Order).where(Order.shopify_id == 9_100_070).values(email="no at sign"))
        order = s.exec(select(Order).where(Order.shopify_id == 9_100_071)).one()
        s.execute(
            sa.update(Customer)
            .where(Customer.id == order.customer_id)
            .values(first_name="花子\r\nBcc: x@evil.example", last_name="山田" + "\u202e" * 3)
        )
        s.commit()
    result = run(rt, jst(2026, 12, 3, 10, 0))
    tp = touchpoint(rt, bad)
    assert tp.status == "skipped" and tp.reason.startswith("the customer's email is not an address")
    [sent] = result.sent
    assert sent.touchpoint_id == hostile
    [mail] = survey_mails(rt)
    assert mail.to_name is not None and "\r" not in mail.to_name and "\n" not in mail.to_name
    assert "\u202e" not in mail.to_name


# A row each mail has written with it (a table keyed by touchpoint; which one does not matter here).
_NOTED = sa.text(
    "INSERT INTO review_request_items (touchpoint_id, order_id, line_id, product_key, asked_at) "
    "VALUES (:touchpoint_id, :order_id, 1, :product_key, :asked_at)"
).bindparams(sa.bindparam("asked_at", type_=UTCDateTime()))


def noting_composer(*, raises=(), refused=()):
    """A BatchComposer over the plain survey: what it prepared and what was kept are recorded, and
    each mail has a row written with it (`refused`: one the database refuses, a NULL key)."""
    seen: dict[str, list] = {"prepared": [], "kept": []}

    def prepare(session, touchpoints, orders, now):
        seen["prepared"].append(sorted(t.id for t in touchpoints))
        return {t.id: orders[t.order_id].name for t in touchpoints}

    def compose(ctx):
        tp = ctx.touchpoint.id
        if tp in raises:
            raise KeyError("missing template variable 'score_links'")
        row = {
            "touchpoint_id": tp,
            "order_id": ctx.order.id,
            "product_key": None if tp in refused else ctx.prepared[tp],
            "asked_at": ctx.now,
        }
        return dataclasses.replace(
            COMPOSERS["delivery_survey"](ctx),
            writes=(Write(_NOTED, row),),
            kept=lambda: seen["kept"].append(tp),
        )

    return BatchComposer(prepare, compose), seen


def noted(rt):
    with Session(rt.engine) as s:
        return dict(s.execute(sa.text("SELECT touchpoint_id, product_key FROM review_request_items")).all())


def test_a_batch_composer_reads_once_for_the_batch_and_a_failing_message_writes_nothing(rt):
    due = jst(2026, 12, 3, 10, 0)
    ids = [make_survey(rt, n, due_at=due) for n in (70, 71, 72)]
    composer, seen = noting_composer(raises={ids[1]})
    result = run(rt, due, composers={"delivery_survey": composer})
    assert seen["prepared"] == [sorted(ids)]  # one read for the whole batch
    assert [d.touchpoint_id for d in result.failed] == [ids[1]] and "score_links" in result.failed[0].line
    assert sorted(d.touchpoint_id for d in result.sent) == sorted(seen["kept"]) == [ids[0], ids[2]]
    with Session(rt.engine) as s:
        names = {o.id: o.name for o in s.exec(select(Order))}
    assert noted(rt) == {tp: names[touchpoint(rt, tp).order_id] for tp in (ids[0], ids[2])}
    assert sorted(m.touchpoint_id for m in survey_mails(rt)) == [ids[0], ids[2]]
    assert touchpoint(rt, ids[1]).status == "planned" and touchpoint(rt, ids[1]).verdict is None


def test_a_row_the_database_refuses_fails_that_message_alone_and_the_batch_is_kept(rt):
    due = jst(2026, 12, 3, 10, 0)
    ids = [make_survey(rt, n, due_at=due) for n in (73, 74, 75)]
    composer, _seen = noting_composer(refused={ids[0]})
    result = run(rt, due, composers={"delivery_survey": composer})
    [failed] = result.failed
    assert failed.touchpoint_id == ids[0] and "IntegrityError" in failed.line
    assert sorted(d.touchpoint_id for d in result.sent) == ids[1:]
    mails = survey_mails(rt)
    assert sorted(m.touchpoint_id for m in mails) == ids[1:]
    assert sorted(d.outbox_id for d in result.sent) == sorted(m.id for m in mails)
    assert sorted(noted(rt)) == ids[1:]
    tp = touchpoint(rt, ids[0])
    assert tp.status == "planned" and tp.verdict is None
    # The next run, its row accepted, sends it.
    again, _seen = noting_composer()
    assert [
        d.touchpoint_id for d in run(rt, jst(2026, 12, 3, 10, 5), composers={"delivery_survey": again}).sent
    ] == [ids[0]]


def test_a_batch_composer_whose_batch_read_fails_composes_each_message_alone(rt):
    due = jst(2026, 12, 3, 10, 0)
    ids = [make_survey(rt, n, due_at=due) for n in (76, 77)]
    composer, seen = noting_composer()
    read_one = composer.prepare

    def prepare(session, touchpoints, orders, now):
        if len(touchpoints) > 1:  # a bug that only a batch shows
            seen["prepared"].append(sorted(t.id for t in touchpoints))
            session.execute(sa.text("SELECT no_such_column FROM touchpoints"))
        return read_one(session, touchpoints, orders, now)

    result = run(rt, due, composers={"delivery_survey": dataclasses.replace(composer, prepare=prepare)})
    assert seen["prepared"] == [sorted(ids), [ids[0]], [ids[1]]]  # the batch's read, then one each
    assert sorted(d.touchpoint_id for d in result.sent) == ids and not result.failed
    assert sorted(noted(rt)) == ids
