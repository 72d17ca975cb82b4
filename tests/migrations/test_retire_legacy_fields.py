"""Migration 002 against the local deployment, through the same core as 001: 001 end to end, then 002's backup,
dry-run, apply, verify and rollback restore; its refusal where 001 is not in effect."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from helpers.connection import errors
from helpers.connection.calls import apply_batch, read_ledger
from helpers.connection.transport import ConvexTransport
from helpers.connection.values import equal
from helpers.devtools.local_deployment import LocalDeployment
from helpers.evidence import archive
from helpers.evidence.run_folder import bind_migration
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.migrations.m002_retire_legacy_fields import MIGRATION as M002
from helpers.runner import run_migration
from helpers.steps import names
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.steps.backup import iter_backup_documents, read_backup, take_backup
from helpers.steps.migration import Migration
from helpers.steps.plan import build_plan, iter_plan_lines, plan_dir, read_plan
from helpers.steps.rollback import check_rollback, execute_rollback, plan_rollback
from helpers.steps.verify import verify
from tests.flow import prepare, seed, state

pytestmark = pytest.mark.deployment

SCENES = 120
#: What 001 flagged and stored normalised or left out: the legacy value is then not carried.
NOT_CARRIED_FLAGS = {"presigned_url", "url_plain_http", "invalid_size", "invalid_checksum"}


def folder(tmp_path: Path, migration_id: str) -> Path:
    run_dir = tmp_path / migration_id
    bind_migration(run_dir, migration_id)
    return run_dir


def apply_and_verify(transport: ConvexTransport, run_dir: Path, migration: Migration) -> None:
    """Steps 03 and 04 after `prepare`, each recorded (results.json and its ledger row) as its notebook records it."""
    applied = apply_plan(transport, run_dir, migration, confirm=True, settings=ApplySettings(show_progress=False))
    assert applied.passed and applied.conflicts == 0 and not applied.errors
    archive.record_step(transport, run_dir, archive.StepResults(step=names.APPLY, status="passed"))
    report = verify(transport, run_dir, migration, show_progress=False)
    assert report.passed, [c for c in report.checks if not c.passed]
    archive.record_step(transport, run_dir, archive.StepResults(step=names.VERIFY, status="passed"))


def run_001(transport: ConvexTransport, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Migration 001 end to end; its plan lines by document id."""
    run_dir = folder(tmp_path, M001.id)
    prepare(transport, run_dir)
    apply_and_verify(transport, run_dir, M001)
    return {line["id"]: line for line in iter_plan_lines(run_dir)}


def test_002_refuses_where_001_never_ran(transport: ConvexTransport, tmp_path: Path) -> None:
    seed(transport, 30)
    run_dir = folder(tmp_path, M002.id)
    before = state(transport)
    with pytest.raises(errors.PreconditionFailed, match="001_s3_asset_tracking has no passed 04_verify") as refused:
        take_backup(transport, run_dir, M002, poll_seconds=0.05, show_progress=False)
    assert "runbook run --migration 001_s3_asset_tracking" in refused.value.hint
    with pytest.raises(errors.PreconditionFailed, match="no passed 04_verify"):
        build_plan(transport, run_dir, M002, show_progress=False, source="live")
    assert not plan_dir(run_dir).exists() and state(transport) == before
    with pytest.raises(errors.PreconditionFailed, match="no passed 04_verify"):  # the runner asks before any folder exists
        run_migration(transport.url, dry_run=True, migration=M002.id, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_002_requires_001_verified_and_not_rolled_back_since(transport: ConvexTransport, tmp_path: Path) -> None:
    seed(transport, 30)
    run_dir = folder(tmp_path, M001.id)
    prepare(transport, run_dir)
    apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False))
    archive.record_step(transport, run_dir, archive.StepResults(step=names.APPLY, status="passed"))
    with pytest.raises(errors.PreconditionFailed, match="no passed 04_verify"):  # applied, not verified
        M002.require(transport)
    report = verify(transport, run_dir, M001, show_progress=False)
    archive.record_step(transport, run_dir, archive.StepResults(step=names.VERIFY, status="passed" if report.passed else "failed"))
    M002.require(transport)  # verified: 002 may run
    m002_dir = folder(tmp_path, M002.id)
    prepare(transport, m002_dir, M002)  # 002's backup and plan while 001 is in effect

    plan_rollback(transport, run_dir, M001, "strip")
    execute_rollback(transport, run_dir, M001, "strip")
    assert [row["step"] for row in read_ledger(transport, M001.id)][-1] == names.ROLLBACK
    with pytest.raises(errors.PreconditionFailed, match="was rolled back"):
        M002.require(transport)
    before = state(transport)
    with pytest.raises(errors.PreconditionFailed, match="was rolled back"):  # apply asks again, before sending anything
        apply_plan(transport, m002_dir, M002, confirm=True, settings=ApplySettings(show_progress=False))
    assert state(transport) == before


