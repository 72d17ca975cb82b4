"""A step as a notebook opens and closes it: where its run folder is, what it refuses and how that reads in a
notebook, and how long its cells ran (no deployment needed: the ledger call is replaced)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.connection.errors import (
    InvalidDeploymentUrl,
    PreconditionFailed,
    RunbookError,
    StepNotPassed,
)
from helpers.evidence import archive, compression
from helpers.evidence.checkpoint_file import CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE
from helpers.evidence.run_folder import LOCK_FILE, RUN_FILE, bind_migration, create_run
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.migrations.m002_retire_legacy_fields import MIGRATION as M002
from helpers.steps import contract as step
from helpers.steps import names
from helpers.steps.apply import apply_plan, check_preconditions
from helpers.steps.backup import take_backup
from helpers.steps.contract import Step
from helpers.steps.migration import Migration
from helpers.steps.plan import build_plan, example_pairs
from helpers.steps.rollback import check_rollback, execute_rollback, plan_rollback
from helpers.steps.verify import verify

URL = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def no_other_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only this test's run folders: not the checkout's runs/ nor the working directory's."""
    monkeypatch.setattr(step, "CHECKOUT_ROOT", None)
    monkeypatch.chdir(tmp_path)


class NoDeployment:
    """Stands for the deployment where a step must refuse before asking it anything."""

    url = URL
    round_trips = 0

    def function(self, path: str, args: Any = None, **_: Any) -> Any:
        raise AssertionError(f"{path} was called: the step should have refused first")


#: Every step function a notebook hands its migration, called as its notebook calls it.
STEP_FUNCTIONS: dict[str, Callable[[Any, Path, Migration], Any]] = {
    "take_backup": lambda t, d, m: take_backup(t, d, m, show_progress=False),
    "build_plan": lambda t, d, m: build_plan(t, d, m, show_progress=False),
    "example_pairs": lambda t, d, m: example_pairs(d, m, 5),
    "check_preconditions": lambda t, d, m: check_preconditions(t, d, m),
    "apply_plan": lambda t, d, m: apply_plan(t, d, m, confirm=True),
    "verify": lambda t, d, m: verify(t, d, m, show_progress=False),
    "plan_rollback": lambda t, d, m: plan_rollback(t, d, m, "restore"),
    "execute_rollback": lambda t, d, m: execute_rollback(t, d, m, "restore"),
    "check_rollback": lambda t, d, m: check_rollback(t, d, m, "restore"),
}


@pytest.mark.parametrize("call", STEP_FUNCTIONS.values(), ids=STEP_FUNCTIONS.keys())
def test_a_step_function_handed_another_migration_than_its_folder_runs_refuses_first(
    tmp_path: Path, call: Callable[[Any, Path, Migration], Any]
) -> None:
    """A folder bound to 001 given 002's declaration: refused before the deployment is asked or a file written."""
    run_dir = tmp_path / "run"
    bind_migration(run_dir, M001.id)
    with pytest.raises(PreconditionFailed) as refused:
        call(NoDeployment(), run_dir, M002)
    assert str(refused.value).splitlines()[0] == f"The run folder {run_dir} runs migration {M001.id}, not {M002.id}."
    assert refused.value.hint == f"Use a new run folder for {M002.id} (each run folder holds one migration's evidence)."
    assert {path.name for path in run_dir.iterdir()} <= {RUN_FILE, LOCK_FILE}
    with pytest.raises(PreconditionFailed, match="records no migration"):  # and a folder that names none
        call(NoDeployment(), tmp_path / "unbound", M001)


def passed(run_dir: Path, name: str, status: str = "passed") -> None:
    archive.write_step_results(run_dir, name, archive.StepResults(step=name, status=status))


def test_run_dir_dot_dot_from_a_step_folder_is_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JupyterLab starts a run folder's notebook kernel in <run>/<step>/: the step holds the real folder."""
    run_dir = tmp_path / "runs" / "r1"
    passed(run_dir, names.BACKUP)
    (run_dir / names.DRY_RUN).mkdir()
    monkeypatch.chdir(run_dir / names.DRY_RUN)
    opened = Step.open(names.DRY_RUN, URL, "..", M001.id)
    assert opened.run_dir == run_dir.resolve()
    assert f"`{run_dir.resolve()}`" in opened.heading()
    assert (run_dir / "run.json").is_file() and not (run_dir / names.DRY_RUN / "run.json").exists()


def test_a_template_without_run_dir_is_refused_naming_where_the_previous_step_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    older, newer = runs / "older", runs / "newer"
    passed(older, names.BACKUP)
    passed(newer, names.BACKUP)
    passed(runs / "failed", names.BACKUP, status="failed")
    os.utime(older / names.BACKUP / "results.json", (time.time() - 3600,) * 2)
    os.utime(runs / "failed" / names.BACKUP / "results.json", (time.time() + 60,) * 2)  # newest, but failed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PreconditionFailed, match="run_dir is not set") as refused:
        Step.open(names.DRY_RUN, URL, None, M001.id)
    assert str(newer.resolve()) in refused.value.hint and "02_dry_run/02_dry_run.ipynb" in refused.value.hint
    assert refused.value.nothing_written


