"""Small builders for review tests: every value a test depends on is passed in the test itself."""

from __future__ import annotations

from typing import Any

from aftercare.reviews.drafting import build_reply_request
from aftercare.reviews.models import CustomerPrivate, OrderFacts, ProductFacts, ReplyRequest, Review
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.triage import triage

SHOP = "うつわ屋 Aftercare"
PRODUCT = ProductFacts(title="Arita mug")
CUSTOMER = CustomerPrivate(
    full_name="Hanako Yamada",
    email="hanako.yamada@example.net",
    phone="090-1234-5678",
    address_parts=("1-2-3 Jingumae", "Shibuya-ku", "150-0001"),
)


def make_request(
    policy: ReviewsPolicy,
    text: str,
    *,
    rating: int | None = 2,
    display_name: str | None = "Hanako",
    order: OrderFacts | None = None,
    private: CustomerPrivate | None = CUSTOMER,
    product: ProductFacts = PRODUCT,
    **review: Any,
) -> ReplyRequest:
    r = Review(id=review.pop("id", "rev-1"), text=text, rating=rating, display_name=display_name, **review)
    return build_reply_request(
        r,
        triage(r, policy=policy),
        product=product,
        order=order,
        shop_name=SHOP,
        policy=policy,
        private=private,
    )
