"""Text-only triage (no star rating) measured on labelled review sentences nobody here wrote (en)
and on the project's own Japanese set (ja), under the shipped policy; and the rules that produce
those figures, one by one.

The English set is fetched from the vaderSentiment sdist on first use (aftercare.reviews.datasets,
cached under var/datasets/): required under CI=true, skipped with the reason elsewhere when the
package index cannot be reached.

Bars. en: balanced accuracy >= 0.85 on the whole set (the issue's bar; measured 0.859, recall 0.808,
precision 0.847). ja: measured recall 0.879 and precision 0.872 on 260 sentences; the bar is recall
>= 0.85 and precision >= 0.85 (a missed complaint costs more than a needless draft, which a person
rejects) and balanced accuracy >= 0.85. The held-out halves (not looked at while choosing thresholds
and phrases) are held to 0.82: they measured 0.840 (en, 1,209 sentences) and 0.846 (ja, 129).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aftercare.reviews.datasets import (
    BEFORE_ISSUE_9_TRIAGE,
    Confusion,
    DatasetError,
    DatasetUnavailable,
    Labelled,
    ensure_amazon_snippets,
    in_tuning_half,
    load_amazon_reviews,
    load_amazon_snippets,
    load_ja_triage,
)
from aftercare.reviews.models import Review
from aftercare.reviews.policy import PerLang, ReviewsPolicy, TriagePolicy
from aftercare.reviews.triage import OsetiAnalyser, Triager, clauses, plain_negation, sentences, triage

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

BEFORE = TriagePolicy.model_validate(BEFORE_ISSUE_9_TRIAGE)


@pytest.fixture(scope="session")
def amazon_path() -> Path:
    """amazonReviewSnippets_GroundTruth.txt, fetched with pip into var/datasets/ on first use."""
    try:
        return ensure_amazon_snippets()
    except DatasetUnavailable as exc:
        if IN_CI:
            pytest.fail(f"the English triage set is required under CI=true: {exc}")
        pytest.skip(f"the English triage set could not be fetched here: {exc}")
    except DatasetError as exc:  # corrupt: never a skip
        pytest.fail(str(exc))


def measure(policy: ReviewsPolicy, items: list[Labelled]) -> Confusion:
    triager = Triager(policy)
    return Confusion.of(
        [(i.negative, triager.triage(Review(id=i.id, text=i.text, lang=i.lang)).negative) for i in items]
    )


def with_triage(policy: ReviewsPolicy, triage_policy: TriagePolicy) -> ReviewsPolicy:
    return policy.model_copy(update={"triage": triage_policy})


# --- the figures -----------------------------------------------------------------------------------


def test_english_text_only_meets_the_bar(policy: ReviewsPolicy, amazon_path: Path):
    items = load_amazon_snippets(amazon_path)
    whole = measure(policy, items)
    held_out = measure(policy, [i for i in items if not in_tuning_half(i)])
    assert whole.balanced_accuracy >= 0.85, str(whole)
    assert whole.recall >= 0.75 and whole.precision >= 0.80, str(whole)
    assert held_out.balanced_accuracy >= 0.82, str(held_out)


def test_english_figure_before_issue_9_missed_most_negatives(policy: ReviewsPolicy, amazon_path: Path):
    """The old policy on today's code: what the bar above is measured against (it fails the bar)."""
    before = measure(with_triage(policy, BEFORE), load_amazon_snippets(amazon_path))
    assert before.recall < 0.35 and before.balanced_accuracy < 0.70, str(before)


def test_english_whole_reviews_are_not_all_flagged(policy: ReviewsPolicy, amazon_path: Path):
    """The 300 reviews the sentences come from (12 sentences on average): a reply is owed when one of
    its sentences is rated <= -1. One negative sentence in five is needed, so long praise with one
    gripe is not flagged; with "any one sentence" 55 of the 85 reviews without a complaint were."""
    reviews = load_amazon_reviews(amazon_path)

    def flagged(p: ReviewsPolicy) -> Confusion:
        triager = Triager(p)
        return Confusion.of(
            [
                (r.has_negative_sentence, triager.triage(Review(id=r.id, text=r.text, lang="en")).negative)
                for r in reviews
            ]
        )

    now = flagged(policy)
    any_one = flagged(
        with_triage(policy, policy.triage.model_copy(update={"negative_sentence_share_at_least": 0}))
    )
    assert now.recall >= 0.8 and now.fp <= 30, str(now)
    assert any_one.fp > 45 and now.balanced_accuracy > any_one.balanced_accuracy + 0.05, (
        str(now),
        str(any_one),
    )


