"""Verify: after apply, prove the deployment holds what the plan promised and nothing else changed.

Three sources meet per document: the backup (the state before), the plan (the promise) and the live
document (the state after), joined into one `Joined` record in one streaming pass. Every check is a small
pure function over such records (or over one tracked field and its side rows) returning a `Verdict`, so each can be
called alone in a unit test with hand-built documents.

A document whose legacy fields another writer changed after the backup (legacy writers always move the
migration's `updated_at_field`) is never blamed on the migration: it is listed as "changed by the application since the
migration", with the advice to re-plan it. Verify fails only for what the migration did wrong.

The core's checks hold for every migration (fields it does not own unchanged, the plan's changes written and
nothing else, its side rows equal the fields they track, no document lost); the migration adds its own document checks
and cross-document checks (helpers/steps/migration.py). Memory stays bounded by the page size: the per-document
digests and side rows live in a scratch SQLite file (helpers/steps/scratch.py) and each page of live documents looks
its own up. Live documents neither the backup nor the plan knows were created after the snapshot: they are
listed apart (not a failure), with the advice to run again in a new run folder.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

from helpers.connection.calls import SideRows, iter_pages
from helpers.connection.transport import ConvexTransport
from helpers.connection.values import digest
from helpers.evidence.run_folder import locked_step, require_migration
from helpers.steps import names
from helpers.steps.backup import iter_backup_documents, read_backup
from helpers.steps.migration import (
    Before,
    DocumentCheck,
    Joined,
    Migration,
    Planned,
    Verdict,
    reference_key,
    verdict,
)
from helpers.steps.parallel import Ranged, default_workers, map_pages
from helpers.steps.plan import iter_plan_lines, paged_progress, read_plan
from helpers.steps.scratch import Scratch, ScratchTable, batched, collect_seldom, prefetch

EXAMPLES = 5
RE_PLAN_ADVICE = (
    "These documents were changed by the application after the backup (their legacy fields and the field legacy "
    "writers move on every write changed): "
    "the migration did not do this. To bring them up to date, run a new dry-run in a new run folder (backup, "
    "dry-run, apply, verify): it plans them from their current state."
)
NEW_DOCUMENTS_ADVICE = (
    "These documents were created after the backup snapshot this run planned from, so the migration did not see "
    "them and they are not migrated. To migrate them, run again in a new run folder (backup, dry-run, apply, "
    "verify): its snapshot includes them."
)
UNTRACKED_ADVICE = (
    "These documents hold asset fields that no reference tracks, and the plan left them alone (blocked: their "
    "problems are in plan/problems.csv), so tracking_complete does not cover them. Resolve their problems, then "
    "run again in a new run folder: its plan tracks them."
)


class Check(BaseModel):
    name: str
    description: str
    passed: bool
    checked: int
    failed: int
    explained: int = 0
    examples: list[str] = []
    note: str = ""

    @property
    def result(self) -> str:
        return "pass" if self.passed else "FAIL"


class ChangedByApplication(BaseModel):
    """Documents the application changed since the migration: not a failure, but no longer what the plan saw."""

    count: int = 0
    examples: list[str] = []
    advice: str = RE_PLAN_ADVICE


class CreatedAfterSnapshot(BaseModel):
    """Live documents neither the backup nor the plan knows: created after the snapshot. Not a failure (the
    migration never saw them), but not migrated either."""

    count: int = 0
    examples: list[str] = []
    advice: str = NEW_DOCUMENTS_ADVICE


class UntrackedAssets(BaseModel):
    """Assets on documents the plan blocked that no reference tracks: not a failure of the migration (it was
    told to leave them alone), but outside what tracking_complete covers."""

    assets: int = 0
    documents: int = 0
    examples: list[str] = []
    advice: str = UNTRACKED_ADVICE


class VerifyReport(BaseModel):
    #: Required: a file that names no migration is refused, never judged as the first one's.
    migration_id: str
    plan_sha256: str
    backup_sha256: str
    checks: list[Check]
    changed_by_others: list[str]  # up to 100 ids of changed_by_application, for older readers
    changed_by_application: ChangedByApplication = ChangedByApplication()
    created_after_snapshot: CreatedAfterSnapshot = CreatedAfterSnapshot()
    untracked_assets: UntrackedAssets = UntrackedAssets()

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


# -- document checks (pure) ------------------------------------------------------------------------------


def check_planned_fields_written(doc: Joined) -> Verdict | None:
    """A document the plan changes holds exactly the values of the plan's `set` (Convex deep equality)."""
    if doc.plan is None or not doc.plan.changes or doc.live is None:
        return None
    return verdict(doc.in_planned_state, doc)


