"""The satisfaction-survey part of `aftercare demo`: three customers whose parcels were delivered two
days ago, so their survey is due now, each showing one thing the contact rules do:

- **due now**: a customer whose own local time is inside the send window gets the survey at once;
- **quiet hours**: a customer where it is night now is held until the window opens (the order's
  timeline says until when, in their time);
- **unsubscribed**: a customer who pressed one-click unsubscribe (RFC 8058, as a mailbox provider
  sends it) gets the order mails (confirmation, shipment notice) but no survey.

The zones are chosen from the moment the demo runs (`now`), so each case shows whatever the hour.
Everything here builds payloads and requests; posting them is the CLI's (aftercare/cli.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aftercare import samples
from aftercare.contact import links
from aftercare.contact.policy import ContactPolicy
from aftercare.contact.rules import in_window

# Places whose local times are spread around the clock, so that at any moment one is inside the
# send window and one is outside it. (None of these needs opt-in for feedback.)
PLACES: list[tuple[str, dict[str, Any], str]] = [
    (
        "Tokyo",
        {"country_code": "JP", "country": "Japan", "province_code": "JP-13", "province": "Tokyo"},
        "Asia/Tokyo",
    ),
    (
        "Mumbai",
        {"country_code": "IN", "country": "India", "province_code": "MH", "province": "Maharashtra"},
        "Asia/Kolkata",
    ),
    (
        "London",
        {"country_code": "GB", "country": "United Kingdom", "province_code": None, "province": None},
        "Europe/London",
    ),
    (
        "New York",
        {"country_code": "US", "country": "United States", "province_code": "NY", "province": "New York"},
        "America/New_York",
    ),
    (
        "Los Angeles",
        {"country_code": "US", "country": "United States", "province_code": "CA", "province": "California"},
        "America/Los_Angeles",
    ),
    (
        "Sydney",
        {"country_code": "AU", "country": "Australia", "province_code": "NSW", "province": "New South Wales"},
        "Australia/Sydney",
    ),
]


@dataclass(frozen=True)
class SurveyCase:
    label: str  # "due now", "quiet hours", "unsubscribed"
    place: str
    zone: str
    order: dict[str, Any]
    fulfillment: dict[str, Any]  # fulfillments/create, shipped four days ago
    delivered: dict[str, Any]  # fulfillments/update, delivered two days (and five minutes) ago
    expect: str  # what the timeline will say


def _place(now: datetime, policy: ContactPolicy, inside: bool) -> tuple[str, dict[str, Any], str]:
    for name, address, zone in PLACES:
        if in_window(now, ZoneInfo(zone), policy.send_window) == inside:
            return name, address, zone
    raise RuntimeError("no demo place is " + ("inside" if inside else "outside") + " the send window now")


def _order(
    template: str, n: int, email: str, first: str, last: str, place: dict[str, Any], now: datetime
) -> dict[str, Any]:
    order = copy.deepcopy(samples.load(template))
    order_id = 880_000 + n
    order.update(
        id=order_id,
        admin_graphql_api_id=f"gid://shopify/Order/{order_id}",
        name=f"#{2100 + n}",
        number=2100 + n,
        order_number=2100 + n,
        email=email,
        contact_email=email,
        created_at=(now - timedelta(days=5)).isoformat(),
        processed_at=(now - timedelta(days=5)).isoformat(),
        updated_at=(now - timedelta(days=5)).isoformat(),
        financial_status="paid",
        test=False,
    )
    for i, line in enumerate(order["line_items"]):
        line["id"] = order_id * 10 + i
    for key in ("shipping_address", "billing_address"):
        if order.get(key):
            order[key] = {
                **order[key],
                **place,
                "first_name": first,
                "last_name": last,
                "name": f"{first} {last}",
            }
    customer = order.get("customer") or {}
    order["customer"] = {
        **customer,
        "id": 870_000 + n,
        "email": email,
        "first_name": first,
        "last_name": last,
    }
    order["customer"].pop("email_marketing_consent", None)
    return order


def survey_cases(now: datetime, policy: ContactPolicy, survey_days: int) -> list[SurveyCase]:
    """The three customers, for the moment `now` (their parcels delivered `survey_days` days and
    five minutes ago, so each survey is due)."""
    shipped = (now - timedelta(days=survey_days + 2)).isoformat()
    delivered_at = (now - timedelta(days=survey_days, minutes=5)).isoformat()
    day_place = _place(now, policy, inside=True)
    night_place = _place(now, policy, inside=False)
    people = [
        (
            "due now",
            day_place,
            "survey-now@example.com",
            "Hana",
            "Ito",
            "ja-repeat" if day_place[0] == "Tokyo" else "en-first",
            "sending at",
        ),
        (
            "quiet hours",
            night_place,
            "survey-night@example.com",
            "Ken",
            "Mori",
            "ja-repeat" if night_place[0] == "Tokyo" else "en-first",
            "held until",
        ),
        (
            "unsubscribed",
            day_place,
            "survey-unsubscribed@example.com",
            "Aoi",
            "Sato",
            "ja-repeat" if day_place[0] == "Tokyo" else "en-first",
            "not sent: unsubscribed from",
        ),
    ]
    cases = []
    for n, (label, (place_name, address, zone), email, first, last, template, expect) in enumerate(
        people, start=1
    ):
        order = _order(template, n, email, first, last, address, now)
        cases.append(
            SurveyCase(
                label=label,
                place=place_name,
                zone=zone,
                order=order,
                fulfillment=samples.fulfillment(order, at=shipped),
                delivered=samples.fulfillment(
                    order, at=shipped, shipment_status="delivered", updated_at=delivered_at
                ),
                expect=expect,
            )
        )
    return cases


def unsubscribe_request(
    case: SurveyCase, *, secret: str, shop_domain: str, base_url: str, now: datetime
) -> tuple[str, bytes, dict[str, str]]:
    """The one-click unsubscribe a mailbox provider sends for this customer's address (RFC 8058):
    the URL of a token for the surveys list, the body, the headers."""
    token = links.unsubscribe_token(
        secret,
        shop_domain=shop_domain,
        email_key=case.order["email"].strip().lower(),
        list_name="surveys",
        touchpoint_id=None,
        now=now,
    )
    return (
        links.unsubscribe_url(base_url, token),
        b"List-Unsubscribe=One-Click",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
