"""The papermill runner (on throwaway notebooks, no Convex needed) and the `runbook` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from helpers import archive, cli, runner
from helpers.errors import PreconditionFailed
from helpers.runner import StepFailed
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001

REPO_ROOT = Path(__file__).resolve().parent.parent
URL = "http://127.0.0.1:9"

PARAMETERS = 'convex_url = ""\nrun_dir = ""\nmigration = ""\nlabel = "default"'
RECORD = """\
import os
from pathlib import Path
from helpers import archive
archive.write_step_results(Path(run_dir), STEP, archive.StepResults(
    step=STEP, status="passed", inputs={}, outputs={},
    summary={"label": label, "headless": os.environ.get("RUNBOOK_HEADLESS"),
             "key_in_env": bool(os.environ.get("CONVEX_DEPLOY_KEY")), **SUMMARY},
))"""


def _notebook(directory: Path, step: str, *cells: str, summary: dict | None = None) -> Path:
    """A step notebook in the runbook's conventions: a `parameters` cell, then `cells` (with STEP and SUMMARY bound)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {step}"),
        nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f"STEP = {step!r}\nSUMMARY = {summary or {}!r}"),
        *(nbformat.v4.new_code_cell(source) for source in cells),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{step}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebooks(tmp_path: Path) -> Path:
    return tmp_path / "notebooks"


# --- runner -------------------------------------------------------------------------------------------------


def test_run_step_leaves_parameters_notebook_html_and_results(tmp_path: Path, notebooks: Path, deploy_key: str) -> None:
    _notebook(notebooks, "ok_step", RECORD)
    run_dir = tmp_path / "run"

    results = runner.run_step("ok_step", convex_url=URL, run_dir=run_dir, parameters={"label": "given"}, notebooks_dir=notebooks)

    assert results.status == "passed"
    # The parameter arrived, the kernel is told it runs headless and has the key from the environment.
    assert results.summary == {"label": "given", "headless": "1", "key_in_env": True}
    out = run_dir / "ok_step"
    assert json.loads((out / "parameters.json").read_text()) == {
        "convex_url": URL, "run_dir": str(run_dir.resolve()), "migration": M001.id, "label": "given",
    }
    executed = nbformat.read(out / "ok_step.ipynb", as_version=4)
    assert any("injected-parameters" in cell.metadata.get("tags", []) for cell in executed.cells)
    html = (out / "ok_step.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") and "given" in html and "<script" in html
    # The key reached the kernel through the environment only: nothing in the folder holds it.
    assert deploy_key not in (out / "parameters.json").read_text()
    assert archive.find_secret(run_dir, deploy_key) == []


def test_a_raising_cell_gives_step_failed_naming_the_cell_and_the_notebook(tmp_path: Path, notebooks: Path) -> None:
    _notebook(notebooks, "bad_step", "x = 1", "# check the input\nraise ValueError('the input is bad')", RECORD)
    run_dir = tmp_path / "run"

    with pytest.raises(StepFailed) as failed:
        runner.run_step("bad_step", convex_url=URL, run_dir=run_dir, notebooks_dir=notebooks)

    executed = run_dir / "bad_step" / "bad_step.ipynb"
    error = failed.value
    assert (error.step, error.ename, error.evalue, error.notebook_path) == ("bad_step", "ValueError", "the input is bad", executed)
    # The index is the source notebook's (the one an author edits), not shifted by papermill's injected cell.
    assert error.cell_index == 4
    assert nbformat.read(notebooks / "bad_step.ipynb", as_version=4).cells[4].source.startswith("# check the input")
    message = str(error)
    assert "in cell 4 (In [5]: '# check the input')" in message
    assert "ValueError: the input is bad" in message and str(executed) in message
    # Evidence of the failure is kept: the HTML is rendered for a failed run too, and no results file exists.
    assert "the input is bad" in (run_dir / "bad_step" / "bad_step.html").read_text(encoding="utf-8")
    assert not (run_dir / "bad_step" / "results.json").exists()


