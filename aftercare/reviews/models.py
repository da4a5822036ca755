"""The typed inputs and outputs of review triage, drafting and guardrails.

Personal data is kept apart by construction: `ReplyRequest` (everything a drafter, and so the LLM,
sees) has no field that can hold a customer's email, phone or address, and forbids extra fields;
`CustomerPrivate` carries those, and only the guardrails (to catch a reply that repeats them) and
the redaction step read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aftercare.reviews.policy import Lang

DraftSource = Literal["llm", "template", "fallback"]


class Review(BaseModel):
    """A product review as the review platform gives it. `lang` None: detected from the text."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    text: str = Field(default="", max_length=20_000)
    rating: int | None = Field(default=None, ge=1, le=5)
    lang: str | None = Field(default=None, max_length=35)
    # The name the reviewer chose to show publicly: the only name a reply may use.
    display_name: str | None = Field(default=None, max_length=100)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("rating", mode="before")
    @classmethod
    def _whole_stars(cls, v: object) -> object:
        # Platforms send 4 or 4.0; 4.5 stars is not a rating we know how to threshold.
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v


class TriageResult(BaseModel):
    """Whether a review needs a careful reply, with the score and the reasons that decided it."""

    id: str
    negative: bool
    score: float = Field(description="text polarity in [-1, 1] from the language's analyser; 0 without text")
    reasons: list[str]
    lang: str | None = None


@dataclass(frozen=True)
class ProductFacts:
    title: str
    handle: str | None = None


@dataclass(frozen=True)
class OrderFacts:
    """What happened to the reviewer's order, as plain facts the reply may acknowledge.

    None means unknown (e.g. the review is not linked to an order)."""

    order_name: str | None = None
    shipped_late: bool | None = None
    days_late: int | None = None
    delivered: bool | None = None
    refunded: bool | None = None
    cancelled: bool | None = None


@dataclass(frozen=True)
class CustomerPrivate:
    """The reviewer's personal data. Never given to a drafter: only used to redact the review text
    and to check that a reply does not repeat any of it."""

    full_name: str | None = None
    email: str | None = None
    phone: str | None = None
    address_parts: tuple[str, ...] = field(default_factory=tuple)


class OrderFactsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    order_name: str | None = None
    shipped_late: bool | None = None
    days_late: int | None = None
    delivered: bool | None = None
    refunded: bool | None = None
    cancelled: bool | None = None

    @classmethod
    def of(cls, facts: OrderFacts) -> OrderFactsModel:
        return cls(
            order_name=facts.order_name,
            shipped_late=facts.shipped_late,
            days_late=facts.days_late,
            delivered=facts.delivered,
            refunded=facts.refunded,
            cancelled=facts.cancelled,
        )


class ReplyRequest(BaseModel):
    """Everything a drafter may use. No personal data fields, and no extra ones can be added."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    review_id: str
    review_text: str
    rating: int | None
    language: Lang = Field(description="the language to reply in")
    review_language: str | None = Field(description="the review's own language; None when unknown")
    display_name: str | None
    negative: bool
    product_title: str
    order: OrderFactsModel | None = None
    shop_name: str


class DraftReply(BaseModel):
    """The structured reply a drafter produces (the LLM's output is validated against this)."""

    model_config = ConfigDict(extra="forbid")

    reply_text: str = Field(min_length=1, max_length=4000, description="the public reply, plain text")
    language: Lang = Field(description="language of reply_text: 'ja' or 'en'")
    apologises: bool = Field(description="whether the reply apologises")
    promised_actions: list[str] = Field(description="every action the reply promises the shop will take")
    risk_notes: list[str] = Field(description="anything a human approver should double-check")


class Draft(BaseModel):
    """A reply draft and where it came from. `fallback_reason` says why the LLM was not used."""

    reply: DraftReply
    source: DraftSource
    llm_attempts: int = 0
    fallback_reason: str | None = None
    policy_version: str
