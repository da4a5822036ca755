from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from aftercare.errors import ConfigError
from aftercare.policies import ShippingPolicy, load_policies
from aftercare.settings import PROJECT_ROOT

POLICIES = load_policies(PROJECT_ROOT / "policies")


def jst(y, m, d, hh, mm=0):
    return (
        datetime(y, m, d, hh - 9, mm, tzinfo=UTC)
        if hh >= 9
        else datetime(y, m, d - 1, hh + 15, mm, tzinfo=UTC)
    )


@pytest.mark.parametrize(
    ("placed", "expected", "why"),
    [
        (jst(2026, 11, 19, 11, 59), date(2026, 11, 20), "Thu before cut-off: received Thu, +1 business day"),
        (
            jst(2026, 11, 19, 12, 0),
            date(2026, 11, 24),
            "Thu at cut-off: received Fri, +1 skips weekend and 11-23",
        ),
        (jst(2026, 11, 21, 10, 0), date(2026, 11, 25), "Sat: received Tue (Mon 11-23 is a holiday), +1"),
        (jst(2026, 12, 28, 15, 0), date(2027, 1, 5), "year-end closure 12-29..01-03, then 01-04 received"),
    ],
)
def test_expected_ship_date_counts_business_days_in_shop_time(placed, expected, why):
    assert POLICIES.shipping.expected_ship_date(placed) == expected, why


def test_cutoff_is_judged_in_the_shop_time_zone_not_utc():
    # 02:30 UTC on Thursday is 11:30 in Tokyo (before the 12:00 cut-off).
    placed = datetime(2026, 11, 19, 2, 30, tzinfo=UTC)
    assert POLICIES.shipping.expected_ship_date(placed) == date(2026, 11, 20)


def test_same_day_handling():
    policy = ShippingPolicy(version="t", handling_business_days=0, cutoff="14:00")
    assert policy.expected_ship_date(jst(2026, 11, 19, 13, 0)) == date(2026, 11, 19)


@pytest.mark.parametrize(
    ("candidates", "country", "expected"),
    [
        (("ja-JP",), None, "ja"),
        (("en-GB",), "JP", "en"),
        ((None, None), "US", "en"),
        ((None,), "JP", "ja"),
        (("fr",), None, "ja"),
        ((None,), None, "ja"),
    ],
)
def test_locale_choice(candidates, country, expected):
    assert POLICIES.messages.pick_locale(*candidates, country_code=country) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("version: [", "not valid YAML"),
        ("version: v1\nshop_timezone: Mars/Olympus\n", "unknown time zone"),
        ("version: v1\nsurprise: 1\n", "Extra inputs"),
        ("version: v1\nbusiness_weekdays: []\n", "at least one"),
    ],
)
def test_bad_policy_files_are_refused_with_a_clear_message(tmp_path: Path, content, message):
    (tmp_path / "shipping.yaml").write_text(content)
    (tmp_path / "messages.yaml").write_text((PROJECT_ROOT / "policies" / "messages.yaml").read_text())
    with pytest.raises(ConfigError, match=message):
        load_policies(tmp_path)


def test_missing_policy_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="missing"):
        load_policies(tmp_path)
