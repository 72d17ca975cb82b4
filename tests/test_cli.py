"""The papermill runner (on throwaway notebooks; the pre-flight asks a live local deployment) and the `runbook`
console script."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from helpers import cli, runner
from helpers.connection.calls import read_ledger
from helpers.connection.errors import PreconditionFailed
from helpers.devtools.local_deployment import LocalDeployment
from helpers.devtools.sample_data import load
from helpers.evidence import archive, archive_check
from helpers.evidence.run_folder import bind_migration
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.runner import StepFailed
from helpers.steps import names

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The deployment the runs below talk to: the runner's pre-flight asks it before any run folder exists (set by
#: `live_url`; the stand-in notebooks themselves never call it).
URL = ""
CLOSED_PORT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def live_url(shared_deployment: LocalDeployment) -> None:
    global URL
    URL = shared_deployment.url

PARAMETERS = 'convex_url = ""\nrun_dir = ""\nmigration = ""\nlabel = "default"'
RECORD = """\
import os
from pathlib import Path
from helpers.evidence import archive
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


def _bound(run_dir: Path) -> Path:
    """A run folder of migration 001 (a folder that names no migration is refused)."""
    bind_migration(run_dir, "001_s3_asset_tracking")
    return run_dir


# --- runner -------------------------------------------------------------------------------------------------


def test_run_step_leaves_parameters_notebook_html_and_results(tmp_path: Path, notebooks: Path, deploy_key: str) -> None:
    _notebook(notebooks, "ok_step", RECORD)
    run_dir = _bound(tmp_path / "run")

    results = runner.run_step("ok_step", convex_url=URL, run_dir=run_dir, parameters={"label": "given"}, notebooks_dir=notebooks)

    assert results.status == "passed"
    # The parameter arrived, the kernel is told it runs headless and has the key from the environment.
    assert results.summary == {"label": "given", "headless": "1", "key_in_env": True}
    out = run_dir / "ok_step"
    # run_dir is the step folder's parent: the kernel starts in the step's folder, as JupyterLab starts it.
    assert json.loads((out / "parameters.json").read_text()) == {
        "convex_url": URL, "run_dir": "..", "migration": M001.id, "label": "given",
    }
    executed = nbformat.read(out / "ok_step.ipynb", as_version=4)
    assert any("injected-parameters" in cell.metadata.get("tags", []) for cell in executed.cells)
    html = (out / "ok_step.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") and "given" in html and "jp-Notebook" in html
    # The key reached the kernel through the environment only: nothing in the folder holds it.
    assert deploy_key not in (out / "parameters.json").read_text()
    assert archive_check.find_secret(run_dir, deploy_key) == []


def test_a_raising_cell_gives_step_failed_naming_the_cell_and_the_notebook(tmp_path: Path, notebooks: Path) -> None:
    _notebook(notebooks, "bad_step", "x = 1", "# check the input\nraise ValueError('the input is bad')", RECORD)
    run_dir = _bound(tmp_path / "run")

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
        runner.run_step("silent_step", convex_url=URL, run_dir=_bound(tmp_path / "run"), notebooks_dir=notebooks)


def test_parameters_are_refused_before_anything_runs(tmp_path: Path, notebooks: Path, deploy_key: str) -> None:
    _notebook(notebooks, "ok_step", RECORD)
    run_dir = _bound(tmp_path / "run")
    with pytest.raises(PreconditionFailed, match="holds the deploy key"):
        runner.run_step("ok_step", convex_url=URL, run_dir=run_dir, parameters={"label": deploy_key}, notebooks_dir=notebooks)
    with pytest.raises(PreconditionFailed, match="has no parameter lable") as typo:
        runner.run_step("ok_step", convex_url=URL, run_dir=run_dir, parameters={"lable": "x"}, notebooks_dir=notebooks)
    assert "label" in typo.value.hint
    with pytest.raises(PreconditionFailed, match="carries credentials") as with_credentials:
        runner.run_step("ok_step", convex_url="https://ops:hunter2@happy-otter-1.convex.cloud", run_dir=run_dir,
                        notebooks_dir=notebooks)
    assert "hunter2" not in str(with_credentials.value)
    assert [p.name for p in run_dir.iterdir()] == ["run.json"]  # nothing written beside the folder's identity


