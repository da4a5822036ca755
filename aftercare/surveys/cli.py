"""`aftercare surveys ...` commands; `add_survey_commands` registers them on the main parser."""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Any

from aftercare.models import utcnow

MAX_WEEKS = 520


def cmd_surveys_report(args: argparse.Namespace, settings: Any) -> int:
    """Print the survey report (Markdown, or JSON with --json) for the last --weeks ISO weeks,
    weeks counted in the shop's time zone (policies/contact.yaml)."""
    from sqlmodel import Session

    from aftercare.contact.policy import load_contact_policy
    from aftercare.spine.db import make_engine
    from aftercare.surveys.report import survey_report

    if not 1 <= args.weeks <= MAX_WEEKS:
        sys.stderr.write(f"aftercare: --weeks must be from 1 to {MAX_WEEKS}\n")
        return 2
    zone = load_contact_policy(settings.policies_dir / "contact.yaml").shop_timezone
    engine = make_engine(settings)
    try:
        with Session(engine) as session:
            report = survey_report(session, utcnow(), args.weeks, tz=zone)
    finally:
        engine.dispose()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8")  # comments are often Japanese
    if args.json:
        sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(report.as_markdown())
    return 0


def add_survey_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `surveys report [--json] [--weeks N]` to the `aftercare` subcommands."""
    surveys = subparsers.add_parser("surveys", help="the satisfaction survey's answers")
    actions = surveys.add_subparsers(dest="surveys_action", required=True)
    rep = actions.add_parser(
        "report",
        help="response rate, CSAT or NPS and the comments, by ISO week and by product",
        description="Surveys are counted in the ISO week they were sent (shop's time zone), each once, "
        "with its latest answer. CSAT: share of 4-5 on the 1-5 scale; NPS: % of 9-10 minus % of 0-6.",
    )
    rep.add_argument("--json", action="store_true", help="machine-readable output")
    rep.add_argument("--weeks", type=int, default=4, help="ISO weeks to cover, this one included (default 4)")
    rep.set_defaults(func=cmd_surveys_report)
    return surveys
