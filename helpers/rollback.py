"""Rollback, two ways, through the same guarded batch write apply uses.

- strip: remove the new fields the plan set and delete the asset references this migration created;
  legacy data stays as it is, so old code (and the old schema) see exactly what they expect.
- restore: bring every document the migration changed back to its state in the backup, field by field.

Each item's precondition is the document as rollback planned it, so a write by someone else in between
is reported as a conflict and left alone; documents the migration did not change are never touched.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from . import MIGRATION_ID, jsonio
from .archive import sha256_file, write_json_atomic
from .backup import iter_backup_documents, read_backup
from .deployment import apply_batch, iter_documents
from .errors import PreconditionFailed
from .fields import MIGRATED_TABLES
from .plan import CHANGING_ACTIONS, iter_plan_lines, read_plan
from .run_folder import locked_step
from .transport import ConvexTransport
from .values import digest

Mode = Literal["strip", "restore"]
ROLLBACK_DIR = "rollback"
SYSTEM_FIELDS = ("_id", "_creationTime")


class RollbackSummary(BaseModel):
    migration_id: str = MIGRATION_ID
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

    @property
    def passed(self) -> bool:
        return self.failed == 0


def rollback_dir(run_dir: Path, mode: Mode) -> Path:
    return Path(run_dir) / ROLLBACK_DIR / mode


def plan_rollback(transport: ConvexTransport, run_dir: Path, mode: Mode, *, page_size: int = 4000) -> RollbackSummary:
    """Writes rollback/<mode>/plan.jsonl: one guarded item per document to change back. Changes nothing."""
    if mode not in ("strip", "restore"):
        raise ValueError(f"mode must be 'strip' or 'restore', not {mode!r}")
    plan = read_plan(run_dir)
    backup = read_backup(run_dir)
    out = rollback_dir(run_dir, mode)
    out.mkdir(parents=True, exist_ok=True)

    set_fields: dict[str, tuple[str, ...]] = {}
    for line in iter_plan_lines(run_dir):
        if line["action"] in CHANGING_ACTIONS:
            set_fields[line["id"]] = tuple(line["set"])

    references: dict[str, list[str]] = defaultdict(list)
    for ref in iter_documents(transport, "assetReferences", page_size):
        if ref.get("metadata", {}).get("migrationId") == MIGRATION_ID:
            references[ref["entityId"]].append(ref["_id"])

    backed_up: dict[str, bytes] = {}
    if mode == "restore":
        # Only the documents the migration touched are kept, as their encoded backup state.
        for table in MIGRATED_TABLES:
            for doc in iter_backup_documents(backup, table):
                if doc["_id"] in set_fields:
                    backed_up[doc["_id"]] = jsonio.dumps(doc)

    actions: dict[str, Counter[str]] = defaultdict(Counter)
    path = out / "plan.jsonl"
    with path.open("wb") as sink:
        for table in MIGRATED_TABLES:
            for doc in iter_documents(transport, table, page_size):
                doc_id = doc["_id"]
                if doc_id not in set_fields and doc_id not in references:
                    continue
                if mode == "strip":
                    item = _strip_item(table, doc, set_fields.get(doc_id, ()), references.get(doc_id, []))
                else:
                    raw = backed_up.get(doc_id)
                    if raw is None:
                        actions[table]["not_in_backup"] += 1
                        continue
                    item = _restore_item(table, doc, jsonio.loads(raw), references.get(doc_id, []))
                if item is None:
                    actions[table]["nothing_to_undo"] += 1
                    continue
                actions[table]["change_back"] += 1
                sink.write(jsonio.dumps(item, sort_keys=True) + b"\n")
    summary = RollbackSummary(
        mode=mode,
        executed=False,
        plan_sha256=plan.plan_sha256,
        rollback_plan_sha256=sha256_file(path),
        actions={t: dict(c) for t, c in actions.items()},
        references_to_delete=sum(len(v) for v in references.values()),
    )
    write_json_atomic(out / "summary.json", summary.model_dump(mode="json"))
    return summary


def _strip_item(table: str, doc: dict[str, Any], fields: tuple[str, ...], refs: list[str]) -> dict[str, Any] | None:
    present = [f for f in fields if f in doc]
    if not present and not refs:
        return None
    return {
        "table": table,
        "id": doc["_id"],
        "expect": {f: doc[f] for f in present},
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


@locked_step("05_rollback")
def execute_rollback(transport: ConvexTransport, run_dir: Path, mode: Mode, *, batch_size: int = 200) -> RollbackSummary:
    """Sends the rollback plan after checking it is the one the dry-run showed."""
    out = rollback_dir(run_dir, mode)
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise PreconditionFailed(f"No rollback plan in {out}.", hint="Run the rollback notebook with execute=False first.")
    summary = RollbackSummary.model_validate_json(summary_path.read_bytes())
    if sha256_file(out / "plan.jsonl") != summary.rollback_plan_sha256:
        raise PreconditionFailed(f"{out / 'plan.jsonl'} was altered since it was planned.", hint="Plan the rollback again.")
    run_id = f"{Path(run_dir).resolve().name}-rollback-{mode}"
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    conflicts: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        tables = {item["id"]: item["table"] for item in batch}
        for result in apply_batch(transport, MIGRATION_ID, run_id, batch):
            outcomes[tables[result["id"]]][result["outcome"]] += 1
            entry = {"id": result["id"], "message": result.get("message", "")}
            if result["outcome"] == "conflict":
                conflicts.append(entry)
            elif result["outcome"] == "error":
                errors.append(entry)
        batch.clear()

    for item in iter_rollback_items(run_dir, mode):
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    summary = summary.model_copy(
        update={"executed": True, "outcomes": {t: dict(c) for t, c in outcomes.items()}, "conflicts": conflicts, "errors": errors}
    )
    write_json_atomic(summary_path, summary.model_dump(mode="json"))
    return summary


def check_rollback(transport: ConvexTransport, run_dir: Path, mode: Mode, *, page_size: int = 4000) -> RollbackCheck:
    """After execute: strip left no new field the plan set and no reference of this migration; restore made
    every changed document equal to the backup. Conflicts the execution reported are excluded (left alone)."""
    summary = RollbackSummary.model_validate_json((rollback_dir(run_dir, mode) / "summary.json").read_bytes())
    excluded = {c["id"] for c in summary.conflicts}
    touched = {item["id"] for item in iter_rollback_items(run_dir, mode)} - excluded
    failed: list[str] = []
    checked = 0
    expected: dict[str, bytes] = {}
    if mode == "restore":
        backup = read_backup(run_dir)
        for table in MIGRATED_TABLES:
            for doc in iter_backup_documents(backup, table):
                if doc["_id"] in touched:
                    expected[doc["_id"]] = digest(doc)
    plan_fields = {line["id"]: tuple(line["set"]) for line in iter_plan_lines(run_dir) if line["action"] in CHANGING_ACTIONS}
    for table in MIGRATED_TABLES:
        for doc in iter_documents(transport, table, page_size):
            if doc["_id"] not in touched:
                continue
            checked += 1
            ok = digest(doc) == expected.get(doc["_id"]) if mode == "restore" else not any(f in doc for f in plan_fields.get(doc["_id"], ()))
            if not ok:
                failed.append(doc["_id"])
    for ref in iter_documents(transport, "assetReferences", page_size):
        if ref.get("metadata", {}).get("migrationId") == MIGRATION_ID and ref["entityId"] in touched:
            checked += 1
            failed.append(ref["_id"])
    return RollbackCheck(checked=checked, failed=len(failed), examples=failed[:5])
