"""The review tables, read and written in small steps: each function opens its own transaction on
the given engine, so a flow task can call one and retry it. Writes are idempotent where a re-run can
repeat them (timestamps keep their first value, a review's reply row is created once, ever)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import date, datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from aftercare.errors import AftercareError
from aftercare.models import (
    DecisionVia,
    Order,
    Refund,
    ReplyStatus,
    Review,
    ReviewDecision,
    ReviewDraft,
    ReviewReply,
    ReviewStatus,
    Shipment,
    utcnow,
)
from aftercare.policies import ShippingPolicy, load_policies
from aftercare.reviews.guardrails import GuardedDraft, GuardrailResult
from aftercare.reviews.models import Draft, DraftReply, OrderFacts
from aftercare.settings import PROJECT_ROOT

DRAFT_SOURCES = frozenset({"llm", "template", "fallback", "approver_edit"})
DECISION_ACTIONS = frozenset({"approve", "edit", "redraft", "reject"})
# Decisions that settle a review (a redraft asks for another draft and leaves it open).
FINAL_ACTIONS = frozenset({"approve", "edit", "reject"})
STATUS_TIMESTAMPS = frozenset({"approval_requested_at", "escalated_at", "decided_at", "published_at"})
# Shipment statuses after which nothing left the warehouse (as in aftercare.orders.shipping).
_VOID_SHIPMENTS = frozenset({"cancelled", "error", "failure"})


class ReviewNotFound(AftercareError):
    """No review with that id."""


# --- reviews ----------------------------------------------------------------------------------------


def get_review(engine: Engine, review_id: int) -> Review | None:
    """The review with our id `review_id`, or None."""
    with Session(engine) as session:
        return session.get(Review, review_id)


def find_review(engine: Engine, platform: str, platform_review_id: str) -> Review | None:
    """The review a platform knows as `platform_review_id`, or None."""
    with Session(engine) as session:
        return session.exec(
            select(Review).where(Review.platform == platform, Review.platform_review_id == platform_review_id)
        ).first()


def set_status(
    engine: Engine,
    review_id: int,
    status: str,
    *,
    only_from: Collection[str] | None = None,
    **timestamps: datetime,
) -> bool:
    """Move a review to `status` and record the given timestamps (`approval_requested_at`,
    `escalated_at`, `decided_at`, `published_at`). A timestamp that is already set keeps its first
    value, so a re-run flow does not move the SLA figures. With `only_from`, the change happens only
    when the current status is one of those (a compare-and-set). True when the row changed;
    ReviewNotFound when there is no such review."""
    if status not in ReviewStatus._value2member_map_:
        raise ValueError(
            f"unknown review status {status!r}; one of {sorted(ReviewStatus._value2member_map_)}"
        )
    unknown = set(timestamps) - STATUS_TIMESTAMPS
    if unknown:
        raise ValueError(f"unknown review timestamps {sorted(unknown)}; one of {sorted(STATUS_TIMESTAMPS)}")
    table = Review.__table__  # type: ignore[attr-defined]
    values: dict[str, Any] = {"status": str(status)}
    for name, at in timestamps.items():
        if at.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware")
        values[name] = sa.func.coalesce(
            table.c[name], sa.bindparam(f"new_{name}", at, type_=table.c[name].type)
        )
    stmt = sa.update(table).where(table.c.id == review_id)
    if only_from is not None:
        stmt = stmt.where(table.c.status.in_([str(s) for s in only_from]))
    with engine.begin() as conn:
        changed = conn.execute(stmt.values(**values)).rowcount == 1
        if not changed and conn.execute(sa.select(table.c.id).where(table.c.id == review_id)).first() is None:
            raise ReviewNotFound(f"no review with id {review_id}")
    return changed


def set_flow_run(engine: Engine, review_id: int, flow_run_id: str | None) -> None:
    """Remember the Prefect flow run handling the review (None to clear it)."""
    with Session(engine) as session:
        review = session.get(Review, review_id)
        if review is None:
            raise ReviewNotFound(f"no review with id {review_id}")
        review.flow_run_id = str(flow_run_id) if flow_run_id is not None else None
        session.add(review)
        session.commit()


# --- drafts -----------------------------------------------------------------------------------------


def _checks_as_json(checks: Iterable[GuardrailResult | Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for c in checks or ():
        if isinstance(c, GuardrailResult):
            out.append({"name": c.name, "passed": c.passed, "detail": c.detail})
        else:
            out.append(
                {"name": str(c["name"]), "passed": bool(c["passed"]), "detail": str(c.get("detail", ""))}
            )
    return out


def save_draft(
    engine: Engine,
    review_id: int,
    draft: GuardedDraft | Draft | DraftReply | str,
    *,
    source: str | None = None,
    instructions: str | None = None,
    guardrails: Iterable[GuardrailResult | Mapping[str, Any]] | None = None,
    language: str | None = None,
    needs_attention: bool | None = None,
) -> ReviewDraft:
    """Store the next draft of a review (attempt = previous + 1) and return it.

    `draft` is what drafting produces: a `GuardedDraft` from `draft_with_guardrails` (its text,
    language, promises, notes, source, checks and `needs_attention` are taken from it), a `Draft` or
    `DraftReply` (pass `guardrails`), or plain text an approver wrote (pass `source="approver_edit"`,
    `guardrails`, and `language`, else the review's). `source` overrides the draft's own; the
    `instructions` are the redraft instructions that produced it. Each call adds a draft: a flow that
    re-runs should look at `latest_draft` first."""
    checks: list[dict[str, Any]]
    attention = False
    if isinstance(draft, GuardedDraft):
        reply, origin = draft.draft.reply, draft.draft.source
        checks, attention = _checks_as_json(draft.checks), draft.needs_attention
    elif isinstance(draft, Draft):
        reply, origin, checks = draft.reply, draft.source, _checks_as_json(guardrails)
    elif isinstance(draft, DraftReply):
        reply, origin, checks = draft, None, _checks_as_json(guardrails)
    else:
        reply, origin, checks = None, None, _checks_as_json(guardrails)
    chosen = source or origin
    if chosen not in DRAFT_SOURCES:
        raise ValueError(f"draft source must be one of {sorted(DRAFT_SOURCES)}, got {chosen!r}")
    if guardrails is not None and isinstance(draft, GuardedDraft):
        checks = _checks_as_json(guardrails)
    if needs_attention is not None:
        attention = needs_attention
    elif reply is None:
        attention = any(not c["passed"] for c in checks)
    for _ in range(5):  # writers racing for the same attempt number: the loser takes the next
        with Session(engine, expire_on_commit=False) as session:
            review = session.get(Review, review_id)
            if review is None:
                raise ReviewNotFound(f"no review with id {review_id}")
            last = session.exec(
                select(sa.func.max(ReviewDraft.attempt)).where(ReviewDraft.review_id == review_id)
            ).one()
            row = ReviewDraft(
                review_id=review_id,
                attempt=(last or 0) + 1,
                text=reply.reply_text if reply is not None else str(draft),
                language=(reply.language if reply is not None else None) or language or review.language or "",
                apologises=reply.apologises if reply is not None else False,
                promised_actions=list(reply.promised_actions) if reply is not None else [],
                risk_notes=list(reply.risk_notes) if reply is not None else [],
                source=chosen,
                guardrails=checks,
                needs_attention=attention,
                instructions=instructions,
            )
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                continue
            return row
    raise AftercareError(f"could not store a draft for review {review_id}: attempt numbers kept colliding")


def latest_draft(engine: Engine, review_id: int) -> ReviewDraft | None:
    """The review's newest draft (highest attempt), or None."""
    with Session(engine) as session:
        return session.exec(
            select(ReviewDraft).where(ReviewDraft.review_id == review_id).order_by(ReviewDraft.attempt.desc())  # type: ignore[attr-defined]
        ).first()


def drafts(engine: Engine, review_id: int) -> list[ReviewDraft]:
    """Every draft of the review, oldest first."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(ReviewDraft).where(ReviewDraft.review_id == review_id).order_by(ReviewDraft.attempt)
            )
        )


# --- decisions --------------------------------------------------------------------------------------


def record_decision(
    engine: Engine,
    review_id: int,
    *,
    approver: str,
    action: str,
    text: str | None = None,
    instructions: str | None = None,
    reason: str | None = None,
    guardrails: Iterable[GuardrailResult | Mapping[str, Any]] | None = None,
    draft_id: int | None = None,
    decided_at: datetime | None = None,
    via: str = DecisionVia.PREFECT,
) -> ReviewDecision:
    """Store one approver decision (who, when, what, the text approved or edited, from where). A
    settling decision (approve, edit, reject) also sets the review's `decided_at` if it is not set
    yet. A draft takes one decision: when one is recorded already (another approver was first, on
    the approval page or in Prefect), nothing is stored and that first decision is returned."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            row = add_decision(
                session,
                review_id,
                approver=approver,
                action=action,
                text=text,
                instructions=instructions,
                reason=reason,
                guardrails=guardrails,
                draft_id=draft_id,
                decided_at=decided_at or utcnow(),
                via=via,
            )
            session.commit()
            return row
        except IntegrityError:
            session.rollback()
            if draft_id is None:
                raise
    first = decision_on_draft(engine, draft_id)
    if first is None:  # the conflict was not the draft's decision: nothing we can settle here
        raise AftercareError(f"could not record the decision on draft {draft_id} of review {review_id}")
    return first


