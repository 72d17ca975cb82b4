"""The compressed formats (helpers.evidence.compression) round-trip, and their bytes depend only on the content."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.connection import jsonio
from helpers.connection.values import Int64
from helpers.evidence import compression

LINES = st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=60)
VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1).map(Int64)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@contextmanager
def _folder() -> Iterator[Path]:
    """A folder per example (hypothesis runs a test many times in one pytest tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="compression-test-") as name:
        yield Path(name)


@given(lines=LINES, cuts=st.lists(st.integers(1, 500), min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_lines_round_trip_and_the_bytes_do_not_depend_on_how_they_were_written(lines: list[bytes], cuts: list[int]) -> None:
    with _folder() as folder:
        whole, pieces = folder / "whole.jsonl.zst", folder / "pieces.jsonl.zst"
        data = b"".join(lines)
        with compression.open_write(whole) as sink:
            sink.write(data)
        with compression.open_write(pieces) as sink:  # the same content in other write sizes (one line, a page, ...)
            at, i = 0, 0
            while at < len(data):
                sink.write(data[at:at + cuts[i % len(cuts)]])
                at, i = at + cuts[i % len(cuts)], i + 1
        assert list(compression.iter_lines(whole)) == lines
        assert whole.read_bytes() == pieces.read_bytes()  # a stored-bytes hash is a content hash, for one level


@given(lines=st.lists(VALUES, max_size=20))
@settings(max_examples=60, deadline=None)
def test_plan_lines_of_any_convex_value_round_trip(lines: list[Any]) -> None:
    with _folder() as folder:
        path = folder / "plan.jsonl.zst"
        with compression.open_write(path) as sink:
            for line in lines:
                sink.write(jsonio.dumps({"value": line}) + b"\n")
        read = [jsonio.loads(raw)["value"] for raw in compression.iter_lines(path)]
    assert [jsonio.dumps(value) for value in read] == [jsonio.dumps(value) for value in lines]  # NaN != NaN: compare encodings


@given(records=st.lists(st.lists(VALUES, max_size=5), max_size=30))
@settings(max_examples=60, deadline=None)
def test_worker_records_round_trip_in_order(records: list[Any]) -> None:
    with _folder() as folder:
        path = folder / "range.pickle.zst"
        assert compression.dump_records(records, path) == len(records)
        assert [jsonio.dumps(r) for r in compression.load_records(path)] == [jsonio.dumps(r) for r in records]


@given(lines=LINES)
@settings(max_examples=30, deadline=None)
def test_a_file_not_named_zst_is_read_and_written_as_it_is(lines: list[bytes]) -> None:
    with _folder() as folder:
        path = folder / "plan.jsonl"
        with compression.open_write(path) as sink:
            sink.writelines(lines)
        assert path.read_bytes() == b"".join(lines) and list(compression.iter_lines(path)) == lines
