"""The dry-run's core (helpers.steps.plan) around a migration's planner: the plan file, its hash, its tables, its refusals.

Runs a migration the runbook does not ship (tests/toy_migration.py) against a fake deployment that answers
`migration:readPage`, so what is checked here is the core alone.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import helpers.steps.plan
from helpers.connection import jsonio
from helpers.connection.errors import PreconditionFailed
from helpers.evidence import compression
from helpers.evidence.archive import sha256_file
from helpers.evidence.run_folder import bind_migration
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.notebook_ui import display as show
from helpers.steps.migration import Migration
from helpers.steps.plan import (
    PLAN_FILE,
    UNCOMPRESSED_PLAN_FILE,
    build_plan,
    example_pairs,
    iter_plan_lines,
    plan_dir,
    read_plan,
)
from tests.toy_migration import TOY

NOTES = [
    {"_id": "n1", "_creationTime": 1.0, "text": "one two three", "status": "draft"},
    {"_id": "n2", "_creationTime": 2.0, "text": "four", "status": "final"},
    {"_id": "n3", "_creationTime": 3.0, "text": 7, "status": "final"},
    {"_id": "n4", "_creationTime": 4.0, "text": "done", "wordCount": 1, "status": "final"},
]


class PagedTables:
    """A deployment as far as `migration:readPage` goes: fixed tables, two documents per page at most."""

    url = "http://127.0.0.1:9"

    def __init__(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        self.tables = tables
        self.paths: list[str] = []

    def function(self, path: str, args: dict[str, Any], **_: Any) -> Any:
        self.paths.append(path)
        assert path == "migration:readPage"
        docs = self.tables[args["table"]]
        start = int(args["cursor"] or 0)
        end = start + min(args["numItems"], 2)
        return {"page": docs[start:end], "isDone": end >= len(docs), "continueCursor": str(end)}


@pytest.fixture
def toy_run(tmp_path: Path, toy_registered: Migration) -> Path:
    run_dir = tmp_path / "run"
    bind_migration(run_dir, toy_registered.id)
    return run_dir


def test_the_plan_holds_what_the_migration_planned_in_order_hashed_and_counted(toy_run: Path) -> None:
    deployment = PagedTables({"notes": NOTES})
    summary = build_plan(deployment, toy_run, TOY, source="live", page_size=2, show_progress=False)  # type: ignore[arg-type]

    lines = list(iter_plan_lines(toy_run))
    assert [line["id"] for line in lines] == ["n1", "n2", "n3", "n4"]
    assert lines[0]["set"] == {"wordCount": 3} and lines[1]["set"] == {"wordCount": 1}
    raw = next(compression.iter_lines(plan_dir(toy_run) / PLAN_FILE))
    assert raw == jsonio.dumps(lines[0], sort_keys=True) + b"\n"  # one line per document, keys sorted: a stable hash
    assert read_plan(toy_run).plan_sha256 == summary.plan_sha256
    assert summary.migration_id == TOY.id and summary.documents == 4
    assert summary.actions == {"notes": {"count": 2, "problem": 1, "no_change": 1}}
    assert summary.by_status == {"notes": {"draft": {"count": 1}, "final": {"count": 1, "problem": 1, "no_change": 1}}}
    assert summary.changes == 2 and summary.references == 0
    [problem] = summary.problems
    assert (problem.table, problem.code, problem.count, problem.examples) == ("notes", "no_text", 1, ["n3"])
    with (plan_dir(toy_run) / "problems.csv").open(newline="") as source:
        assert [row["id"] for row in csv.DictReader(source)] == ["n3"]
    assert set(deployment.paths) == {"migration:readPage"}  # the dry-run only reads


def test_an_altered_plan_is_refused(toy_run: Path) -> None:
    build_plan(PagedTables({"notes": NOTES}), toy_run, TOY, source="live", show_progress=False)  # type: ignore[arg-type]
    path = plan_dir(toy_run) / PLAN_FILE
    altered = b"".join(compression.iter_lines(path)).replace(b'"wordCount":3', b'"wordCount":4')
    with compression.open_write(path) as sink:  # a well-formed compressed file: only the hash can tell
        sink.write(altered)
    with pytest.raises(PreconditionFailed, match="does not match the dry-run's hash"):
        read_plan(toy_run)


def test_a_run_folder_written_before_compression_still_reads(toy_run: Path) -> None:
    """A folder of the earlier format holds plan/plan.jsonl, uncompressed, hashed as stored: it reads as before."""
    build_plan(PagedTables({"notes": NOTES}), toy_run, TOY, source="live", show_progress=False)  # type: ignore[arg-type]
    expected = list(iter_plan_lines(toy_run))
    out = plan_dir(toy_run)
    old = out / UNCOMPRESSED_PLAN_FILE
    old.write_bytes(b"".join(compression.iter_lines(out / PLAN_FILE)))
    (out / PLAN_FILE).unlink()
    record = jsonio.loads((out / "plan.json").read_bytes())
    record.update(plan_file="plan/plan.jsonl", plan_sha256=sha256_file(old))
    (out / "plan.json").write_bytes(jsonio.dumps(record))
    assert read_plan(toy_run).plan_sha256 == sha256_file(old) and list(iter_plan_lines(toy_run)) == expected
    old.write_bytes(old.read_bytes().replace(b'"wordCount":3', b'"wordCount":4'))
    with pytest.raises(PreconditionFailed, match="does not match the dry-run's hash"):
        read_plan(toy_run)


def test_a_run_folder_holds_one_plan(toy_run: Path) -> None:
    build_plan(PagedTables({"notes": NOTES}), toy_run, TOY, source="live", show_progress=False)  # type: ignore[arg-type]
    with pytest.raises(PreconditionFailed, match="a run folder holds one plan"):
        build_plan(PagedTables({"notes": NOTES}), toy_run, TOY, source="live", show_progress=False)  # type: ignore[arg-type]


def test_a_migration_that_refuses_the_deployment_plans_nothing(toy_run: Path) -> None:
    def not_ready(transport: Any) -> None:
        raise PreconditionFailed("migration 000 was not applied", hint="apply it first")

    refusing = dataclasses.replace(TOY, require=not_ready)  # the declaration the step is handed asks the deployment
    deployment = PagedTables({"notes": NOTES})
    with pytest.raises(PreconditionFailed, match="000 was not applied"):
        build_plan(deployment, toy_run, refusing, source="live", show_progress=False)  # type: ignore[arg-type]
    assert deployment.paths == [] and not plan_dir(toy_run).exists()


def test_the_snapshot_source_needs_the_backup(toy_run: Path) -> None:
    with pytest.raises(PreconditionFailed, match="plans from this run folder's backup snapshot"):
        build_plan(PagedTables({"notes": NOTES}), toy_run, TOY, show_progress=False)  # type: ignore[arg-type]


def test_examples_show_what_a_line_sets_and_what_it_removes(tmp_path: Path) -> None:
    lines = [
        {"id": "a", "table": "scenes", "action": "retire", "expect": {"s3ChunkKey": "k.mp4", "videoAsset": {"s3Key": "k.mp4"}},
         "set": {}, "unset": ["s3ChunkKey"], "problems": []},
        {"id": "b", "table": "scenes", "action": "blocked", "expect": {}, "set": {}, "unset": [],
         "problems": [{"code": "not_migrated", "severity": "blocking", "message": "no videoAsset"}]},
    ]
    plan_file = plan_dir(tmp_path) / UNCOMPRESSED_PLAN_FILE  # a folder of the earlier format: read as it is
    plan_file.parent.mkdir()
    plan_file.write_bytes(b"".join(jsonio.dumps(line) + b"\n" for line in lines))
    bind_migration(tmp_path, "001_s3_asset_tracking")  # any registered migration: only its changing actions matter
    [(before, after), _] = example_pairs(tmp_path, M001, 5)
    assert before["s3ChunkKey"] == "k.mp4" and "s3ChunkKey" not in after
    carriers = {"scenes": {"s3ChunkKey": ("videoAsset",)}}
    rows = show.before_after_frame(example_pairs(tmp_path, M001, 5), carriers).set_index("document")
    removed = rows.loc["scenes a · retire"]
    assert (removed["new field"], removed["new value"], removed["from legacy field(s)"]) == (
        "s3ChunkKey (removed)", "(absent)", 's3ChunkKey = k.mp4\ncarried by videoAsset = {\n "s3Key": "k.mp4"\n}'
    )


def test_a_plan_that_names_no_migration_is_refused_not_read_as_the_first_migrations(toy_run: Path) -> None:
    build_plan(PagedTables({"notes": NOTES}), toy_run, TOY, source="live", show_progress=False)  # type: ignore[arg-type]
    summary_path = plan_dir(toy_run) / "plan.json"
    record = jsonio.loads(summary_path.read_bytes())
    del record["migration_id"]
    summary_path.write_bytes(jsonio.dumps(record))
    with pytest.raises(ValidationError, match="migration_id"):
        read_plan(toy_run)


def _snapshot_of(run_dir: Path, tables: dict[str, list[dict[str, Any]]]) -> None:
    """A backup step's output for `tables`: a ZIP in Convex's export layout and its record."""
    out = run_dir / "backup"
    out.mkdir(parents=True)
    with zipfile.ZipFile(out / "snapshot_1.zip", "w") as archive:
        archive.writestr("README.md", "export")
        archive.writestr("_tables/documents.jsonl", "".join(jsonio.dumps({"name": t}).decode() + "\n" for t in tables))
        for table, docs in tables.items():
            archive.writestr(f"{table}/documents.jsonl", "".join(jsonio.dumps(d).decode() + "\n" for d in docs))
    data = (out / "snapshot_1.zip").read_bytes()
    record = {"zip_file": "snapshot_1.zip", "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data), "snapshot_ts": 1,
              "snapshot_time": "1970-01-01T00:00:00.000+00:00", "counts": {t: len(d) for t, d in tables.items()},
              "deployment_url": "http://127.0.0.1:9", "taken_at": "1970-01-01T00:00:00+00:00"}
    (out / "backup.json").write_bytes(jsonio.dumps(record))


def test_fewer_gc_passes_only_when_planning_from_the_snapshot(toy_run: Path, tmp_path: Path, toy_registered: Migration,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot is a local file; with the HTTP client in the loop (live) its cycles would hold page bodies."""
    entered: list[bool] = []

    @contextlib.contextmanager
    def recording() -> Any:
        entered.append(True)
        yield

    monkeypatch.setattr(helpers.steps.plan, "few_collections", recording)
    _snapshot_of(toy_run, {"notes": NOTES})
    from_snapshot = build_plan(PagedTables({"notes": NOTES}), toy_run, TOY, show_progress=False)  # type: ignore[arg-type]
    assert entered == [True]
    live_run = tmp_path / "live"
    bind_migration(live_run, toy_registered.id)
    from_live = build_plan(PagedTables({"notes": NOTES}), live_run, toy_registered, source="live", show_progress=False)  # type: ignore[arg-type]
    assert entered == [True] and from_live.plan_sha256 == from_snapshot.plan_sha256
