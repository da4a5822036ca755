"""A case's private apology on the review-reply machinery, on SQLite and PostgreSQL: drafted by
the template drafter or the LLM (a loopback fake) under the guardrails with the private remedies,
decided on the same approval page (approve, edit, reject), mailed once as a transactional
`complaint_reply` through the outbox whatever is replayed or crashes, and never public."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from aftercare.models import OutboxMessage, RecoveryCase, ReplyStatus, ReviewReply, Touchpoint, utcnow
from aftercare.recovery import apology
from aftercare.recovery.policy import load_recovery_policy
from aftercare.reviews import intake, store
from aftercare.reviews.approval import guarded_from_stored
from aftercare.reviews.guardrails import check
from aftercare.reviews.models import DraftReply
from aftercare.reviews.publishing import recover_stale
from aftercare.reviews.settings import LLMSettings
from aftercare.runtime import use_runtime
from tasks.review_sweep import platform_for
from tasks.reviews import draft_context, make_draft, publish
from tests.factories import order_payload, refund_payload
from tests.pipeline import receive, send_outbox
from tests.recovery.helpers import answer, app_settings, cases, client_for
from tests.reviews.fake_openai import API_KEY, FakeOpenAI
from tests.surveys.helpers import mailed_survey
from tests.web.approval_helpers import (
    LEAD,
    NO_LLM,
    OWNER,
    RUN_ID,
    RecordingResumer,
    ask_approvers,
    csrf_of,
    path_of,
)


@pytest.fixture
def env(rt, settings, tmp_path: Path):
    own = app_settings(settings, tmp_path)
    rt.settings = own  # the flow's tasks read the runtime's settings: the test's own policies
    resumer = RecordingResumer()
    with client_for(own, resumer) as client, use_runtime(rt):
        yield rt, own, client, resumer


def opened_case(rt, client, n: int = 0, comment: str = "届いたカップが欠けていました。", **overrides):
    survey = mailed_survey(rt, n, **overrides)
    assert answer(client, survey, 1, comment) == 303
    case = next(c for c in cases(rt) if c.touchpoint_id == survey.touchpoint_id)
    store.set_flow_run(rt.engine, case.review_id, RUN_ID)
    return survey, case


def drafted(rt, own, case, llm: LLMSettings = NO_LLM):
    draft = make_draft(rt, case.review_id, llm=llm)
    return draft, ask_approvers(rt, own, case.review_id, draft.id)


def decide(client, url: str, **data: str):
    form = client.get(path_of(url))
    assert form.status_code == 200, form.text
    return client.post(path_of(url), data={"csrf": csrf_of(form.text), **data}, follow_redirects=False)


def apply_as_the_flow_does(rt, review_id: int) -> dict:
    """What flows/reviews.py does with a stored approve/edit decision: queue the reply, publish it."""
    decision = store.decisions(rt.engine, review_id)[-1]
    store.enqueue_reply(rt.engine, review_id, decision.text, decision.approver)
    store.set_status(rt.engine, review_id, "approved", only_from=("awaiting_approval",))
    return publish.fn(review_id)


def apology_mails(rt) -> list[OutboxMessage]:
    with Session(rt.engine) as s:
        return list(s.exec(select(OutboxMessage).where(OutboxMessage.kind == "complaint_reply")))


# -- drafting under the guardrails ------------------------------------------------------------------


@pytest.mark.parametrize("sample", ["ja-first-gift", "en-first"])
def test_the_template_apology_passes_every_guardrail_and_says_what_and_asks_in_one(env, sample):
    rt, own, client, _ = env
    _, case = opened_case(rt, client, comment="", sample=sample)
    draft, _ = drafted(rt, own, case)

    assert draft.source == "template" and not draft.needs_attention
    assert all(c["passed"] for c in draft.guardrails), draft.guardrails
    lang = "ja" if sample.startswith("ja") else "en"
    assert draft.language == lang
    # Says what will be done (the remedies allowed in private) and asks everything in this one mail.
    if lang == "ja":
        assert "交換" in draft.text and "返金" in draft.text and "10%" in draft.text
        assert "まとめてお知らせください" in draft.text
    else:
        assert "replacement or a refund" in draft.text and "10% off" in draft.text
        assert "without writing back and forth" in draft.text
    assert any("replacement or a refund" in p for p in draft.promised_actions)


def test_a_promise_the_private_policy_does_not_allow_fails_the_remedies_check(env):
    rt, own, client, _ = env
    _, case = opened_case(rt, client)
    ctx = draft_context(rt, case.review_id)
    base = (
        "このたびはご迷惑をおかけし、誠に申し訳ございません。新しい商品との交換にて対応いたします。"
        "お手数ですが、お届け先に変更がないかと、ご都合のよいお届け日をこのメールへのご返信でお知らせください。"
    )
    for text, failing in (
        (base, set()),
        (
            base + "お詫びの品としてギフトカードもお送りいたします。",
            {"remedies_within_policy"},
        ),  # compensation: off
        (base + "次回20%割引のクーポンもお送りいたします。", {"remedies_within_policy"}),  # over 10%
    ):
        reply = DraftReply(
            reply_text=text, language="ja", apologises=True, promised_actions=[], risk_notes=[]
        )
        failed = {c.name for c in check(reply, ctx.guardrails) if not c.passed}
        assert failed == failing, (text, failed)
    # A public reply may offer less than the private apology: the same words fail there.
    public = intake.reviews_policy(own.policies_dir)
    assert not public.reply.remedies.refund and ctx.policy.reply.remedies.refund


def test_no_personal_data_reaches_the_model_or_the_apology(env):
    from aftercare.models import Customer, Order

    rt, own, client, _ = env
    survey = mailed_survey(rt)
    other = mailed_survey(rt, 1, email="someone.else@example.net")  # another customer's order
    with Session(rt.engine) as s:
        order = s.get(Order, survey.order_id)
        customer = s.get(Customer, order.customer_id)
        other_email = s.get(Order, other.order_id).email
    mine = [order.email, customer.last_name]
    comment = f"欠けていました。{customer.last_name}です。{order.email} か 090-1234-5678 にご連絡ください。"
    assert answer(client, survey, 1, comment) == 303
    [case] = cases(rt)
    store.set_flow_run(rt.engine, case.review_id, RUN_ID)
    seen: list[str] = []

    def responder(request):
        seen.append(json.dumps(request["messages"], ensure_ascii=False))
        return {
            "reply_text": "このたびはご迷惑をおかけし、誠に申し訳ございません。"
            "ご希望に応じて交換またはご返金にて対応いたします。"
            "お手数ですが、どちらをご希望か、商品の状態がわかるお写真とあわせてこのメールにご返信ください。",
            "language": "ja",
            "apologises": True,
            "promised_actions": ["a replacement or a refund"],
            "risk_notes": [],
        }

    with FakeOpenAI(responder) as fake:
        llm = LLMSettings(_env_file=None, base_url=fake.base_url, model="m", api_key=API_KEY, max_retries=0)
        draft, _ = drafted(rt, own, case, llm)
    assert draft.source == "llm" and not draft.needs_attention, draft.guardrails
    prompt = "\n".join(seen)
    assert seen and "欠けていました" in prompt
    for piece in (*mine, "090-1234-5678", survey.order_name, other.order_name, other_email):
        assert piece not in prompt, piece
    # An apology repeating the customer's own details fails the personal-data check; one naming
    # another customer's address fails the contacts check: neither can be approved as it is.
    ctx = draft_context(rt, case.review_id)
    for extra, failing in (
        (f"{order.email} にもお送りいたします。", "no_personal_data"),
        (f"{other_email} にもお送りいたします。", "contacts_allow_listed"),
    ):
        leaky = DraftReply(
            reply_text=draft.text + extra, language="ja", apologises=True, promised_actions=[], risk_notes=[]
        )
        assert failing in {c.name for c in check(leaky, ctx.guardrails) if not c.passed}


# -- deciding on the approval page, and the mail ------------------------------------------------------


def test_approved_on_the_page_the_apology_is_mailed_once_as_a_transactional_mail(env):
    rt, own, client, resumer = env
    survey, case = opened_case(rt, client)
    draft, urls = drafted(rt, own, case)

    page = client.get(path_of(urls[OWNER]))
    assert page.status_code == 200 and "欠けていました" in page.text
    assert decide(client, urls[OWNER], action="approve").status_code == 303
    assert resumer.calls and resumer.calls[0][1]["action"] == "approve"

    result = apply_as_the_flow_does(rt, case.review_id)
    assert result["status"] == "published" and result["platform_reply_id"].startswith("outbox:")
    [mail] = apology_mails(rt)
    assert mail.headers is None  # transactional: no List-Unsubscribe
    assert draft.text.splitlines()[0] in mail.text_body
    assert mail.to_email == survey_order_email(rt, case)
    with Session(rt.engine) as s:
        tp = s.get(Touchpoint, mail.touchpoint_id)
        answered = s.get(RecoveryCase, case.id)
    assert (tp.kind, tp.order_id) == ("complaint_reply", case.order_id)
    assert (answered.status, answered.apology_outbox_id) == ("answered", mail.id)
    # Replays: the task again, the sweep's recovery, another publish: nothing new.
    assert publish.fn(case.review_id)["status"] == "published"
    assert apply_as_the_flow_does(rt, case.review_id)["status"] == "published"
    assert len(apology_mails(rt)) == 1
    send_outbox(rt)
    [sent] = apology_mails(rt)
    assert sent.status == "sent"
    # Never on the public page, whatever its id.
    assert client.get(f"/reviews/{store.get_review(rt.engine, case.review_id).public_id}").status_code == 404
    # The first approver's page says where it went; the second's shows the decision, takes none.
    assert "Mailed to the customer" in client.get(path_of(urls[OWNER])).text
    other = client.get(path_of(urls[LEAD]))
    assert other.status_code == 409 and 'data-kind="decided_elsewhere"' in other.text
    assert len(store.decisions(rt.engine, case.review_id)) == 1


@pytest.mark.parametrize("ending", ["refunded in full", "cancelled"])
def test_an_approved_apology_goes_out_even_when_the_order_ends_before_its_mail(env, ending):
    """The apology answers what the customer told us, so the order's fate never calls it off: a
    refund (often the very remedy it announces) or a cancellation that arrives while its mail
    waits in the outbox ends the order's own mails, not this one."""
    rt, own, client, _ = env
    survey, case = opened_case(rt, client)
    _, urls = drafted(rt, own, case)
    assert decide(client, urls[OWNER], action="approve").status_code == 303
    assert apply_as_the_flow_does(rt, case.review_id)["status"] == "published"
    [owed] = apology_mails(rt)
    assert owed.status == "pending"

    base = order_payload("ja-first-gift")
    payload = order_payload(
        "ja-first-gift",
        id=base["id"],
        name=survey.order_name,
        order_number=2000,
        updated_at="2027-01-05T12:00:00+09:00",
    )
    if ending == "refunded in full":
        receive(rt, refund_payload(payload), topic="refunds/create")
    else:
        payload |= {"cancelled_at": "2027-01-05T12:00:00+09:00", "cancel_reason": "customer"}
        receive(rt, payload, topic="orders/cancelled")
    with Session(rt.engine) as s:
        kinds = {t.kind: t for t in s.exec(select(Touchpoint).where(Touchpoint.order_id == case.order_id))}
    # The order's ending took effect: what was still planned for it is called off ...
    assert kinds["review_request"].status == "cancelled", kinds["review_request"].reason
    # ... but not the reply to the customer's complaint.
    assert kinds["complaint_reply"].status == "planned"
    send_outbox(rt)
    [sent] = apology_mails(rt)
    assert sent.status == "sent", sent.last_error


