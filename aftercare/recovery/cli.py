"""`aftercare cases ...` commands; `add_case_commands` registers them on the main parser."""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Any

from aftercare.models import utcnow


def case_line(view: Any, now: Any, tz: Any) -> str:
    c = view.case
    due = c.first_answer_due_at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
    late = " OVERDUE" if view.overdue(now) else ""
    escalated = " escalated" if c.escalated_at else ""
    return (
        f"{c.id:>6}  {view.order_name:<12} {c.status:<9} score {c.score} ({c.scale})  "
        f"due {due}{late}{escalated}  apology: {view.apology}"
        + (f"  [{len(c.answers)} later answer(s)]" if c.answers else "")
    )


def cmd_cases_list(args: argparse.Namespace, settings: Any) -> int:
    """List recovery cases, oldest first (--open: those whose customer has had no answer yet)."""
    from aftercare.policies import load_policies
    from aftercare.recovery.store import list_cases
    from aftercare.spine.db import make_engine

    tz = load_policies(settings.policies_dir).shipping.tz
    now = utcnow()
    engine = make_engine(settings)
    try:
        views = list_cases(engine, open_only=args.open, limit=args.limit)
    finally:
        engine.dispose()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8")  # order names and reasons may be Japanese
    if args.json:
        sys.stdout.write(json.dumps([v.as_json(now) for v in views], ensure_ascii=False, indent=2) + "\n")
    elif not views:
        sys.stdout.write("no open recovery cases\n" if args.open else "no recovery cases\n")
    else:
        sys.stdout.write("".join(case_line(v, now, tz) + "\n" for v in views))
    return 0


def add_case_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `cases list [--open] [--json] [--limit N]` to the `aftercare` subcommands."""
    cases = subparsers.add_parser("cases", help="service recovery cases opened by low survey answers")
    actions = cases.add_subparsers(dest="cases_action", required=True)
    lst = actions.add_parser(
        "list",
        help="recovery cases, oldest first",
        description="One case per survey whose answer was at or below policies/recovery.yaml's threshold, "
        "or whose comment read as negative: its first-answer deadline (business hours), the private "
        "apology's state and decisions, and the answers given since.",
    )
    lst.add_argument("--open", action="store_true", help="only cases whose customer has had no answer yet")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.add_argument("--limit", type=int, default=100)
    lst.set_defaults(func=cmd_cases_list)
    return cases
