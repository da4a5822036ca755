"""Consent from Shopify's payloads, resolved in any arrival order: the newest wins, the checkout box
never overrides an unsubscribe, an older webhook changes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aftercare.contact.consent import ORDER_CHECKBOX, Consent, apply, from_webhook, resolve
from aftercare.settings import PROJECT_ROOT
from tests.conftest import shared_path

SENT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def consent_update(state, at, level=None):
    """A customers_email_marketing_consent/update body, in Shopify's documented shape."""
    return {
        "customer_id": 7004,
        "email_address": "emma@example.com",
        "email_marketing_consent": {"state": state, "opt_in_level": level, "consent_updated_at": at},
    }


def test_the_consent_topic():
    [event] = from_webhook(
        "customers_email_marketing_consent/update",
        consent_update("unsubscribed", "2026-11-02T10:00:00+09:00", "single_opt_in"),
        sent_at=SENT,
    )
    assert event.state == "unsubscribed"
    assert event.updated_at == datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
    assert event.opt_in_level == "single_opt_in"
    assert event.source == "customers_email_marketing_consent/update"
    assert event.refused and not event.weak


def test_without_a_date_the_time_shopify_sent_it_counts():
    [event] = from_webhook(
        "customers_email_marketing_consent/update", consent_update("subscribed", None), sent_at=SENT
    )
    assert event.updated_at == SENT


def test_graphql_style_upper_case_states_are_read_and_unknown_states_are_not():
    [event] = from_webhook(
        "customers_email_marketing_consent/update", consent_update("SUBSCRIBED", None), sent_at=SENT
    )
    assert event.state == "subscribed"
    assert (
        from_webhook("customers_email_marketing_consent/update", consent_update("maybe", None), sent_at=SENT)
        == []
    )
    assert (
        from_webhook(
            "customers_email_marketing_consent/update", {"email_marketing_consent": "yes"}, sent_at=SENT
        )
        == []
    )
    assert from_webhook("customers_email_marketing_consent/update", {}, sent_at=SENT) == []


@pytest.mark.parametrize("topic", ["customers/create", "customers/update"])
def test_customer_topics_carry_it_at_the_top_level(topic):
    body = {
        "id": 7004,
        "updated_at": "2026-11-20T10:15:00+09:00",
        "email_marketing_consent": {
            "state": "subscribed",
            "opt_in_level": "confirmed_opt_in",
            "consent_updated_at": None,
        },
    }
    [event] = from_webhook(topic, body, sent_at=SENT)
    assert (event.state, event.source, event.opt_in_level) == ("subscribed", topic, "confirmed_opt_in")
    # No date on the consent: the customer record's own updated_at is when the information was sent.
    assert event.updated_at == datetime(2026, 11, 20, 1, 15, tzinfo=UTC)


def test_customer_topics_from_api_2025_01_carry_no_consent():
    assert from_webhook("customers/update", {"id": 7004, "email": "emma@example.com"}, sent_at=SENT) == []


def test_an_order_carries_the_customers_consent_and_the_checkout_box():
    order = json.loads((PROJECT_ROOT / "aftercare" / "samples" / "en-first.json").read_text(encoding="utf-8"))
    order["buyer_accepts_marketing"] = True
    order["customer"]["email_marketing_consent"] = {
        "state": "not_subscribed",
        "opt_in_level": None,
        "consent_updated_at": "2025-04-01T09:00:00+09:00",
    }
    customer, box = from_webhook("orders/create", order, sent_at=SENT)
    assert (customer.state, customer.source, customer.weak) == (
        "not_subscribed",
        "orders/create customer",
        False,
    )
    assert (box.state, box.source, box.weak) == ("subscribed", ORDER_CHECKBOX, True)
    assert box.updated_at == datetime(2026, 11, 20, 1, 15, tzinfo=UTC)  # processed_at
    order["buyer_accepts_marketing"] = False  # an unticked box is no refusal: it says nothing
    assert [e.source for e in from_webhook("orders/create", order, sent_at=SENT)] == [
        "orders/create customer"
    ]


@pytest.mark.contract
def test_shopifys_own_payloads_with_the_legacy_accepts_marketing_flag():
    customer = json.loads(shared_path("fixtures", "shopify", "customer.json").read_text(encoding="utf-8"))[
        "customer"
    ]
    [event] = from_webhook("customers/update", customer, sent_at=SENT)
    assert event.state == "not_subscribed"
    assert event.updated_at == datetime(2015, 5, 27, 22, 11, 24, tzinfo=UTC)  # the record's updated_at
    orders = json.loads(shared_path("fixtures", "shopify", "orders.json").read_text(encoding="utf-8"))[
        "orders"
    ]
    [event] = from_webhook("orders/updated", orders[0], sent_at=SENT)
    assert event.state == "not_subscribed"
    assert event.updated_at == datetime(2005, 6, 12, 15, 57, 11, tzinfo=UTC)  # accepts_marketing_updated_at


