"""The compressed formats (helpers.evidence.compression) round-trip, and their bytes depend only on the content."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
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
    stored = {}
    with _folder() as folder:
        data = b"".join(lines)
        for threads in (0, 1, 2):
            whole, pieces = folder / f"whole{threads}.jsonl.zst", folder / f"pieces{threads}.jsonl.zst"
            with compression.open_write(whole, threads=threads) as sink:
                sink.write(data)
            with compression.open_write(pieces, threads=threads) as sink:  # the same content in other write sizes (one line, a page, ...)
                at, i = 0, 0
                while at < len(data):
                    sink.write(data[at:at + cuts[i % len(cuts)]])
                    at, i = at + cuts[i % len(cuts)], i + 1
            assert list(compression.iter_lines(whole)) == lines
            assert whole.read_bytes() == pieces.read_bytes()  # a stored-bytes hash is a content hash, for one level and mode
            stored[threads] = whole.read_bytes()
    assert stored[1] == stored[2]  # libzstd's threads: the same bytes for any count of them


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


# --- appendable files: one frame per record -------------------------------------------------------------------

RECORDS = st.lists(st.binary(max_size=400).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=30)


def _append_all(path: Path, records: list[bytes]) -> list[int]:
    """Writes `records` as an appending writer does, one at a time; returns the offset each record ends at."""
    ends = []
    with path.open("ab") as sink:
        for record in records:
            sink.write(compression.encode_record(path, record))
            ends.append(sink.tell())
    return ends


@given(records=RECORDS, name=st.sampled_from(["log.jsonl.zst", "log.jsonl"]))
@settings(max_examples=60, deadline=None)
def test_appended_records_round_trip_with_the_offset_each_ends_at(records: list[bytes], name: str) -> None:
    with _folder() as folder:
        path = folder / name
        ends = _append_all(path, records)
        assert list(compression.iter_records(path)) == list(zip(records, ends, strict=True))
        if compression.compressed(path):  # concatenated frames are one zstd stream: any zstd reader reads the file
            assert b"".join(compression.iter_lines(path)) == b"".join(records)
        else:
            assert path.read_bytes() == b"".join(records)


@given(records=RECORDS.filter(bool), name=st.sampled_from(["log.jsonl.zst", "log.jsonl"]), data=st.data())
@settings(max_examples=60, deadline=None)
def test_a_record_cut_anywhere_reads_as_the_records_before_it(records: list[bytes], name: str, data: st.DataObject) -> None:
    """A kill mid-append leaves the last record cut at any byte: the reader stops before it, and sees it whole
    again once it is rewritten."""
    with _folder() as folder:
        path = folder / name
        ends = _append_all(path, records)
        whole = path.read_bytes()
        start = ends[-2] if len(records) > 1 else 0
        cut = data.draw(st.integers(start, ends[-1] - 1), label="cut")
        path.write_bytes(whole[:cut])
        assert list(compression.iter_records(path)) == list(zip(records[:-1], ends[:-1], strict=True))
        assert compression.last_record(path, 64) is None or cut == start  # a cut record is never the last one read
        path.write_bytes(whole[:start])
        _append_all(path, records[-1:])
        assert [record for record, _ in compression.iter_records(path)] == records


def test_every_cut_of_the_last_frame_and_garbage_after_the_frames_stop_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.zst"
    records = [b'{"start":0}\n', b'{"start":1,"results":["' + b"x" * 5000 + b'"]}\n']
    ends = _append_all(path, records)
    whole = path.read_bytes()
    for cut in range(ends[0], ends[1]):  # every byte offset inside the last frame, its checksum included
        path.write_bytes(whole[:cut])
        assert list(compression.iter_records(path)) == [(records[0], ends[0])]
    for garbage in (b"\x00" * 40, b"\x28\xb5\x2f\xfd" + b"\x00" * 12, whole[ends[0]:ends[0] + 20]):  # what a crash leaves
        path.write_bytes(whole + garbage)
        assert list(compression.iter_records(path)) == list(zip(records, ends, strict=True))
    flipped = bytearray(whole)
    flipped[ends[1] - 2] ^= 0xFF  # the checksum tells a garbled last frame from a whole one
    path.write_bytes(bytes(flipped))
    assert list(compression.iter_records(path)) == [(records[0], ends[0])]


@pytest.mark.parametrize("name", ["log.jsonl.zst", "log.jsonl"])
def test_the_last_record_is_read_from_the_end_only_when_whole(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    mark = b'{"complete":true}\n'
    noise = random.Random(0).randbytes(300).hex().encode()  # a record that compresses to more than the end read
    _append_all(path, [b'{"start":0,"results":["' + noise + b'"]}\n', mark])
    assert compression.last_record(path, 64) == mark
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    assert compression.last_record(path, 64) is None
    path.write_bytes(whole[: len(whole) - len(compression.encode_record(path, mark))])
    assert compression.last_record(path, 64) is None  # the last record does not fit in the end read
    path.write_bytes(compression.encode_record(path, mark))
    assert compression.last_record(path, 64) == mark  # a file of one short record