def test_a_step_opened_in_a_folder_where_the_previous_did_not_run_names_where_it_did(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    passed(runs / "good", names.DRY_RUN)
    empty = runs / "empty"
    empty.mkdir(parents=True)
    with pytest.raises(PreconditionFailed, match="02_dry_run has not run in") as refused:
        Step.open(names.APPLY, URL, empty, M001.id)
    assert f"passed in {(runs / 'good').resolve()}" in refused.value.hint
    assert not (empty / "run.json").exists()  # refused before the folder was bound: nothing written
    rendered = "\n".join(refused.value._render_traceback_())
    assert "Nothing was written" in rendered and "fix:" in rendered and len(refused.value._render_traceback_()) == 3


def test_a_failed_previous_step_sends_the_analyst_to_its_notebook(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    passed(run_dir, names.DRY_RUN, status="failed")
    with pytest.raises(PreconditionFailed, match="did not pass") as refused:
        Step.open(names.APPLY, URL, run_dir, M001.id)
    assert str(run_dir.resolve() / names.DRY_RUN / "02_dry_run.ipynb") in refused.value.hint


def test_a_refused_deployment_url_says_nothing_was_written_and_leaves_no_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidDeploymentUrl) as refused:
        Step.open(names.BACKUP, "not a url", tmp_path / "r", M001.id)
    assert refused.value.nothing_written and not (tmp_path / "r").exists()


def test_an_error_in_a_notebook_is_its_cause_and_its_fix() -> None:
    error = StepNotPassed("Verification failed: references_match")
    lines = error._render_traceback_()
    assert len(lines) == 2 and "Verification failed: references_match" in lines[0] and "fix:" in lines[1]
    assert not any("Nothing was written" in line for line in lines)  # it recorded its results
    assert RunbookError("plain")._render_traceback_() == ["\x1b[1;31mRunbookError\x1b[0m: plain"]


def test_record_writes_how_long_the_cells_ran_and_the_run_operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "r"
    create_run(run_dir, M001.id, "alice")
    monkeypatch.setenv("RUNBOOK_OPERATOR", "someone-else")
    ledger: list[dict] = []
    monkeypatch.setattr(archive, "record_step", lambda transport, where, results, **kw: (
        archive.write_step_results(where, results.step, results), ledger.append(kw)))
    opened = Step.open(names.BACKUP, URL, run_dir, M001.id)
    time.sleep(0.2)
    summary = type("Summary", (), {"model_dump": lambda self, **_: {}, "sha256": "a" * 64, "snapshot_ts": 1})()
    results = opened.record(summary)
    assert results.duration_s is not None and 0.2 <= results.duration_s < 5
    assert archive.read_step_results(run_dir, names.BACKUP).duration_s == results.duration_s
    assert results.started_at is not None and results.started_at <= results.finished_at
    assert ledger == [{"operator": "alice", "started_at": opened.started}]


@pytest.mark.parametrize("name", [CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE])
def test_apply_records_the_hash_of_its_checkpoint_as_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """checkpoint_sha256 is the sha256 of the file's bytes as they lie in the folder (compressed, or an older
    folder's plain lines), as check-archive and `sha256sum` compute it."""
    run_dir = tmp_path / "r"
    create_run(run_dir, M001.id, "alice")
    passed(run_dir, names.DRY_RUN)
    checkpoint = run_dir / "apply" / name
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(compression.encode_record(checkpoint, b'{"complete":true}\n'))
    monkeypatch.setattr(archive, "record_step", lambda transport, where, results, **kw: None)
    summary = type("Summary", (), {"model_dump": lambda self, **_: {}, "status": "passed",
                                   "plan_sha256": "p" * 64, "backup_sha256": "b" * 64})()
    results = Step.open(names.APPLY, URL, run_dir, M001.id).record(summary)
    assert results.outputs == {"checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}


def test_last_passed_ignores_folders_where_the_step_failed(tmp_path: Path) -> None:
    passed(tmp_path / "runs" / "a", names.BACKUP, status="failed")
    assert step.last_passed(names.BACKUP, tmp_path / "runs" / "b") is None


def test_the_run_folders_operator_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply's lock, rollback and the pages name whoever runbook new-run was given, whoever runs the cells."""
    from helpers.evidence.run_folder import create_run, operator_for

    monkeypatch.setenv("RUNBOOK_OPERATOR", "someone-else")
    assert operator_for(tmp_path / "plain") == "someone-else"
    create_run(tmp_path / "made", M001.id, "alice")
    assert operator_for(tmp_path / "made") == "alice"
