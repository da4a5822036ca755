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
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare import signing
from aftercare.errors import AftercareError
from aftercare.models import (
    Order,
    OrderLine,
    RecoveryCase,
    SurveyResponse,
    Touchpoint,
)
from aftercare.spine import outbox
from aftercare.spine.db import autocommit
from aftercare.surveys.policy import SCALES, Scale, SurveyPolicy

PURPOSE = "survey"
KIND = "delivery_survey"
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
class Latest:
    """The answer that counts (the highest `seq`), as the page shows it and a new answer compares."""

    id: int
    seq: int
    scale: str
    score: int
    reasons: list[str]
    comment: str | None
    answered_at: datetime


@dataclass(frozen=True)
class SurveyState:
    """What the survey page shows: the order (its name, language and item titles), the answer that
    counts, and whether the survey takes answers."""

    touchpoint_id: int
    order_name: str
    order_locale: str | None
    lines: list[str]  # the order's item titles, in the order's own order
    latest: Latest | None
    closed_reason: str | None  # None: open for answers

    @property
    def open(self) -> bool:
        return self.closed_reason is None


class SurveyUnavailable(AftercareError):
    """The link's survey takes no answer: not a survey of ours (`closed` False), or called off before
    its mail went out (`closed` True). `order_locale`: the order's language, when there is one."""

    def __init__(self, message: str, *, closed: bool, order_locale: str | None = None):
        super().__init__(message)
        self.closed = closed
        self.order_locale = order_locale


def answers_of(session: Session, touchpoint_id: int) -> list[SurveyResponse]:
    """Every answer to one survey, oldest first."""
    return list(
        session.exec(
            select(SurveyResponse)
            .where(SurveyResponse.touchpoint_id == touchpoint_id)
            .order_by(SurveyResponse.seq, SurveyResponse.id)  # type: ignore[arg-type]
        )
    )


_TP: sa.Table = Touchpoint.__table__  # type: ignore[attr-defined]
_ORDERS: sa.Table = Order.__table__  # type: ignore[attr-defined]
_LINES: sa.Table = OrderLine.__table__  # type: ignore[attr-defined]
_ANSWERS: sa.Table = SurveyResponse.__table__  # type: ignore[attr-defined]
_LATER: sa.Table = _ANSWERS.alias("later")  # type: ignore[assignment]
_CASES: sa.Table = RecoveryCase.__table__  # type: ignore[attr-defined]
# Built once: the survey page and its POST are the customer's hot path (100 a second is the goal).
# One round trip for everything a page or an answer needs but the items: the touchpoint, its
# order's name, language and what a recovery case copies from it, whether its mail may have reached
# the customer (it matters only for a survey called off: `_closed_reason`), the answer that counts
# (the highest seq, unique per survey), if any, and the survey's recovery case, if any.
_STATE = (
    sa.select(
        _TP.c.kind,
        _TP.c.order_id,
        _TP.c.status,
        _ORDERS.c.name.label("order_name"),
        _ORDERS.c.locale.label("order_locale"),
        _ORDERS.c.shop_domain,
        _ORDERS.c.customer_id,
        sa.select(_CASES.c.id).where(_CASES.c.touchpoint_id == _TP.c.id).scalar_subquery().label("case_id"),
        outbox.may_have_mailed(_TP.c.id).label("mailed"),
        _ANSWERS.c.id.label("answer_id"),
        _ANSWERS.c.seq,
        _ANSWERS.c.scale,
        _ANSWERS.c.score,
        _ANSWERS.c.reasons,
        _ANSWERS.c.comment,
        _ANSWERS.c.answered_at,
    )
    .select_from(
        _TP.join(_ORDERS, _ORDERS.c.id == _TP.c.order_id).outerjoin(
            _ANSWERS,
            sa.and_(
                _ANSWERS.c.touchpoint_id == _TP.c.id,
                _ANSWERS.c.seq
                == sa.select(sa.func.max(_LATER.c.seq))
                .where(_LATER.c.touchpoint_id == _TP.c.id)
                .scalar_subquery(),
            ),
        )
    )
    .where(_TP.c.id == sa.bindparam("tp"))
)
_ITEM_TITLES = (
    sa.select(_LINES.c.title)
    .where(_LINES.c.order_id == sa.bindparam("order"))
    .order_by(_LINES.c.position, _LINES.c.id)
)
_INSERT_ANSWER = _ANSWERS.insert().returning(_ANSWERS.c.id)


def _closed_reason(status: str, mailed: bool) -> str | None:
    """Why this survey takes no answers, or None. A survey we called off before its mail went out
    (cancelled: the order was cancelled or refunded, the customer unsubscribed; skipped: too late)
    was never meant to reach anyone. Once the mail may have reached the customer, their answer is
    taken whatever happened to the order since (a refund is part of the experience they rate)."""
    if not outbox.called_off_unmailed(status, mailed):
        return None
    return f"the survey was called off ({status})"


