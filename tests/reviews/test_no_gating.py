"""No gating, proven on the real pipeline, dispatcher, composers, outbox and database (SQLite and
PostgreSQL): whatever the customer answered in the survey (1-5, or NPS 0-10, with any comment and
reasons, or nothing), whatever the triage of their earlier review said (rating, negative or not,
its score and reasons, where its reply stands), the review request goes out the same way: the same
decision and verdict, at the same time, to the same place, with the same words (the mail with its
per-customer tokens and order name masked), and its reminder the same. Only what may change it
legitimately, and never by sentiment, is held fixed per example family: whether an earlier review
of one of the order's products exists, and how old it is (the per-product memory).

A survey answer is stored the way the survey page stores it, through the recovery wing's hook, so a
low score or a negative comment opens a real recovery case (its private apology row, its ops mail);
the case is then left open, escalated or answered (`case_state`). Nothing in the request's code reads
them (the import check at the end)."""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from aftercare.models import (
    Order,
    OutboxMessage,
    OutboxStatus,
    RecoveryStatus,
    Review,
    ReviewStatus,
    SurveyResponse,
    Touchpoint,
    TouchpointStatus,
)
from aftercare.recovery.cases import Recovery
from aftercare.rendering import RenderedEmail
from aftercare.settings import PROJECT_ROOT
from aftercare.spine import outbox
from aftercare.surveys.policy import load_survey_policy
from tests.reviews.request_setup import NOW, dispatch, mails, of_order, ordered

REASONS = [r.code for r in load_survey_policy(PROJECT_ROOT / "policies").reasons]
COMMENTS = [
    None,
    "最悪でした。二度と買いません。",
    "とても良かったです！",
    "Terrible, arrived broken and nobody answered.",
    "Lovely, thank you!",
]


@dataclass(frozen=True)
class World:
    """Everything about this customer that must not change how they are asked for a review."""

    survey: tuple[str, int, str | None, tuple[str, ...]] | None  # (scale, score, comment, reasons)
    # Fixed per family (may legitimately change the request): the earlier review's product and age.
    earlier_product: str | None  # a SKU of this order's products, another product's, or no review
    earlier_age_days: int
    # Varied: what the earlier review said and how it was judged.
    rating: int
    negative: bool
    triage_score: float
    triage_reasons: tuple[str, ...]
    review_status: str
    case_state: str = "open"  # a recovery case opened by the answer: open, escalated or answered

    @property
    def family(self) -> tuple[Any, ...]:
        return (self.earlier_product, self.earlier_age_days if self.earlier_product else None)


surveys = st.one_of(
    st.none(),
    st.tuples(
        st.just("csat5"),
        st.integers(1, 5),
        st.sampled_from(COMMENTS),
        st.lists(st.sampled_from(REASONS), max_size=3).map(tuple),
    ),
    st.tuples(
        st.just("nps10"),
        st.integers(0, 10),
        st.sampled_from(COMMENTS),
        st.lists(st.sampled_from(REASONS), max_size=3).map(tuple),
    ),
)
worlds = st.builds(
    World,
    survey=surveys,
    earlier_product=st.sampled_from([None, "ARITA-MUG-AI", "OTHER-PRODUCT-9"]),
    earlier_age_days=st.sampled_from([40, 500]),
    rating=st.integers(1, 5),
    negative=st.booleans(),
    triage_score=st.floats(-1, 1, allow_nan=False),
    triage_reasons=st.lists(
        st.sampled_from(["rating 1 <= 2", "text score -0.8", "phrase: 壊れて"]), max_size=2
    ).map(tuple),
    review_status=st.sampled_from([s.value for s in ReviewStatus]),
    case_state=st.sampled_from(["open", "escalated", "answered"]),
)

_ORDER_NAME = re.compile(r"#8\d{3}\b")
_TOKENS = re.compile(r"/(r|unsubscribe)/[A-Za-z0-9_.\-]+")
_ADDRESS = re.compile(r"buyer\d+@example\.jp")


def masked(text: str | None) -> str | None:
    """A mail's words without what is this customer's own: the order name, the tokens."""
    if text is None:
        return None
    return _ADDRESS.sub("<address>", _TOKENS.sub(r"/\1/<token>", _ORDER_NAME.sub("#<order>", text)))


def verdict_of(tp: Touchpoint) -> Any:
    return {k: v for k, v in (tp.verdict or {}).items() if k != "decided_at"} or None


