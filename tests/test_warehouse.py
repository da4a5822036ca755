"""The warehouse hand-off: the instruction and its documents, versions per order, and the two ports:
files under var/warehouse/ and a 3PL over HTTP (a loopback fake)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from datetime import date, timedelta

import httpx
import pytest
from sqlmodel import Session, select

from aftercare.errors import ConfigError
from aftercare.models import WarehouseHandoff, utcnow
from aftercare.orders import warehouse
from aftercare.settings import Settings
from tests.factories import SHOP, fulfillment_payload, order_payload
from tests.pipeline import http_port, receive, send_all

JA_REQUESTS = [
    {"name": "ギフトメッセージ", "value": "お誕生日おめでとう！いつもありがとう。"},
    {"name": "のし", "value": "御祝"},
    {"name": "ラッピング", "value": "希望する"},
    {"name": "お届け希望日", "value": "2099年12月24日(木)"},
    {"name": "お届け希望時間帯", "value": "14時～16時"},
    {"name": "置き配", "value": "玄関前"},
    {"name": "法人名", "value": "株式会社アフターケア"},  # not a named request: passed through verbatim
]


def handoffs(rt) -> list[WarehouseHandoff]:
    with Session(rt.engine) as s:
        return list(s.exec(select(WarehouseHandoff).order_by(WarehouseHandoff.id)))


def ja_gift_order(**overrides):
    fields = {"note": "午前中は不在がちです", "note_attributes": JA_REQUESTS, **overrides}
    payload = order_payload("ja-first-gift", **fields)
    payload["line_items"][1]["properties"] = [{"name": "刻印", "value": "HANAKO 2026"}]
    return payload


# --- the instruction ------------------------------------------------------------------------------


def test_gift_order_instruction_carries_every_special_request_by_the_shops_own_names(rt):
    out = receive(rt, ja_gift_order())
    [handoff] = handoffs(rt)
    assert out.handoff_id == handoff.id and handoff.version == 1 and handoff.status == "pending"
    i = handoff.instruction
    assert (
        i["order"]["name"] == "#1101"
        and i["ship_to"]["zip"] == "150-0001"
        and i["ship_to"]["name"] == "山田 花子"
    )
    assert i["gift"] == {
        "is_gift": True,
        "message": "お誕生日おめでとう！いつもありがとう。",
        "wrap": True,
        "wrap_request": "希望する",
        "noshi": "御祝",
        "hide_prices": True,
    }
    assert i["delivery"] == {
        "requested_date": "2099-12-24",
        "requested_date_raw": "2099年12月24日(木)",
        "time_window": "14時～16時",
        "leave_at_door": True,
        "leave_at_door_request": "玄関前",
    }
    assert i["note"] == "午前中は不在がちです"
    assert {"name": "法人名", "value": "株式会社アフターケア"} in i["note_attributes"]
    mug = i["lines"][1]
    assert (mug["sku"], mug["title"], mug["variant"], mug["quantity"]) == (
        "ARITA-MUG-AI",
        "有田焼 マグカップ",
        "藍",
        2,
    )
    assert mug["engraving"] == ["HANAKO 2026"] and i["flags"] == []
    assert handoff.policy_version == rt.policies.requests.version


def test_english_attribute_names_and_line_level_gift_wrap_are_understood(rt):
    receive(
        rt,
        order_payload(
            "en-repeat-gift",
            note_attributes=[
                {"name": "gift_message", "value": "Happy anniversary <3 Love, O."},
                {"name": "Delivery Date", "value": "2099-01-05"},
                {"name": "Leave at door", "value": "No"},
            ],
        ),
    )
    i = handoffs(rt)[0].instruction
    assert i["lines"][0]["gift_wrap"] is True and i["lines"][0]["requests"] == {"gift_wrap": ["Yes"]}
    assert i["delivery"]["requested_date"] == "2099-01-05" and i["delivery"]["leave_at_door"] is False


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-28", (date(2026, 11, 28), None)),
        ("2026/11/28", (date(2026, 11, 28), None)),
        ("2026年11月28日（土）", (date(2026, 11, 28), None)),
        ("２０２６年１１月２８日", (date(2026, 11, 28), None)),
        ("2026-11-27", (None, warehouse.FLAG_DATE_PAST)),
        ("2026-02-30", (None, warehouse.FLAG_DATE_UNPARSEABLE)),
        ("来週のどこか", (None, warehouse.FLAG_DATE_UNPARSEABLE)),
        ("11/28", (None, warehouse.FLAG_DATE_UNPARSEABLE)),  # no year: not guessed
    ],
)
def test_requested_delivery_date_is_read_or_flagged_never_guessed(raw, expected):
    assert warehouse.parse_requested_date(raw, today=date(2026, 11, 28)) == expected


@pytest.mark.parametrize(
    ("raw", "flag"),
    [
        ("2020年1月1日", "requested_delivery_date_past"),
        ("なるべく早く", "requested_delivery_date_unparseable"),
    ],
)
def test_bad_requested_date_is_passed_through_verbatim_and_flagged_on_the_picking_list(rt, raw, flag):
    attrs = [
        a if a["name"] != "お届け希望日" else {"name": "お届け希望日", "value": raw} for a in JA_REQUESTS
    ]
    receive(rt, ja_gift_order(note_attributes=attrs))
    [handoff] = handoffs(rt)
    assert handoff.flags == [flag] and handoff.instruction["delivery"]["requested_date"] is None
    assert handoff.instruction["delivery"]["requested_date_raw"] == raw
    [result] = send_all(rt, warehouse.FileWarehouse(rt.settings.warehouse_dir))
    picking = (rt.settings.warehouse_dir / SHOP / "820001" / "picking_list.txt").read_text()
    assert result.status == "sent" and "★要確認" in picking and f"「{raw}」" in picking


# --- versions ---------------------------------------------------------------------------------------


def test_same_order_again_is_the_same_version_and_a_change_before_shipping_is_a_new_one(rt):
    receive(rt, ja_gift_order())
    receive(rt, ja_gift_order(), topic="orders/paid")
    assert [h.version for h in handoffs(rt)] == [1]
    receive(
        rt,
        ja_gift_order(note="置き配でお願いします", updated_at="2026-11-20T11:00:00+09:00"),
        topic="orders/updated",
    )
    v1, v2 = handoffs(rt)
    assert (v1.status, v2.version, v2.status) == ("superseded", 2, "pending")
    assert v2.instruction["note"] == "置き配でお願いします"
    # Once it ships, an edit no longer makes a version.
    receive(rt, fulfillment_payload(ja_gift_order()), topic="fulfillments/create")
    receive(
        rt,
        ja_gift_order(note="やっぱり手渡しで", updated_at="2026-11-25T11:00:00+09:00"),
        topic="orders/updated",
    )
    assert len(handoffs(rt)) == 2


def test_unpaid_test_and_addressless_orders_are_not_handed_off_until_they_can_ship(rt):
    receive(rt, order_payload("ja-pending-konbini"))
    receive(rt, order_payload("ja-repeat", test=True))
    no_address = order_payload("en-first", shipping_address=None, billing_address=None)
    receive(rt, no_address)
    assert handoffs(rt) == []
    receive(
        rt,
        order_payload("ja-pending-konbini", financial_status="paid", updated_at="2026-11-21T09:00:00+09:00"),
        topic="orders/paid",
    )
    assert [h.order_name for h in handoffs(rt)] == ["#1103"]


def test_cancelled_order_withdraws_the_unsent_hand_off(rt):
    receive(rt, ja_gift_order())
    receive(
        rt,
        ja_gift_order(cancelled_at="2026-11-20T12:00:00+09:00", updated_at="2026-11-20T12:00:00+09:00"),
        topic="orders/cancelled",
    )
    [handoff] = handoffs(rt)
    assert handoff.status == "superseded" and "cancelled" in handoff.last_error
    assert warehouse.claim_due(rt.engine, 10) == []


# --- the files port ---------------------------------------------------------------------------------


def test_files_port_writes_picking_list_gift_packing_slip_without_prices_and_the_json(rt):
    receive(rt, ja_gift_order())
    [result] = send_all(rt, warehouse.FileWarehouse(rt.settings.warehouse_dir))
    folder = rt.settings.warehouse_dir / SHOP / "820001"
    assert result.status == "sent" and result.reference == str(folder)
    data = json.loads((folder / "instruction.json").read_text())
    assert data["version"] == 1 and data["gift"]["noshi"] == "御祝"
    picking = (folder / "picking_list.txt").read_text()
    for expected in [
        "ピッキングリスト　#1101（第1版）",
        "TOWEL-GIFT-W\t今治タオル ギフトセット\tホワイト\t1",
        "ARITA-MUG-AI\t有田焼 マグカップ\t藍\t2",
        "└ 刻印：HANAKO 2026",
        "のし：御祝",
        "■お届け希望：2099-12-24　14時～16時",
        "■置き配：玄関前",
        "■備考：午前中は不在がちです",
    ]:
        assert expected in picking, expected
    slip = (folder / "packing_slip.txt").read_text()
    for expected in [
        "納品書",
        "ご注文番号：#1101",
        "〒150-0001",
        "東京都渋谷区神宮前1-2-3 アフターケアビル 4F",
        "山田 花子 様",
        "有田焼 マグカップ（藍） × 2",
        "お誕生日おめでとう！いつもありがとう。",
    ]:
        assert expected in slip, expected
    assert "￥" not in slip and "合計" not in slip  # a gift: no prices
    assert "￥" not in (folder / "packing_slip.html").read_text()


def test_packing_slip_of_a_non_gift_order_shows_prices_and_html_is_escaped(rt):
    receive(rt, order_payload("en-first", note_attributes=[{"name": "gift_message", "value": ""}]))
    payload = order_payload("en-first", updated_at="2026-11-20T11:00:00+09:00")
    payload["shipping_address"]["name"] = "<b>Emma</b>"
    receive(rt, payload, topic="orders/updated")
    send_all(rt, warehouse.FileWarehouse(rt.settings.warehouse_dir))
    folder = rt.settings.warehouse_dir / SHOP / "820004"
    slip = (folder / "packing_slip.txt").read_text()
    assert "Hinoki bath mat (Large) x 1  $89.00" in slip and "Total: $138.08" in slip
    html = (folder / "packing_slip.html").read_text()
    assert "<b>Emma</b>" not in html and "&lt;b&gt;Emma&lt;/b&gt;" in html


# --- the HTTP port against a fake 3PL ----------------------------------------------------------------


def test_http_port_posts_the_signed_json_with_an_idempotency_key_per_version(rt, three_pl):
    receive(rt, ja_gift_order())
    [result] = send_all(rt, http_port(three_pl))
    assert result.status == "sent" and result.reference == "3PL-00001" and three_pl.bad_signatures == []
    [req] = three_pl.requests
    assert req.headers["idempotency-key"] == "test-shop.myshopify.com:820001:v1"
    expected = "sha256=" + hmac.new(three_pl.secret.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-aftercare-signature"] == expected
    body = req.json()
    assert (
        body["version"] == 1
        and body["gift"]["hide_prices"] is True
        and body["lines"][1]["engraving"] == ["HANAKO 2026"]
    )
    [stored] = handoffs(rt)
    assert (stored.status, stored.reference, stored.attempts) == ("sent", "3PL-00001", 1)


def test_wrong_secret_is_refused_by_the_3pl_and_kept_as_failed_with_its_reason(rt, three_pl):
    receive(rt, ja_gift_order())
    port = warehouse.HttpWarehouse(httpx.Client(timeout=2), three_pl.url, "not-the-secret")
    [result] = send_all(rt, port)
    assert (
        result.status == "failed"
        and "(401): bad signature" in result.error
        and len(three_pl.bad_signatures) == 1
    )


def test_5xx_is_retried_with_backoff_under_the_same_idempotency_key(rt, three_pl):
    receive(rt, ja_gift_order())
    three_pl.plan(503)
    three_pl.plan(502)
    waits: list[float] = []
    [result] = send_all(rt, http_port(three_pl), sleep=waits.append)
    assert (result.status, result.attempts) == ("sent", 3)
    assert waits == [rt.settings.warehouse_backoff_base_s, rt.settings.warehouse_backoff_base_s * 2]
    assert {r.headers["idempotency-key"] for r in three_pl.requests} == {"test-shop.myshopify.com:820001:v1"}
    assert len(three_pl.requests) == 3


def test_4xx_fails_at_once_with_the_3pls_reason_and_no_retry(rt, three_pl):
    receive(rt, ja_gift_order())
    three_pl.plan(422, {"error": "unknown SKU ARITA-MUG-AI"})
    waits: list[float] = []
    [result] = send_all(rt, http_port(three_pl), sleep=waits.append)
    assert (
        result.status == "failed"
        and result.error == "warehouse refused the instruction (422): unknown SKU ARITA-MUG-AI"
    )
    assert len(three_pl.requests) == 1 and waits == []
    assert handoffs(rt)[0].last_error == result.error
    assert warehouse.claim_due(rt.engine, 10) == []  # not picked up again by the sweep


def test_timeout_is_transient_and_retried(rt, three_pl):
    receive(rt, ja_gift_order())
    three_pl.plan_delay(1.0)
    [result] = send_all(rt, http_port(three_pl, timeout=0.2), sleep=lambda _s: None)
    assert (result.status, result.attempts) == ("sent", 2)


def test_a_3pl_down_for_long_is_rescheduled_then_given_up_without_a_retry_storm(rt, three_pl):
    receive(rt, ja_gift_order())
    for _ in range(20):
        three_pl.plan(500)
    waits: list[float] = []
    [first] = send_all(rt, http_port(three_pl), sleep=waits.append, inline_wait_cap_s=5)
    # 2 s and 4 s inline; the next wait (8 s) is longer than the cap: rescheduled, not slept through.
    assert (first.status, first.attempts, waits) == ("pending", 3, [2.0, 4.0])
    assert warehouse.claim_due(rt.engine, 10) == []  # not due yet
    with Session(rt.engine) as s:
        row = s.get(WarehouseHandoff, first.handoff_id)
        assert row.next_attempt_at > utcnow() + timedelta(seconds=7)
        row.next_attempt_at = utcnow()
        s.add(row)
        s.commit()
    [final] = send_all(rt, http_port(three_pl), sleep=waits.append, inline_wait_cap_s=1000)
    assert final.status == "failed" and final.error.startswith(
        f"gave up after {rt.settings.warehouse_max_attempts}"
    )
    assert len(three_pl.requests) == rt.settings.warehouse_max_attempts


def test_connection_refused_is_transient(rt):
    receive(rt, ja_gift_order())
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port_number = sock.getsockname()[1]
    port = warehouse.HttpWarehouse(httpx.Client(timeout=1), f"http://127.0.0.1:{port_number}/x", "s")
    [result] = send_all(rt, port, sleep=lambda _s: None, inline_wait_cap_s=0)
    assert result.status == "pending" and "could not reach the warehouse" in result.error


def test_http_backend_needs_a_url_and_a_real_secret(tmp_path):
    with pytest.raises(ValueError, match="WAREHOUSE_URL"):
        Settings(var_dir=tmp_path, warehouse_backend="http")
    with pytest.raises(ConfigError, match="WAREHOUSE_SECRET"):
        Settings(var_dir=tmp_path, warehouse_backend="http", warehouse_url="https://3pl.example/api")
    ok = Settings(
        var_dir=tmp_path,
        warehouse_backend="http",
        warehouse_url="https://3pl.example/api",
        warehouse_secret="s3cret-signing-key",
        shopify_webhook_secret="the-shops-real-secret",
        reviews_webhook_secret="the-reviews-real-secret",
        approval_secret="the-approval-real-secret",
        link_secret="the-link-real-secret",
    )
    assert isinstance(warehouse.make_warehouse(ok), warehouse.HttpWarehouse)
