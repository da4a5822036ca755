"""The unsubscribe page in a real headless Chromium (Debian's /usr/bin/chromium, through Playwright),
on a phone-sized screen, against the app served by uvicorn on loopback: opening the link changes
nothing; choosing "all feedback mails" and pressing the button does, and says so in Japanese."""

from __future__ import annotations

from pathlib import Path

from aftercare.contact import store
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.browser import PHONE, chromium_or_skip, launch
from tests.contact.unsub_helpers import ALL_PLANNED, plan_customer, statuses, suppressions, token_for
from tests.factories import SHOP
from tests.web.approval_helpers import Served


def test_a_person_on_a_phone_leaves_all_feedback_mail(
    rt: Runtime, settings: Settings, tmp_path: Path
) -> None:
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    hanako = plan_customer(rt.engine, "hanako@example.jp")
    taro = plan_customer(rt.engine, "taro@example.jp")
    token = token_for(settings, hanako, "surveys", locale="ja")

    with Served(create_app(settings, waker=NoWaker())) as served, sync_playwright() as pw:
        browser = launch(pw)
        try:
            phone = browser.new_context(
                viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=3, locale="ja-JP"
            )
            page = phone.new_page()
            response = page.goto(f"{served.url}/unsubscribe/{token}")
            assert response is not None and response.status == 200
            assert page.locator("h1").inner_text() == "メールの配信停止"
            # Opening the page changed nothing.
            assert suppressions(rt.engine) == []
            assert statuses(rt.engine, hanako) == ALL_PLANNED
            # Made for the phone: nothing wider than the screen, the button a thumb's size.
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            box = page.locator("#unsubscribe").bounding_box()
            assert box is not None and box["height"] >= 44 and box["width"] >= PHONE["width"] * 0.8
            assert page.locator("#scope-list").is_checked()
            page.screenshot(path=str(tmp_path / "unsubscribe-phone.png"), full_page=True)

            page.locator("label", has_text="ご感想をお伺いするメールすべて").tap()
            assert page.locator("#scope-class").is_checked()
            with page.expect_navigation():
                page.locator("#unsubscribe").tap()

            assert page.locator("#done h1").inner_text() == "配信を停止しました"
            what = page.locator("#what").inner_text()
            assert "ご感想をお伺いするメールすべて" in what and "aftercare デモショップ" in what
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(tmp_path / "unsubscribed-phone.png"), full_page=True)
        finally:
            browser.close()

    assert suppressions(rt.engine) == [(SHOP, store.email_hash(hanako.email), "feedback", "unsubscribe page")]
    after = statuses(rt.engine, hanako)
    assert after["delivery_survey"][0] == after["review_request"][0] == "cancelled"
    assert after["order_confirmation"] == ALL_PLANNED["order_confirmation"]
    assert statuses(rt.engine, taro) == ALL_PLANNED
