"""The short fault suite (part of `make test`): the real stack on SQLite against the loopback fakes,
~36 orders, every delivery 3x shuffled, 3+ SIGKILLs of the flow process, a short provider 429/500/hang
window and a short 3PL outage, no database restart. `make faults` runs the full one on both databases.
The table it prints is the report; the test fails when any of its checks does."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import PRINTED_REPORT, shared_path
from tests.faults.harness import Config, run


@pytest.mark.faults
@pytest.mark.timeout(600)
def test_short_fault_suite(record_property: Callable[[str, object], None]) -> None:
    shared_path("contracts", "sendgrid", "tsg_mail_v3.json")
    report = run(Config.short())
    # The table is the suite's report: printed at the end of the run (tests/conftest.py), also when
    # the test ran in a pytest-xdist worker, whose own output nobody sees.
    record_property(PRINTED_REPORT, report.table())
    assert report.ok, "fault suite checks failed:\n" + "\n".join(
        f"{r.check.strip()}: {r.figure} (expected {r.expected}) {r.detail[:3]}" for r in report.failures
    )
