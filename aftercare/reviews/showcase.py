"""The reviews our own form collected, as the public product page shows them, and their moderation.

Every review of a product is shown, whatever its rating, its triage, or whether the shop has answered
it: hiding or demoting reviews by sentiment is what 16 CFR 465.7(b) forbids. The one thing that
hides a review is moderation, and moderation takes only two reasons, abuse and personal data
(`ModerationReason`; the database refuses any other), whatever the rating. Contact details in the
text are masked on the way out for every review alike (aftercare/reviews/masking.py), and every page
escapes the text."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.errors import AftercareError
from aftercare.models import (
    ModerationReason,
    OrderLine,
    ReplyStatus,
    Review,
    ReviewModeration,
    ReviewReply,
)
from aftercare.reviews.masking import mask_contacts

PLATFORM = "own"
# How many reviews one page lists (the summary counts them all).
PAGE_SIZE = 100


def product_ref_ok(ref: str) -> bool:
    """A product ref we look up: what product_ref_of makes (<= 255 characters, no control)."""
    return 0 < len(ref) <= 255 and ref.isprintable()


class ModerationRefused(AftercareError):
    """Moderation for a reason it may not take (a rating, a tone, a complaint)."""


def moderate(
    engine: Engine,
    review_id: int,
    *,
    action: str,
    reason: str,
    moderator: str,
    now: datetime,
    note: str | None = None,
) -> ReviewModeration:
    """Hide a review from the public pages (`hide`) or show it again (`show`), for abuse or personal
    data only: any other reason is refused here, and by the database."""
    if action not in ("hide", "show"):
        raise ModerationRefused(f"action {action!r}: hide or show")
    if reason not in {r.value for r in ModerationReason}:
        raise ModerationRefused(
            f"reason {reason!r}: a review is hidden only for abuse or personal data, never for its rating "
            "or tone (16 CFR 465.7(b))"
        )
    if not moderator.strip():
        raise ModerationRefused("name the moderator")
    with Session(engine, expire_on_commit=False) as session:
        if session.get(Review, review_id) is None:
            raise ModerationRefused(f"no review {review_id}")
        row = ReviewModeration(
            review_id=review_id,
            action=action,
            reason=reason,
            moderator=moderator.strip()[:255],
            note=note,
            decided_at=now,
        )
        session.add(row)
        session.commit()
        return row


def hidden_ids(session: Session, review_ids: list[int]) -> set[int]:
    """The reviews among `review_ids` whose newest moderation hides them."""
    latest: dict[int, str] = {}
    if not review_ids:
        return set()
    for row in session.exec(
        select(ReviewModeration)
        .where(ReviewModeration.review_id.in_(review_ids))  # type: ignore[attr-defined]
        .order_by(ReviewModeration.id)  # type: ignore[arg-type]
    ):
        latest[row.review_id] = row.action
    return {rid for rid, action in latest.items() if action == "hide"}


@dataclass
class Summary:
    count: int = 0
    average: float | None = None
    per_star: dict[int, int] = field(default_factory=lambda: dict.fromkeys(range(5, 0, -1), 0))


@dataclass
class Shown:
    product_title: str | None
    summary: Summary
    reviews: list[dict[str, Any]]


def product_reviews(engine: Engine, product_ref: str, *, limit: int = PAGE_SIZE) -> Shown:
    """The product's reviews as the public page shows them: every one not hidden by moderation,
    newest first, its contact details masked, with the shop's published reply; and the summary."""
    with Session(engine) as session:
        rows = list(
            session.exec(
                select(Review)
                .where(Review.platform == PLATFORM, Review.product_ref == product_ref)
                .order_by(Review.source_created_at.desc(), Review.id.desc())  # type: ignore[attr-defined]
            )
        )
        hidden = hidden_ids(session, [r.id for r in rows if r.id is not None])
        visible = [r for r in rows if r.id not in hidden]
        replies = {
            reply.review_id: reply
            for reply in session.exec(
                select(ReviewReply).where(
                    ReviewReply.review_id.in_([r.id for r in visible[:limit]]),  # type: ignore[attr-defined]
                    ReviewReply.status == ReplyStatus.PUBLISHED,
                )
            )
        }
        title = session.exec(
            select(OrderLine.title)
            .where((OrderLine.sku == product_ref) | (OrderLine.title == product_ref))
            .order_by(OrderLine.id.desc())  # type: ignore[union-attr]
            .limit(1)
        ).first()
    summary = Summary(count=len(visible))
    for r in visible:
        summary.per_star[max(1, min(5, r.rating))] += 1
    if visible:
        summary.average = round(sum(max(1, min(5, r.rating)) for r in visible) / len(visible), 1)
    reviews = [
        {
            "rating": max(1, min(5, r.rating)),
            "title": mask_contacts(r.title),
            "author": mask_contacts(r.author_display_name),
            "created_at": r.source_created_at,
            "body": mask_contacts(r.body),
            "reply": replies[r.id].text if r.id in replies else None,
        }
        for r in visible[:limit]
    ]
    return Shown(title, summary, reviews)