def set_the_world(rt: Any, order_id: int, world: World) -> None:
    with Session(rt.engine) as s:
        order = s.get(Order, order_id)
        assert order is not None and order.customer_id is not None
        survey = s.exec(
            select(Touchpoint).where(Touchpoint.order_id == order_id, Touchpoint.kind == "delivery_survey")
        ).one()
        # The survey went out five days ago (the same for everyone: it counts in the caps alike).
        row = outbox.enqueue(
            s,
            touchpoint=survey,
            to_email=order.email or "",
            to_name=None,
            rendered=RenderedEmail("survey", "survey", "<p>survey</p>"),
            locale="ja",
            order_name=order.name,
            is_test=False,
        )
        s.execute(
            OutboxMessage.__table__.update()  # type: ignore[attr-defined]
            .where(OutboxMessage.id == row.id)
            .values(
                status=OutboxStatus.SENT, created_at=NOW - timedelta(days=5), sent_at=NOW - timedelta(days=5)
            )
        )
        survey.status = TouchpointStatus.DONE
        s.add(survey)
        if world.survey is not None:
            scale, score, comment, reasons = world.survey
            answered = NOW - timedelta(days=4)
            response = SurveyResponse(
                touchpoint_id=survey.id,  # type: ignore[arg-type]
                order_id=order_id,
                scale=scale,
                score=score,
                comment=comment,
                reasons=list(reasons),
                answered_at=answered,
            )
            s.add(response)
            s.flush()
            # As the survey page stores an answer: the recovery wing's hook, in the same transaction.
            recovery = Recovery.load(rt.settings)
            assessment = recovery.assess(score=score, scale=scale, comment=comment, locale=order.locale)
            case = recovery.note_answer(s, response, assessment, now=answered)
            if case is not None:
                if world.case_state == "escalated":
                    case.escalated_at = answered + timedelta(days=2)
                elif world.case_state == "answered":
                    case.status, case.answered_at = RecoveryStatus.ANSWERED, answered + timedelta(hours=3)
                s.add(case)
        if world.earlier_product is not None:
            s.add(
                Review(
                    platform="own",
                    platform_review_id=f"earlier-{order_id}",
                    customer_id=order.customer_id,
                    product_ref=world.earlier_product,
                    rating=world.rating,
                    title="…",
                    body="届いた時に壊れていました" if world.negative else "素敵でした",
                    source_created_at=NOW - timedelta(days=world.earlier_age_days),
                    triage_negative=world.negative,
                    triage_score=world.triage_score,
                    triage_reasons=list(world.triage_reasons),
                    status=world.review_status,
                )
            )
        s.commit()


def outcome(rt: Any, order_id: int, request_tp: int, first: Any, second: Any) -> dict[str, Any]:
    """Whether, when, where and how the request (and its reminder) went, customer tokens masked."""
    with Session(rt.engine) as s:
        request = s.get(Touchpoint, request_tp)
        assert request is not None
    [reminder] = of_order(rt, order_id, "review_reminder") or [None]
    out: dict[str, Any] = {
        "decisions": [
            (d.kind, d.outcome, d.line, d.send_at, d.zone)
            for result in (first, second)
            for d in result.sent + result.held + result.skipped + result.failed
            if d.kind in ("review_request", "review_reminder")
        ],
        "request": (request.status, masked(request.reason), request.due_at, verdict_of(request)),
        "reminder": None
        if reminder is None
        else (reminder.status, masked(reminder.reason), reminder.due_at - NOW, verdict_of(reminder)),
    }
    for kind in ("review_request", "review_reminder"):
        out[kind] = [
            (
                m.status,
                m.locale,
                masked(m.subject),
                masked(m.text_body),
                masked(m.html_body),
                {k: masked(v) for k, v in (m.headers or {}).items()},
            )
            for m in mails(rt, kind, order_id)
        ]
    return out


def test_no_score_triage_or_complaint_changes_whether_when_where_or_how_we_ask(rt):
    numbers = itertools.count(1)
    baselines: dict[tuple[Any, ...], dict[str, Any]] = {}

    @settings(max_examples=24, deadline=None, database=None)
    @given(world=worlds)
    def check(world: World) -> None:
        n = next(numbers)
        req = ordered(rt, 100 + n, keep_survey=True)
        set_the_world(rt, req.order_id, world)
        first = dispatch(rt, NOW)
        second = dispatch(rt, NOW + timedelta(days=7))
        seen = outcome(rt, req.order_id, req.touchpoint_id, first, second)
        assert seen["decisions"], "the request was never decided"
        expected = baselines.setdefault(world.family, seen)
        assert seen == expected, f"{world} was asked differently from its family's first example"

    check()
    # The families are what may legitimately differ: a product reviewed 40 days ago is not asked
    # about again; one reviewed 500 days ago, or another product, changes nothing.
    mug_recent = baselines.get(("ARITA-MUG-AI", 40))
    unrelated = baselines.get((None, None)) or baselines.get(("OTHER-PRODUCT-9", 40))
    if mug_recent and unrelated:
        assert "有田焼 マグカップ" not in mug_recent["review_request"][0][3]
        assert "有田焼 マグカップ" in unrelated["review_request"][0][3]


# -- and nothing in the request's code could read them -----------------------------------------------------

REQUEST_MODULES = ["requests.py", "request_policy.py", "form_links.py", "invitations.py"]
# Names through which a score, a rating, triage or a complaint could be read.
SENTIMENT = {
    "SurveyResponse",
    "score",
    "rating",
    "triage_negative",
    "triage_score",
    "triage_reasons",
    "negative",
    "ReviewDraft",
    "ReviewDecision",
    "ReviewReply",
}


def test_the_request_code_reads_no_score_rating_triage_or_complaint():
    for name in REQUEST_MODULES:
        path = PROJECT_ROOT / "aftercare" / "reviews" / name
        tree = ast.parse(path.read_text(), filename=str(path))
        used: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("aftercare.surveys", "aftercare.recovery")), (
                    name,
                    node.module,
                )
                used.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith(("aftercare.surveys", "aftercare.recovery")), (
                        name,
                        alias.name,
                    )
        assert not used & SENTIMENT, f"{name} uses {sorted(used & SENTIMENT)}"


def test_the_checker_sees_a_forbidden_read(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(r):\n    return r.rating >= 4\n")
    names = {n.attr for n in ast.walk(ast.parse(bad.read_text())) if isinstance(n, ast.Attribute)}
    assert names & SENTIMENT == {"rating"}
