"""The approval page reached by a signed link (aftercare/web/approvals.py), through the real app on
SQLite and PostgreSQL: what it shows, the decisions it records (who, when, from where, the client),
the run it resumes (a recording resumer here; tests/flows/test_approval_page_flow.py resumes real
runs), and every link or form it must refuse, each with a page saying why and a 4xx status."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare import signing
from aftercare.models import ApprovalLink, utcnow
from aftercare.reviews import links, store
from aftercare.reviews.models import DraftReply
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.web.app import create_app
from aftercare.web.approvals import ResumeFailed
from aftercare.web.wake import NoWaker
from tasks.reviews import make_draft
from tests.pipeline import send_outbox, staff_mails
from tests.reviews.helpers import add_review
from tests.web.approval_helpers import (
    LEAD,
    NO_LLM,
    OWNER,
    RUN_ID,
    RecordingResumer,
    Served,
    Tags,
    ask_approvers,
    csrf_of,
    link_row,
    page_settings,
    path_of,
    waiting_review,
)

GOOD_EDIT = (
    "Thank you for telling us. We are sorry the mug arrived broken; please write to support@example.com "
    "so that we can look into this with you."
)


@dataclass
class Page:
    rt: Runtime
    settings: Settings
    client: TestClient
    resumer: RecordingResumer

    def open(self, url: str, client: TestClient | None = None) -> httpx.Response:
        return (client or self.client).get(path_of(url))

    def post(
        self, url: str, data: dict[str, str], *, client: TestClient | None = None, **kw: Any
    ) -> httpx.Response:
        return (client or self.client).post(path_of(url), data=data, follow_redirects=False, **kw)

    def decide(self, url: str, **data: str) -> httpx.Response:
        """Open the page as the approver does, then post its form."""
        form = self.open(url)
        assert form.status_code == 200, form.text
        return self.post(url, {"csrf": csrf_of(form.text), **data})


def app_for(rt: Runtime, settings: Settings, resumer: RecordingResumer) -> Iterator[Page]:
    with TestClient(create_app(settings, waker=NoWaker(), resumer=resumer)) as client:
        yield Page(rt=rt, settings=settings, client=client, resumer=resumer)


@pytest.fixture
def page(rt: Runtime, settings: Settings, tmp_path: Path) -> Iterator[Page]:
    yield from app_for(rt, page_settings(settings, tmp_path), RecordingResumer())


def decisions(rt: Runtime, review_id: int) -> list[tuple[str, str, str]]:
    return [(d.action, d.approver, d.via) for d in store.decisions(rt.engine, review_id)]


# -- the mail and the page ------------------------------------------------------------------------


def test_each_approver_is_mailed_a_link_of_their_own_beside_the_prefect_link(page: Page):
    review_id, draft_id, urls = waiting_review(page.rt, page.settings)
    send_outbox(page.rt)
    mails = staff_mails(page.rt, "approval_request", f"draft-{draft_id}")
    assert sorted(m["To"] for m in mails) == [OWNER, LEAD]
    for mail in mails:
        text = mail.get_body(("plain",)).get_content()
        html = mail.get_body(("html",)).get_content()
        own, other = urls[mail["To"]], urls[LEAD if mail["To"] == OWNER else OWNER]
        assert own.startswith("http://testserver/approvals/") and own in text and own in html
        assert other not in text and other not in html  # nobody gets another approver's link
        assert f"/runs/flow-run/{RUN_ID}" in text  # the Prefect run stays, for ops
    # Asking again for the same draft (a re-run, a retried task) issues no new link and no new mail.
    assert ask_approvers(page.rt, page.settings, review_id, draft_id) == urls
    assert send_outbox(page.rt) == []
    with Session(page.rt.engine) as session:
        assert len(session.exec(select(ApprovalLink)).all()) == 2


def test_the_page_shows_the_review_the_order_the_draft_every_check_and_the_four_decisions(page: Page):
    review_id, draft_id, urls = waiting_review(page.rt, page.settings)
    draft = store.latest_draft(page.rt.engine, review_id)
    response = page.open(urls[OWNER])
    assert response.status_code == 200
    html = response.text
    assert "The mug arrived broken" in html and draft.text.splitlines()[0] in html
    for check in draft.guardrails:
        assert check["name"] in html
    assert "Not linked to an order of ours." in html
    tags = Tags(html)
    actions = [i["value"] for i in tags.named("input") if i.get("name") == "action"]
    assert actions == ["approve", "edit", "redraft", "reject"]
    assert [f.get("method") for f in tags.named("form")] == ["post"] * 4
    assert tags.named("script") == [] and tags.named("meta")[1]["content"].startswith("width=device-width")
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none'
    assert "form-action 'self'" in response.headers["content-security-policy"]
    cookie = response.headers["set-cookie"].lower()
    assert "samesite=strict" in cookie and "httponly" in cookie and "path=/approvals/" in cookie


def test_the_page_speaks_the_policys_approver_language(rt: Runtime, settings: Settings, tmp_path: Path):
    for page in app_for(rt, page_settings(settings, tmp_path, locale="ja"), RecordingResumer()):
        _, _, urls = waiting_review(rt, page.settings)
        html = page.open(urls[LEAD]).text
        assert (
            '<html lang="ja">' in html and "この返信案を承認して公開する" in html and "再作成を依頼" in html
        )
        assert "Approve and publish" not in html


# -- deciding -------------------------------------------------------------------------------------


def test_approve_records_who_when_from_where_and_resumes_the_run_as_the_links_approver(page: Page):
    review_id, draft_id, urls = waiting_review(page.rt, page.settings)
    before = utcnow()
    # The approver is the link's: a field naming someone else is ignored.
    response = page.decide(urls[OWNER], action="approve", approver="mallory@example.com")
    assert response.status_code == 303 and response.headers["location"] == path_of(urls[OWNER])
    [decision] = store.decisions(page.rt.engine, review_id)
    assert (decision.action, decision.approver, decision.via, decision.draft_id) == (
        "approve",
        OWNER,
        "page",
        draft_id,
    )
    assert decision.text == store.latest_draft(page.rt.engine, review_id).text
    assert decision.client_ip == "testclient" and decision.client_agent == "testclient"
    assert before <= decision.decided_at <= utcnow()
    assert decision.link_id == link_row(page.rt, draft_id, OWNER).id
    assert link_row(page.rt, draft_id, OWNER).used_at == decision.decided_at
    assert link_row(page.rt, draft_id, LEAD).used_at is None
    assert page.resumer.calls == [
        (
            RUN_ID,
            {"approver": OWNER, "action": "approve", "edited_text": "", "instructions": "", "reason": ""},
        )
    ]
    outcome = page.open(urls[OWNER])
    assert outcome.status_code == 200 and "Your decision is recorded: approved" in outcome.text
    assert 'http-equiv="refresh"' in outcome.text  # publishing: the page follows it
    # No run took the decision yet (none runs here): each visit asks Prefect again, with the same input.
    assert page.resumer.calls == [page.resumer.calls[0]] * 2
    store.set_status(page.rt.engine, review_id, "approved")  # what the run does with it
    assert page.open(urls[OWNER]).status_code == 200 and len(page.resumer.calls) == 2


def test_a_replayed_post_is_refused_with_the_outcome_and_changes_nothing(page: Page):
    review_id, _, urls = waiting_review(page.rt, page.settings)
    form = page.open(urls[OWNER])
    data = {"csrf": csrf_of(form.text), "action": "reject", "reason": "Spam"}
    assert page.post(urls[OWNER], data).status_code == 303
    again = page.post(urls[OWNER], {**data, "action": "approve"})
    assert again.status_code == 409 and "Your decision is recorded: rejected" in again.text
    assert decisions(page.rt, review_id) == [("reject", OWNER, "page")]
    assert len(page.resumer.calls) == 1


def test_of_concurrent_posts_through_one_link_one_wins_and_the_others_see_its_outcome(
    rt: Runtime, settings: Settings, tmp_path: Path
):
    """Real concurrency: uvicorn on loopback, eight clients posting the same page's form at once."""
    sock_settings = page_settings(settings, tmp_path)
    resumer = RecordingResumer()
    with Served(create_app(sock_settings, waker=NoWaker(), resumer=resumer)) as served:
        review_id, _, urls = waiting_review(rt, sock_settings)
        url = served.url + path_of(urls[OWNER])
        first = httpx.get(url)
        data = {"csrf": csrf_of(first.text), "action": "reject", "reason": "Not a customer"}
        cookie = first.headers["set-cookie"].split(";", 1)[0]
        barrier = threading.Barrier(8)
        answers: list[int] = []

        def post() -> None:
            barrier.wait()
            r = httpx.post(url, data=data, headers={"Cookie": cookie}, timeout=30)
            answers.append(r.status_code)
            if r.status_code == 409:
                assert "Your decision is recorded: rejected" in r.text

        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(answers) == [303] + [409] * 7
    assert decisions(rt, review_id) == [("reject", OWNER, "page")]
    assert len(resumer.calls) == 1


