"""Shipping on a real database: fulfillments become shipments with one notice each, delivery is
recorded or estimated, and cancellations and refunds take back what was planned."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from aftercare.models import InboxEvent, InboxWait, OutboxMessage, Refund, Shipment, Touchpoint
from aftercare.orders import shipping
from aftercare.spine import outbox as outbox_mod
from aftercare.spine.inbox import claim_batch
from aftercare.web.app import classify_shopify
from tests.conftest import shared_path
from tests.factories import body_of, deliver, fulfillment_payload, order_payload, refund_payload
from tests.pipeline import drain, jst, receive, rows

YAMATO_URL = "https://toi.kuronekoyamato.co.jp/cgi-bin/tneko?number01=432109876543"


def notices(rt):
    return rows(rt, OutboxMessage, OutboxMessage.kind == "shipment_notice")


def touchpoints(rt, kind):
    return rows(rt, Touchpoint, Touchpoint.kind == kind)


# --- fulfillments and the shipment notice --------------------------------------------------------


def test_fulfillment_records_the_shipment_and_writes_one_keigo_notice_with_a_tracking_link(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    out = receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    assert out.status == "done" and out.order_name == "#1101" and out.outbox_id is not None

    [shipment] = rows(rt, Shipment)
    assert (shipment.carrier, shipment.status, shipment.tracking_numbers) == (
        "ヤマト運輸",
        "success",
        ["4321-0987-6543"],
    )
    assert shipment.tracking_urls == [YAMATO_URL]
    assert [(li["sku"], li["quantity"]) for li in shipment.lines] == [
        ("TOWEL-GIFT-W", 1),
        ("ARITA-MUG-AI", 2),
    ]
    assert shipment.shipped_at == jst("2026-11-24T15:00:00+09:00")

    [msg] = notices(rt)
    assert msg.subject == "【aftercare demo shop】ご注文の商品を発送いたしました #1101"
    assert msg.to_email == "hanako@example.jp" and msg.locale == "ja"
    for expected in [
        "山田 花子 様",
        "誠にありがとうございます",
        "2026年11月24日(火)に発送いたしました",
        "今治タオル ギフトセット（ホワイト） × 1",
        "有田焼 マグカップ（藍） × 2",
        "■配送業者：ヤマト運輸",
        "4321-0987-6543",
        YAMATO_URL,
        "お手数ではございますが",
        "恐れ入りますが",
        "■お届け予定日：2026年11月25日(水)頃",
    ]:  # ヤマト運輸: 1 transit day by policy
        assert expected in msg.text_body, expected
    assert "残りの商品" not in msg.text_body  # everything shipped at once
    assert f'<a href="{YAMATO_URL.replace("?", "?")}">4321-0987-6543</a>' in msg.html_body
    with Session(rt.engine) as s:
        assert s.get(InboxEvent, out.inbox_id).subject_ref == "#1101"  # findable by order name


def test_redelivered_and_updated_fulfillment_keeps_one_notice_with_the_newest_tracking(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    receive(rt, fulfillment_payload(order), topic="fulfillments/create")  # Shopify retried the webhook
    update = fulfillment_payload(
        order,
        updated_at="2026-11-24T16:00:00+09:00",
        tracking_number="1111-2222-3333",
        tracking_numbers=["1111-2222-3333"],
    )
    receive(rt, update, topic="fulfillments/update")
    [msg] = notices(rt)
    [tp] = touchpoints(rt, "shipment_notice")
    [shipment] = rows(rt, Shipment)
    assert tp.seq == shipment.id and msg.touchpoint_id == tp.id
    assert "1111-2222-3333" in msg.text_body  # not claimed yet: refreshed with the newest state


def test_english_notice(rt):
    order = order_payload("en-first")
    receive(rt, order)
    receive(
        rt,
        fulfillment_payload(
            order,
            tracking_company="USPS",
            tracking_number="9400 1000",
            tracking_numbers=["9400 1000"],
            tracking_urls=["https://tools.usps.com/go/x"],
            tracking_url=None,
        ),
        topic="fulfillments/create",
    )
    [msg] = notices(rt)
    assert msg.subject == "Your order #1104 is on its way - aftercare demo shop"
    assert "Dear Emma Wilson," in msg.text_body and "Carrier: USPS" in msg.text_body
    assert "- 9400 1000: https://tools.usps.com/go/x" in msg.text_body
    # USPS: 7 transit days by policy, from Tue 24 Nov 15:00 JST
    assert "Expected delivery: around Tuesday, December 1, 2026" in msg.text_body


def test_partial_shipments_get_one_notice_each(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    first = receive(rt, fulfillment_payload(order, lines=[9100011]), topic="fulfillments/create")
    second = receive(
        rt,
        fulfillment_payload(
            order,
            fulfillment_id=5550002,
            name="#1101.2",
            lines=[9100021],
            created_at="2026-11-26T09:00:00+09:00",
            updated_at="2026-11-26T09:00:00+09:00",
        ),
        topic="fulfillments/create",
    )
    assert first.outbox_id != second.outbox_id
    one, two = notices(rt)
    assert "今治タオル" in one.text_body and "有田焼" not in one.text_body and "残りの商品" in one.text_body
    assert "有田焼 マグカップ（藍） × 2" in two.text_body and "残りの商品" not in two.text_body
    assert sorted(t.seq for t in touchpoints(rt, "shipment_notice")) == sorted(
        s.id for s in rows(rt, Shipment)
    )


def test_out_of_order_fulfillment_updates_are_resolved_by_updated_at(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    newer = fulfillment_payload(
        order,
        updated_at="2026-11-25T09:00:00+09:00",
        shipment_status="in_transit",
        tracking_numbers=["NEW-1"],
        tracking_number="NEW-1",
    )
    receive(rt, newer, topic="fulfillments/update")
    out = receive(rt, fulfillment_payload(order), topic="fulfillments/create")  # the older one, late
    assert out.reason and out.reason.startswith("stale")
    [shipment] = rows(rt, Shipment)
    assert shipment.shipment_status == "in_transit" and shipment.tracking_numbers == ["NEW-1"]
    assert len(notices(rt)) == 1


def test_tracking_url_that_is_not_http_is_stored_but_never_linked(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    evil = "javascript:alert(document.cookie)"
    receive(
        rt,
        fulfillment_payload(
            order, tracking_url=evil, tracking_urls=[evil], tracking_company="<script>x</script>"
        ),
        topic="fulfillments/create",
    )
    [shipment] = rows(rt, Shipment)
    assert shipment.tracking_urls == [evil]
    [msg] = notices(rt)
    assert "javascript:" not in msg.html_body and "javascript:" not in msg.text_body
    assert "<a href" not in msg.html_body and "4321-0987-6543" in msg.html_body
    assert "<script>" not in msg.html_body and "&lt;script&gt;" in msg.html_body


def test_pending_fulfillment_waits_for_success_before_the_notice(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(rt, fulfillment_payload(order, status="pending"), topic="fulfillments/create")
    assert notices(rt) == [] and rows(rt, Shipment)[0].status == "pending"
    receive(
        rt, fulfillment_payload(order, updated_at="2026-11-24T18:00:00+09:00"), topic="fulfillments/update"
    )
    assert len(notices(rt)) == 1


def test_cancelled_fulfillment_cancels_its_unsent_notice(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    receive(
        rt,
        fulfillment_payload(order, status="cancelled", updated_at="2026-11-24T17:00:00+09:00"),
        topic="fulfillments/update",
    )
    [tp] = touchpoints(rt, "shipment_notice")
    [msg] = notices(rt)
    assert tp.status == "cancelled" and "cancelled" in tp.reason and msg.status == "cancelled"
    [survey] = touchpoints(rt, "delivery_survey")  # planned from the shipment, which is now called back
    assert survey.status == "cancelled" and survey.reason == shipping.NOTHING_ON_ITS_WAY
    # A new shipment of the same order plans it again.
    receive(
        rt,
        fulfillment_payload(
            order,
            fulfillment_id=5550009,
            created_at="2026-11-25T10:00:00+09:00",
            updated_at="2026-11-25T10:00:00+09:00",
        ),
        topic="fulfillments/create",
    )
    [survey] = touchpoints(rt, "delivery_survey")
    assert survey.status == "planned" and survey.due_at == jst("2026-11-26T10:00:00+09:00") + timedelta(
        days=2
    )
    assert [m.status for m in notices(rt)] == ["cancelled", "pending"]


# --- a fulfillment before its order -------------------------------------------------------------------


def test_fulfillment_for_an_unknown_order_waits_and_is_applied_when_the_order_arrives(rt):
    order = order_payload("ja-first-gift")
    out = receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    assert out.status == "waiting" and "820001" in out.reason
    assert claim_batch(rt.engine, 10) == []  # not retried in a loop...
    [row] = rows(rt, InboxEvent)
    assert row.status == "waiting"  # ...and not dropped
    assert [w.order_shopify_id for w in rows(rt, InboxWait)] == [820001]

    placed = receive(rt, order)
    assert placed.released == [out.inbox_id]
    [again] = drain(rt)
    assert again.inbox_id == out.inbox_id and again.status == "done" and again.order_name == "#1101"
    assert len(notices(rt)) == 1 and rows(rt, InboxWait) == []


def test_refund_before_its_order_waits_too(rt):
    order = order_payload("ja-first-gift")
    out = receive(rt, refund_payload(order), topic="refunds/create")
    assert out.status == "waiting"
    receive(rt, order)
    [applied] = drain(rt)
    assert applied.status == "done" and len(rows(rt, Refund)) == 1


def test_sweep_releases_a_row_parked_while_its_order_was_committing(rt):
    """The race: the order commits between the fulfillment's lookup and its parking."""
    order = order_payload("ja-first-gift")
    receive(rt, order)
    inbox_id = deliver(rt.engine, fulfillment_payload(order), topic="fulfillments/create")
    with Session(rt.engine) as s:
        row = s.get(InboxEvent, inbox_id)
        shipping.park(s, row, 820001)
        s.commit()
    assert claim_batch(rt.engine, 10) == []
    assert shipping.release_ready(rt.engine) == [inbox_id]
    [out] = drain(rt)
    assert out.status == "done" and len(notices(rt)) == 1


