"""Rollback's checks are shown to fail: each alone on hand-built documents, then on a local deployment damaged after
the rollback in exactly the way it must catch; restore without its backup says where the backup is kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.connection import errors
from helpers.connection.transport import ConvexTransport
from helpers.connection.values import digest
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.steps.backup import read_backup
from helpers.steps.rollback import (
    check_reference_removed,
    check_restored,
    check_rollback,
    check_stripped,
    execute_rollback,
    iter_rollback_items,
    plan_rollback,
)
from tests.flow import prepare, seed
from tests.steps.test_verify import damage, item

SCENES = 60


def test_check_stripped() -> None:
    assert check_stripped({"_id": "a", "status": "completed"}, ("assetVersion", "videoAsset"))
    assert not check_stripped({"_id": "a", "assetVersion": 1}, ("assetVersion", "videoAsset"))
    assert check_stripped({"_id": "a", "assetVersion": 1}, ())  # a field the plan did not set is not rollback's


def test_check_restored() -> None:
    doc = {"_id": "a", "_creationTime": 1.0, "status": "completed"}
    assert check_restored(doc, digest(doc))
    assert not check_restored({**doc, "assetVersion": 1}, digest(doc))
    assert not check_restored({**doc, "status": "failed"}, digest(doc))
    assert not check_restored(doc, None)


def test_check_reference_removed() -> None:
    ours = {"_id": "r", "entityId": "a", "metadata": {"migrationId": M001.id}}
    assert not check_reference_removed(ours, {"a"}, M001.side_rows, M001.id)
    assert check_reference_removed(ours, {"b"}, M001.side_rows, M001.id)
    assert check_reference_removed({**ours, "metadata": {"migrationId": "someone else"}}, {"a"}, M001.side_rows, M001.id)


def touched_scene(run_dir: Path, mode: str) -> str:
    return next(i["id"] for i in iter_rollback_items(run_dir, mode) if i["table"] == "scenes" and i["deleteReferences"])


def readd_field(transport: ConvexTransport, run_dir: Path, mode: str) -> None:
    damage(transport, item("scenes", touched_scene(run_dir, mode), set={"assetVersion": 1}))


def leave_reference(transport: ConvexTransport, run_dir: Path, mode: str) -> None:
    ref = {"entityType": "scene", "assetType": "thumbnail", "s3Key": "k.png", "s3Url": "https://b.s3.amazonaws.com/k.png",
           "contentType": "image/png", "uploadedAt": 1, "version": 1, "metadata": {"migratedFromLegacy": True}}
    damage(transport, item("scenes", touched_scene(run_dir, mode), insertReferences=[ref]))


def change_legacy(transport: ConvexTransport, run_dir: Path, mode: str) -> None:
    damage(transport, item("scenes", touched_scene(run_dir, mode), set={"title": "not the backup's"}))


def delete_document(transport: ConvexTransport, run_dir: Path, mode: str) -> None:
    transport.function("sampleData:deleteBatch", {"ids": [touched_scene(run_dir, mode)]})


DAMAGE: dict[str, tuple[str, Callable[[ConvexTransport, Path, str], None], str]] = {
    "strip: a new field back": ("strip", readd_field, "stripped"),
    "strip: a reference left": ("strip", leave_reference, "references_removed"),
    "restore: a field unlike the backup": ("restore", change_legacy, "restored"),
    "restore: a reference left": ("restore", leave_reference, "references_removed"),
    "restore: a document deleted": ("restore", delete_document, "documents_still_exist"),
}


@pytest.mark.deployment
@pytest.mark.parametrize("defect", list(DAMAGE))
def test_each_rollback_check_fails_on_its_defect(defect: str, transport: ConvexTransport, run_dir: Path) -> None:
    mode, spoil, expected = DAMAGE[defect]
    seed(transport, SCENES)
    prepare(transport, run_dir)
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    plan_rollback(transport, run_dir, M001, mode)
    execute_rollback(transport, run_dir, M001, mode)
    assert check_rollback(transport, run_dir, M001, mode).passed
    spoil(transport, run_dir, mode)
    result = check_rollback(transport, run_dir, M001, mode)
    assert {c.name for c in result.checks if not c.passed} == {expected}
    assert result.failed == 1 and len(result.examples) == 1


@pytest.mark.deployment
def test_restore_without_its_backup_points_at_the_archive_or_strip(transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport, SCENES)
    prepare(transport, run_dir)
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    read_backup(run_dir).zip_path.unlink()
    with pytest.raises(errors.PreconditionFailed) as refused:
        plan_rollback(transport, run_dir, M001, "restore")
    message = str(refused.value)
    assert "archived run folder" in message and "mode='strip'" in message and "new backup would" in message
    assert "Take a new backup" not in message
    assert plan_rollback(transport, run_dir, M001, "strip").references_to_delete > 0  # strip needs no backup


@pytest.mark.deployment
def test_a_strip_item_is_refused_per_document_where_the_legacy_values_its_assets_were_built_from_changed_or_vanished(
    transport: ConvexTransport, run_dir: Path,
) -> None:
    """Strip relies on the legacy fields still holding what the asset fields hold. Where a legacy writer changed
    them, or migration 002 retired them (the asset field is then their only carrier), between the rollback's plan
    and its execution, the document is a conflict and keeps its asset fields: no value is lost."""
    seed(transport, SCENES)
    prepare(transport, run_dir)
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    plan_rollback(transport, run_dir, M001, "strip")
    strips = [i for i in iter_rollback_items(run_dir, "strip") if i["table"] == "scenes" and "videoAsset" in i["unset"]]
    # the guard is in the item: the legacy values the asset was built from, as they are (a scene may lack one)
    assert all(i["expect"].keys() & {"s3ChunkKey", "s3ChunkUrl"} for i in strips)
    assert any({"s3ChunkSize", "checksum"} <= i["expect"].keys() for i in strips)  # the chunk's size and checksum too
    changed, vanished = [i["id"] for i in strips if {"s3ChunkKey", "s3ChunkUrl"} <= i["expect"].keys()][:2]
    transport.mutation("scenes:setChunk", {"id": changed, "s3ChunkKey": "re/rendered.mp4", "s3ChunkUrl": "https://x/re.mp4"})
    damage(transport, item("scenes", vanished, unset=["s3ChunkKey", "s3ChunkUrl"]))  # as 002's retire leaves it
    kept = transport.query("scenes:get", {"id": vanished})["videoAsset"]

    summary = execute_rollback(transport, run_dir, M001, "strip")
    assert {c["id"]: c["message"] for c in summary.conflicts} == {
        changed: "changed since the plan: s3ChunkKey changed, s3ChunkUrl changed",
        vanished: "changed since the plan: s3ChunkKey changed, s3ChunkUrl changed",
    }
    assert transport.query("scenes:get", {"id": vanished})["videoAsset"] == kept  # the value's only carrier stays
    assert summary.outcomes["scenes"]["conflict"] == 2 and summary.outcomes["scenes"]["applied"] > 0 and not summary.errors
    assert check_rollback(transport, run_dir, M001, "strip").passed  # the two conflicts are left alone, as reported
