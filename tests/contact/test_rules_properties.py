"""Properties of the send time, over random zones, days (DST changes included), windows and
histories: never before now, always inside the window in the customer's zone, the caps kept, and
nothing later than it has to be."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from aftercare.contact.consent import Consent
from aftercare.contact.policy import ContactPolicy, MessageClass, SendWindow, load_contact_policy
from aftercare.contact.rules import (
    CustomerFacts,
    Outcome,
    RuleStatus,
    SentMessage,
    TouchpointFacts,
    cap_allows_at,
    decide,
    in_window,
    next_in_window,
)
from aftercare.settings import PROJECT_ROOT

SHIPPED = load_contact_policy(PROJECT_ROOT / "policies" / "contact.yaml")
# Zones with DST at the usual hours, half-hour DST (Lord Howe), 45-minute offsets (Chatham), none.
ZONES = [
    "Asia/Tokyo",
    "America/New_York",
    "Europe/Berlin",
    "Europe/London",
    "Australia/Lord_Howe",
    "Australia/Sydney",
    "Pacific/Chatham",
    "America/St_Johns",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "America/Santiago",
]

NOWS = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


def _transitions() -> list[tuple[str, datetime]]:
    """(zone, noon UTC on the day before its clocks change), 2026-2030, for every zone above."""
    found = []
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    for zone in ZONES:
        tz = ZoneInfo(zone)
        for day in range(5 * 366):
            a, b = start + timedelta(days=day), start + timedelta(days=day + 1)
            if a.astimezone(tz).utcoffset() != b.astimezone(tz).utcoffset():
                found.append((zone, a))
    return found


TRANSITIONS = _transitions()
# A zone and a moment within two days of one of its clock changes, where DST mistakes show.
NEAR_A_CHANGE = st.tuples(
    st.sampled_from(TRANSITIONS), st.integers(min_value=-2 * 24 * 60, max_value=2 * 24 * 60)
).map(lambda t: (t[0][0], t[0][1] + timedelta(minutes=t[1])))
ANY_TIME = st.tuples(st.sampled_from(ZONES), NOWS)


@st.composite
def windows(draw, earliest_hour=0):
    start = draw(st.integers(min_value=earliest_hour * 60, max_value=24 * 60 - 2))
    end = draw(st.integers(min_value=start + 1, max_value=24 * 60 - 1))
    return SendWindow(start=f"{start // 60:02d}:{start % 60:02d}", end=f"{end // 60:02d}:{end % 60:02d}")


def policy_for(zone: str, window: SendWindow) -> ContactPolicy:
    data = SHIPPED.model_dump(mode="json", by_alias=True)
    data.update(shop_timezone=zone, send_window=window.model_dump(mode="json"))
    return ContactPolicy.model_validate(data)


HISTORY = st.lists(
    st.tuples(
        st.sampled_from(["delivery_survey", "review_request", "order_confirmation"]),
        st.one_of(
            st.integers(min_value=-40 * 24 * 60, max_value=0),
            st.integers(min_value=-25 * 60, max_value=-23 * 60),  # about a day ago: the 24 h cap binds
        ),
    ),
    max_size=6,
)


def wall_inside(at: datetime, tz: ZoneInfo, window: SendWindow) -> bool:
    local = at.astimezone(tz).time().replace(tzinfo=None)
    return window.start <= local < window.end


@settings(max_examples=300, deadline=None)
@given(
    zone_now=st.one_of(ANY_TIME, NEAR_A_CHANGE),
    window=windows(),
    due_minutes=st.integers(min_value=-13 * 24 * 60, max_value=3 * 24 * 60),
    history=HISTORY,
)
def test_the_send_time_is_never_before_now_and_always_inside_the_window(
    zone_now, window, due_minutes, history
):
    zone, now = zone_now
    policy = policy_for(zone, window)
    tz = ZoneInfo(zone)
    due = now + timedelta(minutes=due_minutes)
    sent = [SentMessage(kind, now + timedelta(minutes=m)) for kind, m in history]
    consent = Consent("subscribed", now - timedelta(days=400), "customers/update")
    v = decide(TouchpointFacts("delivery_survey", due), CustomerFacts(consent=consent), sent, policy, now)

    # The same facts written in the customer's own zone (as a caller might) decide the same:
    # arithmetic on local datetimes across a DST change would not.
    local = decide(
        TouchpointFacts("delivery_survey", due.astimezone(tz)),
        CustomerFacts(consent=consent),
        [SentMessage(m.kind, m.sent_at.astimezone(tz)) for m in sent],
        policy,
        now.astimezone(tz),
    )
    assert (local.outcome, local.send_at) == (v.outcome, v.send_at)

    assert v.outcome in (Outcome.SEND, Outcome.HOLD)
    assert v.zone.name == zone
    assert v.send_at is not None and v.send_at >= now and v.send_at >= due
    assert in_window(v.send_at, tz, window)
    if v.outcome is Outcome.SEND:
        assert v.send_at == now
    # Every cap allows it at that moment.
    feedback = [m.sent_at for m in sent if m.kind != "order_confirmation"]
    for cap in policy.caps(MessageClass.FEEDBACK):
        assert sum(1 for t in feedback if v.send_at - cap.window < t <= v.send_at) < cap.max_messages
    # Nothing later than it has to be: a hold by the window alone ends at the next opening.
    if v.rule("frequency_cap").status is RuleStatus.PASSED and v.rule("due").status is RuleStatus.PASSED:
        assert v.send_at < now + timedelta(hours=50)  # a window wholly inside a skipped hour waits a day
        assert v.send_at == now or not in_window(now, tz, window)


@settings(max_examples=300, deadline=None)
@given(zone_now=st.one_of(ANY_TIME, NEAR_A_CHANGE), window=windows(earliest_hour=4))
def test_the_local_wall_clock_reads_inside_the_window(zone_now, window):
    zone, earliest = zone_now
    # Windows that open after 04:00 stay clear of the hours clocks change at, where a wall time can
    # be skipped or repeated; there the local clock itself must read inside the window.
    tz = ZoneInfo(zone)
    at = next_in_window(earliest, tz, window)
    assert at >= earliest
    assert wall_inside(at, tz, window)
    if at > earliest:
        assert not wall_inside(earliest, tz, window)
        assert at.astimezone(tz).time().replace(tzinfo=None) == window.start


@settings(max_examples=200, deadline=None)
@given(now=NOWS, offsets=st.lists(st.integers(min_value=-40 * 24 * 3600, max_value=0), max_size=8))
def test_the_cap_postpones_to_the_first_moment_it_allows(now, offsets):
    caps = SHIPPED.caps(MessageClass.FEEDBACK)
    sent = [now + timedelta(seconds=s) for s in offsets]

    def allowed(at: datetime) -> bool:
        return all(sum(1 for t in sent if at - c.window < t <= at) < c.max_messages for c in caps)

    until, binding = cap_allows_at(caps, sent, now)
    if until is None:
        assert binding is None and allowed(now)
        return
    assert until > now and allowed(until)
    assert not allowed(until - timedelta(seconds=1))


def test_a_window_of_one_minute_at_midnight_is_found_across_a_day():
    window = SendWindow(start="00:00", end="00:01")
    tz = ZoneInfo("America/Santiago")  # changes its clocks at midnight
    for day in range(1, 400, 7):
        earliest = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)
        at = next_in_window(earliest, tz, window)
        assert in_window(at, tz, window) and earliest <= at < earliest + timedelta(hours=50)


def test_time_type_is_kept_in_the_window():
    assert isinstance(SHIPPED.send_window.start, time)
