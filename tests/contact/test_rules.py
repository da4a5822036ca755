"""The send-time rule set, every rule both ways, and the DST cases. Facts in, verdict out: no
database and no clock, so each case states its `now`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from aftercare.contact.consent import Consent
from aftercare.contact.policy import SendWindow, UnknownMessageKind, load_contact_policy
from aftercare.contact.rules import (
    RULES,
    CustomerFacts,
    OrderFacts,
    Outcome,
    RuleStatus,
    SentMessage,
    Suppression,
    TouchpointFacts,
    decide,
    in_window,
    local_label,
    next_in_window,
    wall_instant,
)
from aftercare.settings import PROJECT_ROOT

POLICY = load_contact_policy(PROJECT_ROOT / "policies" / "contact.yaml")
TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")

JP = {"country_code": "JP", "province_code": "JP-13", "province": "Tokyo"}
NY = {"country_code": "US", "province_code": "NY", "province": "New York"}
DE = {"country_code": "DE", "province_code": None, "province": None}


def at(tz, *args):
    return datetime(*args, tzinfo=tz)


def survey(due, **kw):
    return TouchpointFacts(kind="delivery_survey", due_at=due, **kw)


def customer(address=JP, **kw):
    return CustomerFacts(shipping_address=address, billing_address=address, **kw)


def subscribed(when):
    return Consent(state="subscribed", updated_at=when, source="customers_email_marketing_consent/update")


# --- the send window, in the customer's own time ---------------------------------------------------


def test_a_survey_due_at_3_in_tokyo_goes_at_9_in_tokyo():
    due = at(TOKYO, 2026, 12, 1, 3, 0)
    v = decide(survey(due), customer(), [], POLICY, due)
    assert v.outcome is Outcome.HOLD
    assert v.send_at == at(TOKYO, 2026, 12, 1, 9, 0)
    assert v.rule("send_window").status is RuleStatus.HELD
    assert v.line() == "held until 09:00 JST (quiet hours)"


def test_due_inside_the_window_goes_now():
    now = at(TOKYO, 2026, 12, 1, 10, 12)
    v = decide(survey(now - timedelta(hours=1)), customer(), [], POLICY, now)
    assert (v.outcome, v.send_at) == (Outcome.SEND, now)
    assert all(r.status is RuleStatus.PASSED for r in v.rules)
    assert v.line() == "sending at 10:12 JST"


def test_the_window_closes_at_20_and_reopens_the_next_morning():
    now = at(TOKYO, 2026, 12, 1, 20, 0)
    v = decide(survey(now), customer(), [], POLICY, now)
    assert v.send_at == at(TOKYO, 2026, 12, 2, 9, 0)
    assert v.line() == "held until 2026-12-02 09:00 JST (quiet hours)"
    last_minute = now - timedelta(seconds=1)
    assert decide(survey(last_minute), customer(), [], POLICY, last_minute).outcome is Outcome.SEND


def test_the_window_is_the_customers_not_the_shops():
    # 10:00 in Tokyo is 20:00 the evening before in New York: quiet hours there.
    now = at(TOKYO, 2026, 12, 1, 10, 0)
    v = decide(survey(now), customer(NY), [], POLICY, now)
    assert v.outcome is Outcome.HOLD
    assert v.send_at == at(NEW_YORK, 2026, 12, 1, 9, 0)
    assert v.line() == "held until 2026-12-01 09:00 EST (quiet hours)"  # New York's next day
    assert v.zone.name == "America/New_York" and v.zone.reason == "shipping address: US/NY"


def test_no_address_at_all_is_timed_in_the_shops_zone():
    due = at(TOKYO, 2026, 12, 1, 3, 0)
    v = decide(survey(due), CustomerFacts(), [], POLICY, due)
    assert (v.outcome, v.send_at, v.zone.source) == (Outcome.HOLD, at(TOKYO, 2026, 12, 1, 9, 0), "shop")


def test_an_unknown_country_is_timed_in_the_shops_zone_and_says_why():
    due = at(TOKYO, 2026, 12, 1, 3, 0)
    v = decide(survey(due), customer({"country_code": "QQ"}), [], POLICY, due)
    assert v.send_at == at(TOKYO, 2026, 12, 1, 9, 0)
    assert "country code 'QQ' is unknown" in v.as_dict()["zone_reason"]


# --- DST ----------------------------------------------------------------------------------------------


def test_new_york_spring_forward_2027_03_14():
    # Due after the window on Saturday (EST, UTC-5); Sunday's 09:00 is EDT (UTC-4): 13:00 UTC, not 14:00.
    due = at(NEW_YORK, 2027, 3, 13, 21, 0)
    v = decide(survey(due), customer(NY), [], POLICY, due)
    assert v.send_at == datetime(2027, 3, 14, 13, 0, tzinfo=UTC)
    assert v.line() == "held until 2027-03-14 09:00 EDT (quiet hours)"
    # Due inside the skipped hour (02:30 does not exist that night).
    night = datetime(2027, 3, 14, 7, 30, tzinfo=UTC)  # 03:30 EDT
    assert decide(survey(night), customer(NY), [], POLICY, night).send_at == datetime(
        2027, 3, 14, 13, 0, tzinfo=UTC
    )


def test_new_york_fall_back_2027_11_07():
    due = at(NEW_YORK, 2027, 11, 6, 22, 0)  # EDT
    v = decide(survey(due), customer(NY), [], POLICY, due)
    assert v.send_at == datetime(2027, 11, 7, 14, 0, tzinfo=UTC)  # 09:00 EST
    assert v.line() == "held until 2027-11-07 09:00 EST (quiet hours)"
    # 01:30 happens twice that night; both are quiet hours and both wait for 09:00 EST.
    for fold in (0, 1):
        twice = datetime(2027, 11, 7, 1, 30, tzinfo=NEW_YORK, fold=fold)
        assert decide(survey(twice), customer(NY), [], POLICY, twice).send_at == datetime(
            2027, 11, 7, 14, 0, tzinfo=UTC
        )


def test_a_day_cap_across_the_new_york_change_counts_real_hours():
    sent = at(NEW_YORK, 2027, 3, 13, 10, 0)  # 15:00 UTC
    now = at(NEW_YORK, 2027, 3, 13, 12, 0)
    v = decide(survey(now), customer(NY), [SentMessage("review_request", sent)], POLICY, now)
    # 24 hours later is 11:00 EDT on Sunday (the clock jumped): the cap counts time, not the wall clock.
    assert v.send_at == datetime(2027, 3, 14, 15, 0, tzinfo=UTC)
    assert v.line() == "postponed until 2027-03-14 11:00 EDT (one feedback mail per 24 h)"


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        (at(BERLIN, 2027, 3, 27, 21, 0), datetime(2027, 3, 28, 7, 0, tzinfo=UTC)),  # 09:00 CEST
        (at(BERLIN, 2027, 10, 30, 21, 0), datetime(2027, 10, 31, 8, 0, tzinfo=UTC)),  # 09:00 CET
    ],
)
def test_berlin_changes(due, expected):
    v = decide(survey(due), customer(DE, consent=subscribed(due - timedelta(days=90))), [], POLICY, due)
    assert v.send_at == expected


def test_wall_instant_in_a_gap_is_the_jump_and_in_a_fold_the_first_pass():
    assert wall_instant(datetime(2027, 3, 14).date(), time(2, 30), NEW_YORK) == datetime(
        2027, 3, 14, 7, 0, tzinfo=UTC
    )
    assert wall_instant(datetime(2027, 11, 7).date(), time(1, 30), NEW_YORK) == datetime(
        2027, 11, 7, 5, 30, tzinfo=UTC
    )
    # Lord Howe Island moves its clocks by half an hour: 02:00 -> 02:30 on 2026-10-04 (UTC+10:30 -> +11).
    jump = wall_instant(datetime(2026, 10, 4).date(), time(2, 15), LORD_HOWE)
    assert jump == datetime(2026, 10, 3, 15, 30, tzinfo=UTC)
    assert jump.astimezone(LORD_HOWE).strftime("%H:%M") == "02:30"


def test_a_window_opening_inside_lord_howes_half_hour_gap_opens_at_the_jump():
    window = SendWindow(start="02:15", end="20:00")
    before = datetime(2026, 10, 3, 14, 0, tzinfo=UTC)  # 00:30 local
    assert next_in_window(before, LORD_HOWE, window) == datetime(2026, 10, 3, 15, 30, tzinfo=UTC)
    assert not in_window(before, LORD_HOWE, window)


def test_zones_without_a_lettered_abbreviation_are_named():
    when = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert local_label(when, ZoneInfo("America/Sao_Paulo")) == "09:00 UTC-03 (America/Sao_Paulo)"
    assert local_label(when, TOKYO, with_date=True) == "2026-12-01 21:00 JST"


# --- the order ---------------------------------------------------------------------------------------

NOW = at(TOKYO, 2026, 12, 1, 10, 0)


@pytest.mark.parametrize(
    ("order", "line"),
    [
        (OrderFacts(cancelled_at=at(TOKYO, 2026, 11, 25, 15, 0)), "not sent: order cancelled on 2026-11-25"),
        (OrderFacts(refunded_in_full=True), "not sent: order refunded in full"),
        (OrderFacts(financial_status="refunded"), "not sent: order refunded in full"),
        (OrderFacts(financial_status="voided"), "not sent: order voided"),
        (OrderFacts(test=True), "not sent: test order"),
    ],
)
def test_an_order_that_no_longer_stands_or_is_a_test_is_skipped(order, line):
    v = decide(survey(NOW, order=order), customer(), [], POLICY, NOW)
    assert (v.outcome, v.send_at) == (Outcome.SKIP, None)
    assert v.line() == line


@pytest.mark.parametrize("status", ["paid", "partially_refunded", "partially_paid", None])
def test_an_order_that_stands_passes(status):
    v = decide(survey(NOW, order=OrderFacts(financial_status=status)), customer(), [], POLICY, NOW)
    assert v.outcome is Outcome.SEND
    assert v.rule("order").status is RuleStatus.PASSED and v.rule("test_order").status is RuleStatus.PASSED


# --- suppression and consent --------------------------------------------------------------------------


def test_unsubscribed_from_surveys():
    gone = Suppression("surveys", at(TOKYO, 2026, 11, 2, 18, 0))
    v = decide(survey(NOW), customer(suppressions=[gone]), [], POLICY, NOW)
    assert v.outcome is Outcome.SKIP
    assert v.line() == "not sent: unsubscribed from surveys on 2026-11-02"


def test_unsubscribed_from_all_feedback_mails():
    gone = Suppression("feedback", at(TOKYO, 2026, 11, 2, 18, 0))
    v = decide(TouchpointFacts("review_request", NOW), customer(suppressions=[gone]), [], POLICY, NOW)
    assert v.line() == "not sent: unsubscribed from all feedback mails on 2026-11-02"


def test_a_suppression_of_every_list_stops_feedback_and_promotional_but_not_order_mail():
    gone = [Suppression("all", at(TOKYO, 2026, 11, 2, 18, 0), source="customers/redact")]
    v = decide(survey(NOW), customer(suppressions=gone), [], POLICY, NOW)
    assert v.line() == "not sent: unsubscribed from every mail but those about an order on 2026-11-02"
    consenting = customer(suppressions=gone, consent=subscribed(NOW - timedelta(days=1)))
    assert decide(TouchpointFacts("seasonal_offer", NOW), consenting, [], POLICY, NOW).outcome is Outcome.SKIP
    notice = decide(TouchpointFacts("shipment_notice", NOW), customer(suppressions=gone), [], POLICY, NOW)
    assert notice.outcome is Outcome.SEND


def test_leaving_one_list_leaves_the_others():
    gone = Suppression("review_requests", at(TOKYO, 2026, 11, 2, 18, 0))
    v = decide(survey(NOW), customer(suppressions=[gone]), [], POLICY, NOW)
    assert v.outcome is Outcome.SEND
    assert v.rule("suppression").status is RuleStatus.PASSED
    assert (
        decide(
            TouchpointFacts("review_reminder", NOW), customer(suppressions=[gone]), [], POLICY, NOW
        ).outcome
        is Outcome.SKIP
    )


def test_feedback_in_germany_needs_opt_in():
    v = decide(survey(NOW), customer(DE), [], POLICY, NOW)
    assert v.outcome is Outcome.SKIP
    assert v.line() == "not sent: no consent for feedback mail in DE (opt-in; no consent on record)"
    pending = Consent("pending", NOW - timedelta(days=3), "customers/update")
    assert decide(survey(NOW), customer(DE, consent=pending), [], POLICY, NOW).outcome is Outcome.SKIP
    ok = decide(survey(NOW), customer(DE, consent=subscribed(NOW - timedelta(days=3))), [], POLICY, NOW)
    assert ok.outcome is not Outcome.SKIP and ok.rule("consent").status is RuleStatus.PASSED


def test_feedback_in_japan_is_sent_unless_refused():
    v = decide(survey(NOW), customer(JP), [], POLICY, NOW)
    assert v.outcome is Outcome.SEND
    assert v.rule("consent").reason == "feedback in JP is opt-out: no consent on record"
    refused = Consent(
        "unsubscribed", at(TOKYO, 2026, 10, 1, 12, 0), "customers_email_marketing_consent/update"
    )
    v = decide(survey(NOW), customer(JP, consent=refused), [], POLICY, NOW)
    assert v.outcome is Outcome.SKIP
    assert v.line() == (
        "not sent: unsubscribed from the shop's emails on 2026-10-01"
        " (Shopify: customers_email_marketing_consent/update)"
    )
    for state, line in [("redacted", "customer data redacted"), ("invalid", "email address marked invalid")]:
        gone = Consent(state, at(TOKYO, 2026, 10, 1, 12, 0), "customers/update")
        v = decide(survey(NOW), customer(JP, consent=gone), [], POLICY, NOW)
        assert v.line() == f"not sent: {line} on 2026-10-01 (Shopify: customers/update)"
    # Not subscribed is no refusal where feedback is opt-out.
    never = Consent("not_subscribed", at(TOKYO, 2026, 10, 1, 12, 0), "customers/update")
    assert decide(survey(NOW), customer(JP, consent=never), [], POLICY, NOW).outcome is Outcome.SEND


def test_promotional_mail_needs_opt_in_everywhere():
    offer = TouchpointFacts("seasonal_offer", NOW)
    assert decide(offer, customer(JP), [], POLICY, NOW).outcome is Outcome.SKIP
    assert decide(offer, CustomerFacts(), [], POLICY, NOW).outcome is Outcome.SKIP
    assert (
        decide(offer, customer(JP, consent=subscribed(NOW - timedelta(days=1))), [], POLICY, NOW).outcome
        is Outcome.SEND
    )


# --- stale --------------------------------------------------------------------------------------------


def test_a_backfill_of_old_orders_mails_nobody():
    due = NOW - timedelta(days=15)
    v = decide(survey(due), customer(), [], POLICY, NOW)
    assert v.outcome is Outcome.SKIP
    assert v.line() == "not sent: stale: 15 days past due (limit 14 days)"


def test_within_the_stale_limit_it_still_goes():
    v = decide(survey(NOW - timedelta(days=13, hours=23)), customer(), [], POLICY, NOW)
    assert v.outcome is Outcome.SEND and v.rule("stale").status is RuleStatus.PASSED


def test_a_message_we_postponed_ourselves_is_never_stale_for_having_waited():
    due = NOW - timedelta(days=20)
    v = decide(survey(due, held_until=NOW - timedelta(hours=1)), customer(), [], POLICY, NOW)
    assert v.outcome is Outcome.SEND


def test_not_yet_due_is_planned():
    later = at(TOKYO, 2026, 12, 3, 11, 0)
    v = decide(survey(later), customer(), [], POLICY, NOW)
    assert (v.outcome, v.send_at) == (Outcome.HOLD, later)
    assert v.line() == "planned for 2026-12-03 11:00 JST"


# --- frequency caps: postponed, never dropped ----------------------------------------------------------


def test_one_feedback_mail_per_24_hours_postpones_the_second():
    now = at(TOKYO, 2026, 11, 30, 14, 0)
    history = [SentMessage("review_request", at(TOKYO, 2026, 11, 30, 9, 0))]
    v = decide(survey(now), customer(), history, POLICY, now)
    assert (v.outcome, v.send_at) == (Outcome.HOLD, at(TOKYO, 2026, 12, 1, 9, 0))
    assert v.rule("frequency_cap").status is RuleStatus.HELD
    assert v.line() == "postponed until 2026-12-01 09:00 JST (one feedback mail per 24 h)"
    # When that time comes the same touchpoint goes: postponed, not dropped.
    then = decide(survey(now, held_until=v.send_at), customer(), history, POLICY, v.send_at)
    assert then.outcome is Outcome.SEND


def test_a_cap_that_ends_in_quiet_hours_waits_for_the_window_too():
    now = at(TOKYO, 2026, 11, 30, 22, 0)
    history = [SentMessage("delivery_survey", at(TOKYO, 2026, 11, 30, 19, 30))]
    v = decide(survey(now - timedelta(hours=3)), customer(), history, POLICY, now)
    assert v.send_at == at(TOKYO, 2026, 12, 1, 19, 30)
    history = [SentMessage("delivery_survey", at(TOKYO, 2026, 11, 30, 19, 59))]
    v = decide(survey(now - timedelta(hours=3)), customer(), history, POLICY, now)
    assert v.send_at == at(TOKYO, 2026, 12, 1, 19, 59)
    history = [SentMessage("delivery_survey", at(TOKYO, 2026, 11, 30, 20, 30))]
    v = decide(survey(now - timedelta(hours=3)), customer(), history, POLICY, now + timedelta(hours=1))
    assert v.send_at == at(TOKYO, 2026, 12, 2, 9, 0)  # the cap ends at 20:30, after the window closed


def test_three_feedback_mails_per_30_days_postpones_the_fourth_by_weeks_and_still_sends_it():
    now = at(TOKYO, 2026, 12, 1, 10, 0)
    history = [SentMessage("delivery_survey", now - timedelta(days=d)) for d in (20, 10, 2)]
    v = decide(survey(now), customer(), history, POLICY, now)
    assert v.send_at == now + timedelta(days=10)
    assert v.line() == "postponed until 2026-12-11 10:00 JST (three feedback mails per 30 days)"
    # Ten days on it is not stale (we held it), and goes.
    later = decide(survey(now, held_until=v.send_at), customer(), history, POLICY, v.send_at)
    assert later.outcome is Outcome.SEND


def test_caps_count_only_their_own_class():
    history = [
        SentMessage("order_confirmation", NOW - timedelta(hours=1)),
        SentMessage("shipment_notice", NOW - timedelta(hours=2)),
        SentMessage("approval_request", NOW - timedelta(hours=1)),  # staff mail: not in the policy
        SentMessage("delivery_survey", NOW - timedelta(hours=24)),  # exactly 24 h ago: out of the window
    ]
    v = decide(survey(NOW), customer(), history, POLICY, NOW)
    assert v.outcome is Outcome.SEND
    assert (
        v.rule("frequency_cap").reason
        == "0 sent of one feedback mail per 24 h; 1 sent of three feedback mails per 30 days"
    )


# --- transactional mail -------------------------------------------------------------------------------


def test_transactional_mail_passes_consent_caps_and_the_window():
    night = at(TOKYO, 2026, 12, 1, 3, 0)
    full = [SentMessage("delivery_survey", night - timedelta(hours=h)) for h in (1, 2, 3)]
    gone = [Suppression("feedback", night - timedelta(days=1))]
    v = decide(
        TouchpointFacts("shipment_notice", night), customer(DE, suppressions=gone), full, POLICY, night
    )
    assert (v.outcome, v.send_at) == (Outcome.SEND, night)
    assert [r.status for r in v.rules] == [RuleStatus.PASSED] * len(RULES)


# --- the record -----------------------------------------------------------------------------------------


def test_the_verdict_keeps_every_rule_and_is_json():
    due = at(TOKYO, 2026, 12, 1, 3, 0)
    record = decide(survey(due), customer(), [], POLICY, due).as_dict()
    assert [r["rule"] for r in record["rules"]] == list(RULES)
    assert record["outcome"] == "hold" and record["send_at"] == "2026-12-01T00:00:00+00:00"
    assert record["line"] == "held until 09:00 JST (quiet hours)"
    assert record["policy_version"] == POLICY.version and record["zone"] == "Asia/Tokyo"
    window = record["rules"][-1]
    assert window == {
        "rule": "send_window",
        "status": "held",
        "reason": "quiet hours: outside 09:00-20:00 in Asia/Tokyo",
        "until": "2026-12-01T00:00:00+00:00",
    }
    json.dumps(record)


def test_every_reason_is_kept_when_several_rules_skip():
    gone = Suppression("surveys", NOW - timedelta(days=1))
    v = decide(
        survey(NOW - timedelta(days=30), order=OrderFacts(test=True)),
        customer(DE, suppressions=[gone]),
        [],
        POLICY,
        NOW,
    )
    skipped = [r.name for r in v.rules if r.status is RuleStatus.SKIPPED]
    assert skipped == ["test_order", "suppression", "consent", "stale"]
    assert v.line() == "not sent: test order"


def test_an_unknown_kind_is_refused():
    with pytest.raises(UnknownMessageKind):
        decide(TouchpointFacts("newsletter", NOW), customer(), [], POLICY, NOW)


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(survey(NOW), customer(), [], POLICY, datetime(2026, 12, 1, 10, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(survey(datetime(2026, 12, 1, 10, 0)), customer(), [], POLICY, NOW)
    naive = datetime(2026, 11, 2, 18, 0)
    for tp, who, history in [
        (survey(NOW, held_until=naive), customer(), []),
        (survey(NOW, order=OrderFacts(cancelled_at=naive)), customer(), []),
        (survey(NOW), customer(suppressions=[Suppression("surveys", naive)]), []),
        (survey(NOW), customer(consent=Consent("unsubscribed", naive, "customers/update")), []),
        (survey(NOW), customer(), [SentMessage("review_request", naive)]),
    ]:
        with pytest.raises(ValueError, match="timezone-aware"):
            decide(tp, who, history, POLICY, NOW)


def test_two_feedback_mails_due_together_go_a_day_apart_when_each_send_joins_the_history():
    # The dispatcher decides a customer's touchpoints one at a time and counts each send (or claim)
    # before deciding the next: the second is postponed by the cap, not sent in the same batch.
    history: list[SentMessage] = []
    first = decide(survey(NOW), customer(), history, POLICY, NOW)
    assert first.outcome is Outcome.SEND
    history.append(SentMessage("delivery_survey", first.send_at))
    second = decide(TouchpointFacts("review_request", NOW), customer(), history, POLICY, NOW)
    assert (second.outcome, second.send_at) == (Outcome.HOLD, NOW + timedelta(hours=24))


def test_the_core_imports_no_prefect_no_web_and_no_database():
    import subprocess
    import sys

    code = (
        "import sys, aftercare.contact.rules, aftercare.contact.consent, aftercare.contact.timezones\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'prefect', 'fastapi', 'starlette', 'sqlmodel', 'sqlalchemy', 'httpx', 'sendgrid'})\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
    )
    assert out.stdout.strip() == "[]"
