"""The scratch SQLite tables behave as the dicts they replace, and prefetch hands over the same items."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.steps.scratch import Scratch, ScratchTable, batched, few_collections, prefetch

keys = st.one_of(st.text(max_size=6), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(max_size=6))
values = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.tuples(st.text(max_size=3), st.binary(max_size=3)))
pairs = st.lists(st.tuples(keys, values), max_size=60)


@settings(max_examples=60, deadline=None)
@given(stored=pairs, asked=st.lists(keys, max_size=30), page=st.integers(min_value=1, max_value=7))
def test_a_single_valued_table_is_a_dict(stored: list[tuple[Any, Any]], asked: list[Any], page: int) -> None:
    reference: dict[Any, Any] = {}
    for key, value in stored:
        reference[key] = value
    with Scratch() as scratch:
        table = scratch.table("t")
        assert table.load(iter(stored), chunk=page) == len(stored)
        probe = asked + [k for k, _ in stored[:5]]
        assert table.get(probe) == {k: reference[k] for k in probe if k in reference}
        assert table.has(probe) == {k for k in probe if k in reference}
        assert [k in table for k in probe] == [k in reference for k in probe]
        assert len(table) == len(reference)
        popped = table.pop(probe)
        assert popped == {k: reference[k] for k in probe if k in reference}
        left = {k: v for k, v in reference.items() if k not in popped}
        assert dict(table.items()) == left and set(table.keys()) == set(left)


@settings(max_examples=60, deadline=None)
@given(stored=pairs, asked=st.lists(keys, max_size=30))
def test_a_multi_table_keeps_every_value_in_order(stored: list[tuple[Any, Any]], asked: list[Any]) -> None:
    reference: dict[Any, list[Any]] = {}
    for key, value in stored:
        reference.setdefault(key, []).append(value)
    with Scratch() as scratch:
        table = scratch.table("m", multi=True)
        for part in batched(stored, 4):
            table.put(part)
        assert table.get(asked) == {k: reference[k] for k in asked if k in reference}
        assert dict(table.groups()) == reference
        popped = table.pop(asked)
        assert dict(table.groups()) == {k: v for k, v in reference.items() if k not in popped}


def _write_and_pop(table: ScratchTable, part: list[tuple[str, int]], popped: list[str]) -> dict[Any, Any]:
    """In a worker process: writes its part, then pops keys (its own or another worker's)."""
    table.put(part)
    return table.pop(popped)


def test_a_shared_table_is_written_by_worker_processes_and_read_by_key() -> None:
    """Workers write a shared table through their own connection; what they popped is gone, and `items(by_key=True)`
    reads the rest in key order whatever order the workers wrote in. A table not shared opens read-only there."""
    parts = [[(f"k{i:03d}", i) for i in range(start, 300, 3)] for start in range(3)]
    with Scratch() as scratch, ProcessPoolExecutor(max_workers=3) as pool:
        shared = scratch.table("shared", shared=True)
        popped = list(pool.map(_write_and_pop, [shared] * 3, parts, [[key for key, _ in part[:5]] for part in parts]))
        assert popped == [dict(part[:5]) for part in parts]
        assert list(shared.items(by_key=True)) == sorted(pair for part in parts for pair in part[5:])
        private = scratch.table("private")
        with pytest.raises(Exception, match="readonly"):
            pool.submit(_write_and_pop, private, [("k", 1)], []).result()
        assert len(private) == 0


@settings(max_examples=60, deadline=None)
@given(added=st.lists(st.lists(keys, max_size=8), max_size=8), asked=st.lists(keys, max_size=30))
def test_a_counter_counts_every_key_added(added: list[list[Any]], asked: list[Any]) -> None:
    with Scratch() as scratch:
        counter = scratch.counter("c")
        for page in added:
            counter.add(page)
        assert counter.counts(asked) == {k: sum(page.count(k) for page in added) for k in asked}


@settings(max_examples=60, deadline=None)
@given(added=st.lists(st.lists(keys, max_size=8), max_size=8), n=st.integers(0, 3), limit=st.integers(0, 6))
def test_a_counter_lists_the_keys_added_more_than_n_times_up_to_a_limit(added: list[list[Any]], n: int, limit: int) -> None:
    with Scratch() as scratch:
        counter = scratch.counter("c")
        for page in added:
            counter.add(page)
        counts = {k: sum(page.count(k) for page in added) for page in added for k in page}
        over = {k: c for k, c in counts.items() if c > n}
        assert counter.above(n, limit=limit) == (over if len(over) <= limit else None)


def test_few_collections_raises_the_threshold_and_restores_it_even_after_an_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), few_collections(50_000):
        assert gc.get_threshold() == (50_000, *before[1:])
        raise RuntimeError("the pass failed")
    assert gc.get_threshold() == before


