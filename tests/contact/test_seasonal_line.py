"""Seed 004: one short line about the next gift season in a repeat customer's order confirmation,
only when the policy enables it, an earlier order fell in a season it names, and the customer's
consent allows promotional content. Each condition, through the real receipt path."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import Session

from aftercare.contact.policy import contact_policy, load_contact_policy
from aftercare.contact.store import suppress
from aftercare.errors import ConfigError
from aftercare.models import OutboxMessage
from aftercare.runtime import Runtime
from aftercare.settings import PROJECT_ROOT
from tests.factories import SHOP, order_payload
from tests.pipeline import receive

OSEIBO_JA = "お歳暮の季節にも、心を込めた贈り物をご用意してお待ちしております。"
OCHUGEN_JA = "お中元の季節にも"
OSEIBO_EN = "year-end gift season (oseibo)"
CONSENT_TOPIC = "customers_email_marketing_consent/update"


def policies_with(tmp_path: Path, **seasonal: Any) -> Path:
    """A copy of the shipped policies with `seasonal_line` changed."""
    folder = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", folder)
    data = yaml.safe_load((folder / "contact.yaml").read_text(encoding="utf-8"))
    data["seasonal_line"].update(seasonal)
    (folder / "contact.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return folder


@pytest.fixture
def on(settings, tmp_path):
    """A runtime whose contact policy turns the seasonal line on."""
    runtime = Runtime.build(
        settings.model_copy(update={"policies_dir": policies_with(tmp_path, enabled=True)})
    )
    yield runtime
    runtime.engine.dispose()


def at(when: str, **kw: Any) -> dict[str, str]:
    return {"created_at": when, "processed_at": when, "updated_at": when, **kw}


def earlier(rt: Any, when: str = "2026-07-10T10:00:00+09:00", sample: str = "ja-first-gift", **kw: Any):
    return receive(rt, order_payload(sample, **at(when), **kw))


def repeat(rt: Any, when: str = "2026-11-20T10:15:00+09:00", sample: str = "ja-first-gift", **kw: Any):
    """The repeat order: the sample's customer again, with a new order id and name."""
    out = receive(rt, order_payload(sample, id=820050, name="#1150", order_number=1150, **at(when), **kw))
    assert out.outbox_id is not None, out.reason
    with Session(rt.engine) as s:
        message = s.get(OutboxMessage, out.outbox_id)
        assert message is not None
        return message


def consent(rt: Any, state: str, email: str = "hanako@example.jp", when: str = "2026-08-01T00:00:00Z"):
    body = {
        "customer_id": 7001,
        "email_address": email,
        "email_marketing_consent": {
            "state": state,
            "opt_in_level": "single_opt_in",
            "consent_updated_at": when,
        },
    }
    receive(rt, body, topic=CONSENT_TOPIC)


def has_line(message: OutboxMessage, text: str = OSEIBO_JA) -> bool:
    in_text, in_html = text in message.text_body, text in message.html_body
    assert in_text == in_html, "the text and HTML parts must agree"
    return in_text


def test_a_repeat_customer_with_an_ochugen_order_and_opt_in_gets_one_line_about_oseibo(on):
    earlier(on)
    consent(on, "subscribed")
    message = repeat(on)
    assert has_line(message)
    assert message.text_body.count(OSEIBO_JA) == 1
    assert OCHUGEN_JA not in message.text_body
    assert '<p class="seasonal-line">' + OSEIBO_JA + "</p>" in message.html_body


def test_in_english_too(on):
    earlier(on, sample="en-repeat-gift", when="2026-07-04T10:00:00-07:00")
    consent(on, "subscribed", email="oliver@example.co.uk")
    out = receive(
        on,
        order_payload(
            "en-repeat-gift", id=820077, name="#1177", order_number=1177, **at("2026-11-20T10:00:00-08:00")
        ),
    )
    with Session(on.engine) as s:
        message = s.get(OutboxMessage, out.outbox_id)
    assert message is not None and message.locale == "en"
    assert has_line(message, OSEIBO_EN)


def test_the_shipped_policy_keeps_it_off(rt):
    assert contact_policy(rt.settings.policies_dir).seasonal_line.enabled is False
    earlier(rt)
    consent(rt, "subscribed")
    assert not has_line(repeat(rt))


def test_no_opt_in_on_record_no_line(on):
    earlier(on)
    assert not has_line(repeat(on))


@pytest.mark.parametrize("state", ["unsubscribed", "not_subscribed", "pending", "redacted"])
def test_no_line_without_consent(on, state):
    earlier(on)
    consent(on, state)
    assert not has_line(repeat(on))


@pytest.mark.parametrize("list_name", ["offers", "promotional", "all"])
def test_no_line_after_leaving_offers_promotional_or_all_mail(on, list_name):
    earlier(on)
    consent(on, "subscribed")
    with Session(on.engine) as s:
        suppress(
            s,
            shop_domain=SHOP,
            email_key="hanako@example.jp",
            list_name=list_name,
            source="test",
            now=datetime.now(UTC),
            policy=contact_policy(on.settings.policies_dir),
        )
        s.commit()
    assert not has_line(repeat(on))