def expected_002(line_001: dict[str, Any], doc: dict[str, Any], overtaken: set[str], rewritten: set[str]) -> tuple[str, frozenset[str]]:
    """What 002 must plan for a document, from what 001 planned for it and what happened since."""
    table = line_001["table"]
    if not M002.owned_part(table, doc):
        return "nothing_to_retire", frozenset()
    if line_001["action"] == "problem":
        return "blocked", frozenset({"not_migrated"})
    if doc["_id"] in overtaken:
        return "blocked", frozenset({"legacy_changed_since_migration"})
    # 001's flags on a legacy asset field: a blank key or URL built no asset, anything else was normalised
    reasons = {
        "not_migrated" if p["code"] == "empty_string" and p["field"] not in ("s3ChunkSize", "checksum") else "asset_disagrees_with_legacy"
        for p in line_001["problems"]
        if p["field"] in M002.owned_fields[table] and (p["code"] in NOT_CARRIED_FLAGS or p["code"] == "empty_string")
    }
    if doc["_id"] in rewritten:
        reasons.add("asset_disagrees_with_legacy")
    return ("blocked", frozenset(reasons)) if reasons else ("retire", frozenset())


def rewrite_thumbnail(transport: ConvexTransport, doc: dict[str, Any], s3_url: str) -> None:
    """Someone other than 002 (a new-code writer) rewrites a scene's thumbnail asset; updatedAt stays."""
    item = {"table": "scenes", "id": doc["_id"], "expect": {}, "expectAbsent": [], "unset": [], "insertReferences": [],
            "deleteReferences": [], "set": {"thumbnailAsset": {**doc["thumbnailAsset"], "s3Url": s3_url}}}
    assert [r["outcome"] for r in apply_batch(transport, "test-writer", "test-run", [item])] == ["applied"]


