"""The survey's links and answers: the signed token in every score link, reading an answer from a
form as a stranger may send it, and storing it with the order.

The token (aftercare.signing, purpose `survey`, Settings.link_secret) names the touchpoint, its
order and the scale the mail was written with, and expires when the survey closes; nothing
personal is in it. A token for another purpose (an unsubscribe link, an approval) never verifies
here, and a token names exactly one survey: it cannot answer another.

Answers: every answer is a `survey_responses` row numbered per survey (`seq`, unique with the
touchpoint, migration 0010); the highest number is the answer that counts. An answer equal to the
one that counts (the same score, reasons and comment) is not stored again: a double click, a page
posted twice, a script that submits while the person presses the button. Two answers racing for
the same number: the database lets one in, the other reads again and either finds its twin (done)
or takes the next number (the later answer wins)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare import signing
from aftercare.errors import AftercareError
from aftercare.models import (
    Order,
    OrderLine,
    OutboxMessage,
    OutboxStatus,
    SurveyResponse,
    Touchpoint,
    TouchpointStatus,
)
from aftercare.surveys.policy import SCALES, Scale, SurveyPolicy

PURPOSE = "survey"
KIND = "delivery_survey"
# The customer may well have the mail when its outbox row reached any of these.
_MAILED = (OutboxStatus.SENT, OutboxStatus.SENDING, OutboxStatus.UNCERTAIN)
_SCORE = re.compile(r"^(?:10|[0-9])$")


class AnswerRefused(AftercareError):
    """An answer we cannot take as sent; `field` names what to correct (score, reasons, comment)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SurveyLink:
    touchpoint_id: int
    order_id: int
    scale: Scale


def survey_token(secret: str, *, touchpoint_id: int, order_id: int, scale: str, closes_at: datetime) -> str:
    """The token of one survey's links, good until the survey closes."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}")
    claims = {"t": touchpoint_id, "o": order_id, "k": scale}
    return signing.sign(secret, PURPOSE, claims, expires_at=closes_at)


def read_survey_token(secret: str, token: str, *, now: datetime) -> SurveyLink:
    """The survey a token of ours names; signing.TokenInvalid / TokenExpired otherwise."""
    claims = signing.verify(secret, PURPOSE, token, now=now)
    tp, order, scale = claims.get("t"), claims.get("o"), claims.get("k")
    if not (isinstance(tp, int) and isinstance(order, int) and isinstance(scale, str) and scale in SCALES):
        raise signing.TokenInvalid("the token lacks its claims")
    return SurveyLink(tp, order, SCALES[scale])


def survey_url(base_url: str, token: str, score: int | None = None) -> str:
    url = f"{base_url.rstrip('/')}/survey/{token}"
    return url if score is None else f"{url}?score={score}"


def closes_at(sent_at: datetime, policy: SurveyPolicy) -> datetime:
    return sent_at + timedelta(days=policy.open_days)


# -- reading what was sent --------------------------------------------------------------------------


def parse_score(raw: object, scale: Scale) -> int:
    """A score as a form sends it: the digits of a whole number on the scale ("5"; an int is taken
    as well). Anything else, " 5", "05", "5.0", "５", "+5", is refused rather than guessed."""
    if isinstance(raw, bool):
        raise AnswerRefused("score", "the score is not a number")
    if isinstance(raw, int):
        score = raw
    elif isinstance(raw, str) and _SCORE.match(raw):
        score = int(raw)
    else:
        raise AnswerRefused("score", f"choose a score from {scale.low} to {scale.high}")
    if not scale.holds(score):
        raise AnswerRefused("score", f"choose a score from {scale.low} to {scale.high}")
    return score


def clean_comment(text: str | None, max_chars: int) -> str | None:
    """The comment as stored: line breaks made \\n, control characters other than line breaks and
    tabs removed (NUL, escape sequences, C1 controls: nothing a person typed), NFC, surrounding
    blanks trimmed; None when nothing is left. HTML stays as written: it is text, and every page
    escapes it. Longer than `max_chars` after cleaning: refused, never cut."""
    if text is None:
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        return None
    if len(text) > max_chars:
        raise AnswerRefused(
            "comment", f"the comment is {len(text)} characters long; at most {max_chars} are taken"
        )
    return text


def parse_reasons(raw: Sequence[str], policy: SurveyPolicy) -> list[str]:
    """The ticked reasons, each once, in the policy's order; a code the policy does not offer is
    refused (a reason named by an old page or by hand), not dropped."""
    offered = policy.reason_codes
    unknown = sorted({r for r in raw if r not in offered})
    if unknown:
        shown = ", ".join(repr(u[:40]) for u in unknown[:5])
        raise AnswerRefused("reasons", f"not a reason we offer: {shown}")
    wanted = set(raw)
    return [code for code in offered if code in wanted]


@dataclass(frozen=True)
class Answer:
    score: int
    reasons: list[str]
    comment: str | None


def read_answer(
    *, score: object, reasons: Sequence[str], comment: str | None, scale: Scale, policy: SurveyPolicy
) -> Answer:
    """An answer from the page's form, checked; AnswerRefused says what to correct."""
    return Answer(
        parse_score(score, scale),
        parse_reasons(reasons, policy),
        clean_comment(comment, policy.comment_max_chars),
    )


