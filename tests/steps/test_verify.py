"""Verify is shown to fail: each check alone on hand-built documents, then on a local deployment put in exactly
the state each check must catch (every other check passing); the application's own writes are reported, not
blamed; tracking is complete."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.connection.calls import apply_batch, iter_documents
from helpers.connection.transport import ConvexTransport
from helpers.evidence.run_folder import bind_migration
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.migrations.m001_s3_asset_tracking import fields, rules
from helpers.migrations.m001_s3_asset_tracking.checks import (
    SceneTotals,
    asset_disagreement,
    check_assets_equal_legacy,
    check_assets_status_matches_legacy,
    check_session_totals,
    expected_assets_status,
)
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.steps.backup import iter_backup_documents, take_backup
from helpers.steps.plan import build_plan, iter_plan_lines, read_plan
from helpers.steps.verify import (
    DOCUMENT_CHECKS,
    Before,
    Joined,
    Planned,
    Reference,
    Verdict,
    check_asset_tracked,
    check_document_still_exists,
    check_legacy_fields_unchanged,
    check_no_duplicate_references,
    check_nothing_outside_plan_changed,
    check_plan_writes_only_owned_fields,
    check_planned_fields_written,
    check_reference_has_asset,
    check_reference_points_at_document,
    check_references_match_asset,
    verify,
)
from tests.flow import migration_references, prepare, seed

PASS, FAIL, APP = Verdict.PASS, Verdict.FAIL, Verdict.APPLICATION
BUCKET = "https://tutor-assets.s3.us-east-1.amazonaws.com"
KEY = "sessions/s1/scene-0/chunk.mp4"


# -- hand-built documents -----------------------------------------------------------------------------------------


def legacy_scene(**changes: Any) -> dict[str, Any]:
    doc = {
        "_id": "scene1", "_creationTime": 1.7e12, "sessionId": "sess1", "sceneIndex": 0, "status": "completed",
        "s3ChunkKey": KEY, "s3ChunkUrl": f"{BUCKET}/{KEY}", "s3ChunkSize": 1000, "checksum": "abc", "updatedAt": 1_710_000_000_000,
    }
    doc.update(changes)
    return doc


def plan_line(doc: dict[str, Any], table: str = "scenes") -> dict[str, Any]:
    plan = rules.plan_scene(doc, rules.RulesContext()) if table == "scenes" else rules.plan_session(doc, rules.SessionTotals(), rules.RulesContext())
    return plan.to_line()


def joined(before: dict[str, Any] | None, line: dict[str, Any] | None, live: dict[str, Any] | None, table: str = "scenes") -> Joined:
    set_fields = line["set"] if line is not None and line["action"] in rules.CHANGING_ACTIONS else ()
    return Joined(
        M001,
        table,
        Before.of(M001, table, before, set_fields) if before is not None else None,
        Planned.of(M001, line) if line is not None else None,
        live,
    )


def migrated_scene(**legacy_changes: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(backup document, plan line, live document after a correct apply)."""
    before = legacy_scene(**legacy_changes)
    line = plan_line(before)
    return before, line, {**before, **line["set"]}


def by_app(live: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """What a legacy writer does: changes legacy fields and moves updatedAt."""
    return {**live, **changes, "updatedAt": live["updatedAt"] + 1}


def test_a_correct_migration_passes_every_document_check() -> None:
    before, line, live = migrated_scene()
    doc = joined(before, line, live)
    assert {c.name: c.run(doc) for c in (*DOCUMENT_CHECKS, *M001.checks)} == {
        "planned_fields_written": PASS, "assets_equal_legacy": PASS, "assets_status_matches_legacy": PASS,
        "legacy_fields_unchanged": PASS, "nothing_outside_plan_changed": PASS, "no_backup_document_missing": PASS,
    }


def test_planned_fields_written() -> None:
    before, line, live = migrated_scene()
    assert check_planned_fields_written(joined(before, line, live)) is PASS
    assert check_planned_fields_written(joined(before, line, {**live, "assetVersion": 2})) is FAIL
    assert check_planned_fields_written(joined(before, line, {k: v for k, v in live.items() if k != "assetVersion"})) is FAIL
    assert check_planned_fields_written(joined(before, line, before)) is FAIL  # apply never wrote it
    assert check_planned_fields_written(joined(before, line, by_app(before, status="failed"))) is APP  # apply's conflict
    assert check_planned_fields_written(joined(before, {**line, "action": "problem", "set": {}}, before)) is None


def test_legacy_fields_unchanged() -> None:
    before, line, live = migrated_scene()
    assert check_legacy_fields_unchanged(joined(before, line, live)) is PASS
    assert check_legacy_fields_unchanged(joined(before, line, {**live, "title": "written by the migration"})) is FAIL
    assert check_legacy_fields_unchanged(joined(before, line, {**live, "_creationTime": 1})) is FAIL
    assert check_legacy_fields_unchanged(joined(before, line, {k: v for k, v in live.items() if k != "checksum"})) is FAIL
    assert check_legacy_fields_unchanged(joined(before, line, by_app(live, s3ChunkKey="new.mp4"))) is APP
    assert check_legacy_fields_unchanged(joined(None, line, live)) is None


def test_nothing_outside_plan_changed() -> None:
    before, line, live = migrated_scene()
    assert check_nothing_outside_plan_changed(joined(before, line, live)) is PASS
    problem = {**line, "action": "problem", "set": {}}
    assert check_nothing_outside_plan_changed(joined(before, problem, before)) is PASS
    assert check_nothing_outside_plan_changed(joined(before, problem, {**before, "assetVersion": 1})) is FAIL
    assert check_nothing_outside_plan_changed(joined(before, line, {**live, "subtitleAsset": live["videoAsset"]})) is FAIL
    asset = live["videoAsset"]
    had = {**before, "videoAsset": asset}
    assert check_nothing_outside_plan_changed(joined(had, problem, before)) is FAIL  # removed
    assert check_nothing_outside_plan_changed(joined(before, problem, by_app(before, status="failed") | {"assetVersion": 1})) is APP
    assert check_plan_writes_only_owned_fields(M001, line) is PASS
    assert check_plan_writes_only_owned_fields(M001, {**line, "set": {**line["set"], "status": "x"}}) is FAIL


def test_a_plan_may_remove_only_fields_its_migration_owns() -> None:
    _, line, _ = migrated_scene()
    assert check_plan_writes_only_owned_fields(M001, {**line, "unset": ["assetVersion"]}) is PASS
    assert check_plan_writes_only_owned_fields(M001, {**line, "unset": ["s3ChunkKey"]}) is FAIL  # a legacy field
    assert check_plan_writes_only_owned_fields(M001, {k: v for k, v in line.items() if k != "unset"}) is PASS
    assert check_plan_writes_only_owned_fields(M001, {**line, "table": "notes"}) is FAIL  # a table it does not change


def test_document_still_exists() -> None:
    before, line, live = migrated_scene()
    assert check_document_still_exists(joined(before, line, live)) is PASS
    assert check_document_still_exists(joined(before, line, None)) is FAIL
    assert check_document_still_exists(joined(None, line, live)) is None


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"s3Key": "other.mp4"}, "key"),
        ({"s3Key": "other.mp4", "s3Url": f"{BUCKET}/other.mp4"}, "key"),
        ({"s3Url": f"{BUCKET}/other.mp4"}, "URL"),
        ({"checksum": "abd"}, "checksum"),
        ({"size": 1001}, "size"),
        ({"contentType": ""}, "contentType"),
    ],
)
def test_assets_equal_legacy_compares_key_url_checksum_size_and_type(change: dict[str, Any], what: str) -> None:
    before, line, live = migrated_scene()
    wrong = {**live, "videoAsset": {**live["videoAsset"], **change}}
    assert asset_disagreement("scenes", "videoAsset", wrong["videoAsset"], wrong) == what
    assert check_assets_equal_legacy(joined(before, line, wrong)) is FAIL
    assert check_assets_equal_legacy(joined(before, line, by_app(wrong))) is APP
    assert check_assets_equal_legacy(joined(before, line, live)) is PASS