def test_001_then_002_then_002s_rollback_restore(transport: ConvexTransport, tmp_path: Path) -> None:
    seed(transport, SCENES)
    m001 = run_001(transport, tmp_path)
    migrated = state(transport)
    retirable = [i for i, line in m001.items() if line["table"] == "scenes" and line["action"] == "migrate"
                 and not line["problems"] and "s3ChunkKey" in line["expect"] and "thumbnailKey" in line["expect"]]
    overtaken, rewritten = set(retirable[:2]), {retirable[2]}
    for scene in overtaken:  # the legacy renderer after 001: a new chunk the asset does not hold
        transport.mutation("scenes:setChunk", {"id": scene, "s3ChunkKey": f"re/{scene}.mp4", "s3ChunkUrl": f"https://x/{scene}.mp4"})
    for scene in rewritten:
        rewrite_thumbnail(transport, migrated["scenes"][scene], "https://tutor-assets.s3.amazonaws.com/elsewhere.png")

    # backup and dry-run: nothing changes; each document planned as what 001 carried says
    run_dir = folder(tmp_path, M002.id)
    before = state(transport)
    prepare(transport, run_dir, M002)
    assert state(transport) == before
    docs = {i: d for table in M002.tables for i, d in before[table].items()}
    lines = {line["id"]: line for line in iter_plan_lines(run_dir)}
    expected = {i: expected_002(m001[i], doc, overtaken, rewritten) for i, doc in docs.items()}
    assert {i: (line["action"], frozenset(p["code"] for p in line["problems"])) for i, line in lines.items()} == expected
    per_status = Counter((m001[i]["table"], str(docs[i]["status"]), action) for i, (action, _) in expected.items())
    summary = read_plan(run_dir)
    assert {(t, s, a): n for t, statuses in summary.by_status.items() for s, actions in statuses.items() for a, n in actions.items()} == per_status
    assert per_status[("scenes", "completed", "retire")] > 50 and per_status[("scenes", "completed", "blocked")] >= 3
    assert summary.actions["videoSessions"]["retire"] > 5
    per_reason = Counter((m001[i]["table"], code) for i, (_, codes) in expected.items() for code in codes)
    assert {(p.table, p.code): p.count for p in summary.problems} == per_reason  # documents per reason

    # apply: only the retired documents' legacy fields are gone; every other field and document as before
    run_001_dir = tmp_path / M001.id
    plan_rollback(transport, run_001_dir, M001, "strip")  # planned while 002 is not applied: executing it later is refused
    apply_and_verify(transport, run_dir, M002)
    after = state(transport)
    assert after["assetReferences"] == before["assetReferences"]
    for doc_id, doc in docs.items():
        table, line = lines[doc_id]["table"], lines[doc_id]
        if line["action"] == "retire":
            assert after[table][doc_id] == {k: v for k, v in doc.items() if k not in M002.owned_fields[table]}
        else:
            assert after[table][doc_id] == doc  # a blocked document keeps its legacy fields
    report = verify(transport, run_dir, M002, show_progress=False)
    recoverable = next(c for c in report.checks if c.name == "legacy_values_recoverable")
    assert recoverable.passed and recoverable.checked == sum(line["action"] == "retire" for line in lines.values())

    # 001 cannot be rolled back under 002: its assets alone still carry what 002 removed
    for mode in ("strip", "restore"):
        with pytest.raises(errors.PreconditionFailed, match=f"{M002.id} builds on {M001.id} and is applied"):
            plan_rollback(transport, run_001_dir, M001, mode)  # type: ignore[arg-type]
    with pytest.raises(errors.PreconditionFailed, match="builds on .* Nothing was sent"):
        execute_rollback(transport, run_001_dir, M001, "strip")
    assert state(transport) == after

    # strip makes no sense for 002; restore puts every removed field back, exactly as the backup holds it
    with pytest.raises(errors.PreconditionFailed, match="restore"):
        plan_rollback(transport, run_dir, M002, "strip")
    plan_rollback(transport, run_dir, M002, "restore")
    restored = execute_rollback(transport, run_dir, M002, "restore")
    assert not restored.conflicts and not restored.errors
    assert check_rollback(transport, run_dir, M002, "restore").failed == 0
    live = state(transport)
    for table in M002.tables:
        backed_up = {doc["_id"]: doc for doc in iter_backup_documents(read_backup(run_dir), table)}
        assert backed_up.keys() == live[table].keys()
        assert all(equal(live[table][i], doc) for i, doc in backed_up.items())
    plan_rollback(transport, run_001_dir, M001, "strip")  # 002 restored: 001 may be rolled back again


def test_verify_of_002_catches_an_asset_changed_after_retire(transport: ConvexTransport, tmp_path: Path) -> None:
    seed(transport, 30)
    run_001(transport, tmp_path)
    run_dir = folder(tmp_path, M002.id)
    prepare(transport, run_dir, M002)
    apply_and_verify(transport, run_dir, M002)
    retired = next(line["id"] for line in iter_plan_lines(run_dir) if line["action"] == "retire" and "thumbnailKey" in line["unset"])
    rewrite_thumbnail(transport, state(transport)["scenes"][retired], "https://tutor-assets.s3.amazonaws.com/lost.png")
    report = verify(transport, run_dir, M002, show_progress=False)
    failed = {c.name: c for c in report.checks if not c.passed}
    assert "legacy_values_recoverable" in failed and failed["legacy_values_recoverable"].failed == 1
    assert f"{retired} (thumbnailAsset no longer carries thumbnailUrl)" in failed["legacy_values_recoverable"].examples


@pytest.mark.slow
def test_001_then_002_then_002s_rollback_through_the_notebooks(deployment: LocalDeployment, tmp_path: Path) -> None:
    """The same five notebooks and the same `run_migration`, given the migration's id."""
    with deployment.transport() as transport:
        seed(transport, 80)
        assert run_migration(deployment.url, migration=M001.id, confirm=True, runs_dir=tmp_path / "runs").passed
        migrated = state(transport)
        second = run_migration(deployment.url, migration=M002.id, confirm=True, runs_dir=tmp_path / "runs")
        assert second.passed, second.steps
        plan = read_plan(second.run_dir)
        assert second.statistics is not None
        assert all(plan.actions[t]["retire"] for t in M002.tables)
        assert second.statistics.migrated == {M002.label(t): plan.actions[t]["retire"] for t in M002.tables}
        retired = state(transport)
        retired_lines = [line for line in iter_plan_lines(second.run_dir) if line["action"] == "retire"]
        assert all(not M002.owned_part(line["table"], retired[line["table"]][line["id"]]) for line in retired_lines)
        restored = run_migration(deployment.url, confirm=True, run_dir=second.run_dir, steps=[names.ROLLBACK],
                                 parameters={names.ROLLBACK: {"execute": True, "mode": "restore"}})
        assert restored.passed, restored.steps
        after = state(transport)
        assert all(after[t] == migrated[t] for t in (*M002.tables, "assetReferences"))


