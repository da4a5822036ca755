"""Recovery cases: a survey answer at or below the policy's threshold, or with a comment review
triage reads as negative, opens one case per survey, in the answer's own transaction
(`surveys.answers.record_answer(on_stored=...)`): the case, the private reply row that waits for a
person on the review-reply machinery (platform `private`, status new: the web app's patrol starts
its `review-reply` run), and the ops mail (an outbox row per recipient) are stored with the answer
or not at all. A crash loses nothing: the drain loop sends the mail, the patrol starts the run.

One case per survey: `recovery_cases.touchpoint_id` is unique, and the survey's answers are
numbered (a concurrent double submit is one answer). A later answer, above the threshold or not,
is recorded on the case (`answers`) and neither opens a second case nor closes this one: the
customer told us something went wrong, and a changed score is not an answer from the shop.

The first answer to the customer is due `first_answer_business_hours` after the case opened, in
the shop's business hours (`policy.BusinessClock`); a case still unanswered then is escalated once
(`escalate_overdue`: a compare-and-set on `escalated_at` in one transaction with the mail's rows).
Time is an input everywhere: `now` is passed in."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from babel.dates import format_datetime
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session, select

from aftercare.models import (
    PRIVATE_REPLY_PLATFORM,
    Order,
    RecoveryCase,
    RecoveryStatus,
    Review,
    ReviewStatus,
    SurveyResponse,
    utcnow,
)
from aftercare.policies import load_policies
from aftercare.recovery.policy import BusinessClock, RecoveryPolicy, load_recovery_policy
from aftercare.recovery.store import apology_state, overdue_condition
from aftercare.rendering import BABEL_LOCALES, Renderer
from aftercare.reviews import intake
from aftercare.reviews.masking import mask_contacts
from aftercare.reviews.models import Review as ReviewInput
from aftercare.reviews.notify import StaffEmail, enqueue_staff_email
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.text import normalise_lang
from aftercare.reviews.triage import Triager
from aftercare.settings import Settings
from aftercare.surveys.answers import AnswerContext, answer_context
from aftercare.surveys.policy import SCALES, SurveyPolicy, load_survey_policy

_CASES: sa.Table = RecoveryCase.__table__  # type: ignore[attr-defined]
# Built once (an answer that opens a case or is noted on one is on the survey POST's hot path).
_CASE_OF_SURVEY = sa.select(_CASES.c.id).where(_CASES.c.touchpoint_id == sa.bindparam("tp"))
_CASE = sa.select(_CASES).where(_CASES.c.id == sa.bindparam("id"))
_NOTE = _CASES.update().where(_CASES.c.id == sa.bindparam("case")).values(answers=sa.bindparam("noted"))
_LINK_REPLY = (
    _CASES.update().where(_CASES.c.id == sa.bindparam("case")).values(review_id=sa.bindparam("reply"))
)
_INSERT_CASE_PG, _INSERT_CASE_SQLITE = (
    dialect_insert(_CASES).on_conflict_do_nothing(index_elements=["touchpoint_id"]).returning(_CASES.c.id)
    for dialect_insert in (postgresql.insert, sqlite.insert)
)
CASE_OPENED = "recovery_case_opened"
CASE_OVERDUE = "recovery_case_overdue"
COMMENT_IN_MAIL = 1200


def _attached(session: Session, case: RecoveryCase) -> RecoveryCase:
    """`case`, built from the values just written, as the session's persistent object (no read
    back): a caller's later change to it is flushed like any other."""
    make_transient_to_detached(case)
    session.add(case)
    return case


@dataclass(frozen=True)
class Assessment:
    """Whether an answer calls for a case, and why (kept on the case and shown to ops)."""

    low: bool
    negative_comment: bool
    reasons: list[str]
    triage_score: float = 0.0
    triage_reasons: list[str] = field(default_factory=list)

    @property
    def opens(self) -> bool:
        return self.low or self.negative_comment


def assess(
    *,
    score: int,
    scale: str,
    comment: str | None,
    locale: str | None,
    policy: RecoveryPolicy,
    reviews_policy: ReviewsPolicy,
) -> Assessment:
    """Judge one answer: its score against the scale's threshold, and its comment (when the policy
    says so) with review triage's own analysers, phrases and thresholds. Pure: no database."""
    at = policy.threshold[scale]  # type: ignore[index]
    low = score <= at
    reasons = [f"score {score} {'<=' if low else '>'} {at} ({scale})"]
    negative, text_score, triage_reasons = False, 0.0, []
    if policy.negative_comment_opens_a_case and comment:
        result = Triager(reviews_policy).triage(
            ReviewInput(id="survey", text=comment[:20_000], rating=None, lang=normalise_lang(locale))
        )
        negative, text_score = result.negative, result.score
        triage_reasons = [r for r in result.reasons if r != "no rating"]
        if negative:
            reasons.append("negative comment: " + "; ".join(triage_reasons))
    return Assessment(low, negative, reasons, text_score, triage_reasons)


