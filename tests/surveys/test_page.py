"""The survey page (aftercare/web/surveys.py) through the real app, on SQLite and PostgreSQL: what
a GET shows and that it stores nothing, the answers a POST stores (the latest counts, every one
kept), and every link and form it must refuse, each with a page saying why and a 4xx status."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare.contact.links import unsubscribe_token
from aftercare.models import SurveyResponse, Touchpoint, utcnow
from aftercare.runtime import Runtime
from aftercare.surveys.answers import survey_token
from aftercare.surveys.policy import load_survey_policy
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.factories import refund_payload
from tests.pipeline import receive
from tests.surveys.helpers import Survey, mailed_survey


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt.settings, waker=NoWaker())) as c:
        yield c


def answers(rt: Runtime, touchpoint_id: int | None = None) -> list[SurveyResponse]:
    with Session(rt.engine) as s:
        q = select(SurveyResponse).order_by(SurveyResponse.id)  # type: ignore[arg-type]
        if touchpoint_id is not None:
            q = q.where(SurveyResponse.touchpoint_id == touchpoint_id)
        return list(s.exec(q))


def post(client: TestClient, survey: Survey, **form: object):
    return client.post(survey.path(), data=form, follow_redirects=False)


# -- GET shows, never stores ------------------------------------------------------------------------


def test_a_score_link_shows_the_page_with_that_score_chosen_and_stores_nothing(
    rt: Runtime, client: TestClient
):
    survey = mailed_survey(rt)
    for _ in range(3):  # a mail scanner, a link preview, the customer
        page = client.get(survey.path(4))
        assert page.status_code == 200
    html = page.text
    assert 'value="4" id="score-4" checked' in html
    assert html.count(" checked") == 1
    assert "ご注文の商品はいかがでしたか" in html and survey.order_name in html and "今治タオル" in html
    assert 'data-autosubmit="1"' in html  # the script posts it; without script the button does
    nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"]).group(1)
    assert f'<script nonce="{nonce}">' in html
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert answers(rt) == []


def test_a_post_stores_the_answer_with_the_order_and_the_page_thanks_and_shows_it(
    rt: Runtime, client: TestClient
):
    survey = mailed_survey(rt)
    response = post(
        client, survey, score="4", reason=["packaging", "delivery"], comment="箱が少しつぶれていました"
    )
    assert response.status_code == 303 and response.headers["location"] == survey.path() + "?saved=1"
    [row] = answers(rt)
    assert (row.order_id, row.touchpoint_id, row.scale, row.score, row.seq) == (
        survey.order_id,
        survey.touchpoint_id,
        "csat5",
        4,
        1,
    )
    assert row.reasons == ["packaging", "delivery"] and row.comment == "箱が少しつぶれていました"
    assert row.client_agent is None  # nothing stored that the follow-up does not need
    page = client.get(response.headers["location"])
    assert page.status_code == 200
    assert 'id="saved"' in page.text and "ご回答ありがとうございました" in page.text
    assert '<strong id="current-score">4</strong>' in page.text
    assert 'value="packaging" id="reason-packaging" checked' in page.text
    assert "箱が少しつぶれていました</textarea>" in page.text
    assert (
        "data-autosubmit" not in page.text and "script-src 'none'" in page.headers["content-security-policy"]
    )


def test_the_customer_changes_the_answer_the_latest_counts_and_every_answer_is_kept(
    rt: Runtime, client: TestClient
):
    survey = mailed_survey(rt)
    assert post(client, survey, score="2").status_code == 303
    assert post(client, survey, score="2", comment="やはり満足です").status_code == 303
    assert post(client, survey, score="5", comment="やはり満足です").status_code == 303
    rows = answers(rt)
    assert [(r.seq, r.score, r.comment) for r in rows] == [
        (1, 2, None),
        (2, 2, "やはり満足です"),
        (3, 5, "やはり満足です"),
    ]
    page = client.get(survey.path())
    assert '<strong id="current-score">5</strong>' in page.text
    # The same link again with another score: chosen, to be posted; with the score that counts: no post.
    assert 'data-autosubmit="1"' in client.get(survey.path(3)).text
    assert 'data-autosubmit="1"' not in client.get(survey.path(5)).text
    # The earlier comment rides along with a new score from the mail, so a click does not erase it.
    assert "やはり満足です</textarea>" in client.get(survey.path(3)).text


def test_english_orders_get_the_english_page(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt, sample="en-first")
    page = client.get(survey.path(5))
    assert page.status_code == 200 and '<html lang="en">' in page.text and "How was your order?" in page.text


# -- links that are not this survey's ---------------------------------------------------------------


def refused(response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert f'data-kind="{kind}"' in response.text
    assert "<form" not in response.text


def test_forged_altered_and_foreign_tokens_are_refused_and_store_nothing(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    other = mailed_survey(rt, 1)
    secret = rt.settings.link_secret.get_secret_value()
    token = survey.token
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    head, _, sig = token.rpartition(".")
    # The claims of another survey with this token's signature: the signature no longer matches.
    other_head = other.token.rpartition(".")[0]
    forged = survey_token(
        "not-our-secret-0123456789",
        touchpoint_id=survey.touchpoint_id,
        order_id=survey.order_id,
        scale="csat5",
        closes_at=utcnow() + timedelta(days=30),
    )
    unsubscribe = unsubscribe_token(
        secret,
        shop_domain="test-shop.myshopify.com",
        email_key="hanako@example.jp",
        list_name="surveys",
        touchpoint_id=survey.touchpoint_id,
        now=utcnow(),
    )
    # Signed by us for the survey purpose, but naming this survey's touchpoint with the other's order.
    mixed = survey_token(
        secret,
        touchpoint_id=survey.touchpoint_id,
        order_id=other.order_id,
        scale="csat5",
        closes_at=utcnow() + timedelta(days=30),
    )
    bad = [
        flipped,
        token[:-1],
        token + "x",
        f"{other_head}.{sig}",
        forged,
        unsubscribe,
        mixed,
        "x" * 5000,
        "%00",
        ".",
    ]
    for raw in bad:
        for response in (
            client.get(f"/survey/{raw}?score=5"),
            client.post(f"/survey/{raw}", data={"score": "5"}),
        ):
            assert response.status_code == 404, (raw, response.status_code)
            assert 'data-kind="invalid"' in response.text
    assert answers(rt) == []
    # Each survey's own link answers its own survey only.
    assert post(client, other, score="1").status_code == 303
    assert [(r.touchpoint_id, r.order_id) for r in answers(rt)] == [(other.touchpoint_id, other.order_id)]


def test_a_link_of_a_closed_survey_is_refused_in_the_customers_language(rt: Runtime, client: TestClient):
    policy = load_survey_policy(rt.settings.policies_dir)
    survey = mailed_survey(rt, now=utcnow() - timedelta(days=policy.open_days, seconds=1))
    english = client.get(survey.path(5), headers={"accept-language": "en-US,en;q=0.9"})
    refused(english, 410, "expired")
    assert "This survey has closed" in english.text
    response = client.post(survey.path(), data={"score": "5"})
    refused(response, 410, "expired")
    assert "このアンケートの受付は終了しました" in response.text  # no order known: the browser's, else ja
    assert answers(rt) == []
    # Open until the last second.
    fresh = mailed_survey(rt, 1, now=utcnow() - timedelta(days=policy.open_days) + timedelta(minutes=1))
    assert post(client, fresh, score="3").status_code == 303


def test_a_survey_called_off_before_its_mail_went_out_takes_no_answer(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt, send=False)  # composed and queued; then the order was refunded
    order_body = {
        "id": 820001,
        "line_items": [{"id": 9100011, "quantity": 1}, {"id": 9100021, "quantity": 2}],
    }
    receive(rt, refund_payload(order_body), topic="refunds/create")
    with Session(rt.engine) as s:
        assert s.get(Touchpoint, survey.touchpoint_id).status == "cancelled"
    refused(client.get(survey.path(5)), 410, "closed")
    refused(post(client, survey, score="5"), 410, "closed")
    assert answers(rt) == []


def test_a_link_that_takes_no_answer_is_refused_as_such_whatever_the_form(rt: Runtime, client: TestClient):
    # The answer is checked and stored in one transaction; a form we refuse reads the survey first,
    # so a called-off survey says 410 and a link naming no survey of ours 404, before the form's fault.
    called_off = mailed_survey(rt, send=False)
    order_body = {
        "id": 820001,
        "line_items": [{"id": 9100011, "quantity": 1}, {"id": 9100021, "quantity": 2}],
    }
    receive(rt, refund_payload(order_body), topic="refunds/create")
    ghost = survey_token(
        rt.settings.link_secret.get_secret_value(),
        touchpoint_id=987_654_321,
        order_id=called_off.order_id,
        scale="csat5",
        closes_at=utcnow() + timedelta(days=30),
    )
    form = "application/x-www-form-urlencoded"
    for path, status, kind in ((called_off.path(), 410, "closed"), (f"/survey/{ghost}", 404, "invalid")):
        for content_type, body in [
            *FOREIGN_BODIES,
            (form, b"score=5"),  # an answer we would take
            (form, b"score=9"),  # one we would refuse (422)
            (form, ("comment=" + "x" * 100_000).encode()),  # a form too large (413)
        ]:
            headers = {"content-type": content_type} if content_type else {}
            response = client.post(path, content=body, headers=headers, follow_redirects=False)
            refused(response, status, kind)
    assert answers(rt) == []


def test_an_order_refunded_after_the_survey_went_out_still_takes_the_answer(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    order_body = {
        "id": 820001,
        "line_items": [{"id": 9100011, "quantity": 1}, {"id": 9100021, "quantity": 2}],
    }
    receive(rt, refund_payload(order_body), topic="refunds/create")
    assert post(client, survey, score="1", comment="割れていたので返品しました").status_code == 303
    assert [(r.score, r.comment) for r in answers(rt)] == [(1, "割れていたので返品しました")]


# -- answers that cannot be taken -------------------------------------------------------------------


BAD_SCORES = [
    "0",
    "6",
    "-1",
    "10",
    "05",
    " 5",
    "5 ",
    "5.0",
    "+5",
    "５",
    "٥",
    "five",
    "",
    "5; DROP TABLE",
    "1e1",
    "9" * 30,
]


def test_a_score_off_the_scale_or_not_plain_digits_is_refused_and_shown_again(
    rt: Runtime, client: TestClient
):
    survey = mailed_survey(rt)
    for score in BAD_SCORES:
        response = post(client, survey, score=score, comment="そのまま残ります")
        assert response.status_code == 422, score
        assert 'id="error"' in response.text and "1〜5の数字をひとつお選びください" in response.text
        assert "そのまま残ります</textarea>" in response.text  # nothing typed is lost
        assert " checked" not in response.text  # no score is guessed
        # A mangled score in a link: the page asks for the score, chooses none, stores nothing.
        page = client.get(survey.path() + "?score=" + score)
        assert page.status_code == 200 and " checked" not in page.text and "data-autosubmit" not in page.text
    assert answers(rt) == []


def test_a_score_as_digits_is_the_number_it_names(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    assert post(client, survey, score="5").status_code == 303
    assert [(r.score, type(r.score)) for r in answers(rt)] == [(5, int)]


STRANGE_FORMS = [
    "comment=no+score",  # no score
    "score=4&score=5",  # two scores
    "score=4&comment=a&comment=b",  # two comments
    "score=4&reason=not_a_reason",  # a reason the policy does not offer
    "score=4&reason=" + "x" * 300,
    "&&&=&score",
]


def test_an_incomplete_or_strange_form_is_refused_and_stores_nothing(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    for body in STRANGE_FORMS:
        response = client.post(
            survey.path(),
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert response.status_code == 422 and 'id="error"' in response.text, body
        if "comment=a&comment=b" in body:
            assert "フォームの内容を読み取れませんでした" in response.text
    assert answers(rt) == []


FOREIGN_BODIES = [
    ("application/json", b'{"score": 5}'),
    ("application/json", b'{"score": "5"}'),
    (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="score"\r\n\r\n5\r\n--x--\r\n',
    ),
    ("text/plain", b"score=5"),
    ("", b"score=5"),
]


def test_anything_but_the_pages_own_form_is_refused(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    for content_type, body in FOREIGN_BODIES:
        headers = {"content-type": content_type} if content_type else {}
        response = client.post(survey.path(), content=body, headers=headers, follow_redirects=False)
        refused(response, 415, "bad_form")
    assert answers(rt) == []


def test_undecodable_bytes_are_stored_as_replacement_characters_not_a_500(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    response = client.post(
        survey.path(),
        content=b"score=3&comment=%FF%FEok",
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert [r.comment for r in answers(rt)] == ["\ufffd\ufffdok"]


def test_a_100_kb_comment_is_refused_whole_and_nothing_is_stored(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    response = post(client, survey, score="4", comment="あ" * 100_000)
    refused(response, 413, "too_large")
    assert "短くして" in response.text
    assert answers(rt) == []


def test_a_comment_over_the_policys_limit_is_refused_and_given_back_never_cut(
    rt: Runtime, client: TestClient
):
    survey = mailed_survey(rt)
    limit = load_survey_policy(rt.settings.policies_dir).comment_max_chars
    text = "い" * (limit + 1)
    response = post(client, survey, score="4", comment=text)
    assert response.status_code == 422
    assert f"{limit}文字まで" in response.text and f"いまは{limit + 1}文字" in response.text
    assert text + "</textarea>" in response.text
    assert answers(rt) == []
    assert post(client, survey, score="4", comment=text[:limit]).status_code == 303
    assert [len(r.comment) for r in answers(rt)] == [limit]


def test_html_in_a_comment_is_stored_as_written_and_shown_as_text(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    hostile = '</textarea><script>alert("x")</script><img src=x onerror=alert(1)> & <b>太字</b>'
    assert post(client, survey, score="2", comment=hostile).status_code == 303
    assert [r.comment for r in answers(rt)] == [hostile]
    html = client.get(survey.path()).text
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>太字" not in html
    assert "&lt;/textarea&gt;&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_control_characters_are_cleaned_from_a_comment_line_breaks_kept(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    comment = "\x00よかった\x07です\x1b[31m\r\n二行目\tタブ\u0085\x7f  "
    assert post(client, survey, score="5", comment=comment).status_code == 303
    assert [r.comment for r in answers(rt)] == ["よかったです[31m\n二行目\tタブ"]
    # Shown again after a refusal (a bad score): the text kept, its control characters not echoed.
    refused_page = post(client, survey, score="9", comment="\x00戻る\x1b[0m\r\n二行目")
    assert (
        refused_page.status_code == 422
        and "\x00" not in refused_page.text
        and "\x1b" not in refused_page.text
    )
    assert "戻る[0m\n二行目</textarea>" in refused_page.text
    # Nothing but control characters and blanks: no comment.
    assert post(client, survey, score="4", comment="\x00\x01 \r\n ").status_code == 303
    assert [r.comment for r in answers(rt)][-1] is None


# -- the same answer twice at once --------------------------------------------------------------------


def test_the_same_answer_posted_twice_at_once_is_stored_once(rt: Runtime, client: TestClient):
    survey = mailed_survey(rt)
    form = {"score": "4", "reason": ["packaging"], "comment": "ダブルクリック"}
    threads = 8
    barrier = threading.Barrier(threads)
    statuses: list[int] = []

    def submit() -> None:
        barrier.wait()
        statuses.append(post(client, survey, **form).status_code)

    workers = [threading.Thread(target=submit) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert statuses == [303] * threads
    assert [(r.seq, r.score, r.comment) for r in answers(rt)] == [(1, 4, "ダブルクリック")]
    # Posting it again later changes nothing either; a different answer is a new one.
    assert post(client, survey, **form).status_code == 303
    assert post(client, survey, score="3").status_code == 303
    assert [(r.seq, r.score) for r in answers(rt)] == [(1, 4), (2, 3)]
