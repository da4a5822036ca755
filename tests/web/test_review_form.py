"""Our own review form (aftercare/web/review_form.py, aftercare/reviews/own_form.py) through the real
app, on SQLite and PostgreSQL: what a GET shows and that it stores nothing; a review enters through
the inbox like a webhook review, is triaged, and a negative one waits for an approval run; an edit
updates the same review with its history kept; and every link and form it must refuse, each with a
page saying why, a 4xx status and nothing stored."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare import signing
from aftercare.models import Review, ReviewStatus, Touchpoint, TouchpointStatus, utcnow
from aftercare.processing import process_row
from aftercare.reviews import form_links, own_form
from aftercare.reviews.form_links import REVIEW_FORM_OPEN_DAYS, review_form_token, verify_review_form_token
from aftercare.reviews.intake import parse_review, reviews_policy
from aftercare.runtime import Runtime
from aftercare.spine.inbox import claim_batch
from aftercare.surveys.answers import survey_token
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tasks.review_sweep import reviews_needing_a_run
from tests.factories import order_payload, refund_payload
from tests.pipeline import receive
from tests.reviews.form_helpers import refs, review_deliveries, reviewable, revisions
from tests.reviews.intake_helpers import process_all
from tests.reviews.request_setup import _line


@pytest.fixture
def waker() -> NoWaker:
    return NoWaker()


@pytest.fixture
def client(rt: Runtime, waker: NoWaker) -> Iterator[TestClient]:
    with TestClient(create_app(rt.settings, waker=waker)) as c:
        yield c


def post(client: TestClient, path: str, **form: object):
    return client.post(path, data=form, follow_redirects=False)


def good(product: str, **over: object) -> dict[str, object]:
    form: dict[str, object] = {
        "product": product,
        "rating": "5",
        "title": "とても良い",
        "body": "手触りがよく、家族にも好評です。",
        "display_name": "花子 山.",
    }
    form.update(over)
    return form


def stored_nothing(rt: Runtime) -> bool:
    return revisions(rt) == [] and review_deliveries(rt) == []


def own_reviews(rt: Runtime) -> list[Review]:
    with Session(rt.engine) as s:
        return list(s.exec(select(Review).where(Review.platform == "own").order_by(Review.id)))


# -- GET shows, never stores ------------------------------------------------------------------------


def test_the_link_shows_each_product_in_the_orders_language_and_stores_nothing(rt: Runtime, client):
    r = reviewable(rt)
    for _ in range(3):  # a mail scanner, a link preview, the customer
        page = client.get(r.path)
        assert page.status_code == 200
    html = page.text
    assert "ご購入の商品のレビュー" in html and r.order_name in html
    assert "今治タオル ギフトセット" in html and "有田焼 マグカップ" in html
    for ref in refs(rt, r.order_id):
        assert f'name="product" value="{ref}"' in html
    # Stars are five radio buttons per product, each with a label a screen reader reads.
    assert html.count('type="radio" name="rating"') == 5 * 2 and "星3つ" in html
    assert 'value="花子 山."' in html  # the first name and the family name's initial
    assert "<script" not in html
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script
    assert stored_nothing(rt)


def test_an_english_order_gets_the_english_form(rt: Runtime, client):
    r = reviewable(rt, sample="en-first")
    page = client.get(r.path)
    assert page.status_code == 200 and "Review your order" in page.text and '<html lang="en">' in page.text


# -- a review goes the webhook's way ----------------------------------------------------------------


def test_a_review_is_stored_with_its_delivery_and_processed_like_a_webhook_review(
    rt: Runtime, client, waker: NoWaker
):
    r = reviewable(rt)
    towel, _mug = refs(rt, r.order_id)
    done = post(client, r.path, **good(towel))
    assert done.status_code == 303 and done.headers["location"] == f"{r.path}?saved=1#p1"
    assert waker.pokes == 1
    [rev] = revisions(rt)
    assert (rev.order_id, rev.product_ref, rev.seq, rev.rating, rev.touchpoint_id) == (
        r.order_id,
        towel,
        1,
        5,
        r.touchpoint_id,
    )
    [row] = review_deliveries(rt)
    key = f"{r.shopify_id}/{towel}"
    assert (row.topic, row.delivery_id, row.subject_ref, row.id) == (
        "reviews/create",
        f"own:{key}#r1",
        r.order_name,
        rev.inbox_id,
    )
    body = parse_review(__import__("json").loads(row.body))
    assert (body.platform, body.review_id, body.revision, body.rating) == ("own", key, 1, 5)
    assert "@" not in row.body.decode()  # the customer's address is not in it
    [outcome] = process_all(rt)
    assert outcome.status == "done" and outcome.order_id == r.order_id
    [review] = own_reviews(rt)
    assert (review.platform_review_id, review.product_ref, review.order_id, review.rating) == (
        key,
        towel,
        r.order_id,
        5,
    )
    assert (review.author_display_name, review.revision, review.status) == ("花子 山.", 1, ReviewStatus.NEW)
    assert review.triage_negative is False
    # The thank-you page says until when it can be changed, and shows the review sent.
    thanks = client.get(done.headers["location"])
    assert thanks.status_code == 200 and 'id="saved"' in thanks.text
    closes = verify_review_form_token(
        rt.settings.link_secret.get_secret_value(), r.token, now=utcnow()
    ).closes_at
    assert (
        f"{closes.astimezone().year}年" in thanks.text and "まで、このページから変更できます" in thanks.text
    )
    assert 'id="p1-current"' in thanks.text and "レビューを更新する" in thanks.text
    assert 'value="5" id="p1-r5" checked' in thanks.text


def test_a_negative_review_is_triaged_negative_and_waits_for_its_approval_run(rt: Runtime, client):
    r = reviewable(rt)
    towel, mug = refs(rt, r.order_id)
    post(
        client, r.path, **good(mug, rating="2", title="欠けていました", body="届いたとき縁が欠けていました。")
    )
    process_all(rt)
    [review] = own_reviews(rt)
    assert review.triage_negative is True and review.status == ReviewStatus.NEW
    # The same query that starts a review's approval run (the draft a person approves) finds it.
    policy = reviews_policy(rt.settings.policies_dir)
    assert [rid for rid, _ in reviews_needing_a_run(rt.engine, policy)] == [review.id]


def test_the_same_form_posted_again_is_stored_once(rt: Runtime, client, waker: NoWaker):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    for _ in range(3):
        assert post(client, r.path, **good(towel)).status_code == 303
    assert len(revisions(rt)) == 1 and len(review_deliveries(rt)) == 1
    assert waker.pokes == 1


def test_a_second_review_of_the_same_product_updates_the_first_and_keeps_its_history(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    post(client, r.path, **good(towel))
    process_all(rt)
    [first] = own_reviews(rt)
    post(
        client,
        r.path,
        **good(towel, rating="1", title="洗ったら毛羽立ちました", body="一度洗っただけで毛羽立ちました。"),
    )
    [out] = process_all(rt)
    [review] = own_reviews(rt)
    assert review.id == first.id and review.public_id == first.public_id  # the same review, updated
    assert (review.rating, review.title, review.revision) == (1, "洗ったら毛羽立ちました", 2)
    assert review.triage_negative is True  # triaged again
    assert review.source_created_at == first.source_created_at  # written when first sent
    history = own_form.revisions_of(rt.engine, r.order_id, towel)
    assert [(h.seq, h.rating) for h in history] == [(1, 5), (2, 1)]
    assert [d.delivery_id.rsplit("#", 1)[1] for d in review_deliveries(rt)] == ["r1", "r2"]
    # Editing back to the first text is a third revision, not a duplicate of the first.
    post(client, r.path, **good(towel))
    process_all(rt)
    assert [h.seq for h in own_form.revisions_of(rt.engine, r.order_id, towel)] == [1, 2, 3]
    assert own_reviews(rt)[0].rating == 5


def test_revisions_processed_out_of_order_leave_the_newest(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    post(client, r.path, **good(towel, rating="4"))
    post(client, r.path, **good(towel, rating="2", body="やはり期待はずれでした。"))
    first, second = review_deliveries(rt)
    assert {c.inbox_id for c in claim_batch(rt.engine, 10)} == {first.id, second.id}
    process_row(rt, second.id)
    out = process_row(rt, first.id)
    assert "older than revision 2" in (out.reason or "")
    [review] = own_reviews(rt)
    assert (review.rating, review.revision) == (2, 2)


def test_an_edit_while_awaiting_approval_is_applied_and_noted_for_ops(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    post(client, r.path, **good(towel, rating="2", body="期待はずれでした。"))
    process_all(rt)
    with Session(rt.engine) as s:
        review = s.exec(select(Review)).one()
        review.status = ReviewStatus.AWAITING_APPROVAL
        s.add(review)
        s.commit()
    post(client, r.path, **good(towel, rating="3", body="使っているうちに慣れました。"))
    [out] = process_all(rt)
    assert "while awaiting_approval" in (out.reason or "")
    [review] = own_reviews(rt)
    assert (review.rating, review.status) == (3, ReviewStatus.AWAITING_APPROVAL)


def test_concurrent_identical_posts_are_stored_once(rt: Runtime):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    link = verify_review_form_token(rt.settings.link_secret.get_secret_value(), r.token, now=utcnow())
    state = own_form.form_state(rt.engine, link)
    assert state is not None
    review = own_form.read_review({k: [str(v)] for k, v in good(towel).items()}, state.products)
    gate = threading.Barrier(6)
    results: list[bool] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            gate.wait()
            results.append(own_form.submit_review(rt.engine, state, review, now=utcnow()).created)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [False] * 5 + [True]
    assert len(revisions(rt)) == 1 and len(review_deliveries(rt)) == 1


def test_concurrent_double_submit_through_the_app_is_stored_once(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    gate = threading.Barrier(4)
    codes: list[int] = []

    def send() -> None:
        gate.wait()
        codes.append(post(client, r.path, **good(towel)).status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [303] * 4
    assert len(revisions(rt)) == 1 and len(review_deliveries(rt)) == 1


# -- links that are not good ------------------------------------------------------------------------


def test_forged_and_altered_links_are_a_404_page_and_store_nothing(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    forged = review_form_token("not-our-secret-0123456789abcdef", r.order_id, r.touchpoint_id, utcnow())
    altered = r.token[:-3] + ("xyz" if not r.token.endswith("xyz") else "abc")
    for token in (forged, altered, "nonsense", "A" * 2000):
        for response in (client.get(f"/r/{token}"), post(client, f"/r/{token}", **good(towel))):
            assert response.status_code == 404, token
            assert 'data-kind="invalid"' in response.text
    assert stored_nothing(rt)


def test_another_purposes_token_does_not_open_the_form(rt: Runtime, client):
    r = reviewable(rt)
    secret = rt.settings.link_secret.get_secret_value()
    survey = survey_token(
        secret,
        touchpoint_id=r.touchpoint_id,
        order_id=r.order_id,
        scale="csat5",
        closes_at=utcnow() + timedelta(days=3),
    )
    assert client.get(f"/r/{survey}").status_code == 404


def test_a_link_naming_another_orders_request_or_a_survey_is_refused(rt: Runtime, client):
    mine = reviewable(rt, 0)
    theirs = reviewable(rt, 1)
    secret = rt.settings.link_secret.get_secret_value()
    towel = refs(rt, theirs.order_id)[0]
    # Signed by us, but pairing my order with their request: not a link we ever made.
    crossed = review_form_token(secret, mine.order_id, theirs.touchpoint_id, utcnow())
    assert client.get(f"/r/{crossed}").status_code == 404
    assert post(client, f"/r/{crossed}", **good(towel)).status_code == 404
    with Session(rt.engine) as s:
        survey = s.exec(
            select(Touchpoint).where(
                Touchpoint.order_id == mine.order_id, Touchpoint.kind == "delivery_survey"
            )
        ).one()
    assert (
        client.get(f"/r/{review_form_token(secret, mine.order_id, survey.id, utcnow())}").status_code == 404
    )
    assert stored_nothing(rt)


def test_an_expired_link_is_a_410_page_even_after_it_was_used(rt: Runtime, client):
    old = utcnow() - timedelta(days=REVIEW_FORM_OPEN_DAYS, hours=1)
    r = reviewable(rt, now=old)
    towel = refs(rt, r.order_id)[0]
    assert client.get(r.path).status_code == 410
    refused = post(client, r.path, **good(towel))
    assert refused.status_code == 410 and "このレビューの受付は終了しました" in refused.text
    english = client.get(r.path, headers={"accept-language": "en-US,en;q=0.8"})
    assert english.status_code == 410 and "This review form has closed" in english.text
    assert 'data-kind="expired"' in refused.text
    assert stored_nothing(rt)
    # A link used while open, then reused after the form closed: the review stays, nothing more is taken.
    fresh = reviewable(rt, 1)
    mug = refs(rt, fresh.order_id)[1]
    assert post(client, fresh.path, **good(mug)).status_code == 303
    closed_token = review_form_token(
        rt.settings.link_secret.get_secret_value(), fresh.order_id, fresh.touchpoint_id, old
    )
    assert post(client, f"/r/{closed_token}", **good(mug, rating="1")).status_code == 410
    assert [(x.seq, x.rating) for x in revisions(rt)] == [(1, 5)]


def test_a_request_called_off_before_it_was_mailed_takes_no_review(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    receive(rt, refund_payload(r.payload), topic="refunds/create")  # refunded in full: request cancelled
    with Session(rt.engine) as s:
        assert s.get(Touchpoint, r.touchpoint_id).status == TouchpointStatus.CANCELLED
    page = client.get(r.path)
    assert page.status_code == 410 and 'data-kind="closed"' in page.text and "受付は終了しました" in page.text
    assert post(client, r.path, **good(towel)).status_code == 410
    assert stored_nothing(rt)


# -- products ----------------------------------------------------------------------------------------


def test_a_product_not_in_the_order_is_refused(rt: Runtime, client):
    mine = reviewable(rt, 0, sample="ja-first-gift")
    other = reviewable(rt, 1, sample="en-first")
    foreign = next(ref for ref in refs(rt, other.order_id) if ref not in refs(rt, mine.order_id))
    for product in (foreign, "", "NO-SUCH-SKU", "<script>"):
        refused = post(client, mine.path, **good(product))
        assert refused.status_code == 422 and 'data-kind="not_in_order"' in refused.text, product
    refused = client.post(
        mine.path,
        content=urlencode([("product", refs(rt, mine.order_id)[0]), ("product", foreign), ("rating", "5")]),
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert refused.status_code == 422
    assert stored_nothing(rt)


def test_a_line_refunded_in_full_is_not_offered_nor_taken(rt: Runtime, client):
    r = reviewable(rt)
    towel, mug = refs(rt, r.order_id)
    mug_line = r.payload["line_items"][1]
    receive(
        rt, refund_payload(r.payload, lines={mug_line["id"]: mug_line["quantity"]}), topic="refunds/create"
    )
    page = client.get(r.path)
    assert page.status_code == 200
    assert f'value="{towel}"' in page.text and f'value="{mug}"' not in page.text
    assert post(client, r.path, **good(mug)).status_code == 422
    assert stored_nothing(rt)


def test_lines_that_are_no_product_to_review_are_not_offered_nor_taken(rt: Runtime, client):
    """Known only from the raw Shopify line item (the form reads its `line_items` alone): a product
    type the policy excludes, and a gift card mailed as a card (it ships, so only `gift_card` says it)."""
    noshi = _line(9100071, "のし紙", "NOSHI-01", 910007, product_type="Gift Wrap")
    card = _line(9100081, "ギフトカード（カード郵送）", "GC-PLASTIC", 910008, gift_card=True)
    r = reviewable(rt, line_items=[*order_payload()["line_items"], noshi, card])
    towel, mug, *_ = refs(rt, r.order_id)
    page = client.get(r.path)
    assert page.status_code == 200
    assert f'value="{towel}"' in page.text and f'value="{mug}"' in page.text
    for excluded in ("NOSHI-01", "GC-PLASTIC"):
        assert f'value="{excluded}"' not in page.text
        assert post(client, r.path, **good(excluded)).status_code == 422
    assert stored_nothing(rt)


# -- what the form takes -----------------------------------------------------------------------------


@pytest.mark.parametrize("rating", ["0", "6", "5.0", "5.5", "５", " 5", "05", "+5", "five", "", "1e0"])
def test_a_rating_that_is_not_one_to_five_is_refused_with_the_text_kept(rt: Runtime, client, rating: str):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    refused = post(client, r.path, **good(towel, rating=rating, body="<b>残して</b>ほしい本文"))
    assert refused.status_code == 422
    assert 'id="p1-error"' in refused.text and "星の数を1〜5からひとつお選びください" in refused.text
    assert "&lt;b&gt;残して&lt;/b&gt;ほしい本文" in refused.text  # kept, as text
    assert stored_nothing(rt)


def test_no_rating_or_two_ratings_are_refused(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    form = good(towel)
    del form["rating"]
    assert post(client, r.path, **form).status_code == 422
    assert post(client, r.path, **good(towel, rating=["5", "1"])).status_code == 422
    assert stored_nothing(rt)


def test_a_form_field_5_is_a_rating_and_json_intake_reads_whole_numbers_only():
    # The form: a field is always a string, "5" is five stars; nothing else is guessed.
    assert own_form.parse_rating("5") == 5 and own_form.parse_rating(5) == 5
    for bad in ("5.0", "5.5", "５", "0", "6", True, 0, 6, 5.0):
        with pytest.raises(own_form.ReviewRefused):
            own_form.parse_rating(bad)
    # The review JSON (webhook and import) also reads "5" as five: an imported CSV row is all text.
    # A fraction or a full-width digit is refused there too, and 0 and 6 are out of range.
    base = {
        "platform": "own",
        "review_id": "x",
        "body": "",
        "author": "",
        "created_at": "2026-11-01T00:00:00+09:00",
    }
    assert parse_review({**base, "rating": "5"}).rating == 5
    from aftercare.errors import InvalidPayload

    for bad in ("5.5", "５", 0, 6, "0", "6", True):
        with pytest.raises(InvalidPayload):
            parse_review({**base, "rating": bad})


def test_twenty_thousand_characters_are_taken_and_one_more_is_refused(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    text = "あ" * own_form.MAX_TEXT  # 60 KB of UTF-8
    assert post(client, r.path, **good(towel, body=text + "\u200b" * 50)).status_code == 303
    assert revisions(rt)[0].body == text
    [out] = process_all(rt)
    assert out.status == "done" and own_reviews(rt)[0].body == text
    refused = post(client, r.path, **good(towel, body=text + "い"))
    assert refused.status_code == 422 and "20001 characters" in refused.text
    assert len(revisions(rt)) == 1


def test_html_stays_text_and_invisible_characters_are_removed(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    body = (
        "good\u200b mug <script>alert(1)</script>\x00\x1b[31m"
        + "<img src=x onerror=alert(2)>\u202e\ufeff\r\nline 2"
    )
    post(
        client, r.path, **good(towel, body=body, title="<i>ti\u200dtle</i>", display_name="Ha\u200bnako\nY.")
    )
    [rev] = revisions(rt)
    assert rev.body == "good mug <script>alert(1)</script>[31m<img src=x onerror=alert(2)>\nline 2"
    assert rev.title == "<i>title</i>" and rev.display_name == "Hanako Y."
    page = client.get(r.path).text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "<i>title</i>" not in page


def test_a_display_name_is_required_and_a_long_title_refused(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    assert post(client, r.path, **good(towel, display_name="\u200b ")).status_code == 422
    assert post(client, r.path, **good(towel, title="t" * (own_form.MAX_TITLE + 1))).status_code == 422
    assert stored_nothing(rt)


def test_bodies_that_are_not_our_form_are_refused(rt: Runtime, client):
    r = reviewable(rt)
    towel = refs(rt, r.order_id)[0]
    as_json = client.post(r.path, json=good(towel), follow_redirects=False)
    assert as_json.status_code == 415 and 'data-kind="bad_form"' in as_json.text
    form = {"content-type": "application/x-www-form-urlencoded"}
    huge = client.post(r.path, content=b"body=" + b"a" * (300 * 1024), headers=form)
    assert huge.status_code == 413
    not_utf8 = client.post(r.path, content=b"product=" + b"\xff\xfe" + b"&rating=5", headers=form)
    assert not_utf8.status_code == 400
    many = client.post(r.path, content="&".join(f"f{i}=1" for i in range(100)).encode(), headers=form)
    assert many.status_code == 400
    assert stored_nothing(rt)


def test_the_token_carries_nothing_personal(rt: Runtime):
    r = reviewable(rt)
    secret = rt.settings.link_secret.get_secret_value()
    claims = signing.verify(secret, form_links.PURPOSE, r.token, now=utcnow())
    assert claims == {"o": r.order_id, "t": r.touchpoint_id}
