"""Apply's checkpoint file, as apply writes it and every reader of a run folder reads it: its name, how an entry is
appended, how the entries are read back.

It sits in evidence, below the steps, because the folder's readers (a failed step's page, check-archive, the
files a step's ledger row lists, the apply confirmation) read it as apply writes it.

An entry is one JSON object: one per answered batch, then `{"complete": true}` when the whole plan was sent. The
file is `checkpoint.jsonl.zst`, each entry its own zstd frame (compression.frame): a batch's answers repeat the
same keys, outcomes and tables item after item, and the checkpoint was a run folder's largest file (its size per
document: docs/scaling.md). A frame per entry, not one frame for the file, because the file is appended to batch
by batch and must read back after a kill at any byte. A folder written before the checkpoint was compressed
holds `checkpoint.jsonl`, one line per entry: it is read, and continued, in that format, so a resume never
rewrites evidence a ledger row already hashed (as stored: docs/design.md, "One hash rule"). A re-run of a
finished apply keeps the file under the next number free in either format.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from helpers.connection import jsonio
from helpers.evidence import compression

CHECKPOINT_FILE = "checkpoint.jsonl.zst"
#: The checkpoint of run folders written before it was compressed: still read, and appended to on a resume.
UNCOMPRESSED_CHECKPOINT_FILE = "checkpoint.jsonl"
COMPLETE = {"complete": True}
#: The complete mark is well under this many bytes in either format: a reader looks for it in the file's end only.
END_MARK_BYTES = 64


def checkpoint_path(folder: Path) -> Path:
    """The checkpoint in apply's `folder`: an older folder's plain one when it holds one, else the compressed one."""
    plain = Path(folder) / UNCOMPRESSED_CHECKPOINT_FILE
    return plain if plain.exists() else Path(folder) / CHECKPOINT_FILE


def _kept(folder: Path, n: int) -> tuple[Path, Path]:
    plain = Path(folder) / f"checkpoint.{n}.jsonl"
    return plain, plain.with_name(plain.name + compression.SUFFIX)


def kept_path(path: Path) -> Path:
    """Where a finished checkpoint `path` is kept as evidence when apply runs again: the first number free in
    either format, the format (its suffix) its own."""
    n = 1
    while any(p.exists() for p in _kept(path.parent, n)):
        n += 1
    plain, packed = _kept(path.parent, n)
    return packed if compression.compressed(path) else plain


def has_kept(folder: Path) -> bool:
    """Whether an earlier, finished checkpoint was kept in `folder`: the whole plan was sent once."""
    return any(p.exists() for p in _kept(folder, 1))


def append(sink: IO[bytes], path: Path, entry: dict[str, Any]) -> None:
    """Appends `entry` to the checkpoint `path` open as `sink`, durably: flushed and fsynced before the caller
    counts the batch as answered, so a kill loses at most the entry being written."""
    sink.write(compression.encode_record(path, jsonio.dumps(entry) + b"\n"))
    sink.flush()
    os.fsync(sink.fileno())


def iter_entries(path: Path) -> Iterator[tuple[dict[str, Any], int]]:
    """Each entry of the checkpoint `path` with the offset where it ends; stops before the first one torn or
    unreadable (a kill mid-write: apply cuts it and what follows off when it resumes). A missing file has none."""
    if not path.exists():
        return
    for raw, end in compression.iter_records(path):
        try:
            entry = jsonio.loads(raw)
        except ValueError:
            return
        yield entry, end


def ends_complete(path: Path) -> bool:
    """Whether the checkpoint `path` ends with the complete mark: read from the file's end only."""
    try:
        last = compression.last_record(path, END_MARK_BYTES)
    except FileNotFoundError:
        return False
    try:
        return last is not None and bool(jsonio.loads(last).get("complete"))
    except ValueError:
        return False
