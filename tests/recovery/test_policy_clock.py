"""The recovery policy and its business-hour clock: time is an input. The shop's calendar is
shipping.yaml's (Asia/Tokyo, Monday to Friday, the Japanese holidays it lists)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import ValidationError

from aftercare.errors import ConfigError
from aftercare.policies import load_policies
from aftercare.recovery.policy import BusinessClock, RecoveryPolicy, load_recovery_policy
from aftercare.settings import PROJECT_ROOT

JST = ZoneInfo("Asia/Tokyo")
POLICY = load_recovery_policy(PROJECT_ROOT / "policies")
SHIPPING = load_policies(PROJECT_ROOT / "policies").shipping


def jst(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=JST)


@pytest.mark.parametrize(
    ("opened", "due"),
    [
        ("2026-12-01 10:00", "2026-12-02 10:00"),  # Tuesday: the next day
        ("2026-12-04 20:00", "2026-12-07 20:00"),  # Friday evening: Monday evening, the weekend skipped
        ("2026-12-05 10:00", "2026-12-08 00:00"),  # Saturday: all of Monday counts
        ("2026-11-20 18:00", "2026-11-24 18:00"),  # Friday before Monday 23 Nov (勤労感謝の日)
        ("2026-12-28 10:00", "2027-01-04 10:00"),  # before the year-end closure (29 Dec - 3 Jan)
        ("2026-05-01 09:00", "2026-05-07 09:00"),  # Golden Week: 2-6 May closed
    ],
)
def test_24_business_hours_skip_weekends_and_the_shops_holidays(opened, due):
    clock = BusinessClock(SHIPPING, POLICY)

    at = clock.add(jst(opened), 24)

    assert at.astimezone(JST) == jst(due)
    assert clock.elapsed(jst(opened), at).total_seconds() == 24 * 3600


def test_office_hours_and_extra_closures_narrow_the_clock():
    policy = RecoveryPolicy.model_validate(
        {
            **POLICY.model_dump(),
            "office_hours": {"start": "09:00", "end": "18:00"},
            "extra_closed_dates": ["2026-12-07"],
        }
    )
    clock = BusinessClock(SHIPPING, policy)

    # Friday 17:00: one hour that day; Monday 7 Dec is the shop's own closure; 9 h Tue, 9 h Wed, 5 h Thu.
    assert clock.add(jst("2026-12-04 17:00"), 24).astimezone(JST) == jst("2026-12-10 14:00")


def test_the_clock_counts_elapsed_hours_across_daylight_saving():
    shipping = type(SHIPPING).model_validate(
        {**SHIPPING.model_dump(), "shop_timezone": "America/New_York", "closed_dates": []}
    )
    clock = BusinessClock(shipping, POLICY)
    ny = ZoneInfo("America/New_York")
    # Friday 6 Mar 2026 12:00 EST; clocks go forward on Sunday 8 Mar (not a business day anyway):
    # 12 h Friday + 12 h Monday = Monday 12:00 EDT.
    start = datetime(2026, 3, 6, 12, 0, tzinfo=ny)
    assert clock.add(start, 24) == datetime(2026, 3, 9, 12, 0, tzinfo=ny).astimezone(UTC)


def test_a_naive_time_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        BusinessClock(SHIPPING, POLICY).add(datetime(2026, 12, 1, 10, 0), 24)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": {"csat5": 5, "nps10": 6}}, "every answer would open a case"),
        ({"threshold": {"csat5": 2}}, "no value for ['nps10']"),
        ({"threshold": {"csat5": 2, "nps10": -1}}, "not a score from 0 to 9"),
        ({"ops": {"notify": ["not-an-address"], "escalate_to": ["m@example.com"]}}, "not an email"),
        ({"ops": {"notify": [], "escalate_to": ["m@example.com"]}}, "at least 1"),
        ({"office_hours": {"start": "18:00", "end": "09:00"}}, "must be before"),
        ({"first_answer_business_hours": 0}, "greater than 0"),
        ({"length": {"ja": {"min": 10, "max": 100}}}, "no bounds for ['en']"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_a_policy_that_cannot_work_is_refused_with_why(change, message):
    data = yaml.safe_load((PROJECT_ROOT / "policies" / "recovery.yaml").read_text(encoding="utf-8"))
    data.update(change)
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RecoveryPolicy.model_validate(data)


def test_a_missing_policy_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="recovery.yaml"):
        load_recovery_policy(tmp_path)