@pytest.mark.parametrize(
    ("asset", "names"),
    [
        ({"s3Key": KEY, "s3Url": f"{BUCKET}/{KEY}"}, True),
        ({"s3Key": "a b.mp4", "s3Url": f"{BUCKET}/a%20b.mp4"}, True),
        ({"s3Key": KEY, "s3Url": f"{BUCKET}/other.mp4"}, False),
        ({"s3Key": KEY, "s3Url": f"https://cdn.example.com/media/{KEY}"}, True),  # under a bucket_base_url
        ({"s3Key": "a b.mp4", "s3Url": "https://cdn.example.com/a%20b.mp4"}, True),
        ({"s3Key": KEY, "s3Url": "https://cdn.example.com/media/other.mp4"}, False),
        ({"s3Key": KEY, "s3Url": f"https://cdn.example.com/x{KEY}"}, False),
        ({"s3Key": KEY}, False),
        ({"s3Url": f"{BUCKET}/{KEY}", "s3Key": 3}, False),
    ],
)
def test_an_assets_url_must_name_its_key(asset: dict[str, Any], names: bool) -> None:
    full = {"contentType": "video/mp4", **asset}
    doc = {"s3ChunkKey": "  ", "s3ChunkUrl": ""}  # blank legacy fields: nothing else to compare
    assert (asset_disagreement("scenes", "sourceCodeAsset", full, doc) is None) is names


def test_asset_disagreement_edges() -> None:
    doc = legacy_scene(s3ChunkSize=0)
    asset = {"s3Key": KEY, "s3Url": f"{BUCKET}/{KEY}", "contentType": "video/mp4", "size": 0, "checksum": "abc"}
    assert asset_disagreement("scenes", "videoAsset", asset, doc) is None
    assert asset_disagreement("scenes", "videoAsset", "not a dict", doc) == "not an asset object"
    assert asset_disagreement("scenes", "videoAsset", {**asset, "s3Url": f"https:///{BUCKET[8:]}/{KEY}"}, doc) == "URL"
    assert asset_disagreement("scenes", "videoAsset", {**asset, "size": 0.0}, doc) is None  # Convex: 0 == 0.0
    assert asset_disagreement("scenes", "videoAsset", {k: v for k, v in asset.items() if k != "size"}, doc) == "size"
    assert asset_disagreement("scenes", "videoAsset", asset, {**doc, "s3ChunkSize": -1}) == "size"


def test_checks_that_need_a_live_document_or_a_plan_say_nothing_without_one() -> None:
    before, line, live = migrated_scene()
    for check in (*DOCUMENT_CHECKS, *M001.checks):
        if check.name != "no_backup_document_missing":
            assert check.run(joined(before, line, None)) is None, check.name
    assert check_nothing_outside_plan_changed(joined(before, None, before)) is PASS
    assert check_nothing_outside_plan_changed(joined(before, None, {**before, "assetVersion": 1})) is FAIL
    for check in (check_assets_equal_legacy, check_assets_status_matches_legacy, check_planned_fields_written):
        assert check(joined(before, None, live)) is None
    assert check_asset_tracked(joined(before, line, None), []) is None


def test_assets_equal_legacy_checks_a_derived_key_against_its_url() -> None:
    before = {k: v for k, v in legacy_scene().items() if k != "s3ChunkKey"}
    line = plan_line(before)
    live = {**before, **line["set"]}
    assert check_assets_equal_legacy(joined(before, line, live)) is PASS
    wrong = {**live, "videoAsset": {**live["videoAsset"], "s3Key": "other.mp4"}}
    assert asset_disagreement("scenes", "videoAsset", wrong["videoAsset"], wrong) == "key (its URL names another)"


def test_assets_equal_legacy_knows_what_the_rules_leave_out() -> None:
    before, line, live = migrated_scene(s3ChunkSize="12", checksum=7, s3ChunkUrl=f"{BUCKET}/{KEY}?X-Amz-Signature=s")
    assert "size" not in live["videoAsset"] and "checksum" not in live["videoAsset"]
    assert check_assets_equal_legacy(joined(before, line, live)) is PASS
    with_size = {**live, "videoAsset": {**live["videoAsset"], "size": 12}}
    assert asset_disagreement("scenes", "videoAsset", with_size["videoAsset"], with_size) == "size"
    plain_http = migrated_scene(s3ChunkUrl=f"http://{BUCKET[8:]}/{KEY}")[2]
    assert plain_http["videoAsset"]["s3Url"] == f"{BUCKET}/{KEY}"
    assert asset_disagreement("scenes", "videoAsset", plain_http["videoAsset"], plain_http) is None


@pytest.mark.parametrize(
    ("status", "live_status", "verdict"),
    [("completed", "ready", PASS), ("completed", "pending", FAIL), ("failed", "error", PASS), ("error", "error", PASS),
     ("error", "pending", FAIL), ("queued", "pending", PASS), ("uploading", "ready", FAIL), ("Completed", "ready", PASS),
     ("archived", "ready", PASS)],
)
def test_assets_status_matches_legacy(status: str, live_status: str, verdict: Verdict) -> None:
    before, line, live = migrated_scene(status=status)
    line = {**line, "action": "migrate"}  # (an unknown status is a problem: checked as if migrated)
    assert check_assets_status_matches_legacy(joined(before, line, {**live, "assetsStatus": live_status})) is verdict


@pytest.mark.parametrize(("live_status", "verdict"), [("error", PASS), ("ready", FAIL)])
def test_a_completed_scene_without_video_is_in_error(live_status: str, verdict: Verdict) -> None:
    before = {k: v for k, v in legacy_scene().items() if k not in ("s3ChunkKey", "s3ChunkUrl", "s3ChunkSize", "checksum")}
    line = plan_line(before)
    assert line["set"]["assetsStatus"] == "error"
    live = {**before, **line["set"], "assetsStatus": live_status}
    assert check_assets_status_matches_legacy(joined(before, line, live)) is verdict


@pytest.mark.parametrize(
    ("status", "combined", "allowed"),
    [("failed", True, {"error"}), ("error", False, {"error"}), ("completed", True, {"pending", "uploading", "ready", "error"}),
     ("completed", False, {"pending", "uploading", "error"}), ("combining", False, {"pending", "uploading", "ready", "error"}),
     ("archived", True, None)],
)
def test_what_a_sessions_own_status_allows(status: str, combined: bool, allowed: set[str] | None) -> None:
    doc = {"status": status, **({"combinedVideoAsset": {}} if combined else {})}
    assert expected_assets_status("videoSessions", doc) == allowed