def test_japanese_text_only_meets_the_bar(policy: ReviewsPolicy):
    items = load_ja_triage()
    whole = measure(policy, items)
    held_out = measure(policy, [i for i in items if not in_tuning_half(i)])
    assert whole.recall >= 0.85 and whole.precision >= 0.85 and whole.balanced_accuracy >= 0.85, str(whole)
    assert held_out.balanced_accuracy >= 0.82, str(held_out)


def test_japanese_every_complaint_kind_is_mostly_found(policy: ReviewsPolicy):
    triager = Triager(policy)
    by_kind: dict[str, list[bool]] = {}
    for item in load_ja_triage():
        if item.negative:
            found = triager.triage(Review(id=item.id, text=item.text, lang="ja")).negative
            by_kind.setdefault(item.kind, []).append(found)
    low = {k: f"{sum(v)}/{len(v)}" for k, v in by_kind.items() if sum(v) / len(v) < 0.7}
    assert not low, f"complaint kinds mostly missed: {low}"


def test_japanese_figure_before_issue_9(policy: ReviewsPolicy):
    before = measure(with_triage(policy, BEFORE), load_ja_triage())
    assert before.recall < 0.5, str(before)


# --- the rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Lovely mug, it really is the best purchase this year!", "en"),
        ("本当に素敵な商品で、大満足です!", "ja"),
    ],
)
@pytest.mark.parametrize("rating", [1, 2])
def test_a_low_rating_is_negative_whatever_the_text(policy: ReviewsPolicy, text: str, lang: str, rating: int):
    result = triage(Review(id="r", text=text, rating=rating, lang=lang), policy=policy)
    assert result.negative and f"rating {rating} <= 2" in result.reasons
    assert not triage(Review(id="r", text=text, rating=3, lang=lang), policy=policy).negative


@pytest.mark.parametrize(
    "text",
    [
        "商品は良いが配送が遅い。",  # mixed: praise, then a complaint
        "配送は遅かったですが、商品は良いです。",  # the other order
        "見た目はおしゃれです。でも、届いた時には箱が潰れていました。",
    ],
)
def test_japanese_mixed_review_is_negative(policy: ReviewsPolicy, text: str):
    result = triage(Review(id="r", text=text, rating=4, lang="ja"), policy=policy)
    assert result.negative, result.reasons


@pytest.mark.parametrize(
    "text",
    [
        "特に問題ありませんでした。",
        "悪くないです。",
        "問題なく届きました。ありがとうございます。",
        "文句なしの品質です。",
    ],
)
def test_japanese_praise_with_negation_is_not_negative(policy: ReviewsPolicy, text: str):
    result = triage(Review(id="r", text=text, rating=5, lang="ja"), policy=policy)
    assert not result.negative, result.reasons


def test_polite_negation_flips_a_japanese_word():
    # oseti alone flips a word only before plain ない/ず/ぬ: "問題ありませんでした" read as a complaint.
    analyser = OsetiAnalyser()
    for praise in (
        "特に問題ありませんでした。",
        "問題なく届きました。",
        "文句なしです。",
        "不満はありません。",
    ):
        assert analyser.polarity(praise).score > 0, praise
    assert plain_negation("問題ありませんでした。") == "問題ない。。"


def test_oseti_counts_match_its_public_api():
    """OsetiAnalyser skips oseti's sentence splitter (Triager splits first): same counts, per sentence."""
    analyser = OsetiAnalyser()
    for item in load_ja_triage():
        for sentence in sentences(item.text):
            public = analyser._analyzer.count_polarity(sentence)
            expected = (sum(c["positive"] for c in public), sum(c["negative"] for c in public))
            assert analyser.counts(sentence) == expected, sentence


def test_lexicon_word_negated_is_a_complaint(policy: ReviewsPolicy):
    # 動く is positive in the policy's lexicon, so "動かない" is negative by its score, phrases aside.
    no_phrases = with_triage(policy, policy.triage.model_copy(update={"negative_phrases": PerLang()}))
    result = triage(Review(id="r", text="電源を入れても全く動かない。", lang="ja"), policy=no_phrases)
    assert result.negative and result.score < 0, result.reasons


