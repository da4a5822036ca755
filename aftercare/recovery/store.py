"""The recovery tables, read: the case of a survey or of a private reply, the cases past their
first-answer deadline, where a case's apology stands, and the cases as ops list them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.models import (
    Order,
    OutboxMessage,
    RecoveryCase,
    RecoveryStatus,
    Review,
    ReviewDecision,
    ReviewStatus,
)
from aftercare.reviews.publishing import PermanentPublishError


class CaseNotFound(PermanentPublishError):
    """A private reply row without a recovery case: nothing says whom to mail."""


def overdue_condition(now: datetime) -> sa.ColumnElement[bool]:
    """Open cases past their first-answer deadline that nobody has been told about yet."""
    return sa.and_(
        RecoveryCase.status == RecoveryStatus.OPEN,
        RecoveryCase.escalated_at.is_(None),  # type: ignore[union-attr]
        RecoveryCase.first_answer_due_at <= now,  # type: ignore[operator]
    )


def case_of_reply(session: Session, review_id: int) -> RecoveryCase | None:
    """The case whose private apology is this review row."""
    return session.exec(select(RecoveryCase).where(RecoveryCase.review_id == review_id)).first()


def decisions_of(session: Session, case: RecoveryCase) -> list[ReviewDecision]:
    if case.review_id is None:
        return []
    return list(
        session.exec(
            select(ReviewDecision)
            .where(ReviewDecision.review_id == case.review_id)
            .order_by(ReviewDecision.decided_at, ReviewDecision.id)  # type: ignore[arg-type]
        )
    )


_STATES = {
    ReviewStatus.NEW: "not drafted yet",
    ReviewStatus.DRAFTING: "being drafted",
    ReviewStatus.AWAITING_APPROVAL: "waiting for approval",
    ReviewStatus.APPROVED: "approved, being mailed",
    ReviewStatus.PUBLISHED: "mailed to the customer",
    ReviewStatus.REJECTED: "rejected: the case is open for ops",
}


def apology_state(session: Session, case: RecoveryCase) -> str:
    """Where the private apology stands, in a line for ops."""
    review = session.get(Review, case.review_id) if case.review_id else None
    if review is None:
        return "no apology"
    decisions = decisions_of(session, case)
    said = ""
    if decisions:
        last = decisions[-1]
        said = f"; last decision: {last.action} by {last.approver}" + (
            f" ({last.reason})" if last.reason else ""
        )
    return _STATES.get(review.status, review.status) + said  # type: ignore[call-overload]


@dataclass(frozen=True)
class CaseView:
    case: RecoveryCase
    order_name: str
    apology: str
    decisions: list[ReviewDecision]
    mail: OutboxMessage | None

    def overdue(self, now: datetime) -> bool:
        return self.case.status == RecoveryStatus.OPEN and self.case.first_answer_due_at <= now

    def as_json(self, now: datetime) -> dict[str, Any]:
        c = self.case

        def iso(at: datetime | None) -> str | None:
            return at.isoformat() if at is not None else None

        return {
            "id": c.id,
            "order": self.order_name,
            "status": c.status,
            "scale": c.scale,
            "score": c.score,
            "reasons": list(c.reasons or []),
            "later_answers": list(c.answers or []),
            "opened_at": iso(c.opened_at),
            "first_answer_due_at": iso(c.first_answer_due_at),
            "overdue": self.overdue(now),
            "escalated_at": iso(c.escalated_at),
            "answered_at": iso(c.answered_at),
            "apology": self.apology,
            "decisions": [
                {
                    "action": d.action,
                    "approver": d.approver,
                    "via": d.via,
                    "at": iso(d.decided_at),
                    "reason": d.reason,
                }
                for d in self.decisions
            ],
            "mail": None if self.mail is None else {"outbox_id": self.mail.id, "status": self.mail.status},
            "policy_version": c.policy_version,
        }


def list_cases(engine: Engine, *, open_only: bool = False, limit: int = 100) -> list[CaseView]:
    """Cases, oldest first; `open_only`: those whose customer has had no answer yet."""
    with Session(engine) as session:
        query = select(RecoveryCase, Order.name).join(Order, Order.id == RecoveryCase.order_id)  # type: ignore[arg-type]
        if open_only:
            query = query.where(RecoveryCase.status == RecoveryStatus.OPEN)
        rows = session.exec(query.order_by(RecoveryCase.id).limit(limit)).all()  # type: ignore[arg-type]
        return [
            CaseView(
                case=case,
                order_name=name,
                apology=apology_state(session, case),
                decisions=decisions_of(session, case),
                mail=session.get(OutboxMessage, case.apology_outbox_id) if case.apology_outbox_id else None,
            )
            for case, name in rows
        ]
