"""Approval links: each approver is mailed a signed link to our approval page for each draft, and a
decision made through it is recorded with the link used up, in one transaction.

A link is a row (`approval_links`, one per draft per approver) and a token. The token is signed with
`AFTERCARE_APPROVAL_SECRET` for the purpose "approval-link", expires with the policy's approval
window (`approval.expire_after_hours`, as the run's wait does), and names the review, the draft, the
approver (a hash of the address: a signed token is readable, not secret) and the row's random
nonce; the row must agree with every one of them. The token can be made again from the row (the
mail and the outcome page do), so it is never stored.

A link decides once: `decide` sets `used_at` with a compare-and-set (`UPDATE ... WHERE used_at IS
NULL`) and inserts the decision in the same transaction; a draft takes one decision (a unique key),
so of two posts through one link, or two approvers' links, or a link and the Prefect form, the first
to commit wins and the others find its outcome. No Prefect here: the page resumes the run."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from aftercare import signing
from aftercare.errors import AftercareError
from aftercare.models import (
    ApprovalLink,
    DecisionVia,
    Review,
    ReviewDecision,
    ReviewDraft,
    ReviewReply,
    ReviewStatus,
)
from aftercare.settings import Settings

if TYPE_CHECKING:  # the guardrails load the drafting stack; issuing links (the sweep) needs none of it
    from aftercare.reviews.guardrails import GuardrailResult

LINK_PURPOSE = "approval-link"
FORM_PURPOSE = "approval-form"


class LinkRefused(AftercareError):
    """The link cannot open the approval page; `status` is the HTTP status the page answers with."""

    status = 403
    kind = "invalid"


class LinkInvalid(LinkRefused):
    """Not a link we issued: forged, tampered with, cut short, or naming what its row does not."""


class LinkExpired(LinkRefused):
    """A link we issued, past the approval window."""

    status = 410
    kind = "expired"


class AlreadyDecided(AftercareError):
    """The draft was decided meanwhile (another approver, another link, or the Prefect form)."""


@dataclass(frozen=True)
class Client:
    """Where a decision on the page came from, as the web server saw it."""

    ip: str | None
    user_agent: str | None


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def issue(
    session: Session, *, review_id: int, draft_id: int, approver: str, expires_at: datetime, now: datetime
) -> ApprovalLink:
    """The approver's link for this draft, created in the caller's transaction unless it exists
    (then returned unchanged: a retried notification mails the same link)."""
    approver = approver.strip().lower()
    values = {
        "review_id": review_id,
        "draft_id": draft_id,
        "approver": approver,
        "nonce": secrets.token_urlsafe(24),
        "issued_at": now,
        "expires_at": expires_at,
    }
    stmt = (
        _insert(session)(ApprovalLink)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["draft_id", "approver"])
    )
    session.execute(stmt)
    link = session.exec(
        select(ApprovalLink).where(ApprovalLink.draft_id == draft_id, ApprovalLink.approver == approver)
    ).one()
    return link


def approver_tag(approver: str) -> str:
    """How a token names its approver."""
    # The token binds the approver without carrying their address (a signed token is readable).
    return hashlib.sha256(approver.encode()).hexdigest()[:16]


def token(settings: Settings, link: ApprovalLink) -> str:
    """The signed token of a link (made again from the row whenever it is needed)."""
    claims = {"r": link.review_id, "d": link.draft_id, "a": approver_tag(link.approver), "n": link.nonce}
    return signing.sign(
        settings.approval_secret.get_secret_value(), LINK_PURPOSE, claims, expires_at=link.expires_at
    )


def url(settings: Settings, link: ApprovalLink) -> str:
    """The page's address for this link, on the web app's public base URL."""
    return f"{settings.web_base_url.rstrip('/')}/approvals/{token(settings, link)}"


def read(engine: Engine, settings: Settings, raw: str, *, now: datetime) -> ApprovalLink:
    """The link a token names; `LinkInvalid` unless we signed it for an approval link and its row
    agrees with it, `LinkExpired` after its expiry. Whether it is still usable is `LinkState`'s."""
    try:
        claims = signing.verify(settings.approval_secret.get_secret_value(), LINK_PURPOSE, raw, now=now)
    except signing.TokenExpired as exc:
        raise LinkExpired(str(exc)) from exc
    except signing.TokenInvalid as exc:
        raise LinkInvalid(str(exc)) from exc
    nonce = claims.get("n")
    if not isinstance(nonce, str):
        raise LinkInvalid("the token names no link")
    with Session(engine) as session:
        link = session.exec(select(ApprovalLink).where(ApprovalLink.nonce == nonce)).first()
    if link is None:
        raise LinkInvalid("no such link")
    if (claims.get("r"), claims.get("d"), claims.get("a")) != (
        link.review_id,
        link.draft_id,
        approver_tag(link.approver),
    ):
        raise LinkInvalid("the token does not match its link")
    if now >= link.expires_at:
        raise LinkExpired(f"expired at {link.expires_at:%Y-%m-%d %H:%M} UTC")
    return link


