"""The survey mail (aftercare/surveys/mail.py, templates/<lang>/delivery_survey.*), composed with
the context the dispatcher builds, on SQLite and PostgreSQL: the words, the order, one signed link
per score (nothing personal in it, expiring when the survey closes), the footer the law asks for."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta

import pytest
from sqlmodel import Session

from aftercare import signing
from aftercare.models import Customer, Order, OrderLine, utcnow
from aftercare.runtime import Runtime
from aftercare.surveys.answers import read_survey_token
from aftercare.surveys.policy import load_survey_policy
from tests.surveys.helpers import compose, delivered_order, mailed_survey


def claims_of(token: str) -> dict:
    """What anyone holding the link can read in it (the payload is signed, not encrypted)."""
    payload = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_the_japanese_mail_asks_warmly_shows_the_order_and_a_link_per_score(rt: Runtime):
    now = utcnow()
    survey = mailed_survey(rt, now=now)
    mail = survey.mail
    assert mail.subject == f"【aftercare デモショップ】ご注文の商品はいかがでしたか？（{survey.order_name}）"
    text = mail.text_body
    assert text.startswith("山田 花子 様\n\nこのたびはaftercare デモショップをご利用いただき")
    assert "ご注文の商品はいかがでしたか？" in text and survey.order_name in text
    assert "・今治タオル ギフトセット（ホワイト） × 1" in text and "・有田焼 マグカップ（藍） × 2" in text
    assert sorted(survey.links) == [1, 2, 3, 4, 5]
    assert "1（不満）：http" in text and "5（とても満足）：http" in text
    # The footer: sender, address, contact, and the way to refuse right beside its link.
    assert "送信者：aftercare デモショップ運営事務局" in text and "所在地：〒100-0005" in text
    assert "配信を停止（受信を拒否）できます" in text and "/unsubscribe/" in text
    html = mail.html_body
    assert '<html lang="ja">' in html and "配信を停止（受信を拒否）できます" in html
    for score, url in survey.links.items():
        assert f'<a href="{url}"' in html and f">{score}</a>" in html
        assert url.startswith(rt.settings.customer_base_url + "/survey/") and url.endswith(f"?score={score}")
    policy = load_survey_policy(rt.settings.policies_dir)
    closes = now + timedelta(days=policy.open_days)
    last_day = (closes - timedelta(days=1)).date()
    assert f"{last_day.year}年{last_day.month}月{last_day.day}日" in text


def test_every_link_names_this_survey_only_carries_nothing_personal_and_expires_when_it_closes(rt: Runtime):
    now = utcnow()
    survey = mailed_survey(rt, now=now)
    secret = rt.settings.link_secret.get_secret_value()
    policy = load_survey_policy(rt.settings.policies_dir)
    tokens = {re.search(r"/survey/([^?]+)", u).group(1) for u in survey.links.values()}
    assert tokens == {survey.token}  # one token per survey; the score is the link's own parameter
    claims = claims_of(survey.token)
    assert set(claims) == {"t", "o", "k", "exp"}
    assert (claims["t"], claims["o"], claims["k"]) == (survey.touchpoint_id, survey.order_id, "csat5")
    assert claims["exp"] == int((now + timedelta(days=policy.open_days)).timestamp())
    everything = survey.mail.text_body + survey.mail.html_body
    with Session(rt.engine) as s:
        customer = s.get(Customer, s.get(Order, survey.order_id).customer_id)
    assert customer.email not in json.dumps(claims) and customer.email not in survey.token
    link = read_survey_token(
        secret, survey.token, now=now + timedelta(days=policy.open_days) - timedelta(seconds=1)
    )
    assert (link.touchpoint_id, link.order_id, link.scale.name) == (
        survey.touchpoint_id,
        survey.order_id,
        "csat5",
    )
    with pytest.raises(signing.TokenExpired):
        read_survey_token(secret, survey.token, now=now + timedelta(days=policy.open_days))
    with pytest.raises(signing.TokenInvalid):  # the unsubscribe link's token is not a survey token
        unsubscribe = re.search(r"/unsubscribe/([A-Za-z0-9_.\-]+)", everything).group(1)
        read_survey_token(secret, unsubscribe, now=now)


def test_composing_again_at_the_same_moment_writes_the_same_links(rt: Runtime):
    order, touchpoint = delivered_order(rt)
    now = utcnow()
    first, again = compose(rt, touchpoint, now=now), compose(rt, touchpoint, now=now)
    assert first == again


def test_the_english_mail(rt: Runtime):
    survey = mailed_survey(rt, sample="en-first")
    mail = survey.mail
    assert mail.subject == f"How was your order {survey.order_name}? - aftercare demo shop"
    assert "How was your order?" in mail.text_body and "- Hinoki bath mat (Large) x 1" in mail.text_body
    assert "1 (very dissatisfied): http" in mail.text_body and "5 (very satisfied): http" in mail.text_body
    assert (
        "Sent by aftercare demo shop\nDemo Bldg. 5F" in mail.text_body
        and "To unsubscribe, open:\nhttp" in mail.text_body
    )
    assert '<html lang="en">' in mail.html_body and ">Unsubscribe</a>" in mail.html_body


@pytest.mark.parametrize("sample", ["ja-first-gift", "en-first"])
def test_an_nps_policy_asks_for_a_recommendation_from_0_to_10(rt: Runtime, sample: str):
    policy = load_survey_policy(rt.settings.policies_dir).model_copy(update={"scale": "nps10"})
    survey = mailed_survey(rt, sample=sample, policy=policy)
    assert sorted(survey.links) == list(range(11))
    assert claims_of(survey.token)["k"] == "nps10"
    text = survey.mail.text_body
    if sample == "en-first":
        assert (
            "How likely are you to recommend aftercare demo shop" in text and "10 (extremely likely)" in text
        )
    else:
        assert (
            "すすめたいと思われますか" in text
            and "10（ぜひすすめたい）" in text
            and "0（まったく思わない）" in text
        )


def test_hostile_names_and_titles_cannot_break_the_mail(rt: Runtime):
    order, touchpoint = delivered_order(rt)
    with Session(rt.engine) as s:
        customer = s.get(Customer, order.customer_id)
        customer.last_name, customer.first_name = "山田\r\nBcc: x@evil.example", "<b>花子</b>\u200b"
        s.add(customer)
        line = s.get(
            OrderLine, s.exec(OrderLine.__table__.select().where(OrderLine.order_id == order.id)).first().id
        )
        line.title = '<img src=x onerror=alert(1)>"タオル"'
        s.add(line)
        s.commit()
    mail = compose(rt, touchpoint, now=utcnow())
    assert "\r" not in mail.text_body.split("様")[0] and "山田 Bcc: x@evil.example" in mail.text_body
    assert (
        "<img src=x" not in mail.html_body
        and "&lt;img src=x onerror=alert(1)&gt;&#34;タオル&#34;" in mail.html_body
    )
    assert "&lt;b&gt;花子&lt;/b&gt;" in mail.html_body


def test_the_shipped_composer_writes_the_mail_of_the_shipped_policy(rt: Runtime):
    from aftercare.settings import PROJECT_ROOT
    from aftercare.surveys.mail import compose_survey, survey_composer

    order, touchpoint = delivered_order(rt)
    now = utcnow()
    shipped_policy = load_survey_policy(PROJECT_ROOT / "policies")
    shipped = compose(rt, touchpoint, now=now, composer=compose_survey)
    assert shipped == compose(rt, touchpoint, now=now, composer=survey_composer(shipped_policy))
    assert (
        shipped.subject.startswith("【aftercare デモショップ】") and shipped.text_body.count("?score=") == 5
    )
    nps = compose(rt, touchpoint, now=now, policy=shipped_policy.model_copy(update={"scale": "nps10"}))
    assert nps.text_body.count("?score=") == 11
