"""The survey in a real headless Chromium on a phone (Debian's /usr/bin/chromium driven by
Playwright), against the app served by uvicorn on loopback: the customer opens the rendered mail,
taps a score, the page posts it by itself, they add a reason and a comment, then change their
answer. And the same without script: the link shows the score chosen, one button sends it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from aftercare.models import SurveyResponse
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from tests.browser import PHONE, Env, launch, served_for_chromium
from tests.surveys.helpers import mailed_survey


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    with served_for_chromium(settings) as served:
        yield served


def answers(rt: Runtime) -> list[tuple[int, int, list[str], str | None]]:
    with Session(rt.engine) as s:
        rows = s.exec(select(SurveyResponse).order_by(SurveyResponse.id)).all()  # type: ignore[arg-type]
        return [(r.seq, r.score, list(r.reasons), r.comment) for r in rows]


def test_a_customer_answers_from_the_mail_on_a_phone_adds_a_comment_and_changes_the_answer(
    env: Env, tmp_path: Path
):
    from playwright.sync_api import sync_playwright

    survey = mailed_survey(env.rt)
    assert survey.links[4].startswith(env.url + "/survey/")
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            phone = browser.new_context(
                viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=3, locale="ja-JP"
            )
            page = phone.new_page()
            blocked: list[str] = []
            page.on(
                "console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None
            )
            # The mail as the customer's mail app shows it; the score links are real links.
            page.set_content(survey.mail.html_body)
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(tmp_path / "survey-mail-phone.png"), full_page=True)
            with page.expect_navigation(url="**/survey/**?saved=1", timeout=30_000):
                page.get_by_role("link", name="4", exact=True).click()
            # The page posted the score by itself and thanks the customer.
            assert "ご回答ありがとうございました" in page.locator("#saved").inner_text()
            assert page.locator("#current-score").inner_text() == "4"
            assert answers(env.rt) == [(1, 4, [], None)]
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            box = page.locator("label:has(#score-5) span").bounding_box()
            assert box is not None and box["height"] >= 44 and box["width"] >= 44
            send = page.locator("#send").bounding_box()
            assert send is not None and send["height"] >= 44 and send["width"] >= PHONE["width"] - 60
            page.screenshot(path=str(tmp_path / "survey-page-phone.png"), full_page=True)

            # A reason and a comment, with markup in it: sent as text, shown as text.
            page.locator("label:has(#reason-packaging)").click()
            page.fill("#comment", "箱がとても丁寧でした <b>また買います</b>")
            page.click("#send")
            page.wait_for_url("**?saved=1")
            assert answers(env.rt)[-1] == (2, 4, ["packaging"], "箱がとても丁寧でした <b>また買います</b>")
            assert page.locator("#comment").input_value() == "箱がとても丁寧でした <b>また買います</b>"
            assert page.locator("b").count() == 0

            # A change of mind: another score; the reason and comment stay; the latest counts.
            page.locator("label:has(#score-2)").click()
            page.click("#send")
            page.wait_for_url("**?saved=1")
            assert page.locator("#current-score").inner_text() == "2"
            assert [a[:2] for a in answers(env.rt)] == [(1, 4), (2, 4), (3, 2)]
            assert answers(env.rt)[-1][2:] == (["packaging"], "箱がとても丁寧でした <b>また買います</b>")
            # A reload of the thank-you page posts nothing again.
            page.reload()
            assert len(answers(env.rt)) == 3
            assert blocked == []  # the page's own script ran under its CSP nonce, nothing else tried
        finally:
            browser.close()


def test_without_script_the_link_only_shows_the_score_and_one_button_sends_it(env: Env):
    from playwright.sync_api import sync_playwright

    survey = mailed_survey(env.rt, sample="en-first")
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            phone = browser.new_context(
                viewport=PHONE, is_mobile=True, has_touch=True, java_script_enabled=False
            )
            page = phone.new_page()
            page.goto(survey.links[5])
            assert page.locator("#score-5").is_checked()
            assert "How was your order?" in page.locator("h1").inner_text()
            page.wait_for_timeout(500)
            assert answers(env.rt) == []  # opening the link stored nothing
            page.click("#send")
            page.wait_for_url("**?saved=1")
            assert "Thank you for your answer" in page.locator("#saved").inner_text()
            assert answers(env.rt) == [(1, 5, [], None)]
        finally:
            browser.close()