def check_nothing_outside_plan_changed(doc: Joined) -> Verdict | None:
    """The fields the migration owns that the plan does not touch are as the backup had them (present or absent,
    same values)."""
    if doc.before is None or doc.live is None:
        return None
    touched = set(doc.plan.touched) if doc.plan is not None else set()  # empty unless the plan changes it
    kept = {k: v for k, v in doc.migration.owned_part(doc.table, doc.live).items() if k not in touched}
    return verdict(digest(kept) == doc.before.kept_owned, doc)


def check_legacy_fields_unchanged(doc: Joined) -> Verdict | None:
    """Every field the migration does not own (system fields included) equals the backup, unless a legacy writer
    moved the migration's `updated_at_field`."""
    if doc.before is None or doc.live is None:
        return None
    return verdict(doc.untouched_unchanged, doc)


def check_document_still_exists(doc: Joined) -> Verdict | None:
    """A document of the backup still exists."""
    if doc.before is None:
        return None
    return Verdict.FAIL if doc.live is None else Verdict.PASS


DOCUMENT_CHECKS: tuple[DocumentCheck, ...] = (
    DocumentCheck(
        "planned_fields_written",
        "every document the plan changes holds exactly the values of the plan's `set` (deep Convex equality) and "
        "none of the fields it removes",
        check_planned_fields_written,
    ),
    DocumentCheck(
        "legacy_fields_unchanged",
        "every field the migration does not own (system fields included) "
        "equals the backup",
        check_legacy_fields_unchanged,
    ),
    DocumentCheck(
        "nothing_outside_plan_changed",
        "the fields the migration owns that the plan does not touch equal the backup's (none added, changed or "
        "removed), and the plan writes only fields the migration owns",
        check_nothing_outside_plan_changed,
    ),
    DocumentCheck(
        "no_backup_document_missing",
        "every document of the backup (in the tables the migration changes) still exists",
        check_document_still_exists,
    ),
)


def check_plan_writes_only_owned_fields(migration: Migration, line: dict[str, Any]) -> Verdict:
    """A plan line sets and removes only fields its migration owns (part of nothing_outside_plan_changed)."""
    owned = migration.owned_fields.get(line["table"], frozenset())
    ok = all(f in owned for f in line["set"]) and all(f in owned for f in line.get("unset", ()))
    return Verdict.PASS if ok else Verdict.FAIL


# -- side rows (pure): a migration's `SideRows`, called references here ------------------------------------------


@dataclass(frozen=True, slots=True)
class Reference:
    """A side row as verify needs it."""

    ours: bool  # created by this migration
    tracks: bytes  # digest of the field it describes, with its group

    @classmethod
    def of(cls, row: dict[str, Any], side: SideRows, migration_id: str) -> Reference:
        return cls(side.stamped(row, migration_id), reference_digest(row, row.get(side.group), side.mirrored))


def reference_digest(asset: dict[str, Any], group: Any, mirrored: Iterable[str]) -> bytes:
    """What a side row must agree on with the field it tracks: its group and the field's mirrored values."""
    return digest([group, {k: asset[k] for k in mirrored if k in asset}])


def check_references_match_asset(doc: Joined, asset: dict[str, Any], refs: list[Reference]) -> Verdict | None:
    """Every side row of this migration of one kind on a document describes the field it tracks (its group and
    the side rows' `mirrored` fields)."""
    ours = [r for r in refs if r.ours]
    side = doc.migration.side_rows
    if not ours or side is None:
        return None
    expected = reference_digest(asset, side.groups[doc.table], side.mirrored)
    return verdict(all(r.tracks == expected for r in ours), doc)


def check_no_duplicate_references(refs: list[Reference]) -> Verdict | None:
    """An entity has at most one reference per asset type."""
    if not refs:
        return None
    return Verdict.PASS if len(refs) == 1 else Verdict.FAIL


