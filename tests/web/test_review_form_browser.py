"""The review form in a real headless Chromium on a phone (Debian's /usr/bin/chromium driven by
Playwright), against the app served by uvicorn on loopback: the customer opens the link, taps the
stars of one product, writes a review with markup in it, sends it, reads the thank-you page, and
changes their review. And the same without script: the page has none, so nothing changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from aftercare.models import Review, ReviewRevision
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from tests.browser import PHONE, Env, launch, served_for_chromium
from tests.reviews.form_helpers import reviewable
from tests.reviews.intake_helpers import process_all


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    with served_for_chromium(settings) as served:
        yield served


def revisions(rt: Runtime) -> list[tuple[str, int, int, str]]:
    with Session(rt.engine) as s:
        rows = s.exec(select(ReviewRevision).order_by(ReviewRevision.id)).all()  # type: ignore[arg-type]
        return [(r.product_ref, r.seq, r.rating, r.body) for r in rows]


@pytest.mark.parametrize("script", [True, False], ids=["script", "no-script"])
def test_a_customer_reviews_a_product_on_a_phone_and_changes_it(env: Env, tmp_path: Path, script: bool):
    from playwright.sync_api import sync_playwright

    r = reviewable(env.rt)
    assert r.url.startswith(env.url + "/r/")
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            phone = browser.new_context(
                viewport=PHONE,
                is_mobile=True,
                has_touch=True,
                device_scale_factor=3,
                locale="ja-JP",
                java_script_enabled=script,
            )
            page = phone.new_page()
            blocked: list[str] = []
            page.on(
                "console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None
            )
            page.goto(r.url)
            assert page.locator("h1").inner_text() == "ご購入の商品のレビュー"
            assert page.locator("section.box").count() == 2
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            # Each star is a tap target a thumb can hit, and a radio button a screen reader names.
            star = page.locator("label[for=p2-r4]").bounding_box()
            assert star is not None and star["height"] >= 44 and star["width"] >= 44
            assert page.get_by_role("radio", name="星4つ").count() == 2
            assert page.locator("#p2-name").input_value() == "花子 山."
            page.screenshot(path=str(tmp_path / "review-form-phone.png"), full_page=True)
            assert revisions(env.rt) == []  # opening the link stored nothing

            # The mug: two stars, a title, a text with markup in it.
            page.locator("label[for=p2-r2]").tap()
            assert page.locator("#p2-r2").is_checked()
            page.fill("#p2-title", "縁が欠けていました")
            page.fill("#p2-body", "届いたときに欠けていました <b>残念</b>")
            page.click("#p2-send")
            page.wait_for_url("**?saved=2#p2")
            assert "レビューをお送りいただき、ありがとうございました" in page.locator("#saved").inner_text()
            assert "まで、このページから変更できます" in page.locator("#saved").inner_text()
            mug = r.payload["line_items"][1]["sku"]
            assert revisions(env.rt) == [(mug, 1, 2, "届いたときに欠けていました <b>残念</b>")]
            assert page.locator("#p2-r2").is_checked()
            assert page.locator("#p2-body").input_value() == "届いたときに欠けていました <b>残念</b>"
            assert page.locator("b").count() == 0
            assert page.locator("#p2-send").inner_text() == "レビューを更新する"

            # A change of mind: three stars; the same review is updated, the first kept as history.
            page.locator("label[for=p2-r3]").tap()
            page.click("#p2-send")
            page.wait_for_url("**?saved=2#p2")
            assert [x[1:3] for x in revisions(env.rt)] == [(1, 2), (2, 3)]
            page.reload()  # the thank-you page posts nothing again
            assert len(revisions(env.rt)) == 2

            # No stars chosen: the browser asks for them first, or the page says so; nothing stored.
            page.fill("#p1-body", "まだ使っていません")
            page.click("#p1-send")
            page.wait_for_timeout(300)
            assert len(revisions(env.rt)) == 2
            assert blocked == []
        finally:
            browser.close()
    process_all(env.rt)
    with Session(env.rt.engine) as s:
        [review] = s.exec(select(Review)).all()
    assert (review.platform, review.product_ref, review.rating, review.revision) == ("own", mug, 3, 2)
