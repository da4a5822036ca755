"""`aftercare reviews ...` commands; `add_review_commands` registers them on the main parser."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
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


def cmd_reviews_import(args: argparse.Namespace, settings: Any) -> int:
    """Store a file of reviews through the inbox; print the counts and every bad line. Exit status 1
    when any line could not be stored."""
    from aftercare.reviews.intake import import_reviews
    from aftercare.spine.db import make_engine

    path = Path(args.file)
    if not path.is_file():
        sys.stderr.write(f"aftercare: no such file: {path}\n")
        return 1
    engine = make_engine(settings)
    try:
        report = import_reviews(engine, path, fmt=args.format)
    finally:
        engine.dispose()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8")
    if args.json:
        sys.stdout.write(json.dumps(report.as_json(), ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(
            f"{report.read} read, {report.stored} stored, {report.duplicates} already stored, "
            f"{len(report.errors)} with errors\n"
        )
        for err in report.errors:
            ref = f" (review {err['review_id']})" if "review_id" in err else ""
            sys.stdout.write(f"line {err['line']}{ref}: {err['error']}\n")
        if report.stored:
            sys.stdout.write("stored reviews are processed by the inbox sweep (or `aftercare process`)\n")
    return 1 if report.errors else 0


def add_review_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `reviews triage --json` and `reviews import FILE` to the `aftercare` subcommands. Each
    command is called as `func(args, settings)` and returns the exit code, like the other commands."""
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
    imp = actions.add_parser(
        "import",
        help="store past reviews from a JSON lines or CSV file through the inbox",
        description="Each line (or CSV row, its header naming the fields) is a review in the documented "
        "review JSON: platform, review_id, rating, body, author, created_at, and optionally product_ref, "
        "order_ref, title, language, shop_domain. Reviews already stored are skipped, so a file can be "
        "imported again. Exit status 1 when any line could not be stored.",
    )
    imp.add_argument("file", help="a .jsonl or .csv file (other names: detected from the first character)")
    imp.add_argument("--format", choices=["jsonl", "csv"], help="override the detected format")
    imp.add_argument("--json", action="store_true", help="print the report as one JSON object")
    imp.set_defaults(func=cmd_reviews_import)
    return reviews
