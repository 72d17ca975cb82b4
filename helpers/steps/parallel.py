"""Per-document work split across processes by ranges of a source (a snapshot table, the plan), merged in order.

The dry-run and verify spend their time in Python per document (parsing, the migration's rules, digests): one
core. `map_ranges` cuts a source of `total` documents into one contiguous range per worker; each worker process
reads its own range (no document crosses a pipe), runs the work on it page by page and writes each page's result
to a zstd file of pickled records in the step's scratch folder. The caller then reads the files back in range
order, so what it sees is exactly what one process working through the whole source would have produced: the
work must depend only on its page (and on read-only look-ups, such as a scratch table the main process filled
before: a `ScratchTable` passed to a worker opens there read-only). Memory stays one page per process.

With one worker (or a source too small to split) the same work runs in this process, through the same files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from helpers.evidence.compression import dump_records, load_records
from helpers.steps.scratch import batched, few_collections

#: Below this many documents per range a second process costs more (its start, the imports it shares) than it saves.
MIN_RANGE = 2_000

#: work(start, stop): one record per page of the source's documents from `start` to `stop`; `stop` is None for the
#: last range, which reads to the end of the source (a count that fell short loses no document).
RangeWork = Callable[[int, int | None], Iterable[Any]]


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count where they differ)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """`total` positions cut into at most `parts` contiguous [start, stop) ranges of near-equal size, in order
    (fewer when a range would hold fewer than MIN_RANGE)."""
    parts = max(1, min(parts, total // MIN_RANGE or 1))
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


@dataclass(frozen=True)
class RangeResults:
    """The records of every range, read back in order (re-iterable: each iteration streams the files again)."""

    files: tuple[Path, ...]

    def __iter__(self) -> Iterator[Any]:
        for path in self.files:
            yield from load_records(path)

    def discard(self) -> None:
        """Removes the files once read for the last time: the scratch folder's peak is the run's peak of disk."""
        for path in self.files:
            path.unlink(missing_ok=True)


def map_ranges(work: RangeWork, total: int, *, workers: int, folder: Path, name: str) -> RangeResults:
    """Runs `work(start, stop)` (a picklable callable yielding one record per page) over the ranges of `split(total,
    workers)`, each in its own process when there are several, and returns the records in source order. Raises the
    first range's error, if any, after every range stopped."""
    ranges = split(total, workers)
    files = _files(folder, name, len(ranges), workers)
    stops: list[int | None] = [stop for _, stop in ranges[:-1]] + [None]
    _run_each([partial(_run_range, work, start, stop, path) for (start, _), stop, path in zip(ranges, stops, files, strict=True)], workers)
    return RangeResults(files)


def _run_range(work: RangeWork, start: int, stop: int | None, path: Path) -> int:
    return dump_records(work(start, stop), path)


def map_records(results: RangeResults, work: Callable[[Any], Any], *, workers: int, folder: Path, name: str) -> RangeResults:
    """`work(record)` for every record of earlier results, each file of them in its own process when there are
    several (the same ranges again, so a second pass over what the workers wrote never crosses a pipe either), and the
    new records in the same order: read them beside the earlier ones."""
    files = _files(folder, name, len(results.files), workers)
    _run_each([partial(_run_records, work, source, path) for source, path in zip(results.files, files, strict=True)], workers)
    return RangeResults(files)


def _run_records(work: Callable[[Any], Any], source: Path, path: Path) -> int:
    with few_collections():
        return dump_records(map(work, load_records(source)), path)


def _files(folder: Path, name: str, count: int, workers: int) -> tuple[Path, ...]:
    """The scratch files of `count` ranges' results (after refusing fewer than one worker)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    folder.mkdir(parents=True, exist_ok=True)
    return tuple(folder / f"{name}.{i:04d}.pickle.zst" for i in range(count))


def _run_each(ranges: list[Callable[[], int]], workers: int) -> None:
    """Runs each range's work, in its own process when there are several (and several workers), in this one
    otherwise. Raises the first range's error, if any, after every range stopped."""
    if len(ranges) == 1 or workers == 1:
        for run in ranges:
            run()
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(ranges))) as pool:
        for future in [pool.submit(run) for run in ranges]:
            future.result()


@dataclass(frozen=True)
class Ranged:
    """A source worker processes can split: `read(start, stop)` streams its items from `start` to `stop` (stop None:
    to the end), `total` says how many it holds. Iterated, it is the whole source, in order."""

    read: Callable[[int, int | None], Iterable[Any]]
    total: int

    def __iter__(self) -> Iterator[Any]:
        return iter(self.read(0, None))


def map_pages(
    source: Ranged | Iterable[Any], work: Callable[[list[Any]], Any], *, page_size: int, workers: int, folder: Path, name: str
) -> RangeResults:
    """`work(page)` for every page of `page_size` items of `source`, in order: over ranges in `workers` processes
    when the source is `Ranged` (a local file each worker reads itself), in this process otherwise."""
    if isinstance(source, Ranged):
        return map_ranges(partial(_range_pages, source.read, page_size, work), source.total, workers=workers, folder=folder, name=name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pickle.zst"
    dump_records((work(page) for page in batched(source, page_size)), path)
    return RangeResults((path,))


def _range_pages(
    read: Callable[[int, int | None], Iterable[Any]], page_size: int, work: Callable[[list[Any]], Any], start: int, stop: int | None
) -> Iterator[Any]:
    """One range of a local file, page by page, with fewer GC passes (helpers.steps.scratch.few_collections)."""
    with few_collections():
        for page in batched(read(start, stop), page_size):
            yield work(page)