def test_a_stale_assets_status_is_the_applications_doing_when_it_moved_the_legacy_status() -> None:
    before = {k: v for k, v in legacy_scene(status="rendering").items() if k not in ("s3ChunkKey", "s3ChunkUrl", "s3ChunkSize", "checksum")}
    line = plan_line(before)
    live = {**before, **line["set"]}
    assert live["assetsStatus"] == "pending"
    rendered = by_app(live, status="completed", s3ChunkKey=KEY, s3ChunkUrl=f"{BUCKET}/{KEY}")
    assert check_assets_status_matches_legacy(joined(before, line, rendered)) is APP
    assert check_assets_status_matches_legacy(joined(before, line, {**rendered, "updatedAt": live["updatedAt"]})) is FAIL


def test_session_totals() -> None:
    session = {"_id": "sess1", "_creationTime": 1.7e12, "status": "pending"}
    line = rules.plan_session(session, rules.SessionTotals(scenes=1, assets=2, size=30), rules.RulesContext()).to_line()
    live = {**session, **line["set"]}
    doc = joined(session, line, live, "videoSessions")
    assert check_session_totals(doc, SceneTotals(assets=2, size=30)) is PASS
    assert check_session_totals(doc, SceneTotals(assets=3, size=30)) is FAIL
    assert check_session_totals(doc, SceneTotals(assets=2, size=31)) is FAIL
    assert check_session_totals(doc, SceneTotals(assets=3, size=30, excused=True)) is APP
    assert check_session_totals(joined(session, {**line, "action": "problem", "set": {}}, session, "videoSessions"), SceneTotals()) is None


def reference(ref_id: str, asset: dict[str, Any], *, ours: bool = True, entity_type: str = "scene") -> Reference:
    row = {"_id": ref_id, "entityType": entity_type, **asset, "metadata": {"migrationId": M001.id if ours else "app"}}
    assert Reference.of(row, M001.side_rows, M001.id).ours is ours
    return Reference.of(row, M001.side_rows, M001.id)


def test_reference_checks() -> None:
    before, line, live = migrated_scene()
    doc, asset = joined(before, line, live), live["videoAsset"]
    good = reference("r1", asset)
    assert check_references_match_asset(doc, asset, [good]) is PASS
    assert check_references_match_asset(doc, asset, [reference("r1", {**asset, "checksum": "x"})]) is FAIL
    assert check_references_match_asset(doc, asset, [reference("r1", asset, entity_type="session")]) is FAIL
    assert check_references_match_asset(doc, asset, [reference("r1", {**asset, "checksum": "x"}, ours=False)]) is None
    assert check_no_duplicate_references([good]) is PASS
    assert check_no_duplicate_references([good, reference("r2", asset, ours=False)]) is FAIL
    assert check_no_duplicate_references([]) is None
    assert check_asset_tracked(doc, [good]) is PASS
    assert check_asset_tracked(doc, [reference("r2", asset, ours=False)]) is PASS  # tracked by someone: enough
    assert check_asset_tracked(doc, []) is FAIL
    assert check_asset_tracked(joined(before, {**line, "action": "problem", "set": {}}, live), []) is None
    assert check_reference_has_asset(False, [good]) is FAIL
    assert check_reference_has_asset(True, [good]) is APP
    assert check_reference_has_asset(False, [reference("r2", asset, ours=False)]) is None
    assert check_reference_points_at_document(True, [good]) is PASS
    assert check_reference_points_at_document(False, [good]) is FAIL


# -- the whole pass over hand-built sources (run_checks): each defect fails exactly its check ----------------------


def world() -> dict[str, Any]:
    """A tiny deployment before and after a correct migration: its backup, its plan and its live tables."""
    combined = "sessions/s1/combined.mp4"
    sessions = [
        {"_id": "s1", "_creationTime": 1.0, "status": "completed", "combinedVideoKey": combined, "combinedVideoUrl": f"{BUCKET}/{combined}", "updatedAt": 5},
        {"_id": "s2", "_creationTime": 2.0, "status": "pending", "updatedAt": 6},
    ]
    thumb = "sessions/s1/scene-0/t.png"
    held = legacy_scene(_id="c", sceneIndex=2, s3ChunkKey="c.mp4", s3ChunkUrl=f"{BUCKET}/c.mp4", checksum="cc")
    held |= rules.plan_scene(held, rules.RulesContext()).set  # written by the application itself, untracked
    scenes = [
        legacy_scene(_id="a", sessionId="s1", thumbnailKey=thumb, thumbnailUrl=f"{BUCKET}/{thumb}"),
        {"_id": "b", "_creationTime": 3.0, "sessionId": "s1", "sceneIndex": 1, "status": "rendering", "updatedAt": 7},
        held | {"sessionId": "s1"},
        legacy_scene(_id="d", sessionId="s2", status="archived", s3ChunkKey="d.mp4", s3ChunkUrl=f"{BUCKET}/d.mp4"),
        legacy_scene(_id="e", sessionId="s2", status="failed", s3ChunkKey="e.mp4", s3ChunkUrl=f"{BUCKET}/e.mp4", errorMessage="boom"),
    ]
    ctx = rules.RulesContext(session_exists={"s1", "s2"}.__contains__)
    scene_plans = [rules.plan_scene(doc, ctx) for doc in scenes]
    totals: dict[str, rules.SessionTotals] = {"s1": rules.SessionTotals(), "s2": rules.SessionTotals()}
    for plan in scene_plans:
        totals[plan.session_id].add_scene(plan)
    plan = [p.to_line() for p in scene_plans] + [rules.plan_session(doc, totals[doc["_id"]], ctx).to_line() for doc in sessions]
    by_id = {line["id"]: line for line in plan}
    live = {table: [{**doc, **by_id[doc["_id"]]["set"]} for doc in docs] for table, docs in (("scenes", scenes), ("videoSessions", sessions))}
    live["assetReferences"] = [
        {**ref, "_id": f"ref-{line['id']}-{ref['assetType']}", "entityId": line["id"],
         "metadata": {**ref["metadata"], "migrationId": M001.id, "runId": "run"}}
        for line in plan if line["action"] in rules.CHANGING_ACTIONS for ref in line["references"]
    ]
    return {"plan": plan, "backup": {"scenes": scenes, "videoSessions": sessions}, "live": live}


def checks_of(w: dict[str, Any], page_size: int = 4000) -> Any:
    from helpers.steps.verify import run_checks

    return run_checks(iter(w["plan"]), lambda table: iter(w["backup"][table]), lambda table: iter(w["live"][table]), migration=M001,
                      page_size=page_size)


def live_doc(w: dict[str, Any], doc_id: str) -> dict[str, Any]:
    return next(d for table in ("scenes", "videoSessions") for d in w["live"][table] if d["_id"] == doc_id)


def plan_of(w: dict[str, Any], doc_id: str) -> dict[str, Any]:
    return next(line for line in w["plan"] if line["id"] == doc_id)


def refs_in(w: dict[str, Any], doc_id: str) -> list[dict[str, Any]]:
    return [r for r in w["live"]["assetReferences"] if r["entityId"] == doc_id]