def add_decision(
    session: Session,
    review_id: int,
    *,
    approver: str,
    action: str,
    decided_at: datetime,
    via: str,
    text: str | None = None,
    instructions: str | None = None,
    reason: str | None = None,
    guardrails: Iterable[GuardrailResult | Mapping[str, Any]] | None = None,
    draft_id: int | None = None,
    link_id: int | None = None,
    client_ip: str | None = None,
    client_agent: str | None = None,
) -> ReviewDecision:
    """Add a decision to the caller's transaction (flushed: a second decision on the same draft
    raises IntegrityError here, and the caller rolls back whatever went with it)."""
    if action not in DECISION_ACTIONS:
        raise ValueError(f"decision action must be one of {sorted(DECISION_ACTIONS)}, got {action!r}")
    if not approver or not approver.strip():
        raise ValueError("a decision needs the approver's name")
    if via not in DecisionVia._value2member_map_:
        raise ValueError(f"decision via must be one of {sorted(DecisionVia._value2member_map_)}, got {via!r}")
    if decided_at.tzinfo is None:
        raise ValueError("decided_at must be timezone-aware")
    review = session.get(Review, review_id)
    if review is None:
        raise ReviewNotFound(f"no review with id {review_id}")
    row = ReviewDecision(
        review_id=review_id,
        draft_id=draft_id,
        approver=approver.strip()[:255],
        action=action,
        text=text,
        instructions=instructions,
        reason=reason,
        guardrails=_checks_as_json(guardrails),
        decided_at=decided_at,
        via=str(via),
        link_id=link_id,
        client_ip=client_ip[:64] if client_ip else None,
        client_agent=client_agent[:512] if client_agent else None,
    )
    session.add(row)
    session.flush()
    if action in FINAL_ACTIONS and review.decided_at is None:
        review.decided_at = decided_at
        session.add(review)
    return row