def test_run_migration_dry_run_chains_the_steps_and_seals_the_folder(tmp_path: Path, notebooks: Path) -> None:
    _notebook(notebooks, names.BACKUP, RECORD)
    planned = {"actions": {"scenes": {"migrate": 3, "skip": 1, "blocked": 2}, "videoSessions": {"fill_missing": 2}},
               "references_by_type": {"thumbnail": 4, "video": 1}}
    _notebook(notebooks, names.DRY_RUN, RECORD, summary=planned)
    seen: list[tuple[str, str]] = []

    result = runner.run_migration(
        URL, dry_run=True, runs_dir=tmp_path / "runs", notebooks_dir=notebooks, operator="alice",
        on_step=lambda step, status: seen.append((step, status)),
    )

    assert result.passed and result.steps == {names.BACKUP: "passed", names.DRY_RUN: "passed"}
    assert seen == [(names.BACKUP, "running"), (names.BACKUP, "passed"), (names.DRY_RUN, "running"), (names.DRY_RUN, "passed")]
    stats = result.statistics
    assert stats is not None and stats.planned
    assert (stats.migrated["scenes"], stats.migrated["sessions"], stats.side_rows, stats.errors) == (3, 2, {"asset references": 5}, [])
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["operator"] == "alice" and manifest["steps"] == result.steps
    assert "02_dry_run/02_dry_run.html" in manifest["files"]
    assert archive_check.check_archive(result.run_dir).ok


def test_run_migration_seals_the_folder_when_a_step_fails(tmp_path: Path, notebooks: Path) -> None:
    _notebook(notebooks, names.BACKUP, "raise RuntimeError('export failed')")
    _notebook(notebooks, names.DRY_RUN, RECORD)

    with pytest.raises(StepFailed, match="01_backup_snapshot failed") as failed:
        runner.run_migration(URL, dry_run=True, runs_dir=tmp_path / "runs", notebooks_dir=notebooks)

    run_dir = failed.value.notebook_path.parent.parent
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["steps"] == {names.BACKUP: "failed", names.DRY_RUN: "not run"}
    assert not (run_dir / names.DRY_RUN).exists()
    assert archive_check.check_archive(run_dir).ok

    # Fixed, the step runs again in the same folder; the manifest is resealed and keeps the run's start.
    _notebook(notebooks, names.BACKUP, RECORD)
    again = runner.run_migration(URL, dry_run=True, steps=[names.BACKUP], run_dir=run_dir, notebooks_dir=notebooks)
    assert again.passed and again.run_dir == run_dir and again.statistics is None
    resealed = json.loads((run_dir / "manifest.json").read_text())
    assert resealed["steps"] == {names.BACKUP: "passed", names.DRY_RUN: "not run"}
    assert resealed["started_at"] == manifest["started_at"]
    assert archive_check.check_archive(run_dir).ok


def test_statistics_come_from_the_apply_summary(tmp_path: Path) -> None:
    summary = {"migrated": {"scenes": 10, "videoSessions": 2}, "references_created": 25, "duration_s": 4.5,
               "errors": [{"id": "s9", "table": "scenes", "outcome": "error", "message": "too large"}]}
    archive.write_step_results(tmp_path, names.APPLY, archive.StepResults(step=names.APPLY, status="passed", summary=summary))
    stats = runner.statistics(tmp_path, M001, wall_seconds=99.0)
    assert stats is not None and not stats.planned
    assert (stats.migrated["scenes"], stats.migrated["sessions"], stats.side_rows) == (10, 2, {"asset references": 25})
    assert (stats.apply_seconds, stats.wall_seconds) == (4.5, 99.0)
    assert stats.errors == [{"id": "s9", "reason": "too large"}]


def test_apply_needs_confirmation_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed, match="not confirmed") as refused:
        runner.run_migration(URL, runs_dir=tmp_path / "runs")
    assert "confirm=True" in refused.value.hint
    assert not (tmp_path / "runs").exists()


def test_rollback_execution_needs_confirmation_too(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed, match="execute=True changes the deployment"):
        runner.run_migration(URL, steps=[names.ROLLBACK], parameters={names.ROLLBACK: {"execute": True}}, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


# --- cli ----------------------------------------------------------------------------------------------------


def test_params_lists_the_dry_run_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["params", str(REPO_ROOT / "notebooks" / "02_dry_run.ipynb")]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names[:2] == ["convex_url", "run_dir"]
    assert "page_size: int = 4000" in lines


def test_params_accepts_a_step_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["params", names.APPLY]) == 0
    assert "confirm: bool = False" in capsys.readouterr().out.splitlines()