def test_the_tiny_world_covers_every_action_and_passes() -> None:
    w = world()
    assert {line["action"] for line in w["plan"]} == {"migrate", "track_existing", "problem"}
    outcome = checks_of(w)
    assert [c.name for c in outcome.checks if not c.passed] == []
    assert all(c.examples == [] and c.note == "" and c.explained == 0 for c in outcome.checks)
    assert outcome.changed_by_application == [] and outcome.changed_count == 0
    backed_up = [doc for docs in w["backup"].values() for doc in docs]
    migratable = [line for line in w["plan"] if line["action"] != "problem"]
    assets = [(line["id"], f) for line in migratable for f in fields.ASSET_TYPES if f in live_doc(w, line["id"])]
    checked = {c.name: c.checked for c in outcome.checks}
    assert checked == {
        "planned_fields_written": sum(line["action"] in rules.CHANGING_ACTIONS for line in w["plan"]),
        "assets_equal_legacy": len({doc_id for doc_id, _ in assets}),
        "assets_status_matches_legacy": len(migratable),
        "legacy_fields_unchanged": len(backed_up),
        "nothing_outside_plan_changed": len(w["plan"]) + len(backed_up),
        "no_backup_document_missing": len(backed_up),
        "session_totals": sum("assetCount" in line["set"] for line in w["plan"]),
        "references_match_assets": len(w["live"]["assetReferences"]),
        "no_duplicate_references": len(w["live"]["assetReferences"]),
        "references_point_at_documents": len(w["live"]["assetReferences"]),
        "tracking_complete": len(assets),
    }


def test_documents_outside_the_backup_or_the_plan_are_checked_for_what_they_have() -> None:
    w = world()
    w["live"]["scenes"].append({"_id": "late", "_creationTime": 9.0, "sessionId": "s2", "sceneIndex": 5, "status": "pending", "updatedAt": 9})
    w["live"]["videoSessions"].append({"_id": "s3", "_creationTime": 9.0, "status": "pending"})
    w["backup"]["videoSessions"].append({"_id": "s3", "_creationTime": 9.0, "status": "pending"})
    w["plan"].append(rules.plan_session(w["backup"]["videoSessions"][-1], rules.SessionTotals(), rules.RulesContext()).to_line())
    w["live"]["videoSessions"][-1].update(w["plan"][-1]["set"])
    assert [c.name for c in checks_of(w).checks if not c.passed] == []
    w["live"]["videoSessions"][-1]["assetCount"] = 1
    assert [c.name for c in checks_of(w).checks if not c.passed] == ["planned_fields_written", "session_totals"]


def test_a_new_field_removed_between_backup_and_plan_then_set_by_the_plan_is_no_change_outside_it() -> None:
    w = world()
    w["backup"]["scenes"][1]["assetVersion"] = 7  # the plan (made later) saw no assetVersion and set 1
    assert [c.name for c in checks_of(w).checks if not c.passed] == []


def test_many_documents_changed_by_the_application_are_counted_and_a_hundred_listed() -> None:
    w = world()
    template = w["backup"]["scenes"][1]
    for n in range(101):
        doc = {**template, "_id": f"b{n}"}
        w["backup"]["scenes"].append(doc)
        w["plan"].append({**plan_of(w, "b"), "id": f"b{n}"})
        w["live"]["scenes"].append({**doc, **plan_of(w, "b")["set"], "title": "renamed", "updatedAt": doc["updatedAt"] + 1})
    outcome = checks_of(w)
    assert outcome.changed_count == 101 and len(outcome.changed_by_application) == 100
    assert {c.name: c.explained for c in outcome.checks}["legacy_fields_unchanged"] == 101
    assert [c.note for c in outcome.checks if c.note] == ["explained: changed by the application since the migration (re-plan it)"]


def test_each_failure_is_counted_and_names_what_differs() -> None:
    w = world()
    for doc_id in ("a", "b", "c"):
        live_doc(w, doc_id).update(title="written by a faulty migration")
    in_plan_and_live(w, "a", lambda d: d.update(
        videoAsset={**d["videoAsset"], "s3Key": "z.mp4", "s3Url": f"{BUCKET}/z.mp4"}, thumbnailAsset={**d["thumbnailAsset"], "s3Url": f"{BUCKET}/t.png"},
    ))
    checks = {c.name: c for c in checks_of(w).checks}
    assert (checks["legacy_fields_unchanged"].failed, checks["legacy_fields_unchanged"].examples) == (3, ["a", "b", "c"])
    assert checks["assets_equal_legacy"].examples == ["a (videoAsset: key, thumbnailAsset: URL)"]


def test_a_reference_on_a_document_the_application_changed_is_excused() -> None:
    w = world()
    video = next(r for r in refs_in(w, "a") if r["assetType"] == "video_chunk")
    w["live"]["assetReferences"].append({**video, "entityId": "b", "_id": "moved"})  # a's stays: only b is odd
    live_doc(w, "b").update(title="renamed", updatedAt=live_doc(w, "b")["updatedAt"] + 1)
    outcome = checks_of(w)
    assert [c.name for c in outcome.checks if not c.passed] == []
    assert {c.name: c.explained for c in outcome.checks}["references_match_assets"] == 1


def test_the_report_carries_the_checks_and_the_documents_the_application_changed() -> None:
    from helpers.steps.verify import report

    w = world()
    for doc_id in ("a", "b", "c", "e", "s1", "s2"):
        live_doc(w, doc_id).update(title="renamed", updatedAt=1e13)
    result = report(checks_of(w), M001.id, "p" * 64, "b" * 64)
    assert result.passed and (result.plan_sha256, result.backup_sha256) == ("p" * 64, "b" * 64)
    assert result.changed_by_others == ["a", "b", "c", "e", "s1", "s2"]
    assert (result.changed_by_application.count, result.changed_by_application.examples) == (6, ["a", "b", "c", "e", "s1"])
    assert "(re-plan it)" in {c.name: c for c in result.checks}["legacy_fields_unchanged"].note
    live_doc(w, "d").update(assetVersion=1)
    assert not report(checks_of(w), M001.id, "p", "b").passed


def test_a_reference_type_the_table_lacks_on_a_document_the_application_changed_is_excused() -> None:
    w = world()
    w["live"]["assetReferences"].append({**refs_in(w, "a")[0], "_id": "m", "assetType": "manifest"})
    live_doc(w, "a").update(title="renamed", updatedAt=live_doc(w, "a")["updatedAt"] + 1)
    outcome = checks_of(w)
    assert [c.name for c in outcome.checks if not c.passed] == []
    assert {c.name: c.explained for c in outcome.checks}["references_match_assets"] == 1


@pytest.mark.parametrize("page_size", [1, 2, 3])
def test_the_page_size_changes_no_finding(page_size: int) -> None:
    w = world()
    plan_of(w, "b")["set"]["title"] = live_doc(w, "b")["title"] = "written by the plan"  # a field 001 does not own
    outcome = checks_of(w, page_size)
    assert outcome == checks_of(w)
    backed_up = sum(len(docs) for docs in w["backup"].values())
    checks = {c.name: c for c in outcome.checks}
    assert (checks["nothing_outside_plan_changed"].checked, checks["nothing_outside_plan_changed"].examples) == (len(w["plan"]) + backed_up, ["b"])


def test_documents_only_live_are_created_after_the_snapshot_and_others_are_not() -> None:
    from helpers.steps.verify import CreatedAfterSnapshot, report

    w = world()
    b = w["backup"]["scenes"][1]
    w["live"]["scenes"] += [{"_id": f"n{i}", "_creationTime": 9.0, "status": "pending", "updatedAt": 9} for i in range(6)]
    w["plan"].append({**plan_of(w, "b"), "id": "p"})  # planned from the live tables: no backup of it
    w["live"]["scenes"].append({**b, "_id": "p", **plan_of(w, "b")["set"]})
    w["backup"]["scenes"].append({**b, "_id": "q"})  # backed up, never planned, left alone
    w["live"]["scenes"].append({**b, "_id": "q"})
    outcome = checks_of(w)
    assert [c.name for c in outcome.checks if not c.passed] == []
    assert (outcome.created_count, outcome.created_after_snapshot) == (6, [f"n{i}" for i in range(6)])
    assert report(outcome, M001.id, "p", "b").created_after_snapshot == CreatedAfterSnapshot(count=6, examples=[f"n{i}" for i in range(5)])
    changing = sum(line["action"] in rules.CHANGING_ACTIONS for line in w["plan"])
    assert {c.name: c.checked for c in outcome.checks}["planned_fields_written"] == changing  # p's promise was found


