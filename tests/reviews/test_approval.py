"""The approval decision: who may decide, what each action needs, what the approver is shown, and
the pure logic applying a decision; plus drafting into the store with an approver's instructions."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from sqlmodel import Session, select

from aftercare.errors import ConfigError
from aftercare.models import Order, OrderLine
from aftercare.models import Review as ReviewRow
from aftercare.processing import process_row
from aftercare.reviews import store
from aftercare.reviews.approval import (
    ACTIONS,
    DecisionForm,
    DecisionRefused,
    approval_markdown,
    guarded_from_stored,
    resolve_decision,
    review_parties,
    status_after,
)
from aftercare.reviews.guardrails import GuardedDraft, GuardrailContext, check, draft_with_guardrails
from aftercare.reviews.models import Draft, DraftReply, OrderFacts
from aftercare.reviews.policy import ApprovalPolicy, ReviewsPolicy, load_reviews_policy
from aftercare.reviews.settings import LLMSettings
from aftercare.settings import PROJECT_ROOT
from tasks.reviews import DecisionInput, _Instructed, make_draft
from tests.factories import deliver, order_payload
from tests.reviews.factories import CUSTOMER, make_request
from tests.reviews.helpers import add_review

GOOD = (
    "Dear Hanako, thank you for your review of the Arita mug. We are sorry it arrived chipped. "
    "Please write to support@example.com so that we can look into this with you."
)
OWNER = "owner@example.com"


@pytest.fixture
def ctx(policy: ReviewsPolicy) -> GuardrailContext:
    return GuardrailContext(
        request=make_request(policy, "The mug arrived chipped.", rating=1), policy=policy, private=CUSTOMER
    )


def guarded(
    ctx: GuardrailContext, text: str = GOOD, source: str = "llm", notes: list[str] | None = None
) -> GuardedDraft:
    reply = DraftReply(
        reply_text=text, language="en", apologises=True, promised_actions=[], risk_notes=notes or []
    )
    draft = Draft(reply=reply, source=source, policy_version=ctx.policy.version)  # type: ignore[arg-type]
    checks = check(draft, ctx)
    return GuardedDraft(
        draft=draft, checks=checks, needs_attention=any(not c.passed for c in checks), attempts=[]
    )


def decide(ctx: GuardrailContext, g: GuardedDraft, **form: str):  # type: ignore[no-untyped-def]
    return resolve_decision(
        DecisionForm(**form), draft_id=7, guarded=g, approval=ctx.policy.approval, context=ctx
    )


# -- the policy -----------------------------------------------------------------------------------


def test_shipped_policy_names_approvers_an_escalation_contact_and_a_24_hour_window(policy: ReviewsPolicy):
    approval = policy.approval
    assert approval.approvers and all("@" in a for a in approval.approvers)
    assert approval.escalation_contact and approval.escalation_contact not in approval.approvers
    assert approval.window_hours == 24
    assert approval.expire_after_hours > approval.window_hours
    assert approval.is_approver("  Owner@Example.COM ") and not approval.is_approver("mallory@example.com")


@pytest.mark.parametrize(
    ("approval", "message"),
    [
        ({"approvers": ["not-an-email"]}, "not an email address"),
        ({"approvers": ["a@example.com", "A@example.com"]}, "twice"),
        ({"approvers": ["a@example.com"], "window_hours": 48, "expire_after_hours": 24}, "must be longer"),
        ({"approvers": ["a@example.com"], "slack_webhook_url": "ftp://x"}, "http"),
        ({"approvers": ["a@example.com"], "surprise": 1}, "is invalid"),
    ],
)
def test_a_broken_approval_section_is_a_config_error(tmp_path: Path, approval: dict, message: str):
    data = yaml.safe_load((PROJECT_ROOT / "policies" / "reviews.yaml").read_text(encoding="utf-8"))
    data["approval"] = approval
    (tmp_path / "reviews.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_reviews_policy(tmp_path)


def test_without_an_escalation_contact_the_approvers_are_told():
    approval = ApprovalPolicy(approvers=["a@example.com", "b@example.com"])
    assert approval.escalation_recipients == ["a@example.com", "b@example.com"]


# -- the form -------------------------------------------------------------------------------------


def test_the_form_offers_four_actions_and_describes_every_field():
    schema = DecisionInput.model_json_schema()
    props = schema["properties"]
    assert set(props) >= {"approver", "action", "edited_text", "instructions", "reason"}
    action = props["action"]
    assert action["enum"] == list(ACTIONS)
    assert all(
        props[name].get("description")
        for name in ("approver", "action", "edited_text", "instructions", "reason")
    )
    form = DecisionInput.with_initial_data(description="# the review", edited_text="draft")
    assert form._description == "# the review"
    assert form(approver=OWNER).edited_text == "draft"


# -- deciding -------------------------------------------------------------------------------------


def test_approve_publishes_the_draft_as_it_is(ctx: GuardrailContext):
    g = guarded(ctx)
    assert g.publishable
    res = decide(ctx, g, approver=" Owner@Example.com", action="approve", edited_text=GOOD)
    assert (res.approver, res.action, res.text, res.draft_id) == (OWNER, "approve", GOOD, 7)
    assert res.publishes and status_after(res) == "approved"
    assert [c.name for c in res.checks] == [c.name for c in g.checks]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (
            {"approver": "mallory@example.com", "action": "approve"},
            "'mallory@example.com' is not an approver",
        ),
        ({"approver": "", "action": "approve"}, "approver is empty"),
        ({"approver": OWNER, "action": "approve", "edited_text": "Something else entirely."}, "choose edit"),
        ({"approver": OWNER, "action": "edit", "edited_text": "   "}, "edit needs edited_text"),
        ({"approver": OWNER, "action": "redraft", "instructions": " "}, "redraft needs instructions"),
        ({"approver": OWNER, "action": "reject"}, "reject needs a reason"),
    ],
)
def test_decisions_that_cannot_be_applied_are_refused_with_a_reason(ctx: GuardrailContext, form, message):
    with pytest.raises(DecisionRefused, match=message):
        decide(ctx, guarded(ctx), **form)


def test_every_problem_is_reported_at_once(ctx: GuardrailContext):
    with pytest.raises(DecisionRefused) as err:
        decide(ctx, guarded(ctx), approver="mallory@example.com", action="reject")
    assert "not an approver" in str(err.value) and "reject needs a reason" in str(err.value)


def test_a_draft_that_failed_a_check_cannot_be_approved_as_it_is(ctx: GuardrailContext):
    bad = guarded(ctx, GOOD + " We will refund you in full.")
    assert not bad.publishable
    with pytest.raises(DecisionRefused, match=r"failed checks \(remedies_within_policy\)"):
        decide(ctx, bad, approver=OWNER, action="approve")
    # ...but a person can edit it into shape.
    res = decide(ctx, bad, approver=OWNER, action="edit", edited_text=GOOD)
    assert res.text == GOOD and all(c.passed for c in res.checks)


def test_an_edit_is_checked_like_a_draft(ctx: GuardrailContext):
    res = decide(ctx, guarded(ctx), approver=OWNER, action="edit", edited_text="  " + GOOD + " Thank you!  ")
    assert res.action == "edit" and res.text == GOOD + " Thank you!"
    assert res.checks and all(c.passed for c in res.checks)


@pytest.mark.parametrize(
    ("edited", "failing"),
    [
        (GOOD + " We will refund you in full.", "remedies_within_policy"),
        (GOOD + " We will email you at hanako.yamada@example.net.", "no_personal_data"),
        (GOOD + " See https://evil.example/win", "contacts_allow_listed"),
        ("Sorry.", "length"),
        (GOOD + " It was your fault.", "no_blaming"),
    ],
)
def test_an_edit_failing_a_guardrail_is_refused_and_names_the_check(ctx: GuardrailContext, edited, failing):
    with pytest.raises(DecisionRefused, match=f"edited_text fails the guardrails: .*{failing}"):
        decide(ctx, guarded(ctx), approver=OWNER, action="edit", edited_text=edited)


def test_redraft_and_reject_carry_their_notes_and_publish_nothing(ctx: GuardrailContext):
    redraft = decide(ctx, guarded(ctx), approver=OWNER, action="redraft", instructions=" Mention the glaze. ")
    assert (redraft.instructions, redraft.text, redraft.publishes) == ("Mention the glaze.", None, False)
    assert status_after(redraft) == "drafting"
    reject = decide(ctx, guarded(ctx), approver=OWNER, action="reject", reason="Spam review")
    assert (reject.reason, reject.text, reject.publishes, status_after(reject)) == (
        "Spam review",
        None,
        False,
        "rejected",
    )


# -- what the approver sees -----------------------------------------------------------------------


def _row(**kw) -> ReviewRow:  # type: ignore[no-untyped-def]
    values = {
        "id": 3,
        "platform": "judgeme",
        "platform_review_id": "jm-77",
        "rating": 2,
        "title": "Broken",
        "body": "Arrived broken ``` # injected heading",
        "author_display_name": "Sam",
        "language": "en",
        "triage_negative": True,
        "triage_reasons": ["rating 2 <= 2"],
        "source_created_at": None,
    }
    values.update(kw)
    return ReviewRow(**values)


def test_markdown_shows_the_review_order_draft_every_check_and_its_origin(ctx: GuardrailContext):
    g = guarded(
        ctx, GOOD + " We will refund you in full.", source="fallback", notes=["LLM not used: LLM timed out"]
    )
    g = guarded_from_stored(
        SimpleNamespace(
            text=g.draft.reply.reply_text,
            language="en",
            apologises=True,
            promised_actions=[],
            risk_notes=["LLM not used: LLM timed out"],
            source="fallback",
            guardrails=[c.model_dump() for c in g.checks],
            needs_attention=True,
        ),
        ctx.policy.version,
    )
    md = approval_markdown(
        _row(),
        order=OrderFacts(order_name="#1101", shipped_late=True, days_late=3, delivered=True, refunded=False),
        guarded=g,
        approval=ctx.policy.approval,
        error="'mallory@example.com' is not an approver",
    )
    # the error echoes form input: escaped, its address defanged (tests/reviews/test_approval_markdown.py)
    assert md.startswith(
        r"> **Your last decision was not applied:** \'mallory\@example\[\.\]com\' is not an approver"
    )
    assert r"judgeme review jm\-77 (negative)" in md and "★★☆☆☆" in md
    assert "````text\nBroken\nArrived broken ``` # injected heading\n````" in md  # a fence it cannot close
    assert r"- order: \#1101" in md and "- shipped late: yes, 3 days" in md and "- refunded: no" in md
    assert "from the reply template because the LLM failed" in md and "LLM failure: LLM timed out" in md
    for c in g.checks:
        assert f"| {c.name} | {'pass' if c.passed else '**FAIL**'} |" in md
    assert "| remedies_within_policy | **FAIL** |" in md
    assert "approve**: publish the draft as shown (not possible" in md
    assert OWNER in md


def test_markdown_for_a_review_without_an_order_and_a_passing_template_draft(ctx: GuardrailContext):
    md = approval_markdown(
        _row(), order=None, guarded=guarded(ctx, source="template"), approval=ctx.policy.approval
    )
    assert "not applied" not in md
    assert "- not linked to an order of ours" in md
    assert "from the reply template (all checks passed" in md
    assert "(not possible" not in md


# -- drafting into the store ----------------------------------------------------------------------


def test_a_redraft_tells_the_llm_the_approvers_instructions(policy, fake_llm, drafter):  # type: ignore[no-untyped-def]
    request = make_request(policy, "The mug arrived chipped.", rating=1)
    out = draft_with_guardrails(
        request,
        drafter=_Instructed(drafter, ["approver instructions: mention the hand-made glaze"]),
        policy=policy,
    )
    assert out.draft.source == "llm"
    assert "mention the hand-made glaze" in fake_llm.requests[-1].all_text


def test_make_draft_stores_a_checked_template_draft_with_its_instructions(rt):  # type: ignore[no-untyped-def]
    review_id = add_review(rt.engine, platform_review_id="r-store")
    row = make_draft(
        rt, review_id, instructions="shorter please", llm=LLMSettings(_env_file=None, base_url="", model="")
    )
    assert row.source == "template" and row.instructions == "shorter please" and row.attempt == 1
    assert not row.needs_attention and {g["name"] for g in row.guardrails} >= {"length", "no_personal_data"}
    assert "Dear Sam," in row.text
    again = make_draft(rt, review_id, llm=LLMSettings(_env_file=None, base_url="", model=""))
    assert again.attempt == 2 and store.latest_draft(rt.engine, review_id).id == again.id


def test_review_parties_come_from_the_linked_order_for_the_personal_data_check(rt):  # type: ignore[no-untyped-def]
    outcome = process_row(rt, deliver(rt.engine, order_payload("en-first")))
    assert outcome.order_id is not None
    with Session(rt.engine) as s:
        order = s.get(Order, outcome.order_id)
        line = s.exec(select(OrderLine).where(OrderLine.order_id == outcome.order_id)).first()
    assert order is not None and line is not None
    review_id = add_review(
        rt.engine, platform_review_id="r-linked", order_id=order.id, product_ref=line.sku or line.title
    )
    parties = review_parties(rt.engine, store.get_review(rt.engine, review_id))
    assert parties.product_title == line.title
    assert parties.private.email == order.email  # for the check, never for the model
    assert parties.private.full_name
