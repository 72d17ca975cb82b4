"""Sealing a run made interactively: the step notebooks run in a kernel the analyst drives (here papermill
writes them where JupyterLab would save them), then `runbook seal` captures them as evidence that
`runbook check-archive --url` accepts, and refuses notebooks that cannot be the ones that ran."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import papermill
import pytest

from helpers import archive, cli
from helpers.deployment import read_ledger
from helpers.errors import PreconditionFailed
from helpers.local_deployment import LocalDeployment
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001

from .flow import seed

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
STEPS = ("01_backup_snapshot", "02_dry_run", "03_apply", "04_verify")
SCENES = 60


@pytest.fixture(scope="module")
def deployment(deploy_key: str) -> Iterator[LocalDeployment]:
    with LocalDeployment(deploy_key=deploy_key) as running:
        with running.transport() as transport:
            seed(transport, SCENES)
        yield running


@pytest.fixture(scope="module")
def interactive(deployment: LocalDeployment, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run folder filled by the notebooks as an analyst runs them, and the folder they were saved in."""
    base = tmp_path_factory.mktemp("lab")
    run_dir, saved = base / "runs" / "2026-11-25-alice", base / "saved"
    saved.mkdir()
    for step in STEPS:
        parameters = {"convex_url": deployment.url, "run_dir": str(run_dir), **({"confirm": True} if step == "03_apply" else {})}
        papermill.execute_notebook(str(NOTEBOOKS / f"{step}.ipynb"), str(saved / f"{step}.ipynb"), parameters=parameters,
                                   kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS.parent))
    return run_dir, saved


@pytest.fixture
def copy(interactive: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """This test's own copy of the run folder and of the saved notebooks (same run id, same ledger rows)."""
    run_dir, saved = interactive
    own_run = Path(shutil.copytree(run_dir, tmp_path / "runs" / run_dir.name))
    return own_run, Path(shutil.copytree(saved, tmp_path / "saved"))  # copy2: modification times kept


def test_an_unsealed_interactive_run_cannot_be_checked(interactive: tuple[Path, Path]) -> None:
    run_dir, _ = interactive
    assert "manifest.json is missing" in archive.check_archive(run_dir).problems[0]


def test_a_sealed_interactive_run_passes_check_archive_with_the_ledger(
    copy: tuple[Path, Path], deployment: LocalDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, saved = copy
    assert cli.main(["seal", str(run_dir), "--notebooks", str(saved), "--operator", "alice"]) == 0
    out = capsys.readouterr().out.splitlines()
    sha = archive.sha256_file(run_dir / "manifest.json")
    assert out[-1] == f"Manifest sha256: {sha}"

    for step in STEPS:
        for name in (f"{step}.ipynb", f"{step}.html", f"{step}.report.html"):
            assert (run_dir / step / name).is_file(), name
    manifest = archive.read_manifest(run_dir)
    assert manifest is not None and manifest.operator == "alice" and manifest.deployment_url == deployment.url
    assert manifest.steps == dict.fromkeys(STEPS, "passed")
    index = (run_dir / "index.html").read_text(encoding="utf-8")
    assert all(f'href="{step}/{step}.report.html"' in index for step in STEPS)

    assert cli.main(["check-archive", str(run_dir), "--url", deployment.url]) == 0
    assert "deployment's ledger" in capsys.readouterr().out
    this_run = json.loads((run_dir / "run.json").read_text())["run_id"]
    with deployment.transport() as transport:
        seal = next(r for r in read_ledger(transport, M001.id) if r["runId"] == this_run and r["step"] == archive.SEAL_STEP)
    assert seal["evidence"]["manifest.json"] == sha

    # Edited afterwards and resealed without the ledger: caught.
    results = run_dir / "04_verify" / "results.json"
    results.write_text(results.read_text().replace('"passed"', '"passed" '))
    archive.write_manifest(run_dir, deployment_url=manifest.deployment_url, operator="alice", started_at=manifest.started_at,
                           finished_at=manifest.finished_at, steps=manifest.steps)
    assert cli.main(["check-archive", str(run_dir), "--url", deployment.url]) == 1
    assert "altered: 04_verify/results.json" in capsys.readouterr().out


def test_the_template_notebooks_are_refused(copy: tuple[Path, Path]) -> None:
    run_dir, _ = copy
    with pytest.raises(PreconditionFailed, match="holds no outputs") as refused:
        archive.seal(run_dir, notebooks_dir=NOTEBOOKS)
    assert "File > Save" in refused.value.hint
    assert not (run_dir / "manifest.json").exists()


def test_a_notebook_saved_before_its_step_finished_is_refused(copy: tuple[Path, Path]) -> None:
    run_dir, saved = copy
    results = run_dir / "03_apply" / "results.json"
    os.utime(saved / "03_apply.ipynb", (results.stat().st_mtime - 60,) * 2)
    with pytest.raises(PreconditionFailed, match="saved before its step recorded its results"):
        archive.seal(run_dir, notebooks_dir=saved)


def test_notebooks_of_another_run_folder_are_refused(copy: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, saved = copy
    other = Path(shutil.copytree(run_dir, tmp_path / "runs" / "2026-11-26-bob"))
    with pytest.raises(PreconditionFailed, match="ran with run_dir=.*2026-11-25-alice"):
        archive.seal(other, notebooks_dir=saved)


def test_pages_of_an_untimed_notebook_take_who_and_when_from_the_ledger(copy: tuple[Path, Path], deployment: LocalDeployment) -> None:
    """JupyterLab records no cell timing by default: the step's ledger row says who ran it and when."""
    import nbformat

    from helpers.deployment import record_run

    run_dir, saved = copy
    archive.write_json_atomic(run_dir / "run.json", {"run_id": "20261125T120000Z-c0ffee000001", "migration": M001.id})  # a run of its own
    with deployment.transport() as transport:
        record_run(transport, M001.id, "20261125T120000Z-c0ffee000001", step="01_backup_snapshot", status="passed",
                   operator="carol", startedAt=1_795_600_000_000, finishedAt=1_795_600_042_000)
        notebook = nbformat.read(saved / "01_backup_snapshot.ipynb", as_version=4)
        notebook.metadata.pop("papermill")
        for cell in notebook.cells:
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
        nbformat.write(notebook, saved / "01_backup_snapshot.ipynb")
        archive.seal(run_dir, notebooks_dir=saved, transport=transport)
    page = (run_dir / "01_backup_snapshot" / "01_backup_snapshot.html").read_text(encoding="utf-8")
    assert "operator:</b> carol" in page
    assert "started:</b> 2026-11-25T09:46:40+00:00" in page and "finished:</b> 2026-11-25T09:47:22+00:00" in page
    assert archive.read_manifest(run_dir).operator == "carol"