def test_an_edit_that_fails_the_guardrails_shows_why_and_the_link_and_the_run_keep_waiting(page: Page):
    review_id, draft_id, urls = waiting_review(page.rt, page.settings)
    refund = GOOD_EDIT + " We will refund you."
    response = page.decide(urls[OWNER], action="edit", edited_text=refund)
    assert response.status_code == 422
    assert "Your decision was not applied" in response.text and "remedies_within_policy" in response.text
    assert "We will refund you." in response.text  # their text is kept in the form to correct
    assert decisions(page.rt, review_id) == [] and page.resumer.calls == []
    assert link_row(page.rt, draft_id, OWNER).used_at is None
    assert store.get_review(page.rt.engine, review_id).status == "awaiting_approval"

    fixed = page.post(
        urls[OWNER], {"csrf": csrf_of(response.text), "action": "edit", "edited_text": GOOD_EDIT}
    )
    assert fixed.status_code == 303
    [decision] = store.decisions(page.rt.engine, review_id)
    assert (decision.action, decision.text, decision.via) == ("edit", GOOD_EDIT, "page")
    assert decision.guardrails and all(g["passed"] for g in decision.guardrails)
    assert page.resumer.calls[0][1]["edited_text"] == GOOD_EDIT


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"action": "redraft", "instructions": "  "}, "redraft needs instructions"),
        ({"action": "reject", "reason": ""}, "reject needs a reason"),
        ({"action": "publish-now"}, "action"),
        ({"action": "edit", "edited_text": "x" * 4001}, "edited_text"),
    ],
)
def test_an_incomplete_decision_is_shown_again_with_the_problem(page: Page, data, problem):
    review_id, draft_id, urls = waiting_review(page.rt, page.settings)
    response = page.decide(urls[OWNER], **data)
    assert response.status_code == 422 and problem in response.text
    assert decisions(page.rt, review_id) == [] and link_row(page.rt, draft_id, OWNER).used_at is None


