"""Whether process-inbox has work now: the conditions its claims use, asked as cheap EXISTS queries.

The web app's patrol asks every few seconds and wakes a run only when something is due (a row whose
backoff ended, a lease that ran out, a hand-off to send, an alert to give), so an idle installation
does not fill Prefect's run list with empty runs; the deployment's schedule is only a low-frequency
safety sweep (which also covers the hour-scale work not checked here: review escalations and replies
left publishing; a recovery case past its first-answer deadline is checked here, so ops hear of it
on time). A delivery that arrives wakes a run at once (the waker), as before.

Each condition is the one its claim uses (imported, not rewritten), so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from aftercare.models import InboxEvent, InboxWait, OutboxMessage, RecoveryCase, WarehouseHandoff
from aftercare.orders import shipping, warehouse
from aftercare.policies import RequestsPolicy
from aftercare.recovery import store as recovery
from aftercare.settings import Settings
from aftercare.spine import inbox, outbox


def _conditions(
    settings: Settings, requests: RequestsPolicy, now: datetime
) -> dict[str, tuple[object, sa.ColumnElement[bool]]]:
    retry = inbox.Retry.from_settings(settings)
    send_lease = timedelta(seconds=settings.send_lease_s)
    handoff_lease = timedelta(seconds=settings.handoff_lease_s)
    window = timedelta(minutes=requests.acknowledgement_window_minutes)
    return {
        "deliveries to receive": (InboxEvent, inbox._claimable(now, retry)),
        "deliveries out of attempts to tell ops about": (InboxEvent, inbox.exhausted_unalerted(retry)),
        "deliveries whose order has arrived": (InboxWait, shipping.ready_condition()),
        "mails to send": (OutboxMessage, outbox.due_condition(now)),
        "mails left mid-send": (OutboxMessage, outbox.stale_condition(now, send_lease)),
        "hand-offs to send": (
            WarehouseHandoff,
            warehouse._claimable(now, handoff_lease, settings.warehouse_max_attempts),
        ),
        "hand-offs to tell ops about": (WarehouseHandoff, warehouse.alert_due(now, window)),
        "recovery cases past their first-answer deadline": (RecoveryCase, recovery.overdue_condition(now)),
    }


def work_due(engine: Engine, settings: Settings, requests: RequestsPolicy, now: datetime) -> list[str]:
    """What process-inbox would find to do now (empty: nothing; a run would be empty)."""
    found = []
    with engine.connect() as conn:
        for name, (model, condition) in _conditions(settings, requests, now).items():
            if conn.execute(sa.select(sa.exists().where(condition).select_from(model))).scalar():  # type: ignore[arg-type]
                found.append(name)
    return found