# -- the survey and its answers ---------------------------------------------------------------------


@dataclass(frozen=True)
class SurveyState:
    touchpoint: Touchpoint
    order: Order
    lines: list[OrderLine]
    latest: SurveyResponse | None
    closed_reason: str | None  # None: open for answers

    @property
    def open(self) -> bool:
        return self.closed_reason is None


def latest_answer(session: Session, touchpoint_id: int) -> SurveyResponse | None:
    return session.exec(
        select(SurveyResponse)
        .where(SurveyResponse.touchpoint_id == touchpoint_id)
        .order_by(SurveyResponse.seq.desc(), SurveyResponse.id.desc())  # type: ignore[attr-defined]
        .limit(1)
    ).first()


def answers_of(session: Session, touchpoint_id: int) -> list[SurveyResponse]:
    """Every answer to one survey, oldest first."""
    return list(
        session.exec(
            select(SurveyResponse)
            .where(SurveyResponse.touchpoint_id == touchpoint_id)
            .order_by(SurveyResponse.seq, SurveyResponse.id)  # type: ignore[arg-type]
        )
    )


def _closed_reason(session: Session, touchpoint: Touchpoint) -> str | None:
    """Why this survey takes no answers, or None. A survey we called off before its mail went out
    (cancelled: the order was cancelled or refunded, the customer unsubscribed; skipped: too late)
    was never meant to reach anyone. Once the mail may have reached the customer, their answer is
    taken whatever happened to the order since (a refund is part of the experience they rate)."""
    if touchpoint.status not in (TouchpointStatus.CANCELLED, TouchpointStatus.SKIPPED):
        return None
    mailed = session.exec(
        select(OutboxMessage.id).where(
            OutboxMessage.touchpoint_id == touchpoint.id,
            OutboxMessage.status.in_(_MAILED),  # type: ignore[attr-defined]
        )
    ).first()
    return None if mailed is not None else f"the survey was called off ({touchpoint.status})"


def survey_state(engine: Engine, link: SurveyLink) -> SurveyState | None:
    """The survey a verified link names, with its order, lines and latest answer; None when it is
    not a survey of ours (a token signed for rows a reset database no longer has)."""
    with Session(engine, expire_on_commit=False) as session:
        touchpoint = session.get(Touchpoint, link.touchpoint_id)
        if touchpoint is None or touchpoint.kind != KIND or touchpoint.order_id != link.order_id:
            return None
        order = session.get(Order, touchpoint.order_id)
        if order is None:
            return None
        lines = list(
            session.exec(
                select(OrderLine)
                .where(OrderLine.order_id == order.id)
                .order_by(OrderLine.position, OrderLine.id)
            )  # type: ignore[arg-type]
        )
        return SurveyState(
            touchpoint=touchpoint,
            order=order,
            lines=lines,
            latest=latest_answer(session, touchpoint.id),  # type: ignore[arg-type]
            closed_reason=_closed_reason(session, touchpoint),
        )


def _same(row: SurveyResponse, link: SurveyLink, answer: Answer) -> bool:
    return (
        row.scale == link.scale.name
        and row.score == answer.score
        and list(row.reasons or []) == answer.reasons
        and (row.comment or None) == answer.comment
    )


@dataclass(frozen=True)
class Recorded:
    response: SurveyResponse
    created: bool  # False: the same answer was already the one that counts


class AnswerConflict(AftercareError):
    """Other answers to the same survey kept arriving while this one was stored (not a person)."""


def record_answer(
    engine: Engine,
    link: SurveyLink,
    answer: Answer,
    *,
    now: datetime,
    attempts: int = 8,
    on_stored: Callable[[Session, SurveyResponse], object] | None = None,
) -> Recorded:
    """Store `answer` as the survey's latest, unless it already is. Safe against itself: any number
    of identical posts at once leave one row; different answers at once are all kept, in order.

    `on_stored(session, row)` runs for a new answer inside its transaction, before the commit, so
    what it writes (a recovery case and the mail it owes) is stored with the answer or not at all."""
    for _ in range(attempts):
        with Session(engine, expire_on_commit=False) as session:
            latest = latest_answer(session, link.touchpoint_id)
            if latest is not None and _same(latest, link, answer):
                return Recorded(latest, created=False)
            row = SurveyResponse(
                touchpoint_id=link.touchpoint_id,
                order_id=link.order_id,
                scale=link.scale.name,
                score=answer.score,
                comment=answer.comment,
                reasons=answer.reasons,
                answered_at=now,
                seq=(latest.seq + 1) if latest is not None else 1,
            )
            session.add(row)
            try:
                session.flush()
                if on_stored is not None:
                    on_stored(session, row)
                session.commit()
            except sa.exc.IntegrityError:
                session.rollback()  # another answer took this number first: read again
                continue
            return Recorded(row, created=True)
    raise AnswerConflict(f"survey {link.touchpoint_id}: gave up after {attempts} competing answers")
