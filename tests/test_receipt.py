"""Order receipt on a real database: parsing, upsert, checks, and the one confirmation."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select

from aftercare.models import InboxEvent, Order, OrderLine, OutboxMessage, Touchpoint
from aftercare.orders.inventory import FixedStockInventory
from aftercare.processing import process_row
from aftercare.spine.inbox import claim_batch
from tests.conftest import shared_path
from tests.factories import deliver, order_payload


def receive(rt, payload, **kwargs):
    inbox_id = deliver(rt.engine, payload, **kwargs)
    claimed = claim_batch(rt.engine, 10)
    assert [c.inbox_id for c in claimed] == [inbox_id]
    return process_row(rt, inbox_id)


def outbox(rt) -> list[OutboxMessage]:
    with Session(rt.engine) as s:
        return list(s.exec(select(OutboxMessage).order_by(OutboxMessage.id)))


def order_named(rt, name) -> Order:
    with Session(rt.engine) as s:
        return s.exec(select(Order).where(Order.name == name)).one()


def test_japanese_gift_order_gets_one_keigo_confirmation_with_everything(rt):
    out = receive(rt, order_payload("ja-first-gift"))
    assert out.status == "done" and out.outbox_id is not None
    [msg] = outbox(rt)
    assert msg.to_email == "hanako@example.jp" and msg.locale == "ja" and msg.kind == "order_confirmation"
    assert msg.subject == "【aftercare demo shop】ご注文ありがとうございます #1101"
    text = msg.text_body
    for expected in [
        "山田 花子 様",
        "誠にありがとうございます",
        "#1101",
        "今治タオル ギフトセット（ホワイト） × 1　￥5,500",
        "有田焼 マグカップ（藍） × 2　￥6,600",
        "小計：￥12,100",
        "送料（ヤマト運輸 宅急便）：￥0",
        "消費税（内税）：￥1,100",
        "合計：￥12,100",
        "〒150-0001",
        "東京都渋谷区神宮前1-2-3 アフターケアビル 4F",
        "発送予定日：2026年11月24日(火)",  # Fri 10:15 JST before cut-off, +1 business day, 11-23 is a holiday
        "贈り物",
        "「お誕生日おめでとう！いつもありがとう。」",
        "お支払いを確認いたしました",
    ]:
        assert expected in text, expected
    assert "￥12,100.00" not in text  # JPY has no minor unit
    assert '<td style="text-align: right;">￥6,600</td>' in msg.html_body
    assert "回目のご注文" not in text  # first purchase: no repeat line


def test_repeat_customer_is_thanked_for_their_nth_purchase(rt):
    receive(rt, order_payload("ja-repeat"))  # Shopify says orders_count 4
    [msg] = outbox(rt)
    assert "このたびで4回目のご注文となりました" in msg.text_body


def test_nth_purchase_counts_orders_we_have_seen(rt):
    first = order_payload("en-first")
    receive(rt, first)
    second = order_payload(
        "en-first",
        id=first["id"] + 1,
        name="#2001",
        created_at="2026-11-21T09:00:00+09:00",
        processed_at="2026-11-21T09:00:00+09:00",
    )
    receive(rt, second)
    msgs = outbox(rt)
    assert len(msgs) == 2
    assert "2nd order with us" in msgs[1].text_body and "order with us" not in msgs[0].text_body


def test_english_order_formats_money_and_discounts(rt):
    receive(rt, order_payload("en-first"))
    [msg] = outbox(rt)
    assert msg.locale == "en" and msg.subject == "Thank you for your order #1104 - aftercare demo shop"
    for expected in [
        "Dear Emma Wilson,",
        "Hinoki bath mat (Large) x 1  $89.00",
        "x 2  $37.00",
        "Discounts (WELCOME10): -$10.00",
        "Shipping (USPS Priority): $12.00",
        "Tax: $10.08",
        "Total: $138.08",
        "742 Evergreen Terrace, Apt 3",
        "Expected to ship: Tuesday, November 24, 2026",
    ]:
        assert expected in msg.text_body, expected


def test_pending_payment_changes_the_wording_but_still_sends(rt):
    out = receive(rt, order_payload("ja-pending-konbini"))
    [msg] = outbox(rt)
    assert "payment_pending" in out.flags
    assert "ご入金確認中" in msg.subject
    assert "恐れ入りますが、ただいまご入金の確認を進めております" in msg.text_body
    assert "（ご入金確認後）" in msg.text_body


def test_hostile_strings_are_escaped_in_html_and_cannot_break_the_subject(rt):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    payload = order_payload(
        "en-first",
        name="#1104\r\nBcc: victim@example.com",
        note=evil,
        note_attributes=[{"name": "gift_message", "value": evil}],
    )
    payload["line_items"][0]["title"] = evil
    payload["line_items"][0]["variant_title"] = evil
    payload["shipping_address"]["address1"] = evil
    payload["customer"]["first_name"] = evil
    receive(rt, payload)
    [msg] = outbox(rt)
    assert "<script>" not in msg.html_body and "<img src=x" not in msg.html_body
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in msg.html_body
    assert "\n" not in msg.subject and "\r" not in msg.subject
    assert evil in msg.text_body  # text/plain shows the customer's words as typed; it is never rendered


def test_missing_email_flags_the_order_and_sends_nothing(rt):
    payload = order_payload("en-first", email=None, contact_email=None)
    payload["customer"]["email"] = None
    out = receive(rt, payload)
    assert "missing_email" in out.flags and out.outbox_id is None
    assert outbox(rt) == []
    assert "missing_email" in order_named(rt, "#1104").flags
    with Session(rt.engine) as s:
        tp = s.exec(select(Touchpoint)).one()
    assert tp.status == "skipped" and "no customer email" in tp.reason


def test_email_added_later_sends_the_confirmation_once(rt):
    payload = order_payload("en-first", email=None, contact_email=None)
    payload["customer"]["email"] = None
    receive(rt, payload)
    fixed = order_payload("en-first", updated_at="2026-11-20T11:00:00+09:00")
    receive(rt, fixed, topic="orders/updated")
    receive(rt, order_payload("en-first", updated_at="2026-11-20T12:00:00+09:00"), topic="orders/updated")
    assert [m.to_email for m in outbox(rt)] == ["emma@example.com"]


def test_missing_shipping_address_is_flagged_and_the_mail_says_we_will_ask(rt):
    out = receive(rt, order_payload("en-first", shipping_address=None))
    [msg] = outbox(rt)
    assert "missing_shipping_address" in out.flags
    assert "We will contact you shortly to confirm it" in msg.text_body


def test_stock_shortage_is_flagged_through_the_inventory_port(rt):
    rt.inventory = FixedStockInventory({"HINOKI-MAT-L": 0, "FUROSHIKI-IND": 5})
    out = receive(rt, order_payload("en-first"))
    assert out.flags == ["stock_short:HINOKI-MAT-L"]


def test_test_order_is_processed_and_marked_as_test(rt):
    receive(rt, order_payload("en-first", test=True))
    [msg] = outbox(rt)
    assert msg.is_test and msg.subject.startswith("[TEST] ")
    assert "This is a test order" in msg.text_body


def test_duplicate_topics_for_one_order_make_one_confirmation(rt):
    payload = order_payload("ja-pending-konbini")
    receive(rt, payload, topic="orders/create")
    paid = order_payload(
        "ja-pending-konbini", financial_status="paid", updated_at="2026-11-20T10:20:00+09:00"
    )
    receive(rt, paid, topic="orders/paid")
    receive(rt, paid, topic="orders/updated")
    [msg] = outbox(rt)
    # Not yet claimed by a sender, so the one message carries the newest state.
    assert "お支払いを確認いたしました" in msg.text_body and "ご入金確認中" not in msg.subject


def test_out_of_order_update_is_ignored_by_updated_at(rt):
    newer = order_payload("en-first", updated_at="2026-11-20T12:00:00+09:00", financial_status="paid")
    older = order_payload(
        "en-first", updated_at="2026-11-20T10:30:00+09:00", financial_status="pending", total_price="1.00"
    )
    receive(rt, newer, topic="orders/updated")
    out = receive(rt, older, topic="orders/updated")
    assert out.reason and out.reason.startswith("stale")
    order = order_named(rt, "#1104")
    assert order.financial_status == "paid" and str(order.total) == "138.0800"
    with Session(rt.engine) as s:
        assert s.get(InboxEvent, out.inbox_id).status == "done"


def test_update_replaces_lines_and_keeps_them_when_absent(rt):
    receive(rt, order_payload("en-first"))
    edited = order_payload("en-first", updated_at="2026-11-20T11:00:00+09:00")
    edited["line_items"] = edited["line_items"][:1]
    receive(rt, edited, topic="orders/updated")
    no_lines = order_payload("en-first", updated_at="2026-11-20T12:00:00+09:00")
    del no_lines["line_items"]
    receive(rt, no_lines, topic="orders/updated")
    with Session(rt.engine) as s:
        lines = s.exec(select(OrderLine)).all()
    assert [line.sku for line in lines] == ["HINOKI-MAT-L"]


def test_invalid_payload_in_the_inbox_is_marked_invalid_not_raised(rt):
    out = receive(rt, {"id": "not-a-number", "name": "#1"})
    assert out.status == "invalid" and "id" in out.reason


def test_unknown_topic_is_ignored_with_a_reason(rt):
    out = receive(rt, order_payload(), topic="products/create")
    assert out.status == "ignored" and "products/create" in out.reason


@pytest.mark.contract
def test_real_shopify_order_fixture_is_confirmed(rt):
    payload = json.loads(shared_path("fixtures", "shopify", "order.json").read_text())["order"]
    out = receive(rt, payload)
    [msg] = outbox(rt)
    assert out.flags == ["payment_pending"]  # financial_status "authorized"
    assert msg.locale == "en"  # no customer_locale; US address
    assert "IPod Nano - 8gb (green) x 1  $199.00" in msg.text_body and "Total: $409.94" in msg.text_body
    assert "Chestnut Street 92" in msg.text_body


@pytest.mark.contract
def test_real_orders_list_fixture_updates_without_line_items(rt):
    order = json.loads(shared_path("fixtures", "shopify", "order.json").read_text())["order"]
    receive(rt, order)
    listed = json.loads(shared_path("fixtures", "shopify", "orders.json").read_text())["orders"][0]
    listed["updated_at"] = "2008-01-10T12:00:00-05:00"  # the fixture repeats created_at; make it a later edit
    receive(rt, listed, topic="orders/updated")
    stored = order_named(rt, "#1001")
    assert stored.financial_status == "partially_refunded" and str(stored.total) == "598.9400"
    with Session(rt.engine) as s:
        assert len(s.exec(select(OrderLine)).all()) == 3  # the list resource has no lines; we keep ours
    assert len(outbox(rt)) == 1


def test_nul_characters_in_order_strings_are_dropped_not_crashing_postgres(rt):
    payload = order_payload("en-first", name="#11\u000004", note="a\u0000b")
    out = receive(rt, payload)
    assert out.status == "done" and out.order_name == "#1104"
    assert order_named(rt, "#1104").note == "ab"
