"""The notebooks, executed headless by papermill against a local deployment with sample data, and the
whole runbook through the `runbook` command and the Python API: evidence, archive check, no secret on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from helpers.connection.transport import ConvexTransport
from helpers.devtools.local_deployment import LocalDeployment
from helpers.evidence.archive import StepResults, read_step_results, write_step_results
from helpers.evidence.archive_check import check_archive, find_secret
from helpers.runner import StepFailed, run_migration
from helpers.steps import names
from tests.flow import migration_references, seed, state

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
REPO = NOTEBOOKS.parent


def execute(step: str, url: str, run_dir: Path, **parameters: object) -> Path:
    out = run_dir / f"{step}.executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{step}.ipynb"), str(out), parameters={"convex_url": url, "run_dir": str(run_dir), **parameters},
        kernel_name="python3", progress_bar=False, cwd=str(REPO),
    )
    return out


def application_data(transport: ConvexTransport) -> dict[str, Any]:
    """Every table but the ledger: what a step that only reads must leave alone (each step records itself)."""
    return {table: docs for table, docs in state(transport).items() if table != "migrationRuns"}


def outputs_text(executed: Path) -> str:
    notebook = nbformat.read(executed, as_version=4)
    return "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/html", ""))
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )


def test_each_notebook_headless_then_rollback_restore(deployment: LocalDeployment, transport: ConvexTransport, run_dir: Path) -> None:
    seed(transport)
    before = application_data(transport)
    execute(names.BACKUP, deployment.url, run_dir)
    zip_path = next((run_dir / "backup").glob("snapshot_*.zip"))
    with zipfile.ZipFile(zip_path) as archive:
        assert {"README.md", "_tables/documents.jsonl", "scenes/documents.jsonl", "videoSessions/documents.jsonl"} <= set(archive.namelist())

    execute(names.DRY_RUN, deployment.url, run_dir)
    assert application_data(transport) == before  # the dry-run changed nothing
    for table in ("scenes_by_status", "sessions_by_status", "references_by_type", "problems"):
        assert (run_dir / "plan" / f"{table}.csv").exists()

    with pytest.raises(papermill.PapermillExecutionError, match="Not confirmed"):
        execute(names.APPLY, deployment.url, run_dir)  # headless without confirm
    assert application_data(transport) == before
    plan = read_step_results(run_dir, names.DRY_RUN).outputs["plan_sha256"]
    backup = read_step_results(run_dir, names.BACKUP).outputs["backup_sha256"]
    refused = outputs_text(run_dir / "03_apply.executed.ipynb")
    assert "Not confirmed" in refused and plan in refused and backup in refused and deployment.url in refused

    confirmed = outputs_text(execute(names.APPLY, deployment.url, run_dir, confirm=True))
    assert "Confirmed by the parameter" in confirmed and plan in confirmed and backup in confirmed
    execute(names.VERIFY, deployment.url, run_dir)
    assert read_step_results(run_dir, names.VERIFY).status == "passed"
    assert migration_references(transport)

    execute(names.ROLLBACK, deployment.url, run_dir, mode="restore", execute=True)
    after = application_data(transport)
    assert after["scenes"] == before["scenes"] and after["videoSessions"] == before["videoSessions"]
    assert migration_references(transport) == []


def test_runbook_command_archives_evidence_without_the_key(
    deployment: LocalDeployment, transport: ConvexTransport, tmp_path: Path, deploy_key: str
) -> None:
    seed(transport)
    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "helpers.cli", "run", "--url", deployment.url, "--confirm", "--runs-dir", str(runs)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = next(runs.iterdir())
    assert str(run_dir) in done.stdout
    for step in (names.BACKUP, names.DRY_RUN, names.APPLY, names.VERIFY):
        assert read_step_results(run_dir, step).status == "passed"
        assert (run_dir / step / f"{step}.ipynb").exists() and (run_dir / step / f"{step}.html").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["deployment_url"] == deployment.url
    assert check_archive(run_dir).ok
    assert find_secret(run_dir, deploy_key) == []
    assert deploy_key not in done.stdout + done.stderr

    verify_html = run_dir / names.VERIFY / "04_verify.html"
    verify_html.write_text(verify_html.read_text() + "<!-- edited -->")
    altered = subprocess.run([sys.executable, "-m", "helpers.cli", "check-archive", str(run_dir)], capture_output=True, text=True, cwd=REPO)
    assert altered.returncode == 1 and "04_verify.html" in altered.stdout


def test_python_api_returns_statistics_and_dry_run_stops_after_plan(deployment: LocalDeployment, transport: ConvexTransport, tmp_path: Path) -> None:
    seed(transport)
    planned = run_migration(deployment.url, dry_run=True, runs_dir=tmp_path / "runs")
    assert list(planned.steps) == [names.BACKUP, names.DRY_RUN] and planned.passed
    assert migration_references(transport) == []

    result = run_migration(deployment.url, confirm=True, runs_dir=tmp_path / "runs")
    assert result.passed and result.steps[names.VERIFY] == "passed"
    stats = result.statistics
    assert stats.migrated["scenes"] > 0 and stats.migrated["sessions"] > 0
    assert stats.side_rows == {"asset references": len(migration_references(transport))}
    assert stats.apply_seconds is not None and stats.apply_seconds > 0 and stats.wall_seconds > stats.apply_seconds


def test_a_failed_step_stops_the_chain(tmp_path: Path, deploy_key: str) -> None:
    with LocalDeployment(deploy_key=deploy_key, export_fault="failed") as failing, pytest.raises(StepFailed) as failure:
        run_migration(failing.url, confirm=True, runs_dir=tmp_path / "runs")
    message = str(failure.value)
    assert names.BACKUP in message and ".ipynb" in message
    run_dir = next((tmp_path / "runs").iterdir())
    assert not (run_dir / names.DRY_RUN).exists()
    assert (run_dir / "manifest.json").exists()


def test_demo_runs_the_whole_runbook_on_the_local_deployment(tmp_path: Path, deploy_key: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "helpers.cli", "demo", "--seed-scenes", "200", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "04_verify            passed" in done.stdout and "archive check: OK (folder and ledger)" in done.stdout and "verify: 11 of 11 checks passed" in done.stdout
    run_dir = Path(done.stdout.rsplit("Evidence: ", 1)[1].splitlines()[0])
    assert check_archive(run_dir).ok and find_secret(run_dir, deploy_key) == []


@pytest.mark.parametrize(("step", "previous"), [(names.DRY_RUN, names.BACKUP), (names.APPLY, names.DRY_RUN), (names.ROLLBACK, names.DRY_RUN)])
def test_a_step_refuses_to_build_on_a_step_that_did_not_pass(step: str, previous: str, run_dir: Path) -> None:
    with pytest.raises(papermill.PapermillExecutionError, match=f"step {previous} has not run"):
        execute(step, "http://127.0.0.1:9", run_dir)
    write_step_results(run_dir, previous, StepResults(step=previous, status="failed"))
    with pytest.raises(papermill.PapermillExecutionError, match=f"step {previous} did not pass"):
        execute(step, "http://127.0.0.1:9", run_dir)