def test_few_collections_leaves_what_existed_before_it_unscanned_until_it_ends_nested_or_not() -> None:
    assert gc.get_freeze_count() == 0
    with few_collections():
        assert gc.get_freeze_count() > 0  # (the count falls as frozen objects are freed: compared only to 0)
        made_during_the_pass = [0]
        with few_collections():  # a pass inside a pass freezes nothing more, and leaves the outer freeze alone
            assert any(tracked is made_during_the_pass for tracked in gc.get_objects())  # frozen ones are not listed
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_the_scratch_folder_is_removed_on_close_even_after_an_error() -> None:
    with pytest.raises(RuntimeError), Scratch() as scratch:
        scratch.table("t").put([("a", 1)])
        folder = scratch.folder
        assert (folder / "scratch.sqlite3").exists()
        raise RuntimeError("stop")
    assert not folder.exists()


def test_a_table_name_is_used_once() -> None:
    with Scratch() as scratch:
        scratch.table("references")  # an SQL keyword is a fine name
        with pytest.raises(ValueError):
            scratch.table("references")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=40), st.lists(st.integers(0, 45), max_size=4))
def test_a_tables_rows_in_ranges_are_its_rows_in_order(keys: list[int], cuts: list[int]) -> None:
    """A worker reads a stored table's rows from `start` to `stop`: the ranges of any cut, joined, are every row."""
    with Scratch() as scratch:
        table = scratch.table("t")
        table.put((key, f"value {n}") for n, key in enumerate(keys))  # a key stored again moves to the end
        bounds = [0, *sorted(cuts), None]
        ranges = [list(table.items(start=start, stop=stop)) for start, stop in zip(bounds, bounds[1:], strict=False)]
        assert [row for part in ranges for row in part] == list(table.items())


@given(st.lists(st.integers(), max_size=40), st.integers(min_value=1, max_value=9))
def test_batched_keeps_every_item_in_order(items: list[int], size: int) -> None:
    parts = list(batched(items, size))
    assert [x for part in parts for x in part] == items
    assert all(len(part) == size for part in parts[:-1]) and all(parts)


@pytest.mark.parametrize("size", [0, -1])
def test_batched_refuses_a_page_of_no_items_before_reading_any(size: int) -> None:
    def never_read() -> Iterator[int]:
        raise AssertionError("read")
        yield 0

    with pytest.raises(ValueError, match="at least 1 item"):
        batched(never_read(), size)


def test_prefetch_hands_over_the_same_items_and_the_source_error() -> None:
    assert list(prefetch(iter(range(50)))) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise ConnectionError("page 2 lost")

    got: list[int] = []
    with pytest.raises(ConnectionError, match="page 2 lost"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1]


def test_prefetch_reads_ahead_and_stops_when_the_consumer_stops() -> None:
    fetched: list[int] = []
    second_fetched = threading.Event()

    def source() -> Iterator[int]:
        for n in range(1000):
            fetched.append(n)
            if n == 1:
                second_fetched.set()
            yield n

    stream = prefetch(source())
    assert next(stream) == 0
    assert second_fetched.wait(5)  # the next page was fetched while the caller holds the first
    stream.close()
    assert len(fetched) < 10
