"""What the core asks of a migration: one declared unit (tables, owned fields, planner, its own checks, labels).

The core (backup, plan file, apply engine, verify's join, rollback, evidence, runner, display) runs any
migration declared so; a migration is one folder under `helpers/migrations/` whose `__init__.py` exposes
`MIGRATION`, found by id through `helpers.migrations.get`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from helpers.connection.calls import SideRows
from helpers.connection.values import digest, dumps
from helpers.migrations import get
from helpers.steps.parallel import RangeResults

if TYPE_CHECKING:
    from helpers.steps.plan_tally import PlanPage

#: The keys of a plan line the core reads. A migration may add its own (it reads them back itself; the key its
#: `status_key` names groups the dry-run tables). `expect`/`expectAbsent` are the precondition, `set`/`unset` the
#: change and `references` the side rows to create (`migration:applyBatch`); `problems` are `{code, severity, message, field?}`.
PLAN_LINE_KEYS = ("table", "id", "action", "expect", "expectAbsent", "set", "unset", "references", "problems")


class PlanLine(NamedTuple):
    """A plan line encoded as the plan file stores it, with what the dry-run's tables and problems.csv read of it:
    a worker process encodes its lines (helpers.steps.parallel), the main process only writes and counts them. `status`
    is the line's value under the migration's `status_key`, `side_kinds` its side rows' kinds, `untracked` how many
    fields the line says it holds untracked (`untrackedAssets`, a document the plan leaves alone)."""

    raw: bytes
    table: str
    id: str
    action: str
    status: str
    side_kinds: tuple[str, ...]
    problems: tuple[dict[str, str], ...]
    untracked: int

    @classmethod
    def of(cls, line: dict[str, Any], status_key: str | None, side_kind: str | None) -> PlanLine:
        return cls(
            dumps(line, sort_keys=True) + b"\n", line["table"], line["id"], line["action"],
            str(line.get(status_key)) if status_key else "all",
            tuple(str(ref.get(side_kind)) if side_kind else "None" for ref in line.get("references", ())),
            tuple(line.get("problems", ())), len(line.get("untrackedAssets", ())),
        )


class Verdict(Enum):
    PASS = "pass"
    FAIL = "fail"
    APPLICATION = "application"  # differs, because the application changed the document since the backup


@dataclass(frozen=True, slots=True)
class Before:
    """A backed-up document as digests: the fields the migration does not own, the owned fields the plan does
    not touch, and the field legacy writers move on every write (`Migration.updated_at_field`)."""

    untouched: bytes
    kept_owned: bytes
    updated_at: bytes

    @classmethod
    def of(cls, migration: Migration, table: str, doc: Mapping[str, Any], touched: Iterable[str] = ()) -> Before:
        """`touched`: the fields the plan sets or removes on this document."""
        skip = set(touched)
        kept = {k: v for k, v in migration.owned_part(table, doc).items() if k not in skip}
        updated_at = doc.get(migration.updated_at_field) if migration.updated_at_field else None
        return cls(digest(migration.untouched_part(table, doc)), digest(kept), digest(updated_at))


@dataclass(frozen=True, slots=True)
class Planned:
    """A plan line as verify needs it: its action, whether it changes the document, the fields it sets (with a
    digest of their values), and the fields it removes with the values it expected them to hold."""

    action: str
    changes: bool
    set_fields: tuple[str, ...]
    set_digest: bytes
    removed: dict[str, Any]

    @classmethod
    def of(cls, migration: Migration, line: Mapping[str, Any]) -> Planned:
        unset = line.get("unset", ())
        removed = {f: line["expect"][f] for f in unset if f in line["expect"]}
        return cls(line["action"], migration.changes(line), tuple(sorted(line["set"])), digest(line["set"]), removed)

    @property
    def touched(self) -> tuple[str, ...]:
        return (*self.set_fields, *self.removed)

    @property
    def migratable(self) -> bool:
        return self.action != "problem"


@dataclass(slots=True)
class Joined:
    """One document as the backup, the plan and the deployment know it (each may be missing)."""

    migration: Migration
    table: str
    before: Before | None
    plan: Planned | None
    live: dict[str, Any] | None
    _untouched: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def untouched_unchanged(self) -> bool:
        """The fields the migration does not own equal the backup's (digested once per document: two checks ask)."""
        assert self.before is not None and self.live is not None
        if self._untouched is None:
            self._untouched = digest(self.migration.untouched_part(self.table, self.live))
        return self._untouched == self.before.untouched

    @property
    def changed_by_application(self) -> bool:
        """Fields the migration does not own differ from the backup and the migration's `updated_at_field` moved:
        a legacy writer changed it (never, for a migration that names no such field)."""
        field = self.migration.updated_at_field
        if self.before is None or self.live is None or field is None:
            return False
        return not self.untouched_unchanged and digest(self.live.get(field)) != self.before.updated_at

    @property
    def in_planned_state(self) -> bool:
        """Every field the plan sets holds its value and every field it removes is absent."""
        plan, live = self.plan, self.live
        if plan is None or live is None or not all(f in live for f in plan.set_fields):
            return False
        if any(f in live for f in plan.removed):
            return False
        return digest({f: live[f] for f in plan.set_fields}) == plan.set_digest


