"""The reviews policy (`policies/reviews.yaml`), validated: triage thresholds and reply guardrails."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aftercare.errors import ConfigError

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
    negative_rating_at_or_below: int = Field(default=2, ge=0, le=5)
    negative_text_score_at_or_below: dict[Lang, float] = Field(
        default_factory=lambda: {"en": -0.35, "ja": -0.3}
    )
    negative_phrases: PerLang = Field(default_factory=PerLang)


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


class ReviewsPolicy(_Strict):
    version: str = Field(min_length=1, max_length=32)
    triage: TriagePolicy = Field(default_factory=TriagePolicy)
    reply: ReplyPolicy


def load_reviews_policy(policies_dir: Path) -> ReviewsPolicy:
    """Read and validate `<policies_dir>/reviews.yaml`; a problem is a ConfigError naming the file."""
    path = policies_dir / "reviews.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"policy file {path} is missing") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy file {path} is not valid YAML: {exc}") from exc
    try:
        return ReviewsPolicy.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(f"policy file {path} is invalid: {exc}") from exc
