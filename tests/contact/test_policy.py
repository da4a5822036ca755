"""policies/contact.yaml: what ships, and the mistakes a shop could make in it, refused by name."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest
import yaml

from aftercare.contact.policy import ContactPolicy, MessageClass, UnknownMessageKind, load_contact_policy
from aftercare.errors import ConfigError
from aftercare.orders.receipt import CONFIRMATION
from aftercare.orders.shipping import DELIVERY_SURVEY, REVIEW_REQUEST, SHIPMENT_NOTICE
from aftercare.settings import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "policies" / "contact.yaml"
POLICY = load_contact_policy(SHIPPED)


def test_the_shipped_policy_says_what_the_issue_asks():
    assert POLICY.version.startswith("contact-")
    assert POLICY.shop_timezone == "Asia/Tokyo"
    assert POLICY.send_window.start == time(9, 0) and POLICY.send_window.end == time(20, 0)
    assert POLICY.stale_after_days == 14
    feedback_caps = [(c.max_messages, c.per_hours) for c in POLICY.caps(MessageClass.FEEDBACK)]
    assert feedback_caps == [(1, 24), (3, 30 * 24)]
    assert POLICY.caps(MessageClass.TRANSACTIONAL) == []
    # Feedback is opt-out by default, opt-in in DE and AT; promotional is opt-in everywhere.
    assert POLICY.consent_model(MessageClass.FEEDBACK, "JP") == "opt_out"
    assert POLICY.consent_model(MessageClass.FEEDBACK, "US") == "opt_out"
    assert POLICY.consent_model(MessageClass.FEEDBACK, "DE") == "opt_in"
    assert POLICY.consent_model(MessageClass.FEEDBACK, "AT") == "opt_in"
    for country in ("JP", "US", "DE", None):
        assert POLICY.consent_model(MessageClass.PROMOTIONAL, country) == "opt_in"


@pytest.mark.parametrize(
    ("kind", "message_class", "list_name"),
    [
        (CONFIRMATION, MessageClass.TRANSACTIONAL, None),
        (SHIPMENT_NOTICE, MessageClass.TRANSACTIONAL, None),
        ("cancellation", MessageClass.TRANSACTIONAL, None),
        ("review_reply", MessageClass.TRANSACTIONAL, None),
        ("complaint_reply", MessageClass.TRANSACTIONAL, None),
        (DELIVERY_SURVEY, MessageClass.FEEDBACK, "surveys"),
        (REVIEW_REQUEST, MessageClass.FEEDBACK, "review_requests"),
        ("review_reminder", MessageClass.FEEDBACK, "review_requests"),
        ("seasonal_offer", MessageClass.PROMOTIONAL, "offers"),
    ],
)
def test_every_kind_the_code_plans_has_a_class(kind, message_class, list_name):
    assert POLICY.message_class(kind) is message_class
    assert POLICY.list_of(kind) == list_name


def test_an_unknown_kind_is_an_error_not_a_guess():
    with pytest.raises(UnknownMessageKind, match="'newsletter' has no class in policies/contact.yaml"):
        POLICY.message_class("newsletter")
    with pytest.raises(ConfigError):
        POLICY.list_of("newsletter")


def test_caps_describe_themselves_for_the_timeline():
    one, three = POLICY.caps(MessageClass.FEEDBACK)
    assert one.describe("feedback") == "one feedback mail per 24 h"
    assert three.describe("feedback") == "three feedback mails per 30 days"


def _shipped() -> dict:
    return yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "contact.yaml"
    path.write_text(
        data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8"
    )
    return path


def _with(change) -> dict:
    data = _shipped()
    change(data)
    return data


BAD = [
    pytest.param(
        "version: v1\nkinds: {}\nsend_window: {start: 9:00, end: '20:00'}\n",
        'write the time quoted, as "HH:MM"',
        id="unquoted 9:00 is the integer 540 in YAML",
    ),
    pytest.param(
        _with(lambda d: d["send_window"].update(start="20:00", end="09:00")),
        "must be before end",
        id="window backwards",
    ),
    pytest.param(
        _with(lambda d: d["send_window"].update(start="09:00:30")), "whole minutes", id="seconds in window"
    ),
    pytest.param(
        _with(lambda d: d["kinds"]["order_confirmation"].update(list="orders")),
        "transactional mail has no unsubscribe list",
        id="transactional list",
    ),
    pytest.param(
        _with(lambda d: d["kinds"]["delivery_survey"].pop("list")),
        "needs the `list` it is left by",
        id="feedback without list",
    ),
    pytest.param(
        _with(lambda d: d["kinds"]["delivery_survey"].update(list="feedback")),
        "not a class name",
        id="list named like a class",
    ),
    pytest.param(
        _with(lambda d: d["kinds"]["delivery_survey"].update(list="all")), "or 'all'", id="list named all"
    ),
    pytest.param(
        _with(lambda d: d["kinds"]["delivery_survey"].update({"class": "marketing"})),
        "delivery_survey",
        id="unknown class",
    ),
    pytest.param(
        _with(lambda d: d["frequency_caps"].update(transactional=[{"max_messages": 1, "per_hours": 1}])),
        "never capped",
        id="capped transactional",
    ),
    pytest.param(
        _with(lambda d: d["frequency_caps"]["feedback"][0].update(max_messages=0)),
        "greater than or equal to 1",
        id="zero cap",
    ),
    pytest.param(
        _with(lambda d: d.update(shop_timezone="Mars/Olympus")), "unknown time zone", id="unknown zone"
    ),
    pytest.param(
        _with(lambda d: d["consent"]["classes"]["feedback"]["regions"].update(Germany="opt_in")),
        "ISO 3166-1 alpha-2",
        id="region by name",
    ),
    pytest.param(
        _with(lambda d: d["consent"]["classes"]["feedback"].update(default="maybe")),
        "opt_in",
        id="unknown consent model",
    ),
    pytest.param(
        _with(lambda d: d["consent"].update(consent_states=["subscribed", "opted_in"])),
        "unknown consent states",
        id="unknown state",
    ),
    pytest.param(
        _with(lambda d: d["consent"].update(refusal_states=["subscribed"])),
        "both consent and refusal",
        id="state both ways",
    ),
    pytest.param(
        _with(lambda d: d["consent"]["classes"].pop("promotional")),
        "no rule for promotional",
        id="class without consent rule",
    ),
    pytest.param(_with(lambda d: d.update(stale_after_days=0)), "stale_after_days", id="stale limit zero"),
    pytest.param(_with(lambda d: d.update(surprise=1)), "Extra inputs", id="unknown key"),
    pytest.param("version: [", "not valid YAML", id="broken yaml"),
]


@pytest.mark.parametrize(("content", "message"), BAD)
def test_a_bad_policy_is_refused_with_a_message_naming_the_problem(tmp_path: Path, content, message):
    with pytest.raises(ConfigError, match="contact.yaml") as exc:
        load_contact_policy(_write(tmp_path, content))
    assert message in str(exc.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="missing"):
        load_contact_policy(tmp_path / "contact.yaml")


def test_the_shipped_file_round_trips_through_its_model(tmp_path: Path):
    again = load_contact_policy(_write(tmp_path, POLICY.model_dump(mode="json", by_alias=True)))
    assert again == POLICY
    assert isinstance(again, ContactPolicy)