def decision_on_draft(engine: Engine, draft_id: int) -> ReviewDecision | None:
    """The decision made on this draft (one at most), or None."""
    with Session(engine) as session:
        return session.exec(select(ReviewDecision).where(ReviewDecision.draft_id == draft_id)).first()


def decisions(engine: Engine, review_id: int) -> list[ReviewDecision]:
    """Every decision on the review, in the order they were made."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(ReviewDecision)
                .where(ReviewDecision.review_id == review_id)
                .order_by(ReviewDecision.decided_at, ReviewDecision.id)  # type: ignore[arg-type]
            )
        )


# --- the one reply ----------------------------------------------------------------------------------


def enqueue_reply(engine: Engine, review_id: int, text: str, approved_by: str) -> ReviewReply:
    """The review's reply row, created pending with `text` if the review has none yet. A review has
    one reply, ever: when a row exists (a re-run, a second approval) it is returned unchanged, and
    its text is the one that will be (or was) published."""
    if not text or not text.strip():
        raise ValueError("a reply needs text")
    with Session(engine, expire_on_commit=False) as session:
        existing = session.exec(select(ReviewReply).where(ReviewReply.review_id == review_id)).first()
        if existing is not None:
            return existing
        review = session.get(Review, review_id)
        if review is None:
            raise ReviewNotFound(f"no review with id {review_id}")
        row = ReviewReply(
            review_id=review_id, platform=review.platform, text=text, approved_by=approved_by.strip()[:255]
        )
        session.add(row)
        try:
            session.commit()
            return row
        except IntegrityError:
            session.rollback()
    with Session(engine) as session:  # another writer created it between our read and insert
        return session.exec(select(ReviewReply).where(ReviewReply.review_id == review_id)).one()


def reply_of(engine: Engine, review_id: int) -> ReviewReply | None:
    """The review's reply row (whatever its status), or None."""
    with Session(engine) as session:
        return session.exec(select(ReviewReply).where(ReviewReply.review_id == review_id)).first()


