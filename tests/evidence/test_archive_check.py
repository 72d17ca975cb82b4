"""The archive anchored in the deployment: steps record what they read and wrote in the ledger, the run's seal
records the manifest, and `check-archive --url` catches a folder edited and resealed with the project's own
manifest writer, or a manifest edited alone, naming the file.

The run is made once per module, by the real runner, with two small step notebooks that write a backup and a
plan as the real steps do and anchor them with `archive.record_step`; each test tampers with its own copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import cli, runner
from helpers.connection.calls import read_ledger
from helpers.devtools.local_deployment import LocalDeployment
from helpers.evidence import archive, archive_check
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.steps import names
from tests.test_cli import _notebook

BACKUP = """\
import hashlib, json
from pathlib import Path
from helpers.evidence import archive
from helpers.connection.transport import ConvexTransport
run_dir = Path(run_dir)
(run_dir / "backup").mkdir(parents=True, exist_ok=True)
snapshot = b"PK not really a zip " + label.encode()
(run_dir / "backup" / "snapshot_1.zip").write_bytes(snapshot)
sha = hashlib.sha256(snapshot).hexdigest()
archive.write_json_atomic(run_dir / "backup" / "backup.json", {"zip_file": "snapshot_1.zip", "sha256": sha})
with ConvexTransport(convex_url) as transport:
    archive.record_step(transport, run_dir, archive.StepResults(
        step=STEP, status="passed", summary={"documents": 3}, outputs={"backup_sha256": sha}))
"""

PLAN = """\
import hashlib, json
from pathlib import Path
from helpers.evidence import archive
from helpers.connection.transport import ConvexTransport
run_dir = Path(run_dir)
(run_dir / "plan").mkdir(parents=True, exist_ok=True)
lines = b'{"id":"s1","action":"migrate"}\\n{"id":"s2","action":"no_change"}\\n'
(run_dir / "plan" / "plan.jsonl").write_bytes(lines)
plan_sha = hashlib.sha256(lines).hexdigest()
archive.write_json_atomic(run_dir / "plan" / "plan.json", {"plan_file": "plan/plan.jsonl", "plan_sha256": plan_sha})
backup_sha = json.loads((run_dir / "backup" / "backup.json").read_text())["sha256"]
with ConvexTransport(convex_url) as transport:
    archive.record_step(transport, run_dir, archive.StepResults(
        step=STEP, status="passed", summary={"actions": {}}, inputs={"backup_sha256": backup_sha},
        outputs={"plan_sha256": plan_sha}))
"""


@pytest.fixture(scope="module")
def deployment(deploy_key: str) -> Iterator[LocalDeployment]:
    with LocalDeployment(deploy_key=deploy_key) as running:
        yield running


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("notebooks")
    _notebook(folder, names.BACKUP, BACKUP)
    _notebook(folder, names.DRY_RUN, PLAN)
    return folder


@pytest.fixture(scope="module")
def made(deployment: LocalDeployment, notebooks: Path, tmp_path_factory: pytest.TempPathFactory) -> runner.RunResult:
    return runner.run_migration(
        deployment.url, dry_run=True, runs_dir=tmp_path_factory.mktemp("runs"), notebooks_dir=notebooks, operator="alice"
    )


@pytest.fixture
def run_dir(made: runner.RunResult, tmp_path: Path) -> Path:
    """This test's copy of the run folder: same run id, so the same ledger rows."""
    return Path(shutil.copytree(made.run_dir, tmp_path / made.run_dir.name))


def _reseal(run_dir: Path) -> None:
    """What a forger with write access does: reseal with the project's own manifest writer."""
    manifest = archive.read_manifest(run_dir)
    assert manifest is not None
    facts = archive.RunFacts(manifest.deployment_url, manifest.operator, manifest.started_at, manifest.finished_at, manifest.steps)
    archive.write_manifest(run_dir, facts)


