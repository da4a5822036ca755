"""`policies/contact.yaml`, validated: message classes, frequency caps, the send window, the stale
limit and consent by region. Pure data and small look-ups; the decisions are in `rules.py`."""

from __future__ import annotations

import re
from datetime import time, timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aftercare.errors import ConfigError
from aftercare.policies import known_zone, load_policy_file


class MessageClass(StrEnum):
    TRANSACTIONAL = "transactional"
    FEEDBACK = "feedback"
    PROMOTIONAL = "promotional"


ConsentModel = Literal["opt_in", "opt_out"]

# Shopify's CustomerEmailMarketingState values, lower-cased as the REST and webhook payloads write them.
SHOPIFY_CONSENT_STATES = frozenset(
    {"subscribed", "not_subscribed", "pending", "unsubscribed", "redacted", "invalid"}
)

_LIST_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


class UnknownMessageKind(ConfigError):
    """A touchpoint's kind has no class in policies/contact.yaml: add it there rather than guess."""

    def __init__(self, kind: str):
        super().__init__(
            f"message kind {kind!r} has no class in policies/contact.yaml; add it under `kinds` "
            "(transactional, feedback or promotional)"
        )
        self.kind = kind


class KindRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    message_class: MessageClass = Field(alias="class")
    # The list a customer unsubscribes from with "this kind"; none for transactional mail.
    list_name: str | None = Field(default=None, alias="list")


class FrequencyCap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_messages: int = Field(ge=1, le=1000)
    per_hours: int = Field(ge=1, le=24 * 366)

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.per_hours)

    def describe(self, message_class: str) -> str:
        """'one feedback mail per 24 h', 'three feedback mails per 30 days'."""
        count = _NUMBERS.get(self.max_messages, str(self.max_messages))
        noun = f"{message_class} mail" if self.max_messages == 1 else f"{message_class} mails"
        if self.per_hours % 24 == 0 and self.per_hours > 24:
            span = f"{self.per_hours // 24} days"
        else:
            span = f"{self.per_hours} h"
        return f"{count} {noun} per {span}"


_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


class SendWindow(BaseModel):
    """Local wall-clock hours in the customer's zone: from `start` until before `end`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: time = time(9, 0)
    end: time = time(20, 0)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _quoted(cls, v: object) -> object:
        # YAML reads an unquoted 9:00 as the integer 540 and pydantic would take that as seconds.
        if not isinstance(v, str | time):
            raise ValueError(f'{v!r}: write the time quoted, as "HH:MM"')
        return v

    @field_validator("start", "end")
    @classmethod
    def _naive_minutes(cls, v: time) -> time:
        if v.tzinfo is not None:
            raise ValueError("the window is in the customer's own time: give no offset")
        if v.second or v.microsecond:
            raise ValueError("the window is given in whole minutes")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> SendWindow:
        if self.start >= self.end:
            raise ValueError(f"send_window: start {self.start} must be before end {self.end}")
        return self

    def describe(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


class ClassConsent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    default: ConsentModel
    no_country: ConsentModel = "opt_in"
    regions: dict[str, ConsentModel] = Field(default_factory=dict)

    @field_validator("regions")
    @classmethod
    def _countries(cls, v: dict[str, ConsentModel]) -> dict[str, ConsentModel]:
        bad = [k for k in v if not _COUNTRY.match(k)]
        if bad:
            raise ValueError(f"regions {bad!r}: use ISO 3166-1 alpha-2 country codes (DE, AT, ...)")
        return v


class ConsentPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    consent_states: list[str] = Field(default_factory=lambda: ["subscribed"])
    refusal_states: list[str] = Field(default_factory=lambda: ["unsubscribed", "redacted", "invalid"])
    classes: dict[MessageClass, ClassConsent] = Field(default_factory=dict)

    @field_validator("consent_states", "refusal_states")
    @classmethod
    def _shopify_states(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - SHOPIFY_CONSENT_STATES)
        if unknown:
            raise ValueError(f"unknown consent states {unknown}; Shopify's: {sorted(SHOPIFY_CONSENT_STATES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ConsentPolicy:
        both = set(self.consent_states) & set(self.refusal_states)
        if both:
            raise ValueError(f"states {sorted(both)} cannot be both consent and refusal")
        if MessageClass.TRANSACTIONAL in self.classes:
            raise ValueError("transactional mail needs no consent: remove it from consent.classes")
        return self


class ContactPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(min_length=1, max_length=32)
    shop_timezone: str = "Asia/Tokyo"
    kinds: dict[str, KindRule]
    frequency_caps: dict[MessageClass, list[FrequencyCap]] = Field(default_factory=dict)
    send_window: SendWindow = Field(default_factory=SendWindow)
    stale_after_days: int = Field(default=14, ge=1, le=365)
    consent: ConsentPolicy = Field(default_factory=ConsentPolicy)

    @field_validator("shop_timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        return known_zone(v)

    @model_validator(mode="after")
    def _lists_and_consent(self) -> ContactPolicy:
        class_names = {c.value for c in MessageClass}
        for kind, rule in self.kinds.items():
            if rule.message_class is MessageClass.TRANSACTIONAL:
                if rule.list_name is not None:
                    raise ValueError(f"kinds.{kind}: transactional mail has no unsubscribe list")
                continue
            if rule.list_name is None:
                raise ValueError(f"kinds.{kind}: a {rule.message_class} kind needs the `list` it is left by")
            if not _LIST_NAME.match(rule.list_name) or rule.list_name in {*class_names, "all"}:
                raise ValueError(
                    f"kinds.{kind}: list {rule.list_name!r} must be lower_snake_case, "
                    "not a class name or 'all'"
                )
            if rule.message_class not in self.consent.classes:
                raise ValueError(f"kinds.{kind}: consent.classes has no rule for {rule.message_class}")
        if MessageClass.TRANSACTIONAL in self.frequency_caps:
            raise ValueError("transactional mail is never capped: remove it from frequency_caps")
        return self

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.shop_timezone)

    @property
    def stale_after(self) -> timedelta:
        return timedelta(days=self.stale_after_days)

    def message_class(self, kind: str) -> MessageClass:
        """The class of a message kind; an unknown kind is an error, never a guess."""
        rule = self.kinds.get(kind)
        if rule is None:
            raise UnknownMessageKind(kind)
        return rule.message_class

    def list_of(self, kind: str) -> str | None:
        """The list a customer leaves with "this kind" (None for transactional mail)."""
        rule = self.kinds.get(kind)
        if rule is None:
            raise UnknownMessageKind(kind)
        return rule.list_name

    def caps(self, message_class: MessageClass) -> list[FrequencyCap]:
        return list(self.frequency_caps.get(message_class, []))

    def consent_model(self, message_class: MessageClass, country: str | None) -> ConsentModel:
        """Opt-in or opt-out for this class in the customer's country (None: no address names one)."""
        rule = self.consent.classes[message_class]
        if country is None:
            return rule.no_country
        return rule.regions.get(country, rule.default)


def load_contact_policy(path: Path) -> ContactPolicy:
    """Read and validate `policies/contact.yaml`; any problem is a ConfigError naming the file."""
    return load_policy_file(path, ContactPolicy)