def test_invalid_fulfillment_payload_is_invalid_with_a_reason(rt):
    out = receive(rt, {"id": 1, "status": "success"}, topic="fulfillments/create")
    assert out.status == "invalid" and "order_id" in out.reason and "created_at" in out.reason


def test_web_app_classifies_the_new_topics():
    order = order_payload("ja-first-gift")
    assert classify_shopify("fulfillments/create", body_of(fulfillment_payload(order))) == (
        "pending",
        None,
        "#1101.1",
    )
    unnamed = fulfillment_payload(order, name=None)
    assert classify_shopify("fulfillments/update", body_of(unnamed))[2] == "order-id:820001"
    assert classify_shopify("refunds/create", body_of(refund_payload(order)))[0] == "pending"
    assert classify_shopify("orders/cancelled", body_of(order))[0] == "pending"
    status, reason, _ = classify_shopify("refunds/create", b'{"refund": {"id": 1}}')
    assert status == "invalid" and "order_id" in reason


# --- delivery: real or estimated, and what keys on it ------------------------------------------------


def test_without_a_delivered_event_delivery_is_estimated_from_the_carrier_policy(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(rt, fulfillment_payload(order, tracking_company="佐川急便"), topic="fulfillments/create")
    shipped = jst("2026-11-24T15:00:00+09:00")
    with Session(rt.engine) as s:
        o = shipping.find_order(s, 820001)
        delivery = shipping.order_delivery(s, o, rt.policies.delivery)
    assert delivery.estimated and delivery.at == shipped + timedelta(days=2)  # 佐川急便: 2 days
    assert delivery.policy_version == rt.policies.delivery.version
    [survey] = touchpoints(rt, "delivery_survey")
    [review] = touchpoints(rt, "review_request")
    assert survey.due_at == shipped + timedelta(days=2 + 2) and review.due_at == shipped + timedelta(
        days=2 + 7
    )
    assert survey.status == review.status == "planned"
    assert survey.policy_version == rt.policies.delivery.version


def test_unknown_carrier_uses_the_default_transit_days(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(rt, fulfillment_payload(order, tracking_company="Acme Couriers"), topic="fulfillments/create")
    [shipment] = rows(rt, Shipment)
    assert shipment.carrier == "Acme Couriers"
    assert shipment.estimated_delivery_at == shipment.shipped_at + timedelta(
        days=rt.policies.delivery.default_transit_days
    )


def test_a_late_real_delivered_event_corrects_the_estimate_and_moves_what_is_planned(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    [survey] = touchpoints(rt, "delivery_survey")
    assert survey.due_at == jst("2026-11-25T15:00:00+09:00") + timedelta(days=2)
    delivered = fulfillment_payload(
        order, shipment_status="delivered", updated_at="2026-11-27T11:00:00+09:00"
    )
    receive(rt, delivered, topic="fulfillments/update")
    [shipment] = rows(rt, Shipment)
    assert shipment.delivered_at == jst("2026-11-27T11:00:00+09:00")
    [survey] = touchpoints(rt, "delivery_survey")
    [review] = touchpoints(rt, "review_request")
    assert survey.due_at == jst("2026-11-29T11:00:00+09:00") and review.due_at == jst(
        "2026-12-04T11:00:00+09:00"
    )
    assert len(touchpoints(rt, "delivery_survey")) == 1 and len(notices(rt)) == 1


@pytest.mark.contract
def test_real_fulfillment_fixture_delivered_is_recorded_with_its_time(rt):
    order = json.loads(shared_path("fixtures", "shopify", "order.json").read_text())["order"]
    fulfillment = json.loads(shared_path("fixtures", "shopify", "fulfillment.json").read_text())[
        "fulfillment"
    ]
    receive(rt, order)
    # The fixture is "pending" with no shipment_status; derive the delivered case from it.
    delivered = dict(
        fulfillment, status="success", shipment_status="delivered", updated_at="2013-11-03T10:00:00-05:00"
    )
    out = receive(rt, delivered, topic="fulfillments/update")
    assert out.status == "done" and out.order_name == "#1001"
    [shipment] = rows(rt, Shipment)
    assert shipment.shopify_id == 255858046 and shipment.carrier == "null-company"
    assert shipment.tracking_numbers == ["1Z2345"] and shipment.tracking_urls == [
        "http://www.google.com/search?q=1Z2345"
    ]
    assert [(li["sku"], li["quantity"]) for li in shipment.lines] == [("IPOD2008GREEN", 1)]
    assert shipment.delivered_at == datetime(2013, 11, 3, 15, 0, tzinfo=UTC)
    [survey] = touchpoints(rt, "delivery_survey")
    assert survey.due_at == shipment.delivered_at + timedelta(
        days=rt.policies.delivery.survey_days_after_delivery
    )
    [msg] = notices(rt)
    assert '<a href="http://www.google.com/search?q=1Z2345">1Z2345</a>' in msg.html_body
    assert "The rest of your order will follow" in msg.text_body  # 1 of 3 lines shipped


# --- cancellations and refunds --------------------------------------------------------------------


def test_cancelled_order_cancels_everything_pending_and_the_unclaimed_mail_is_never_sent(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    cancelled = order_payload(
        "ja-first-gift",
        cancelled_at="2026-11-24T20:00:00+09:00",
        cancel_reason="customer",
        updated_at="2026-11-24T20:00:00+09:00",
    )
    out = receive(rt, cancelled, topic="orders/cancelled")
    assert len(out.cancelled) == 4  # confirmation, notice, survey, review request
    tps = rows(rt, Touchpoint)
    assert {t.status for t in tps} == {"cancelled"}
    assert all(t.reason == "order cancelled at 2026-11-24T11:00:00+00:00" for t in tps)
    assert {m.status for m in rows(rt, OutboxMessage)} == {"cancelled"}
    assert outbox_mod.claim_due(rt.engine, 10, worker="w") == []


def test_cancellation_leaves_a_message_already_claimed_alone(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    [claimed] = outbox_mod.claim_due(rt.engine, 10, worker="w")
    receive(
        rt,
        order_payload(
            "ja-first-gift", cancelled_at="2026-11-24T20:00:00+09:00", updated_at="2026-11-24T20:00:00+09:00"
        ),
        topic="orders/cancelled",
    )
    [msg] = rows(rt, OutboxMessage)
    assert msg.id == claimed.outbox_id and msg.status == "sending"  # with the provider: not ours to recall


def test_refund_of_one_shipment_cancels_its_notice_and_a_full_refund_cancels_survey_and_review(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(rt, fulfillment_payload(order, lines=[9100011]), topic="fulfillments/create")
    receive(
        rt, fulfillment_payload(order, fulfillment_id=5550002, lines=[9100021]), topic="fulfillments/create"
    )
    towel, mug = touchpoints(rt, "shipment_notice")

    out = receive(rt, refund_payload(order, lines={9100011: 1}), topic="refunds/create")
    assert out.cancelled == [towel.id]
    towel, mug = touchpoints(rt, "shipment_notice")
    assert towel.status == "cancelled" and "refund 6660001" in towel.reason and mug.status == "planned"
    assert touchpoints(rt, "delivery_survey")[0].status == "planned"

    receive(rt, refund_payload(order, refund_id=6660002, lines={9100021: 1}), topic="refunds/create")
    assert touchpoints(rt, "review_request")[0].status == "planned"  # one mug of two is still theirs
    receive(rt, refund_payload(order, refund_id=6660003, lines={9100021: 1}), topic="refunds/create")
    for kind in ("delivery_survey", "review_request"):
        [tp] = touchpoints(rt, kind)
        assert tp.status == "cancelled" and "fully refunded" in tp.reason
    # A delivered event afterwards plans nothing new.
    receive(
        rt,
        fulfillment_payload(
            order,
            fulfillment_id=5550002,
            lines=[9100021],
            shipment_status="delivered",
            updated_at="2026-11-27T09:00:00+09:00",
        ),
        topic="fulfillments/update",
    )
    assert [t.status for t in touchpoints(rt, "delivery_survey")] == ["cancelled"]
    assert len(rows(rt, Refund)) == 3


def test_a_repeated_refund_webhook_is_recorded_once(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(rt, refund_payload(order, lines={9100021: 1}), topic="refunds/create")
    out = receive(rt, refund_payload(order, lines={9100021: 1}), topic="refunds/create")
    assert "already recorded" in out.reason and len(rows(rt, Refund)) == 1


@pytest.mark.contract
def test_real_refund_fixture_cancels_the_notice_of_the_refunded_line_only(rt):
    order = json.loads(shared_path("fixtures", "shopify", "order.json").read_text())["order"]
    fulfillment = json.loads(shared_path("fixtures", "shopify", "fulfillment.json").read_text())[
        "fulfillment"
    ]
    refund = json.loads(shared_path("fixtures", "shopify", "refund.json").read_text())
    receive(rt, order)
    receive(rt, dict(fulfillment, status="success"), topic="fulfillments/create")
    out = receive(rt, refund, topic="refunds/create")  # wrapped {"refund": ...}, as the fixture is
    [stored] = rows(rt, Refund)
    assert sorted((li["line_id"], li["quantity"]) for li in stored.lines) == [(466157049, 1), (703073504, 1)]
    assert stored.note == "it broke during shipping"
    [notice] = touchpoints(rt, "shipment_notice")  # the fulfillment shipped line 466157049 only
    assert out.cancelled == [notice.id] and notice.status == "cancelled"
    assert touchpoints(rt, "delivery_survey")[0].status == "planned"  # 518995019 was not refunded


def test_signed_fulfillment_webhook_is_stored_pending_and_applied(rt):
    from fastapi.testclient import TestClient

    from aftercare.web.app import create_app
    from aftercare.web.wake import NoWaker
    from tests.conftest import TEST_SECRET
    from tests.factories import webhook_headers

    order = order_payload("ja-first-gift")
    receive(rt, order)
    body = body_of({"fulfillment": fulfillment_payload(order)})  # Shopify may wrap it; both are accepted
    with TestClient(create_app(rt.settings, waker=NoWaker())) as client:
        resp = client.post(
            "/webhooks/shopify",
            content=body,
            headers=webhook_headers(body, secret=TEST_SECRET, topic="fulfillments/create"),
        )
        bad = client.post(
            "/webhooks/shopify",
            content=b'{"id": 1}',
            headers=webhook_headers(b'{"id": 1}', secret=TEST_SECRET, topic="fulfillments/update"),
        )
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    assert bad.status_code == 200 and bad.json()["status"] == "invalid" and "order_id" in bad.json()["reason"]
    [out] = drain(rt)
    assert out.status == "done" and out.topic == "fulfillments/create" and len(notices(rt)) == 1


def test_a_delivery_policy_with_a_bad_carrier_is_refused_with_the_file_named(tmp_path):
    import shutil

    from aftercare.errors import ConfigError
    from aftercare.policies import load_policies
    from aftercare.settings import PROJECT_ROOT

    shutil.copytree(PROJECT_ROOT / "policies", tmp_path / "policies")
    (tmp_path / "policies" / "delivery.yaml").write_text(
        'version: "d-1"\ncarriers:\n  - name: ヤマト運輸\n    transit_days: -1\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="delivery.yaml is invalid"):
        load_policies(tmp_path / "policies")
    (tmp_path / "policies" / "delivery.yaml").write_text('version: "d-1"\n', encoding="utf-8")
    (tmp_path / "policies" / "requests.yaml").write_text(
        'version: "r-1"\nattributes:\n  delivery_day: [お届け日]\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="unknown request kinds"):
        load_policies(tmp_path / "policies")


def test_japanese_carrier_aliases_resolve_to_their_transit_days(rt):
    policy = rt.policies.delivery
    assert [
        policy.transit_days(n)
        for n in (
            "ヤマト運輸",
            "Yamato Transport",
            "佐川急便",
            "sagawa express",
            "日本郵便",
            "ゆうパック",
            "Japan Post",
            None,
            "",
        )
    ] == [1, 1, 2, 2, 2, 2, 2, 3, 3]
    assert policy.carrier("クロネコヤマト").name == "ヤマト運輸"


def test_order_without_email_gets_its_shipment_recorded_and_the_notice_skipped(rt):
    order = order_payload("ja-first-gift", email=None, contact_email=None, customer=None)
    receive(rt, order)
    out = receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    assert out.status == "done" and out.outbox_id is None and len(rows(rt, Shipment)) == 1
    [tp] = touchpoints(rt, "shipment_notice")
    assert tp.status == "skipped" and tp.reason == "no customer email on the order" and notices(rt) == []
