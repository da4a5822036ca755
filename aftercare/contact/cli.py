"""`aftercare touchpoints due [--before TIME] [--json]`: what timed contact will send, when, and why
(or why not); `add_contact_commands` registers it on the main parser."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aftercare.errors import AftercareError

DEFAULT_HORIZON = timedelta(hours=24)
_RELATIVE = re.compile(r"^\+(\d{1,4})\s*([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class BadTime(AftercareError):
    """A --before value we cannot read as a time."""


def parse_time(text: str, now: datetime, zone: ZoneInfo) -> datetime:
    """An ISO 8601 date or date-time (one without an offset is in `zone`, the shop's), or a span
    from now: +90m, +12h, +3d. Anything else is a BadTime naming what is accepted."""
    value = text.strip()
    relative = _RELATIVE.match(value.lower())
    if relative:
        return now + timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    if len(value) > 40:
        raise BadTime(f"--before {value[:40]!r}...: too long for a time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadTime(
            f"--before {value!r} is not a time: give an ISO 8601 date or date-time "
            "(2026-12-03, 2026-12-03T09:00, 2026-12-03T09:00+09:00; without an offset it is the shop's "
            f"time, {zone.key}) or a span from now (+90m, +12h, +3d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def cmd_touchpoints_due(args: argparse.Namespace, settings: Any) -> int:
    # The CLI is an entry point: it takes the wiring from above the wings (aftercare/timed.py).
    from aftercare import timed
    from aftercare.spine.db import make_engine

    contact, _shop = timed.policies_of(settings)
    now = datetime.now(UTC)
    try:
        before = parse_time(args.before, now, contact.tz) if args.before else now + DEFAULT_HORIZON
    except BadTime as exc:
        sys.stderr.write(f"aftercare: {exc}\n")
        return 2
    engine = make_engine(settings)
    try:
        planned = timed.preview_due(engine, settings, now, before, limit=args.limit)
    finally:
        engine.dispose()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8")
    if args.json:
        body = {
            "now": now.isoformat(),
            "before": before.isoformat(),
            "touchpoints": [p.as_json() for p in planned],
        }
        sys.stdout.write(json.dumps(body, ensure_ascii=False, indent=2) + "\n")
        return 0
    tz = contact.tz
    sys.stdout.write(f"due by {before.astimezone(tz):%Y-%m-%d %H:%M %Z}: {len(planned)}\n")
    for p in planned:
        when = f"{p.next_at.astimezone(tz):%Y-%m-%d %H:%M %Z}"
        sys.stdout.write(f"{when}  {p.order_name:<10} {p.kind:<16} {p.outcome:<11} {p.line}\n")
    return 0


def add_contact_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `touchpoints due` to the `aftercare` subcommands (called as `func(args, settings)`)."""
    touchpoints = subparsers.add_parser("touchpoints", help="timed contact: what will be sent, when and why")
    actions = touchpoints.add_subparsers(dest="touchpoints_action", required=True)
    due = actions.add_parser(
        "due",
        help="list planned surveys and review requests due by a time, with when and why each goes (or not)",
        description="Each planned timed touchpoint due by --before (default: the next 24 hours), with "
        "the moment the dispatcher looks at it and what the contact rules would say then: the time it "
        "goes in the customer's own zone, held (quiet hours, frequency cap) or not sent (and why).",
    )
    due.add_argument(
        "--before",
        metavar="TIME",
        help="ISO 8601 date or date-time (the shop's zone when it has no offset), or +90m, +12h, +3d",
    )
    due.add_argument("--json", action="store_true", help="machine-readable output")
    due.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    due.set_defaults(func=cmd_touchpoints_due)
    return touchpoints
