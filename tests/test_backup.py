"""Backup: Convex's snapshot export through the HTTP API, its layout, one consistent instant, and failures."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import pytest

from helpers import errors
from helpers.backup import BACKUP_RECORD, backup_dir, iter_backup_documents, read_backup, take_backup
from helpers.local_deployment import LocalDeployment
from helpers.transport import ConvexTransport


def seed(transport: ConvexTransport, scenes: int) -> tuple[str, list[str]]:
    session = transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "completed"}]})["ids"][0]
    documents = [{"sessionId": session, "sceneIndex": i, "status": "pending", "s3ChunkKey": "round-0"} for i in range(scenes)]
    return session, transport.function("sampleData:insertBatch", {"table": "scenes", "documents": documents})["ids"]


def test_backup_has_convex_export_layout_and_counts(transport: ConvexTransport, run_dir: Path) -> None:
    _, scene_ids = seed(transport, 25)
    summary = take_backup(transport, run_dir, poll_seconds=0.05, show_progress=False)
    assert summary.counts == {"videoSessions": 1, "scenes": 25, "assetReferences": 0, "migrationRuns": 0}
    with zipfile.ZipFile(summary.zip_path) as archive:
        names = archive.namelist()
        assert names[0] == "README.md" and names[1] == "_tables/documents.jsonl"
        for table in summary.counts:
            assert f"{table}/documents.jsonl" in names and f"{table}/generated_schema.jsonl" in names
        first = archive.read("scenes/documents.jsonl").splitlines()[0].decode()
    assert '"sceneIndex":0.0' in first  # float64 written with a fraction, as Convex's export does
    docs = list(iter_backup_documents(summary, "scenes"))
    assert [d["_id"] for d in docs] == scene_ids and all("_creationTime" in d for d in docs)
    assert read_backup(run_dir).sha256 == summary.sha256
    assert [p.name for p in backup_dir(run_dir).iterdir()] and not list(backup_dir(run_dir).glob("*.partial"))


def test_backup_is_one_instant_while_a_writer_inserts_and_patches(transport: ConvexTransport, deployment: LocalDeployment, run_dir: Path) -> None:
    session, scene_ids = seed(transport, 40)
    stop = threading.Event()
    rounds = []

    def writer() -> None:
        with deployment.transport() as own:
            round_number = 0
            while not stop.is_set():
                round_number += 1
                for scene in scene_ids:  # patch every scene, in order, round after round
                    own.mutation("scenes:setChunk", {"id": scene, "s3ChunkKey": f"round-{round_number}", "s3ChunkUrl": "u"})
                # and insert a batch of 5 scenes in one transaction
                own.function("sampleData:insertBatch", {"table": "scenes", "documents": [
                    {"sessionId": session, "sceneIndex": 1000 + i, "status": "pending"} for i in range(5)]})
                rounds.append(round_number)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(rounds) < 2:
            threading.Event().wait(0.05)
        summary = take_backup(transport, run_dir, poll_seconds=0.05, show_progress=False)
    finally:
        stop.set()
        thread.join()
    docs = list(iter_backup_documents(summary, "scenes"))
    patched = {d["_id"]: int(d["s3ChunkKey"].split("-")[1]) for d in docs if d["_id"] in set(scene_ids)}
    sequence = [patched[s] for s in scene_ids]
    # One instant: the sequential writer's rounds form one boundary (r, r, ..., r-1, r-1) and no batch is torn.
    assert all(a >= b for a, b in zip(sequence, sequence[1:])) and sequence[0] - sequence[-1] <= 1
    assert (len(docs) - 40) % 5 == 0
    assert len(rounds) >= 2


def test_second_backup_in_same_run_folder_is_refused(transport: ConvexTransport, run_dir: Path) -> None:
    take_backup(transport, run_dir, poll_seconds=0.05, show_progress=False)
    with pytest.raises(errors.PreconditionFailed, match="already"):
        take_backup(transport, run_dir, poll_seconds=0.05, show_progress=False)


def test_export_already_in_progress_is_refused_clearly(transport: ConvexTransport, run_dir: Path) -> None:
    transport.post("/api/export/request/zip", params={"includeStorage": "false"})
    with pytest.raises(errors.ExportInProgress, match="already"):
        take_backup(transport, run_dir, poll_seconds=0.05, show_progress=False)
    assert not (backup_dir(run_dir) / BACKUP_RECORD).exists()


@pytest.mark.parametrize("fault, error", [("failed", errors.ExportFailed), ("truncate", errors.RunbookError)])
def test_failed_or_cut_short_export_leaves_nothing_valid(deploy_key: str, run_dir: Path, fault: str, error: type) -> None:
    with LocalDeployment(deploy_key=deploy_key, export_fault=fault) as broken, broken.transport() as client:
        seed(client, 10)
        with pytest.raises(error):
            take_backup(client, run_dir, poll_seconds=0.05, show_progress=False)
    assert list(backup_dir(run_dir).iterdir()) == []
    with pytest.raises(errors.PreconditionFailed, match="No backup"):
        read_backup(run_dir)


def test_altered_backup_is_detected(transport: ConvexTransport, run_dir: Path) -> None:
    summary = take_backup(transport, run_dir, poll_seconds=0.05, show_progress=False)
    with summary.zip_path.open("ab") as zip_file:
        zip_file.write(b"tampered")
    with pytest.raises(errors.PreconditionFailed, match="does not match"):
        read_backup(run_dir)
