"""Opening recovery cases from the survey page of the real app, on SQLite and PostgreSQL: the
thresholds of both scales, a negative comment under a high score, one case per survey whatever the
customer does next (answers changed, posted twice at once), the ops mail in the same transaction,
and the escalation of a case unanswered after 24 business hours (time given, not read)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlmodel import Session, select

from aftercare.models import OutboxMessage, RecoveryCase, Review, SurveyResponse
from aftercare.recovery.cases import Recovery, assess
from aftercare.recovery.policy import load_recovery_policy
from aftercare.reviews import intake
from aftercare.settings import PROJECT_ROOT
from aftercare.surveys.answers import Answer, SurveyLink, record_answer
from aftercare.surveys.policy import SCALES, load_survey_policy
from tasks.review_sweep import reviews_needing_a_run
from tests.pipeline import send_outbox, staff_mails
from tests.recovery.helpers import answer, app_settings, cases, client_for, reply_row
from tests.surveys.helpers import mailed_survey

JST = ZoneInfo("Asia/Tokyo")
POLICY = load_recovery_policy(PROJECT_ROOT / "policies")
REVIEWS = intake.reviews_policy(PROJECT_ROOT / "policies")


def judge(score: int, scale: str, comment: str | None = None, locale: str = "ja"):
    return assess(
        score=score, scale=scale, comment=comment, locale=locale, policy=POLICY, reviews_policy=REVIEWS
    )


@pytest.mark.parametrize(("score", "opens"), [(1, True), (2, True), (3, False), (4, False), (5, False)])
def test_csat_threshold(score, opens):
    assert judge(score, "csat5").opens is opens


@pytest.mark.parametrize(
    ("score", "opens"), [(0, True), (3, True), (6, True), (7, False), (9, False), (10, False)]
)
def test_nps_threshold(score, opens):
    assert judge(score, "nps10").opens is opens


@pytest.mark.parametrize(
    ("comment", "locale"),
    [
        ("箱が潰れて届き、中のカップが割れていました。", "ja"),
        ("The parcel arrived damaged and the mug was broken.", "en"),
    ],
)
def test_a_negative_comment_opens_a_case_whatever_the_score(comment, locale):
    verdict = judge(5, "csat5", comment, locale)
    assert verdict.opens and not verdict.low and verdict.negative_comment
    assert any(r.startswith("negative comment:") for r in verdict.reasons)
    assert not judge(10, "nps10", "Lovely, arrived quickly. Thank you!", "en").opens


def test_a_negative_comment_does_not_open_a_case_when_the_policy_says_so():
    quiet = POLICY.model_copy(update={"negative_comment_opens_a_case": False})
    verdict = assess(
        score=5, scale="csat5", comment="Arrived broken.", locale="en", policy=quiet, reviews_policy=REVIEWS
    )
    assert not verdict.opens


# -- through the page --------------------------------------------------------------------------------


@pytest.fixture
def page(rt, settings, tmp_path: Path):
    own = app_settings(settings, tmp_path)
    with client_for(own) as client:
        yield client, own


def test_a_low_score_opens_one_case_with_its_reply_row_and_tells_ops_once(rt, page):
    client, own = page
    survey = mailed_survey(rt)

    assert answer(client, survey, 1, "届いた商品が欠けていました。", reason=["packaging"]) == 303

    [case] = cases(rt)
    assert (case.touchpoint_id, case.order_id, case.score, case.scale) == (
        survey.touchpoint_id,
        survey.order_id,
        1,
        "csat5",
    )
    assert case.status == "open" and case.answers == [] and case.escalated_at is None
    assert case.policy_version == POLICY.version
    assert case.reasons[0] == "score 1 <= 2 (csat5)"
    # The first answer is due 24 business hours after it opened (shop calendar).
    clock = Recovery.load(own).clock
    assert case.first_answer_due_at == clock.add(case.opened_at, 24)
    review = reply_row(rt, case)
    assert (review.platform, review.status, review.triage_negative, review.order_id) == (
        "private",
        "new",
        True,
        survey.order_id,
    )
    assert review.body == "届いた商品が欠けていました。" and review.author_display_name is None
    # The patrol starts its approval run like any review needing a reply.
    assert review.id in [
        i for i, _ in reviews_needing_a_run(rt.engine, intake.reviews_policy(own.policies_dir))
    ]
    # Ops: one mail per address of policies/recovery.yaml ops.notify, sent by the drain loop.
    send_outbox(rt)
    [mail] = staff_mails(rt, "recovery_case_opened", f"case-{case.id}")
    assert mail["To"] == "support-lead@example.com"
    assert survey.order_name in mail["Subject"] and "1/5" in mail["Subject"]
    body = mail.get_body(("plain",)).get_content()
    assert "届いた商品が欠けていました。" in body and "梱包" in body


def test_an_answer_above_the_threshold_opens_nothing(rt, page):
    client, _ = page
    survey = mailed_survey(rt)
    assert answer(client, survey, 4, "Good.") == 303
    assert cases(rt) == []
    with Session(rt.engine) as s:
        assert s.exec(select(OutboxMessage).where(OutboxMessage.kind == "recovery_case_opened")).all() == []


def test_a_negative_comment_with_five_stars_opens_a_case(rt, page):
    client, _ = page
    survey = mailed_survey(rt)
    assert answer(client, survey, 5, "箱が潰れて届き、中のカップが割れていました。") == 303
    [case] = cases(rt)
    assert case.score == 5 and any(r.startswith("negative comment:") for r in case.reasons)


def test_answers_changed_twice_leave_one_case_with_both_noted_and_it_stays_open(rt, page):
    client, _ = page
    survey = mailed_survey(rt)
    assert answer(client, survey, 2) == 303
    assert answer(client, survey, 5, "Sorted now, thanks.") == 303  # above the threshold: noted, not closed
    assert answer(client, survey, 1) == 303  # low again: still the same case
    assert answer(client, survey, 1) == 303  # the same answer again: not even a new answer

    [case] = cases(rt)
    assert case.score == 2 and case.status == "open"
    assert [(a["score"], a["at_or_below_threshold"]) for a in case.answers] == [(5, False), (1, True)]
    with Session(rt.engine) as s:
        assert len(s.exec(select(Review).where(Review.platform == "private")).all()) == 1
        assert len(s.exec(select(SurveyResponse)).all()) == 3
    send_outbox(rt)
    assert len(staff_mails(rt, "recovery_case_opened")) == 1


def test_a_high_first_answer_then_a_low_one_opens_the_case_then(rt, page):
    client, _ = page
    survey = mailed_survey(rt)
    assert answer(client, survey, 5) == 303
    assert cases(rt) == []
    assert answer(client, survey, 1) == 303
    [case] = cases(rt)
    assert case.score == 1 and case.answers == []


@pytest.mark.parametrize("different", [False, True], ids=["same answer", "different answers"])
def test_concurrent_submits_open_one_case(rt, settings, tmp_path, different):
    """Eight posts at once (a double click, a script): answers are numbered per survey, so the
    case is opened by one of them and the others are noted on it (or are the same answer)."""
    own = app_settings(settings, tmp_path)
    survey = mailed_survey(rt)
    recovery = Recovery.load(own)
    link = SurveyLink(survey.touchpoint_id, survey.order_id, SCALES["csat5"])
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def post(i: int) -> None:
        the_answer = Answer(score=(i % 2) + 1 if different else 1, reasons=[], comment=None)
        now = datetime.now(JST)
        assessment = recovery.assess(score=the_answer.score, scale="csat5", comment=None, locale="ja")
        barrier.wait()
        try:
            record_answer(
                rt.engine,
                link,
                the_answer,
                now=now,
                attempts=32,
                on_stored=recovery.on_stored(assessment, now),
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    [case] = cases(rt)
    with Session(rt.engine) as s:
        responses = s.exec(select(SurveyResponse).order_by(SurveyResponse.seq)).all()
        assert len(s.exec(select(Review).where(Review.platform == "private")).all()) == 1
        staff = s.exec(select(OutboxMessage).where(OutboxMessage.kind == "recovery_case_opened")).all()
    assert len(staff) == 1
    assert case.response_id == responses[0].id
    # Every answer after the first is on the case, once each.
    assert [a["response_id"] for a in case.answers] == [r.id for r in responses[1:]]
    # The same answer is stored once; different ones are kept in order (one equal to the answer that
    # counts when it arrives is not stored again).
    assert len(responses) >= 2 if different else len(responses) == 1


def test_a_refused_answer_opens_nothing(rt, page):
    client, _ = page
    survey = mailed_survey(rt)
    for bad in ("0", "6", "05", "1.0", "", "１"):
        assert answer(client, survey, bad) == 422
    assert cases(rt) == []


# -- escalation: time is an input --------------------------------------------------------------------


def open_case_at(rt, own, when: datetime, n: int = 0, score: int = 1) -> RecoveryCase:
    survey = mailed_survey(rt, n, now=when - timedelta(days=1))
    recovery = Recovery.load(own)
    link = SurveyLink(survey.touchpoint_id, survey.order_id, SCALES["csat5"])
    assessment = recovery.assess(score=score, scale="csat5", comment=None, locale="ja")
    record_answer(
        rt.engine, link, Answer(score, [], None), now=when, on_stored=recovery.on_stored(assessment, when)
    )
    return cases(rt)[-1]


def jst(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=JST)


def test_a_case_opened_on_friday_evening_is_escalated_on_monday_evening_once(rt, settings, tmp_path):
    own = app_settings(settings, tmp_path)
    recovery = Recovery.load(own)
    case = open_case_at(rt, own, jst("2026-12-04 20:00"))  # Friday 20:00 JST
    assert case.first_answer_due_at == jst("2026-12-07 20:00")

    for not_yet in ("2026-12-05 20:00", "2026-12-06 23:59", "2026-12-07 19:59"):  # the weekend passes
        assert recovery.escalate_overdue(rt.engine, jst(not_yet)) == []
    assert recovery.escalate_overdue(rt.engine, jst("2026-12-07 20:00")) == [case.id]
    assert recovery.escalate_overdue(rt.engine, jst("2026-12-08 09:00")) == []  # told once

    send_outbox(rt)
    [mail] = staff_mails(rt, "recovery_case_overdue", f"case-{case.id}")
    assert mail["To"] == "manager@example.com"
    assert "not drafted yet" in mail.get_body(("plain",)).get_content()
    [escalated] = cases(rt)
    assert escalated.escalated_at == jst("2026-12-07 20:00") and escalated.status == "open"


def test_a_case_opened_before_a_holiday_gets_the_day_after(rt, settings, tmp_path):
    own = app_settings(settings, tmp_path)
    recovery = Recovery.load(own)
    case = open_case_at(rt, own, jst("2026-11-20 18:00"))  # Friday before 勤労感謝の日 (Mon 23 Nov)
    assert recovery.escalate_overdue(rt.engine, jst("2026-11-23 18:00")) == []
    assert recovery.escalate_overdue(rt.engine, jst("2026-11-24 18:00")) == [case.id]


def test_an_answered_case_is_not_escalated(rt, settings, tmp_path):
    own = app_settings(settings, tmp_path)
    recovery = Recovery.load(own)
    case = open_case_at(rt, own, jst("2026-12-01 10:00"))
    with Session(rt.engine) as s:
        row = s.get(RecoveryCase, case.id)
        row.status, row.answered_at = "answered", jst("2026-12-01 15:00")
        s.add(row)
        s.commit()
    assert recovery.escalate_overdue(rt.engine, jst("2026-12-10 10:00")) == []


def test_concurrent_escalations_tell_ops_once(rt, settings, tmp_path):
    own = app_settings(settings, tmp_path)
    case = open_case_at(rt, own, jst("2026-12-01 10:00"))
    results: list[list[int]] = []
    barrier = threading.Barrier(4)

    def sweep() -> None:
        recovery = Recovery.load(own)
        barrier.wait()
        results.append(recovery.escalate_overdue(rt.engine, jst("2026-12-03 10:00")))

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(map(len, results)) == [0, 0, 0, 1] and [case.id] in results
    with Session(rt.engine) as s:
        assert (
            len(s.exec(select(OutboxMessage).where(OutboxMessage.kind == "recovery_case_overdue")).all()) == 1
        )


def test_nps_surveys_use_their_own_threshold(rt, settings, tmp_path):
    own = app_settings(settings, tmp_path)
    data = yaml.safe_load((own.policies_dir / "surveys.yaml").read_text(encoding="utf-8"))
    data["scale"] = "nps10"
    (own.policies_dir / "surveys.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    nps = load_survey_policy(own.policies_dir)
    with client_for(own) as client:
        high = mailed_survey(rt, 0, policy=nps)
        low = mailed_survey(rt, 1, policy=nps)
        assert answer(client, high, 7) == 303
        assert answer(client, low, 6) == 303
    [case] = cases(rt)
    assert (case.touchpoint_id, case.scale, case.score) == (low.touchpoint_id, "nps10", 6)
    assert reply_row(rt, case).title == "survey score 6 (0-10)"
