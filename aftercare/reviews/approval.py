"""A person approves every public reply: what they are shown, what they may decide, and what each
decision means. No Prefect here: the flow wraps `DecisionForm` in a `RunInput` and calls these.

An approver picks one action:

- `approve`: publish the stored draft as it is (refused when the draft failed a check: edit it);
- `edit`: publish `edited_text` instead, which must pass the same guardrails as a draft;
- `redraft`: draft again, following `instructions`;
- `reject`: publish nothing, for `reason`.

A decision that cannot be applied (unknown approver, empty edit, an edit that fails a check...)
raises `DecisionRefused`, whose message is shown to the approver in the form they resume again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.errors import AftercareError
from aftercare.models import Customer, Order, OrderLine
from aftercare.models import Review as ReviewRow
from aftercare.reviews.drafting import build_reply_request
from aftercare.reviews.guardrails import GuardedDraft, GuardrailContext, GuardrailResult, check
from aftercare.reviews.models import (
    CustomerPrivate,
    Draft,
    DraftReply,
    OrderFacts,
    ProductFacts,
    ReplyRequest,
    Review,
    TriageResult,
)
from aftercare.reviews.policy import ApprovalPolicy, ReviewsPolicy, canonical_approver
from aftercare.reviews.text import fenced, inert_inline

Action = Literal["approve", "edit", "redraft", "reject"]
ACTIONS: tuple[Action, ...] = ("approve", "edit", "redraft", "reject")
MAX_NOTE = 2000


class DecisionRefused(AftercareError):
    """The approver's input cannot be applied; the message says what to change. The run keeps
    waiting for a corrected decision."""


class DecisionForm(BaseModel):
    """The fields of the approval form (Prefect renders it from this schema)."""

    approver: str = Field(
        default="",
        max_length=320,
        description="Your email address, as listed under approval.approvers in policies/reviews.yaml.",
    )
    action: Action = Field(
        default="approve",
        description="approve: publish the draft as shown. edit: publish edited_text instead. "
        "redraft: draft again following instructions. reject: publish nothing (give a reason).",
    )
    edited_text: str = Field(
        default="",
        max_length=4000,
        description="For edit: the full reply to publish (it is checked like a draft). Leave it as "
        "the draft for approve.",
    )
    instructions: str = Field(
        default="",
        max_length=MAX_NOTE,
        description="For redraft: what the new draft should do differently.",
    )
    reason: str = Field(
        default="",
        max_length=MAX_NOTE,
        description="For reject: why no reply is published (kept with the decision).",
    )


@dataclass(frozen=True)
class Resolution:
    """A decision that can be applied: who decided what, and the text to publish (approve/edit)."""

    approver: str
    action: Action
    draft_id: int
    text: str | None = None
    instructions: str | None = None
    reason: str | None = None
    checks: list[GuardrailResult] = field(default_factory=list)

    @property
    def publishes(self) -> bool:
        return self.action in ("approve", "edit")

    def guardrails_json(self) -> list[dict[str, Any]]:
        return [c.model_dump() for c in self.checks]


# -- the context a draft is made and checked in ---------------------------------------------------


@dataclass(frozen=True)
class ReviewParties:
    """What the reply may mention (the product) and what it must not (the customer's details)."""

    product_title: str
    private: CustomerPrivate


def review_parties(engine: Engine, review: ReviewRow) -> ReviewParties:
    """The product's title (the order line the review names, else the platform's reference) and the
    reviewer's personal data from the linked order and customer, for the personal-data check."""
    with Session(engine) as session:
        order = session.get(Order, review.order_id) if review.order_id else None
        customer_id = review.customer_id or (order.customer_id if order else None)
        customer = session.get(Customer, customer_id) if customer_id else None
        lines = (
            list(
                session.exec(
                    select(OrderLine).where(OrderLine.order_id == order.id).order_by(OrderLine.position)
                )
            )
            if order is not None
            else []
        )
    ref = (review.product_ref or "").strip()
    title = next((ln.title for ln in lines if ref and ref in (ln.sku, ln.title, str(ln.shopify_id))), None)
    if title is None:
        title = ref or (lines[0].title if len(lines) == 1 else "")
    name = " ".join(p for p in ((customer.first_name, customer.last_name) if customer else ()) if p) or None
    address = (order.shipping_address if order else None) or {}
    if not name and address.get("name"):
        name = str(address["name"])
    parts = tuple(
        str(address[k])
        for k in ("address1", "address2", "city", "zip")
        if address.get(k) and len(str(address[k])) > 1
    )
    email = (customer.email if customer else None) or (order.email if order else None)
    phone = address.get("phone") or None
    return ReviewParties(
        product_title=title or "our product",
        private=CustomerPrivate(full_name=name, email=email, phone=phone, address_parts=parts),
    )


def reply_request(
    review: ReviewRow,
    *,
    order: OrderFacts | None,
    parties: ReviewParties,
    policy: ReviewsPolicy,
    shop_name: str,
) -> ReplyRequest:
    """The drafter's input for a stored review (text redacted of the reviewer's own details)."""
    text = "\n".join(p for p in (review.title, review.body) if p)
    core = Review(
        id=str(review.id),
        text=text[:20_000],
        rating=review.rating,
        lang=review.language,
        display_name=(review.author_display_name or None) and review.author_display_name[:100],
    )
    triage = TriageResult(
        id=str(review.id),
        negative=review.triage_negative,
        score=review.triage_score,
        reasons=list(review.triage_reasons or []),
        lang=review.language,
    )
    return build_reply_request(
        core,
        triage,
        product=ProductFacts(title=parties.product_title),
        order=order,
        shop_name=shop_name,
        policy=policy,
        private=parties.private,
    )


def guarded_from_stored(stored: Any, policy_version: str) -> GuardedDraft:
    """A stored draft row (text, language, source, guardrails...) as the `GuardedDraft` it was."""
    reply = DraftReply(
        reply_text=stored.text,
        language=stored.language,
        apologises=bool(stored.apologises),
        promised_actions=list(stored.promised_actions or []),
        risk_notes=list(stored.risk_notes or []),
    )
    source = stored.source if stored.source in ("llm", "template", "fallback") else "template"
    fallback_reason = next(
        (n.removeprefix("LLM not used: ") for n in reply.risk_notes if n.startswith("LLM not used: ")), None
    )
    draft = Draft(reply=reply, source=source, fallback_reason=fallback_reason, policy_version=policy_version)
    checks = [GuardrailResult.model_validate(c) for c in (stored.guardrails or [])]
    return GuardedDraft(draft=draft, checks=checks, needs_attention=bool(stored.needs_attention), attempts=[])


# -- deciding ------------------------------------------------------------------------------------


def check_edit(text: str, guarded: GuardedDraft, context: GuardrailContext) -> list[GuardrailResult]:
    """The guardrails on an approver's own text, in the draft's language."""
    reply = DraftReply(
        reply_text=text,
        language=guarded.draft.reply.language,
        apologises=guarded.draft.reply.apologises,
        promised_actions=[],
        risk_notes=[],
    )
    return check(reply, context)


def resolve_decision(
    form: DecisionForm,
    *,
    draft_id: int,
    guarded: GuardedDraft,
    approval: ApprovalPolicy,
    context: GuardrailContext,
) -> Resolution:
    """Validate one decision against the policy and the draft it was made on; raise
    `DecisionRefused` (with every problem found) when it cannot be applied."""
    approver = canonical_approver(form.approver)
    problems: list[str] = []
    if not approver:
        problems.append("approver is empty: give your email address")
    elif not approval.is_approver(approver):
        problems.append(f"{approver!r} is not an approver in policies/reviews.yaml")
    if form.action not in ACTIONS:  # the form's schema already refuses this; a direct call may not
        problems.append(f"unknown action {form.action!r} (one of {', '.join(ACTIONS)})")
    draft_text = guarded.draft.reply.reply_text
    edited = form.edited_text.strip()
    checks: list[GuardrailResult] = list(guarded.checks)
    text: str | None = None
    if form.action == "approve":
        if edited and edited != draft_text.strip():
            problems.append("edited_text differs from the draft: choose edit to publish your text")
        if not guarded.publishable:
            failed = ", ".join(c.name for c in guarded.failures) or "needs attention"
            problems.append(
                f"the draft failed checks ({failed}) and cannot be approved as it is: edit it or redraft"
            )
        text = draft_text
    elif form.action == "edit":
        if not edited:
            problems.append("edit needs edited_text: the full reply to publish")
        else:
            checks = check_edit(edited, guarded, context)
            failed = [c for c in checks if not c.passed]
            if failed:
                problems.append(
                    "edited_text fails the guardrails: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
                )
            text = edited
    elif form.action == "redraft" and not form.instructions.strip():
        problems.append("redraft needs instructions: what the new draft should do differently")
    elif form.action == "reject" and not form.reason.strip():
        problems.append("reject needs a reason")
    if problems:
        raise DecisionRefused("; ".join(problems))
    return Resolution(
        approver=approver,
        action=form.action,
        draft_id=draft_id,
        text=text if form.action in ("approve", "edit") else None,
        instructions=form.instructions.strip() or None if form.action == "redraft" else None,
        reason=form.reason.strip() or None if form.action == "reject" else None,
        checks=checks if form.action in ("approve", "edit") else [],
    )


def status_after(resolution: Resolution) -> str:
    """The review status a decision leads to (before any publishing happens)."""
    return {"approve": "approved", "edit": "approved", "redraft": "drafting", "reject": "rejected"}[
        resolution.action
    ]


def redraft_feedback(instructions: str) -> list[str]:
    """What a redraft is told: the approver's instructions, marked as theirs."""
    return [f"approver instructions (follow them within the policy): {instructions}"]


# -- what the approver sees ---------------------------------------------------------------------


def _stars(rating: int | None) -> str:
    return "no rating" if rating is None else "★" * rating + "☆" * (5 - rating) + f" ({rating}/5)"


def _order_facts(facts: OrderFacts) -> dict[str, str]:
    known = {
        "order": facts.order_name,
        "shipped late": None
        if facts.shipped_late is None
        else (
            f"yes, {facts.days_late} days"
            if facts.shipped_late and facts.days_late
            else ("yes" if facts.shipped_late else "no")
        ),
        "delivered": None if facts.delivered is None else ("yes" if facts.delivered else "no"),
        "refunded": None if facts.refunded is None else ("yes" if facts.refunded else "no"),
        "cancelled": None if facts.cancelled is None else ("yes" if facts.cancelled else "no"),
    }
    return {k: v for k, v in known.items() if v is not None}


def order_facts_lines(facts: OrderFacts | None) -> list[str]:
    """The order's facts as plain list lines (not escaped: for text, not for markdown)."""
    if facts is None:
        return ["- not linked to an order of ours"]
    return [f"- {k}: {v}" for k, v in _order_facts(facts).items()] or ["- nothing known"]


def approval_markdown(
    review: ReviewRow,
    *,
    order: OrderFacts | None,
    guarded: GuardedDraft,
    approval: ApprovalPolicy,
    error: str | None = None,
    deadline: datetime | None = None,
) -> str:
    """Everything an approver needs in the form: the review, the order's facts, the draft with
    every guardrail result and where it came from, and how to decide.

    Every value a reviewer, the platform, the model or a previous form input could have written is
    inert (the approver must not be shown a live link, image, heading or fake banner): the review's
    title and body in a fence it cannot close (`fenced`), everything else escaped (`inert_inline`)."""
    lines: list[str] = []
    if error:
        lines += [
            f"> **Your last decision was not applied:** {inert_inline(error)}",
            "",
            "Correct it and submit again.",
            "",
        ]
    kind = "negative" if review.triage_negative else "positive"
    reasons = "; ".join(review.triage_reasons or []) or "n/a"
    platform, review_ref = inert_inline(review.platform), inert_inline(review.platform_review_id)
    lines += [
        f"## Reply to {platform} review {review_ref} ({kind})",
        "",
        f"- rating: {_stars(review.rating)}",
        f"- reviewer shows as: {inert_inline(review.author_display_name or '(no name)')}",
        f"- language: {inert_inline(review.language or 'unknown')}",
        f"- triage: {inert_inline(reasons)}",
    ]
    if deadline is not None:
        lines.append(f"- decide by: {deadline:%Y-%m-%d %H:%M} UTC (then it is escalated)")
    lines += [
        "",
        "### The review",
        "",
        fenced("\n".join(p for p in (review.title, review.body) if p) or "(no text)"),
    ]
    if order is None:
        lines += ["", "### The order", "", *order_facts_lines(None)]
    else:
        # the order's name comes from the shop platform; the rest are our yes/no facts
        facts = [f"- {k}: {inert_inline(v) if k == 'order' else v}" for k, v in _order_facts(order).items()]
        lines += ["", "### The order", "", *(facts or ["- nothing known"])]
    lines += ["", "### The draft", "", guarded.approver_markdown()]
    lines += [
        "",
        "### Decide",
        "",
        "- **approve**: publish the draft as shown"
        + ("" if guarded.publishable else " (not possible: it failed a check; edit or redraft)"),
        "- **edit**: put the full reply in *edited_text*; it is checked like a draft before publishing",
        "- **redraft**: say what should change in *instructions*",
        "- **reject**: publish nothing; say why in *reason*",
        "",
        f"Approvers: {', '.join(approval.approvers) or '(none configured)'}",
    ]
    return "\n".join(lines)
