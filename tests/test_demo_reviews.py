"""The review part of `aftercare demo` (aftercare/demo.py, issue 11) does what the demo says, at two
hours of the day: a review request goes out now with a link to our own form; the customer opens the
form and sends a 2-star review through it, which is stored, triaged negative and is the kind of
review the patrol starts an approval run for; the "due now" survey customer answers 1 from the
score link in their mail, through the page's no-script button, and a recovery case opens.

Everything runs through the real web app (signed webhooks, the one-click unsubscribe, the form and
survey pages), the real pipeline, dispatcher and outbox (the file backend). Prefect is not needed:
the approval run itself is the review-reply flow's, tested with it; here we assert the review is
the one the patrol's query hands to it. The pages read the real clock, so `now` is placed a day or
two in the past."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare import demo, timed
from aftercare.contact.policy import load_contact_policy
from aftercare.models import Order, OutboxMessage, OutboxStatus, RecoveryCase, Review, Touchpoint
from aftercare.recovery.store import list_cases
from aftercare.reviews import intake
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tasks.review_sweep import reviews_needing_a_run
from tests.factories import SHOP, body_of, webhook_headers
from tests.pipeline import drain, send_outbox


def _mail(rt, name: str, kind: str) -> OutboxMessage:
    with Session(rt.engine) as session:
        return session.exec(
            select(OutboxMessage)
            .join(Touchpoint, Touchpoint.id == OutboxMessage.touchpoint_id)
            .join(Order, Order.id == Touchpoint.order_id)
            .where(Order.name == name, Touchpoint.kind == kind)
        ).one()


def _verdict(rt, name: str, kind: str) -> str:
    with Session(rt.engine) as session:
        tp = session.exec(
            select(Touchpoint)
            .join(Order, Order.id == Touchpoint.order_id)
            .where(Order.name == name, Touchpoint.kind == kind)
        ).one()
        assert tp.verdict is not None, (name, kind)
        return str(tp.verdict["line"])


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _post_webhooks(client: TestClient, secret: str, case: demo.SurveyCase) -> None:
    for topic, payload in (
        ("orders/create", case.order),
        ("fulfillments/create", case.fulfillment),
        ("fulfillments/update", case.delivered),
    ):
        body = body_of(payload)
        answer = client.post(
            "/webhooks/shopify", content=body, headers=webhook_headers(body, secret=secret, topic=topic)
        )
        assert answer.status_code == 200, answer.text


def _unsubscribe(client: TestClient, settings, case: demo.SurveyCase, now: datetime) -> None:
    url, body, headers = demo.unsubscribe_request(
        case, secret=settings.link_secret.get_secret_value(), shop_domain=SHOP, base_url="", now=now
    )
    assert client.post(url, content=body, headers=headers).status_code == 200


@pytest.mark.parametrize("hour_utc", [3, 15])
def test_review_request_form_review_and_recovery_case(rt, settings, hour_utc):
    day = datetime.now(UTC).replace(hour=hour_utc, minute=30, second=0, microsecond=0)
    now = day - timedelta(days=2)  # in the past whatever the hour the test runs at
    policy = load_contact_policy(settings.policies_dir / "contact.yaml")
    survey_days = rt.policies.delivery.survey_days_after_delivery
    review_days = rt.policies.delivery.review_request_days_after_delivery
    surveys = demo.survey_cases(now, policy, survey_days)
    asked = demo.review_request_case(now, policy, review_days)
    assert asked.order["name"] == "#2104" and asked.zone == surveys[0].zone  # in their daytime
    secret = settings.shopify_webhook_secret.get_secret_value()
    with TestClient(create_app(settings, waker=NoWaker())) as client:
        for case in [*surveys, asked]:
            if case.label in ("unsubscribed", "review request"):
                _unsubscribe(client, settings, case, now)
            _post_webhooks(client, secret, case)
        while drain(rt):
            pass
        timed.dispatch_due(rt, now)
        send_outbox(rt)  # the drain loop, at the real time (after `now`)

        # 1. The review request went out now, with the link to our form; the survey due with it
        # was not sent (the customer left the surveys list), so no cap held the request.
        assert _verdict(rt, "#2104", "review_request").startswith("sending at"), _verdict(
            rt, "#2104", "review_request"
        )
        assert "unsubscribed from surveys" in _verdict(rt, "#2104", "delivery_survey")
        request_mail = _mail(rt, "#2104", "review_request")
        assert request_mail.status == OutboxStatus.SENT
        assert request_mail.to_email == "review-now@example.com"
        link = demo.mail_link(request_mail.text_body, "r")
        assert link is not None and link.startswith(settings.web_base_url.rstrip("/") + "/r/")
        assert demo.mail_link("no link here https://shop.example/x", "r") is None

        # 2. The customer opens the form and sends a 2-star review of the first product.
        page = client.get(_path(link))
        assert page.status_code == 200, page.text
        forms = demo.page_forms(page.text)
        assert forms and all(f.action == _path(link) for f in forms)
        form = forms[0]
        product = form.value("product")
        assert product and form.value("display_name")
        assert form.radios["rating"] == ["1", "2", "3", "4", "5"]
        lang = demo.language_of(asked.order)
        title, text = demo.REVIEW_TEXT[lang]
        sent = client.post(
            form.action,
            content=demo.review_submission(form, lang),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert sent.status_code == 303, sent.text
        thanks = client.get(sent.headers["location"])
        assert thanks.status_code == 200 and title in thanks.text
        while drain(rt):
            pass
        with Session(rt.engine) as session:
            review = session.exec(
                select(Review).where(Review.platform == "own", Review.product_ref == product)
            ).one()
            order = session.exec(select(Order).where(Order.name == "#2104")).one()
        assert review.order_id == order.id and review.rating == demo.REVIEW_RATING
        assert review.title == title and review.body == text
        assert review.triage_negative is True
        assert review.status == "new" and review.flow_run_id is None
        policy_reviews = intake.reviews_policy(settings.policies_dir)
        assert review.id in [i for i, _name in reviews_needing_a_run(rt.engine, policy_reviews, 50)]

        # 3. The "due now" customer answers 1 from their survey mail: a recovery case opens.
        survey_mail = _mail(rt, surveys[0].order["name"], "delivery_survey")
        assert survey_mail.status == OutboxStatus.SENT
        score_link = demo.mail_link(survey_mail.text_body, "survey", f"score={demo.SURVEY_SCORE}")
        assert score_link is not None
        survey_page = client.get(_path(score_link))
        assert survey_page.status_code == 200, survey_page.text
        (answer_form,) = demo.page_forms(survey_page.text)
        assert answer_form.value("score") == str(demo.SURVEY_SCORE)
        answered = client.post(
            answer_form.action,
            content=demo.survey_submission(answer_form, demo.language_of(surveys[0].order)),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert answered.status_code == 303, answered.text
    with Session(rt.engine) as session:
        cases = list(session.exec(select(RecoveryCase)))
    assert len(cases) == 1
    (view,) = list_cases(rt.engine, open_only=True)
    assert view.order_name == surveys[0].order["name"]
    assert view.case.score == demo.SURVEY_SCORE and view.case.status == "open"
    assert view.case.first_answer_due_at > view.case.opened_at
    # Nobody else got a review request or a case: the survey customers' requests are days away.
    with Session(rt.engine) as session:
        requests = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "review_request")).all()
    assert [m.to_email for m in requests] == ["review-now@example.com"]


def test_the_demo_reads_forms_as_a_browser_without_script_sends_them():
    html = (
        '<form method="post" action="/r/T"><input type="hidden" name="product" value="SKU-1">'
        '<input type="radio" name="rating" value="1"><input type="radio" name="rating" value="2">'
        '<input type="text" name="display_name" value="Mei &amp; K.">'
        '<input type="checkbox" name="x" value="a" checked><input type="checkbox" name="y" value="b">'
        '<input type="text" name="off" value="z" disabled>'
        '<textarea name="body">\nkept &lt;b&gt;</textarea><button type="submit">Send</button></form>'
    )
    (form,) = demo.page_forms(html)
    assert form.action == "/r/T"
    assert form.fields == [
        ("product", "SKU-1"),
        ("display_name", "Mei & K."),
        ("x", "a"),
        ("body", "kept <b>"),
    ]
    sent = parse_qs(demo.review_submission(form).decode())
    assert sent["rating"] == ["2"] and sent["product"] == ["SKU-1"] and sent["x"] == ["a"]
    assert sent["body"] == [demo.REVIEW_TEXT["en"][1]] and "y" not in sent and "off" not in sent
    with pytest.raises(ValueError):
        demo.review_submission(demo.PageForm(action="/r/T", radios={"rating": ["1"]}))
    with pytest.raises(ValueError):  # a page that did not choose the score the link asked for
        demo.survey_submission(demo.PageForm(action="/survey/T", fields=[("score", "4")]))
    assert demo.mail_link("1: https://s.example/survey/T?score=1\n", "survey", "score=1") == (
        "https://s.example/survey/T?score=1"
    )
    assert demo.mail_link("https://s.example/r/T?item=5", "r") is None
