"""Review requests through the real pipeline, dispatcher, composers and outbox, on SQLite and
PostgreSQL: what is asked about (reviewable products, the per-product memory), whom we never ask,
where the customer writes, the one reminder, and the bad input between planning and sending."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare import signing
from aftercare.models import (
    Customer,
    InvitationStatus,
    Order,
    OrderLine,
    OutboxMessage,
    OutboxStatus,
    Review,
    ReviewInvitation,
    ReviewRequestItem,
)
from aftercare.reviews.form_links import verify_review_form_token
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.factories import refund_payload
from tests.pipeline import receive, rows
from tests.reviews.request_setup import (
    FORM_URL,
    GIFT_CARD,
    GIFT_WRAP,
    GUIDE,
    MUG,
    NOW,
    PROTECTION,
    TOWEL,
    composers_for,
    dispatch,
    jst,
    mails,
    of_order,
    ordered,
    shipped_policy,
    touchpoint,
)


def form_links(text: str) -> list[str]:
    return FORM_URL.findall(text)


def token_of(url: str) -> str:
    return urlparse(url).path.rsplit("/", 1)[1]


def add_review(rt, order_id: int | None, customer_id: int, product_ref: str, at, *, rating=5, negative=False):
    """A review as intake stores it (its triage beside it)."""
    with Session(rt.engine) as s:
        s.add(
            Review(
                platform="own",
                platform_review_id=f"r-{customer_id}-{product_ref}-{at.timestamp()}",
                order_id=order_id,
                customer_id=customer_id,
                product_ref=product_ref,
                rating=rating,
                body="…",
                source_created_at=at,
                triage_negative=negative,
                triage_score=-0.8 if negative else 0.6,
            )
        )
        s.commit()


def customer_of(rt, order_id: int) -> int:
    with Session(rt.engine) as s:
        order = s.get(Order, order_id)
        assert order is not None and order.customer_id is not None
        return order.customer_id


# -- what is asked, in the customer's language ----------------------------------------------------------


def test_the_japanese_request_lists_each_reviewable_product_with_its_own_signed_link(rt):
    req = ordered(rt, 1, extra_lines=[GIFT_WRAP, PROTECTION, GUIDE, GIFT_CARD])
    result = dispatch(rt)
    assert [(d.kind, d.line) for d in result.sent] == [("review_request", "sending at 10:00 JST")]
    [mail] = mails(rt, "review_request")
    assert mail.status == OutboxStatus.SENT and mail.to_email == "buyer1@example.jp"
    assert mail.subject == f"【aftercare デモショップ】ご購入商品のレビューのお願い（{req.name}）"
    text = mail.text_body
    assert text.startswith("山田 花子 様\n")
    assert "・今治タオル ギフトセット（ホワイト）" in text and "・有田焼 マグカップ（藍）" in text
    for left_out in ("ギフトラッピング", "Shipping Protection", "器の手入れガイド", "ギフトカード"):
        assert left_out not in text and left_out not in mail.html_body
    links = form_links(text)
    items = [parse_qs(urlparse(u).query).get("item") for u in links]
    assert items == [["9100011"], ["9100021"], None]  # one per product, then the whole order
    secret = rt.settings.link_secret.get_secret_value()
    for url in links:
        assert url.startswith(rt.settings.customer_base_url + "/r/")
        link = verify_review_form_token(secret, token_of(url), now=NOW)
        assert (link.order_id, link.touchpoint_id) == (req.order_id, req.touchpoint_id)
        assert f'href="{url.replace("&", "&amp;")}"' in mail.html_body
    # Valid for the policy's 60 days from the mail, not a second longer.
    verify_review_form_token(secret, token_of(links[0]), now=NOW + timedelta(days=60) - timedelta(seconds=1))
    with pytest.raises(signing.TokenExpired):
        verify_review_form_token(secret, token_of(links[0]), now=NOW + timedelta(days=60))
    # The feedback mail's duties come from the dispatcher: one-click unsubscribe and the footer.
    assert mail.headers is not None and mail.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/unsubscribe/" in mail.headers["List-Unsubscribe"]
    assert "配信を停止（受信を拒否）できます" in text and "送信者：aftercare デモショップ運営事務局" in text
    assert '<html lang="ja">' in mail.html_body and "配信を停止" in mail.html_body
    # The products asked about are remembered, the reminder planned 7 days after this mail.
    asked = rows(rt, ReviewRequestItem, ReviewRequestItem.touchpoint_id == req.touchpoint_id)
    assert sorted(i.product_key for i in asked) == [f"product:{TOWEL}", f"product:{MUG}"]
    [reminder] = of_order(rt, req.order_id, "review_reminder")
    assert reminder.status == "planned" and reminder.due_at == NOW + timedelta(days=7)
    assert touchpoint(rt, req.touchpoint_id).status == "done"


def test_the_english_request(rt):
    req = ordered(rt, 2, sample="en-first", due_at=NOW - timedelta(hours=1))  # USPS: due later otherwise
    [decided] = dispatch(rt).sent  # 17:00 in Portland, the customer's own time
    assert decided.line == "sending at 17:00 PST"
    [mail] = mails(rt, "review_request")
    assert mail.subject == f"Would you review your order {req.name}? - aftercare demo shop"
    text = mail.text_body
    assert "- Hinoki bath mat (Large)" in text and "Write a review: http" in text
    assert "an honest review helps the next" in text
    assert "Writing a review is entirely up to you" in text
    assert "To unsubscribe, open:\nhttp" in text
    assert '<html lang="en">' in mail.html_body and ">Write a review</a>" in mail.html_body


def test_hostile_titles_are_text_in_both_bodies(rt):
    evil = {
        **GIFT_WRAP,
        "id": 9100071,
        "sku": "EVIL-1",
        "product_id": 910007,
        "title": '<img src=x onerror=alert(1)>"皿"',
    }
    ordered(rt, 3, extra_lines=[evil])
    dispatch(rt)
    [mail] = mails(rt, "review_request")
    assert (
        "<img src=x" not in mail.html_body
        and "&lt;img src=x onerror=alert(1)&gt;&#34;皿&#34;" in mail.html_body
    )
    assert '<img src=x onerror=alert(1)>"皿"' in mail.text_body


# -- whom and what we never ask about -------------------------------------------------------------------


def test_an_order_with_nothing_reviewable_is_skipped_with_the_reason(rt):
    only_extras = ordered(rt, 4, extra_lines=[GIFT_WRAP, PROTECTION])
    # The order's own products refunded: only the extras are left.
    receive(
        rt,
        refund_payload(only_extras.payload, refund_id=6_400_004, lines={9100011: 1, 9100021: 2}),
        topic="refunds/create",
    )
    result = dispatch(rt)
    assert mails(rt, "review_request") == []
    [skipped] = result.skipped
    assert skipped.touchpoint_id == only_extras.touchpoint_id
    tp = touchpoint(rt, only_extras.touchpoint_id)
    assert tp.status == "skipped"
    assert tp.reason.startswith("not sent: no product left to ask about (今治タオル ギフトセット: refunded;")
    assert "ギフトラッピング: not reviewable (SKU 'GIFT-WRAP-01' matches 'GIFT-WRAP*')" in tp.reason
    assert "Shipping Protection: not reviewable (needs no shipping" in tp.reason
    assert of_order(rt, only_extras.order_id, "review_reminder") == []


def test_a_refunded_line_is_not_asked_about(rt):
    req = ordered(rt, 5)
    receive(rt, refund_payload(req.payload, refund_id=6_400_005, lines={9100021: 2}), topic="refunds/create")
    dispatch(rt)
    [mail] = mails(rt, "review_request")
    assert "今治タオル" in mail.text_body and "有田焼 マグカップ" not in mail.text_body


def test_a_partly_refunded_line_is_still_asked_about(rt):
    req = ordered(rt, 6)
    receive(rt, refund_payload(req.payload, refund_id=6_400_006, lines={9100021: 1}), topic="refunds/create")
    dispatch(rt)
    [mail] = mails(rt, "review_request")
    assert "有田焼 マグカップ" in mail.text_body  # one of the two mugs is still theirs


@pytest.mark.parametrize(
    ("address", "staff"),
    [
        ("tanaka@shop.example", True),
        ("Tanaka@Warehouse.Shop.Example", True),
        ("owner@example.jp", True),  # listed below
        ("tanaka@shop.example.evil.jp", False),
        ("tanaka@notshop.example", False),
    ],
)
def test_staff_addresses_are_never_asked(rt, address, staff):
    policy = shipped_policy(staff={"domains": ["shop.example"], "addresses": ["OWNER@example.jp"]})
    req = ordered(rt, 7, email=address)
    dispatch(rt, composers=composers_for(policy))
    tp = touchpoint(rt, req.touchpoint_id)
    if staff:
        assert (
            tp.status == "skipped"
            and tp.reason == "not sent: a staff address (policies/review_requests.yaml staff)"
        )
        assert mails(rt, "review_request") == [] and rows(rt, ReviewRequestItem) == []
    else:
        assert tp.status == "done" and len(mails(rt, "review_request")) == 1


def test_a_test_order_is_never_asked(rt):
    req = ordered(rt, 8, test=True)
    dispatch(rt)
    tp = touchpoint(rt, req.touchpoint_id)
    assert (
        tp.status == "skipped" and tp.reason == "not sent: test order" and mails(rt, "review_request") == []
    )


# -- the per-product memory -----------------------------------------------------------------------------


@pytest.mark.parametrize(("months_ago", "asked"), [(11, False), (13, True)])
def test_a_product_reviewed_11_months_ago_is_skipped_13_months_ago_asked(rt, months_ago, asked):
    earlier = ordered(rt, 10, email="repeat@example.jp")
    customer = customer_of(rt, earlier.order_id)
    # The customer's review of the mug (by SKU), whatever it said.
    add_review(rt, None, customer, "ARITA-MUG-AI", NOW - timedelta(days=round(months_ago * 30.44)), rating=1)
    with Session(rt.engine) as s:  # the earlier order's own request is not what this test looks at
        s.execute(
            sa.text("UPDATE touchpoints SET status = 'done' WHERE order_id = :o"), {"o": earlier.order_id}
        )
        s.commit()
    req = ordered(rt, 11, email="repeat@example.jp")
    dispatch(rt)
    [mail] = mails(rt, "review_request", req.order_id)
    assert "今治タオル" in mail.text_body
    assert ("有田焼 マグカップ" in mail.text_body) is asked


@pytest.mark.parametrize(("months_ago", "asked"), [(11, False), (13, True)])
def test_a_product_asked_about_11_months_ago_is_not_asked_again_13_months_ago_it_is(rt, months_ago, asked):
    then = NOW - timedelta(days=round(months_ago * 30.44))
    first = ordered(rt, 12, email="again@example.jp", due_at=then - timedelta(hours=1))
    dispatch(rt, then)  # 10:00 JST that day: the first request goes
    assert len(mails(rt, "review_request", first.order_id)) == 1
    with Session(rt.engine) as s:  # its reminder went by long ago
        s.execute(sa.text("UPDATE touchpoints SET status = 'done' WHERE kind = 'review_reminder'"))
        s.commit()
    second = ordered(rt, 13, email="again@example.jp")
    result = dispatch(rt)
    if asked:
        [mail] = mails(rt, "review_request", second.order_id)
        assert "今治タオル" in mail.text_body and "有田焼 マグカップ" in mail.text_body
    else:
        assert mails(rt, "review_request", second.order_id) == []
        tp = touchpoint(rt, second.touchpoint_id)
        assert tp.status == "skipped" and "asked about within 12 months" in tp.reason
        assert [d.touchpoint_id for d in result.skipped] == [second.touchpoint_id]


def test_another_customer_s_review_of_the_product_changes_nothing(rt):
    other = ordered(rt, 14, email="someone@example.jp")
    add_review(rt, None, customer_of(rt, other.order_id), "ARITA-MUG-AI", NOW - timedelta(days=3))
    with Session(rt.engine) as s:
        s.execute(
            sa.text("UPDATE touchpoints SET status = 'done' WHERE order_id = :o"), {"o": other.order_id}
        )
        s.commit()
    req = ordered(rt, 15)
    dispatch(rt)
    [mail] = mails(rt, "review_request", req.order_id)
    assert "有田焼 マグカップ" in mail.text_body


# -- between planning and sending -----------------------------------------------------------------------


def test_an_order_refunded_between_planning_and_sending_gets_no_request(rt):
    req = ordered(rt, 20)
    assert touchpoint(rt, req.touchpoint_id).status == "planned"
    receive(rt, refund_payload(req.payload, refund_id=6_400_020), topic="refunds/create")
    dispatch(rt)
    assert mails(rt, "review_request") == [] and rows(rt, ReviewRequestItem) == []
    tp = touchpoint(rt, req.touchpoint_id)
    assert tp.status in ("cancelled", "skipped") and "refunded" in tp.reason


def test_an_order_refunded_after_the_rules_judged_it_but_before_composing_is_skipped(rt):
    """The refund lands while the touchpoint is held: the next decision skips it (the rules judge
    the order again at every send)."""
    req = ordered(rt, 21)
    held = dispatch(rt, jst(2026, 12, 3, 7, 0))  # quiet hours: held until 09:00
    assert [d.touchpoint_id for d in held.held] == [req.touchpoint_id]
    with Session(rt.engine) as s:  # Shopify marks the order refunded (orders/updated, no refund rows)
        s.execute(sa.update(Order).where(Order.id == req.order_id).values(financial_status="refunded"))
        s.commit()
    dispatch(rt)
    tp = touchpoint(rt, req.touchpoint_id)
    assert tp.status == "skipped" and tp.reason == "not sent: order refunded in full"
    assert mails(rt, "review_request") == []


def test_an_unsubscribe_between_the_request_and_the_reminder_means_no_reminder(rt, settings):
    req = ordered(rt, 22)
    dispatch(rt)
    [mail] = mails(rt, "review_request")
    url = mail.headers["List-Unsubscribe"].split(",")[0].strip("<> ")
    with TestClient(create_app(settings, waker=NoWaker())) as client:
        answer = client.post(urlparse(url).path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    [reminder] = of_order(rt, req.order_id, "review_reminder")
    assert reminder.status == "cancelled"
    # Even a reminder planned again (or a dispatcher that missed the cancel) is not sent: the rules
    # see the suppression.
    with Session(rt.engine) as s:
        s.execute(sa.text("UPDATE touchpoints SET status = 'planned' WHERE id = :i"), {"i": reminder.id})
        s.commit()
    dispatch(rt, NOW + timedelta(days=8))
    assert mails(rt, "review_reminder") == []
    reminder = touchpoint(rt, reminder.id)
    assert reminder.status == "skipped" and reminder.reason.startswith(
        "not sent: unsubscribed from review_requests"
    )


# -- the one reminder -----------------------------------------------------------------------------------


def test_the_reminder_goes_once_when_nothing_was_reviewed(rt):
    req = ordered(rt, 23)
    dispatch(rt)
    later = NOW + timedelta(days=7)
    result = dispatch(rt, later)
    assert [d.kind for d in result.sent] == ["review_reminder"]
    [mail] = mails(rt, "review_reminder")
    assert mail.status == OutboxStatus.SENT
    assert mail.subject == f"【aftercare デモショップ】レビューのお願い（再送）（{req.name}）"
    assert "ご案内はこのメールが最後です" in mail.text_body
    assert "今治タオル" in mail.text_body and "有田焼 マグカップ" in mail.text_body
    secret = rt.settings.link_secret.get_secret_value()
    [reminder] = of_order(rt, req.order_id, "review_reminder")
    for url in form_links(mail.text_body):
        link = verify_review_form_token(secret, token_of(url), now=later)
        assert (link.order_id, link.touchpoint_id) == (req.order_id, reminder.id)
    assert "/unsubscribe/" in mail.headers["List-Unsubscribe"]
    # Only one: nothing else is planned, a later run sends nothing.
    assert dispatch(rt, later + timedelta(days=30)).counts()["sent"] == 0
    assert len(of_order(rt, req.order_id, "review_reminder")) == 1


def test_no_reminder_once_the_order_was_reviewed_whatever_the_review_says(rt):
    req = ordered(rt, 24)
    dispatch(rt)
    add_review(
        rt, req.order_id, customer_of(rt, req.order_id), "TOWEL-GIFT-W", NOW + timedelta(days=1), rating=2
    )
    dispatch(rt, NOW + timedelta(days=7))
    assert mails(rt, "review_reminder") == []
    [reminder] = of_order(rt, req.order_id, "review_reminder")
    assert reminder.status == "skipped" and reminder.reason == "not sent: a review was written for this order"


def test_no_reminder_when_the_request_never_reached_the_customer(rt):
    req = ordered(rt, 25)
    dispatch(rt, send=False)
    with Session(rt.engine) as s:
        s.execute(
            sa.update(OutboxMessage)
            .where(OutboxMessage.touchpoint_id == req.touchpoint_id)
            .values(status=OutboxStatus.FAILED, last_error="550 no such user")
        )
        s.commit()
    dispatch(rt, NOW + timedelta(days=7))
    [reminder] = of_order(rt, req.order_id, "review_reminder")
    assert reminder.status == "skipped"
    assert reminder.reason == "not sent: the review request was not delivered (its mail: failed)"


def test_a_policy_without_the_reminder_plans_none(rt):
    req = ordered(rt, 26)
    dispatch(rt, composers=composers_for(shipped_policy(reminder={"enabled": False})))
    assert len(mails(rt, "review_request")) == 1 and of_order(rt, req.order_id, "review_reminder") == []


# -- where the customer writes --------------------------------------------------------------------------


def test_google_destination_links_to_the_business_profile(rt):
    policy = shipped_policy(destination="google", google={"place_id": "ChIJN1t_tDeuEmsRUsoyG83frY4"})
    ordered(rt, 30)
    dispatch(rt, composers=composers_for(policy))
    [mail] = mails(rt, "review_request")
    google = "https://search.google.com/local/writereview?placeid=ChIJN1t_tDeuEmsRUsoyG83frY4"
    assert f"Googleのクチコミ投稿ページ：\n{google}" in mail.text_body
    assert f'href="{google}"' in mail.html_body and form_links(mail.text_body) == []
    assert "今治タオル" in mail.text_body


def test_trustpilot_destination_sends_no_mail_and_writes_one_invitation(rt):
    policy = shipped_policy(
        destination="trustpilot",
        trustpilot={
            "template_id": "507f191e810c19729de860ea",
            "sender_email": "a@b.example",
            "reply_to": "c@d.example",
        },
    )
    req = ordered(rt, 31)
    result = dispatch(rt, composers=composers_for(policy))
    assert mails(rt, "review_request") == []
    [decided] = result.sent
    assert decided.outbox_id is None and decided.line.startswith("handed to Trustpilot: invitation ")
    [invitation] = rows(rt, ReviewInvitation)
    assert (invitation.order_id, invitation.touchpoint_id) == (req.order_id, req.touchpoint_id)
    assert (
        invitation.status == InvitationStatus.PENDING
        and invitation.send_at == NOW
        and invitation.locale == "ja"
    )
    tp = touchpoint(rt, req.touchpoint_id)
    assert tp.status == "done" and tp.reason == decided.line and tp.verdict["outcome"] == "send"
    assert of_order(rt, req.order_id, "review_reminder") == []  # Trustpilot reminds on its own
    # It counts in the customer's caps like a mail of ours: the survey due an hour later waits a day.
    with Session(rt.engine) as s:
        s.execute(
            sa.text("UPDATE touchpoints SET due_at = :d WHERE order_id = :o AND kind = 'delivery_survey'"),
            {"d": NOW + timedelta(hours=1), "o": req.order_id},
        )
        s.commit()
    later = dispatch(rt, NOW + timedelta(hours=1), composers=composers_for(policy))
    [held] = later.held
    assert held.kind == "delivery_survey" and "postponed until 2026-12-04 10:00 JST" in held.line


def test_the_reminder_is_not_mailed_once_requests_go_to_trustpilot(rt):
    req = ordered(rt, 32)
    dispatch(rt)
    policy = shipped_policy(
        destination="trustpilot",
        trustpilot={
            "template_id": "507f191e810c19729de860ea",
            "sender_email": "a@b.example",
            "reply_to": "c@d.example",
        },
    )
    dispatch(rt, NOW + timedelta(days=7), composers=composers_for(policy))
    [reminder] = of_order(rt, req.order_id, "review_reminder")
    assert reminder.status == "skipped" and "go to trustpilot" in reminder.reason
    assert rows(rt, ReviewInvitation) == []


def test_the_mail_names_nothing_personal_in_its_links(rt):
    ordered(rt, 33)
    dispatch(rt)
    [mail] = mails(rt, "review_request")
    with Session(rt.engine) as s:
        customer = s.exec(select(Customer)).one()
        lines = list(s.exec(select(OrderLine)))
    for url in form_links(mail.text_body):
        payload = token_of(url).split(".")[0]
        import base64
        import json

        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert set(claims) == {"o", "t", "exp"}
        assert (
            customer.email not in url and "花子" not in url and all(str(li.title) not in url for li in lines)
        )
    assert re.search(r"buyer\d+@", mail.text_body) is None  # the address is not written in the body
