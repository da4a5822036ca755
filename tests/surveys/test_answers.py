"""Reading and storing answers (aftercare/surveys/answers.py): scores as strangers send them,
comments cleaned, different answers racing (every one kept, in order), and migration 0010."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare.models import SurveyResponse, Touchpoint, utcnow
from aftercare.runtime import Runtime
from aftercare.settings import PROJECT_ROOT
from aftercare.spine.db import alembic_config, make_engine, migrate
from aftercare.surveys.answers import (
    Answer,
    AnswerRefused,
    SurveyLink,
    SurveyUnavailable,
    clean_comment,
    parse_reasons,
    parse_score,
    read_survey_token,
    record_answer,
)
from aftercare.surveys.policy import SCALES, load_survey_policy
from tests.surveys.helpers import mailed_survey

CSAT, NPS = SCALES["csat5"], SCALES["nps10"]


def test_a_score_is_plain_digits_on_the_scale():
    assert [parse_score(s, CSAT) for s in ("1", "5")] == [1, 5]
    assert [parse_score(s, NPS) for s in ("0", "10")] == [0, 10]
    assert parse_score(4, CSAT) == 4  # an int (a JSON caller) is the same number
    for bad in (
        "0",
        "6",
        "05",
        "5.0",
        " 5",
        "٥",
        "５",
        "",
        "-0",
        "1_0",
        "0x5",
        True,
        False,
        5.0,
        None,
        6,
        -1,
    ):
        with pytest.raises(AnswerRefused) as err:
            parse_score(bad, CSAT)
        assert err.value.field == "score"
    for bad in ("11", "010", "-1", 11):
        with pytest.raises(AnswerRefused):
            parse_score(bad, NPS)


def test_a_comment_is_cleaned_and_never_cut():
    assert clean_comment(None, 10) is None
    assert clean_comment("  \r\n\x00 ", 10) is None
    assert clean_comment("a\r\nb\rc\x1b\x9b\x00\td", 20) == "a\nb\nc\td"
    assert clean_comment("e\u0301", 10) == "\u00e9"  # NFC
    assert clean_comment("<b>x</b>", 10) == "<b>x</b>"  # stored as written
    assert clean_comment("\u200d👩\u200d👩", 10) == "\u200d👩\u200d👩"  # joiners are not control characters
    with pytest.raises(AnswerRefused) as err:
        clean_comment("x" * 11, 10)
    assert err.value.field == "comment" and "11 characters" in str(err.value)


def test_reasons_are_the_policys_each_once_in_its_order():
    policy = load_survey_policy(PROJECT_ROOT / "policies")
    assert parse_reasons(["delivery", "product_quality", "delivery"], policy) == [
        "product_quality",
        "delivery",
    ]
    assert parse_reasons([], policy) == []
    with pytest.raises(AnswerRefused) as err:
        parse_reasons(["delivery", "<script>"], policy)
    assert err.value.field == "reasons"


def test_different_answers_at_once_are_all_kept_each_with_its_own_number(rt: Runtime):
    survey = mailed_survey(rt)
    link = read_survey_token(rt.settings.link_secret.get_secret_value(), survey.token, now=utcnow())
    barrier = threading.Barrier(5)
    errors: list[BaseException] = []

    def answer(score: int) -> None:
        try:
            barrier.wait()
            record_answer(rt.engine, link, Answer(score, [], f"answer {score}"), now=utcnow())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=answer, args=(n,)) for n in range(1, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with Session(rt.engine) as s:
        rows = s.exec(select(SurveyResponse).order_by(SurveyResponse.seq)).all()  # type: ignore[arg-type]
    assert sorted(r.score for r in rows) == [1, 2, 3, 4, 5]
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]


def test_migration_0010_numbers_earlier_answers_and_goes_down_and_up(own_database):
    from alembic import command

    settings = own_database
    cfg = alembic_config(settings)
    command.upgrade(cfg, "0009")
    engine = make_engine(settings)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO orders (shop_domain, shopify_id, name, locale, currency, subtotal, "
                    "total_discounts, total_shipping, total_tax, total, taxes_included, requires_shipping, "
                    "is_gift, discount_codes, is_test, flags, placed_at, source_updated_at, purchase_seq, "
                    "created_at, updated_at, raw) VALUES "
                    "('s', 1, '#1', 'ja', 'JPY', 0, 0, 0, 0, 0, false, true, false, '[]', false, '[]', "
                    "'2026-11-01', '2026-11-01', 1, '2026-11-01', '2026-11-01', '{}')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO touchpoints (order_id, kind, seq, due_at, status, policy_version, "
                    "created_at) VALUES (1, 'delivery_survey', 1, '2026-11-01', 'done', 'v', '2026-11-01')"
                )
            )
            for score in (2, 4):
                conn.execute(
                    sa.text(
                        "INSERT INTO survey_responses (touchpoint_id, order_id, scale, score, reasons, "
                        f"answered_at) VALUES (1, 1, 'csat5', {score}, '[]', '2026-11-02')"
                    )
                )
        migrate(settings)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT score, seq FROM survey_responses ORDER BY id")).all() == [
                (2, 1),
                (4, 2),
            ]
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(
                    sa.text(
                        "INSERT INTO survey_responses (touchpoint_id, order_id, scale, score, reasons, "
                        "answered_at, seq) VALUES (1, 1, 'csat5', 5, '[]', '2026-11-03', 2)"
                    )
                )
            conn.rollback()
        command.downgrade(cfg, "0009")
        with engine.connect() as conn:
            assert "seq" not in {c["name"] for c in sa.inspect(conn).get_columns("survey_responses")}
        command.upgrade(cfg, "head")
    finally:
        engine.dispose()


def test_an_answer_to_a_survey_called_off_or_not_ours_is_refused_in_its_transaction(rt: Runtime):
    secret = rt.settings.link_secret.get_secret_value()
    survey = mailed_survey(rt, send=False)  # queued, never sent
    link = read_survey_token(secret, survey.token, now=utcnow())
    with rt.engine.begin() as conn:  # then called off (say, the customer unsubscribed)
        conn.execute(
            sa.update(Touchpoint).where(Touchpoint.id == survey.touchpoint_id).values(status="cancelled")  # type: ignore[arg-type]
        )
    with pytest.raises(SurveyUnavailable) as err:
        record_answer(rt.engine, link, Answer(5, [], None), now=utcnow())
    assert err.value.closed and err.value.order_locale == "ja" and "called off" in str(err.value)
    ghost = SurveyLink(987_654_321, link.order_id, link.scale)
    with pytest.raises(SurveyUnavailable) as err:
        record_answer(rt.engine, ghost, Answer(5, [], None), now=utcnow())
    assert not err.value.closed
    with Session(rt.engine) as s:
        assert s.exec(select(SurveyResponse)).all() == []
