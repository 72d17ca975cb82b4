"""The runbook's steps through the Python API against a local deployment with sample data:
dry-run changes nothing, apply and verify pass, apply twice changes nothing, conflicts, refusals, rollback."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers.connection import errors
from helpers.connection.calls import acquire_lock, release_lock
from helpers.connection.transport import ConvexTransport
from helpers.evidence import compression
from helpers.evidence.run_folder import bind_migration
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.migrations.m001_s3_asset_tracking.plan_line import CHANGING_ACTIONS
from helpers.steps.apply import ApplySettings, ApplySummary, apply_plan
from helpers.steps.backup import take_backup
from helpers.steps.plan import PLAN_FILE, build_plan, iter_plan_lines, plan_dir
from helpers.steps.rollback import check_rollback, execute_rollback, plan_rollback
from helpers.steps.verify import verify
from tests.flow import migration_references, prepare, seed, state


def apply(transport: ConvexTransport, run_dir: Path, *, max_backup_age_hours: float = 24.0, allow_stale_backup: bool = False,
          **knobs: Any) -> ApplySummary:
    """apply_plan of migration 001, confirmed, without a progress bar; `knobs`: ApplySettings' fields."""
    return apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False, **knobs),
                      max_backup_age_hours=max_backup_age_hours, allow_stale_backup=allow_stale_backup)


def test_dry_run_changes_nothing(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport)
    before = state(transport)
    summary = build_plan(transport, run_dir, M001, show_progress=False, source="live")
    assert state(transport) == before
    assert summary.documents == len(before["scenes"]) + len(before["videoSessions"])
    assert (plan_dir(run_dir) / PLAN_FILE).exists() and (plan_dir(run_dir) / "problems.csv").exists()


def test_the_plan_from_the_snapshot_equals_the_plan_from_the_live_tables_on_a_quiet_deployment(
    transport: ConvexTransport, run_dir: Path, tmp_path: Path
) -> None:
    seed(transport)
    take_backup(transport, run_dir, M001, poll_seconds=0.05, show_progress=False)
    from_snapshot = build_plan(transport, run_dir, M001, show_progress=False, page_size=7)  # pages end mid-session
    bind_migration(tmp_path / "live", M001.id)
    from_live = build_plan(transport, tmp_path / "live", M001, show_progress=False, source="live", page_size=7)
    assert from_snapshot.parameters["source"] == "snapshot" and from_live.parameters["source"] == "live"
    assert from_snapshot.plan_sha256 == from_live.plan_sha256
    assert from_snapshot.problems and from_snapshot.problems == from_live.problems
    assert {line["action"] for line in iter_plan_lines(run_dir)} >= {"migrate", "problem"}


def test_the_dry_run_from_the_snapshot_needs_the_backup(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, 5)
    with pytest.raises(errors.PreconditionFailed, match="plans from this run folder's backup") as refused:
        build_plan(transport, run_dir, M001, show_progress=False)
    assert "source='live'" in refused.value.hint
    assert not plan_dir(run_dir).exists()


def test_apply_verify_then_apply_again_changes_nothing(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport)
    prepare(transport, run_dir)
    planned = Counter(line["table"] for line in iter_plan_lines(run_dir) if line["action"] in CHANGING_ACTIONS)
    planned_refs = sum(len(line["references"]) for line in iter_plan_lines(run_dir) if line["action"] in CHANGING_ACTIONS)
    first = apply(transport, run_dir, batch_size=37)
    assert first.passed and first.conflicts == 0 and not first.errors
    assert first.migrated["scenes"] == planned["scenes"] and first.migrated["videoSessions"] == planned["videoSessions"]
    assert first.references_created == planned_refs == len(migration_references(transport))
    report = verify(transport, run_dir, M001, show_progress=False)
    assert report.passed, [c for c in report.checks if not c.passed]

    after_first = state(transport)
    del after_first["migrationRuns"]  # the ledger records every run, this one included
    second = apply(transport, run_dir, batch_size=50)
    assert second.passed and second.recheck and not first.recheck
    figures = ("migrated", "references_created", "already_applied", "conflicts", "errors")
    assert [getattr(second, f) for f in figures] == [getattr(first, f) for f in figures]  # the first run's figures stay
    assert sum(c.get("already_applied", 0) for c in second.answers.values()) == sum(planned.values())
    after_second = state(transport)
    del after_second["migrationRuns"]
    assert after_second == after_first


