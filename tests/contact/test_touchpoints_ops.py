"""What ops see of timed contact: the timeline's line for a held or skipped survey, and
`aftercare touchpoints due` (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session

from aftercare import timed
from aftercare.contact import store
from aftercare.contact.cli import BadTime, parse_time
from aftercare.orders import timeline
from tests.contact.survey_setup import COMPOSERS, make_survey
from tests.factories import SHOP
from tests.test_cli import env, run  # noqa: F401  (the CLI's own fixture: settings from the environment)

TOKYO = ZoneInfo("Asia/Tokyo")


def jst(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO).astimezone(UTC)


def text_of(rt, order_name: str) -> str:
    tl = timeline.order_timeline(rt.engine, order_name, rt.policies.delivery)
    return timeline.timeline_text(tl, TOKYO)


def test_the_timeline_says_held_until_when_and_why_and_not_sent_and_why(rt):
    make_survey(rt, 1, due_at=jst(2026, 12, 3, 3, 0))
    make_survey(rt, 2, due_at=jst(2026, 12, 3, 3, 0))
    with Session(rt.engine) as s:
        contact, _ = timed.policies_of(rt)
        store.suppress(
            s,
            shop_domain=SHOP,
            email_key=None,
            address_hash=store.email_hash("buyer2@example.jp"),
            list_name="surveys",
            source="unsubscribe page",
            now=jst(2026, 12, 1, 12, 0),
            policy=contact,
        )
        s.commit()
    timed.dispatch_due(rt, jst(2026, 12, 3, 3, 0), composers=COMPOSERS)
    held = text_of(rt, "#7001")
    assert "2026-12-03 09:00 JST  touchpoint   delivery_survey held until 09:00 JST (quiet hours)" in held
    skipped = text_of(rt, "#7002")
    assert "touchpoint   delivery_survey not sent: unsubscribed from surveys on 2026-12-01" in skipped
    data = timeline.timeline_json(timeline.order_timeline(rt.engine, "#7001", rt.policies.delivery))
    [entry] = [e for e in data["planned"] if e["summary"].startswith("delivery_survey")]
    assert entry["detail"]["verdict"]["outcome"] == "hold"
    assert {r["rule"] for r in entry["detail"]["verdict"]["rules"]} >= {"consent", "send_window", "stale"}


def test_preview_lists_what_goes_when_and_why(rt):
    quiet = make_survey(rt, 3, due_at=jst(2026, 12, 3, 3, 0))
    day = make_survey(rt, 4, due_at=jst(2026, 12, 3, 11, 0))
    capped = make_survey(rt, 5, due_at=jst(2026, 12, 3, 11, 30), email="buyer4@example.jp")
    stale = make_survey(rt, 6, due_at=jst(2026, 11, 1, 11, 0))
    later = make_survey(rt, 7, due_at=jst(2026, 12, 9, 11, 0))
    planned = timed.preview_due(
        rt.engine, rt.settings, jst(2026, 12, 3, 2, 0), jst(2026, 12, 4, 0, 0), COMPOSERS
    )
    by_id = {p.touchpoint_id: p for p in planned}
    assert later not in by_id and set(by_id) == {quiet, day, capped, stale}
    assert by_id[quiet].outcome == "hold" and by_id[quiet].line == "held until 09:00 JST (quiet hours)"
    assert by_id[day].outcome == "send" and by_id[day].line == "goes at 2026-12-03 11:00 JST"
    # The same customer's second survey: the first is counted as going, so the cap moves it a day.
    assert by_id[capped].line.startswith("postponed until 2026-12-04 11:00 JST")
    assert by_id[stale].outcome == "skip" and "stale" in by_id[stale].line
    # Without a composer for the kind, it stays planned and says so.
    [none] = [
        p
        for p in timed.preview_due(
            rt.engine, rt.settings, jst(2026, 12, 3, 2, 0), jst(2026, 12, 3, 12, 0), {}
        )
        if p.touchpoint_id == day
    ]
    assert none.outcome == "no composer" and none.line == "no composer for delivery_survey: stays planned"
    # Nothing was written.
    assert timed.dispatch_due(rt, jst(2026, 12, 3, 11, 0), composers=COMPOSERS).counts()["sent"] == 2


@pytest.mark.parametrize("junk", ["junk", "", "2026-13-01", "+5y", "+99999h", "tomorrow", "9:00", "x" * 5000])
def test_junk_times_are_refused_with_what_is_accepted(junk):
    with pytest.raises(BadTime, match="not a time|too long"):
        parse_time(junk, datetime(2026, 12, 3, tzinfo=UTC), TOKYO)


def test_times_read_as_iso_in_the_shops_zone_or_a_span():
    now = datetime(2026, 12, 3, tzinfo=UTC)
    assert parse_time("2026-12-03T09:00", now, TOKYO) == datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
    assert parse_time("2026-12-03T09:00+00:00", now, TOKYO) == datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    assert parse_time("+90m", now, TOKYO) == now + timedelta(minutes=90)
    assert parse_time(" +3d ", now, TOKYO) == now + timedelta(days=3)


def test_the_cli_lists_due_touchpoints_as_json_and_refuses_junk(env, rt, capsys):  # noqa: F811
    soon = datetime.now(UTC) + timedelta(hours=2)
    tp_id = make_survey(rt, 8, due_at=soon)
    code, out, err = run(capsys, "touchpoints", "due", "--before", "+3h", "--json")
    assert code == 0, err
    body = json.loads(out)
    [row] = [t for t in body["touchpoints"] if t["touchpoint_id"] == tp_id]
    assert row["order"] == "#7008" and row["kind"] == "delivery_survey" and row["reason"]
    assert datetime.fromisoformat(row["next_at"]) == soon.replace(microsecond=soon.microsecond)
    code, out, err = run(capsys, "touchpoints", "due", "--before", "+1h")
    assert code == 0 and out.startswith("due by ") and ": 0\n" in out.splitlines()[0] + "\n"
    code, out, err = run(capsys, "touchpoints", "due")
    assert code == 0 and "#7008" in out and "delivery_survey" in out
    code, out, err = run(capsys, "touchpoints", "due", "--before", "next tuesday")
    assert code == 2 and "is not a time" in err and out == ""
