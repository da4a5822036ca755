"""Deciding from the link in the mail, end to end: real `review-reply` runs served by a Runner
against the session's Prefect test server (as in test_review_approval.py), the web app served by
uvicorn on loopback with the real Prefect resumer, the approval mails written by the file outbox,
and approvers who open the link in those mails: over HTTP, and in Debian's Chromium at a phone's
size (Playwright drives it; it runs under CI=true and is skipped elsewhere when Chromium is absent)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run
from prefect.states import Crashed, Scheduled

from aftercare.models import utcnow
from aftercare.reviews import links, store
from aftercare.runtime import Runtime, use_runtime
from aftercare.settings import PROJECT_ROOT, Settings
from aftercare.spine.db import migrate
from aftercare.web.app import create_app
from aftercare.web.approvals import PrefectResumer
from aftercare.web.wake import NoWaker
from tasks.review_sweep import DECISION_GRACE_S, deliver_stored_decisions
from tests.browser import PHONE, chromium_or_skip, launch
from tests.flows.test_review_approval import (
    FIRST_DRAFT,
    LEAD,
    MANAGER,
    OWNER,
    REDRAFTED,
    UI,
    BackgroundRunner,
    _llm_reply,
    finished,
    read_run,
    sweep_until_started,
    wait_for,
    waiting,
)
from tests.pipeline import staff_mails
from tests.reviews.fake_openai import API_KEY, FakeOpenAI
from tests.reviews.helpers import add_review
from tests.web.approval_helpers import Served, Tags, csrf_of, loopback_socket

SCENARIOS = ("http", "browser", "ended", "undelivered")


@dataclass
class Env:
    rt: Runtime
    web: Served
    runs: dict[str, tuple[int, str]]

    def link_in_mail(self, draft_id: int, approver: str) -> str:
        """The approval page link in `approver`'s request mail for this draft (as sent)."""
        mails = staff_mails(self.rt, "approval_request", f"draft-{draft_id}")
        [mail] = [m for m in mails if m["To"] == approver]
        found = re.search(r"(http://\S+/approvals/\S+)", mail.get_body(("plain",)).get_content())
        assert found, "the approval request carries no link to the approval page"
        return found.group(1)


