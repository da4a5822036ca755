"""`python -m bench.triage`: how well text-only triage (no star rating) finds the negative reviews,
per language, under the policy before issue 9 and under today's `policies/reviews.yaml`; and what
triage costs per review.

- en: the 3,708 Amazon review sentences of VADER's paper (mean of 20 human ratings, -4..+4), shipped
  in the `vaderSentiment==3.3.2` sdist (fetched once by `aftercare.reviews.datasets`). Mean <= -1 is
  negative, >= +1 positive, the rest left out.
- ja: the project's own tests/reviews/data/ja_triage.tsv.

Each figure is given on the whole set, on the half the thresholds and phrases were chosen on, and
on the held-out half (a fixed split by sentence hash). The time is the wall time of
`Triager.triage` per sentence, analysers already loaded (as on intake, where they are built once
per process).

    python -m bench.triage [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from aftercare.reviews.datasets import (
    BEFORE_ISSUE_9_TRIAGE,
    BEFORE_ISSUE_9_VERSION,
    Confusion,
    DatasetError,
    Labelled,
    WholeReview,
    ensure_amazon_snippets,
    in_tuning_half,
    load_amazon_reviews,
    load_amazon_snippets,
    load_ja_triage,
)
from aftercare.reviews.models import Review
from aftercare.reviews.policy import ReviewsPolicy, TriagePolicy, load_reviews_policy
from aftercare.reviews.triage import Triager
from aftercare.settings import PROJECT_ROOT


def say(line: str = "") -> None:
    print(line, flush=True)  # noqa: T201


def before_policy(now: ReviewsPolicy) -> ReviewsPolicy:
    """Today's policy with the triage section it had before issue 9."""
    before = TriagePolicy.model_validate(BEFORE_ISSUE_9_TRIAGE)
    return now.model_copy(update={"version": BEFORE_ISSUE_9_VERSION, "triage": before})


def predict(triager: Triager, items: list[Labelled]) -> tuple[list[bool], list[float]]:
    """Text-only verdicts (no rating) and the seconds each took."""
    verdicts: list[bool] = []
    seconds: list[float] = []
    for item in items:
        review = Review(id=item.id, text=item.text, lang=item.lang)
        t0 = time.perf_counter()
        verdicts.append(triager.triage(review).negative)
        seconds.append(time.perf_counter() - t0)
    return verdicts, seconds


REVIEW_SENTENCES = 5


def review_times(triager: Triager, items: list[Labelled], repeat: int) -> list[tuple[int, float]]:
    """(characters, fastest seconds) of `Triager.triage` on reviews made of REVIEW_SENTENCES
    consecutive sentences of the set: what intake pays per review."""
    out = []
    for k in range(0, len(items), REVIEW_SENTENCES):
        chunk = items[k : k + REVIEW_SENTENCES]
        text = ("" if chunk[0].lang == "ja" else " ").join(i.text for i in chunk)
        review = Review(id=f"review-{k}", text=text, lang=chunk[0].lang)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            triager.triage(review)
            best = min(best, time.perf_counter() - t0)
        out.append((len(text), best))
    return out


PARTS: list[tuple[str, Callable[[Labelled], bool]]] = [
    ("all", lambda _: True),
    ("tuning half", in_tuning_half),
    ("held-out half", lambda item: not in_tuning_half(item)),
]


def report(lang: str, title: str, items: list[Labelled], policies: list[ReviewsPolicy], repeat: int) -> None:
    negatives = sum(item.negative for item in items)
    say(f"{lang}: {title}: {len(items)} sentences, {negatives} negative, {len(items) - negatives} positive")
    say(f"    {'policy':<20} {'part':<14} {'bal.acc':>7} {'precision':>9} {'recall':>7} {'n':>5}")
    for policy in policies:
        triager = Triager(policy)
        runs = [predict(triager, items) for _ in range(repeat)]
        verdicts = runs[0][0]
        for name, keep in PARTS:
            c = Confusion.of([(i.negative, v) for i, v in zip(items, verdicts, strict=True) if keep(i)])
            say(
                f"    {policy.version:<20} {name:<14} {c.balanced_accuracy:>7.3f} {c.precision:>9.3f}"
                f" {c.recall:>7.3f} {c.n:>5}"
            )
        per_review = review_times(triager, items, repeat)
        per_sentence = [min(run[1][k] for run in runs) for k in range(len(items))]
        chars = statistics.mean(len(i.text) for i in items)
        say(
            f"    {policy.version:<20} time per sentence (mean {chars:.0f} chars): mean "
            f"{statistics.mean(per_sentence) * 1e3:.3f} ms, p99 "
            f"{statistics.quantiles(per_sentence, n=100)[98] * 1e3:.3f} ms, "
            f"max {max(per_sentence) * 1e3:.3f} ms"
        )
        review_chars = statistics.mean(n for n, _ in per_review)
        review_s = [t for _, t in per_review]
        say(
            f"    {policy.version:<20} time per review of {REVIEW_SENTENCES} sentences (mean "
            f"{review_chars:.0f} chars): mean {statistics.mean(review_s) * 1e3:.3f} ms, "
            f"max {max(review_s) * 1e3:.3f} ms"
        )


def whole_reviews(reviews: list[WholeReview], policies: list[ReviewsPolicy]) -> None:
    """Whole reviews rather than sentences: one negative sentence makes a review negative, so a long
    review is flagged more often than its sentences are. Shop reviews are shorter than these."""
    sentences = statistics.mean(len(r.sentence_ratings) for r in reviews)
    owed = sum(r.has_negative_sentence for r in reviews)
    say(
        f"en: the {len(reviews)} whole Amazon reviews (mean {sentences:.1f} sentences): {owed} have a "
        f"sentence rated <= -1 (a reply owed), {len(reviews) - owed} have none"
    )
    for policy in policies:
        triager = Triager(policy)
        flagged = [triager.triage(Review(id=r.id, text=r.text[:20_000], lang="en")).negative for r in reviews]
        c = Confusion.of([(r.has_negative_sentence, f) for r, f in zip(reviews, flagged, strict=True)])
        say(
            f"    {policy.version:<20} {'reviews':<14} {c.balanced_accuracy:>7.3f} {c.precision:>9.3f}"
            f" {c.recall:>7.3f} {c.n:>5}  (flagged {c.fp} of the {c.fp + c.tn} without a negative sentence)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.triage", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per policy; the fastest time per sentence counts"
    )
    args = parser.parse_args(argv)

    now = load_reviews_policy(PROJECT_ROOT / "policies")
    policies = [before_policy(now), now]
    say(
        f"triage, text only (no rating): {BEFORE_ISSUE_9_VERSION} (before issue 9; on today's code)"
        f" vs {now.version} (now)"
    )
    failed = 0
    try:
        amazon = load_amazon_snippets(ensure_amazon_snippets())
    except DatasetError as exc:
        say(f"en: not measured: {exc}")
        failed = 1
    else:
        report("en", "Amazon review sentences (Hutto & Gilbert, ICWSM 2014)", amazon, policies, args.repeat)
        whole_reviews(load_amazon_reviews(ensure_amazon_snippets()), policies)
    report("ja", "tests/reviews/data/ja_triage.tsv", load_ja_triage(), policies, args.repeat)
    return failed


if __name__ == "__main__":
    sys.exit(main())
