"""`policies/contact.yaml`, validated: message classes, frequency caps, the send window, the stale
limit and consent by region. Pure data and small look-ups; the decisions are in `rules.py`."""

from __future__ import annotations

import re
from datetime import date, time, timedelta
from enum import StrEnum
from functools import cached_property, lru_cache
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


_WORDING_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class ConsentPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # The version of the consent wording the customer was shown (the checkout's marketing box, the
    # account page): kept with every consent record (特定電子メール法: keep the wording shown).
    wording_version: str = Field(min_length=1, max_length=64)
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

    @field_validator("wording_version")
    @classmethod
    def _wording_label(cls, v: str) -> str:
        if not _WORDING_VERSION.match(v):
            raise ValueError(
                f"wording_version {v!r}: a short label of letters, digits and . _ : - (say checkout-2026-11)"
            )
        return v


class GiftSeason(BaseModel):
    """A gift season the shop names (お中元, お歳暮): the months it falls in (in the shop's zone) and
    the one short line a confirmation may carry about it, per language."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=40)
    months: list[int] = Field(min_length=1, max_length=12)
    line: dict[str, str]

    @field_validator("months")
    @classmethod
    def _calendar_months(cls, v: list[int]) -> list[int]:
        bad = [m for m in v if not isinstance(m, int) or not 1 <= m <= 12]
        if bad:
            raise ValueError(f"months {bad!r}: give calendar months, 1-12")
        if len(set(v)) != len(v):
            raise ValueError(f"months {v!r}: a month is named twice")
        return sorted(v)

    @field_validator("line")
    @classmethod
    def _short_lines(cls, v: dict[str, str]) -> dict[str, str]:
        if not {"ja", "en"} <= set(v):
            raise ValueError("line: give the line in ja and en")
        for lang, text in v.items():
            if not text.strip() or len(text) > 200 or "\n" in text.strip():
                raise ValueError(f"line.{lang}: one short line (1-200 characters, no line break)")
        return {k: t.strip() for k, t in v.items()}


class SeasonalLine(BaseModel):
    """Seed 004: one short line in the order confirmation about the next gift season, for a repeat
    customer whose earlier order fell in a season named here. Promotional content riding on a
    transactional mail: off unless the shop turns it on, and only for customers whose consent allows
    promotional mail (see `consent.classes.promotional`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = False
    seasons: list[GiftSeason] = Field(default_factory=list, max_length=12)

    @model_validator(mode="after")
    def _distinct(self) -> SeasonalLine:
        names = [s.name for s in self.seasons]
        if len(set(names)) != len(names):
            raise ValueError(f"seasonal_line.seasons: names {names!r} repeat")
        months = [m for s in self.seasons for m in s.months]
        if len(set(months)) != len(months):
            raise ValueError("seasonal_line.seasons: a month belongs to two seasons")
        if self.enabled and not self.seasons:
            raise ValueError("seasonal_line: enabled with no seasons")
        return self

    def season_of(self, day: date) -> GiftSeason | None:
        """The season a (shop-local) date falls in, if any."""
        return next((s for s in self.seasons if day.month in s.months), None)

    def next_after(self, day: date) -> GiftSeason | None:
        """The next season to begin after `day` (a season under way at `day` is not "next"): the
        first of the following twelve months that starts a season."""
        starts = {}
        for season in self.seasons:
            for m in season.months:
                if (m - 2) % 12 + 1 not in season.months:  # the month before is not in it: a start
                    starts[m] = season
        for ahead in range(1, 13):
            month = (day.month - 1 + ahead) % 12 + 1
            if month in starts:
                return starts[month]
        return None


class ContactPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(min_length=1, max_length=32)
    shop_timezone: str = "Asia/Tokyo"
    kinds: dict[str, KindRule]
    frequency_caps: dict[MessageClass, list[FrequencyCap]] = Field(default_factory=dict)
    send_window: SendWindow = Field(default_factory=SendWindow)
    stale_after_days: int = Field(default=14, ge=1, le=365)
    consent: ConsentPolicy
    seasonal_line: SeasonalLine = Field(default_factory=SeasonalLine)

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


@lru_cache(maxsize=8)
def _cached(path: Path, mtime_ns: int) -> ContactPolicy:
    return load_contact_policy(path)


def contact_policy(policies_dir: Path) -> ContactPolicy:
    """`<policies_dir>/contact.yaml`, read again only when the file changed (the router reads it for
    every delivery that carries consent)."""
    path = policies_dir / "contact.yaml"
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1  # missing: load_contact_policy names the file
    return _cached(path, mtime)
