"""Backup: Convex's snapshot export through the HTTP API, its layout, one consistent instant, and failures."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from helpers.connection import errors
from helpers.connection.transport import ConvexTransport
from helpers.connection.values import Int64
from helpers.devtools.local_deployment import LocalDeployment
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.steps.backup import (
    BACKUP_RECORD,
    backup_dir,
    check_snapshot,
    iter_backup_documents,
    read_backup,
    take_backup,
)


def seed(transport: ConvexTransport, scenes: int) -> tuple[str, list[str]]:
    session = transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "completed"}]})["ids"][0]
    documents = [{"sessionId": session, "sceneIndex": i, "status": "pending", "s3ChunkKey": "round-0"} for i in range(scenes)]
    return session, transport.function("sampleData:insertBatch", {"table": "scenes", "documents": documents})["ids"]


def test_backup_has_convex_export_layout_and_counts(transport: ConvexTransport, run_dir: Path) -> None:
    _, scene_ids = seed(transport, 25)
    summary = take_backup(transport, run_dir, M001, poll_seconds=0.05, show_progress=False)
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
        summary = take_backup(transport, run_dir, M001, poll_seconds=0.05, show_progress=False)
    finally:
        stop.set()
        thread.join()
    docs = list(iter_backup_documents(summary, "scenes"))
    patched = {d["_id"]: int(d["s3ChunkKey"].split("-")[1]) for d in docs if d["_id"] in set(scene_ids)}
    sequence = [patched[s] for s in scene_ids]
    # One instant: the sequential writer's rounds form one boundary (r, r, ..., r-1, r-1) and no batch is torn.
    assert all(a >= b for a, b in zip(sequence, sequence[1:], strict=False)) and sequence[0] - sequence[-1] <= 1
    assert (len(docs) - 40) % 5 == 0
    assert len(rounds) >= 2


def test_second_backup_in_same_run_folder_is_refused(transport: ConvexTransport, run_dir: Path) -> None:
    take_backup(transport, run_dir, M001, poll_seconds=0.05, show_progress=False)
    with pytest.raises(errors.PreconditionFailed, match="already"):
        take_backup(transport, run_dir, M001, poll_seconds=0.05, show_progress=False)


class SlowExportDeployment(LocalDeployment):
    """Exports take 5 s: long enough to meet one in progress, whatever the machine's load."""

    def command(self) -> list[str]:
        return [*super().command(), "--export-ms", "5000"]


def test_export_already_in_progress_is_refused_clearly(deploy_key: str, run_dir: Path) -> None:
    with SlowExportDeployment(deploy_key=deploy_key) as slow, slow.transport() as client:
        client.post("/api/export/request/zip", params={"includeStorage": "false"})  # someone else's export
        with pytest.raises(errors.ExportInProgress, match="already") as raised:
            take_backup(client, run_dir, M001, poll_seconds=0.05, show_progress=False)
    assert "wait for it" in str(raised.value) and not (backup_dir(run_dir) / BACKUP_RECORD).exists()


@pytest.mark.parametrize(
    "fault, error", [("failed", errors.ExportFailed), ("canceled", errors.ExportCanceled), ("truncate", errors.RunbookError)]
)
def test_failed_canceled_or_cut_short_export_leaves_nothing_valid(deploy_key: str, run_dir: Path, fault: str, error: type) -> None:
    with LocalDeployment(deploy_key=deploy_key, export_fault=fault) as broken, broken.transport() as client:
        seed(client, 10)
        with pytest.raises(error) as raised:  # a terminal state ends the wait at once, not at the timeout
            take_backup(client, run_dir, M001, poll_seconds=0.05, timeout_seconds=30, show_progress=False)
        assert str(raised.value).count("fix:") == 1
    assert list(backup_dir(run_dir).iterdir()) == []
    with pytest.raises(errors.PreconditionFailed, match="No backup"):
        read_backup(run_dir)


def test_altered_backup_is_detected(transport: ConvexTransport, run_dir: Path) -> None:
    summary = take_backup(transport, run_dir, M001, poll_seconds=0.05, show_progress=False)
    with summary.zip_path.open("ab") as zip_file:
        zip_file.write(b"tampered")
    with pytest.raises(errors.PreconditionFailed, match="does not match"):
        read_backup(run_dir)


def test_lost_answer_to_the_export_request_follows_the_export_it_started(deploy_key: str, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LocalDeployment(deploy_key=deploy_key, export_fault="lost-response") as lossy, lossy.transport() as client:
        _, scene_ids = seed(client, 3)
        summary = take_backup(client, run_dir, M001, poll_seconds=0.05, show_progress=False)
        assert client.query("_system/cli/exports:getLatest", {})["start_ts"] == Int64(summary.snapshot_ts)
    assert "answer was lost; following the export it started" in capsys.readouterr().out  # its retry met ExportInProgress
    assert summary.counts["scenes"] == 3 and [d["_id"] for d in iter_backup_documents(summary, "scenes")] == scene_ids


class UndeployedDeployment(LocalDeployment):
    """A deployment lacking some functions (Convex answers "Could not find function"): never pushed, or pushed
    before a function was added."""

    def __init__(self, missing: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.missing = missing

    def command(self) -> list[str]:
        return [*super().command(), "--undeployed", self.missing]


@pytest.mark.parametrize(("missing", "named"), [("migration", "migration:readPage"), ("migration:countSideRows", "migration:countSideRows")])
def test_functions_not_deployed_is_found_before_the_backup_so_step_01_can_run_again(
    deploy_key: str, run_dir: Path, missing: str, named: str
) -> None:
    with UndeployedDeployment(missing, deploy_key=deploy_key) as bare, bare.transport() as client:
        with pytest.raises(errors.FunctionsNotDeployed, match=f"{named} was not found(.|\n)*npx convex deploy"):
            take_backup(client, run_dir, M001, poll_seconds=0.05, show_progress=False)
        assert client.query("_system/cli/exports:getLatest", {}) is None  # no export was even requested
    assert not backup_dir(run_dir).exists()
    with LocalDeployment(deploy_key=deploy_key) as deployed, deployed.transport() as client:  # after `npx convex deploy`
        seed(client, 2)
        assert take_backup(client, run_dir, M001, poll_seconds=0.05, show_progress=False).counts["scenes"] == 2


@pytest.mark.parametrize(
    ("bad_line", "reported"),
    [
        (b'{"_id":"x","_creationTime":1.0,"status":"a\\ud800"}\n', "is not valid UTF-8 text"),  # an escaped lone surrogate
        (b'{"_id":"x","_creationTime":1.0,"status":"a\xff"}\n', "is not valid UTF-8 text"),
        (b'{"_id":"x","_creationTime":1.0,"n":{"$integer":"AA=="}}\n', "is not Convex export JSON"),
    ],
)
def test_backup_check_names_a_line_that_is_not_utf8_text_or_export_json(
    transport: ConvexTransport, run_dir: Path, tmp_path: Path, bad_line: bytes, reported: str
) -> None:
    seed(transport, 3)
    summary = take_backup(transport, run_dir, M001, poll_seconds=0.05, show_progress=False)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(summary.zip_path) as source, zipfile.ZipFile(damaged, "w") as sink:
        for name in source.namelist():
            data = source.read(name)
            if name == "scenes/documents.jsonl":
                lines = data.splitlines(keepends=True)
                data = b"".join([lines[0], bad_line, *lines[1:]])
            sink.writestr(name, data)
    with pytest.raises(errors.RunbookError, match=f"scenes/documents.jsonl line 2 {reported}"):
        check_snapshot(damaged)
    assert check_snapshot(summary.zip_path)["scenes"] == 3