def _check(run_dir: Path, url: str | None, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["check-archive", str(run_dir), *(["--url", url] if url else [])])
    return code, capsys.readouterr().out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_step_row_records_what_it_read_and_wrote_and_the_seal_records_the_manifest(
    made: runner.RunResult, deployment: LocalDeployment
) -> None:
    run_dir = made.run_dir
    this_run = json.loads((run_dir / "run.json").read_text())["run_id"]
    with deployment.transport() as transport:
        rows = {row["step"]: row for row in read_ledger(transport, M001.id) if row["runId"] == this_run}
    assert set(rows) == {names.BACKUP, names.DRY_RUN, names.SEAL}
    assert rows[names.BACKUP]["evidence"] == {
        name: _sha(run_dir / name) for name in ("01_backup_snapshot/results.json", "backup/backup.json", "backup/snapshot_1.zip")
    }
    # The dry run read the backup and wrote the plan: both are in its row.
    assert set(rows[names.DRY_RUN]["evidence"]) == {
        "02_dry_run/results.json", "backup/backup.json", "backup/snapshot_1.zip", "plan/plan.json", "plan/plan.jsonl",
    }
    assert rows[names.DRY_RUN]["startedAt"] <= rows[names.DRY_RUN]["finishedAt"]
    seal = rows[names.SEAL]["evidence"]
    assert seal["manifest.json"] == _sha(run_dir / "manifest.json") == made.manifest_sha256
    manifest = archive.read_manifest(run_dir)
    assert manifest is not None and {k: v for k, v in seal.items() if k != "manifest.json"} == {
        name: entry.sha256 for name, entry in manifest.files.items()
    }
    assert made.seal_not_recorded is None and manifest.run_id == this_run