def test_leaving_the_surveys_list_does_not_stop_it(on):
    earlier(on)
    consent(on, "subscribed")
    with Session(on.engine) as s:
        suppress(
            s,
            shop_domain=SHOP,
            email_key="hanako@example.jp",
            list_name="surveys",
            source="test",
            now=datetime.now(UTC),
            policy=contact_policy(on.settings.policies_dir),
        )
        s.commit()
    assert has_line(repeat(on))


def test_a_first_order_gets_no_line(on):
    consent(on, "subscribed")
    message = repeat(on)  # the customer's only order
    assert not has_line(message)


def test_an_earlier_order_outside_every_season_gets_no_line(on):
    earlier(on, when="2026-03-10T10:00:00+09:00")
    consent(on, "subscribed")
    assert not has_line(repeat(on))


def test_an_earlier_cancelled_or_test_order_does_not_count(on):
    earlier(on, cancelled_at="2026-07-11T10:00:00+09:00")
    consent(on, "subscribed")
    assert not has_line(repeat(on))


def test_the_season_is_read_in_the_shops_zone(on):
    # 2026-06-30 20:00 UTC is already 1 July in Tokyo: お中元.
    earlier(on, when="2026-06-30T20:00:00+00:00")
    consent(on, "subscribed")
    assert has_line(repeat(on))


def test_the_checkout_box_on_the_repeat_order_is_an_opt_in(on):
    earlier(on)
    assert has_line(repeat(on, buyer_accepts_marketing=True))


def test_the_box_never_overrides_an_unsubscribe_for_the_line_either(on):
    earlier(on)
    consent(on, "unsubscribed", when="2026-11-01T00:00:00Z")
    assert not has_line(repeat(on, buyer_accepts_marketing=True))


def test_an_order_in_december_is_told_about_ochugen(on):
    earlier(on)
    consent(on, "subscribed")
    assert has_line(repeat(on, when="2026-12-05T10:00:00+09:00"), OCHUGEN_JA)


# -- the policy itself ---------------------------------------------------------------------------------


def test_next_season_and_season_of():
    rule = load_contact_policy(PROJECT_ROOT / "policies" / "contact.yaml").seasonal_line
    assert rule.season_of(date(2026, 7, 31)).name == "ochugen"
    assert rule.season_of(date(2026, 8, 1)) is None
    assert rule.next_after(date(2026, 8, 1)).name == "oseibo"
    assert rule.next_after(date(2026, 7, 15)).name == "oseibo"  # a season under way is not "next"
    assert rule.next_after(date(2026, 12, 20)).name == "ochugen"
    assert rule.next_after(date(2027, 1, 2)).name == "ochugen"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"enabled": True, "seasons": []}, "enabled with no seasons"),
        ({"seasons": [{"name": "x", "months": [13], "line": {"ja": "a", "en": "b"}}]}, "1-12"),
        ({"seasons": [{"name": "x", "months": [7], "line": {"ja": "a"}}]}, "ja and en"),
        ({"seasons": [{"name": "x", "months": [7], "line": {"ja": "a\nb", "en": "b"}}]}, "one short line"),
        ({"seasons": [{"name": "x", "months": [7], "line": {"ja": "a" * 201, "en": "b"}}]}, "one short line"),
        (
            {
                "seasons": [
                    {"name": "x", "months": [7], "line": {"ja": "a", "en": "b"}},
                    {"name": "y", "months": [7], "line": {"ja": "a", "en": "b"}},
                ]
            },
            "two seasons",
        ),
        ({"surprise": True}, "Extra inputs"),
    ],
)
def test_a_bad_seasonal_section_is_refused_by_name(tmp_path, change, said):
    folder = policies_with(tmp_path, **change)
    with pytest.raises(ConfigError, match="contact.yaml") as exc:
        load_contact_policy(folder / "contact.yaml")
    assert said in str(exc.value)


@pytest.mark.parametrize(
    ("wording", "said"),
    [
        (None, "wording_version"),
        ("", "wording_version"),
        ("has spaces in it", "short label"),
        (7, "wording_version"),
    ],
)
def test_the_consent_wording_version_is_required_and_a_label(tmp_path, wording, said):
    folder = policies_with(tmp_path)
    data = yaml.safe_load((folder / "contact.yaml").read_text(encoding="utf-8"))
    if wording is None:
        del data["consent"]["wording_version"]
    else:
        data["consent"]["wording_version"] = wording
    (folder / "contact.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="contact.yaml") as exc:
        load_contact_policy(folder / "contact.yaml")
    assert said in str(exc.value)


def test_the_shipped_policy_names_its_wording_and_is_bumped():
    policy = load_contact_policy(PROJECT_ROOT / "policies" / "contact.yaml")
    assert policy.consent.wording_version == "shopify-checkout-2026-11"
    assert policy.version == "contact-2026.11.2"
    assert [s.name for s in policy.seasonal_line.seasons] == ["ochugen", "oseibo"]
