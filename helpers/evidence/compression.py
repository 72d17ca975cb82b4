"""zstd-compressed files for the run folder's per-document files (the plan) and the scratch files of a step.

A plan line is ~3 KB of JSON that repeats the same keys and much of the same text from line to line: zstd stores
it in ~140 bytes (4.5%), at ~3 µs per line to write and ~7 µs to read, so a 10M-document run folder fits beside
its backup on a laptop. Files are streamed both ways (one frame, written and read a buffer at a time):
memory does not grow with the file.

A file is compressed exactly when its name ends in `.zst`; everything else is read as it is, so run folders
written before compression (a plain `plan/plan.jsonl`) still read. The evidence chain hashes files as stored
(docs/design.md, "Evidence"): a `.zst` file's sha256 is that of its compressed bytes.

Output is deterministic for a given input and level (one frame, no worker threads, no content size written):
the same plan lines give the same bytes whether one process or several planned them.

A file that grows by appending (apply's checkpoint, one record per answered batch) holds each record as a zstd
frame of its own (`frame`): frames one after the other are still one valid zstd stream (`zstd -d` reads the
file), and a kill mid-write can spoil only the last frame, which `iter_records` then stops before, as it stops
before the last line of a plain file when that line has no newline.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import zstandard

SUFFIX = ".zst"
#: zstd's fastest regular level. Measured on 22,000 plan lines (66 MB): level 1 wrote 135.7 bytes a line in 64 ms,
#: level 3 (the default) 137.5 bytes in 251 ms: the lines repeat so much that a stronger search finds nothing more.
LEVEL = 1
#: How much of a file is read at a time when its records are read back frame by frame.
CHUNK = 1 << 16
#: The four bytes every zstd frame starts with.
FRAME_MAGIC = b"\x28\xb5\x2f\xfd"


def compressed(path: Path) -> bool:
    return Path(path).name.endswith(SUFFIX)


@contextmanager
def open_write(path: Path, *, level: int = LEVEL, threads: int = 0) -> Iterator[IO[bytes]]:
    """A binary sink writing `path`: zstd-compressed when the name ends in .zst, else as is. The frame is
    finished and the file closed on leaving the block. `threads` >= 1 compresses in that many of libzstd's own
    threads (off the GIL, so on a core the caller leaves idle); its bytes are the same for any such count, though
    not those of `threads=0`."""
    with Path(path).open("wb") as raw:
        if not compressed(path):
            yield raw
            return
        with zstandard.ZstdCompressor(level=level, threads=threads).stream_writer(raw, closefd=False) as sink:
            yield sink


@contextmanager
def open_read(path: Path) -> Iterator[io.BufferedReader[Any]]:
    """A buffered binary source of `path`'s content (decompressed when the name ends in .zst): iterate it for lines."""
    with Path(path).open("rb") as raw:
        if not compressed(path):
            yield raw
            return
        with zstandard.ZstdDecompressor().stream_reader(raw, closefd=False) as source, io.BufferedReader(source) as lines:
            yield lines


def iter_lines(path: Path) -> Iterator[bytes]:
    """Every line of `path`'s content, newline included, streamed."""
    with open_read(path) as source:
        yield from source


def dump_records(records: Iterable[Any], path: Path) -> int:
    """Pickles each record into a zstd file (a worker's results for one range); returns how many."""
    count = 0
    with open_write(path) as sink:
        for record in records:
            pickle.dump(record, sink, protocol=pickle.HIGHEST_PROTOCOL)
            count += 1
    return count


def load_records(path: Path) -> Iterator[Any]:
    """The records `dump_records` wrote, in order, one at a time."""
    with open_read(path) as source:
        while source.peek(1):
            yield pickle.load(source)


def frame(data: bytes, *, level: int = LEVEL) -> bytes:
    """`data` as one complete zstd frame that stands alone, to be appended to a file. It carries a checksum, so a
    frame cut or garbled by a crash is told from a whole one by the frame itself, not by what follows it."""
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)


def encode_record(path: Path, data: bytes) -> bytes:
    """`data` as the next record of the appendable file `path`: a frame when the name ends in .zst, else as is
    (a plain file's record is a line: `data` ends with its newline)."""
    return frame(data) if compressed(path) else data


def iter_records(path: Path) -> Iterator[tuple[bytes, int]]:
    """Each record of an appendable file, in order, with the offset where it ends: a frame's content for a .zst
    file, a line (newline included) for any other. Stops before the first record cut short or undecodable (a
    frame unfinished or failing its checksum, a line without its newline): whatever follows it is a kill's leftovers."""
    if not compressed(path):
        end = 0
        for line in iter_lines(path):
            if not line.endswith(b"\n"):
                return
            end += len(line)
            yield line, end
        return
    decompressor = zstandard.ZstdDecompressor()
    end, pending = 0, b""
    with Path(path).open("rb") as source:
        while pending := pending or source.read(CHUNK):
            reader, parts, fed = decompressor.decompressobj(), [], 0
            while not reader.eof:
                pending = pending or source.read(CHUNK)
                if not pending:
                    return  # the file ends inside this frame
                try:
                    parts.append(reader.decompress(pending))
                except zstandard.ZstdError:
                    return
                fed, pending = fed + len(pending), b""
            pending = reader.unused_data
            end += fed - len(pending)
            yield b"".join(parts), end


def last_record(path: Path, within: int) -> bytes | None:
    """The last record of an appendable file when it is whole and lies in the file's last `within` bytes (a
    short end mark), read without reading the rest of the file; else None."""
    with Path(path).open("rb") as source:
        start = max(0, source.seek(0, os.SEEK_END) - within)
        source.seek(start)
        tail = source.read()
    if not compressed(path):
        _, newline, line = tail[:-1].rpartition(b"\n")
        whole = bool(newline) or start == 0  # the line starts inside the tail
        return line + b"\n" if tail.endswith(b"\n") and whole else None
    at = tail.rfind(FRAME_MAGIC)
    if at < 0:
        return None
    reader = zstandard.ZstdDecompressor().decompressobj()
    try:
        content = reader.decompress(tail[at:])
    except zstandard.ZstdError:
        return None
    return content if reader.eof and not reader.unused_data else None