def check_asset_tracked(doc: Joined, refs: list[Reference]) -> Verdict | None:
    """A tracked field a migratable document holds has a side row of its kind (tracking is complete)."""
    if doc.plan is None or not doc.plan.migratable or doc.live is None:
        return None
    return verdict(bool(refs), doc)


def check_reference_has_asset(document_changed_by_application: bool, refs: list[Reference]) -> Verdict | None:
    """A side row of this migration on an existing document that holds no field of its kind: it points at the
    wrong document (excused when the application changed that document since the backup)."""
    if not any(r.ours for r in refs):
        return None
    return Verdict.APPLICATION if document_changed_by_application else Verdict.FAIL


def check_reference_points_at_document(entity_exists: bool, refs: list[Reference]) -> Verdict | None:
    """A reference of this migration points at an existing document."""
    if not any(r.ours for r in refs):
        return None
    return Verdict.PASS if entity_exists else Verdict.FAIL


def reference_checks(side: SideRows) -> dict[str, str]:
    """The side-row checks (name -> description), in the words of the migration's declaration."""
    return {
        "references_match_assets": f"each of the {side.label} of this migration equals the field its document holds "
        f"under its {side.kind} ({', '.join((side.group, *side.mirrored))}); none names a field its document lacks",
        "no_duplicate_references": f"no document has two {side.label} (of any origin) of one {side.kind}",
        "references_point_at_documents": f"every one of the {side.label} of this migration points at an existing document",
        "tracking_complete": f"every tracked field a migratable document holds (set by the plan or there before) has "
        f"its row in {side.table}",
    }


# -- the streaming pass ------------------------------------------------------------------------------------


@dataclass
class _Tally:
    """Counts and a few example ids for one check."""

    name: str
    description: str
    checked: int = 0
    failed: int = 0
    explained: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, verdict: Verdict | None, doc_id: str, detail: str = "") -> None:
        if verdict is None:
            return
        self.checked += 1
        if verdict is Verdict.FAIL:
            self.failed += 1
            if len(self.examples) < EXAMPLES:
                self.examples.append(f"{doc_id} ({detail})" if detail else doc_id)
        elif verdict is Verdict.APPLICATION:
            self.explained += 1

    def result(self) -> Check:
        note = "explained: changed by the application since the migration (re-plan it)" if self.explained else ""
        return Check(
            name=self.name, description=self.description, passed=self.failed == 0, checked=self.checked,
            failed=self.failed, explained=self.explained, examples=self.examples, note=note,
        )


@dataclass
class Outcome:
    """What the checks found: one Check per check, and the documents the application changed since the backup."""

    checks: list[Check]
    changed_by_application: list[str]
    changed_count: int
    created_after_snapshot: list[str] = field(default_factory=list)
    created_count: int = 0
    untracked_assets: int = 0
    untracked_documents: list[str] = field(default_factory=list)
    untracked_count: int = 0


@locked_step(names.VERIFY)
def verify(
    transport: ConvexTransport, run_dir: Path, migration: Migration, *, page_size: int = 4000, show_progress: bool = True,
    workers: int | None = None,
) -> VerifyReport:
    """Every check, for this run folder's plan and backup against the deployment now. `workers` (default: this
    machine's cores) processes digest the plan and the backup over ranges of each, and check the live pages this
    process reads; the findings are the same for any number of them."""
    require_migration(run_dir, migration)
    plan_summary = read_plan(run_dir)
    backup = read_backup(run_dir)

    def live(table: str) -> Iterable[dict[str, Any]]:
        # The snapshot's count, and for the side rows' table the ones apply created (the snapshot predates them).
        side = migration.side_rows
        expected = backup.counts.get(table, 0) + (plan_summary.references if side is not None and table == side.table else 0)
        pages = paged_progress(prefetch(iter_pages(transport, table, page_size)), desc=f"verify {table}",
                               total=expected or None, show=show_progress)
        return (document for page in pages for document in page)

    outcome = run_checks(
        Ranged(partial(iter_plan_lines, run_dir), plan_summary.documents),
        lambda table: Ranged(partial(iter_backup_documents, backup.zip_path, table), backup.counts.get(table, 0)),
        live, migration=migration, page_size=page_size, workers=default_workers() if workers is None else workers,
    )
    return report(outcome, migration.id, plan_summary.plan_sha256, backup.sha256)