def stars_equivalent(scale: str, score: int) -> int:
    """A score as the 1-5 rating a review row holds (CSAT as it is; NPS 0-10 in fifths, 0-2 -> 1,
    9-10 -> 5), for the approval page's stars. The exact score is in the row's title."""
    if scale == "csat5":
        return max(1, min(5, score))
    return max(1, min(5, math.ceil(score / 2)))


@dataclass
class Recovery:
    """What opening and escalating cases needs, read from the installation's files once."""

    settings: Settings
    renderer: Renderer
    policy: RecoveryPolicy
    clock: BusinessClock
    reviews_policy: ReviewsPolicy
    surveys: SurveyPolicy

    @classmethod
    def load(cls, settings: Settings, renderer: Renderer | None = None) -> Recovery:
        policies_dir: Path = settings.policies_dir
        policy = load_recovery_policy(policies_dir)
        return cls(
            settings=settings,
            renderer=renderer or Renderer(settings.templates_dir),
            policy=policy,
            clock=BusinessClock(load_policies(policies_dir).shipping, policy),
            reviews_policy=intake.reviews_policy(policies_dir),
            surveys=load_survey_policy(policies_dir),
        )

    def assess(self, *, score: int, scale: str, comment: str | None, locale: str | None) -> Assessment:
        return assess(
            score=score,
            scale=scale,
            comment=comment,
            locale=locale,
            policy=self.policy,
            reviews_policy=self.reviews_policy,
        )

    def warm(self, locales: tuple[str, ...] = ("ja", "en")) -> None:
        """Load now what the first answer would load while its customer waits (a few hundred ms,
        once): the comment analysers of each language, the ops mail's templates and its dates'
        locale data."""
        scale = self.surveys.scale
        for locale in locales:
            self.assess(score=SCALES[scale].high, scale=scale, comment="warm-up", locale=locale)
        self.renderer.preload(CASE_OPENED, self.policy.ops.locale)
        self.when(utcnow(), self.policy.ops.locale)

    def when(self, at: datetime, locale: str) -> str:
        """A moment in the shop's time zone, as ops read it."""
        local = at.astimezone(self.clock.tz)
        if locale == "ja":
            return format_datetime(local, "y年M月d日(E) H:mm", locale="ja_JP") + f" {local:%Z}"
        return format_datetime(local, "EEE, MMMM d, y, h:mm a", locale=BABEL_LOCALES["en"]) + f" {local:%Z}"

    def on_stored(
        self, assessment: Assessment, now: datetime
    ) -> Callable[[Session, SurveyResponse, AnswerContext], object]:
        """The hook `record_answer` runs in the answer's transaction (see `note_answer`)."""
        return lambda session, row, context: self.note_answer(
            session, row, assessment, now=now, context=context
        )

    # -- opening, or noting a later answer ------------------------------------------------------

    def note_answer(
        self,
        session: Session,
        row: SurveyResponse,
        assessment: Assessment,
        *,
        now: datetime,
        context: AnswerContext | None = None,
    ) -> RecoveryCase | None:
        """In the answer's transaction: open the survey's case when the answer calls for one and
        there is none, or record the answer on the case there is. Returns the case, if any.
        `context`: what the answer's own read found (`record_answer`); read here when not given."""
        assert row.id is not None
        context = context or answer_context(session, row.touchpoint_id)
        assert context is not None, f"survey {row.touchpoint_id} has no order"
        case_id = context.case_id
        if case_id is None:
            if not assessment.opens:
                return None  # no case, and this answer opens none: nothing to write
            case = self._open(session, row, assessment, now, context)
            if case is not None:
                return case
            # Another answer opened it first (only possible when `context` was read apart).
            case_id = session.execute(_CASE_OF_SURVEY, {"tp": row.touchpoint_id}).scalar_one()
        found = session.execute(self._locked(session, _CASE), {"id": case_id}).one()
        noted = [
            *(found.answers or []),
            {
                "response_id": row.id,
                "seq": row.seq,
                "score": row.score,
                "at": row.answered_at.isoformat(),
                "at_or_below_threshold": assessment.low,
                "negative_comment": assessment.negative_comment,
            },
        ]
        session.execute(_NOTE, {"case": case_id, "noted": noted})
        return _attached(session, RecoveryCase(**(found._asdict() | {"answers": noted})))

    @staticmethod
    def _locked(session: Session, query: sa.Select[Any]) -> sa.Select[Any]:
        """On PostgreSQL, the case row locked: later answers are noted one after another."""
        return query.with_for_update() if session.get_bind().dialect.name == "postgresql" else query

    def _open(
        self,
        session: Session,
        row: SurveyResponse,
        assessment: Assessment,
        now: datetime,
        order: AnswerContext,
    ) -> RecoveryCase | None:
        """Insert the case, its private reply row and the ops mail's outbox rows; None when the
        survey has a case already (opened by a competing answer)."""
        due = self.clock.add(now, self.policy.first_answer_business_hours)
        values = {
            "touchpoint_id": row.touchpoint_id,
            "order_id": order.order_id,
            "scale": row.scale,
            "score": row.score,
            "response_id": row.id,
            "reasons": assessment.reasons,
            "answers": [],
            "status": RecoveryStatus.OPEN,
            "opened_at": now,
            "first_answer_due_at": due,
            "policy_version": self.policy.version,
        }
        insert = _INSERT_CASE_PG if session.get_bind().dialect.name == "postgresql" else _INSERT_CASE_SQLITE
        case_id = session.execute(insert, values).scalar()
        if case_id is None:
            return None
        scale = SCALES[row.scale]
        reply = Review(
            platform=PRIVATE_REPLY_PLATFORM,
            platform_review_id=f"case-{case_id} {order.order_name}"[:128],
            shop_domain=order.shop_domain,
            order_id=order.order_id,
            customer_id=order.customer_id,
            order_ref=order.order_name,
            rating=stars_equivalent(row.scale, row.score),
            title=f"survey score {row.score} ({scale.low}-{scale.high})",
            body=row.comment or "",
            language=order.order_locale,
            source_created_at=row.answered_at,
            received_at=now,
            triage_negative=True,  # the patrol starts a reply run for it, whatever the score said
            triage_score=assessment.triage_score,
            triage_reasons=assessment.reasons,
            status=ReviewStatus.NEW,
            policy_version=self.reviews_policy.version,
        )
        session.add(reply)
        session.flush()
        session.execute(_LINK_REPLY, {"case": case_id, "reply": reply.id})
        case = _attached(session, RecoveryCase(id=case_id, review_id=reply.id, **values))
        ops = self.policy.ops
        enqueue_staff_email(
            session,
            self.settings,
            self.renderer,
            StaffEmail(
                CASE_OPENED,
                f"case-{case_id}",
                ops.notify,
                ops.locale,
                {
                    "case": self._mail_facts(case, order.order_name, row, ops.locale),
                    "escalate_to": ops.escalate_to,
                },
                order_id=order.order_id,
                order_name=order.order_name,
            ),
        )
        session.flush()
        return case

    def _mail_facts(
        self, case: RecoveryCase, order_name: str, row: SurveyResponse | None, locale: str
    ) -> dict[str, Any]:
        scale = SCALES[case.scale]
        labels = {r.code: r.label(locale) for r in self.surveys.reasons}
        comment = (row.comment if row is not None else None) or ""
        if len(comment) > COMMENT_IN_MAIL:
            comment = comment[:COMMENT_IN_MAIL] + "…"
        return {
            "id": case.id,
            "order_name": order_name,
            "score": case.score,
            "low": scale.low,
            "high": scale.high,
            "reasons": list(case.reasons or []),
            "ticked": [labels.get(c, c) for c in ((row.reasons or []) if row is not None else [])],
            # What the customer typed, without contact details they may have typed into it.
            "comment": mask_contacts(comment) if comment else None,
            "due": self.when(case.first_answer_due_at, locale),
            "opened": self.when(case.opened_at, locale),
            "hours": f"{self.policy.first_answer_business_hours:g}",
        }

    # -- escalating -----------------------------------------------------------------------------

    def escalate_overdue(self, engine: Engine, now: datetime | None = None) -> list[int]:
        """Owe one escalation mail for every open case whose first answer is past due; returns
        their ids. Each case is claimed (`escalated_at`, compare-and-set) in one transaction with
        its mail's outbox rows: told once, never lost. The drain loop sends the rows."""
        now = now or utcnow()
        with Session(engine) as session:
            due = list(session.exec(select(RecoveryCase.id).where(overdue_condition(now))))
        escalated: list[int] = []
        ops = self.policy.ops
        for case_id in due:
            with Session(engine) as session:
                claimed = session.execute(
                    sa.update(RecoveryCase)
                    .where(RecoveryCase.id == case_id, overdue_condition(now))  # type: ignore[arg-type]
                    .values(escalated_at=now)
                ).rowcount  # type: ignore[attr-defined]
                if claimed != 1:
                    session.rollback()
                    continue
                case = session.get(RecoveryCase, case_id)
                assert case is not None
                order = session.get(Order, case.order_id)
                assert order is not None
                facts = self._mail_facts(case, order.name, None, ops.locale)
                facts["apology"] = apology_state(session, case)
                enqueue_staff_email(
                    session,
                    self.settings,
                    self.renderer,
                    StaffEmail(
                        CASE_OVERDUE,
                        f"case-{case_id}",
                        ops.escalate_to,
                        ops.locale,
                        {"case": facts},
                        order_id=order.id,
                        order_name=order.name,
                    ),
                )
                session.commit()
            escalated.append(case_id)
        return escalated