def test_each_sentence_counts_in_a_long_english_review(policy: ReviewsPolicy):
    text = "Beautiful colour and a lovely glaze, I really love it. The handle snapped off after two days."
    result = triage(Review(id="r", text=text, rating=5, lang="en"), policy=policy)
    assert result.negative, result.reasons
    assert any("in sentence 2 of 2" in r for r in result.reasons), result.reasons


def test_one_gripe_in_a_long_review_is_under_the_share(policy: ReviewsPolicy):
    praise = "Lovely glaze. Great size. Perfect for tea. Sturdy handle. Fast delivery. "
    result = triage(Review(id="r", text=praise + "The lid is flimsy.", lang="en"), policy=policy)
    assert not result.negative and "text not negative: 1 of 6 sentences negative, under 20%" in result.reasons
    # Two gripes in six, or one in five, are a complaint.
    assert triage(
        Review(id="r", text=praise + "The lid is flimsy. It leaks.", lang="en"), policy=policy
    ).negative
    short = "Lovely glaze. Great size. Perfect for tea. Sturdy handle. The lid is flimsy."
    assert triage(Review(id="r", text=short, lang="en"), policy=policy).negative


def test_praise_phrase_is_taken_out_before_scoring(policy: ReviewsPolicy):
    result = triage(Review(id="r", text="For the price you can't beat it.", lang="en"), policy=policy)
    assert not result.negative, result.reasons
    assert "praise phrase (not scored): can't beat" in result.reasons
    bare = with_triage(policy, policy.triage.model_copy(update={"positive_phrases": PerLang()}))
    assert triage(Review(id="r", text="For the price you can't beat it.", lang="en"), policy=bare).negative


@pytest.mark.parametrize(
    "text",
    ["Great customer service, they answered within the hour.", "No problems at all, works perfectly."],
)
def test_praise_of_the_shop_is_not_a_complaint(policy: ReviewsPolicy, text: str):
    result = triage(Review(id="r", text=text, lang="en"), policy=policy)
    assert not result.negative, result.reasons


def test_negation_without_sentiment_words_is_negative(policy: ReviewsPolicy):
    result = triage(Review(id="r", text="It never powered on.", lang="en"), policy=policy)
    assert result.negative and "negation without sentiment words: never" in result.reasons
    assert not triage(Review(id="r", text="It powered on at once.", lang="en"), policy=policy).negative
    # Whole words only: "note" is not "not".
    assert not triage(Review(id="r", text="A note came with the parcel.", lang="en"), policy=policy).negative


def test_lexicon_comes_from_the_policy(policy: ReviewsPolicy):
    text = "The lid feels flimsy."
    assert triage(Review(id="r", text=text, lang="en"), policy=policy).negative
    without = policy.triage.model_copy(update={"lexicon": {}})
    result = triage(Review(id="r", text=text, lang="en"), policy=with_triage(policy, without))
    assert not result.negative and result.score == 0.0, result.reasons


def test_lexicon_valence_is_checked():
    with pytest.raises(ValueError, match="not a valence"):
        TriagePolicy(lexicon={"en": {"flimsy": -7}})
    with pytest.raises(ValueError, match="has no sign"):
        TriagePolicy(lexicon={"ja": {"動く": 0}})


def test_sentences_and_clauses():
    assert sentences("Great mug. Broke in a week!\nNever again") == [
        "Great mug.",
        "Broke in a week!",
        "Never again",
    ]
    assert sentences("良い商品です。でも遅い!届かない") == ["良い商品です。", "でも遅い!", "届かない"]
    assert sentences("e.g.3 mugs") == ["e.g.3 mugs"]
    assert clauses("商品は良いが配送が遅い。", "ja") == ["商品は良い", "配送が遅い。"]
    assert clauses("Good, but slow.", "en") == ["Good, but slow."]


def test_older_policy_files_triage_as_before(policy: ReviewsPolicy):
    """The fields added for issue 9 default to off: a policy without them reads whole texts' scores
    against its thresholds and phrases only."""
    old = TriagePolicy.model_validate(
        {
            "negative_text_score_at_or_below": {"en": -0.35, "ja": -0.3},
            "negative_phrases": {"en": ["never again"]},
        }
    )
    assert old.positive_phrases == PerLang() and old.negation_words == PerLang() and old.lexicon == {}
    assert old.negative_sentence_share_at_least == 0
    result = triage(Review(id="r", text="The lid feels flimsy.", lang="en"), policy=with_triage(policy, old))
    assert not result.negative