def survey_order_email(rt, case) -> str:
    from aftercare.models import Order

    with Session(rt.engine) as s:
        return s.get(Order, case.order_id).email


def test_an_edit_is_checked_again_and_mailed_as_edited(env):
    rt, own, client, _ = env
    _, case = opened_case(rt, client)
    _, urls = drafted(rt, own, case)
    bad = (
        "申し訳ございません。お詫びとして5,000円分のギフトカードをお送りいたします。"
        "ご確認をお願いいたします。"
    )
    refused = decide(client, urls[OWNER], action="edit", edited_text=bad)
    assert refused.status_code == 422 and "remedies_within_policy" in refused.text
    assert store.decisions(rt.engine, case.review_id) == []

    good = (
        "このたびは欠けた商品をお届けしてしまい、誠に申し訳ございません。新しい商品と交換いたします。"
        "お手数ですが、お届け先に変更がないかと、ご都合のよいお届け日を、このメールへのご返信でお知らせください。"
    )
    assert decide(client, urls[OWNER], action="edit", edited_text=good).status_code == 303
    assert apply_as_the_flow_does(rt, case.review_id)["status"] == "published"
    [mail] = apology_mails(rt)
    assert good in mail.text_body


def test_rejected_the_case_stays_open_for_ops_and_nothing_is_mailed(env):
    rt, own, client, _ = env
    _, case = opened_case(rt, client)
    _, urls = drafted(rt, own, case)
    assert (
        decide(client, urls[OWNER], action="reject", reason="calling the customer instead").status_code == 303
    )
    store.set_status(rt.engine, case.review_id, "rejected", only_from=("awaiting_approval",))

    assert apology_mails(rt) == []
    [still] = cases(rt)
    assert still.status == "open" and still.answered_at is None
    from aftercare.recovery.store import list_cases

    [view] = list_cases(rt.engine, open_only=True)
    assert view.apology.startswith("rejected: the case is open for ops; last decision: reject by owner@")


