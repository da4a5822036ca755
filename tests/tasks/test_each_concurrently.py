"""Items of one batch go out several at a time, results in the items' order."""

from __future__ import annotations

import threading

import pytest

from tasks.receipt import each_concurrently


def test_items_really_run_at_the_same_time_and_results_keep_their_order():
    barrier = threading.Barrier(3, timeout=5)  # breaks (fails the test) unless 3 run at once

    def work(i: int) -> int:
        barrier.wait()
        return i * 10

    assert each_concurrently([1, 2, 3], work, max_workers=3) == [10, 20, 30]


def test_one_worker_runs_them_in_order_on_the_calling_thread():
    seen: list[tuple[int, str]] = []
    each_concurrently([1, 2, 3], lambda i: seen.append((i, threading.current_thread().name)), 1)
    assert [i for i, _ in seen] == [1, 2, 3]
    assert {name for _, name in seen} == {threading.current_thread().name}


def test_an_error_is_raised_after_the_others_have_run():
    done: list[int] = []

    def work(i: int) -> int:
        if i == 2:
            raise RuntimeError("database went away")
        done.append(i)
        return i

    with pytest.raises(RuntimeError, match="database went away"):
        each_concurrently([1, 2, 3, 4], work, max_workers=2)
    assert sorted(done) == [1, 3, 4]


def test_one_at_a_time_also_attempts_every_item_before_raising():
    done: list[int] = []

    def work(i: int) -> int:
        if i == 1:
            raise ValueError("first one broke")
        done.append(i)
        return i

    with pytest.raises(ValueError, match="first one broke"):
        each_concurrently([1, 2, 3], work, max_workers=1)
    assert done == [2, 3]
