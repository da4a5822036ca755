"""Approval requests and escalation notices: rendered into outbox rows, one per recipient, sent by
the outbox's machinery, posted to the chat webhook, and an escalation owed once per review, never
twice, never given back."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlmodel import Session

from aftercare.models import Review, utcnow
from aftercare.rendering import Renderer
from aftercare.reviews import notify, store
from aftercare.reviews.approval import guarded_from_stored
from aftercare.reviews.policy import ApprovalPolicy, ReviewsPolicy
from aftercare.reviews.settings import LLMSettings
from aftercare.runtime import Runtime
from tasks.reviews import make_draft
from tests.pipeline import send_outbox, staff_mails
from tests.reviews.helpers import FakeChat, add_review

RUN_ID = "0b7e3f4e-5f6a-4c7d-8e9f-0a1b2c3d4e5f"


@pytest.fixture
def chat():
    with FakeChat() as fake:
        yield fake


def with_approval(policy: ReviewsPolicy, **approval) -> ReviewsPolicy:
    base = {
        "approvers": ["owner@example.com", "support-lead@example.com"],
        "escalation_contact": "manager@example.com",
        "locale": "en",
    }
    return policy.model_copy(update={"approval": ApprovalPolicy(**{**base, **approval})})


def emls(rt, kind: str):  # type: ignore[no-untyped-def]
    """The drain loop sends what the outbox holds; then the staff mails of `kind` that went out."""
    send_outbox(rt)
    return staff_mails(rt, kind)


def body(msg) -> str:  # type: ignore[no-untyped-def]
    return msg.get_body(preferencelist=("plain",)).get_content()


def waiting_review(rt, hours_ago: float, **fields) -> int:  # type: ignore[no-untyped-def]
    review_id = add_review(
        rt.engine,
        status="awaiting_approval",
        approval_requested_at=utcnow() - timedelta(hours=hours_ago),
        flow_run_id=RUN_ID,
        **fields,
    )
    return review_id


def test_an_approval_request_reaches_every_approver_with_the_draft_and_the_run_link(rt, policy, chat):
    policy = with_approval(policy, slack_webhook_url=chat.url)
    settings = rt.settings.model_copy(update={"prefect_ui_url": "http://ui.test:4200/"})
    review_id = add_review(rt.engine, platform_review_id="jm-1", platform="judgeme")
    draft = make_draft(rt, review_id, llm=LLMSettings(_env_file=None, base_url="", model=""))
    review = store.get_review(rt.engine, review_id)
    now = utcnow()

    ids = notify.notify_approval_request(
        rt.engine,
        settings,
        Renderer(settings.templates_dir),
        policy,
        review,
        draft_id=draft.id,
        guarded=guarded_from_stored(draft, policy.version),
        flow_run_id=RUN_ID,
        now=now,
    )

    assert len(ids) == 2
    assert store.get_review(rt.engine, review_id).status == "awaiting_approval"
    msgs = emls(rt, "approval_request")
    assert sorted(m["To"] for m in msgs) == ["owner@example.com", "support-lead@example.com"]
    link = f"http://ui.test:4200/runs/flow-run/{RUN_ID}"
    for m in msgs:
        assert "judgeme review jm-1 (1/5)" in m["Subject"]
        text = body(m)
        assert draft.text.splitlines()[0] in text and link in text
        assert "length: pass" in text
        assert "Decide by " + (now + timedelta(hours=24)).strftime("%Y-%m-%d %H:%M UTC") in text
        assert link in m.get_body(preferencelist=("html",)).get_content()
    assert len(chat.posts) == 1 and link in chat.texts[0] and "jm-1" in chat.texts[0]

    # Asking again for the same draft (a resumed run, a retried task) owes nothing new: nobody gets
    # a pile of copies, and the chat hears once.
    again = notify.notify_approval_request(
        rt.engine,
        settings,
        Renderer(settings.templates_dir),
        policy,
        review,
        draft_id=draft.id,
        guarded=guarded_from_stored(draft, policy.version),
        flow_run_id=RUN_ID,
        now=now + timedelta(hours=1),
    )
    assert again == ids and send_outbox(rt) == []
    assert len(emls(rt, "approval_request")) == 2 and len(chat.posts) == 1


def test_japanese_staff_mail_and_html_escaping(rt, policy):
    policy = with_approval(policy, locale="ja")
    review_id = add_review(rt.engine, platform_review_id="<b>x</b>")
    draft = make_draft(rt, review_id, llm=LLMSettings(_env_file=None, base_url="", model=""))
    with Session(rt.engine) as s:
        review = s.get(Review, review_id)
    notify.notify_approval_request(
        rt.engine,
        rt.settings,
        Renderer(rt.settings.templates_dir),
        policy,
        review,
        draft_id=draft.id,
        guarded=guarded_from_stored(draft, policy.version),
        flow_run_id=None,
    )
    msg = emls(rt, "approval_request")[0]
    assert "返信の承認依頼" in msg["Subject"]
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


def test_overdue_reviews_are_escalated_once_and_keep_waiting(rt, policy, chat):
    policy = with_approval(policy, slack_webhook_url=chat.url)
    renderer = Renderer(rt.settings.templates_dir)
    overdue = waiting_review(rt, 25, platform_review_id="late")
    fresh = waiting_review(rt, 23, platform_review_id="fresh")
    done = add_review(
        rt.engine,
        platform_review_id="done",
        status="published",
        approval_requested_at=utcnow() - timedelta(days=3),
    )

    assert notify.escalate_overdue(rt.engine, policy, rt.settings, renderer) == [overdue]
    assert notify.escalate_overdue(rt.engine, policy, rt.settings, renderer) == []  # once, not twice

    [msg] = emls(rt, "escalation_notice")
    assert msg["To"] == "manager@example.com" and "late" in msg["Subject"]
    assert "within 24 hours" in body(msg) and f"/runs/flow-run/{RUN_ID}" in body(msg)
    assert len(chat.posts) == 1 and "Escalation" in chat.texts[0]
    with Session(rt.engine) as s:
        rows = {r.id: r for r in s.exec(sa.select(Review)).scalars()}
    assert rows[overdue].escalated_at is not None and rows[overdue].status == "awaiting_approval"
    assert rows[fresh].escalated_at is None and rows[done].escalated_at is None

    # Later, the 23-hour one passes the window too: it gets its own single notice.
    later = utcnow() + timedelta(hours=2)
    assert notify.escalate_overdue(rt.engine, policy, rt.settings, renderer, now=later) == [fresh]
    assert len(emls(rt, "escalation_notice")) == 2


def test_concurrent_sweeps_escalate_a_review_once(rt, policy):
    policy = with_approval(policy)
    review_id = waiting_review(rt, 30, platform_review_id="race")
    results: list[list[int]] = []
    barrier = threading.Barrier(4)

    def sweep() -> None:
        barrier.wait()
        results.append(
            notify.escalate_overdue(rt.engine, policy, rt.settings, Renderer(rt.settings.templates_dir))
        )

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sum(results, [])) == [review_id]
    assert len(emls(rt, "escalation_notice")) == 1


def test_a_failed_escalation_send_keeps_the_claim_and_the_outbox_sends_it_later(rt, policy):
    policy = with_approval(policy)
    review_id = waiting_review(rt, 30, platform_review_id="unlucky")
    renderer = Renderer(rt.settings.templates_dir)
    assert notify.escalate_overdue(rt.engine, policy, rt.settings, renderer) == [review_id]
    # SendGrid unreachable (nothing listens on port 9 here), with a backoff past the inline cap.
    broken = rt.settings.model_copy(
        update={
            "email_backend": "sendgrid",
            "sendgrid_api_key": SecretStr("SG.test"),
            "sendgrid_base_url": "http://127.0.0.1:9",
            "send_backoff_base_s": 60.0,
        }
    )
    [result] = send_outbox(Runtime.build(broken))
    assert result.status == "pending" and "unreachable" in (result.error or "")
    with Session(rt.engine) as s:
        assert s.get(Review, review_id).escalated_at is not None  # kept: the row is the record
    assert notify.escalate_overdue(rt.engine, policy, rt.settings, renderer) == []  # not owed twice
    [later] = send_outbox(rt, now=utcnow() + timedelta(minutes=2))
    assert later.status == "sent" and len(staff_mails(rt, "escalation_notice")) == 1


def test_without_a_contact_the_approvers_get_the_escalation(rt, policy):
    policy = with_approval(policy, escalation_contact=None)
    waiting_review(rt, 30, platform_review_id="nobody")
    notify.escalate_overdue(rt.engine, policy, rt.settings, Renderer(rt.settings.templates_dir))
    assert sorted(m["To"] for m in emls(rt, "escalation_notice")) == [
        "owner@example.com",
        "support-lead@example.com",
    ]


def test_a_chat_webhook_that_fails_is_reported_not_raised(tmp_path: Path):
    with FakeChat(status=500) as chat:
        assert notify.post_webhook(chat.url, "hello") is False
        assert chat.texts == ["hello"]
    assert notify.post_webhook("http://127.0.0.1:9/hook", "hello", timeout_s=1) is False
    assert notify.post_webhook(None, "hello") is False
