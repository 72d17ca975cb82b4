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
from typing import Any, NamedTuple, Protocol

from .parallel import RangeResults
from .values import digest, dumps

#: The keys of a plan line the core reads. A migration may add its own (it reads them back itself).
#: `expect`/`expectAbsent` are the precondition, `set`/`unset`/`references` the change (`migration:applyBatch`);
#: `legacyStatus` groups the dry-run tables; `problems` are `{code, severity, message, field?}`.
PLAN_LINE_KEYS = ("table", "id", "action", "legacyStatus", "expect", "expectAbsent", "set", "unset", "references", "problems")


class PlanLine(NamedTuple):
    """A plan line encoded as the plan file stores it, with what the dry-run's tables and problems.csv read of it:
    a worker process encodes its lines (helpers.parallel), the main process only writes and counts them."""

    raw: bytes
    table: str
    id: str
    action: str
    legacy_status: str
    reference_types: tuple[str, ...]
    problems: tuple[dict[str, str], ...]

    @classmethod
    def of(cls, line: dict[str, Any]) -> PlanLine:
        return cls(
            dumps(line, sort_keys=True) + b"\n", line["table"], line["id"], line["action"], str(line.get("legacyStatus")),
            tuple(ref["assetType"] for ref in line.get("references", ())), tuple(line.get("problems", ())),
        )


class Verdict(Enum):
    PASS = "pass"
    FAIL = "fail"
    APPLICATION = "application"  # differs, because the application changed the document since the backup


@dataclass(frozen=True, slots=True)
class Before:
    """A backed-up document as digests: the fields the migration does not own, the owned fields the plan does
    not touch, and its updatedAt."""

    untouched: bytes
    kept_owned: bytes
    updated_at: bytes

    @classmethod
    def of(cls, migration: Migration, table: str, doc: Mapping[str, Any], touched: Iterable[str] = ()) -> Before:
        """`touched`: the fields the plan sets or removes on this document."""
        skip = set(touched)
        kept = {k: v for k, v in migration.owned_part(table, doc).items() if k not in skip}
        return cls(digest(migration.untouched_part(table, doc)), digest(kept), digest(doc.get(migration.updated_at_field)))


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
        """Fields the migration does not own differ from the backup and updatedAt moved: a legacy writer changed it."""
        if self.before is None or self.live is None:
            return False
        return not self.untouched_unchanged and digest(self.live.get(self.migration.updated_at_field)) != self.before.updated_at

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
    plans from one (helpers.parallel): the results in document order, re-iterable (kept in scratch files). `work`
    must be picklable (a module-level function, or a functools.partial of one) and depend only on its page and
    read-only look-ups (a scratch table passed to it is opened read-only in the worker). `discard()` the results after
    their last reading."""

    def __call__(self, table: str, desc: str, work: Callable[[list[dict[str, Any]]], Any]) -> RangeResults: ...


@dataclass(frozen=True)
class PlanInputs:
    """What the core gives a planner: pages of any table it reads, a scratch store for state across documents
    (helpers.scratch.Scratch), the dry-run's options (e.g. bucket_base_url), the page size, and `map_pages` for
    the per-page work worth spreading over the machine's cores. A planner may yield plan lines as dicts or already
    encoded (`helpers.plan.PlanLine`, from its workers)."""

    pages: PageSource
    scratch: Any
    options: Mapping[str, Any]
    page_size: int
    map_pages: PageMap | None = None  # always given by the dry-run; a planner that needs no workers may ignore it


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
    #: Per table: asset field -> the assetType of the reference row that tracks it (empty: it creates none).
    reference_fields: Mapping[str, Mapping[str, str]]
    #: Per table: the entityType its reference rows carry.
    entity_types: Mapping[str, str]
    #: Plan actions that change the deployment, and every action in display order.
    changing_actions: frozenset[str]
    actions: tuple[str, ...]
    #: Plans every document: yields plan lines (dicts with PLAN_LINE_KEYS, plus its own keys).
    planner: Callable[[PlanInputs], Iterator[dict[str, Any] | PlanLine]]
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
    #: The field legacy writers move on every write (tells "changed by the application" from damage).
    updated_at_field: str = "updatedAt"

    def label(self, table: str) -> str:
        return self.labels.get(table, table)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Sent to a worker process (helpers.parallel) by its id: the worker finds it in the registry (its planner
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


def _registered(migration_id: str) -> Migration:
    from .migrations import get

    return get(migration_id)


def reference_key(entity_id: str, asset_type: str) -> str:
    """The key of (document id, asset type) in scratch tables. Text that sorts with the document id, so a page's
    keys are neighbours in SQLite's index, as pages come in id order; a hash scattered them over the whole index
    (at 3M keys: 20 us per key stored and looked up, against 7 us now)."""
    return f"{entity_id}\0{asset_type}"
