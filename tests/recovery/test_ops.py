"""What ops see of recovery cases: `aftercare cases list [--open] [--json]` (hostile arguments
included), the order's timeline, and the migration going down and up again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from aftercare.orders.timeline import order_timeline, timeline_json, timeline_text
from aftercare.settings import Settings
from tests.recovery.helpers import answer, app_settings, cases, client_for
from tests.surveys.helpers import mailed_survey
from tests.test_cli import _set_env, run
from tests.test_cli_hostile import BEYOND_BIGINT


@pytest.fixture
def opened(rt, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    own = app_settings(settings, tmp_path)
    with client_for(own) as client:
        low = mailed_survey(rt, 0)
        high = mailed_survey(rt, 1)
        assert answer(client, low, 1, "Broken on arrival.") == 303
        assert answer(client, low, 4) == 303  # changed: noted on the case
        assert answer(client, high, 5) == 303
    _set_env(monkeypatch, tmp_path, settings.database_url, settings.var_dir)
    monkeypatch.setenv("AFTERCARE_POLICIES_DIR", str(own.policies_dir))
    return low, high


def test_cases_list_shows_the_open_case_in_text_and_json(rt, opened, capsys):
    low, _ = opened
    code, out, err = run(capsys, "cases", "list", "--open")
    assert (code, err) == (0, "")
    [line] = out.splitlines()
    assert low.order_name in line and "open" in line and "score 1 (csat5)" in line
    assert "not drafted yet" in line and "1 later answer(s)" in line

    code, out, err = run(capsys, "cases", "list", "--json")
    assert (code, err) == (0, "")
    [case] = json.loads(out)
    assert case["order"] == low.order_name and case["status"] == "open" and case["overdue"] is False
    assert [a["score"] for a in case["later_answers"]] == [4]
    assert case["apology"] == "not drafted yet" and case["mail"] is None and case["decisions"] == []


def test_cases_list_with_nothing_says_so(env_only, capsys):
    assert run(capsys, "cases", "list") == (0, "no recovery cases\n", "")
    assert run(capsys, "cases", "list", "--open", "--json") == (0, "[]\n", "")


@pytest.fixture
def env_only(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    _set_env(monkeypatch, tmp_path, settings.database_url, settings.var_dir)
    return settings


@pytest.mark.parametrize(
    "argv",
    [
        ("cases", "list", "--limit", "0"),
        ("cases", "list", "--limit", "-5"),
        ("cases", "list", "--limit", BEYOND_BIGINT),
    ],
)
def test_a_limit_no_table_can_have_is_a_usage_error(env_only, capsys, argv):
    assert run(capsys, *argv) == (2, "", "aftercare: --limit must be at least 1 and at most 1000000\n")


@pytest.mark.parametrize(
    "argv",
    [
        ("cases",),
        ("cases", "close", "1"),
        ("cases", "list", "--open=yes"),
        ("cases", "list", "--limit", "ten"),
        ("cases", "list", "--status", "open"),
        ("cases", "list", "\x00"),
    ],
)
def test_other_odd_arguments_are_refused_by_the_parser(env_only, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        run(capsys, *argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_the_timeline_shows_the_case_the_noted_answer_the_ops_mail_and_the_deadline(rt, opened):
    low, high = opened
    tl = order_timeline(rt.engine, low.order_name, rt.policies.delivery)
    text = timeline_text(tl)
    [case] = cases(rt)
    assert f"recovery case {case.id} opened: survey score 1 (csat5); score 1 <= 2 (csat5)" in text
    assert "survey answered again, score 4 (above the threshold); noted on the case" in text
    assert "ops told support-lead@example.com (pending)" in text
    planned = timeline_json(tl)["planned"]
    assert any(
        e["kind"] == "recovery" and "first answer to the customer due" in e["summary"] for e in planned
    )
    other = timeline_text(order_timeline(rt.engine, high.order_name, rt.policies.delivery))
    assert "recovery" not in other


def test_migration_0013_matches_the_model_and_goes_down_and_up(own_database):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from aftercare.spine.db import alembic_config, make_engine, migrate

    settings = own_database
    migrate(settings)
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert [d for d in diffs if "recovery_cases" in repr(d)] == []
        command.downgrade(alembic_config(settings), "0012")
        assert "recovery_cases" not in sa.inspect(engine).get_table_names()
        migrate(settings)
        assert "recovery_cases" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