def test_a_resume_prefect_could_not_take_is_made_again_when_the_page_is_opened(
    rt: Runtime, settings: Settings, tmp_path: Path
):
    class Flaky(RecordingResumer):
        async def resume(self, flow_run_id: str, run_input: dict[str, Any]) -> str:
            await super().resume(flow_run_id, run_input)
            if len(self.calls) == 1:
                raise ResumeFailed("ConnectError: Prefect is restarting")
            return "resumed"

    for page in app_for(rt, page_settings(settings, tmp_path), Flaky()):
        review_id, _, urls = waiting_review(rt, page.settings)
        assert page.decide(urls[LEAD], action="reject", reason="Duplicate").status_code == 303
        assert decisions(rt, review_id) == [("reject", LEAD, "page")]  # stored whatever Prefect said
        outcome = page.open(urls[LEAD])
        assert outcome.status_code == 200 and "Closing the review" in outcome.text
        assert [c[1]["action"] for c in page.resumer.calls] == ["reject", "reject"]


# -- refusals -------------------------------------------------------------------------------------


def _refused(response: httpx.Response, status: int, kind: str, why: str = "") -> None:
    assert response.status_code == status, (why, response.status_code, response.text[:300])
    assert f'data-kind="{kind}"' in response.text, why
    assert "The mug arrived broken" not in response.text  # a refusal shows nothing of the review


