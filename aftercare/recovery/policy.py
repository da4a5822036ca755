"""`policies/recovery.yaml`, validated, and the shop's business-hour clock the first answer is
timed by (the business days of shipping.yaml, the shop's time zone, its closed dates)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aftercare.policies import ShippingPolicy, load_policy_file
from aftercare.reviews.policy import LengthBounds, Remedies, _email
from aftercare.surveys.policy import SCALES, ScaleName


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OfficeHours(_Strict):
    start: time
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> OfficeHours:
        if self.start >= self.end:
            raise ValueError(f"office_hours start {self.start} must be before end {self.end}")
        return self


class OpsContacts(_Strict):
    notify: list[str] = Field(min_length=1, max_length=50)
    escalate_to: list[str] = Field(min_length=1, max_length=50)
    locale: str = Field(default="ja", pattern=r"^(ja|en)$")

    @field_validator("notify", "escalate_to")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        out = [_email(a, "ops address") for a in v]
        if len(set(out)) != len(out):
            raise ValueError("an address is listed twice")
        return out


class RecoveryPolicy(_Strict):
    version: str = Field(min_length=1, max_length=32)
    threshold: dict[ScaleName, int]
    negative_comment_opens_a_case: bool = True
    first_answer_business_hours: float = Field(default=24, gt=0, le=24 * 30)
    office_hours: OfficeHours | None = None
    extra_closed_dates: list[date] = Field(default_factory=list)
    private_remedies: Remedies = Field(default_factory=Remedies)
    length: dict[str, LengthBounds]
    ops: OpsContacts

    @field_validator("threshold")
    @classmethod
    def _on_the_scale(cls, v: dict[str, int]) -> dict[str, int]:
        missing = sorted(set(SCALES) - set(v))
        if missing:
            raise ValueError(f"threshold has no value for {missing}")
        for name, at in v.items():
            scale = SCALES[name]
            if not scale.low <= at < scale.high:
                raise ValueError(
                    f"threshold.{name}: {at} is not a score from {scale.low} to {scale.high - 1} "
                    "(at the top of the scale every answer would open a case)"
                )
        return v

    @field_validator("length")
    @classmethod
    def _both_languages(cls, v: dict[str, LengthBounds]) -> dict[str, LengthBounds]:
        missing = sorted({"ja", "en"} - set(v))
        if missing:
            raise ValueError(f"length has no bounds for {missing}")
        return v

    def low(self, scale: str, score: int) -> bool:
        """Whether `score` on `scale` is at or below the threshold (a case)."""
        return score <= self.threshold[scale]  # type: ignore[index]


def load_recovery_policy(policies_dir: Path) -> RecoveryPolicy:
    """Read and validate `<policies_dir>/recovery.yaml`; a problem is a ConfigError naming the file."""
    return load_policy_file(policies_dir / "recovery.yaml", RecoveryPolicy)


class BusinessClock:
    """Business hours in the shop's calendar: the hours of its business days (shipping.yaml's
    weekdays, minus its closed dates and the recovery policy's own), in the shop's time zone, within
    the office hours when the policy names them. Daylight saving is honoured: an hour is an hour of
    elapsed time inside a business window."""

    def __init__(self, shipping: ShippingPolicy, policy: RecoveryPolicy):
        self.shipping = shipping
        self.tz = shipping.tz
        self.extra_closed = set(policy.extra_closed_dates)
        self.office = policy.office_hours

    def is_business_day(self, day: date) -> bool:
        return self.shipping.is_business_day(day) and day not in self.extra_closed

    def window(self, day: date) -> tuple[datetime, datetime]:
        """The business window of a business day, in UTC (arithmetic on UTC is elapsed time; on a
        zone's wall clock it would not be, across a change of daylight saving)."""
        if self.office is None:
            start = datetime.combine(day, time(0), self.tz)
            end = datetime.combine(day + timedelta(days=1), time(0), self.tz)
        else:
            start = datetime.combine(day, self.office.start, self.tz)
            end = datetime.combine(day, self.office.end, self.tz)
        return start.astimezone(UTC), end.astimezone(UTC)

    def add(self, start: datetime, hours: float) -> datetime:
        """The moment `hours` business hours after `start` (aware). Opened on a Friday evening, a
        24-hour answer is due on Monday evening; opened before a holiday, the day after it counts."""
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        start = start.astimezone(UTC)
        left = timedelta(hours=hours)
        day = start.astimezone(self.tz).date()
        for _ in range(3700):  # ten years of days: a calendar with no business day is a config error
            if self.is_business_day(day):
                open_, close = self.window(day)
                begin = max(open_, start)
                if begin < close:
                    available = close - begin
                    if left <= available:
                        return begin + left
                    left -= available
            day += timedelta(days=1)
        raise ValueError("the shop's calendar has no business day in ten years")

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Business time between two moments (0 when `end` is not after `start`)."""
        total = timedelta(0)
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        day = start.astimezone(self.tz).date()
        last = end.astimezone(self.tz).date()
        while day <= last:
            if self.is_business_day(day):
                open_, close = self.window(day)
                begin, stop = max(open_, start), min(close, end)
                if begin < stop:
                    total += stop - begin
            day += timedelta(days=1)
        return total