def c(state, at, source="customers_email_marketing_consent/update", weak=False, level=None):
    return Consent(state=state, updated_at=at, source=source, weak=weak, opt_in_level=level)


def test_the_newest_consent_wins():
    held = c("subscribed", T0)
    change = apply(held, c("unsubscribed", T0 + timedelta(days=1)))
    assert change.changed and change.consent.state == "unsubscribed"
    again = apply(change.consent, c("subscribed", T0 + timedelta(days=2)))
    assert again.changed and again.consent.state == "subscribed"


def test_an_older_webhook_changes_nothing():
    held = c("unsubscribed", T0 + timedelta(days=1))
    late = c("subscribed", T0)  # sent before the unsubscribe, delivered after it
    change = apply(held, late)
    assert not change.changed and change.consent == held
    assert "older than the unsubscribed held" in change.reason


def test_the_checkout_box_never_overrides_an_unsubscribe_even_when_newer():
    held = c("unsubscribed", T0)
    box = c("subscribed", T0 + timedelta(days=30), source=ORDER_CHECKBOX, weak=True)
    change = apply(held, box)
    assert not change.changed and change.consent == held
    assert "never overrides unsubscribed" in change.reason
    # ...whichever arrives first.
    assert resolve(None, [box, held]) == held


def test_the_checkout_box_counts_while_nothing_better_is_known():
    box = c("subscribed", T0, source=ORDER_CHECKBOX, weak=True)
    assert resolve(None, [box]) == box
    customer = c("not_subscribed", T0 - timedelta(days=1))
    assert resolve(box, [customer]) == customer  # the customer's own record replaces the box


@pytest.mark.parametrize("order", [("subscribed", "unsubscribed"), ("unsubscribed", "subscribed")])
def test_two_states_of_the_same_moment_resolve_to_less_consent_in_either_order(order):
    first, second = (c(s, T0) for s in order)
    assert resolve(None, [first, second]).state == "unsubscribed"


def test_the_same_consent_again_changes_nothing():
    held = c("subscribed", T0)
    assert not apply(held, c("subscribed", T0)).changed


STATES = st.sampled_from(["subscribed", "not_subscribed", "pending", "unsubscribed", "redacted", "invalid"])
EVENTS = st.lists(
    st.builds(
        c,
        STATES,
        st.integers(min_value=0, max_value=5).map(lambda d: T0 + timedelta(days=d)),
        st.sampled_from(["customers/update", "orders/create customer", ORDER_CHECKBOX]),
        st.booleans(),
        st.sampled_from([None, "single_opt_in", "confirmed_opt_in", "unknown"]),
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=200, deadline=None)
@given(EVENTS, st.randoms(use_true_random=False))
def test_the_result_never_depends_on_the_order_webhooks_arrive_in(events, rnd):
    shuffled = list(events)
    rnd.shuffle(shuffled)
    a, b = resolve(None, events), resolve(None, shuffled)
    assert (a.state, a.updated_at, a.opt_in_level, a.weak) == (b.state, b.updated_at, b.opt_in_level, b.weak)
    strong = [e for e in events if not e.weak]
    if strong:
        newest = max(e.updated_at for e in strong)
        assert a.updated_at == newest and not a.weak
        # A refusal at the newest moment always stands.
        if any(e.refused for e in strong if e.updated_at == newest):
            assert a.refused


@pytest.mark.parametrize(
    ("topic", "body"),
    [
        ("customers_email_marketing_consent/update", ["not", "an", "object"]),
        ("customers/update", "subscribed"),
        ("orders/create", {"customer": "x", "buyer_accepts_marketing": "yes"}),
        ("orders/create", {"customer": {"email_marketing_consent": {"state": 1, "consent_updated_at": 5}}}),
        (
            "customers_email_marketing_consent/update",
            consent_update("subscribed", "2026-13-45T99:00:00+99:00"),
        ),
    ],
)
def test_hostile_bodies_give_no_event_or_a_dated_one_never_a_crash(topic, body):
    events = from_webhook(topic, body, sent_at=SENT)
    assert all(e.updated_at.tzinfo is not None for e in events)
    assert len(events) <= 1
    if events:  # the unreadable date: when Shopify sent it counts
        assert events[0].updated_at == SENT