def test_backed_up_documents_gone_are_counted_and_five_named_in_id_order() -> None:
    w = world()
    w["backup"]["scenes"] += [{**w["backup"]["scenes"][1], "_id": f"z{i}"} for i in reversed(range(7))]
    check = {c.name: c for c in checks_of(w).checks}["no_backup_document_missing"]
    assert (check.failed, check.examples) == (7, [f"z{i}" for i in range(5)])


def test_blocked_documents_holding_untracked_assets_are_listed_apart_and_noted_on_tracking_complete() -> None:
    from helpers.steps.verify import UntrackedAssets, report

    w = world()
    video, thumbnail = live_doc(w, "a")["videoAsset"], live_doc(w, "a")["thumbnailAsset"]
    d_backup = next(doc for doc in w["backup"]["scenes"] if doc["_id"] == "d")
    d_backup.update(sessionId="s9", videoAsset=video, thumbnailAsset=thumbnail)  # no session: its totals are no one's
    live_doc(w, "d").update(sessionId="s9", videoAsset=video, thumbnailAsset=thumbnail)
    w["backup"]["scenes"].append({**d_backup, "_id": "d2", "thumbnailAsset": None})
    w["live"]["scenes"].append({**live_doc(w, "d"), "_id": "d2", "thumbnailAsset": None})
    w["plan"].append({**plan_of(w, "d"), "id": "d2"})
    outcome = checks_of(w)
    assert [c.name for c in outcome.checks if not c.passed] == []
    assert (outcome.untracked_assets, outcome.untracked_count, outcome.untracked_documents) == (3, 2, ["d", "d2"])
    notes = {c.name: c.note for c in outcome.checks if c.note}
    assert notes == {"tracking_complete": "does not cover 3 untracked assets on 2 documents the plan blocked (listed apart)"}
    assert report(outcome, M001.id, "p", "b").untracked_assets == UntrackedAssets(assets=3, documents=2, examples=["d", "d2"])


def test_the_side_row_checks_say_what_a_row_mirrors() -> None:
    from helpers.steps.verify import reference_checks

    assert reference_checks(M001.side_rows)["references_match_assets"] == (  # type: ignore[arg-type]
        "each of the asset references of this migration equals the field its document holds under its assetType "
        "(entityType, s3Key, s3Url, contentType, size, checksum, uploadedAt); none names a field its document lacks"
    )


