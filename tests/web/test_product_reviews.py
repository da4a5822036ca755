"""The public page of a product's reviews (`GET /products/<ref>/reviews`, aftercare/reviews/showcase.py):
every review our form collected is shown whatever its rating, triage or approval state (16 CFR
465.7(b)), with the average and the count per star; moderation hides a review for abuse or personal
data only, whatever its rating, and refuses any other reason (in code and in the database)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare.models import ReplyStatus, Review, ReviewModeration, ReviewReply, ReviewStatus, utcnow
from aftercare.reviews import showcase
from aftercare.runtime import Runtime
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.reviews.form_helpers import refs, reviewable
from tests.reviews.intake_helpers import process_all

TOWEL = "TOWEL-GIFT-W"


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt.settings, waker=NoWaker())) as c:
        yield c


def write(rt: Runtime, client: TestClient, n: int, rating: int, **over: str) -> Review:
    """Order `n` reviews the towel on our form; processed like any review; the stored review."""
    r = reviewable(rt, n)
    assert TOWEL in refs(rt, r.order_id)
    form = {
        "product": TOWEL,
        "rating": str(rating),
        "title": "感想",
        "body": "届きました。",
        "display_name": "花子 山.",
    }
    form.update(over)
    assert client.post(r.path, data=form, follow_redirects=False).status_code == 303
    process_all(rt)
    with Session(rt.engine) as s:
        return s.exec(select(Review).where(Review.order_id == r.order_id)).one()


def articles(html: str) -> list[str]:
    return re.findall(r"<article.*?</article>", html, flags=re.S)


def test_a_one_star_review_is_shown_exactly_as_a_five_star_one(rt: Runtime, client):
    low = write(rt, client, 0, 1)
    high = write(rt, client, 1, 5)
    assert low.triage_negative and not high.triage_negative
    page = client.get(f"/products/{TOWEL}/reviews?lang=ja")
    assert page.status_code == 200 and "今治タオル ギフトセットのレビュー" in page.text
    shown = articles(page.text)
    assert len(shown) == 2

    def neutral(article: str) -> str:
        article = re.sub(r'data-rating="\d"', "", article)
        article = re.sub(r'aria-label="星\dつ（5段階中）"', "", article)
        return re.sub(r"[★☆]{5}", "", article)

    assert neutral(shown[0]) == neutral(shown[1])  # nothing but the stars tells them apart
    assert {re.search(r"[★☆]{5}", a).group(0) for a in shown} == {"★☆☆☆☆", "★★★★★"}
    assert '<strong id="average">3.0</strong>' in page.text and '<span id="count">2</span>' in page.text
    for star, n in {5: 1, 4: 0, 3: 0, 2: 0, 1: 1}.items():
        assert f'id="stars-{star}">{n}件' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")


def test_every_approval_state_is_shown_and_a_published_reply_with_it(rt: Runtime, client):
    waiting = write(rt, client, 0, 2, body="欠けていました。")
    rejected = write(rt, client, 1, 1, body="最悪でした。")
    answered = write(rt, client, 2, 2, body="遅れました。")
    with Session(rt.engine) as s:
        for review, status in (
            (waiting, ReviewStatus.AWAITING_APPROVAL),
            (rejected, ReviewStatus.REJECTED),
            (answered, ReviewStatus.PUBLISHED),
        ):
            row = s.get(Review, review.id)
            row.status = status
            s.add(row)
        s.add(
            ReviewReply(
                review_id=answered.id,
                platform="own",
                text="ご迷惑をおかけしました。",
                approved_by="ops",
                status=ReplyStatus.PUBLISHED,
                published_at=utcnow(),
            )
        )
        s.commit()
    page = client.get(f"/products/{TOWEL}/reviews?lang=en").text
    assert len(articles(page)) == 3 and '<span id="count">3</span>' in page
    for body in ("欠けていました。", "最悪でした。", "遅れました。", "ご迷惑をおかけしました。"):
        assert body in page
    assert "Reviews of 今治タオル ギフトセット" in page


def test_moderation_hides_for_abuse_or_personal_data_only_whatever_the_rating(rt: Runtime, client):
    abusive_five = write(rt, client, 0, 5, body="spam spam buy followers")
    leaking_one = write(rt, client, 1, 1, body="配達員の山田さんの携帯は…")
    kept_one = write(rt, client, 2, 1, body="期待はずれでした。")
    now = utcnow()
    showcase.moderate(rt.engine, abusive_five.id, action="hide", reason="abuse", moderator="ops", now=now)
    showcase.moderate(
        rt.engine, leaking_one.id, action="hide", reason="personal_data", moderator="ops", now=now
    )
    for reason in ("negative", "low_rating", "off_topic_but_1_star", ""):
        with pytest.raises(showcase.ModerationRefused):
            showcase.moderate(rt.engine, kept_one.id, action="hide", reason=reason, moderator="ops", now=now)
    page = client.get(f"/products/{TOWEL}/reviews?lang=ja").text
    assert [a for a in articles(page) if "期待はずれでした。" in a] and len(articles(page)) == 1
    assert "spam spam" not in page and "携帯" not in page
    assert '<span id="count">1</span>' in page and '<strong id="average">1.0</strong>' in page
    # Shown again: the newest decision counts.
    showcase.moderate(rt.engine, abusive_five.id, action="show", reason="abuse", moderator="ops", now=now)
    assert len(articles(client.get(f"/products/{TOWEL}/reviews").text)) == 2


def test_the_database_refuses_a_moderation_reason_other_than_abuse_or_personal_data(rt: Runtime, client):
    review = write(rt, client, 0, 1)
    with Session(rt.engine) as s:
        s.add(
            ReviewModeration(
                review_id=review.id, action="hide", reason="negative", moderator="x", decided_at=utcnow()
            )
        )
        with pytest.raises(sa.exc.IntegrityError):
            s.commit()


def test_contact_details_are_masked_and_html_is_text_for_every_rating(rt: Runtime, client):
    write(rt, client, 0, 1, body="連絡は 090-1234-5678 まで <script>alert(1)</script>")
    write(rt, client, 1, 5, body="mail me at hanako@example.com <b>great</b>")
    page = client.get(f"/products/{TOWEL}/reviews").text
    assert "090-1234-5678" not in page and "hanako@example.com" not in page
    assert "<script>alert" not in page and "&lt;b&gt;great&lt;/b&gt;" in page


def test_an_unknown_product_has_no_reviews_and_a_bad_ref_is_a_404(rt: Runtime, client):
    empty = client.get("/products/NO-SUCH/reviews?lang=en")
    assert empty.status_code == 200 and "No reviews yet." in empty.text and not articles(empty.text)
    bad = client.get("/products/" + "A" * 300 + "/reviews")
    assert bad.status_code == 404
    assert client.get("/products/%01x/reviews").status_code == 404