def form_token(settings: Settings, link: ApprovalLink, cookie: str) -> str:
    """The page's anti-forgery token: bound to the link and to the browser's cookie value."""
    return signing.sign(
        settings.approval_secret.get_secret_value(),
        FORM_PURPOSE,
        {"n": link.nonce, "c": cookie},
        expires_at=link.expires_at,
    )


def form_token_ok(
    settings: Settings, link: ApprovalLink, cookie: str | None, raw: str | None, now: datetime
) -> bool:
    """Whether a posted form token was made by our page for this link, in this browser."""
    if not cookie or not raw:
        return False
    try:
        claims = signing.verify(settings.approval_secret.get_secret_value(), FORM_PURPOSE, raw, now=now)
    except signing.TokenInvalid:
        return False
    return claims == {"n": link.nonce, "c": cookie}


@dataclass(frozen=True)
class LinkState:
    """A link and where its review stands now."""

    link: ApprovalLink
    review: Review
    draft: ReviewDraft
    latest: ReviewDraft
    decision: ReviewDecision | None  # the decision on the link's draft, whoever made it
    reply: ReviewReply | None

    @property
    def superseded(self) -> bool:
        """A newer draft exists (the link's draft was redrafted)."""
        return self.latest.id != self.draft.id

    @property
    def open(self) -> bool:
        """The link can still decide: unused, its draft the newest, undecided, awaiting approval."""
        return (
            self.link.used_at is None
            and self.decision is None
            and not self.superseded
            and self.review.status == ReviewStatus.AWAITING_APPROVAL
        )

    @property
    def decided_here(self) -> bool:
        """This link made the draft's decision."""
        return self.decision is not None and self.decision.link_id == self.link.id


def state(engine: Engine, link: ApprovalLink) -> LinkState:
    """Where the link's review stands, read fresh."""
    with Session(engine) as session:
        fresh = session.get(ApprovalLink, link.id)
        review = session.get(Review, link.review_id)
        draft = session.get(ReviewDraft, link.draft_id)
        assert fresh is not None and review is not None and draft is not None
        latest = session.exec(
            select(ReviewDraft)
            .where(ReviewDraft.review_id == link.review_id)
            .order_by(ReviewDraft.attempt.desc())  # type: ignore[attr-defined]
        ).first()
        decision = session.exec(
            select(ReviewDecision).where(ReviewDecision.draft_id == link.draft_id)
        ).first()
        reply = session.exec(select(ReviewReply).where(ReviewReply.review_id == link.review_id)).first()
    return LinkState(
        link=fresh, review=review, draft=draft, latest=latest or draft, decision=decision, reply=reply
    )


def link_for(engine: Engine, draft_id: int, approver: str) -> ApprovalLink | None:
    """The approver's link for a draft, if one was issued."""
    with Session(engine) as session:
        return session.exec(
            select(ApprovalLink).where(ApprovalLink.draft_id == draft_id, ApprovalLink.approver == approver)
        ).first()


def decide(
    engine: Engine,
    link: ApprovalLink,
    *,
    action: str,
    text: str | None,
    instructions: str | None,
    reason: str | None,
    guardrails: Iterable[GuardrailResult | Mapping[str, Any]],
    client: Client,
    now: datetime,
) -> ReviewDecision | None:
    """Use the link up and record its approver's decision on its draft, in one transaction. None
    when the link was used already (a second post: the first one's outcome stands); AlreadyDecided
    when the draft was decided by anyone else meanwhile (then the link stays unused: it is of no
    use anyway, its page shows that decision)."""
    from aftercare.reviews import store

    table = ApprovalLink.__table__  # type: ignore[attr-defined]
    with Session(engine, expire_on_commit=False) as session:
        used = session.execute(
            sa.update(table).where(table.c.id == link.id, table.c.used_at.is_(None)).values(used_at=now)
        ).rowcount  # type: ignore[attr-defined]
        if used != 1:
            session.rollback()
            return None
        try:
            row = store.add_decision(
                session,
                link.review_id,
                approver=link.approver,
                action=action,
                text=text,
                instructions=instructions,
                reason=reason,
                guardrails=guardrails,
                draft_id=link.draft_id,
                decided_at=now,
                via=DecisionVia.PAGE,
                link_id=link.id,
                client_ip=client.ip,
                client_agent=client.user_agent,
            )
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            raise AlreadyDecided(f"draft {link.draft_id} was decided meanwhile") from exc
        return row


def run_input(decision: ReviewDecision) -> dict[str, Any]:
    """A stored decision as the input of the Prefect form it stands for (`DecisionForm`): what the
    page, and the sweep that delivers a decision the page could not, resume the run with."""
    return {
        "approver": decision.approver,
        "action": decision.action,
        "edited_text": (decision.text or "") if decision.action == "edit" else "",
        "instructions": decision.instructions or "",
        "reason": decision.reason or "",
    }
