"""The `aftercare` command line given hostile input: odd order refs, ids and limits no row can have,
malformed import files. Each gets one clear line on stderr and an exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from aftercare.settings import Settings
from tests.test_cli import _set_env, run

BEYOND_BIGINT = "99999999999999999999999"


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    _set_env(monkeypatch, tmp_path, settings.database_url, settings.var_dir)
    return settings


@pytest.mark.parametrize(
    "ref", [BEYOND_BIGINT, "#" + BEYOND_BIGINT, "²", "#١٢٣", "9" * 5000, "-1", " ", "a\x01b"]
)
def test_timeline_of_an_odd_ref_says_there_is_no_such_order(env, capsys, ref):
    """A number no BIGINT holds used to reach the database (OverflowError on SQLite, DataError on
    PostgreSQL: a traceback); '²' passed isdigit() and failed int()."""
    code, out, err = run(capsys, "timeline", ref)

    assert (code, out) == (1, "")
    assert err.startswith("aftercare: no order ") and err.count("\n") == 1, err


@pytest.mark.parametrize("bad_id", [BEYOND_BIGINT, "9223372036854775808", "0", "-1"])
def test_outbox_resend_of_an_id_no_row_can_have_is_a_usage_error(env, capsys, bad_id):
    code, out, err = run(capsys, "outbox", "resend", bad_id)

    assert (code, out) == (2, "")
    assert err == f"aftercare: {bad_id} is not an outbox message id (1 to {2**63 - 1})\n"


def test_outbox_resend_of_a_word_is_refused_by_the_parser(env, capsys):
    with pytest.raises(SystemExit) as exc:
        run(capsys, "outbox", "resend", "abc")
    assert exc.value.code == 2
    assert "invalid int value: 'abc'" in capsys.readouterr().err


@pytest.mark.parametrize("noun", ["inbox", "outbox"])
def test_a_limit_beyond_any_table_is_a_usage_error(env, capsys, noun):
    code, out, err = run(capsys, noun, "list", "--limit", BEYOND_BIGINT)

    assert (code, out) == (2, "")
    assert err == "aftercare: --limit must be at least 1 and at most 1000000\n"


@pytest.mark.parametrize(
    ("content", "fmt", "error"),
    [
        (b"\xff\xfe garbage\n", "csv", "line 0: file is not UTF-8 (invalid start byte at byte 0)"),
        (b'{"platform": "own"\n', "jsonl", "line 1: not JSON: Expecting ',' delimiter at column 19"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "jsonl", "line 1: JSON nested too deeply to read"),
        (b'platform,review_id\n"own,1\n', "csv", "line 2: CSV: unexpected end of data"),
    ],
    ids=["not-utf8", "broken-json", "deep-json", "stray-quote"],
)
def test_reviews_import_of_a_malformed_file_reports_the_line_and_stores_nothing(
    env, capsys, tmp_path, content, fmt, error
):
    path = tmp_path / f"reviews.{fmt}"
    path.write_bytes(content)

    code, out, err = run(capsys, "reviews", "import", str(path))

    assert code == 1 and err == ""
    assert out.startswith("1 read, 0 stored, 0 already stored, 1 with errors\n"), out
    assert error in out