def test_writer_between_plan_and_apply_is_a_conflict_and_keeps_its_write(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport)
    prepare(transport, run_dir)
    targets = [line["id"] for line in iter_plan_lines(run_dir) if line["table"] == "scenes" and line["action"] == "migrate"][:3]
    for scene in targets:
        transport.mutation("scenes:setChunk", {"id": scene, "s3ChunkKey": f"rerendered/{scene}.mp4", "s3ChunkUrl": f"https://x/{scene}.mp4"})
    summary = apply(transport, run_dir)
    conflicts = {o.id for o in summary.conflict_examples}
    assert conflicts == set(targets) and summary.conflicts == 3
    scenes = state(transport)["scenes"]
    for scene in targets:
        assert scenes[scene]["s3ChunkKey"] == f"rerendered/{scene}.mp4" and "videoAsset" not in scenes[scene]
    assert verify(transport, run_dir, M001, show_progress=False).passed


def test_refusals_change_nothing(transport: ConvexTransport, run_dir: Path, tmp_path: Path) -> None:
    seed(transport)
    build_plan(transport, run_dir, M001, show_progress=False, source="live")
    with pytest.raises(errors.PreconditionFailed, match="No backup"):
        apply(transport, run_dir)

    ready = tmp_path / "ready"
    prepare(transport, ready)
    before = state(transport)
    with pytest.raises(errors.PreconditionFailed, match="Not confirmed"):
        apply_plan(transport, ready, M001, confirm=False, settings=ApplySettings(show_progress=False))
    with pytest.raises(errors.PreconditionFailed, match="old"):
        apply(transport, ready, max_backup_age_hours=0.0)
    acquire_lock(transport, M001.id, "someone-elses-run", "alice", 60_000)
    with pytest.raises(errors.PreconditionFailed, match="alice"):
        apply(transport, ready)
    release_lock(transport, "someone-elses-run")
    plan_file = plan_dir(ready) / PLAN_FILE
    lines = list(compression.iter_lines(plan_file))
    with compression.open_write(plan_file) as sink:  # a line dropped, the file still well-formed: only the hash tells
        sink.write(b"".join(lines[1:]))
    with pytest.raises(errors.PreconditionFailed, match="does not match"):
        apply(transport, ready)
    assert state(transport) == before


def test_stale_backup_override_is_recorded(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, 50)
    prepare(transport, run_dir)
    summary = apply(transport, run_dir, max_backup_age_hours=0.0, allow_stale_backup=True)
    assert summary.passed and summary.backup_age_override is True


@pytest.mark.parametrize("mode", ["strip", "restore"])
def test_rollback_returns_documents_to_backup(transport: ConvexTransport, run_dir: Path, mode: str) -> None:
    seed(transport)
    before = state(transport)
    prepare(transport, run_dir)
    assert apply(transport, run_dir).passed
    planned = plan_rollback(transport, run_dir, M001, mode)
    assert not planned.executed and planned.references_to_delete == len(migration_references(transport))
    done = execute_rollback(transport, run_dir, M001, mode)
    assert not done.errors and not done.conflicts
    assert check_rollback(transport, run_dir, M001, mode).failed == 0
    after = state(transport)
    assert after["scenes"] == before["scenes"] and after["videoSessions"] == before["videoSessions"]
    assert migration_references(transport) == []


def test_plan_lines_are_json_with_hash(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, 50)
    summary = build_plan(transport, run_dir, M001, show_progress=False, source="live")
    lines = [orjson.loads(raw) for raw in compression.iter_lines(plan_dir(run_dir) / PLAN_FILE)]
    assert len(lines) == summary.documents
    assert {"table", "id", "action", "expect", "expectAbsent", "set", "references", "problems"} <= set(lines[0])
