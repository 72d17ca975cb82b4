"""Rollback, two ways, through the same guarded batch write apply uses.

- strip: remove the fields the plan set and delete the side rows this migration created;
  legacy data stays as it is, so old code (and the old schema) see exactly what they expect.
- restore: bring every document the migration changed back to its state in the backup, field by field.

Each item's precondition is the document as rollback planned it, so a write by someone else in between
is reported as a conflict and left alone; documents the migration did not change are never touched.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from helpers.connection import jsonio
from helpers.connection.calls import (
    SideRows,
    apply_batch,
    iter_documents,
    iter_pages,
    record_run,
    release_lock,
)
from helpers.connection.errors import ChainBroken, PreconditionFailed, RunbookError
from helpers.connection.transport import ConvexTransport
from helpers.connection.values import digest
from helpers.evidence.archive import sha256_file, write_json_atomic
from helpers.evidence.run_folder import locked_step, operator_for, require_migration
from helpers.evidence.run_folder import run_id as folder_run_id
from helpers.steps import names
from helpers.steps.apply import LEASE_MS, DeploymentLease, take_migration_lock
from helpers.steps.backup import BackupSummary, iter_backup_documents, require_backup
from helpers.steps.chain import (
    for_rollback,
    refused_batch,
    require_chain,
    rollback_mark,
)
from helpers.steps.migration import Migration
from helpers.steps.plan import iter_plan_lines, read_plan
from helpers.steps.scratch import Scratch, batched
from helpers.steps.verify import Check

Mode = Literal["strip", "restore"]
ROLLBACK_DIR = "rollback"
SYSTEM_FIELDS = ("_id", "_creationTime")


class RollbackSummary(BaseModel):
    #: Required: a file that names no migration is refused, never judged as the first one's.
    migration_id: str
    mode: str
    executed: bool
    plan_sha256: str
    rollback_plan_sha256: str
    actions: dict[str, dict[str, int]]
    outcomes: dict[str, dict[str, int]] = {}
    references_to_delete: int
    conflicts: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []


class RollbackCheck(BaseModel):
    checked: int
    failed: int
    examples: list[str]
    checks: list[Check] = []

    @property
    def passed(self) -> bool:
        return self.failed == 0


# -- the rollback's checks (pure), each over one live document or reference ---------------------------------------


def check_stripped(live: dict[str, Any], set_fields: tuple[str, ...]) -> bool:
    """strip: the document holds none of the fields the plan set."""
    return not any(f in live for f in set_fields)


def check_restored(live: dict[str, Any], backed_up: bytes | None) -> bool:
    """restore: the document equals its backup (every field, system fields included)."""
    return backed_up is not None and digest(live) == backed_up


def check_reference_removed(reference: dict[str, Any], touched: Container[object], side: SideRows, migration_id: str) -> bool:
    """No side row of this migration is left on a document the rollback changed back."""
    return not side.stamped(reference, migration_id) or reference[side.owner] not in touched


ROLLBACK_CHECKS: dict[str, str] = {
    "stripped": "strip: no document the rollback changed back holds a field the plan set",
    "restored": "restore: every document the rollback changed back equals its backup, field by field",
    "references_removed": "no side row of this migration is left on a document the rollback changed back",
    "documents_still_exist": "every document the rollback changed back still exists",
}


def rollback_dir(run_dir: Path, mode: Mode) -> Path:
    return Path(run_dir) / ROLLBACK_DIR / mode


def plan_rollback(transport: ConvexTransport, run_dir: Path, migration: Migration, mode: Mode, *, page_size: int = 4000) -> RollbackSummary:
    """Writes rollback/<mode>/plan.jsonl: one guarded item per document to change back. Changes nothing."""
    if mode not in ("strip", "restore"):
        raise ValueError(f"mode must be 'strip' or 'restore', not {mode!r}")
    require_migration(run_dir, migration)
    # Early and read-only; execute asks again, in the transaction that takes the lock and in every batch's.
    require_chain(transport, for_rollback(migration), migration.id, "Nothing was planned or sent.")
    if mode not in migration.rollback_modes:
        raise PreconditionFailed(
            f"Migration {migration.id} cannot be rolled back with mode={mode!r}.",
            hint=f"Use mode={migration.rollback_modes[0]!r} (its README says why).",
        )
    plan = read_plan(run_dir)
    backup = _backup_for_restore(run_dir) if mode == "restore" else None
    out = rollback_dir(run_dir, mode)
    out.mkdir(parents=True, exist_ok=True)

    actions: dict[str, Counter[str]] = defaultdict(Counter)
    path = out / "plan.jsonl"
    with Scratch() as scratch:
        set_fields = scratch.table("set_fields")  # id -> the fields the plan set, for the documents it changed
        set_fields.load((line["id"], tuple(line["set"])) for line in iter_plan_lines(run_dir) if migration.changes(line))
        references = scratch.table("references", multi=True)  # document id -> ids of this migration's side rows
        side = migration.side_rows
        if side is not None:
            references.load(
                (ref[side.owner], ref["_id"]) for ref in iter_documents(transport, side.table, page_size)
                if side.stamped(ref, migration.id)
            )
        backed_up = scratch.table("backed_up")
        if backup is not None:
            # Only the documents the migration touched are kept, as their backup state.
            for table in migration.tables:
                for page in batched(iter_backup_documents(backup, table), page_size):
                    wanted = set_fields.has(doc["_id"] for doc in page)
                    backed_up.put((doc["_id"], doc) for doc in page if doc["_id"] in wanted)

        with path.open("wb") as sink:
            for table in migration.tables:
                for page in iter_pages(transport, table, page_size):
                    ids = [doc["_id"] for doc in page]
                    fields, refs = set_fields.get(ids), references.get(ids)
                    before = backed_up.get(ids) if backup is not None else {}
                    for doc in page:
                        doc_id = doc["_id"]
                        if doc_id not in fields and doc_id not in refs:
                            continue
                        if mode == "strip":
                            item = _strip_item(migration, table, doc, fields.get(doc_id, ()), refs.get(doc_id, []))
                        elif doc_id not in before:
                            actions[table]["not_in_backup"] += 1
                            continue
                        else:
                            item = _restore_item(table, doc, before[doc_id], refs.get(doc_id, []))
                        if item is None:
                            actions[table]["nothing_to_undo"] += 1
                            continue
                        actions[table]["change_back"] += 1
                        sink.write(jsonio.dumps(item, sort_keys=True) + b"\n")
        references_to_delete = len(references)
    summary = RollbackSummary(
        migration_id=migration.id,
        mode=mode,
        executed=False,
        plan_sha256=plan.plan_sha256,
        rollback_plan_sha256=sha256_file(path),
        actions={t: dict(c) for t, c in actions.items()},
        references_to_delete=references_to_delete,
    )
    write_json_atomic(out / "summary.json", summary.model_dump(mode="json"))
    return summary


def _strip_item(migration: Migration, table: str, doc: dict[str, Any], fields: tuple[str, ...], refs: list[str]) -> dict[str, Any] | None:
    """Removes the fields the plan set, guarded by every field that makes that safe: the fields themselves and,
    for each field its side rows track, the legacy fields it was built from, as they are now. Strip
    relies on the legacy fields still holding what the asset fields hold: where another writer (migration 002
    retiring them, say) removed or changed one since, the document is a conflict and keeps its asset fields."""
    present = [f for f in fields if f in doc]
    if not present and not refs:
        return None
    assets = migration.side_rows.sources.get(table, {}) if migration.side_rows is not None else {}
    built_from = migration.derived_from.get(table, {})
    sources = [source for f in present if f in assets for source in built_from.get(f, ())]
    return {
        "table": table,
        "id": doc["_id"],
        "expect": {f: doc[f] for f in (*present, *sources) if f in doc},
        "expectAbsent": [],
        "set": {},
        "unset": present,
        "insertReferences": [],
        "deleteReferences": refs,
    }


def _restore_item(table: str, doc: dict[str, Any], before: dict[str, Any], refs: list[str]) -> dict[str, Any] | None:
    changed = {f: v for f, v in before.items() if f not in SYSTEM_FIELDS and (f not in doc or digest(doc[f]) != digest(v))}
    added = [f for f in doc if f not in before and f not in SYSTEM_FIELDS]
    if not changed and not added and not refs:
        return None
    touched = [*changed, *added]
    return {
        "table": table,
        "id": doc["_id"],
        "expect": {f: doc[f] for f in touched if f in doc},
        "expectAbsent": [f for f in touched if f not in doc],
        "set": changed,
        "unset": added,
        "insertReferences": [],
        "deleteReferences": refs,
    }


def iter_rollback_items(run_dir: Path, mode: Mode) -> Iterator[dict[str, Any]]:
    with (rollback_dir(run_dir, mode) / "plan.jsonl").open("rb") as source:
        for raw in source:
            yield jsonio.loads(raw)


@locked_step(names.ROLLBACK)
def execute_rollback(transport: ConvexTransport, run_dir: Path, migration: Migration, mode: Mode, *, batch_size: int = 200,
                     operator: str | None = None, lease_ms: int = LEASE_MS) -> RollbackSummary:
    """Sends the rollback plan after checking it is the one the dry-run showed."""
    require_migration(run_dir, migration)
    out = rollback_dir(run_dir, mode)
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise PreconditionFailed(f"No rollback plan in {out}.", hint="Run the rollback notebook with execute=False first.")
    summary = RollbackSummary.model_validate_json(summary_path.read_bytes())
    if sha256_file(out / "plan.jsonl") != summary.rollback_plan_sha256:
        raise PreconditionFailed(f"{out / 'plan.jsonl'} was altered since it was planned.", hint="Plan the rollback again.")
    run = folder_run_id(run_dir)
    operator = operator or operator_for(run_dir)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    conflicts: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    batch: list[dict[str, Any]] = []

    def flush(lease: DeploymentLease) -> None:
        tables = {item["id"]: item["table"] for item in batch}
        try:
            results = apply_batch(transport, migration.id, run, batch, guard=chain, before_call=lease.ensure, side_rows=migration.side_rows)
        except ChainBroken as broken:
            raise refused_batch(broken, migration.id, run) from broken
        for result in results:
            outcomes[tables[result["id"]]][result["outcome"]] += 1
            entry = {"id": result["id"], "message": result.get("message", "")}
            if result["outcome"] == "conflict":
                conflicts.append(entry)
            elif result["outcome"] == "error":
                errors.append(entry)
        batch.clear()

    # Rollback changes documents as apply does: under the deployment's one lock, taken only while no successor
    # is in effect (asked again by every batch), and recorded in the ledger as executed (`details`) before anything
    # is sent, so another run's apply planned before this rollback is refused as stale, and a successor's apply
    # is refused while this rollback may have changed documents back.
    chain = for_rollback(migration)
    asked_at = take_migration_lock(transport, migration.id, run, operator, lease_ms, chain)
    execution = _Execution(transport, migration.id, run, operator, int(time.time() * 1000), mode)
    status = "failed"
    try:
        execution.record("running")
        with DeploymentLease(transport, run, lease_ms, asked_at) as lease:
            for item in iter_rollback_items(run_dir, mode):
                batch.append(item)
                if len(batch) >= batch_size:
                    flush(lease)
            if batch:
                flush(lease)
        status = "passed" if not errors else "failed"
    except BaseException as failure:
        _finish(execution, status, len(conflicts), len(errors), failure)
        raise
    _finish(execution, status, len(conflicts), len(errors), None)
    summary = summary.model_copy(
        update={"executed": True, "outcomes": {t: dict(c) for t, c in outcomes.items()}, "conflicts": conflicts, "errors": errors}
    )
    write_json_atomic(summary_path, summary.model_dump(mode="json"))
    return summary


@dataclass(frozen=True)
class _Execution:
    """One executed rollback as its ledger rows name it: where, which migration and run, by whom, since when, and
    the mode (the row's `details`, which tells a later apply this rollback changed documents back)."""

    transport: ConvexTransport
    migration_id: str
    run_id: str
    operator: str
    started_ms: int
    mode: Mode

    def record(self, status: str, **more: Any) -> None:
        """The rollback's ledger row, with `status` and whatever else this moment adds (its end, its counts)."""
        record_run(self.transport, self.migration_id, self.run_id, step=names.ROLLBACK, status=status, operator=self.operator,
                   startedAt=self.started_ms, details=rollback_mark(self.mode), **more)


def _finish(execution: _Execution, status: str, conflicts: int, errors: int, failure: BaseException | None) -> None:
    """The ledger row and the lock's release; when the rollback itself failed, their own failure must not hide it."""
    try:
        execution.record(status, finishedAt=int(time.time() * 1000), counts={"conflicts": conflicts, "errors": errors})
        release_lock(execution.transport, execution.run_id)
    except RunbookError:
        if failure is None:
            raise


def check_rollback(transport: ConvexTransport, run_dir: Path, migration: Migration, mode: Mode, *, page_size: int = 4000) -> RollbackCheck:
    """After execute, the checks of ROLLBACK_CHECKS that concern this mode, over every document and reference the
    rollback changed back. Conflicts the execution reported are excluded (left alone, listed there)."""
    require_migration(run_dir, migration)
    summary = RollbackSummary.model_validate_json((rollback_dir(run_dir, mode) / "summary.json").read_bytes())
    excluded = {c["id"] for c in summary.conflicts}
    side = migration.side_rows
    names = ["stripped" if mode == "strip" else "restored", *(["references_removed"] if side else []), "documents_still_exist"]
    results: dict[str, tuple[int, list[str]]] = {name: (0, []) for name in names}

    def record(name: str, ok: bool, item_id: str) -> None:
        checked, failed = results[name]
        results[name] = (checked + 1, failed if ok else [*failed, item_id])

    with Scratch() as scratch:
        touched = scratch.table("touched")  # the documents the rollback changed back; those not seen live are gone
        touched.load((item["id"], None) for item in iter_rollback_items(run_dir, mode) if item["id"] not in excluded)
        expected = scratch.table("expected")
        if mode == "restore":
            backup = _backup_for_restore(run_dir)
            for table in migration.tables:
                for page in batched(iter_backup_documents(backup, table), page_size):
                    wanted = touched.has(doc["_id"] for doc in page)
                    expected.put((doc["_id"], digest(doc)) for doc in page if doc["_id"] in wanted)
        plan_fields = scratch.table("plan_fields")
        plan_fields.load((line["id"], tuple(line["set"])) for line in iter_plan_lines(run_dir) if migration.changes(line))
        changed_back = scratch.table("changed_back")  # touched ids, kept for the references check
        for table in migration.tables:
            for page in iter_pages(transport, table, page_size):
                seen = touched.pop(doc["_id"] for doc in page)
                changed_back.put((doc_id, None) for doc_id in seen)
                digests = expected.get(seen) if mode == "restore" else {}
                fields = plan_fields.get(seen) if mode == "strip" else {}
                for doc in page:
                    if doc["_id"] not in seen:
                        continue
                    record("documents_still_exist", True, doc["_id"])
                    if mode == "restore":
                        record("restored", check_restored(doc, digests.get(doc["_id"])), doc["_id"])
                    else:
                        record("stripped", check_stripped(doc, fields.get(doc["_id"], ())), doc["_id"])
        for doc_id in touched.keys():
            record("documents_still_exist", False, str(doc_id))  # the scratch keys are document ids
            changed_back.put([(doc_id, None)])
        for page in iter_pages(transport, side.table, page_size) if side is not None else ():
            assert side is not None
            on_changed_back = changed_back.has(ref[side.owner] for ref in page)
            for ref in page:
                record("references_removed", check_reference_removed(ref, on_changed_back, side, migration.id), ref["_id"])
    checks = [
        Check(name=name, description=ROLLBACK_CHECKS[name], passed=not failed, checked=checked, failed=len(failed), examples=failed[:5])
        for name, (checked, failed) in results.items()
    ]
    return RollbackCheck(
        checked=sum(c.checked for c in checks),
        failed=sum(c.failed for c in checks),
        examples=[e for c in checks for e in c.examples][:5],
        checks=checks,
    )


def _backup_for_restore(run_dir: Path) -> BackupSummary:
    """This run's backup, which only restore needs; without it, say where it is kept and what works instead."""
    return require_backup(
        run_dir,
        "Rollback restore needs the backup this run took before the migration",
        hint=f"put this run's backup back into {Path(run_dir) / 'backup'} (snapshot_<ts>.zip and backup.json, from the "
        "archived run folder or its ZIP), or roll back with mode='strip', which needs no backup; a new backup would "
        "hold the migrated state and cannot restore it",
    )