def _read_state(conn: sa.Connection, link: SurveyLink) -> sa.Row[Any] | None:
    """The `_STATE` row of the survey a verified link names; None when it is not a survey of ours
    (a token signed for rows a reset database no longer has)."""
    row = conn.execute(_STATE, {"tp": link.touchpoint_id}).first()
    if row is None or row.kind != KIND or row.order_id != link.order_id:
        return None
    return row


def _context(row: sa.Row[Any]) -> AnswerContext:
    return AnswerContext(
        row.order_id, row.order_name, row.order_locale, row.shop_domain, row.customer_id, row.case_id
    )


def answer_context(session: Session, touchpoint_id: int) -> AnswerContext | None:
    """`AnswerContext` of a survey, read on its own (for callers that store answers themselves)."""
    row = session.connection().execute(_STATE, {"tp": touchpoint_id}).first()
    return None if row is None else _context(row)


def _latest(row: sa.Row[Any]) -> Latest | None:
    if row.seq is None:
        return None
    return Latest(
        row.answer_id, row.seq, row.scale, row.score, list(row.reasons or []), row.comment, row.answered_at
    )


def survey_state(engine: Engine, link: SurveyLink) -> SurveyState | None:
    """The survey a verified link names, with its order, items and the answer that counts; None when
    it is not a survey of ours. Two reads, whatever the number of answers, outside a transaction (a
    page shows them; nothing is decided on them together): on PostgreSQL two round trips instead of
    four (no BEGIN, no ROLLBACK). SQLite's driver reads outside a transaction anyway (and would pay
    a PRAGMA to reset the isolation level)."""
    with autocommit(engine) as conn:
        row = _read_state(conn, link)
        if row is None:
            return None
        titles = list(conn.execute(_ITEM_TITLES, {"order": link.order_id}).scalars())
    return SurveyState(
        touchpoint_id=link.touchpoint_id,
        order_name=row.order_name,
        order_locale=row.order_locale,
        lines=titles,
        latest=_latest(row),
        closed_reason=_closed_reason(row.status, row.mailed),
    )


def _same(latest: Latest, link: SurveyLink, answer: Answer) -> bool:
    return (
        latest.scale == link.scale.name
        and latest.score == answer.score
        and latest.reasons == answer.reasons
        and (latest.comment or None) == answer.comment
    )


@dataclass(frozen=True)
class AnswerContext:
    """What the answer's own read found besides the answer (`record_answer` hands it to its hook):
    the order's facts a recovery case copies, and the survey's case, if it had one then. The read
    and the insert are one consistent step: an answer stored after the read takes the number this
    one wants, so this one reads again (and sees its case)."""

    order_id: int
    order_name: str
    order_locale: str | None
    shop_domain: str
    customer_id: int | None
    case_id: int | None


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
    on_stored: Callable[[Session, SurveyResponse, AnswerContext], object] | None = None,
) -> Recorded:
    """Store `answer` as the survey's latest, unless it already is; SurveyUnavailable when the
    survey takes no answer (checked in the same transaction). Safe against itself: any number of
    identical posts at once leave one row; different answers at once are all kept, in order. One
    read and one insert per try.

    `on_stored(session, row, context)` runs for a new answer inside its transaction, before the
    commit, so what it writes (a recovery case and the mail it owes) is stored with the answer or not
    at all. `row` is the stored answer (not attached to the session); `context` is what the same
    read found about the order and the survey's case, so the hook need not read them again."""
    for _ in range(attempts):
        with engine.connect() as conn:
            row = _read_state(conn, link)
            if row is None:
                raise SurveyUnavailable(f"survey {link.touchpoint_id} is not ours", closed=False)
            closed = _closed_reason(row.status, row.mailed)
            if closed is not None:
                raise SurveyUnavailable(closed, closed=True, order_locale=row.order_locale)
            latest = _latest(row)
            if latest is not None and _same(latest, link, answer):
                return Recorded(_response(link, latest), created=False)
            values = {
                "touchpoint_id": link.touchpoint_id,
                "order_id": link.order_id,
                "scale": link.scale.name,
                "score": answer.score,
                "comment": answer.comment,
                "reasons": answer.reasons,
                "answered_at": now,
                "seq": (latest.seq + 1) if latest is not None else 1,
            }
            try:
                new_id = conn.execute(_INSERT_ANSWER, values).scalar_one()
                stored = SurveyResponse(id=new_id, **values)
                if on_stored is not None:
                    # The hook writes through a session joined to this connection's transaction.
                    with Session(bind=conn) as session:
                        on_stored(session, stored, _context(row))
                        session.flush()
                conn.commit()
            except sa.exc.IntegrityError:
                conn.rollback()  # another answer took this number first: read again
                continue
            return Recorded(stored, created=True)
    raise AnswerConflict(f"survey {link.touchpoint_id}: gave up after {attempts} competing answers")


def _response(link: SurveyLink, latest: Latest) -> SurveyResponse:
    return SurveyResponse(
        id=latest.id,
        touchpoint_id=link.touchpoint_id,
        order_id=link.order_id,
        scale=latest.scale,
        score=latest.score,
        comment=latest.comment,
        reasons=latest.reasons,
        answered_at=latest.answered_at,
        seq=latest.seq,
    )