@pytest.fixture(scope="module")
def env(prefect_server: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("approval-page")
    url = f"sqlite:///{root / 'aftercare.db'}"
    migrate(Settings(database_url=url))
    policies = root / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    sock = loopback_socket()  # bound first: the mails name the web app's address
    web_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with FakeOpenAI(_llm_reply) as llm, pytest.MonkeyPatch.context() as mp:
        data = yaml.safe_load((policies / "reviews.yaml").read_text(encoding="utf-8"))
        data["approval"].update(
            approvers=[OWNER, LEAD], escalation_contact=MANAGER, locale="en", reply_to_positive=False
        )
        (policies / "reviews.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        for name, value in {
            "AFTERCARE_ENVIRONMENT": "test",
            "AFTERCARE_DATABASE_URL": url,
            "AFTERCARE_VAR_DIR": str(root / "var"),
            "AFTERCARE_POLICIES_DIR": str(policies),
            "AFTERCARE_WAKE_PREFECT": "false",
            "AFTERCARE_PREFECT_UI_URL": UI,
            "AFTERCARE_WEB_BASE_URL": web_url,
            "AFTERCARE_APPROVAL_SECRET": "approval-page-flow-test-secret",
            "AFTERCARE_LLM_BASE_URL": llm.base_url,
            "AFTERCARE_LLM_MODEL": "fake-model",
            "AFTERCARE_LLM_API_KEY": API_KEY,
            "AFTERCARE_LLM_MAX_RETRIES": "0",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        }.items():
            mp.setenv(name, value)
        rt = Runtime.build(Settings())
        app = create_app(Settings(), waker=NoWaker(), resumer=PrefectResumer())
        try:
            with BackgroundRunner(), use_runtime(rt), Served(app, sock) as web:
                ids = {
                    s: add_review(rt.engine, platform_review_id=f"page-{s}", author_display_name="Sam")
                    for s in SCENARIOS
                }
                sweep_until_started(ids.values())
                runs = {s: (ids[s], store.get_review(rt.engine, ids[s]).flow_run_id) for s in SCENARIOS}
                yield Env(rt=rt, web=web, runs=runs)
        finally:
            rt.engine.dispose()
        assert llm.violations == []


def decisions(env: Env, review_id: int) -> list[tuple[str, str, str]]:
    return [(d.action, d.approver, d.via) for d in store.decisions(env.rt.engine, review_id)]


def page_showing(url: str, text: str, timeout: float = 90) -> str:
    """The page at `url` once it shows `text` (the outcome page refreshes itself the same way)."""

    def check() -> str | None:
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200, page.text[:500]
        return page.text if text in page.text else None

    return wait_for(check, f"{url} to show {text!r}", timeout)


def test_redraft_then_approve_from_the_links_in_the_mails(env: Env):
    review_id, run_id = env.runs["http"]
    waiting(run_id, forms=1)
    first = store.latest_draft(env.rt.engine, review_id)
    link = env.link_in_mail(first.id, OWNER)
    assert link.startswith(env.web.url + "/approvals/") and link != env.link_in_mail(first.id, LEAD)

    with httpx.Client(timeout=30) as browser:  # keeps the page's cookie, as a browser does
        form = browser.get(link)
        assert form.status_code == 200 and FIRST_DRAFT in form.text
        sent = browser.post(
            link,
            data={"csrf": csrf_of(form.text), "action": "redraft", "instructions": "Mention the glaze."},
            headers={"Origin": env.web.url},
        )
        assert sent.status_code == 303
    outcome = page_showing(link, "The new draft is ready")
    assert REDRAFTED in outcome
    waiting(run_id, forms=2)
    second = store.latest_draft(env.rt.engine, review_id)
    assert second.id != first.id and second.text == REDRAFTED and second.instructions == "Mention the glaze."
    next_link = env.link_in_mail(second.id, OWNER)

    # The new draft shows as soon as it is stored; its link once the run has issued it (the page
    # refreshes itself until then).
    def linked() -> str | None:
        page = httpx.get(link, timeout=10).text
        return page if Tags(page).named("a") else None

    outcome = wait_for(linked, "the outcome page to link the new draft", 60)
    assert [a["href"] for a in Tags(outcome).named("a")] == [next_link]  # the same link as in the new mail

    with httpx.Client(timeout=30) as browser:
        form = browser.get(next_link)
        sent = browser.post(next_link, data={"csrf": csrf_of(form.text), "action": "approve"})
        assert sent.status_code == 303
    done = page_showing(next_link, "See the published reply")
    [published] = [a["href"] for a in Tags(done).named("a")]
    run = finished(run_id)
    assert run.state.is_completed(), run.state.message
    assert REDRAFTED in httpx.get(published).text
    assert decisions(env, review_id) == [("redraft", OWNER, "page"), ("approve", OWNER, "page")]
    assert store.reply_of(env.rt.engine, review_id).approved_by == OWNER


def test_a_decision_on_a_run_that_died_is_kept_and_applied_when_the_run_is_run_again(env: Env):
    review_id, run_id = env.runs["ended"]
    waiting(run_id, forms=1)
    draft = store.latest_draft(env.rt.engine, review_id)
    with get_client(sync_client=True) as client:  # its process died while it waited (a lost machine)
        client.set_flow_run_state(UUID(run_id), Crashed(message="killed"), force=True)
    link = env.link_in_mail(draft.id, OWNER)
    with httpx.Client(timeout=30) as browser:
        form = browser.get(link)
        sent = browser.post(link, data={"csrf": csrf_of(form.text), "action": "approve"})
        assert sent.status_code == 303
        outcome = browser.get(link)
    assert 'id="run-ended"' in outcome.text and "(Crashed)" in outcome.text
    assert decisions(env, review_id) == [("approve", OWNER, "page")]
    assert store.reply_of(env.rt.engine, review_id) is None

    # Ops re-run it from the UI: it finds the stored decision and publishes, without asking again.
    crashed = read_run(run_id)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Scheduled(), force=True)
    run = finished(run_id, after_run_count=crashed.run_count)
    assert run.state.is_completed(), run.state.message
    assert store.reply_of(env.rt.engine, review_id).status == "published"
    assert "See the published reply" in httpx.get(link).text


