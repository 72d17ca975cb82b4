"""Apply's checkpoint file (helpers.evidence.checkpoint_file): which file a folder's checkpoint is, in either
format, where a finished one is kept, and its end mark read from the end only."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.evidence import checkpoint_file, compression
from helpers.evidence.checkpoint_file import (
    CHECKPOINT_FILE,
    COMPLETE,
    UNCOMPRESSED_CHECKPOINT_FILE,
    checkpoint_path,
    ends_complete,
    has_kept,
    iter_entries,
    kept_path,
)

BATCH = {"start": 0, "end": 2, "size": 2, "calls": 1, "limit_hits": 0,
         "results": [{"id": "s0", "outcome": "applied", "table": "scenes", "refs": 1}]}


def write(path: Path, *entries: dict) -> None:
    with path.open("ab") as sink:
        for entry in entries:
            checkpoint_file.append(sink, path, entry)


def test_a_new_folder_writes_the_compressed_file_and_an_older_folder_keeps_its_plain_one(tmp_path: Path) -> None:
    assert checkpoint_path(tmp_path) == tmp_path / CHECKPOINT_FILE
    write(tmp_path / UNCOMPRESSED_CHECKPOINT_FILE, BATCH)
    assert checkpoint_path(tmp_path) == tmp_path / UNCOMPRESSED_CHECKPOINT_FILE
    assert (tmp_path / UNCOMPRESSED_CHECKPOINT_FILE).read_bytes().endswith(b"\n")  # an older folder's lines, continued


@pytest.mark.parametrize("name", [CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE])
def test_entries_read_back_in_either_format_and_the_complete_mark_from_the_end(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert list(iter_entries(path)) == [] and not ends_complete(path)  # no checkpoint yet
    write(path, BATCH, BATCH)
    assert [entry for entry, _ in iter_entries(path)] == [BATCH, BATCH] and not ends_complete(path)
    write(path, COMPLETE)
    assert [entry for entry, _ in iter_entries(path)][-1] == COMPLETE and ends_complete(path)
    if name == CHECKPOINT_FILE:
        assert b"outcome" not in path.read_bytes()  # stored compressed


def test_an_entry_that_is_not_json_stops_the_reader(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_FILE
    write(path, BATCH)
    with path.open("ab") as sink:
        sink.write(compression.frame(b'{"start": 4, "resu\n'))  # a whole frame, its content cut
    write(path, BATCH)
    assert [entry for entry, _ in iter_entries(path)] == [BATCH]


def test_a_finished_checkpoint_is_kept_under_the_first_number_free_in_either_format(tmp_path: Path) -> None:
    assert not has_kept(tmp_path)
    assert kept_path(tmp_path / CHECKPOINT_FILE) == tmp_path / "checkpoint.1.jsonl.zst"
    (tmp_path / "checkpoint.1.jsonl").write_bytes(b"")  # kept by an older version: its number is taken
    assert has_kept(tmp_path)
    assert kept_path(tmp_path / CHECKPOINT_FILE) == tmp_path / "checkpoint.2.jsonl.zst"
    (tmp_path / "checkpoint.2.jsonl.zst").write_bytes(b"")
    assert kept_path(tmp_path / UNCOMPRESSED_CHECKPOINT_FILE) == tmp_path / "checkpoint.3.jsonl"
