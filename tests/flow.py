"""Test helpers for whole-runbook flows against a local deployment (not a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.connection.calls import iter_documents
from helpers.connection.transport import ConvexTransport
from helpers.devtools.sample_data import load
from helpers.evidence.archive import StepResults, write_step_results
from helpers.evidence.run_folder import bind_migration
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.migrations.m001_s3_asset_tracking.fields import ALL_TABLES
from helpers.steps import names
from helpers.steps.backup import take_backup
from helpers.steps.migration import Migration
from helpers.steps.plan import build_plan

SAMPLE_SCENES = 300


def seed(transport: ConvexTransport, scenes: int = SAMPLE_SCENES) -> None:
    load(transport, scenes)


def state(transport: ConvexTransport) -> dict[str, dict[str, dict[str, Any]]]:
    """Every document of every table, by id."""
    return {table: {doc["_id"]: doc for doc in iter_documents(transport, table)} for table in ALL_TABLES}


def prepare(transport: ConvexTransport, run_dir: Path, migration: Migration = M001) -> None:
    """Steps 01 and 02 of `migration` (001 unless told): backup and plan, each with the passed results.json its
    notebook would write (the later notebooks check that the step before them passed). A folder bound to no
    migration yet is bound to it; one bound to another is refused, as Step.open refuses it."""
    bind_migration(run_dir, migration.id)
    backup = take_backup(transport, run_dir, migration, poll_seconds=0.05, show_progress=False)
    write_step_results(run_dir, names.BACKUP, StepResults(step=names.BACKUP, status="passed",
                                                                  outputs={"backup_sha256": backup.sha256}))
    plan = build_plan(transport, run_dir, migration, show_progress=False)
    write_step_results(run_dir, names.DRY_RUN, StepResults(step=names.DRY_RUN, status="passed",
                                                          outputs={"plan_sha256": plan.plan_sha256}))


def migration_references(transport: ConvexTransport) -> list[dict[str, Any]]:
    return [r for r in iter_documents(transport, "assetReferences") if r["metadata"]["migrationId"] == M001.id]


def comparable(snapshot: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """A state with what differs between two equal runs on two deployments removed: creation times (and an
    `uploadedAt` the rules took from one, for a document without `updatedAt`), run ids, reference ids."""
    created = {doc_id: doc["_creationTime"] for table in ("scenes", "videoSessions") for doc_id, doc in snapshot[table].items()}

    def uploaded(value: Any, entity: str) -> Any:
        return "<_creationTime>" if value == created.get(entity) else value

    def document(doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in doc.items():
            if key == "_creationTime":
                continue
            if isinstance(value, dict) and "uploadedAt" in value:
                value = {**value, "uploadedAt": uploaded(value["uploadedAt"], doc_id)}
            out[key] = value
        return out

    migrated = {
        table: {doc_id: document(doc_id, doc) for doc_id, doc in snapshot[table].items()} for table in ("scenes", "videoSessions")
    }
    references = sorted(
        (r["entityId"], r["assetType"], r["s3Key"], r["s3Url"], r["contentType"], r.get("size"), r.get("checksum"),
         uploaded(r["uploadedAt"], r["entityId"]))
        for r in snapshot["assetReferences"].values()
    )
    return {"documents": migrated, "references": references}