def test_a_notebook_that_writes_no_results_fails_the_step(tmp_path: Path, notebooks: Path) -> None:
    _notebook(notebooks, "silent_step", "print('done, but recorded nothing')")
    with pytest.raises(StepFailed, match="silent_step failed: ResultsMissing"):
        runner.run_step("silent_step", convex_url=URL, run_dir=tmp_path / "run", notebooks_dir=notebooks)


def test_parameters_are_refused_before_anything_runs(tmp_path: Path, notebooks: Path, deploy_key: str) -> None:
    _notebook(notebooks, "ok_step", RECORD)
    run_dir = tmp_path / "run"
    with pytest.raises(PreconditionFailed, match="holds the deploy key"):
        runner.run_step("ok_step", convex_url=URL, run_dir=run_dir, parameters={"label": deploy_key}, notebooks_dir=notebooks)
    with pytest.raises(PreconditionFailed, match="has no parameter lable") as typo:
        runner.run_step("ok_step", convex_url=URL, run_dir=run_dir, parameters={"lable": "x"}, notebooks_dir=notebooks)
    assert "label" in typo.value.hint
    with pytest.raises(PreconditionFailed, match="carries credentials") as with_credentials:
        runner.run_step("ok_step", convex_url="https://ops:hunter2@happy-otter-1.convex.cloud", run_dir=run_dir,
                        notebooks_dir=notebooks)
    assert "hunter2" not in str(with_credentials.value)
    assert not run_dir.exists()


def test_run_migration_dry_run_chains_the_steps_and_seals_the_folder(tmp_path: Path, notebooks: Path) -> None:
    _notebook(notebooks, "01_backup_snapshot", RECORD)
    planned = {"actions": {"scenes": {"migrate": 3, "skip": 1, "blocked": 2}, "videoSessions": {"fill_missing": 2}},
               "references_by_type": {"thumbnail": 4, "video": 1}}
    _notebook(notebooks, "02_dry_run", RECORD, summary=planned)
    seen: list[tuple[str, str]] = []

    result = runner.run_migration(
        URL, dry_run=True, runs_dir=tmp_path / "runs", notebooks_dir=notebooks, operator="alice",
        on_step=lambda step, status: seen.append((step, status)),
    )

    assert result.passed and result.steps == {"01_backup_snapshot": "passed", "02_dry_run": "passed"}
    assert seen == [("01_backup_snapshot", "running"), ("01_backup_snapshot", "passed"), ("02_dry_run", "running"), ("02_dry_run", "passed")]
    stats = result.statistics
    assert stats is not None and stats.planned
    assert (stats.migrated["scenes"], stats.migrated["sessions"], stats.asset_references_created, stats.errors) == (3, 2, 5, [])
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["operator"] == "alice" and manifest["steps"] == result.steps
    assert "02_dry_run/02_dry_run.html" in manifest["files"]
    assert archive.check_archive(result.run_dir).ok


def test_run_migration_seals_the_folder_when_a_step_fails(tmp_path: Path, notebooks: Path) -> None:
    _notebook(notebooks, "01_backup_snapshot", "raise RuntimeError('export failed')")
    _notebook(notebooks, "02_dry_run", RECORD)

    with pytest.raises(StepFailed, match="01_backup_snapshot failed") as failed:
        runner.run_migration(URL, dry_run=True, runs_dir=tmp_path / "runs", notebooks_dir=notebooks)

    run_dir = failed.value.notebook_path.parent.parent
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["steps"] == {"01_backup_snapshot": "failed", "02_dry_run": "not run"}
    assert not (run_dir / "02_dry_run").exists()
    assert archive.check_archive(run_dir).ok

    # Fixed, the step runs again in the same folder; the manifest is resealed and keeps the run's start.
    _notebook(notebooks, "01_backup_snapshot", RECORD)
    again = runner.run_migration(URL, dry_run=True, steps=["01_backup_snapshot"], run_dir=run_dir, notebooks_dir=notebooks)
    assert again.passed and again.run_dir == run_dir and again.statistics is None
    resealed = json.loads((run_dir / "manifest.json").read_text())
    assert resealed["steps"] == {"01_backup_snapshot": "passed", "02_dry_run": "not run"}
    assert resealed["started_at"] == manifest["started_at"]
    assert archive.check_archive(run_dir).ok


