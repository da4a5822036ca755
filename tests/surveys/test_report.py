"""`survey_report` and `aftercare surveys report` on SQLite and PostgreSQL, with surveys sent and
answered days in the past: response rate, CSAT or NPS, comments, by ISO week and by product."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from aftercare.cli import main
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.surveys.answers import read_answer, read_survey_token, record_answer
from aftercare.surveys.policy import load_survey_policy
from aftercare.surveys.report import md_text, survey_report
from tests.conftest import TEST_SECRET
from tests.surveys.helpers import Survey, mailed_survey

# Monday 30 November 2026, noon in Tokyo: ISO week 2026-W49.
NOW = datetime.fromisoformat("2026-11-30T12:00:00+09:00")


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def answer(
    rt: Runtime, survey: Survey, score: int, *, at: datetime, comment: str | None = None, reasons=()
) -> None:
    policy = load_survey_policy(rt.settings.policies_dir)
    link = read_survey_token(rt.settings.link_secret.get_secret_value(), survey.token, now=at)
    the_answer = read_answer(
        score=str(score), reasons=list(reasons), comment=comment, scale=link.scale, policy=policy
    )
    assert record_answer(rt.engine, link, the_answer, now=at).created


def report(rt: Runtime, weeks: int = 3, now: datetime = NOW):
    with Session(rt.engine) as session:
        return survey_report(session, now, weeks, tz="Asia/Tokyo")


def test_response_rate_csat_and_comments_by_week_and_by_product(rt: Runtime):
    # Week 47 (sent Wednesday 18 November): one answered 5 with a comment, one never answered.
    w47a = mailed_survey(rt, 1, now=days_ago(12))
    mailed_survey(rt, 2, now=days_ago(12))
    answer(rt, w47a, 5, at=days_ago(11), comment="とても丁寧な梱包でした", reasons=["packaging"])
    # Week 48 (sent Wednesday 25 November), English products: 2 changed to 4 (the latest counts);
    # one answered 3 in week 49 (counted in its sending week).
    w48a = mailed_survey(rt, 3, now=days_ago(5), sample="en-first")
    w48b = mailed_survey(rt, 4, now=days_ago(5), sample="en-first")
    answer(rt, w48a, 2, at=days_ago(4), comment="Late")
    answer(rt, w48a, 4, at=days_ago(3), comment="Arrived after all, lovely")
    answer(rt, w48b, 3, at=days_ago(0.1))
    # Outside the window (week 45), and a test order: neither counts.
    old = mailed_survey(rt, 5, now=days_ago(25))
    answer(rt, old, 1, at=days_ago(24), comment="古い回答")
    test_order = mailed_survey(rt, 6, now=days_ago(5), test=True)
    answer(rt, test_order, 1, at=days_ago(4), comment="テスト")

    r = report(rt)
    assert (r.total.sent, r.total.answered, r.total.response_rate) == (4, 3, 75.0)
    assert (r.total.csat_answers, r.total.satisfied, r.total.csat, r.total.nps) == (3, 2, 66.7, None)
    weeks = {t.label: (t.sent, t.answered, t.response_rate, t.csat) for t in r.by_week}
    assert weeks == {
        "2026-W47": (2, 1, 50.0, 100.0),
        "2026-W48": (2, 2, 100.0, 50.0),
        "2026-W49": (0, 0, None, None),
    }
    products = {t.label: (t.sent, t.answered, t.csat) for t in r.by_product}
    assert products == {
        "今治タオル ギフトセット": (2, 1, 100.0),
        "有田焼 マグカップ": (2, 1, 100.0),
        "Hinoki bath mat": (2, 2, 50.0),
        "Furoshiki wrapping cloth": (2, 2, 50.0),
    }
    assert [(c.order_name, c.score, c.comment, c.reasons, c.week) for c in r.comments] == [
        ("#2003", 4, "Arrived after all, lovely", [], "2026-W48"),
        ("#2001", 5, "とても丁寧な梱包でした", ["packaging"], "2026-W47"),
    ]
    # A report for an earlier moment shows what was known then: week 48's 3 had not come yet.
    earlier = report(rt, weeks=2, now=days_ago(1))
    assert (earlier.total.sent, earlier.total.answered) == (4, 2)

    md = r.as_markdown()
    assert "| total | 4 | 3 | 75.0% | 66.7% |" in md
    assert "| 2026\\-W48 | 2 | 2 | 100.0% | 50.0% |" in md and "NPS" not in md
    assert "とても丁寧な梱包でした" in md and "古い回答" not in md and "テスト" not in md
    data = json.loads(json.dumps(r.as_dict(), ensure_ascii=False))
    assert data["total"]["csat"] == 66.7 and len(data["comments"]) == 2


def test_nps_is_promoters_minus_detractors(rt: Runtime, tmp_path: Path):
    policy = load_survey_policy(rt.settings.policies_dir).model_copy(update={"scale": "nps10"})
    surveys = [mailed_survey(rt, n, now=days_ago(0.2), policy=policy) for n in range(5)]
    assert sorted(surveys[0].links) == list(range(11))
    for survey, score in zip(surveys, [10, 9, 7, 3], strict=False):  # the fifth never answers
        answer(rt, survey, score, at=days_ago(0.1))
    r = report(rt, weeks=1)
    assert (r.total.sent, r.total.answered, r.total.nps_answers, r.total.promoters, r.total.detractors) == (
        5,
        4,
        4,
        2,
        1,
    )
    assert (r.total.nps, r.total.csat) == (25.0, None)
    md = r.as_markdown()
    assert "| total | 5 | 4 | 80.0% | +25.0 |" in md and "CSAT" not in md


def test_what_customers_wrote_is_inert_in_the_markdown(rt: Runtime):
    survey = mailed_survey(rt, now=days_ago(0.2))
    hostile = (
        "![pixel](https://evil.example/t.png) <img src=x onerror=alert(1)> | col\n"
        "# heading [link](www.evil.example) **bold**"
    )
    answer(rt, survey, 1, at=days_ago(0.1), comment=hostile)
    md = report(rt, weeks=1).as_markdown()
    line = next(li for li in md.splitlines() if "pixel" in li)
    assert "![" not in line and "](" not in line and "<img" not in line and "://" not in line
    assert "www\\[\\.\\]evil" in line and "\\| col" in line and "\\# heading" in line and "\\*\\*bold" in line
    assert "\n# heading" not in md
    assert md_text("a\nb\r\nc") == "a b c"


def test_no_surveys_is_a_report_of_zeros_not_an_error(rt: Runtime):
    r = report(rt, weeks=2)
    assert (r.total.sent, r.total.response_rate, r.total.csat) == (0, None, None)
    assert [t.label for t in r.by_week] == ["2026-W48", "2026-W49"]
    assert "(none)" in r.as_markdown()
    with pytest.raises(ValueError):
        report(rt, weeks=0)


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    for name in list(os.environ):
        if name.startswith("AFTERCARE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFTERCARE_ENVIRONMENT", "test")
    monkeypatch.setenv("AFTERCARE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("AFTERCARE_VAR_DIR", str(settings.var_dir))
    monkeypatch.setenv("AFTERCARE_SHOPIFY_WEBHOOK_SECRET", TEST_SECRET)
    monkeypatch.setenv("AFTERCARE_WAKE_PREFECT", "false")
    return settings


def test_the_command_prints_the_report_as_markdown_or_json(rt: Runtime, cli_env: Settings, capsys):
    from aftercare.models import utcnow

    survey = mailed_survey(rt, now=utcnow() - timedelta(days=1))
    answer(rt, survey, 4, at=utcnow() - timedelta(hours=1), comment="ちょうどよい大きさ")
    capsys.readouterr()
    assert main(["surveys", "report", "--json", "--weeks", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["sent"] == 1 and data["total"]["csat"] == 100.0 and data["zone"] == "Asia/Tokyo"
    assert [c["comment"] for c in data["comments"]] == ["ちょうどよい大きさ"]
    assert main(["surveys", "report"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Survey report: 4 ISO week(s)") and "ちょうどよい大きさ" in out
    assert main(["surveys", "report", "--weeks", "0"]) == 2
    assert "--weeks must be from 1" in capsys.readouterr().err
