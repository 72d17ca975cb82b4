"""Per-document state too large for memory, kept in a temporary SQLite database; and page-wise streaming.

A pass over millions of documents (the dry-run's duplicate keys and a parent's totals over its children, verify's join of backup,
plan and deployment, rollback's sets) keeps one small entry per document. In Python that costs ~100 bytes
each (4 GiB at 10M documents in an analyst's kernel); here it lives in a scratch SQLite file (the standard
library's engine) and only one page of entries is in memory at a time: the caller streams its sources page
by page and looks each page's keys up in one query. The file is scratch, not evidence: it lives in the
system's temporary directory (TMPDIR; it needs ~100 bytes per document), never in the run folder, and is
removed when the `Scratch` closes.
"""

from __future__ import annotations

import gc
import itertools
import pickle
import queue
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

Key = str | int | bytes
T = TypeVar("T")
_IN_CHUNK = 900  # bound parameters per query (SQLite's historical limit is 999)
_DONE = object()


def _dump(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class ScratchTable:
    """key → value (any picklable value), or key → [values] when `multi`; loaded and read in bulk. A `shared`
    table is written by worker processes too (each opens the file writable; SQLite serialises their writes)."""

    def __init__(self, db: sqlite3.Connection, name: str, multi: bool, *, create: bool = True, shared: bool = False) -> None:
        self.db, self.name, self.multi, self.shared = db, f'"t_{name}"', multi, shared
        self.label = name
        if not create:
            return
        if multi:
            db.execute(f"CREATE TABLE {self.name} (key NOT NULL, value BLOB NOT NULL)")
            db.execute(f'CREATE INDEX "i_{name}" ON {self.name} (key)')
        else:
            db.execute(f"CREATE TABLE {self.name} (key PRIMARY KEY, value BLOB NOT NULL)")

    def put(self, pairs: Iterable[tuple[Key, Any]]) -> None:
        """Stores each (key, value); a single-valued table keeps the last value per key."""
        verb = "INSERT" if self.multi else "INSERT OR REPLACE"
        with self.db:
            self.db.executemany(f"{verb} INTO {self.name} VALUES (?, ?)", ((key, _dump(value)) for key, value in pairs))

    def load(self, pairs: Iterable[tuple[Key, Any]], chunk: int = 10_000) -> int:
        """Stores a stream of pairs in transactions of `chunk` rows (memory: one chunk); returns how many."""
        count = 0
        for part in batched(pairs, chunk):
            self.put(part)
            count += len(part)
        return count

    def get(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """The stored value (or list of values, when multi) of each key present, for one page of keys."""
        found: dict[Key, Any] = {}
        for part in batched(dict.fromkeys(keys), _IN_CHUNK):
            marks = ",".join("?" * len(part))
            for key, value in self.db.execute(f"SELECT key, value FROM {self.name} WHERE key IN ({marks}) ORDER BY rowid", part):
                if self.multi:
                    found.setdefault(key, []).append(pickle.loads(value))
                else:
                    found[key] = pickle.loads(value)
        return found

    def has(self, keys: Iterable[Key]) -> set[Key]:
        """Which of one page of keys are stored."""
        present: set[Key] = set()
        for part in batched(dict.fromkeys(keys), _IN_CHUNK):
            marks = ",".join("?" * len(part))
            present.update(key for (key,) in self.db.execute(f"SELECT DISTINCT key FROM {self.name} WHERE key IN ({marks})", part))
        return present

    def __contains__(self, key: object) -> bool:
        """One key's presence (a query per call: for rare look-ups; a page of keys goes through `has`)."""
        return self.db.execute(f"SELECT 1 FROM {self.name} WHERE key = ? LIMIT 1", (key,)).fetchone() is not None

    def pop(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """As `get`, and removes what it returns: what is left at the end was never asked for."""
        keys = list(dict.fromkeys(keys))
        found = self.get(keys)
        self.delete(keys)
        return found

    def delete(self, keys: Iterable[Key]) -> None:
        """Removes one page of keys (and their values)."""
        with self.db:
            for part in batched(dict.fromkeys(keys), _IN_CHUNK):
                self.db.execute(f"DELETE FROM {self.name} WHERE key IN ({','.join('?' * len(part))})", part)

    def items(self, *, by_key: bool = False, start: int = 0, stop: int | None = None) -> Iterator[tuple[Key, Any]]:
        """Every stored (key, value) in insertion order (in key order when `by_key`: the order of a shared table's
        rows depends on when its workers wrote them), streamed (one row per value when multi); only the rows from
        position `start` to `stop` (counted from 0; None: to the end), for a worker's range."""
        order = "key, rowid" if by_key else "rowid"
        limit = -1 if stop is None else max(0, stop - start)
        cursor = self.db.execute(f"SELECT key, value FROM {self.name} ORDER BY {order} LIMIT ? OFFSET ?", (limit, start))
        for key, value in cursor:
            yield key, pickle.loads(value)

    def groups(self) -> Iterator[tuple[Key, list[Any]]]:
        """Each stored key with all its values (for a multi table), streamed in key order."""
        rows = ((key, pickle.loads(value)) for key, value in self.db.execute(f"SELECT key, value FROM {self.name} ORDER BY key, rowid"))
        for key, group in itertools.groupby(rows, key=lambda row: row[0]):
            yield key, [value for _, value in group]

    def keys(self) -> Iterator[Key]:
        for (key,) in self.db.execute(f"SELECT DISTINCT key FROM {self.name}" if self.multi else f"SELECT key FROM {self.name} ORDER BY rowid"):
            yield key

    def __len__(self) -> int:
        return int(self.db.execute(f"SELECT COUNT(*) FROM {self.name}").fetchone()[0])

    def __reduce__(self) -> tuple[Any, tuple[str, str, bool]]:
        """Sent to a worker process (helpers.steps.parallel), the table opens there on the same file: read-only (workers
        look up what the main process stored before, and never write), or writable when it is `shared`."""
        return (_open_shared if self.shared else _open_read_only), (_path_of(self.db), self.label, self.multi)


class ScratchCounter:
    """key → how many times it was added: one row per key (WITHOUT ROWID: the key is stored once, in the primary
    key's B-tree), so counting 30M S3-key uses takes neither a value per use nor a second index."""

    def __init__(self, db: sqlite3.Connection, name: str, *, create: bool = True) -> None:
        self.db, self.name, self.label = db, f'"c_{name}"', name
        if create:
            db.execute(f"CREATE TABLE {self.name} (key PRIMARY KEY NOT NULL, n INTEGER NOT NULL) WITHOUT ROWID")

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        """Sent to a worker process (helpers.steps.parallel), the counter opens there on the same file, writable: workers
        add their keys themselves (SQLite serialises their writes; counts do not depend on their order)."""
        return _open_counter, (_path_of(self.db), self.label)

    def add(self, keys: Iterable[Key]) -> None:
        """Counts each key once more (a key given twice counts twice)."""
        with self.db:
            self.db.executemany(
                f"INSERT INTO {self.name} VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET n = n + 1", ((key,) for key in keys)
            )

    def above(self, n: int, *, limit: int) -> dict[Key, int] | None:
        """Every key added more than `n` times, with its count, in one scan, for look-ups in memory; None when
        there are more than `limit` of them (memory stays bounded: look pages up with `counts` instead)."""
        found = dict(self.db.execute(f"SELECT key, n FROM {self.name} WHERE n > ? LIMIT ?", (n, limit + 1)))
        return found if len(found) <= limit else None

    def counts(self, keys: Iterable[Key]) -> dict[Key, int]:
        """How many times each of one page of keys was added (0 when never)."""
        found = dict.fromkeys(keys, 0)
        for part in batched(found, _IN_CHUNK):
            marks = ",".join("?" * len(part))
            found.update(self.db.execute(f"SELECT key, n FROM {self.name} WHERE key IN ({marks})", part))
        return found


_READ_ONLY: dict[str, sqlite3.Connection] = {}
_WRITABLE: dict[str, sqlite3.Connection] = {}


def _path_of(db: sqlite3.Connection) -> str:
    return str(db.execute("PRAGMA database_list").fetchone()[2])


def _writable(path: str) -> sqlite3.Connection:
    """One writable connection per scratch file and worker process, as the main process's (no journal, no fsync)."""
    db = _WRITABLE.get(path)
    if db is None:
        db = _WRITABLE[path] = sqlite3.connect(path, timeout=60)
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
    return db


def _open_counter(path: str, name: str) -> ScratchCounter:
    return ScratchCounter(_writable(path), name, create=False)


def _open_shared(path: str, name: str, multi: bool) -> ScratchTable:
    return ScratchTable(_writable(path), name, multi, create=False, shared=True)


def _open_read_only(path: str, name: str, multi: bool) -> ScratchTable:
    """One read-only connection per scratch file and process, shared by its tables."""
    db = _READ_ONLY.get(path)
    if db is None:
        db = _READ_ONLY[path] = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    return ScratchTable(db, name, multi, create=False)


class Scratch:
    """A temporary SQLite database of named tables, removed on close. Not durable on purpose (journal and fsync
    off): it lives only as long as one step, and a crash simply starts that step again."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="runbook-scratch-"))
        # The workers' connections wait as long for a table a `shared` write holds (SQLite's default is 5 s).
        self.db = sqlite3.connect(self.folder / "scratch.sqlite3", isolation_level=None, check_same_thread=False, timeout=60)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA temp_store=FILE")
        self.db.execute("PRAGMA cache_size=-65536")
        self.db.isolation_level = "DEFERRED"  # `with self.db:` groups each bulk load in one transaction
        self._names: set[str] = set()

    def table(self, name: str, *, multi: bool = False, shared: bool = False) -> ScratchTable:
        """A new table; `shared`: worker processes it is sent to write it too (see ScratchTable)."""
        return ScratchTable(self.db, self._claim(name), multi, shared=shared)

    def counter(self, name: str) -> ScratchCounter:
        return ScratchCounter(self.db, self._claim(name))

    def _claim(self, name: str) -> str:
        if not name.isidentifier() or name in self._names:
            raise ValueError(f"scratch table name {name!r} is not a new identifier")
        self._names.add(name)
        return name

    def path(self, name: str) -> Path:
        """A scratch file beside the database (e.g. a stream kept for a second local pass), removed with it."""
        return self.folder / name

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


#: New containers between two young-generation passes of the cyclic collector in a pass over pages (Python's: 700).
FEWER_COLLECTIONS = 20_000


@contextmanager
def few_collections(threshold: int = FEWER_COLLECTIONS) -> Iterator[None]:
    """Python's cyclic garbage collector run every `threshold` new containers instead of every 700, for a pass
    over pages of thousands of documents: at 700 it scans each page's dicts and lists again and again, though
    reference counting frees them (a document forms no cycle). Measured: ~20% of the dry-run from a snapshot.
    Not where the HTTP client reads pages: it leaves reference cycles (httpx responses) that keep each page's
    body alive until a collection, and fewer collections let them pile up (verify's peak RSS over 110,000
    documents: 259 MiB at 700, 371 at 20,000; 703 MiB over 1.1M at 20,000).
    What exists when the outermost such pass starts is frozen (`gc.freeze`) for its length, so the passes that
    remain do not walk the interpreter's and the caller's objects each time. The previous thresholds come back and
    the freeze ends afterwards, also after an error."""
    previous = gc.get_threshold()
    froze = collect_seldom(threshold)
    try:
        yield
    finally:
        if froze:
            gc.unfreeze()
        gc.set_threshold(*previous)


def collect_seldom(threshold: int = FEWER_COLLECTIONS) -> bool:
    """`few_collections` without the way back, for a process that only runs such passes (a pool's worker: its
    initializer). Freezes what exists now (modules, the caller's state) unless something is frozen already (an
    outer pass); says whether it froze."""
    gc.set_threshold(threshold, *gc.get_threshold()[1:])
    if gc.get_freeze_count():
        return False
    gc.freeze()
    return True


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last one shorter). A size below 1 is refused: `islice` would read
    the whole source into one list (None) or never stop (0), where a page must bound memory."""
    if size < 1:
        raise ValueError(f"a page holds at least 1 item, not {size}")
    return _parts(iter(items), size)


def _parts(source: Iterator[T], size: int) -> Iterator[list[T]]:
    while part := list(itertools.islice(source, size)):
        yield part


def prefetch(pages: Iterable[T], depth: int = 1) -> Iterator[T]:
    """The same items, fetched by a background thread `depth` items ahead: the next page travels while the
    caller works on this one. Errors surface where the item would have; closing the iterator stops the thread."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fetch() -> None:
        try:
            for item in pages:
                if not offer((item, None)):
                    return
            offer((_DONE, None))
        except BaseException as error:  # every error is handed to the consumer and raised there
            offer((_DONE, error))

    worker = threading.Thread(target=fetch, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