def test_statistics_come_from_the_apply_summary(tmp_path: Path) -> None:
    summary = {"migrated": {"scenes": 10, "videoSessions": 2}, "references_created": 25, "duration_s": 4.5,
               "errors": [{"id": "s9", "table": "scenes", "outcome": "error", "message": "too large"}]}
    archive.write_step_results(tmp_path, "03_apply", archive.StepResults(step="03_apply", status="passed", summary=summary))
    stats = runner.statistics(tmp_path, wall_seconds=99.0)
    assert stats is not None and not stats.planned
    assert (stats.migrated["scenes"], stats.migrated["sessions"], stats.asset_references_created) == (10, 2, 25)
    assert (stats.apply_seconds, stats.wall_seconds) == (4.5, 99.0)
    assert stats.errors == [{"id": "s9", "reason": "too large"}]


def test_apply_needs_confirmation_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed, match="not confirmed") as refused:
        runner.run_migration(URL, runs_dir=tmp_path / "runs")
    assert "confirm=True" in refused.value.hint
    assert not (tmp_path / "runs").exists()


def test_rollback_execution_needs_confirmation_too(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed, match="execute=True changes the deployment"):
        runner.run_migration(URL, steps=["05_rollback"], parameters={"05_rollback": {"execute": True}}, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


# --- cli ----------------------------------------------------------------------------------------------------


def test_params_lists_the_dry_run_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["params", str(REPO_ROOT / "notebooks" / "02_dry_run.ipynb")]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names[:2] == ["convex_url", "run_dir"]
    assert "page_size: int = 4000" in lines


def test_params_accepts_a_step_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["params", "03_apply"]) == 0
    assert "confirm: bool = False" in capsys.readouterr().out.splitlines()


def test_params_of_an_unknown_step_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["params", "09_nothing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No notebook for step '09_nothing'") and "\n  fix: Known steps:" in err


def test_check_archive_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "02_dry_run").mkdir()
    archive.write_json_atomic(tmp_path / "02_dry_run" / "parameters.json", {"page_size": 10})
    archive.write_manifest(tmp_path, deployment_url=URL, operator="alice", started_at="t0", finished_at="t1", steps={"02_dry_run": "passed"})
    assert cli.main(["check-archive", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("OK")

    (tmp_path / "02_dry_run" / "parameters.json").write_text('{"page_size": 1}')
    assert cli.main(["check-archive", str(tmp_path)]) == 1
    assert capsys.readouterr().out.startswith("altered: 02_dry_run/parameters.json")


def test_run_without_confirm_or_dry_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--url", URL, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Applying changes the deployment and was not confirmed")
    assert "--confirm" in err and "--dry-run" in err
    assert not (tmp_path / "runs").exists()


def test_run_prints_statistics_and_the_evidence_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict] = []

    def fake_run_migration(url: str, dry_run: bool, **kwargs: object) -> runner.RunResult:
        calls.append({"url": url, "dry_run": dry_run, **kwargs})
        stats = runner.Statistics(planned=False, migrated={"scenes": 1200, "sessions": 40}, asset_references_created=3100,
                                  errors=[{"id": "s7", "reason": "too large"}], apply_seconds=12.25, wall_seconds=40.0)
        return runner.RunResult(run_dir=tmp_path / "run", passed=True, steps={"03_apply": "passed"}, statistics=stats,
                                manifest_sha256="ab" * 32)

    monkeypatch.setattr(cli, "run_migration", fake_run_migration)
    argv = ["run", "--url", URL, "--confirm", "--steps", "01_backup_snapshot, 03_apply", "-p", "03_apply.batch_size=50"]
    assert cli.main(argv) == 0
    assert calls[0]["steps"] == ["01_backup_snapshot", "03_apply"] and calls[0]["confirm"] is True
    assert calls[0]["parameters"] == {"03_apply": {"batch_size": 50}}
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "scenes migrated: 1,200", "sessions migrated: 40", "asset references created: 3,100", "errors: 1",
        "  s7: too large", "apply time: 12.2 s", "wall time: 40.0 s", f"Evidence: {tmp_path / 'run'}",
        f"Manifest sha256: {'ab' * 32}",
    ]


