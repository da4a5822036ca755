"""Shop policies from `policies/*.yaml`, validated; and the business-day arithmetic they drive."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aftercare.errors import ConfigError

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: list[str] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def known_zone(name: str) -> str:
    """`name` if it is an IANA time zone this machine knows; ValueError naming it otherwise. One
    check for every policy that names a zone (shipping, contact)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(min_length=1, max_length=32)


class ShippingPolicy(_Policy):
    shop_timezone: str = "Asia/Tokyo"
    cutoff: time = time(12, 0)
    handling_business_days: int = Field(default=1, ge=0, le=30)
    business_weekdays: list[Weekday] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"])
    closed_dates: list[date] = Field(default_factory=list)

    @field_validator("shop_timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        return known_zone(v)

    @field_validator("business_weekdays")
    @classmethod
    def _some_days(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one business weekday is needed")
        return v

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.shop_timezone)

    def is_business_day(self, day: date) -> bool:
        return _WEEKDAYS[day.weekday()] in self.business_weekdays and day not in set(self.closed_dates)

    def next_business_day(self, day: date) -> date:
        day += timedelta(days=1)
        while not self.is_business_day(day):
            day += timedelta(days=1)
        return day

    def expected_ship_date(self, placed_at: datetime) -> date:
        """The day the order is expected to leave the warehouse, in the shop's time zone.

        An order counts as received on the day it was placed if that is a business day and it came
        before the cut-off, otherwise on the next business day; handling days are added to that.
        """
        local = placed_at.astimezone(self.tz)
        received = local.date()
        if not self.is_business_day(received) or local.time() >= self.cutoff:
            received = self.next_business_day(received)
        ship = received
        for _ in range(self.handling_business_days):
            ship = self.next_business_day(ship)
        return ship


class MessagesPolicy(_Policy):
    default_locale: str = "ja"
    supported_locales: list[str] = Field(default_factory=lambda: ["ja", "en"])
    locale_by_country: dict[str, str] = Field(default_factory=lambda: {"JP": "ja"})
    other_countries_locale: str | None = "en"
    gift_message_attributes: list[str] = Field(default_factory=list)
    gift_flag_attributes: list[str] = Field(default_factory=list)

    def pick_locale(self, *candidates: str | None, country_code: str | None = None) -> str:
        """The first candidate locale we have templates for ('ja-JP' -> 'ja'); else the one the
        country suggests; else the default."""
        if country_code:
            by_country = self.locale_by_country.get(country_code.upper(), self.other_countries_locale)
            candidates = (*candidates, by_country)
        for cand in candidates:
            if not cand:
                continue
            lang = cand.replace("_", "-").split("-")[0].lower()
            if lang in self.supported_locales:
                return lang
        return self.default_locale


def _key(name: str) -> str:
    """How policy names are matched: case, surrounding and inner spacing ignored."""
    return "".join(name.split()).casefold()


class Carrier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    transit_days: int = Field(ge=0, le=60)


class DeliveryPolicy(_Policy):
    """Transit days per carrier (for estimating delivery) and the touchpoints planned after it."""

    notify_statuses: list[str] = Field(default_factory=lambda: ["success"])
    carriers: list[Carrier] = Field(default_factory=list)
    default_transit_days: int = Field(default=3, ge=0, le=60)
    survey_days_after_delivery: int = Field(default=2, ge=0, le=365)
    review_request_days_after_delivery: int = Field(default=7, ge=0, le=365)

    def carrier(self, name: str | None) -> Carrier | None:
        """The carrier a fulfillment's tracking_company names, by name or alias; None if unknown."""
        if not name:
            return None
        wanted = _key(name)
        for carrier in self.carriers:
            if wanted in {_key(carrier.name), *(_key(a) for a in carrier.aliases)}:
                return carrier
        return None

    def transit_days(self, carrier_name: str | None) -> int:
        carrier = self.carrier(carrier_name)
        return carrier.transit_days if carrier else self.default_transit_days


REQUEST_KINDS = ("gift_wrap", "noshi", "gift_message", "delivery_box", "delivery_date", "delivery_time")


class RequestsPolicy(_Policy):
    """How the shop names special requests (note attributes, line properties), in any language."""

    warehouse_locale: str = "ja"
    attributes: dict[str, list[str]] = Field(default_factory=dict)
    line_properties: dict[str, list[str]] = Field(default_factory=dict)
    no_values: list[str] = Field(default_factory=lambda: ["", "no", "false", "0", "いいえ", "不要"])
    # A hand-off the warehouse has not acknowledged this long after it was prepared, or one it
    # refused, is an ops alert: the run fails with the reason and `ops_alert_emails` are told once.
    acknowledgement_window_minutes: int = Field(default=30, ge=1, le=7 * 24 * 60)
    ops_alert_emails: list[str] = Field(default_factory=list, max_length=50)

    @field_validator("ops_alert_emails")
    @classmethod
    def _alert_emails(cls, v: list[str]) -> list[str]:
        out = [a.strip().lower() for a in v]
        bad = [a for a in out if not _EMAIL.match(a)]
        if bad:
            raise ValueError(f"ops_alert_emails: {bad!r} are not email addresses")
        return out

    @field_validator("attributes")
    @classmethod
    def _known_kinds(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = set(v) - set(REQUEST_KINDS)
        if unknown:
            raise ValueError(f"unknown request kinds {sorted(unknown)}; known: {list(REQUEST_KINDS)}")
        return v

    def attribute_kind(self, name: str) -> str | None:
        """Which request a note attribute carries ('お届け希望日' -> 'delivery_date'), if any."""
        return _match(self.attributes, name)

    def property_kind(self, name: str) -> str | None:
        """Which request a line property carries ('刻印' -> 'engraving'), if any."""
        return _match(self.line_properties, name)

    def says_no(self, value: str) -> bool:
        return _key(value) in {_key(v) for v in self.no_values}


def _match(table: dict[str, list[str]], name: str) -> str | None:
    wanted = _key(name)
    for kind, names in table.items():
        if wanted in {_key(n) for n in names}:
            return kind
    return None


class Policies(BaseModel):
    shipping: ShippingPolicy
    messages: MessagesPolicy
    delivery: DeliveryPolicy
    requests: RequestsPolicy


M = TypeVar("M", bound=BaseModel)


def load_policy_file(path: Path, model: type[M]) -> M:
    """Read and validate one policy file; any problem is a ConfigError naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"policy file {path} is missing") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy file {path} is not valid YAML: {exc}") from exc
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(f"policy file {path} is invalid: {exc}") from exc


def load_policies(policies_dir: Path) -> Policies:
    """Read and validate every policy file the flows need."""
    return Policies(
        shipping=load_policy_file(policies_dir / "shipping.yaml", ShippingPolicy),  # type: ignore[arg-type]
        messages=load_policy_file(policies_dir / "messages.yaml", MessagesPolicy),  # type: ignore[arg-type]
        delivery=load_policy_file(policies_dir / "delivery.yaml", DeliveryPolicy),  # type: ignore[arg-type]
        requests=load_policy_file(policies_dir / "requests.yaml", RequestsPolicy),  # type: ignore[arg-type]
    )
