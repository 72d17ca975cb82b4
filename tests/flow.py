"""Test helpers for whole-runbook flows against a local deployment (not a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import MIGRATION_ID
from helpers.backup import take_backup
from helpers.deployment import iter_documents
from helpers.fields import ALL_TABLES
from helpers.plan import build_plan
from helpers.sample_data import load
from helpers.transport import ConvexTransport

SAMPLE_SCENES = 300


def seed(transport: ConvexTransport, scenes: int = SAMPLE_SCENES) -> None:
    load(transport, scenes)


def state(transport: ConvexTransport) -> dict[str, dict[str, dict[str, Any]]]:
    """Every document of every table, by id."""
    return {table: {doc["_id"]: doc for doc in iter_documents(transport, table)} for table in ALL_TABLES}


def prepare(transport: ConvexTransport, run_dir: Path) -> None:
    """Steps 01 and 02: backup and plan."""
    take_backup(transport, run_dir, poll_seconds=0.05, show_progress=False)
    build_plan(transport, run_dir, show_progress=False)


def migration_references(transport: ConvexTransport) -> list[dict[str, Any]]:
    return [r for r in iter_documents(transport, "assetReferences") if r["metadata"]["migrationId"] == MIGRATION_ID]


def comparable(snapshot: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """A state with what differs between two equal runs removed: creation times, run ids, reference ids."""
    migrated = {
        table: {doc_id: {k: v for k, v in doc.items() if k != "_creationTime"} for doc_id, doc in docs.items()}
        for table, docs in snapshot.items()
        if table in ("scenes", "videoSessions")
    }
    references = sorted(
        (r["entityId"], r["assetType"], r["s3Key"], r["s3Url"], r["contentType"], r.get("size"), r.get("checksum"), r["uploadedAt"])
        for r in snapshot["assetReferences"].values()
    )
    return {"documents": migrated, "references": references}
