"""The files port keeps one folder per shop and Shopify order id: order names look alike ("#1001",
"1001", "注文1001") and every shop has a #1001, so a name never decides where an instruction or a
cancellation lands; and nothing a stranger controls (shop domain, order id) reaches outside the
warehouse directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aftercare.orders import warehouse
from tests.factories import SHOP, order_payload
from tests.pipeline import receive, send_all

OTHER_SHOP = "other-shop.myshopify.com"
CANCELLED_AT = "2026-11-20T12:00:00+09:00"

# (shop, Shopify order id, name): four orders whose names all reduce to "1001".
LOOKALIKES = [
    (SHOP, 900001, "#1001"),
    (SHOP, 900002, "1001"),
    (SHOP, 900003, "注文1001"),
    (OTHER_SHOP, 900004, "#1001"),
]


def order(order_id: int, name: str, **fields) -> dict:
    return order_payload("ja-first-gift", id=order_id, name=name, order_number=1001, **fields)


def files(rt) -> warehouse.FileWarehouse:
    return warehouse.FileWarehouse(rt.settings.warehouse_dir)


def written(directory: Path) -> list[tuple[str, ...]]:
    return sorted(p.relative_to(directory).parts for p in directory.rglob("*") if p.is_file())


def test_orders_with_lookalike_names_in_two_shops_get_a_folder_each(rt):
    for shop, order_id, name in LOOKALIKES:
        receive(rt, order(order_id, name), shop=shop)
    results = send_all(rt, files(rt))
    assert [r.status for r in results] == ["sent"] * 4

    root = rt.settings.warehouse_dir
    for shop, order_id, name in LOOKALIKES:
        folder = root / shop / str(order_id)
        instruction = json.loads((folder / "instruction.json").read_text())
        assert (instruction["shop_domain"], instruction["order"]["id"]) == (shop, order_id)
        assert instruction["order"]["name"] == name  # the name stays inside the files
        assert name in (folder / "picking_list.txt").read_text()
    assert {parts[:2] for parts in written(root)} == {(s, str(i)) for s, i, _n in LOOKALIKES}

    # The other shop's #1001 is cancelled: its own folder says so, and no other order's does.
    receive(
        rt,
        order(900004, "#1001", cancelled_at=CANCELLED_AT, updated_at=CANCELLED_AT),
        "orders/cancelled",
        shop=OTHER_SHOP,
    )
    [cancelled] = send_all(rt, files(rt))
    assert cancelled.status == "sent"
    assert cancelled.reference == str(root / OTHER_SHOP / "900004" / "CANCELLED.json")
    flagged = {parts[:2] for parts in written(root) if parts[-1].startswith("CANCELLED")}
    assert flagged == {(OTHER_SHOP, "900004")}


@pytest.mark.parametrize(
    "hostile",
    ["../../escaped", "..", ".", "/etc", "a/../../b", "", "..\\..\\win"],
)
def test_a_hostile_shop_domain_never_leaves_the_warehouse_directory(rt, hostile):
    """The shop domain is a request header (the HMAC covers the body only). A NUL cannot arrive in
    a header (the HTTP server refuses it); the port's own test below covers it."""
    receive(rt, order_payload("ja-first-gift"), shop=hostile)
    [result] = send_all(rt, files(rt))
    root = rt.settings.warehouse_dir
    assert result.status == "sent"
    [(shop_dir, order_dir, _name), *_] = written(root)
    assert order_dir == "820001" and not shop_dir.startswith(".") and "\x00" not in shop_dir
    assert (root / shop_dir).parent == root and Path(result.reference).resolve().parent == (
        root / shop_dir
    ).resolve()
    outside = [p for p in rt.settings.var_dir.rglob("*") if p.is_file() and root not in p.parents]
    assert not [p for p in outside if p.name.endswith((".json", ".txt", ".html"))]


@pytest.mark.parametrize(
    "shop, order_id",
    [
        ("..", ".."),
        ("../..", "../../../tmp/x"),
        (SHOP, "/etc/passwd"),
        (SHOP, "1\x002"),
        ("a/b", "1"),
        ("a-b", "1"),
    ],
)
def test_a_hostile_order_id_is_filed_inside_and_never_shares_a_folder(tmp_path, shop, order_id):
    """The port trusts nothing in the documents it is given: an id or domain that is not a plain
    name is made one, and two different ones never share a folder ("a/b" and "a-b")."""
    root = tmp_path / "warehouse"
    docs = warehouse.HandoffDocuments(
        order_name="#1001",
        version=1,
        idempotency_key="k",
        shop_domain=shop,
        shopify_order_id=order_id,
        instruction={"schema": warehouse.SCHEMA, "order": {"id": order_id, "name": "#1001"}},
        picking_list="pick",
        packing_slip_text="slip",
        packing_slip_html="<p>slip</p>",
    )
    target = Path(warehouse.FileWarehouse(root).submit(docs)).resolve()
    assert target.parent.parent == root.resolve()
    assert not target.name.startswith(".") and not target.parent.name.startswith(".")
    assert sorted(p.name for p in target.iterdir()) == [
        "instruction.json",
        "packing_slip.html",
        "packing_slip.txt",
        "picking_list.txt",
    ]
    assert [p for p in tmp_path.rglob("*") if p.is_file() and root not in p.parents] == []
    assert warehouse.order_folder(root, "a/b", "1") != warehouse.order_folder(root, "a-b", "1")