def test_a_decision_that_could_not_reach_its_run_is_delivered_by_the_sweep(env: Env):
    """Prefect was away when the page stored the decision: the run kept waiting. The review sweep
    resumes it with the stored decision (once the page has had its chance), and it is applied once."""
    review_id, run_id = env.runs["undelivered"]
    waiting(run_id, forms=1)
    draft = store.latest_draft(env.rt.engine, review_id)
    link = links.link_for(env.rt.engine, draft.id, OWNER)
    decided = utcnow()
    links.decide(  # what the page stores before it resumes the run (the resume never happened)
        env.rt.engine,
        link,
        action="approve",
        text=draft.text,
        instructions=None,
        reason=None,
        guardrails=draft.guardrails,
        client=links.Client(ip="192.0.2.7", user_agent="phone"),
        now=decided,
    )
    assert read_run(run_id).state.is_paused()
    assert deliver_stored_decisions(decided + timedelta(seconds=5)) == []  # the page's own moment
    assert deliver_stored_decisions(decided + timedelta(seconds=DECISION_GRACE_S + 1)) == [review_id]
    run = finished(run_id)
    assert run.state.is_completed(), run.state.message
    assert store.reply_of(env.rt.engine, review_id).status == "published"
    assert decisions(env, review_id) == [("approve", OWNER, "page")]
    assert deliver_stored_decisions(utcnow() + timedelta(minutes=5)) == []  # applied: nothing owed


def test_an_approver_decides_on_a_phone_in_a_real_browser(env: Env, tmp_path: Path):
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    review_id, run_id = env.runs["browser"]
    waiting(run_id, forms=1)
    draft = store.latest_draft(env.rt.engine, review_id)
    # Someone first tries the Prefect form with a name that is not an approver: refused, still waiting.
    resume_flow_run(UUID(run_id), run_input={"approver": "mallory@example.com", "action": "approve"})
    waiting(run_id, forms=2)
    assert decisions(env, review_id) == []
    link = env.link_in_mail(draft.id, LEAD)

    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=3)
            page = phone.new_page()
            page.goto(link)
            assert page.locator("#draft-text").inner_text().strip() == FIRST_DRAFT
            # Made for the phone: nothing wider than the screen, the decision a thumb's size.
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            box = page.locator("#approve").bounding_box()
            assert box is not None and box["height"] >= 40 and box["width"] >= PHONE["width"] - 60
            page.screenshot(path=str(tmp_path / "approval-page-phone.png"), full_page=True)

            # An edit that fails a guardrail first: shown why, nothing decided.
            page.locator("summary", has_text="Edit and approve").click()
            page.fill("#edited_text", FIRST_DRAFT + " We will refund you.")
            page.click("#edit")
            assert "Your decision was not applied" in page.locator("#error").inner_text()
            assert decisions(env, review_id) == []

            # Then the approval.
            page.click("#approve")
            page.wait_for_selector("#published", timeout=90_000)  # the outcome page refreshes itself
            assert "Your decision is recorded: approved" in page.locator("h1").inner_text()
            page.click("#published")
            page.wait_for_load_state()
            assert FIRST_DRAFT in page.content()
        finally:
            browser.close()
    run = finished(run_id)
    assert run.state.is_completed(), run.state.message
    assert read_run(run_id).state.is_completed()
    [decision] = store.decisions(env.rt.engine, review_id)
    assert (decision.action, decision.approver, decision.via) == ("approve", LEAD, "page")
    assert decision.client_ip == "127.0.0.1" and "Chrome" in (decision.client_agent or "")