def report(outcome: Outcome, migration_id: str, plan_sha256: str, backup_sha256: str) -> VerifyReport:
    """The report of what the checks found, for the plan and backup they checked against."""
    return VerifyReport(
        migration_id=migration_id,
        plan_sha256=plan_sha256,
        backup_sha256=backup_sha256,
        checks=outcome.checks,
        changed_by_others=outcome.changed_by_application,
        changed_by_application=ChangedByApplication(count=outcome.changed_count, examples=outcome.changed_by_application[:EXAMPLES]),
        created_after_snapshot=CreatedAfterSnapshot(count=outcome.created_count, examples=outcome.created_after_snapshot[:EXAMPLES]),
        untracked_assets=UntrackedAssets(assets=outcome.untracked_assets, documents=outcome.untracked_count,
                                         examples=outcome.untracked_documents[:EXAMPLES]),
    )


def run_checks(
    plan_lines: Iterable[dict[str, Any]],
    backup: Callable[[str], Iterable[dict[str, Any]]],
    live: Callable[[str], Iterable[dict[str, Any]]],
    *,
    migration: Migration,
    page_size: int = 4000,
    workers: int = 1,
) -> Outcome:
    """Every check over the three sources, each read once: the plan's lines, then `backup(table)` for each table the
    migration changes, `live(side_rows.table)` when it creates side rows, and `live(table)` for each table. Pure: the
    caller decides where they come from. A plan or backup given as `helpers.steps.parallel.Ranged` (a local file) is
    digested by `workers` processes over its ranges; the side rows' digests and the live pages' checks run in them too;
    their results are taken in source order, so the findings do not depend on how many there were.

    The join keeps its per-document state in a scratch SQLite file (see `_Join`): memory is bounded by the page."""
    with Scratch() as scratch:
        join = _Join(migration, scratch, page_size, workers)
        join.take_promises(plan_lines)
        for table in migration.tables:
            join.take_backup(table, backup(table))
        # Forked before the first live page is read: the prefetch thread of the live pages must not be forked.
        with _PageChecker(workers) as checker:
            if migration.side_rows is not None:
                join.take_side_rows(checker, live(migration.side_rows.table))
            for table in migration.tables:
                join.check_live(checker, table, live(table))
        join.check_leftovers()
        return join.outcome()