def preview_rollback(transport: ConvexTransport, run_dir: Path) -> None:
    """05_rollback with execute=False, as its notebook records it: the plan, and a passed step in the ledger."""
    plan_rollback(transport, run_dir, M001, "strip")
    archive.record_step(transport, run_dir, archive.StepResults(step=names.ROLLBACK, status="passed"))


def test_a_rollback_preview_of_001_does_not_block_002(transport: ConvexTransport, tmp_path: Path) -> None:
    seed(transport, 30)
    m001 = folder(tmp_path, M001.id)
    prepare(transport, m001)
    apply_and_verify(transport, m001, M001)
    preview_rollback(transport, m001)
    assert [(r["step"], r["status"]) for r in read_ledger(transport, M001.id)][-1] == (names.ROLLBACK, "passed")
    m002 = folder(tmp_path, M002.id)
    prepare(transport, m002, M002)  # its backup and plan ask the chain first
    apply_and_verify(transport, m002, M002)  # and its apply, under the lock and in every batch


def test_a_rollback_executed_in_the_folder_of_an_earlier_preview_counts(transport: ConvexTransport, tmp_path: Path) -> None:
    """The ledger row keeps the step's first start (the preview's, here before 001's verify): the execution shows in
    the row's mark and its finish, and 002 is refused."""
    seed(transport, 30)
    m001 = folder(tmp_path, M001.id)
    prepare(transport, m001)
    assert apply_plan(transport, m001, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    archive.record_step(transport, m001, archive.StepResults(step=names.APPLY, status="passed"))
    preview_rollback(transport, m001)
    report = verify(transport, m001, M001, show_progress=False)
    assert report.passed
    archive.record_step(transport, m001, archive.StepResults(step=names.VERIFY, status="passed"))
    M002.require(transport)  # previewed, not executed
    execute_rollback(transport, m001, M001, "strip")
    with pytest.raises(errors.PreconditionFailed, match=f"Migration {M001.id} was rolled back .*05_rollback executed, passed"):
        M002.require(transport)


def test_a_retire_item_is_refused_per_document_where_an_asset_carrying_its_values_changed_or_vanished(
    transport: ConvexTransport, tmp_path: Path,
) -> None:
    """Retire relies on the asset fields still carrying the legacy values it removes: where one was stripped (as a
    001 strip leaves it) or rewritten between the plan and apply, the document is a conflict and keeps its legacy fields."""
    seed(transport, 30)
    run_001(transport, tmp_path)
    run_dir = folder(tmp_path, M002.id)
    prepare(transport, run_dir, M002)
    retiring = [line for line in iter_plan_lines(run_dir) if line["action"] == "retire" and "videoAsset" in line["expect"]
                and "thumbnailAsset" in line["expect"]]
    stripped, rewritten = retiring[0]["id"], retiring[1]["id"]
    strip = {"table": "scenes", "id": stripped, "expect": {}, "expectAbsent": [], "set": {}, "unset": ["videoAsset"],
             "insertReferences": [], "deleteReferences": []}
    assert [r["outcome"] for r in apply_batch(transport, "someone-else", "test-run", [strip])] == ["applied"]
    rewrite_thumbnail(transport, state(transport)["scenes"][rewritten], "https://tutor-assets.s3.amazonaws.com/moved.png")
    before = state(transport)

    applied = apply_plan(transport, run_dir, M002, confirm=True, settings=ApplySettings(show_progress=False))
    assert {o.id: o.message for o in applied.conflict_examples} == {
        stripped: "changed since the plan: videoAsset changed", rewritten: "changed since the plan: thumbnailAsset changed"}
    after = state(transport)
    for doc_id in (stripped, rewritten):  # every legacy value still there
        assert M002.owned_part("scenes", after["scenes"][doc_id]) == M002.owned_part("scenes", before["scenes"][doc_id])