def test_a_worker_killed_around_the_mail_mails_once(env):
    """The reply row is claimed before the mail is owed; a worker dying after (or before) the mail's
    transaction is settled from our own tables, never by mailing blindly."""
    rt, own, client, _ = env
    _, case = opened_case(rt, client)
    drafted(rt, own, case)
    draft = store.latest_draft(rt.engine, case.review_id)
    store.enqueue_reply(rt.engine, case.review_id, draft.text, OWNER)
    mailer = platform_for(rt, "private")
    review = store.get_review(rt.engine, case.review_id)
    reply = store.reply_of(rt.engine, case.review_id)

    def left_publishing() -> None:
        with Session(rt.engine) as s:
            row = s.exec(select(ReviewReply).where(ReviewReply.review_id == case.review_id)).one()
            row.status, row.claimed_at = ReplyStatus.PUBLISHING, utcnow() - timedelta(hours=1)
            s.add(row)
            s.commit()

    # Died before the mail was owed: requeued, then published once.
    left_publishing()
    outcome = recover_stale(rt.engine, lambda p: platform_for(rt, p), timedelta(minutes=15), utcnow())
    assert outcome == {case.review_id: ReplyStatus.PENDING}
    assert apology_mails(rt) == []
    # Died after the mail's transaction committed: settled as published, no second mail.
    mailer.publish(review, reply)
    mailer.publish(review, reply)  # a replay of the same call owes the same row
    assert len(apology_mails(rt)) == 1
    left_publishing()
    outcome = recover_stale(rt.engine, lambda p: platform_for(rt, p), timedelta(minutes=15), utcnow())
    assert outcome == {case.review_id: ReplyStatus.PUBLISHED}
    assert len(apology_mails(rt)) == 1