class _Join:
    """One verify pass: the tallies, and the join's state in scratch tables the workers write themselves (this
    process reads the live pages and takes each page's findings in order). Each source streams past in pages:

    - `planned`: each plan line's promise (Planned, as a tuple), until the backup's pass moves it beside its document;
    - `before`: each backed-up document's digests (Before) with its table and plan, popped by its live page;
    - `references`: every side row by (owner, kind), popped by its document's live page (~3 rows per document at the
      scratch file's peak); rows left over point at no live document;
    - `live_docs`: each live document's changed-by-the-application flag, for the references left over.

    A live page looks its documents up in one query per kind; what is never popped is what the deployment lacks.
    Keys are document ids, so which worker writes a row, and when, changes no finding."""

    def __init__(self, migration: Migration, scratch: Scratch, page_size: int, workers: int) -> None:
        self.migration, self.scratch, self.page_size, self.workers = migration, scratch, page_size, workers
        self.cross_checks = migration.cross_checks(scratch)
        self.tallies = {c.name: _Tally(c.name, c.description) for c in (*DOCUMENT_CHECKS, *migration.checks)}
        self.tallies.update({c.name: _Tally(c.name, c.description) for c in self.cross_checks})
        if migration.side_rows is not None:
            self.tallies.update({name: _Tally(name, text) for name, text in reference_checks(migration.side_rows).items()})
        self.changed, self.created = _Listed(), _Listed()
        self.untracked = _Listed()  # blocked documents holding a tracked field no side row tracks
        self.untracked_assets = 0
        self.tables = _JoinState(*(scratch.table(name, multi=name == "references", shared=True) for name in _JoinState._fields))

    def _map(self, source: Iterable[Any], work: Callable[[list[Any]], Any], name: str) -> Any:
        return map_pages(source, work, page_size=self.page_size, workers=self.workers, folder=self.scratch.path("ranges"), name=name)

    def take_promises(self, plan_lines: Iterable[dict[str, Any]]) -> None:
        """The promise, per document (the plan's lines digested by the workers)."""
        promises = self._map(plan_lines, partial(_plan_page, self.migration, self.tables.planned), "plan")
        tally = self.tallies["nothing_outside_plan_changed"]
        for passed, failed in promises:
            tally.checked += passed
            for doc_id in failed:
                tally.add(Verdict.FAIL, doc_id)
        promises.discard()

    def take_backup(self, table: str, documents: Iterable[dict[str, Any]]) -> None:
        """The state before, per document, as digests (by the workers, each popping its documents' plans), with the
        document's plan moved beside it: a live page then finds both in one look-up."""
        work = partial(_backup_page, self.migration, table, self.tables.planned, self.tables.before)
        self._map(documents, work, f"backup-{table}").discard()

    def take_side_rows(self, checker: _PageChecker, rows: Iterable[dict[str, Any]]) -> None:
        """Every side row, digested by the workers, stored by (owner, kind) before the first live page pops them."""
        for page in batched(rows, self.page_size):
            checker.submit(_nothing, _side_row_page, self.migration, self.tables.references, page)
        checker.drain()

    def check_live(self, checker: _PageChecker, table: str, documents: Iterable[dict[str, Any]]) -> None:
        """Each live page's document and reference checks, in a worker (several pages in flight, taken back in page
        order), which pops the page's state from the join's tables itself."""
        for page in batched(documents, self.page_size):
            checker.submit(partial(self._take, table, page), _check_page, self.migration, table, page, self.tables, bool(self.cross_checks))

    def _take(self, table: str, page: list[dict[str, Any]], findings: _PageFindings) -> None:
        """One page's findings into the tallies, in page order; then the migration's cross-document checks."""
        for name, passed in findings.passed.items():
            self.tallies[name].checked += passed
        for name, result, doc_id, detail in findings.others:
            self.tallies[name].add(result, doc_id, detail)
        for doc_id, by_app in findings.flags:
            if by_app:
                self.changed.add(doc_id)
        for doc_id in findings.created:
            self.created.add(doc_id)
        for doc_id, held in findings.untracked:
            self.untracked.add(doc_id)
            self.untracked_assets += held
        if self.cross_checks:
            joined = [
                Joined(self.migration, table, Before(*before) if before else None, Planned(*plan) if plan else None, document, untouched)
                for document, (before, plan), untouched in zip(page, findings.states, findings.untouched, strict=True)
            ]
            for cross in self.cross_checks:
                for doc_id, crossed in cross.page(table, joined):
                    self.tallies[cross.name].add(crossed, doc_id)

    def check_leftovers(self) -> None:
        """Side rows whose document no longer exists (or never did), one owner and kind at a time; then the
        backed-up documents no longer live."""
        for group in batched(self.tables.references.groups(), self.page_size):
            entities = [str(key).partition("\0") for key, _ in group]  # reference_key: "<entity id>\0<kind>"
            live_flags = self.tables.live_docs.get(entity_id for entity_id, _, _ in entities)
            for (entity_id, _, kind), (_, rows) in zip(entities, group, strict=True):
                refs = [Reference(*ref) for ref in rows]
                exists = entity_id in live_flags
                self.tallies["no_duplicate_references"].add(check_no_duplicate_references(refs), entity_id, kind)
                self.tallies["references_point_at_documents"].add(check_reference_points_at_document(exists, refs), entity_id)
                if exists:  # a kind its table does not have
                    self.tallies["references_match_assets"].add(check_reference_has_asset(live_flags[entity_id], refs), entity_id, kind)
        for doc_id, (table, _, *prior) in self.tables.before.items(by_key=True):
            gone = Joined(self.migration, table, Before(*prior), None, None)
            self.tallies["no_backup_document_missing"].add(check_document_still_exists(gone), str(doc_id))  # keys are ids

    def outcome(self) -> Outcome:
        checks = [tally.result() for tally in self.tallies.values()]  # in the order declared: core, migration, side rows
        if self.untracked_assets:  # "complete" must not be read as covering the tracked fields of documents the plan left alone
            for check in checks:
                if check.name == "tracking_complete":
                    check.note = (f"does not cover {self.untracked_assets:,} untracked assets on {self.untracked.count:,} "
                                  "documents the plan blocked (listed apart)")
        return Outcome(checks, self.changed.ids, self.changed.count, self.created.ids, self.created.count,
                       self.untracked_assets, self.untracked.ids, self.untracked.count)