def verdict(ok: bool, doc: Joined) -> Verdict:
    """PASS, else FAIL, unless the application changed the document since the backup (then APPLICATION)."""
    if ok:
        return Verdict.PASS
    return Verdict.APPLICATION if doc.changed_by_application else Verdict.FAIL


@dataclass(frozen=True)
class DocumentCheck:
    """A pure check over one joined document; `detail` says, for a failed document, what of it failed."""

    name: str
    description: str
    run: Callable[[Joined], Verdict | None]
    detail: Callable[[Joined], str] | None = None


class CrossDocumentCheck(Protocol):
    """A check that needs more than one document (a parent's totals over its children, say). Verify hands it
    every joined page of each table in the migration's order; per-document state belongs in scratch tables."""

    name: str
    description: str

    def page(self, table: str, page: Sequence[Joined]) -> Iterator[tuple[str, Verdict | None]]: ...


class PageSource(Protocol):
    """Where a planner reads: the backup snapshot or the live tables, one page of documents at a time."""

    def __call__(self, table: str, desc: str) -> Iterator[list[dict[str, Any]]]: ...


class PageMap(Protocol):
    """`work(page)` over every page of a table, in worker processes over ranges of the snapshot when the dry-run
    plans from one (helpers.steps.parallel): the results in document order, re-iterable (kept in scratch files). `work`
    must be picklable (a module-level function, or a functools.partial of one) and depend only on its page and
    read-only look-ups (a scratch table passed to it is opened read-only in the worker). `discard()` the results after
    their last reading."""

    def __call__(self, table: str, desc: str, work: Callable[[list[dict[str, Any]]], Any]) -> RangeResults: ...


class StoredMap(Protocol):
    """`work(page)` over every page of the values a planner stored in a scratch table (in insertion order), in worker
    processes over ranges of its rows, as `PageMap` does over a table: a second pass over what was read once."""

    def __call__(self, stored: Any, desc: str, work: Callable[[list[Any]], Any]) -> RangeResults: ...


class ResultsMap(Protocol):
    """`work(record)` over each record of earlier results (`PageMap`'s or `StoredMap`'s), in worker processes over the
    same ranges, the new records in the same order (one per earlier record): a second pass that needs what the first
    found across every range (`work` is sent to every worker)."""

    def __call__(self, results: RangeResults, desc: str, work: Callable[[Any], Any]) -> RangeResults: ...


