"""The shops an installation serves. The HMAC covers the body, not the X-Shopify-Shop-Domain header:
a signed body replayed under another shop's name is refused before anything is stored, and Shopify
ids are global, so an order seen under one configured shop is never a second order under another."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare.errors import ConfigError
from aftercare.models import (
    InboxEvent,
    InboxStatus,
    Order,
    OutboxMessage,
    Refund,
    Shipment,
    Touchpoint,
    WarehouseHandoff,
)
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine.db import make_engine
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET
from tests.factories import SHOP, body_of, fulfillment_payload, order_payload, refund_payload, webhook_headers
from tests.pipeline import drain, rows

URL = "/webhooks/shopify"
OTHER = "second-shop.myshopify.com"  # configured too, in the tests that say so
DEMO_SHOP = "aftercare-demo.myshopify.com"  # what `aftercare demo` posts as
STRANGER = "attacker-shop.myshopify.com"  # never configured


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, waker=NoWaker())) as c:
        yield c


@pytest.fixture
def two_shops(settings: Settings) -> Settings:
    return settings.model_copy(update={"shopify_shops": [SHOP, OTHER]})


@pytest.fixture
def two_shop_rt(two_shops: Settings) -> Iterator[Runtime]:
    runtime = Runtime.build(two_shops)
    yield runtime
    runtime.engine.dispose()


@pytest.fixture
def two_shop_client(two_shops: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(two_shops, waker=NoWaker())) as c:
        yield c


def post(
    client: TestClient, payload: dict[str, Any], *, topic: str = "orders/create", shop: str = SHOP
) -> Any:
    """A delivery signed with the installation's secret, with fresh webhook and event ids: what an
    attacker holding one signed body can send again and again under any header."""
    body = body_of(payload)
    return client.post(
        URL, content=body, headers=webhook_headers(body, secret=TEST_SECRET, topic=topic, shop=shop)
    )


def inbox(settings: Settings) -> list[InboxEvent]:
    engine = make_engine(settings)
    try:
        with Session(engine) as s:
            return list(s.exec(select(InboxEvent).order_by(InboxEvent.id)))
    finally:
        engine.dispose()


# --- settings --------------------------------------------------------------------------------------


def test_shops_come_from_a_comma_separated_list_normalised_and_default_to_the_demo_shop(monkeypatch):
    monkeypatch.delenv("AFTERCARE_SHOPIFY_SHOPS", raising=False)
    assert Settings(_env_file=None).shopify_shops == [DEMO_SHOP]
    monkeypatch.setenv(
        "AFTERCARE_SHOPIFY_SHOPS", " Shop-A.myshopify.com,shop-b.myshopify.com , shop-a.MYSHOPIFY.com"
    )
    settings = Settings(_env_file=None)
    assert settings.shopify_shops == ["shop-a.myshopify.com", "shop-b.myshopify.com"]
    assert settings.serves_shop("SHOP-B.myshopify.com") and not settings.serves_shop("shop-c.myshopify.com")
    assert not settings.serves_shop("") and not settings.serves_shop(None)


@pytest.mark.parametrize("value", ["", " , ,"])
def test_an_empty_shop_list_is_refused_with_a_config_error(monkeypatch, value):
    monkeypatch.setenv("AFTERCARE_SHOPIFY_SHOPS", value)
    with pytest.raises(ConfigError, match="AFTERCARE_SHOPIFY_SHOPS"):
        Settings(_env_file=None)


# --- the webhook -----------------------------------------------------------------------------------


def test_a_signed_body_replayed_under_another_shop_is_refused_and_mails_and_ships_once(client, rt):
    payload = order_payload("ja-first-gift")
    assert post(client, payload).status_code == 200
    replay = post(client, payload, shop=STRANGER)
    assert replay.status_code == 401
    assert "X-Shopify-Shop-Domain" in replay.json()["error"]
    body = body_of(payload)
    no_shop = webhook_headers(body, secret=TEST_SECRET)
    del no_shop["X-Shopify-Shop-Domain"]
    assert client.post(URL, content=body, headers=no_shop).status_code == 401
    assert [r.shop_domain for r in inbox(rt.settings)] == [SHOP]  # nothing of the refused ones stored

    drain(rt)
    assert len(rows(rt, Order)) == 1
    assert len(rows(rt, OutboxMessage)) == 1  # one confirmation
    assert len(rows(rt, WarehouseHandoff)) == 1  # one ship instruction


def test_a_forged_request_for_an_unknown_shop_is_refused_before_anything_is_read(client, rt):
    """A wrong signature is refused as such whatever shop it names; an unknown shop with a good
    signature is refused too: neither leaves a row, and a bad topic or body changes nothing."""
    body = b"not json at all"
    headers = webhook_headers(body, secret="not-the-secret", shop=STRANGER)
    resp = client.post(URL, content=body, headers=headers)
    assert resp.status_code == 401 and "Hmac" in resp.json()["error"]
    headers = webhook_headers(body, secret=TEST_SECRET, shop=STRANGER, topic="no/such-topic")
    resp = client.post(URL, content=body, headers=headers)
    assert resp.status_code == 401 and "X-Shopify-Shop-Domain" in resp.json()["error"]
    assert inbox(rt.settings) == []


def test_the_shop_header_is_compared_and_stored_in_lower_case(client, rt):
    assert post(client, order_payload("ja-first-gift"), shop="  Test-Shop.MyShopify.com ").status_code == 200
    [row] = inbox(rt.settings)
    assert row.shop_domain == SHOP


# --- one order per Shopify id, across the configured shops -------------------------------------------


def test_an_order_replayed_under_a_second_configured_shop_is_the_same_order(two_shop_client, two_shop_rt):
    rt = two_shop_rt
    payload = order_payload("ja-first-gift")
    assert post(two_shop_client, payload).status_code == 200
    drain(rt)
    assert post(two_shop_client, payload, topic="orders/paid", shop=OTHER).status_code == 200
    [outcome] = drain(rt)
    assert outcome.status == InboxStatus.DONE

    [order] = rows(rt, Order)
    assert order.shop_domain == SHOP  # the order keeps its own shop
    assert len(rows(rt, Touchpoint)) == 1
    assert len(rows(rt, OutboxMessage)) == 1
    assert len(rows(rt, WarehouseHandoff)) == 1


def test_a_fulfillment_and_refund_under_another_configured_shop_attach_to_the_one_order(
    two_shop_client, two_shop_rt
):
    rt = two_shop_rt
    payload = order_payload("ja-first-gift")
    # The fulfillment first: it waits for its order, which then comes under the other shop's header.
    assert (
        post(
            two_shop_client, fulfillment_payload(payload), topic="fulfillments/create", shop=OTHER
        ).status_code
        == 200
    )
    [waiting] = drain(rt)
    assert waiting.status == InboxStatus.WAITING
    assert post(two_shop_client, payload).status_code == 200
    [created] = drain(rt)
    assert created.released == [waiting.inbox_id]
    [shipped] = drain(rt)
    assert shipped.status == InboxStatus.DONE and shipped.order_id == created.order_id

    # Again under the other header: the same shipment, no second notice.
    assert (
        post(
            two_shop_client, fulfillment_payload(payload), topic="fulfillments/create", shop=OTHER
        ).status_code
        == 200
    )
    assert (
        post(two_shop_client, refund_payload(payload), topic="refunds/create", shop=OTHER).status_code == 200
    )
    assert [o.status for o in drain(rt)] == [InboxStatus.DONE, InboxStatus.DONE]

    [order] = rows(rt, Order)
    [shipment] = rows(rt, Shipment)
    [refund] = rows(rt, Refund)
    assert (shipment.order_id, shipment.shop_domain) == (order.id, SHOP)
    assert (refund.order_id, refund.shop_domain) == (order.id, SHOP)
    kinds = sorted(t.kind for t in rows(rt, Touchpoint))
    assert kinds.count("shipment_notice") == 1
    assert len([m for m in rows(rt, OutboxMessage) if m.kind == "shipment_notice"]) == 1