#: A document's state as a live page's checks get it: its Before digests and its plan, as tuples (None: missing).
State = tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]


@dataclass
class _PageFindings:
    """What one live page's checks found: per check how many passed, the other verdicts in page order (with the
    document and detail an example needs), each document's changed-by-the-application flag, the documents created
    after the snapshot, the blocked documents holding tracked fields no side row tracks (with how many), and per
    document its state and untouched digest for the cross checks (when the migration has some)."""

    passed: dict[str, int] = field(default_factory=dict)
    others: list[tuple[str, Verdict, str, str]] = field(default_factory=list)
    flags: list[tuple[str, bool]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    untouched: list[bytes | None] = field(default_factory=list)
    untracked: list[tuple[str, int]] = field(default_factory=list)
    states: list[State] = field(default_factory=list)


class _JoinState(NamedTuple):
    """The join's scratch tables (named as its fields; `references` holds several rows per key), as a live page's
    checks pop and fill them (in a worker: opened writable there)."""

    before: ScratchTable
    planned: ScratchTable
    references: ScratchTable
    live_docs: ScratchTable

    def pop_states(self, ids: list[str]) -> list[State]:
        """Per document of a live page, its Before digests and its plan (as tuples; None when missing)."""
        backed_up = self.before.pop(ids)
        plans = {doc_id: fields[1] for doc_id, fields in backed_up.items() if fields[1] is not None}
        not_backed_up = [doc_id for doc_id in ids if doc_id not in backed_up]
        if not_backed_up:
            plans.update(self.planned.pop(not_backed_up))
        return [(tuple(backed_up[doc_id][2:]) if doc_id in backed_up else None, plans.get(doc_id)) for doc_id in ids]


def _check_page(migration: Migration, table: str, page: list[dict[str, Any]], join: _JoinState, keep_states: bool) -> _PageFindings:
    """The document and reference checks of one live page (in a worker process when verify has several): its state
    popped from the join's tables, each document's changed-by-the-application flag stored in `live_docs`."""
    document_checks = (*DOCUMENT_CHECKS, *migration.checks)  # from the migration (sent by id): a check may be a closure
    asset_types = migration.side_sources(table)
    ids = [document["_id"] for document in page]
    states = join.pop_states(ids)
    refs_by_key = join.references.pop(reference_key(doc_id, kind) for doc_id in ids for kind in asset_types.values()) if asset_types else {}
    findings = _PageFindings(states=states if keep_states else [])
    passed = findings.passed

    def add(name: str, result: Verdict | None, doc_id: str, detail: str = "") -> None:
        if result is Verdict.PASS:
            passed[name] = passed.get(name, 0) + 1
        elif result is not None:
            findings.others.append((name, result, doc_id, detail))

    for document, (before, plan) in zip(page, states, strict=True):
        doc_id = document["_id"]
        doc = Joined(migration, table, Before(*before) if before else None, Planned(*plan) if plan else None, document)
        by_app = doc.changed_by_application
        findings.flags.append((doc_id, by_app))
        if doc.before is None and doc.plan is None:
            findings.created.append(doc_id)
        for check in document_checks:
            result = check.run(doc)
            add(check.name, result, doc_id, check.detail(doc) if check.detail is not None and result is Verdict.FAIL else "")
        held_untracked = 0
        for asset_field, asset_type in asset_types.items():
            refs = [Reference(*ref) for ref in refs_by_key.get(reference_key(doc_id, asset_type), [])]
            asset = document.get(asset_field)
            if type(asset) is dict:
                add("references_match_assets", check_references_match_asset(doc, asset, refs), doc_id, asset_type)
                add("tracking_complete", check_asset_tracked(doc, refs), doc_id, asset_type)
                held_untracked += not refs and doc.plan is not None and not doc.plan.migratable
            else:
                add("references_match_assets", check_reference_has_asset(by_app, refs), doc_id, asset_type)
            add("no_duplicate_references", check_no_duplicate_references(refs), doc_id, asset_type)
            add("references_point_at_documents", check_reference_points_at_document(True, refs), doc_id)
        if held_untracked:
            findings.untracked.append((doc_id, held_untracked))
        findings.untouched.append(doc._untouched)
    join.live_docs.put(findings.flags)
    return findings


class _PageChecker:
    """Runs page checks in `workers` processes, at most `workers + 1` pages in flight, and hands each page's result
    to its callback in submission order (one worker: at once, in this process)."""

    def __init__(self, workers: int) -> None:
        # Its workers read no HTTP (whose cycles would pile up): they collect as seldom as a pass over pages does.
        self.pool = ProcessPoolExecutor(max_workers=workers, initializer=collect_seldom) if workers > 1 else None
        self.depth = workers + 1
        self.pending: deque[tuple[Callable[[Any], None], Future[Any]]] = deque()

    def __enter__(self) -> _PageChecker:
        if self.pool is not None:  # every worker forked now, before the live pages' prefetch thread runs
            wait([self.pool.submit(int) for _ in range(self.depth - 1)])
        return self

    def submit(self, done: Callable[[Any], None], work: Callable[..., Any], *args: Any) -> None:
        if self.pool is None:
            done(work(*args))
            return
        self.pending.append((done, self.pool.submit(work, *args)))
        while len(self.pending) >= self.depth:
            self._take()

    def _take(self) -> None:
        done, future = self.pending.popleft()
        done(future.result())

    def drain(self) -> None:
        """Hands every submitted result to its callback (a phase that reads what the last one stored)."""
        while self.pending:
            self._take()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is None:
                self.drain()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)