def test_forged_and_tampered_tokens_are_refused(page: Page):
    review_id, draft_id, urls = waiting_review(page.rt, page.settings)
    other_review, other_draft, _ = waiting_review(page.rt, page.settings, platform_review_id="r-2")
    token = urls[OWNER].rsplit("/", 1)[1]
    link = link_row(page.rt, draft_id, OWNER)
    secret = page.settings.approval_secret.get_secret_value()
    claims = {"r": review_id, "d": draft_id, "a": links.approver_tag(OWNER), "n": link.nonce}
    later = utcnow() + timedelta(days=1)
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    forged = {
        "garbage": "not-a-token",
        "tampered signature": flipped,
        "cut short": token[: len(token) // 2],
        "another secret": signing.sign("someone-elses-secret", links.LINK_PURPOSE, claims, expires_at=later),
        "another purpose": signing.sign(secret, links.FORM_PURPOSE, claims, expires_at=later),
        # Signed with our secret (say, leaked) but binding the link to another review, draft or person.
        "another review": signing.sign(
            secret, links.LINK_PURPOSE, {**claims, "r": other_review}, expires_at=later
        ),
        "another draft": signing.sign(
            secret, links.LINK_PURPOSE, {**claims, "d": other_draft}, expires_at=later
        ),
        "another approver": signing.sign(
            secret, links.LINK_PURPOSE, {**claims, "a": links.approver_tag(LEAD)}, expires_at=later
        ),
        "no such link": signing.sign(secret, links.LINK_PURPOSE, {**claims, "n": "x" * 32}, expires_at=later),
        "huge": "a" * 5000,
    }
    for name, bad in forged.items():
        url = f"http://testserver/approvals/{bad}"
        _refused(page.open(url), 403, "invalid", name)
        _refused(page.post(url, {"csrf": "x", "action": "approve"}), 403, "invalid", name)
    assert decisions(page.rt, review_id) == [] and page.resumer.calls == []


def test_an_expired_link_is_refused(page: Page):
    review_id, draft_id, _ = waiting_review(page.rt, page.settings)
    past = utcnow() - timedelta(hours=1)
    with Session(page.rt.engine) as session:
        link = links.issue(
            session,
            review_id=review_id,
            draft_id=draft_id,
            approver="late@example.com",
            expires_at=past,
            now=past - timedelta(days=30),
        )
        session.commit()
        url = links.url(page.settings, link)
    _refused(page.open(url), 410, "expired")
    _refused(page.post(url, {"csrf": "x", "action": "approve"}), 410, "expired")
    # The row's expiry is checked too, whatever the token says.
    with Session(page.rt.engine) as session:
        owner = session.get(ApprovalLink, link_row(page.rt, draft_id, OWNER).id)
        token_url = links.url(page.settings, owner)
        owner.expires_at = past
        session.add(owner)
        session.commit()
    _refused(page.open(token_url), 410, "expired")


def test_another_approvers_decision_closes_every_other_link(page: Page):
    review_id, draft_id, urls = waiting_review(page.rt, page.settings)
    owner_form = page.open(urls[OWNER])  # the owner has the page open...
    assert page.decide(urls[LEAD], action="approve").status_code == 303  # ...the lead decides first
    seen = page.open(urls[OWNER])
    assert seen.status_code == 409 and "Already decided: approved" in seen.text
    assert f"{LEAD} decided on the approval page" in seen.text
    late = page.post(urls[OWNER], {"csrf": csrf_of(owner_form.text), "action": "reject", "reason": "no"})
    assert late.status_code == 409 and "Nothing you sent was applied" in late.text
    assert decisions(page.rt, review_id) == [("approve", LEAD, "page")]
    assert link_row(page.rt, draft_id, OWNER).used_at is None and len(page.resumer.calls) == 1


def test_a_decision_in_prefect_first_closes_the_links(page: Page):
    review_id, draft_id, urls = waiting_review(page.rt, page.settings)
    form = page.open(urls[OWNER])
    store.record_decision(
        page.rt.engine, review_id, approver=LEAD, action="reject", reason="spam", draft_id=draft_id
    )
    seen = page.open(urls[OWNER])
    assert seen.status_code == 409 and f"{LEAD} decided in Prefect" in seen.text
    late = page.post(urls[OWNER], {"csrf": csrf_of(form.text), "action": "approve"})
    assert late.status_code == 409
    assert decisions(page.rt, review_id) == [("reject", LEAD, "prefect")] and page.resumer.calls == []


def test_an_old_drafts_link_is_refused_after_a_redraft_and_points_to_the_new_one(page: Page):
    review_id, first_id, urls = waiting_review(page.rt, page.settings)
    lead_form = page.open(urls[LEAD])
    assert page.decide(urls[OWNER], action="redraft", instructions="Mention the glaze.").status_code == 303
    waiting = page.open(urls[OWNER])
    assert (
        waiting.status_code == 200
        and "being written" in waiting.text
        and 'http-equiv="refresh"' in waiting.text
    )

    # What the run does next: a new draft with the instructions, its approvers asked again.
    second = make_draft(page.rt, review_id, instructions="Mention the glaze.", llm=NO_LLM)
    new_urls = ask_approvers(page.rt, page.settings, review_id, second.id)
    assert new_urls[OWNER] != urls[OWNER] and new_urls[LEAD] != urls[LEAD]

    done = page.open(urls[OWNER])  # the owner's used link now shows the new draft and a fresh link
    assert done.status_code == 200 and "The new draft is ready" in done.text
    assert [a["href"] for a in Tags(done.text).named("a")] == [new_urls[OWNER]]

    old = page.open(urls[LEAD])  # the lead's unused link for the old draft decides nothing
    _refused(old, 410, "superseded")
    assert [a["href"] for a in Tags(old.text).named("a")] == [new_urls[LEAD]]
    late = page.post(urls[LEAD], {"csrf": csrf_of(lead_form.text), "action": "approve"})
    _refused(late, 410, "superseded")
    assert decisions(page.rt, review_id) == [("redraft", OWNER, "page")]
    assert page.open(new_urls[LEAD]).status_code == 200


def test_a_link_of_someone_no_longer_an_approver_is_refused(rt: Runtime, settings: Settings, tmp_path: Path):
    asked = page_settings(settings, tmp_path / "before")
    _, _, urls = waiting_review(rt, asked)
    later = page_settings(settings, tmp_path / "after", approvers=[LEAD])  # the owner was removed
    for page in app_for(rt, later, RecordingResumer()):
        response = page.open(urls[OWNER])
        assert response.status_code == 403 and 'data-kind="not_approver"' in response.text
        assert page.open(urls[LEAD]).status_code == 200


def test_a_cross_site_post_is_refused(page: Page):
    review_id, draft_id, urls = waiting_review(page.rt, page.settings)
    form = page.open(urls[OWNER])
    csrf = csrf_of(form.text)
    data = {"csrf": csrf, "action": "approve"}
    # An attacker's page posting to the link (the browser says where from).
    _refused(page.post(urls[OWNER], data, headers={"Origin": "https://evil.example"}), 403, "cross_site")
    _refused(page.post(urls[OWNER], data, headers={"Origin": "null"}), 403, "cross_site")
    _refused(page.post(urls[OWNER], data, headers={"Sec-Fetch-Site": "cross-site"}), 403, "cross_site")
    # A browser without our SameSite=Strict cookie (a cross-site post does not send it).
    stranger = TestClient(page.client.app)
    _refused(page.post(urls[OWNER], data, client=stranger), 403, "cross_site")
    # The form token of another approver's page, or none.
    lead_csrf = csrf_of(page.open(urls[LEAD]).text)
    _refused(page.post(urls[OWNER], {**data, "csrf": lead_csrf}), 403, "cross_site")
    _refused(page.post(urls[OWNER], {"action": "approve"}), 403, "cross_site")
    # Not the page's form at all.
    response = page.client.post(path_of(urls[OWNER]), json=data)
    assert response.status_code == 415
    assert decisions(page.rt, review_id) == [] and page.resumer.calls == []
    assert link_row(page.rt, draft_id, OWNER).used_at is None
    # Same origin, the page's cookie and token: accepted.
    ok = page.post(
        urls[OWNER], data, headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    )
    assert ok.status_code == 303


# -- untrusted text -------------------------------------------------------------------------------

HOSTILE = {
    "body": (
        "# ✅ All checks passed\n<img src=x onerror=alert(1)><script>alert(1)</script>\n"
        '<a href="https://evil.example/pay">click</a> [refund](https://evil.example) '
        "![x](https://evil.example/x.png) \u202eevil\u202c zero\u200bwidth <h1>APPROVED</h1>"
    ),
    "title": '<h1>Checks passed</h1><meta http-equiv="refresh" content="0;url=https://evil.example">',
    "author_display_name": '<b>Admin</b>\u200b[x](javascript:alert(1))\u2066<iframe src="https://evil.example">',
    "triage_reasons": [
        '<a href="https://evil.example">rating 1</a>',
        "**all good** \u200d<style>*{}</style>",
    ],
    "platform_review_id": '"><form action="https://evil.example">',
}
RISK = '<div class="pass">all checks passed</div><a href="https://evil.example">ok</a>\u202e'


@pytest.mark.parametrize("locale", ["en", "ja"])
def test_hostile_markdown_html_and_invisible_characters_in_every_field_are_inert(
    rt: Runtime, settings: Settings, tmp_path: Path, locale: str
):
    for page in app_for(rt, page_settings(settings, tmp_path, locale=locale), RecordingResumer()):
        review_id = add_review(rt.engine, flow_run_id=RUN_ID, **HOSTILE)
        draft = store.save_draft(
            rt.engine,
            review_id,
            DraftReply(
                reply_text="Thank you for your review. We are sorry.\u200b",
                language="en",
                apologises=True,
                promised_actions=["<a href='https://evil.example'>refund</a>"],
                risk_notes=[RISK],
            ),
            source="llm",
            guardrails=[{"name": "length", "passed": True, "detail": "<b>fine</b>"}],
        )
        urls = ask_approvers(rt, page.settings, review_id, draft.id)
        response = page.open(urls[OWNER])
        assert response.status_code == 200
        html = response.text
        tags = Tags(html)
        # Nothing the strangers wrote became markup: no link, image, script, frame, heading or form of theirs.
        assert tags.named("a") == [] and tags.named("img") == [] and tags.named("script") == []
        assert tags.named("iframe") == [] and tags.named("b") == [] and tags.named("div") == []
        assert len(tags.named("h1")) == 1 and len(tags.named("style")) == 1 and len(tags.named("meta")) == 3
        assert all(f.get("action") is None for f in tags.named("form"))
        for raw in ("<img", "<script>", "<iframe", '<a href="https://evil', "<h1>APPROVED", "<b>Admin"):
            assert raw not in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;b&gt;Admin&lt;/b&gt;" in html
        assert "# ✅ All checks passed" in html and "[refund](https://evil.example)" in html  # text, as typed
        # Invisible and direction-changing characters are shown, not obeyed; only the edit box holds
        # the draft as it is (what an edit starts from; the guardrails check what is published).
        shown = re.sub(r"<textarea[^>]*>.*?</textarea>", "", html, flags=re.S)
        for ch in ("\u202e", "\u200b", "\u2066", "\u200d"):
            assert ch not in shown and f"[U+{ord(ch):04X}]" in shown
        # The same page after a decision (the outcome shows the reply and the reason as text too).
        assert page.decide(urls[OWNER], action="reject", reason="<script>x</script>").status_code == 303
        outcome = page.open(urls[OWNER]).text
        assert Tags(outcome).named("script") == [] and "&lt;script&gt;x&lt;/script&gt;" in outcome


def test_a_decision_whose_run_has_ended_says_so_instead_of_waiting_for_ever(
    rt: Runtime, settings: Settings, tmp_path: Path
):
    """The run was marked Crashed (say, its process died): resuming cannot apply the decision, so
    the page stops refreshing and says who must act; the decision stays stored for a re-run."""
    for page in app_for(rt, page_settings(settings, tmp_path), RecordingResumer(answer="ended:Crashed")):
        review_id, _, urls = waiting_review(rt, page.settings)
        assert page.decide(urls[OWNER], action="approve").status_code == 303
        outcome = page.open(urls[OWNER])
        assert outcome.status_code == 200 and 'id="run-ended"' in outcome.text and "(Crashed)" in outcome.text
        assert 'http-equiv="refresh"' not in outcome.text
        assert decisions(rt, review_id) == [("approve", OWNER, "page")]