def published_reply(engine: Engine, review_id: int) -> ReviewReply | None:
    """The review's reply when it has been published, else None (what the public page shows)."""
    reply = reply_of(engine, review_id)
    return reply if reply is not None and reply.status == ReplyStatus.PUBLISHED else None


# --- facts for the drafter --------------------------------------------------------------------------


@cache
def _project_shipping_policy() -> ShippingPolicy:
    return load_policies(PROJECT_ROOT / "policies").shipping


def order_facts(
    engine: Engine,
    review: Review | int,
    *,
    shipping: ShippingPolicy | None = None,
    today: date | None = None,
) -> OrderFacts | None:
    """What happened to the review's order, as `OrderFacts` for `build_reply_request`; None when the
    review is not linked to an order (the drafter then says nothing about it).

    shipped_late: the first shipment that left did so after the expected ship date (shipping policy:
    cut-off, business days, handling days), or nothing has left and that date has passed (days_late
    counts calendar days to the ship date or to `today`). delivered: a carrier delivered event was
    recorded. refunded: any refund was recorded. cancelled: Shopify cancelled the order. Without
    `shipping`, the project's policies/shipping.yaml."""
    policy = shipping or _project_shipping_policy()
    review_id = review if isinstance(review, int) else review.id
    with Session(engine) as session:
        row = session.get(Review, review_id)
        if row is None:
            raise ReviewNotFound(f"no review with id {review_id}")
        if row.order_id is None:
            return None
        order = session.get(Order, row.order_id)
        if order is None:
            return None
        shipments = [
            s
            for s in session.exec(
                select(Shipment).where(Shipment.order_id == order.id).order_by(Shipment.shipped_at)
            )
            if s.status not in _VOID_SHIPMENTS
        ]
        refunded = session.exec(
            select(sa.func.count()).select_from(Refund).where(Refund.order_id == order.id)
        ).one()
    expected = policy.expected_ship_date(order.placed_at)
    shipped_late: bool | None
    days_late: int | None
    if shipments:
        shipped_on = shipments[0].shipped_at.astimezone(policy.tz).date()
        days_late = max(0, (shipped_on - expected).days)
        shipped_late = days_late > 0
    elif order.cancelled_at is not None:
        shipped_late, days_late = None, None
    else:
        now = today or utcnow().astimezone(policy.tz).date()
        days_late = max(0, (now - expected).days)
        shipped_late = days_late > 0
    return OrderFacts(
        order_name=order.name,
        shipped_late=shipped_late,
        days_late=days_late if shipped_late else None,
        delivered=any(s.delivered_at is not None for s in shipments),
        refunded=refunded > 0,
        cancelled=order.cancelled_at is not None,
    )


# --- SLA --------------------------------------------------------------------------------------------


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start is not None and end is not None else None


def sla(engine: Engine, review_id: int) -> dict[str, Any]:
    """The review's SLA figures: when it was received, when approval was requested, decided and
    published (ISO 8601, None when not yet), and the seconds between them:
    `to_approval_request_s`, `approval_wait_s` (requested -> decided), `to_decision_s`,
    `to_publish_s` (decided -> published), `total_s` (received -> published), plus whether it was
    escalated and how many decisions it took."""
    with Session(engine) as session:
        review = session.get(Review, review_id)
        if review is None:
            raise ReviewNotFound(f"no review with id {review_id}")
        n = session.exec(
            select(sa.func.count()).select_from(ReviewDecision).where(ReviewDecision.review_id == review_id)
        ).one()
    received, requested = review.received_at, review.approval_requested_at
    decided, published = review.decided_at, review.published_at

    def iso(at: datetime | None) -> str | None:
        return at.isoformat() if at is not None else None

    return {
        "review_id": review.id,
        "status": review.status,
        "received_at": iso(received),
        "approval_requested_at": iso(requested),
        "escalated_at": iso(review.escalated_at),
        "decided_at": iso(decided),
        "published_at": iso(published),
        "to_approval_request_s": _seconds(received, requested),
        "approval_wait_s": _seconds(requested, decided),
        "to_decision_s": _seconds(received, decided),
        "to_publish_s": _seconds(decided, published),
        "total_s": _seconds(received, published),
        "escalated": review.escalated_at is not None,
        "decisions": n,
    }