def test_untouched_folder_passes_with_and_without_the_ledger(run_dir: Path, deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _check(run_dir, deployment.url, capsys)
    assert (code, out.splitlines()[0]) == (0, f"OK: {run_dir} matches its manifest, its hash chain and the deployment's ledger.")
    code, out = _check(run_dir, None, capsys)
    assert code == 0 and "only the folder's own consistency was checked" in out and "--url" in out


@pytest.mark.parametrize("edited", ["02_dry_run/results.json", "plan/plan.jsonl"])
def test_an_edited_and_resealed_folder_is_caught_by_the_ledger_naming_the_file(
    run_dir: Path, deployment: LocalDeployment, edited: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_dir / edited
    if edited.endswith("results.json"):
        results = json.loads(path.read_text())
        results["summary"] = {"actions": {"scenes": {"migrate": 0}}}  # "nothing was going to change"
        archive.write_json_atomic(path, results)
    else:
        path.write_bytes(b'{"id":"s1","action":"no_change"}\n')
        record = json.loads((run_dir / "plan" / "plan.json").read_text())
        archive.write_json_atomic(run_dir / "plan" / "plan.json", {**record, "plan_sha256": _sha(path)})
        results = json.loads((run_dir / names.DRY_RUN / "results.json").read_text())
        results["outputs"]["plan_sha256"] = _sha(path)
        archive.write_json_atomic(run_dir / names.DRY_RUN / "results.json", results)
    _reseal(run_dir)

    code, out = _check(run_dir, None, capsys)
    assert code == 0  # the folder alone is consistent again: that is what the ledger is for
    code, out = _check(run_dir, deployment.url, capsys)
    assert code == 1
    assert any(line.startswith(f"altered: {edited} (the deployment's ledger holds sha256") for line in out.splitlines()), out
    assert any(line.startswith("altered: manifest.json (the deployment's ledger holds sha256") for line in out.splitlines())


def test_a_manifest_edited_alone_is_caught(run_dir: Path, deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    archive.write_json_atomic(run_dir / "manifest.json", {**manifest, "operator": "mallory"})
    assert _check(run_dir, None, capsys)[0] == 0
    code, out = _check(run_dir, deployment.url, capsys)
    assert code == 1 and out.splitlines() == [
        f"altered: manifest.json (the deployment's ledger holds sha256 {_sha_of_seal(deployment, run_dir)} from the seal, "
        f"found {_sha(run_dir / 'manifest.json')})"
    ]


def _sha_of_seal(deployment: LocalDeployment, run_dir: Path) -> str:
    this_run = json.loads((run_dir / "run.json").read_text())["run_id"]
    with deployment.transport() as transport:
        rows = read_ledger(transport, M001.id)
    return next(r for r in rows if r["runId"] == this_run and r["step"] == names.SEAL)["evidence"]["manifest.json"]


def test_a_file_added_and_resealed_is_not_in_the_ledger(run_dir: Path, deployment: LocalDeployment) -> None:
    (run_dir / names.DRY_RUN / "approval.txt").write_text("approved by the CTO\n")
    _reseal(run_dir)
    with deployment.transport() as transport:
        problems = archive_check.check_archive(run_dir, transport).problems
    assert "not in the deployment's ledger: 02_dry_run/approval.txt" in problems


def test_a_folder_the_deployment_never_saw_is_refused(run_dir: Path, deployment: LocalDeployment) -> None:
    archive.write_json_atomic(run_dir / "run.json", {"run_id": "20260101T000000Z-000000000000", "migration": M001.id})
    _reseal(run_dir)
    with deployment.transport() as transport:
        check = archive_check.check_archive(run_dir, transport)
    assert check.anchored and check.problems == [
        "ledger: the deployment has no record of run 20260101T000000Z-000000000000 (run against another deployment, or run.json changed)"
    ]


def test_a_deleted_file_is_named_by_the_ledger(run_dir: Path, deployment: LocalDeployment) -> None:
    (run_dir / "backup" / "snapshot_1.zip").unlink()
    _reseal(run_dir)
    with deployment.transport() as transport:
        problems = archive_check.check_archive(run_dir, transport).problems
    assert "missing: backup/snapshot_1.zip (recorded by step 01_backup_snapshot in the deployment's ledger)" in problems


def test_a_step_row_keeps_the_start_its_step_recorded(deployment: LocalDeployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply records its row when it starts; the row written with its results keeps that start."""
    from helpers.connection.calls import record_run
    from helpers.evidence.run_folder import bind_migration, run_id

    monkeypatch.delenv(archive.STEP_STARTED_ENV, raising=False)
    run_dir = tmp_path / "run"
    bind_migration(run_dir, M001.id)
    with deployment.transport() as transport:
        record_run(transport, M001.id, run_id(run_dir), step=names.APPLY, status="running", operator="alice", startedAt=1_000)
        archive.record_step(transport, run_dir, archive.StepResults(step=names.APPLY, status="passed"))
        monkeypatch.setenv(archive.STEP_STARTED_ENV, "2000")  # the runner's start of the step wins when it is known
        archive.record_step(transport, run_dir, archive.StepResults(step=names.VERIFY, status="passed"))
        rows = {r["step"]: r for r in read_ledger(transport, M001.id) if r["runId"] == run_id(run_dir)}
    assert rows[names.APPLY]["startedAt"] == 1_000 and rows[names.APPLY]["status"] == "passed"
    assert rows[names.VERIFY]["startedAt"] == 2_000 and rows[names.VERIFY]["finishedAt"] > 2_000
    assert rows[names.APPLY]["evidence"] == {"03_apply/results.json": _sha(run_dir / names.APPLY / "results.json")}


def test_a_step_run_again_and_failed_is_superseded_by_the_new_seal(deployment: LocalDeployment, notebooks: Path, tmp_path: Path) -> None:
    """Running a step again deletes its results first; failing, it records none. The run's new seal lists the
    folder as it now is, so the step's earlier row no longer counts (its results are gone for a reason)."""
    first = runner.run_migration(deployment.url, dry_run=True, runs_dir=tmp_path / "runs", notebooks_dir=notebooks)
    _notebook(tmp_path / "broken", names.DRY_RUN, "raise RuntimeError('the deployment went away')")
    with pytest.raises(runner.StepFailed):
        runner.run_migration(deployment.url, dry_run=True, steps=[names.DRY_RUN], run_dir=first.run_dir,
                             notebooks_dir=tmp_path / "broken")
    assert not (first.run_dir / names.DRY_RUN / "results.json").exists()
    with deployment.transport() as transport:
        check = archive_check.check_archive(first.run_dir, transport)
    assert check.ok, check.problems


def _rows(deployment: LocalDeployment, run: str) -> list[dict[str, object]]:
    with deployment.transport() as transport:
        return archive.run_rows(read_ledger(transport, M001.id), run)


def test_the_deployment_keeps_a_seal_and_a_finished_step_row_as_they_were(deployment: LocalDeployment) -> None:
    """Append-only in the deployment itself, whoever calls `migrationRuns:record`: the same seal again is a
    no-op, another manifest is refused until a step of the run is recorded, a finished step row stays."""
    from helpers.connection.calls import record_run
    from helpers.connection.errors import RunbookError

    run = "20261206T000000Z-appendonly01"
    seal = {"step": names.SEAL, "status": "sealed", "operator": "alice", "startedAt": 1}
    with deployment.transport() as transport:
        record_run(transport, M001.id, run, step=names.BACKUP, status="passed", operator="alice", startedAt=1,
                   finishedAt=2, evidence={"01_backup_snapshot/results.json": "a" * 64})
        record_run(transport, M001.id, run, **seal, evidence={"manifest.json": "1" * 64})
        record_run(transport, M001.id, run, **seal, evidence={"manifest.json": "1" * 64})  # the same seal: nothing added
        with pytest.raises(RunbookError, match="the run is sealed already with manifest sha256 1{64} and no step"):
            record_run(transport, M001.id, run, **seal, evidence={"manifest.json": "2" * 64})
        record_run(transport, M001.id, run, step=names.BACKUP, status="failed", operator="mallory", startedAt=5,
                   finishedAt=6, evidence={"01_backup_snapshot/results.json": "b" * 64})
        record_run(transport, M001.id, run, **seal, evidence={"manifest.json": "2" * 64})  # the run continued: a new seal
    rows = _rows(deployment, run)
    assert [(r["step"], r["status"], r["operator"], r["evidence"]) for r in rows] == [
        (names.BACKUP, "passed", "alice", {"01_backup_snapshot/results.json": "a" * 64}),
        (names.SEAL, "sealed", "alice", {"manifest.json": "1" * 64}),
        (names.BACKUP, "failed", "mallory", {"01_backup_snapshot/results.json": "b" * 64}),
        (names.SEAL, "sealed", "alice", {"manifest.json": "2" * 64}),
    ]


def test_check_archive_compares_each_step_with_its_own_row(run_dir: Path, deployment: LocalDeployment) -> None:
    """A step's status and figures changed in the folder and resealed locally: the step's own row names both."""
    path = run_dir / names.BACKUP / "results.json"
    results = json.loads(path.read_text())
    archive.write_json_atomic(path, {**results, "status": "failed", "summary": {**results["summary"], "documents": 4}})
    _reseal(run_dir)
    with deployment.transport() as transport:
        problems = archive_check.check_archive(run_dir, transport).problems
    assert problems[:3] == [
        "step 01_backup_snapshot: status failed in the folder, passed in its ledger row",
        "step 01_backup_snapshot: figure documents is 4 in the folder, 3 in its ledger row",
        f"altered: 01_backup_snapshot/results.json (the deployment's ledger holds sha256 {_results_sha(deployment, run_dir)} "
        f"from step 01_backup_snapshot, found {_sha(path)})",
    ]


def _results_sha(deployment: LocalDeployment, run_dir: Path) -> str:
    this_run = json.loads((run_dir / "run.json").read_text())["run_id"]
    row = next(r for r in _rows(deployment, this_run) if r["step"] == names.BACKUP)
    return str(row["evidence"]["01_backup_snapshot/results.json"])  # type: ignore[index]


def test_the_first_seal_counts_not_a_later_one_written_over_it(run_dir: Path, deployment: LocalDeployment) -> None:
    """A second seal with no step between (the deployment refuses one today; an older deployment overwrote
    its seal row) does not vouch for the folder: the folder is compared with the first seal."""
    this_run = json.loads((run_dir / "run.json").read_text())["run_id"]
    (run_dir / names.DRY_RUN / "approval.txt").write_text("approved by the CTO\n")
    _reseal(run_dir)
    manifest = archive.read_manifest(run_dir)
    assert manifest is not None
    first = _rows(deployment, this_run)
    later_seal = {**first[-1], "recordedAt": (first[-1].get("recordedAt") or 0) + 1, "evidence": {
        "manifest.json": _sha(run_dir / "manifest.json"), **{name: entry.sha256 for name, entry in manifest.files.items()}}}
    assert archive_check.trusted_seals([*first, later_seal]) == [first[-1]]
    problems = archive_check._ledger_problems(run_dir, [*first, later_seal])
    assert "not in the deployment's ledger: 02_dry_run/approval.txt" in problems
    assert any(p.startswith("altered: manifest.json (the deployment's ledger holds sha256 "
                            f"{first[-1]['evidence']['manifest.json']} from the seal") for p in problems)  # type: ignore[index]
    # With a step recorded between them (the run continued), the later seal is the folder's.
    step_again = {**next(r for r in first if r["step"] == names.DRY_RUN), "recordedAt": later_seal["recordedAt"]}
    assert archive_check._ledger_problems(run_dir, [*first, step_again, {**later_seal, "recordedAt": later_seal["recordedAt"] + 1}]) == []
