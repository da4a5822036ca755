"""What drafting, checking and deciding on a reply to one review need, read from the database: the
review, the drafter's request (the order's facts, the product, no personal data), the reviewer's
private details (for the personal-data check only) and the policy. Shared by the review-reply flow
and the approval page, so a decision is checked the same way wherever it is made."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from aftercare.models import Review as ReviewRow
from aftercare.policies import ShippingPolicy
from aftercare.reviews import store
from aftercare.reviews.approval import ReviewParties, reply_request, review_parties
from aftercare.reviews.guardrails import GuardrailContext
from aftercare.reviews.models import ReplyRequest
from aftercare.reviews.policy import ReviewsPolicy


@dataclass(frozen=True)
class DraftContext:
    review: ReviewRow
    request: ReplyRequest
    parties: ReviewParties
    policy: ReviewsPolicy

    @property
    def guardrails(self) -> GuardrailContext:
        return GuardrailContext(request=self.request, policy=self.policy, private=self.parties.private)


def draft_context(
    engine: Engine, review_id: int, *, policy: ReviewsPolicy, shipping: ShippingPolicy, shop_name: str
) -> DraftContext:
    """Everything drafting and checking a reply to this review needs, read from the database."""
    review = store.get_review(engine, review_id)
    if review is None:
        raise store.ReviewNotFound(f"no review with id {review_id}")
    parties = review_parties(engine, review)
    facts = store.order_facts(engine, review, shipping=shipping)
    request = reply_request(review, order=facts, parties=parties, policy=policy, shop_name=shop_name)
    return DraftContext(review=review, request=request, parties=parties, policy=policy)
