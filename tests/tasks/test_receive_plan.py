"""How a claimed batch is split for receiving: what may run at the same time and what must not."""

from __future__ import annotations

from aftercare.spine.inbox import ClaimedRow, customer_keys
from tasks.receipt import receive_plan
from tests.factories import deliver, order_payload


def row(i: int, ref: str, topic: str = "orders/create") -> ClaimedRow:
    return ClaimedRow(i, topic, ref)


def ids(chunks: list[list[ClaimedRow]]) -> list[list[int]]:
    return [[r.inbox_id for r in chunk] for chunk in chunks]


def test_without_customer_keys_everything_is_received_in_arrival_order():
    rows = [row(1, "#1"), row(2, "#1.1", "fulfillments/create"), row(3, "#2")]
    lanes, after = receive_plan(rows)
    assert lanes == [] and [r.inbox_id for chunk in after for r in chunk] == [1, 2, 3]


def test_an_orders_deliveries_share_a_lane_in_arrival_order():
    rows = [
        row(1, "#1"),
        row(2, "#2"),
        row(3, "#1", "orders/paid"),
        row(4, "#3"),
        row(5, "#1", "orders/updated"),
    ]
    lanes, after = receive_plan(rows, customers={})
    assert after == []
    [lane_of_1] = [lane for lane in ids(lanes) if 1 in lane]
    assert [i for i in lane_of_1 if i in (1, 3, 5)] == [1, 3, 5]
    assert sorted(i for lane in ids(lanes) for i in lane) == [1, 2, 3, 4, 5]
    assert len(lanes) == 3  # three independent orders: three lanes


def test_one_customers_orders_share_a_lane_even_when_linked_only_through_another_order():
    # #1 and #2 are emma's; #3 is emma's under a changed address on its update, tying in bob's #4.
    rows = [
        row(1, "#1"),
        row(2, "#2"),
        row(3, "#3"),
        row(4, "#4"),
        row(5, "#3", "orders/updated"),
        row(6, "#5"),
    ]
    customers = {
        1: "email:emma",
        2: "email:emma",
        3: "email:emma",
        4: "email:bob",
        5: "email:bob",
        6: "email:kai",
    }
    lanes, _ = receive_plan(rows, customers=customers)
    lane_ids = ids(lanes)
    [linked] = [lane for lane in lane_ids if 1 in lane]
    assert linked == [1, 2, 3, 4, 5]  # arrival order kept inside the lane
    assert [6] in lane_ids


def test_fulfillments_refunds_and_reviews_wait_for_the_lanes_in_arrival_order():
    rows = [
        row(1, "#1.1", "fulfillments/create"),
        row(2, "#1"),
        row(3, "order-id:9", "refunds/create"),
        row(4, "google:1", "reviews/create"),
    ]
    lanes, after = receive_plan(rows, customers={})
    assert ids(lanes) == [[2]]
    assert [r.inbox_id for chunk in after for r in chunk] == [1, 3, 4]


def test_a_big_batch_is_split_into_lanes_of_at_most_max_size():
    rows = [row(i, f"#{i}") for i in range(1, 101)]
    lanes, _ = receive_plan(rows, customers={}, max_size=25, target_tasks=4)
    assert len(lanes) == 4 and all(len(lane) == 25 for lane in lanes)
    lanes, _ = receive_plan(rows, customers={}, max_size=10, target_tasks=4)
    assert len(lanes) == 10


def test_customer_keys_come_from_the_stored_bodies_and_skip_what_has_no_email(rt):
    with_email = deliver(rt.engine, order_payload("en-first", email="Emma@Example.com "))
    no_email = deliver(
        rt.engine, order_payload("en-first", id=77, name="#77", email=None, contact_email=None, customer=None)
    )
    from_customer = deliver(
        rt.engine, order_payload("ja-first-gift", id=78, name="#78", email=None, contact_email=None)
    )
    keys = customer_keys(rt.engine, [with_email, no_email, from_customer, 99999])
    assert keys[with_email] == "email:emma@example.com"
    assert no_email not in keys and 99999 not in keys
    assert keys[from_customer].startswith("email:") and "@" in keys[from_customer]
