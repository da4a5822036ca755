"""contact.store.suppress on SQLite and PostgreSQL: a second suppression of the same list is "already
there", but a suppression the database refuses for another reason is an error, never lost quietly."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from aftercare.contact import store
from aftercare.contact.policy import load_contact_policy
from aftercare.models import utcnow
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from tests.contact.unsub_helpers import plan_customer, suppressions
from tests.factories import SHOP


def test_twice_is_already_there_and_a_refused_insert_is_an_error(rt: Runtime, settings: Settings) -> None:
    policy = load_contact_policy(settings.policies_dir / "contact.yaml")
    planned = plan_customer(rt.engine, "hanako@example.jp")
    survey = planned.touchpoints["delivery_survey"]
    with Session(rt.engine) as session:
        first = store.suppress(
            session,
            shop_domain=SHOP,
            email_key="hanako@example.jp",
            list_name="surveys",
            source="test",
            now=utcnow(),
            policy=policy,
            touchpoint_id=survey,
        )
        again = store.suppress(
            session,
            shop_domain=SHOP,
            email_key="hanako@example.jp",
            list_name="surveys",
            source="test",
            now=utcnow(),
            policy=policy,
            touchpoint_id=survey,
        )
        session.commit()
    assert (first.created, again.created) == (True, False)
    assert first.cancelled_touchpoints == [survey] and again.cancelled_touchpoints == []

    with Session(rt.engine) as session, pytest.raises(sa.exc.IntegrityError):
        store.suppress(
            session,
            shop_domain=SHOP,
            email_key="taro@example.jp",
            list_name="review_requests",
            source="test",
            now=utcnow(),
            policy=policy,
            touchpoint_id=987_654_321,  # no such touchpoint
        )
    assert [s[2] for s in suppressions(rt.engine)] == ["surveys"]