def test_run_exits_1_naming_the_failed_step_and_the_evidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    executed = tmp_path / "runs" / "r1" / "02_dry_run" / "02_dry_run.ipynb"

    def failing(*args: object, **kwargs: object) -> runner.RunResult:
        raise StepFailed("02_dry_run", 4, "FunctionsNotDeployed", "migration:readPage not found", executed, "summary = x")

    monkeypatch.setattr(cli, "run_migration", failing)
    assert cli.main(["run", "--url", URL, "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: step 02_dry_run failed in cell 4 ('summary = x'): FunctionsNotDeployed")
    assert str(executed) in captured.err
    assert captured.out.strip() == f"Evidence: {tmp_path / 'runs' / 'r1'}"


def test_parameter_values_are_typed_like_papermill() -> None:
    assert cli.parse_parameter("03_apply.batch_size=500") == ("03_apply", "batch_size", 500)
    assert cli.parse_parameter("03_apply.allow_stale_backup=True") == ("03_apply", "allow_stale_backup", True)
    assert cli.parse_parameter("04_verify.max_backup_age_hours=1.5") == ("04_verify", "max_backup_age_hours", 1.5)
    assert cli.parse_parameter("02_dry_run.bucket_base_url=https://b.s3.amazonaws.com/x=y") == (
        "02_dry_run", "bucket_base_url", "https://b.s3.amazonaws.com/x=y",
    )


def test_malformed_parameter_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        cli.main(["run", "--url", URL, "--dry-run", "-p", "batch_size=5"])
    assert usage.value.code == 2
    assert "expected STEP.NAME=VALUE" in capsys.readouterr().err


def test_workers_reach_the_dry_run_and_verify_that_run(monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[Any] = []
    monkeypatch.setattr(cli, "run_migration", lambda *args, **kwargs: given.append(kwargs["parameters"]) or _refuse())
    cli.main(["run", "--url", URL, "--dry-run", "--workers", "3", "-p", "02_dry_run.page_size=100"])
    cli.main(["run", "--url", URL, "--confirm", "--workers", "2"])
    cli.main(["run", "--url", URL, "--confirm"])
    assert given == [
        {"02_dry_run": {"page_size": 100, "workers": 3}},  # verify does not run in a dry run: no stray parameter
        {"02_dry_run": {"workers": 2}, "04_verify": {"workers": 2}},
        {},
    ]
    for step in cli.WORKER_STEPS:  # the notebooks declare it (runner.check_parameters refuses undeclared names)
        runner.check_parameters(step, {"workers": 2})


def test_workers_below_one_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        cli.main(["run", "--url", URL, "--dry-run", "--workers", "0"])
    assert usage.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def _refuse() -> Any:
    raise PreconditionFailed("stop here", hint="nothing to run in this test")


def test_console_script_is_installed_and_exits_2_when_refusing(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "runbook"
    done = subprocess.run([str(script), "run", "--url", URL, "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "error: Applying changes the deployment and was not confirmed" in done.stderr
    assert "Traceback" not in done.stderr


# --- refusals before a run folder exists, and a run folder that cannot be written ---------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://ops:hunter2@happy-otter-1.convex.cloud", "error: The deployment URL carries credentials (https://REDACTED@happy-otter-1.convex.cloud)"),
        ("happy-otter-1.convex.cloud", "error: 'happy-otter-1.convex.cloud' is not an http(s) URL of a deployment."),
        ("ftp://happy-otter-1.convex.cloud", "error: 'ftp://happy-otter-1.convex.cloud' is not an http(s) URL of a deployment."),
    ],
)
def test_a_refused_preflight_leaves_no_run_folder(url: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert cli.main(["run", "--url", url, "--dry-run", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n  fix: ") == 1 and "hunter2" not in err
    assert not runs.exists()


def test_no_deploy_key_leaves_no_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CONVEX_DEPLOY_KEY")
    runs = tmp_path / "runs"
    assert cli.main(["run", "--url", URL, "--dry-run", "--runs-dir", str(runs)]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not runs.exists()


def test_a_runs_folder_under_a_file_ends_in_one_line_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "runs").write_text("a file, not a folder\n")
    assert cli.main(["run", "--url", URL, "--dry-run", "--runs-dir", str(tmp_path / "runs" / "more")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "Traceback" not in "".join(err)
    assert err[0].startswith(f"error: Cannot write the run folder at {tmp_path / 'runs'}")
    assert err[1].startswith("  fix: Choose a runs folder you can write to")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_runs_folder_ends_in_one_line_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o555)
    assert cli.main(["run", "--url", URL, "--dry-run", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"error: Cannot write the run folder at {runs}/")


def test_a_failing_seal_does_not_hide_the_step_error(tmp_path: Path, notebooks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The step fails, and the folder cannot be sealed either (manifest.json is a directory): the step's error is
    the one reported, the seal's is added to it."""
    _notebook(notebooks, "01_backup_snapshot", "from pathlib import Path\nPath(run_dir, 'manifest.json').mkdir()\nraise ValueError('the export broke')")
    _notebook(notebooks, "02_dry_run", RECORD)
    with pytest.raises(StepFailed, match="ValueError: the export broke") as failed:
        runner.run_migration(URL, dry_run=True, runs_dir=tmp_path / "runs", notebooks_dir=notebooks)
    notes = failed.value.__notes__
    assert len(notes) == 1 and notes[0].startswith("The run folder could not be sealed either: Cannot write the run folder at ")
    assert "manifest.json" in notes[0] and failed.value.manifest_sha256 is None


INTERRUPT_WITNESS = """\
from pathlib import Path
def on_interrupt(signum, frame):
    Path(run_dir, "interrupted").write_text("SIGINT reached the kernel")
# ipykernel puts this handler back after the cell: any later SIGINT lands here instead of being logged as
# "KeyboardInterrupt caught in kernel".
get_ipython().kernel.saved_sigint_handler = on_interrupt"""


def test_the_kernel_is_shut_down_without_an_interrupt(tmp_path: Path, notebooks: Path) -> None:
    """jupyter_client sends SIGINT before shutting a kernel down; landing while the kernel finishes its last
    message, it was logged as "ERROR | KeyboardInterrupt caught in kernel" in runs that passed."""
    source = _notebook(notebooks, "ok_step", INTERRUPT_WITNESS, RECORD)
    run_dir = tmp_path / "run"
    runner.run_step("ok_step", convex_url=URL, run_dir=run_dir, notebooks_dir=notebooks)
    assert not (run_dir / "interrupted").exists()

    # The witness works: the default kernel manager does interrupt the kernel at shutdown.
    witness = tmp_path / "default"
    witness.mkdir()
    papermill.execute_notebook(str(source), str(witness / "out.ipynb"), parameters={"run_dir": str(witness)},
                               kernel_name="python3", progress_bar=False)
    assert (witness / "interrupted").read_text() == "SIGINT reached the kernel"
