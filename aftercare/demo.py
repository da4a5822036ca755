"""The satisfaction-survey part of `aftercare demo`: three customers whose parcels were delivered two
days ago, so their survey is due now, each showing one thing the contact rules do:

- **due now**: a customer whose own local time is inside the send window gets the survey at once;
- **quiet hours**: a customer where it is night now is held until the window opens (the order's
  timeline says until when, in their time);
- **unsubscribed**: a customer who pressed one-click unsubscribe (RFC 8058, as a mailbox provider
  sends it) gets the order mails (confirmation, shipment notice) but no survey.

The zones are chosen from the moment the demo runs (`now`), so each case shows whatever the hour.
Then the review part (issue 11): one more customer whose parcel arrived the review request's days
ago, in their daytime, so the request goes out now with the link to our own form (`/r/<token>`);
the demo then acts as that customer: it opens the form and sends a 2-star review of one product,
which is triaged negative and waits, drafted, for an approver. And the "due now" survey customer
answers 1 (the score link in their survey mail, then the page's button), which opens a service
recovery case.

The review-request customer left the surveys list (one-click) before the demo: their survey, due
since five days, is then not sent, and the request is the only feedback mail due. Without that, the
frequency cap (policies/contact.yaml: one feedback mail per 24 hours) sends one of the two now and
holds the other a day, which a demo cannot wait for; a fresh database has no history in which the
survey went out days ago, and the demo writes none.

Everything here builds payloads and requests, and reads the pages and mails a customer sees
(`page_form`, `mail_link`); posting them is the CLI's (aftercare/cli.py).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode
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


# -- the review part --------------------------------------------------------------------------------


REVIEW_RATING = 2
SURVEY_SCORE = 1
SURVEY_REASONS = ("delivery", "packaging")
# What the demo customers write, in the order's language (the review is triaged in it).
REVIEW_TEXT: dict[str, tuple[str, str]] = {
    "ja": (
        "届くのが遅く、箱がつぶれていました",
        "発送のお知らせより二日遅れて届き、箱もつぶれていました。商品は使えますが、贈り物用だったので残念です。",
    ),
    "en": (
        "Arrived late and the box was dented",
        "The parcel came two days later than the shipping mail said, and the box was dented. "
        "The product itself works, but I expected better for a gift.",
    ),
}
SURVEY_COMMENT: dict[str, str] = {
    "ja": "届くのが遅く、箱がつぶれていて残念でした。",
    "en": "The parcel was late and the box was crushed.",
}


def language_of(order: dict[str, Any]) -> str:
    """The demo's language for an order: Japanese for a `ja` customer, else English."""
    return "ja" if str(order.get("customer_locale") or "").lower().startswith("ja") else "en"


def review_request_case(now: datetime, policy: ContactPolicy, review_days: int) -> SurveyCase:
    """A customer in their daytime whose parcel arrived `review_days` days (and five minutes) ago:
    their review request is due now. They left the surveys list (`unsubscribe_request`), so their
    survey, also due, is not sent and the frequency cap leaves room for the request."""
    shipped = (now - timedelta(days=review_days + 2)).isoformat()
    delivered_at = (now - timedelta(days=review_days, minutes=5)).isoformat()
    place_name, address, zone = _place(now, policy, inside=True)
    template = "ja-repeat" if place_name == "Tokyo" else "en-first"
    order = _order(template, 4, "review-now@example.com", "Mei", "Kato", address, now)
    order["created_at"] = order["processed_at"] = order["updated_at"] = (
        now - timedelta(days=review_days + 3)
    ).isoformat()
    return SurveyCase(
        label="review request",
        place=place_name,
        zone=zone,
        order=order,
        fulfillment=samples.fulfillment(order, at=shipped),
        delivered=samples.fulfillment(
            order, at=shipped, shipment_status="delivered", updated_at=delivered_at
        ),
        expect="sending at",
    )


def mail_link(text: str, path: str, query: str | None = None) -> str | None:
    """The first link in a mail's text whose path has `/<path>/` (and, when given, whose query is
    exactly `query`, e.g. "score=1"); None when the mail has none. A link with another query (a
    product's `?item=`) is not the one asked for."""
    for url in re.findall(r"https?://\S+", text):
        base, _, q = url.partition("?")
        if f"/{path}/" in base and (q == query if query is not None else not q):
            return url
    return None


@dataclass
class PageForm:
    """A form on a page as a browser without script would send it: its action and the values of its
    successful controls (hidden and text inputs, checked radios and boxes, textareas)."""

    action: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    radios: dict[str, list[str]] = field(default_factory=dict)  # every value offered per radio name

    def value(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)

    def filled(self, **values: str | list[str]) -> bytes:
        """The urlencoded body with these fields set (a list: one pair each, as ticked boxes)."""
        pairs = [(k, v) for k, v in self.fields if k not in values]
        for name, value in values.items():
            pairs.extend((name, v) for v in ([value] if isinstance(value, str) else value))
        return urlencode(pairs).encode()

    def body(self) -> bytes:
        return urlencode(self.fields).encode()


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[PageForm] = []
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(PageForm(action=a.get("action", "")))
        elif not self.forms or "disabled" in a or not a.get("name"):
            return
        elif tag == "input":
            kind = a.get("type", "text").lower()
            if kind in ("radio", "checkbox"):
                if kind == "radio":
                    self.forms[-1].radios.setdefault(a["name"], []).append(a.get("value", "on"))
                if "checked" in a:
                    self.forms[-1].fields.append((a["name"], a.get("value", "on")))
            elif kind not in ("submit", "button", "image", "reset", "file"):
                self.forms[-1].fields.append((a["name"], a.get("value", "")))
        elif tag == "textarea":
            self._textarea, self._text = a["name"], []

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea" and self._textarea is not None and self.forms:
            text = "".join(self._text)
            self.forms[-1].fields.append((self._textarea, text[1:] if text.startswith("\n") else text))
            self._textarea = None


def page_forms(html: str) -> list[PageForm]:
    """The forms of a page (ours: the review form, the survey page), in page order."""
    parser = _Forms()
    parser.feed(html)
    parser.close()
    return parser.forms


def review_submission(form: PageForm, lang: str = "en") -> bytes:
    """The demo customer's 2-star review of the product this form is for, in `lang`, sent as the
    page's button sends it (the product and the display name the page filled in are kept)."""
    if str(REVIEW_RATING) not in form.radios.get("rating", []):
        raise ValueError(f"the review form offers no {REVIEW_RATING}-star rating")
    title, body = REVIEW_TEXT[lang]
    return form.filled(rating=str(REVIEW_RATING), title=title, body=body)


def survey_submission(form: PageForm, lang: str = "en") -> bytes:
    """The survey page's answer as its no-script button sends it, the score the link chose (checked
    on the page) kept, with two reasons ticked and a comment in `lang`."""
    if form.value("score") != str(SURVEY_SCORE):
        raise ValueError(f"the survey page did not choose the score {SURVEY_SCORE} the link asked for")
    return form.filled(reason=list(SURVEY_REASONS), comment=SURVEY_COMMENT[lang])