@dataclass(frozen=True)
class PlanInputs:
    """What the core gives a planner: pages of any table it reads, a scratch store for state across documents
    (helpers.steps.scratch.Scratch), the dry-run's options (e.g. bucket_base_url), the page size, and `map_pages`,
    `map_stored` and `map_results` for the per-page work worth spreading over the machine's cores. A planner may
    yield plan lines as dicts, already encoded (`PlanLine`), or as whole pages its workers encoded and counted
    (`helpers.steps.plan_tally.PlanPage`)."""

    pages: PageSource
    scratch: Any
    options: Mapping[str, Any]
    page_size: int
    # Always given by the dry-run; a planner that needs no workers may ignore them.
    map_pages: PageMap | None = None
    map_stored: StoredMap | None = None
    map_results: ResultsMap | None = None


@dataclass(frozen=True)
class Migration:
    """One migration, declared. Everything the core must know of it, and nothing it does not."""

    id: str
    title: str
    predecessor: str | None
    #: The tables whose documents it plans, in plan order (verify joins them in this order too).
    tables: tuple[str, ...]
    #: Per table, the fields it may set or remove. Every other field (system fields included) must stay exactly
    #: as it was: verify's `legacy_fields_unchanged`. Rollback *strip* removes what the plan set of these.
    owned_fields: Mapping[str, frozenset[str]]
    #: Plan actions that change the deployment, and every action in display order.
    changing_actions: frozenset[str]
    actions: tuple[str, ...]
    #: Plans every document: yields plan lines (dicts with PLAN_LINE_KEYS, plus its own keys).
    planner: Callable[[PlanInputs], Iterator[dict[str, Any] | PlanLine | PlanPage]]
    #: Its own document checks, after the core's, and its cross-document checks (built per verify pass).
    checks: tuple[DocumentCheck, ...] = ()
    cross_checks: Callable[[Any], Sequence[CrossDocumentCheck]] = lambda _scratch: ()
    #: Refuses (raises PreconditionFailed) when the deployment is not ready for it (its predecessor not applied, say).
    require: Callable[[Any], None] | None = None
    #: Table -> the label its dry-run tables, charts, statistics and ledger counts use.
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Per table: field it writes -> the fields it is built from, field it removes -> the fields that carry it
    #: (the analyst's before/after view shows them beside it).
    derived_from: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    #: The rollback modes that make sense for it ("strip" removes what it set; "restore" puts back the backup).
    rollback_modes: tuple[str, ...] = ("strip", "restore")
    #: Its folder: README.md, mapping.md, fields.md, its Convex schema fragment.
    folder: Path | None = None
    #: The field legacy writers move on every write (tells "changed by the application" from damage); None: none.
    updated_at_field: str | None = None
    #: The rows it creates beside the documents it changes (None: it creates none).
    side_rows: SideRows | None = None
    #: The plan line key whose value groups the dry-run tables (the document's status before it, say); None: one group.
    status_key: str | None = None

    def label(self, table: str) -> str:
        return self.labels.get(table, table)

    def encode(self, line: dict[str, Any]) -> PlanLine:
        """A plan line as the plan file stores it, with what the dry-run counts of it."""
        return PlanLine.of(line, self.status_key, self.side_rows.kind if self.side_rows is not None else None)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Sent to a worker process (helpers.steps.parallel) by its id: the worker finds it in the registry (its planner
        and checks are functions, which pickle by name anyway)."""
        return _registered, (self.id,)

    def untouched_part(self, table: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The fields this migration never writes (system fields included): what must stay exactly as it was."""
        owned = self.owned_fields.get(table, frozenset())
        return {k: v for k, v in doc.items() if k not in owned}

    def owned_part(self, table: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        owned = self.owned_fields.get(table, frozenset())
        return {k: v for k, v in doc.items() if k in owned}

    def changes(self, line: Mapping[str, Any]) -> bool:
        return line["action"] in self.changing_actions

    def side_sources(self, table: str) -> Mapping[str, str]:
        """Document field -> kind of the side row tracking it, for one table (empty: none)."""
        return self.side_rows.sources.get(table, {}) if self.side_rows is not None else {}

def _registered(migration_id: str) -> Migration:

    return get(migration_id)


def reference_key(owner: str, kind: str) -> str:
    """The key of (document id, side row kind) in scratch tables. Text that sorts with the document id, so a page's
    keys are neighbours in SQLite's index, as pages come in id order; a hash scattered them over the whole index
    (at 3M keys: 20 us per key stored and looked up, against 7 us now)."""
    return f"{owner}\0{kind}"


#: The actions of a backfill's plan lines (`backfill`).
BACKFILL, NO_CHANGE = "backfill", "no_change"


class _ReadRecorder(dict[str, Any]):
    """A document that notes which fields a rule read: they become the plan line's precondition, so apply
    writes only onto the document the rule saw (a field it read and someone changed since makes a conflict).
    `[]`, `get` and `in` note one field; iterating it (keys, values, items) notes them all."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        super().__init__(doc)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self.read.update(super().keys())
        return super().__iter__()

    def keys(self) -> Any:
        self.read.update(super().keys())
        return super().keys()

    def values(self) -> Any:
        self.read.update(super().keys())
        return super().values()

    def items(self) -> Any:
        self.read.update(super().keys())
        return super().items()


def backfill(
    *,
    id: str,
    title: str,
    predecessor: str | None,
    table: str,
    fields: Sequence[str],
    migrate_one: Callable[[Mapping[str, Any]], Mapping[str, Any] | None],
    checks: tuple[DocumentCheck, ...] = (),
    folder: Path | None = None,
    **declared: Any,
) -> Migration:
    """A one-table migration from one pure function, after get-convex/migrations' `migrations.define({table,
    migrateOne})`: `migrate_one(doc)` returns the fields to set (a subset of `fields`), or None/{} to leave the
    document alone. The planner, apply's compare-and-set (every field it read, as it was, and the fields it sets),
    verify (the core's checks, and `migrate_one` recomputed on each live document it changed, without `fields`,
    agrees with what the document holds) and rollback *strip* (removes what it set) follow.
    `declared`: any other `Migration` field (labels, rollback_modes, require, updated_at_field, ...)."""
    owned = frozenset(fields)

    def plan_one(doc: Mapping[str, Any]) -> dict[str, Any]:
        seen = _ReadRecorder(doc)
        changes = dict(migrate_one(seen) or {})
        if not set(changes) <= owned:
            raise ValueError(f"{id}: migrate_one set {sorted(set(changes) - owned)}, which are not among its fields {sorted(owned)}")
        to_set = {f: v for f, v in changes.items() if f not in doc or digest(doc[f]) != digest(v)}
        line = {"table": table, "id": doc["_id"], "unset": [], "references": [], "problems": []}
        if not to_set:
            return {**line, "action": NO_CHANGE, "expect": {}, "expectAbsent": [], "set": {}}
        read = seen.read
        return {
            **line,
            "action": BACKFILL,
            "expect": {f: doc[f] for f in sorted(read) if f in doc} | {f: doc[f] for f in to_set if f in doc},
            "expectAbsent": sorted({f for f in read if f not in doc} | {f for f in to_set if f not in doc}),
            "set": to_set,
        }

    def plan(inputs: PlanInputs) -> Iterator[dict[str, Any]]:
        for page in inputs.pages(table, declared.get("labels", {}).get(table, table)):
            yield from (plan_one(doc) for doc in page)

    def recomputed(doc: Joined) -> Verdict | None:
        if doc.live is None or doc.plan is None or not doc.plan.changes:
            return None
        expected = dict(migrate_one({k: v for k, v in doc.live.items() if k not in owned}) or {})
        return verdict(all(f in doc.live and digest(doc.live[f]) == digest(v) for f, v in expected.items()), doc)

    check = DocumentCheck("backfill_recomputed", "migrate_one, run again on each document it changed (without the fields "
                          "it sets), computes what the document holds", recomputed)
    return Migration(
        id=id, title=title, predecessor=predecessor, tables=(table,), owned_fields={table: owned},
        changing_actions=frozenset({BACKFILL}), actions=(BACKFILL, NO_CHANGE), planner=plan,
        checks=(check, *checks), folder=folder, **declared,
    )
