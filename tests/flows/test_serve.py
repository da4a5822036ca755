"""What `aftercare up` serves (flows/serve.py), as handed to Prefect's runner."""

from __future__ import annotations

import pytest

from flows import serve as served


def test_the_runner_takes_no_scheduled_run_before_its_time(monkeypatch: pytest.MonkeyPatch):
    """A run the runner takes early (Prefect's default: 10 s before its scheduled time) holds the
    deployment's concurrency slot, Pending, until that time: a safety sweep or a run whose turn to ask
    for the slot came kept it from the waker's run for up to 10 s while deliveries waited (issue 8).
    The runner looks every second; it takes a run at most that early."""
    handed: dict[str, object] = {}

    def serve(*deployments: object, **options: object) -> None:
        handed.update(options, deployments=deployments)

    monkeypatch.setattr(served, "serve", serve)
    served.main()
    names = sorted(d.name for d in handed["deployments"])  # type: ignore[attr-defined]
    assert names == ["process-inbox", "review-reply", "send-timed-messages"]
    assert handed["prefetch_seconds"] <= 1  # type: ignore[operator]