def test_params_of_an_unknown_step_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["params", "09_nothing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No notebook for step '09_nothing'") and "\n  fix: Known steps:" in err


def test_check_archive_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _bound(tmp_path)
    (tmp_path / names.DRY_RUN).mkdir()
    archive.write_json_atomic(tmp_path / names.DRY_RUN / "parameters.json", {"page_size": 10})
    archive.write_manifest(tmp_path, archive.RunFacts(URL, "alice", "t0", "t1", {names.DRY_RUN: "passed"}))
    assert cli.main(["check-archive", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("OK")

    (tmp_path / names.DRY_RUN / "parameters.json").write_text('{"page_size": 1}')
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
        stats = runner.Statistics(planned=False, migrated={"scenes": 1200, "sessions": 40}, side_rows={"asset references": 3100},
                                  errors=[{"id": "s7", "reason": "too large"}], apply_seconds=12.25, wall_seconds=40.0)
        return runner.RunResult(run_dir=_bound(tmp_path / "run"), passed=True, steps={names.APPLY: "passed"}, statistics=stats,
                                manifest_sha256="ab" * 32)

    monkeypatch.setattr(cli, "run_migration", fake_run_migration)
    argv = ["run", "--url", URL, "--confirm", "--steps", "01_backup_snapshot, 03_apply", "-p", "03_apply.batch_size=50"]
    assert cli.main(argv) == 0
    assert calls[0]["steps"] == [names.BACKUP, names.APPLY] and calls[0]["confirm"] is True
    assert calls[0]["parameters"] == {names.APPLY: {"batch_size": 50}}
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "steps: 1 of 1 passed (03_apply passed)", "asset references created: 3,100", "documents with errors: 1",
        "  s7: too large", "time: apply 12.2 s, whole run 40.0 s", f"Evidence: {tmp_path / 'run'}",
        f"Check it: runbook check-archive {tmp_path.resolve() / 'run'} --url {URL}", f"Manifest sha256: {'ab' * 32}",
    ]


def test_run_exits_1_naming_the_failed_step_and_the_evidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    executed = tmp_path / "runs" / "r1" / names.DRY_RUN / "02_dry_run.ipynb"

    def failing(*args: object, **kwargs: object) -> runner.RunResult:
        raise StepFailed(names.DRY_RUN, 4, "FunctionsNotDeployed", "migration:readPage not found", executed, "summary = x")

    monkeypatch.setattr(cli, "run_migration", failing)
    assert cli.main(["run", "--url", URL, "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: step 02_dry_run failed in cell 4 ('summary = x'): FunctionsNotDeployed")
    assert str(executed) in captured.err
    assert captured.out.strip() == f"Evidence: {tmp_path / 'runs' / 'r1'}"


def test_parameter_values_are_typed_like_papermill() -> None:
    assert cli.parse_parameter("03_apply.batch_size=500") == (names.APPLY, "batch_size", 500)
    assert cli.parse_parameter("03_apply.allow_stale_backup=True") == (names.APPLY, "allow_stale_backup", True)
    assert cli.parse_parameter("04_verify.max_backup_age_hours=1.5") == (names.VERIFY, "max_backup_age_hours", 1.5)
    assert cli.parse_parameter("02_dry_run.bucket_base_url=https://b.s3.amazonaws.com/x=y") == (
        names.DRY_RUN, "bucket_base_url", "https://b.s3.amazonaws.com/x=y",
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
        {names.DRY_RUN: {"page_size": 100, "workers": 3}},  # verify does not run in a dry run: no stray parameter
        {names.DRY_RUN: {"workers": 2}, names.VERIFY: {"workers": 2}},
        {},
    ]
    for step in names.WITH_WORKERS:  # the notebooks declare it (runner.check_parameters refuses undeclared names)
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
        ("http://127.0.0.1:1garbage", "error: 'http://127.0.0.1:1garbage' is not a URL a deployment can have: Port could not be cast"),
        ("http://[::1", "error: 'http://[::1' is not a URL a deployment can have: Invalid IPv6 URL."),
        ("http://ops:hunter2@[::1", "error: 'http://REDACTED@[::1' is not a URL a deployment can have: Invalid IPv6 URL."),
        ("http://127.0.0.1:3210/api", "error: 'http://127.0.0.1:3210/api' has a path (/api): a deployment's API is at the root"),
        (CLOSED_PORT, "error: _system/cli/exports:getLatest at http://127.0.0.1:9: cannot connect after 1 attempts"),
        ("http://no-such-deployment.invalid:3210", "error: _system/cli/exports:getLatest at http://no-such-deployment.invalid:3210: cannot connect after 1 attempts"),
    ],
)
def test_a_refused_preflight_leaves_no_run_folder(url: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    started = time.monotonic()
    assert cli.main(["run", "--url", url, "--dry-run", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n  fix: ") == 1 and "hunter2" not in err and "Traceback" not in err
    assert not runs.exists() and time.monotonic() - started < 5  # at once: no retries of a refused connection


def test_a_wrong_key_or_a_url_that_is_no_deployment_is_refused_before_a_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    with socket.socket() as listener:  # answers HTTP, but is not Convex
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        not_convex = f"http://127.0.0.1:{listener.getsockname()[1]}"
        served = threading.Thread(target=_answer_404, args=(listener,), daemon=True)
        served.start()
        assert cli.main(["run", "--url", not_convex, "--dry-run", "--runs-dir", str(runs)]) == 2
    assert "Is this a Convex deployment URL?" in capsys.readouterr().err and not runs.exists()
    monkeypatch.setenv("CONVEX_DEPLOY_KEY", "not-the-key")
    assert cli.main(["run", "--url", URL, "--dry-run", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {URL} refused the deploy key: BadAdminKey") and err.count("\n  fix: ") == 1
    assert not runs.exists()


def _answer_404(listener: socket.socket) -> None:
    connection, _ = listener.accept()
    with connection:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nnot found")


@pytest.mark.parametrize("url", ["http://127.0.0.1:1garbage", "http://[::1"])
def test_check_archive_refuses_a_bad_url_in_one_line(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-archive", str(tmp_path), "--url", url]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"error: '{url}' is not a URL a deployment can have") and err[1].startswith("  fix: ")


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
    _notebook(notebooks, names.BACKUP, "from pathlib import Path\nPath(run_dir, 'manifest.json').mkdir()\nraise ValueError('the export broke')")
    _notebook(notebooks, names.DRY_RUN, RECORD)
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
    run_dir = _bound(tmp_path / "run")
    runner.run_step("ok_step", convex_url=URL, run_dir=run_dir, notebooks_dir=notebooks)
    assert not (run_dir / "interrupted").exists()

    # The witness works: the default kernel manager does interrupt the kernel at shutdown.
    witness = tmp_path / "default"
    witness.mkdir()
    papermill.execute_notebook(str(source), str(witness / "out.ipynb"), parameters={"run_dir": str(witness)},
                               kernel_name="python3", progress_bar=False)
    assert (witness / "interrupted").read_text() == "SIGINT reached the kernel"


def test_status_prints_each_migrations_state_and_each_run_and_writes_nothing(
    deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers.connection.calls import record_run
    from helpers.migrations import all_migrations

    def ledger_rows() -> list[dict]:
        with deployment.transport() as transport:
            return transport.function("migration:readPage", {"table": "migrationRuns", "cursor": None, "numItems": 100})["page"]

    with deployment.transport() as transport:
        record_run(transport, M001.id, "run-a", step=names.APPLY, status="passed", operator="alice", startedAt=1_795_600_000_000,
                   finishedAt=1_795_600_060_000)
        record_run(transport, M001.id, "run-a", step="seal", status="sealed", operator="alice", startedAt=1_795_600_000_000,
                   evidence={"manifest.json": "ab" * 32})
    before = ledger_rows()
    assert cli.main(["status", "--url", deployment.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ledger_rows() == before  # it only read
    others = [m.id for m in all_migrations() if m.id != M001.id]
    assert out[0] == f"Deployment {deployment.url}: what its ledger (migrationRuns) holds. Nothing was written."
    width = max(len(m.id) for m in all_migrations())
    assert out[1] == f"  {M001.id:<{width}}  applied (run run-a by alice, 2026-11-25 09:46 UTC)"
    assert [line.split()[1] for line in out[2:2 + len(others)]] == ["pending"] * len(others)
    assert f"{M001.id}: 1 run" in out
    assert "  run-a  alice  2026-11-25 09:46 UTC  03_apply passed" in out and f"    sealed manifest sha256: {'ab' * 32}" in out

    with deployment.transport() as transport:  # a rollback preview changes nothing; an executed one rolls back
        record_run(transport, M001.id, "run-b", step=names.ROLLBACK, status="passed", operator="bob", startedAt=1_795_700_000_000,
                   evidence={"05_rollback/results.json": "cd" * 32})
        assert cli.main(["status", "--url", deployment.url]) == 0
        assert capsys.readouterr().out.splitlines()[1].split()[1] == "applied"
        record_run(transport, M001.id, "run-b", step=names.ROLLBACK, status="passed", operator="bob", startedAt=1_795_700_000_000,
                   finishedAt=1_795_700_010_000, details="mode=restore")
    assert cli.main(["status", "--url", deployment.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"  {M001.id:<{width}}  rolled back (run run-b by bob, 2026-11-26 13:33 UTC)"
    assert "  run-b  bob  2026-11-26 13:33 UTC  05_rollback passed" in out and "    sealed manifest sha256: not sealed" in out


def test_a_run_whose_seal_the_deployment_missed_says_how_to_record_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = runner.RunResult(run_dir=_bound(tmp_path / "run"), passed=True, steps={names.BACKUP: "passed"}, statistics=None,
                              manifest_sha256="ab" * 32, seal_not_recorded="the deployment did not answer")
    monkeypatch.setattr(cli, "run_migration", lambda *args, **kwargs: result)
    assert cli.main(["run", "--url", URL, "--dry-run", "--steps", names.BACKUP]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        f"Record the seal once the deployment answers: runbook seal {tmp_path / 'run'} --url {URL}",
        f"Manifest sha256: {'ab' * 32} (NOT recorded in the deployment's ledger: the deployment did not answer)",
    ]


# --- new-run, lab -------------------------------------------------------------------------------------------


def test_new_run_prepares_each_step_notebook_in_the_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.evidence.pages import notebook_parameter

    templates = {p: p.read_bytes() for p in runner.NOTEBOOKS_DIR.glob("*.ipynb")}
    assert cli.main(["new-run", "--url", URL, "--runs-dir", str(tmp_path / "runs"), "--operator", "alice",
                     "--migration", "002_retire_legacy_fields"]) == 0
    *_, command, folder = capsys.readouterr().out.splitlines()
    run_dir = Path(folder)
    assert command == f"runbook lab {run_dir}" and run_dir.parent == (tmp_path / "runs").resolve()
    run = json.loads((run_dir / "run.json").read_text())
    assert (run["operator"], run["migration"], run["prepared"]) == ("alice", "002_retire_legacy_fields", True)
    for step in names.FORWARD:
        notebook = nbformat.read(run_dir / step / f"{step}.ipynb", as_version=4)
        assert notebook_parameter(notebook, "convex_url") == URL and notebook_parameter(notebook, "migration") == "002_retire_legacy_fields"
        # The kernel starts in the notebook's folder: from there ".." is the run folder.
        assert (run_dir / step / notebook_parameter(notebook, "run_dir")).resolve() == run_dir
        assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    assert not (run_dir / names.ROLLBACK).exists()
    assert {p: p.read_bytes() for p in runner.NOTEBOOKS_DIR.glob("*.ipynb")} == templates  # templates untouched


def test_new_run_refuses_a_url_with_credentials_before_making_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["new-run", "--url", "https://ops:hunter2@happy-otter-1.convex.cloud", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "carries credentials" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_prepared_run_folder_runs_its_own_notebooks_in_place_as_its_operator(tmp_path: Path, notebooks: Path) -> None:
    _notebook(notebooks, names.BACKUP, RECORD, "print('01: 3/3 doc (100%) in 00:01')")
    _notebook(notebooks, names.DRY_RUN, RECORD)
    template = (notebooks / "01_backup_snapshot.ipynb").read_bytes()
    run_dir = runner.prepare_run(URL, runs_dir=tmp_path / "runs", operator="alice", steps=[names.BACKUP, names.DRY_RUN],
                                 notebooks_dir=notebooks)
    prepared = run_dir / names.BACKUP / "01_backup_snapshot.ipynb"
    marked = nbformat.read(prepared, as_version=4)
    marked.cells.append(nbformat.v4.new_code_cell("print('this run folder’s own notebook')"))
    nbformat.write(marked, prepared)
    printed: list[tuple[str, str]] = []

    result = runner.run_migration(URL, dry_run=True, run_dir=run_dir, notebooks_dir=notebooks,
                                  on_output=lambda step, line: printed.append((step, line)))

    assert result.passed and (notebooks / "01_backup_snapshot.ipynb").read_bytes() == template
    assert (names.BACKUP, "01: 3/3 doc (100%) in 00:01") in printed
    assert (names.BACKUP, "this run folder’s own notebook") in printed  # the prepared file ran, not the template
    assert archive.read_step_results(run_dir, names.DRY_RUN).passed  # run_dir ".." reached the run folder
    assert json.loads((run_dir / "manifest.json").read_text())["operator"] == "alice"
    with pytest.raises(PreconditionFailed, match="alice's run"):
        runner.run_migration(URL, dry_run=True, run_dir=run_dir, notebooks_dir=notebooks, operator="bob")


def test_run_prints_each_line_a_step_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fake_run_migration(url: str, dry_run: bool, *, on_step, on_output, **kwargs: object) -> runner.RunResult:  # noqa: ANN001
        on_step(names.APPLY, "running")
        on_output(names.APPLY, "apply: 500/1,055 doc (47%) in 00:05, 100 doc/s")
        on_step(names.APPLY, "passed")
        return runner.RunResult(run_dir=_bound(tmp_path / "r"), passed=True, steps={}, statistics=None, manifest_sha256="ab" * 32)

    monkeypatch.setattr(cli, "run_migration", fake_run_migration)
    assert cli.main(["run", "--url", URL, "--confirm"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"{'03_apply':<20}   apply: 500/1,055 doc (47%) in 00:05, 100 doc/s"


def test_lab_starts_jupyterlab_rooted_at_the_run_folder_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: started.append((path, argv, env)))
    monkeypatch.setenv("RUNBOOK_HEADLESS", "1")
    run_dir = runner.prepare_run(URL, runs_dir=tmp_path, operator="alice", steps=[])
    assert cli.main(["lab", str(run_dir), "--port=8890"]) == 0
    [(path, argv, env)] = started
    assert argv[1:5] == ["-m", "jupyterlab", "--ip=127.0.0.1", f"--ServerApp.root_dir={run_dir.resolve()}"]
    assert argv[-1] == "--port=8890" and ("--allow-root" in argv) is (os.geteuid() == 0)
    assert "RUNBOOK_HEADLESS" not in env  # the kernels it starts are interactive: widgets, the Confirm button
    assert cli.main(["lab", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


# --- a full disk, and fixes that name where to go on -------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: the runs folder fills up during the run (needs the right to mount, as root in a container)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.deployment
def test_a_full_disk_ends_in_one_line_naming_the_disk_and_the_resume(
    tiny_disk: Path, deploy_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalDeployment(deploy_key=deploy_key) as deployment, deployment.transport() as transport:
        load(transport, 500)
        assert cli.main(["run", "--url", deployment.url, "--confirm", "--runs-dir", str(tiny_disk / "runs")]) == 1
        rows = read_ledger(transport, M001.id)
    err = capsys.readouterr().err.splitlines()
    [run_dir] = (tiny_disk / "runs").iterdir()
    assert len(err) == 2 and "Traceback" not in "\n".join(err), err
    assert err[0].startswith(f"error: The disk holding the run folder is full (No space left on device): {tiny_disk}, ")
    assert err[1].startswith(f"  fix: Free space on {tiny_disk} ") and f"runbook run --url {deployment.url} --run-dir {run_dir} --steps " in err[1]
    assert err[1].endswith(" --confirm") and rows and all(row["status"] != "running" for row in rows)


@pytest.mark.parametrize(("ename", "appended"), [("LeaseLost", False), ("LockHeld", False), ("NewRunFolderNeeded", False),
                                                  ("StatisticsUnconfirmed", False), ("PreconditionFailed", True), ("ValueError", True)])
def test_the_runner_adds_run_the_step_again_only_to_a_fix_that_does_not_say_where_to_go(ename: str, appended: bool, tmp_path: Path) -> None:
    fix = "start a new run folder" if not appended else "correct the thing"
    failed = StepFailed(names.APPLY, 7, ename, f"what happened\n  fix: {fix}", tmp_path / "run" / names.APPLY / "03_apply.ipynb")
    assert failed.hint.startswith(fix) and ("run the step again in this run folder" in failed.hint) is appended
