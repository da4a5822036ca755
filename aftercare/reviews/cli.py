"""`aftercare reviews ...` commands; `add_review_commands` registers them on the main parser."""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

from aftercare.reviews.policy import load_reviews_policy
from aftercare.reviews.triage import run_triage_jsonl


def cmd_reviews_triage(args: argparse.Namespace, settings: Any) -> int:
    """Triage JSON lines from stdin to stdout under the configured policies/reviews.yaml."""
    policy = load_reviews_policy(settings.policies_dir)
    # JSON lines are UTF-8 whatever the terminal's locale says (reviews are often Japanese).
    for stream in (sys.stdin, sys.stdout):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(encoding="utf-8")
    return run_triage_jsonl(sys.stdin, sys.stdout, policy)


def add_review_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `reviews triage --json` to the `aftercare` subcommands. Each command is called as
    `func(args, settings)` and returns the exit code, like the other aftercare commands."""
    reviews = subparsers.add_parser("reviews", help="triage product reviews and draft replies")
    actions = reviews.add_subparsers(dest="reviews_action", required=True)
    tri = actions.add_parser(
        "triage",
        help="read review JSON lines on stdin, print one triage result per line",
        description='Input lines: {"id", "text", "rating"?, "lang"?}. Output lines: '
        '{"id", "negative", "score", "reasons"}, or {"line", "error", "id"?} for a line that '
        "could not be read. Exit status 1 when any line could not be read.",
    )
    tri.add_argument("--json", action="store_true", required=True, help="JSON lines in and out (only format)")
    tri.set_defaults(func=cmd_reviews_triage)
    return reviews