def in_plan_and_live(w: dict[str, Any], doc_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """A faulty rule applied faithfully: the plan's set and the live document both carry the change."""
    line = plan_of(w, doc_id)
    change(line["set"])
    change(live_doc(w, doc_id))
    for ref in refs_in(w, doc_id):
        if ref["assetType"] == "video_chunk" and "videoAsset" in line["set"]:
            ref.update(line["set"]["videoAsset"])


def _video(change: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.update(videoAsset={**d["videoAsset"], **change})


PURE_DEFECTS: dict[str, tuple[Callable[[dict[str, Any]], None], set[str]]] = {
    "legacy field changed": (lambda w: live_doc(w, "a").update(title="x"), {"legacy_fields_unchanged"}),
    "two references to no document": (
        lambda w: w["live"]["assetReferences"].extend({**refs_in(w, "a")[0], "_id": n, "entityId": "gone"} for n in "xy"),
        {"references_point_at_documents", "no_duplicate_references"},
    ),
    "reference to no document, one of two": (
        lambda w: w["live"]["assetReferences"].append({**refs_in(w, "a")[0], "_id": "x", "entityId": "gone"}),
        {"references_point_at_documents"},
    ),
    "legacy field removed": (lambda w: live_doc(w, "a").pop("sceneIndex"), {"legacy_fields_unchanged"}),
    "planned field other value": (lambda w: live_doc(w, "a").update(assetVersion=2), {"planned_fields_written"}),
    "planned field missing": (lambda w: live_doc(w, "b").pop("assetVersion"), {"planned_fields_written"}),
    "plan never applied": (lambda w: [live_doc(w, "b").pop(f) for f in list(plan_of(w, "b")["set"])], {"planned_fields_written"}),
    "field outside the plan": (lambda w: live_doc(w, "d").update(assetVersion=1), {"nothing_outside_plan_changed"}),
    "existing field removed": (lambda w: live_doc(w, "c").pop("assetVersion"), {"nothing_outside_plan_changed"}),
    "plan sets a legacy field": (
        lambda w: (plan_of(w, "a")["set"].update(title="x"), live_doc(w, "a").update(title="x")),
        {"nothing_outside_plan_changed", "legacy_fields_unchanged"},
    ),
    "reference deleted": (lambda w: w["live"]["assetReferences"].remove(refs_in(w, "a")[0]), {"tracking_complete"}),
    "existing asset untracked": (lambda w: w["live"]["assetReferences"].remove(refs_in(w, "c")[0]), {"tracking_complete"}),
    "reference duplicated": (lambda w: w["live"]["assetReferences"].append({**refs_in(w, "a")[0], "_id": "dup"}), {"no_duplicate_references"}),
    "reference on the wrong document": (lambda w: refs_in(w, "a")[0].update(entityId="b"), {"tracking_complete", "references_match_assets"}),
    "reference unlike its asset": (lambda w: refs_in(w, "a")[0].update(s3Url=f"{BUCKET}/x.mp4"), {"references_match_assets"}),
    "reference of another entity type": (lambda w: refs_in(w, "a")[0].update(entityType="session"), {"references_match_assets"}),
    "reference type the table lacks": (
        lambda w: w["live"]["assetReferences"].append({**refs_in(w, "a")[0], "_id": "m", "assetType": "manifest"}),
        {"references_match_assets"},
    ),
    "reference to no document": (lambda w: refs_in(w, "a")[0].update(entityId="gone") or w["live"]["assetReferences"].append({**refs_in(w, "gone")[0], "_id": "back", "entityId": "a"}), {"references_point_at_documents"}),
    "document deleted": (lambda w: w["live"]["scenes"].remove(live_doc(w, "b")), {"no_backup_document_missing"}),
    "asset key": (lambda w: in_plan_and_live(w, "a", _video({"s3Key": "z.mp4", "s3Url": f"{BUCKET}/z.mp4"})), {"assets_equal_legacy"}),
    "asset URL": (lambda w: in_plan_and_live(w, "a", _video({"s3Url": f"{BUCKET}/other/{KEY}"})), {"assets_equal_legacy"}),
    "asset checksum": (lambda w: in_plan_and_live(w, "a", _video({"checksum": "zz"})), {"assets_equal_legacy"}),
    # the session's total is computed from the faulty size as well, as the planner does
    "asset size": (
        lambda w: (in_plan_and_live(w, "a", _video({"size": 1})), in_plan_and_live(w, "s1", lambda d: d.update(totalAssetSize=d["totalAssetSize"] - 1000 + 1))),
        {"assets_equal_legacy"},
    ),
    "existing asset unlike its legacy source": (lambda w: live_doc(w, "c").update(s3ChunkKey="other.mp4"), {"legacy_fields_unchanged", "assets_equal_legacy"}),
    "assetsStatus": (lambda w: in_plan_and_live(w, "a", lambda d: d.update(assetsStatus="uploading")), {"assets_status_matches_legacy"}),
    "assetCount": (lambda w: in_plan_and_live(w, "s1", lambda d: d.update(assetCount=d["assetCount"] + 1)), {"session_totals"}),
    "totalAssetSize": (lambda w: in_plan_and_live(w, "s1", lambda d: d.update(totalAssetSize=d["totalAssetSize"] + 1)), {"session_totals"}),
}


#: The example each failing check names: the document, and the asset type or what of the asset differs.
EXAMPLES_OF = {
    "reference deleted": "a (video_chunk)", "existing asset untracked": "c (video_chunk)", "reference duplicated": "a (video_chunk)",
    "reference unlike its asset": "a (video_chunk)", "reference of another entity type": "a (video_chunk)",
    "reference type the table lacks": "a (manifest)", "reference to no document": "gone", "reference to no document, one of two": "gone", "asset key": "a (videoAsset: key)",
    "asset URL": "a (videoAsset: URL)", "asset checksum": "a (videoAsset: checksum)", "asset size": "a (videoAsset: size)",
    "planned field missing": "b", "plan never applied": "b", "field outside the plan": "d", "existing field removed": "c",
    "document deleted": "b", "assetCount": "s1", "totalAssetSize": "s1",
}


TWO_FAILURES = {
    "plan sets a legacy field": {"legacy_fields_unchanged": ["a"], "nothing_outside_plan_changed": ["a"]},
    "reference on the wrong document": {"references_match_assets": ["b (video_chunk)"], "tracking_complete": ["a (video_chunk)"]},
    "existing asset unlike its legacy source": {"assets_equal_legacy": ["c (videoAsset: key)"], "legacy_fields_unchanged": ["c"]},
    "two references to no document": {"no_duplicate_references": ["gone (video_chunk)"], "references_point_at_documents": ["gone"]},
}


@pytest.mark.parametrize("defect", list(PURE_DEFECTS))
def test_each_defect_of_the_tiny_world_fails_exactly_its_check(defect: str) -> None:
    w = world()
    spoil, expected = PURE_DEFECTS[defect]
    spoil(w)
    outcome = checks_of(w)
    failed = [c for c in outcome.checks if not c.passed]
    assert {c.name for c in failed} == expected
    assert all(c.failed == len(c.examples) == 1 for c in failed)
    assert all(c.explained == 0 and c.note == "" for c in outcome.checks)
    if len(failed) == 1:
        assert failed[0].examples == [EXAMPLES_OF.get(defect, "a")]
    else:
        assert {c.name: c.examples for c in failed} == TWO_FAILURES[defect]
    assert outcome.changed_count == 0


def test_a_completed_session_without_combined_video_is_never_ready() -> None:
    w = world()
    session = live_doc(w, "s1")
    for name in ("combinedVideoKey", "combinedVideoUrl"):
        session.pop(name)
        w["backup"]["videoSessions"][0].pop(name)
    session.pop("combinedVideoAsset")
    plan_of(w, "s1")["set"].pop("combinedVideoAsset")
    w["live"]["assetReferences"] = [r for r in w["live"]["assetReferences"] if r["entityId"] != "s1"]
    for doc in (session, plan_of(w, "s1")["set"]):
        doc.update(assetCount=doc["assetCount"] - 1)
    assert [c.name for c in checks_of(w).checks if not c.passed] == []  # pending: its scenes are not all ready
    in_plan_and_live(w, "s1", lambda d: d.update(assetsStatus="ready"))
    assert [c.name for c in checks_of(w).checks if not c.passed] == ["assets_status_matches_legacy"]


@pytest.mark.parametrize("scene", ["a", "b", "c"])
def test_the_applications_write_after_the_migration_is_listed_not_blamed(scene: str) -> None:
    w = world()
    doc = live_doc(w, scene)
    doc.update(status="completed", s3ChunkKey=f"writer/{scene}.mp4", s3ChunkUrl=f"{BUCKET}/writer/{scene}.mp4", updatedAt=doc["updatedAt"] + 1)
    outcome = checks_of(w)
    assert [c.name for c in outcome.checks if not c.passed] == []
    assert outcome.changed_by_application == [scene] and outcome.changed_count == 1
    explained = {c.name for c in outcome.checks if c.explained}
    assert "legacy_fields_unchanged" in explained
    assert explained & {"assets_equal_legacy", "assets_status_matches_legacy"}


def test_the_applications_write_before_apply_is_a_conflict_listed_not_blamed() -> None:
    w = world()
    doc = live_doc(w, "b")
    for name in plan_of(w, "b")["set"]:
        doc.pop(name)
    doc.update(status="failed", updatedAt=doc["updatedAt"] + 1)
    outcome = checks_of(w)
    assert [c.name for c in outcome.checks if not c.passed] == []
    assert {c.name: c.explained for c in outcome.checks}["planned_fields_written"] == 1
    assert {c.name: c.explained for c in outcome.checks}["session_totals"] == 0


def test_a_session_whose_scene_the_application_changed_is_excused() -> None:
    w = world()
    doc = live_doc(w, "b")
    for name in plan_of(w, "b")["set"]:
        doc.pop(name)
    doc.update(updatedAt=doc["updatedAt"] + 1, title="renamed")
    in_plan_and_live(w, "s1", lambda d: d.update(assetCount=d["assetCount"] + 1))
    outcome = checks_of(w)
    assert [c.name for c in outcome.checks if not c.passed] == []
    assert {c.name: c.explained for c in outcome.checks}["session_totals"] == 1


# -- on a local deployment: each defect fails exactly its check ------------------------------------------------------

SCENES = 60


def failing(report: Any) -> set[str]:
    return {c.name for c in report.checks if not c.passed}


def item(table: str, doc_id: str, **fields: Any) -> dict[str, Any]:
    return {"table": table, "id": doc_id, "expect": {}, "expectAbsent": [], "set": {}, "unset": [], "insertReferences": [], "deleteReferences": [], **fields}


def damage(transport: ConvexTransport, *items: dict[str, Any]) -> None:
    results = apply_batch(transport, M001.id, "damage", list(items), side_rows=M001.side_rows)
    assert all(r["outcome"] == "applied" for r in results), results


def lines(run_dir: Path, table: str = "scenes", action: str = "migrate") -> list[dict[str, Any]]:
    return [line for line in iter_plan_lines(run_dir) if line["table"] == table and line["action"] == action]


def refs_of(transport: ConvexTransport, entity: str) -> list[dict[str, Any]]:
    return [r for r in migration_references(transport) if r["entityId"] == entity]


def as_input(ref: dict[str, Any]) -> dict[str, Any]:
    """An assetReferences row as applyBatch's insertReferences takes it."""
    out = {k: v for k, v in ref.items() if k not in ("_id", "_creationTime", "entityId", "createdAt", "metadata")}
    return {**out, "metadata": {"migratedFromLegacy": True, "legacyField": ref["metadata"]["legacyField"]}}


def with_video(run_dir: Path) -> dict[str, Any]:
    return next(line for line in lines(run_dir) if "videoAsset" in line["set"] and "checksum" in line["set"]["videoAsset"])


def without_assets(run_dir: Path) -> dict[str, Any]:
    return next(line for line in lines(run_dir) if not line["references"])


def legacy_changed(transport: ConvexTransport, run_dir: Path) -> None:
    damage(transport, item("scenes", with_video(run_dir)["id"], set={"title": "written by a faulty migration"}))


def planned_field_wrong(transport: ConvexTransport, run_dir: Path) -> None:
    damage(transport, item("scenes", with_video(run_dir)["id"], set={"assetVersion": 2}))


def written_outside_plan(transport: ConvexTransport, run_dir: Path) -> None:
    blocked = next(line for line in lines(run_dir, action="problem") if not line["current"] and line["expect"])
    damage(transport, item("scenes", blocked["id"], set={"assetsErrorMessage": "written outside the plan"}))


def reference_deleted(transport: ConvexTransport, run_dir: Path) -> None:
    scene = with_video(run_dir)["id"]
    damage(transport, item("scenes", scene, deleteReferences=[refs_of(transport, scene)[0]["_id"]]))


def reference_duplicated(transport: ConvexTransport, run_dir: Path) -> None:
    scene = with_video(run_dir)["id"]
    ref = refs_of(transport, scene)[0]
    damage(transport, item("scenes", scene, deleteReferences=[ref["_id"]], insertReferences=[as_input(ref), as_input(ref)]))


def reference_on_wrong_document(transport: ConvexTransport, run_dir: Path) -> None:
    scene, other = with_video(run_dir)["id"], without_assets(run_dir)["id"]
    ref = next(r for r in refs_of(transport, scene) if r["assetType"] == "video_chunk")
    damage(transport, item("scenes", scene, deleteReferences=[ref["_id"]]), item("scenes", other, insertReferences=[as_input(ref)]))


def reference_dangling(transport: ConvexTransport, run_dir: Path) -> None:
    session = next(line for line in iter_plan_lines(run_dir) if line["table"] == "videoSessions")["id"]
    [late] = transport.function("sampleData:insertBatch", {"table": "scenes", "documents": [{"sessionId": session, "sceneIndex": 99, "status": "pending"}]})["ids"]
    ref = as_input(migration_references(transport)[0]) | {"s3Key": "late/chunk.mp4"}
    damage(transport, item("scenes", late, insertReferences=[ref]))
    transport.function("sampleData:deleteBatch", {"ids": [late]})


def document_deleted(transport: ConvexTransport, run_dir: Path) -> None:
    transport.function("sampleData:deleteBatch", {"ids": [without_assets(run_dir)["id"]]})


DAMAGE: dict[str, tuple[Callable[[ConvexTransport, Path], None], set[str]]] = {
    "legacy field changed by the migration": (legacy_changed, {"legacy_fields_unchanged"}),
    "planned field holds another value": (planned_field_wrong, {"planned_fields_written"}),
    "field written outside the plan": (written_outside_plan, {"nothing_outside_plan_changed"}),
    "reference deleted": (reference_deleted, {"tracking_complete"}),
    "reference duplicated": (reference_duplicated, {"no_duplicate_references"}),
    # Moved: its own document lacks it and the other holds no such asset, so two checks see it.
    "reference on the wrong document": (reference_on_wrong_document, {"tracking_complete", "references_match_assets"}),
    "reference to a deleted document": (reference_dangling, {"references_point_at_documents"}),
    "document deleted": (document_deleted, {"no_backup_document_missing"}),
}


@pytest.mark.deployment
@pytest.mark.parametrize("defect", list(DAMAGE))
def test_each_damaged_deployment_fails_exactly_its_check(defect: str, transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, SCENES)
    prepare(transport, run_dir)
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    assert failing(verify(transport, run_dir, M001, show_progress=False)) == set()
    spoil, expected = DAMAGE[defect]
    spoil(transport, run_dir)
    report = verify(transport, run_dir, M001, show_progress=False)
    assert failing(report) == expected
    assert all(c.examples for c in report.checks if not c.passed)


# A faulty conversion rule, applied faithfully: apply's own checks pass, verify catches it against the legacy data.


def corrupt(predicate: Callable[[dict[str, Any]], bool], change: Callable[[dict[str, Any]], None]) -> tuple[Callable[..., Any], ...]:
    return predicate, change


def corrupting(original: Callable[..., rules.DocumentPlan], target: str, change: Callable[[dict[str, Any]], None]) -> Callable[..., Any]:
    """A planning rule that corrupts the plan of one document (its asset and its reference alike)."""

    def planned(*args: Any) -> rules.DocumentPlan:
        plan = original(*args)
        if plan.id == target:
            change(plan.set)
            for ref in plan.references:
                if ref["assetType"] == "video_chunk":
                    ref.update(plan.set["videoAsset"])
        return plan
    return planned


def video(change: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda planned: planned["videoAsset"].update(change)


FAULTY_RULES: dict[str, tuple[str, tuple[Callable[..., Any], ...], str]] = {
    "asset key": ("plan_scene", corrupt(lambda s: "checksum" in s.get("videoAsset", {}), video({"s3Key": "wrong/chunk.mp4"})), "assets_equal_legacy"),
    "asset URL": ("plan_scene", corrupt(lambda s: "checksum" in s.get("videoAsset", {}), video({"s3Url": f"{BUCKET}/wrong.mp4"})), "assets_equal_legacy"),
    "asset checksum": ("plan_scene", corrupt(lambda s: "checksum" in s.get("videoAsset", {}), video({"checksum": "0" * 32})), "assets_equal_legacy"),
    "asset size": ("plan_scene", corrupt(lambda s: "size" in s.get("videoAsset", {}), video({"size": 1})), "assets_equal_legacy"),
    "assetsStatus": ("plan_scene", corrupt(lambda s: s.get("assetsStatus") == "ready", lambda s: s.update(assetsStatus="uploading")), "assets_status_matches_legacy"),
    "assetCount": ("plan_session", corrupt(lambda s: "assetCount" in s, lambda s: s.update(assetCount=s["assetCount"] + 1)), "session_totals"),
    "totalAssetSize": ("plan_session", corrupt(lambda s: "totalAssetSize" in s, lambda s: s.update(totalAssetSize=s["totalAssetSize"] + 7)), "session_totals"),
}


@pytest.mark.deployment
@pytest.mark.parametrize("fault", list(FAULTY_RULES))
def test_a_faulty_rule_applied_faithfully_fails_exactly_its_check(
    fault: str, transport: ConvexTransport, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, (predicate, change), expected = FAULTY_RULES[fault]
    seed(transport, SCENES)
    bind_migration(tmp_path / "scratch", M001.id)
    build_plan(transport, tmp_path / "scratch", M001, show_progress=False, source="live")  # a clean plan, to pick a migrated document
    table = "scenes" if name == "plan_scene" else "videoSessions"
    target = next(line["id"] for line in lines(tmp_path / "scratch", table) if predicate(line["set"]))
    monkeypatch.setattr(rules, name, corrupting(getattr(rules, name), target, change))
    prepare(transport, run_dir)
    monkeypatch.undo()
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    report = verify(transport, run_dir, M001, show_progress=False)
    assert failing(report) == {expected}
    [check] = [c for c in report.checks if not c.passed]
    assert check.failed == 1 and check.examples[0].startswith(target)


# -- the application's writes are reported, not blamed -------------------------------------------------------------


@pytest.mark.deployment
def test_a_legacy_writer_during_and_after_apply_is_listed_not_blamed(transport: ConvexTransport, run_dir: Path, deployment: Any) -> None:
    seed(transport, SCENES * 2)
    prepare(transport, run_dir)
    migrating = [line["id"] for line in lines(run_dir)]
    during, after = migrating[-20:], migrating[:10]
    written: list[str] = []

    def writer() -> None:
        with deployment.transport() as own:
            for scene in during:
                own.mutation("scenes:setChunk", {"id": scene, "s3ChunkKey": f"writer/{scene}.mp4", "s3ChunkUrl": f"{BUCKET}/writer/{scene}.mp4"})
                written.append(scene)

    thread = threading.Thread(target=writer)
    thread.start()
    apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(batch_size=5, show_progress=False))
    thread.join()
    for scene in after:
        transport.mutation("scenes:setChunk", {"id": scene, "s3ChunkKey": f"writer/{scene}.mp4", "s3ChunkUrl": f"{BUCKET}/writer/{scene}.mp4"})
    report = verify(transport, run_dir, M001, show_progress=False)
    assert report.passed, [c for c in report.checks if not c.passed]
    changed = set(written + after)
    assert set(report.changed_by_others) == changed and report.changed_by_application.count == len(changed)
    assert "new dry-run in a new run folder" in report.changed_by_application.advice
    explained = {c.name: c.explained for c in report.checks}
    assert explained["legacy_fields_unchanged"] == len(changed)
    assert explained["assets_equal_legacy"] + explained["assets_status_matches_legacy"] > 0


@pytest.mark.deployment
def test_a_scene_created_after_the_snapshot_is_listed_not_blamed(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, SCENES)
    backup = take_backup(transport, run_dir, M001, poll_seconds=0.05, show_progress=False)
    session = next(iter_backup_documents(backup, "videoSessions"))["_id"]
    late = {"sessionId": session, "sceneIndex": 99, "status": "completed", "s3ChunkKey": "late/chunk.mp4"}
    [created] = transport.function("sampleData:insertBatch", {"table": "scenes", "documents": [late]})["ids"]
    plan = build_plan(transport, run_dir, M001, show_progress=False)  # from the snapshot: the late scene is not in it
    assert created not in {line["id"] for line in iter_plan_lines(run_dir)}
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    report = verify(transport, run_dir, M001, show_progress=False)
    assert report.passed, [c for c in report.checks if not c.passed]
    assert report.created_after_snapshot.count == 1 and report.created_after_snapshot.examples == [created]
    assert "new run folder" in report.created_after_snapshot.advice
    assert plan.documents == sum(backup.counts[t] for t in ("scenes", "videoSessions"))


# -- tracking complete ------------------------------------------------------------------------------------------------


@pytest.mark.deployment
def test_assets_there_before_the_migration_are_tracked_once(transport: ConvexTransport, run_dir: Path, tmp_path: Path) -> None:
    seed(transport, SCENES * 2)
    prepare(transport, run_dir)
    tracked = [line for line in iter_plan_lines(run_dir) if line["action"] == "track_existing"]
    filled = [line for line in iter_plan_lines(run_dir) if line["action"] == "fill_missing"]
    assert tracked and filled
    assert all(line["references"] and not line["set"] for line in tracked)
    assert all(len(line["references"]) > len([f for f in line["set"] if f.endswith("Asset")]) for line in filled)
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    report = verify(transport, run_dir, M001, show_progress=False)
    assert report.passed and next(c for c in report.checks if c.name == "tracking_complete").checked > 0
    references = migration_references(transport)
    for line in tracked + filled:
        assert {r["assetType"] for r in references if r["entityId"] == line["id"]} == {r["assetType"] for r in line["references"]}

    again = apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False))  # reference-only items are idempotent
    assert again.passed and len(migration_references(transport)) == len(references)
    bind_migration(tmp_path / "next", M001.id)
    build_plan(transport, tmp_path / "next", M001, show_progress=False, source="live")  # a new dry-run sees every asset tracked
    assert {line["action"] for line in iter_plan_lines(tmp_path / "next")} <= {"no_change", "problem"}


@pytest.mark.deployment
def test_a_reference_only_item_adds_only_the_missing_reference(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, SCENES)
    prepare(transport, run_dir)
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    scene = with_video(run_dir)["id"]
    refs = refs_of(transport, scene)
    doc = next(d for d in iter_documents(transport, "scenes") if d["_id"] == scene)
    item_ = item("scenes", scene, expect={"updatedAt": doc["updatedAt"]}, insertReferences=[as_input(r) for r in refs])
    assert apply_batch(transport, M001.id, "again", [item_], side_rows=M001.side_rows)[0]["outcome"] == "already_applied"
    damage(transport, item("scenes", scene, deleteReferences=[refs[0]["_id"]]))
    stale = {**item_, "expect": {"updatedAt": -1}}
    assert apply_batch(transport, M001.id, "again", [stale], side_rows=M001.side_rows)[0]["outcome"] == "conflict"
    [result] = apply_batch(transport, M001.id, "again", [item_], side_rows=M001.side_rows)
    assert result["outcome"] == "applied" and len(result["referenceIds"]) == 1
    assert sorted(r["assetType"] for r in refs_of(transport, scene)) == sorted(r["assetType"] for r in refs)


@pytest.mark.deployment
def test_assets_on_blocked_documents_are_named_untracked_by_the_dry_run_and_verify(transport: ConvexTransport, run_dir: Path) -> None:
    """A blocked document that already holds an asset field gets no reference: the dry-run and verify count it apart,
    and tracking_complete says it does not cover it."""
    seed(transport, SCENES)
    session = next(iter_documents(transport, "videoSessions"))["_id"]
    asset = {"s3Key": "someone/else.mp4", "s3Url": "https://b.s3.us-east-1.amazonaws.com/someone/else.mp4",
             "contentType": "video/mp4", "uploadedAt": 1.0}
    conflicting = {"sessionId": session, "sceneIndex": 500, "status": "completed", "s3ChunkKey": "mine/chunk.mp4",
                   "s3ChunkUrl": "https://b.s3.us-east-1.amazonaws.com/mine/chunk.mp4", "videoAsset": asset, "thumbnailAsset": asset}
    [held] = transport.function("sampleData:insertBatch", {"table": "scenes", "documents": [conflicting]})["ids"]
    tracked = {(r["entityId"], r["assetType"]) for r in iter_documents(transport, "assetReferences")}
    asset_types = M001.side_rows.sources["scenes"]
    prepare(transport, run_dir)
    blocked = {line["id"] for line in iter_plan_lines(run_dir) if line["table"] == "scenes" and line["action"] == "problem"}
    expected = {doc["_id"]: n for doc in iter_documents(transport, "scenes") if doc["_id"] in blocked
                and (n := sum(type(doc.get(f)) is dict and (doc["_id"], t) not in tracked for f, t in asset_types.items()))}
    assert expected[held] == 2
    [planned] = [u for u in read_plan(run_dir).untracked_assets if u.table == "scenes"]
    assert (planned.documents, planned.assets) == (len(expected), sum(expected.values())) and set(planned.examples) <= set(expected)
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    report = verify(transport, run_dir, M001, show_progress=False)
    assert report.passed
    untracked = report.untracked_assets
    assert (untracked.documents, untracked.assets) == (len(expected), sum(expected.values())) and set(untracked.examples) <= set(expected)
    note = next(c for c in report.checks if c.name == "tracking_complete").note
    assert f"does not cover {sum(expected.values())} untracked assets" in note
    assert not {r["entityId"] for r in iter_documents(transport, "assetReferences")} & {held}
