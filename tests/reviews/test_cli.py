"""`aftercare reviews triage --json`: JSON lines in, one result or one error object per line out."""

from __future__ import annotations

import argparse
import io
import json
import sys
from types import SimpleNamespace

import pytest

from aftercare.reviews.cli import add_review_commands
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.triage import run_triage_jsonl
from aftercare.settings import PROJECT_ROOT


def run(policy: ReviewsPolicy, lines: list[str]) -> tuple[int, list[dict]]:
    out = io.StringIO()
    code = run_triage_jsonl(io.StringIO("\n".join(lines) + "\n"), out, policy)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_good_lines_give_one_result_each_in_order(policy: ReviewsPolicy):
    code, results = run(
        policy,
        [
            json.dumps({"id": "a", "text": "Broke on day one. Awful.", "rating": 4}),
            json.dumps(
                {"id": 7, "text": "最高の器です。ありがとうございました。", "rating": 5, "lang": "ja"}
            ),
            json.dumps({"id": "c", "text": "", "rating": 1}),
        ],
    )
    assert code == 0
    assert [r["id"] for r in results] == ["a", "7", "c"]
    assert [r["negative"] for r in results] == [True, False, True]
    assert set(results[0]) == {"id", "negative", "score", "reasons"}
    assert isinstance(results[0]["score"], float) and results[0]["score"] < 0


def test_malformed_lines_print_an_error_with_the_line_number_and_the_run_goes_on(policy: ReviewsPolicy):
    code, results = run(
        policy,
        [
            json.dumps({"id": "ok1", "text": "Great!", "rating": 5}),
            "{not json",
            "",  # blank lines are skipped, but still counted
            json.dumps(["a", "list"]),
            json.dumps({"id": "r9", "text": "ok", "rating": 9}),
            json.dumps({"id": "nt", "rating": 3}),
            json.dumps({"text": "no id"}),
            json.dumps({"id": "ok2", "text": "ひどい対応でした。", "rating": 4}),
        ],
    )
    assert code != 0
    assert [r.get("id") for r in results] == ["ok1", None, None, "r9", "nt", None, "ok2"]
    errors = {r["line"]: r["error"] for r in results if "error" in r}
    assert sorted(errors) == [2, 4, 5, 6, 7]
    assert errors[2].startswith("not JSON")
    assert "expected a JSON object" in errors[4]
    assert errors[5].startswith("rating:")
    assert errors[6] == "text: field required"
    assert errors[7].startswith("id:")
    assert results[-1]["negative"] is True


def test_all_good_exits_zero_and_one_bad_line_does_not(policy: ReviewsPolicy):
    assert run(policy, [json.dumps({"id": "a", "text": "fine", "rating": 3})])[0] == 0
    assert run(policy, ["{"])[0] == 1


def test_registered_command_reads_stdin_and_writes_stdout(monkeypatch: pytest.MonkeyPatch, capsys):
    parser = argparse.ArgumentParser(prog="aftercare")
    add_review_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["reviews", "triage", "--json"])
    monkeypatch.setattr(
        sys, "stdin", io.StringIO('{"id": "x", "text": "Terrible, never again.", "rating": 5}\nnope\n')
    )
    code = args.func(args, SimpleNamespace(policies_dir=PROJECT_ROOT / "policies"))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert lines[0]["id"] == "x" and lines[0]["negative"] is True
    assert lines[1]["line"] == 2 and "error" in lines[1]


def test_triage_requires_the_json_flag():
    parser = argparse.ArgumentParser(prog="aftercare")
    add_review_commands(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(["reviews", "triage"])
