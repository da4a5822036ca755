"""The private apology of a recovery case, on the review-reply machinery: the case's reply row (a
review on the `private` platform) is drafted, checked, approved, edited or rejected exactly as a
public reply is (flows/reviews.py, the approval page, the Prefect form), with three differences
chosen here:

- what the drafter sees and writes: the survey's score, ticked reasons and comment (redacted of the
  customer's own details, never their name, email or order number), the order's facts, and the
  `recovery_apology` prompt or template (seed 004: say what will be done, ask everything needed in
  one message);
- what the guardrails allow: the same checks as a public reply, with the remedies the recovery
  policy allows in private (say, a replacement, a refund, a coupon) and the mail's own length;
- where an approved reply goes: not to a platform but to the customer, as one transactional
  `complaint_reply` mail through the outbox (`PrivateApologyMail`, the platform `publish_reply`
  calls). The mail's touchpoint is unique per survey and its outbox row unique per touchpoint, the
  case is marked answered in the same transaction, and the reply row is claimed before: replays,
  retries and a worker killed mid-way mail the customer once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from aftercare.models import (
    COMPLAINT_REPLY,
    PRIVATE_REPLY_PLATFORM,
    SurveyResponse,
)
from aftercare.models import Review as ReviewRow
from aftercare.policies import ShippingPolicy
from aftercare.recovery.policy import RecoveryPolicy, load_recovery_policy
from aftercare.recovery.store import CaseNotFound, case_of_reply
from aftercare.reviews import context, store
from aftercare.reviews.approval import review_parties
from aftercare.reviews.context import DraftContext
from aftercare.reviews.drafting import Drafter, build_drafter, redact
from aftercare.reviews.models import OrderFactsModel, ReplyRequest
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.settings import LLMSettings
from aftercare.reviews.text import normalise_lang
from aftercare.settings import Settings
from aftercare.surveys.policy import SCALES, SurveyPolicy

KIND = COMPLAINT_REPLY  # policies/contact.yaml: transactional
PROMPT = "recovery_apology"
TEMPLATE = "recovery_apology.txt"


def is_private(review: ReviewRow) -> bool:
    return review.platform == PRIVATE_REPLY_PLATFORM


def guard_policy(reviews: ReviewsPolicy, recovery: RecoveryPolicy) -> ReviewsPolicy:
    """The reviews policy an apology is drafted and checked under: every guardrail of a public
    reply, with the remedies allowed in private and the mail's length bounds."""
    reply = reviews.reply.model_copy(
        update={"remedies": recovery.private_remedies, "length": {**reviews.reply.length, **recovery.length}}
    )
    return reviews.model_copy(
        update={"reply": reply, "version": f"{reviews.version}+{recovery.version}"[:32]}
    )


def draft_context(
    engine: Engine,
    review: ReviewRow,
    *,
    reviews: ReviewsPolicy,
    recovery: RecoveryPolicy,
    shipping: ShippingPolicy,
    shop_name: str,
) -> DraftContext:
    """What drafting and checking the case's apology need: the comment (redacted), the order's
    facts and products, the customer's private details (for the personal-data check only)."""
    assert review.id is not None
    policy = guard_policy(reviews, recovery)
    parties = review_parties(engine, review)
    facts = store.order_facts(engine, review, shipping=shipping)
    lang = normalise_lang(review.language)
    language = lang if lang in policy.reply.languages else policy.reply.languages[0]
    request = ReplyRequest(
        review_id=str(review.id),
        review_text=redact(review.body or "", parties.private),
        rating=None,  # the survey's score reaches the drafter as `survey_facts`, on its own scale
        language=language,  # type: ignore[arg-type]
        review_language=lang,
        display_name=None,  # the mail's salutation is added when it is sent; no name goes to a model
        negative=True,
        product_title=parties.product_title,
        order=OrderFactsModel.of(facts) if facts is not None else None,
        shop_name=shop_name,
    )
    return DraftContext(review=review, request=request, parties=parties, policy=policy)


def survey_facts(engine: Engine, review: ReviewRow, surveys: SurveyPolicy, locale: str) -> dict[str, Any]:
    """The score on its scale and the reasons the customer ticked (in the reply's language)."""
    assert review.id is not None
    with Session(engine) as session:
        case = case_of_reply(session, review.id)
        if case is None:
            raise CaseNotFound(f"review {review.id} is a private reply without a recovery case")
        response = session.get(SurveyResponse, case.response_id)
    scale = SCALES[case.scale]
    labels = {r.code: r.label(locale) for r in surveys.reasons}
    ticked = (response.reasons or []) if response is not None else []
    return {
        "score": case.score,
        "low": scale.low,
        "high": scale.high,
        "reasons": [labels.get(c, c) for c in ticked],
    }


def promised(recovery: RecoveryPolicy) -> list[str]:
    """What the template apology promises, as the approver sees it listed."""
    remedies = recovery.private_remedies
    actions = []
    if remedies.replacement and remedies.refund:
        actions.append("a replacement or a refund, as the customer chooses")
    elif remedies.replacement:
        actions.append("a replacement")
    elif remedies.refund:
        actions.append("a refund")
    if remedies.discount_percent_max:
        actions.append(f"a coupon of {remedies.discount_percent_max}% off the next order")
    actions.append("a follow-up from the person looking after the order once the customer replies")
    return actions


def apology_drafter(
    llm: LLMSettings,
    ctx: DraftContext,
    *,
    engine: Engine,
    recovery: RecoveryPolicy,
    surveys: SurveyPolicy,
    settings: Settings,
) -> Drafter:
    """The review drafters, asked for an apology: the `recovery_apology` prompt (LLM) or template,
    with the survey's facts and the remedies allowed in private."""
    remedies = recovery.private_remedies
    extra = {
        "survey": survey_facts(engine, ctx.review, surveys, ctx.request.language),
        "remedies": {
            "refund": remedies.refund,
            "replacement": remedies.replacement,
            "discount_percent_max": remedies.discount_percent_max,
            "compensation": remedies.compensation,
        },
    }
    return build_drafter(
        llm,
        ctx.policy,
        templates_dir=settings.templates_dir,
        prompt=PROMPT,
        template=TEMPLATE,
        extra=extra,
        promised_actions=promised(recovery),
    )


def reply_context(
    engine: Engine,
    review_id: int,
    *,
    reviews: ReviewsPolicy,
    shipping: ShippingPolicy,
    shop_name: str,
    policies_dir: Path,
) -> DraftContext:
    """The draft context of any reply row: a case's apology (private platform) or a public reply
    (`reviews.context.draft_context`). The flow, its tasks and the approval page all ask here, so
    an apology is drafted, shown and its edits checked under the same rules wherever it is decided."""
    review = store.get_review(engine, review_id)
    if review is None:
        raise store.ReviewNotFound(f"no review with id {review_id}")
    if not is_private(review):
        return context.draft_context(
            engine, review_id, policy=reviews, shipping=shipping, shop_name=shop_name
        )
    return draft_context(
        engine,
        review,
        reviews=reviews,
        recovery=load_recovery_policy(policies_dir),
        shipping=shipping,
        shop_name=shop_name,
    )