def test_a_private_reply_without_a_case_is_refused_not_mailed(env):
    rt, own, client, _ = env
    from tests.reviews.helpers import add_review

    review_id = add_review(rt.engine, platform="private", platform_review_id="forged")
    store.enqueue_reply(rt.engine, review_id, "Hello, sorry about that, we will send a replacement.", OWNER)
    result = publish.fn(review_id)
    assert result["status"] == "failed" and "without a recovery case" in result["error"]
    assert apology_mails(rt) == []


def test_the_private_platform_cannot_be_sent_in_by_a_review_webhook():
    with pytest.raises(ValueError, match="reserved"):
        intake.ReviewPayload.model_validate(
            {
                "platform": " Private ",
                "review_id": "x",
                "rating": 1,
                "body": "b",
                "author": "a",
                "created_at": "2026-12-01T00:00:00Z",
            }
        )


def test_review_escalation_leaves_private_replies_to_their_case(env):
    from aftercare.reviews.notify import escalate_overdue

    rt, own, client, _ = env
    _, case = opened_case(rt, client)
    drafted(rt, own, case)
    later = utcnow() + timedelta(days=3)
    assert escalate_overdue(rt.engine, intake.reviews_policy(own.policies_dir), own, rt.renderer, later) == []


def test_the_guard_policy_is_the_public_one_with_the_private_remedies():
    from aftercare.settings import PROJECT_ROOT

    reviews = intake.reviews_policy(PROJECT_ROOT / "policies")
    recovery = load_recovery_policy(PROJECT_ROOT / "policies")
    guard = apology.guard_policy(reviews, recovery)
    assert guard.reply.remedies == recovery.private_remedies
    assert guard.reply.banned == reviews.reply.banned and guard.triage == reviews.triage
    assert re.fullmatch(r"reviews-.+\+recovery-.+", guard.version)
    assert guarded_from_stored  # the stored drafts are read back by the same code as public ones