def _plan_page(migration: Migration, planned: ScratchTable, lines: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Each plan line's promise (Planned, as a tuple) into `planned` (in a worker); how many lines write only owned
    fields, and the ids of those that do not."""
    planned.put((line["id"], _as_tuple(Planned.of(migration, line))) for line in lines)
    failed = [line["id"] for line in lines if check_plan_writes_only_owned_fields(migration, line) is Verdict.FAIL]
    return len(lines) - len(failed), failed


def _side_row_page(migration: Migration, references: ScratchTable, rows: list[dict[str, Any]]) -> None:
    """Each side row by its (owner, kind) key, with what verify checks of it, into `references` (in a worker)."""
    side = migration.side_rows
    assert side is not None, "only a migration that declares side rows has them read"
    references.put((reference_key(row[side.owner], row[side.kind]), _as_tuple(Reference.of(row, side, migration.id))) for row in rows)


def _nothing(_: object) -> None:
    """The callback of work whose result is in the scratch tables."""


def _backup_page(migration: Migration, table: str, planned: ScratchTable, before: ScratchTable, page: list[dict[str, Any]]) -> int:
    """Each backed-up document's (table, its plan or None, *its Before digests) into `before`, its plan moved there
    from `planned` (in a worker); how many."""
    plans = planned.pop(doc["_id"] for doc in page)
    rows = []
    for doc in page:
        plan = plans.get(doc["_id"])
        touched = _touched(Planned(*plan)) if plan is not None else ()
        rows.append((doc["_id"], (table, plan, *_as_tuple(Before.of(migration, table, doc, touched)))))
    before.put(rows)
    return len(rows)


def _touched(plan: Planned) -> tuple[str, ...]:
    """The fields a plan line sets or removes, for a document it changes (none otherwise)."""
    return plan.touched if plan.changes else ()


def _as_tuple(record: Before | Planned | Reference) -> tuple[Any, ...]:
    """A slotted record's fields as a plain tuple, which the scratch tables store several times faster than the
    record itself (pickling a dataclass looks its fields up every time)."""
    return tuple(getattr(record, name) for name in record.__slots__)


@dataclass
class _Listed:
    """A count of documents, and the first hundred ids."""

    count: int = 0
    ids: list[str] = field(default_factory=list)

    def add(self, doc_id: str) -> None:
        self.count += 1
        if len(self.ids) < 100:
            self.ids.append(doc_id)
