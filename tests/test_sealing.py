"""Sealing a run made interactively: the step notebooks run in a kernel the analyst drives (here papermill
writes them where JupyterLab would save them), then `runbook seal` captures them as evidence that
`runbook check-archive --url` accepts, and refuses notebooks that cannot be the ones that ran."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import papermill
import pytest

from helpers import cli, sealing
from helpers.connection.calls import read_ledger
from helpers.connection.errors import PreconditionFailed
from helpers.devtools.local_deployment import LocalDeployment
from helpers.evidence import archive, archive_check
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.steps import names
from tests.flow import seed

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
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
    for step in names.FORWARD:
        parameters = {"convex_url": deployment.url, "run_dir": str(run_dir), **({"confirm": True} if step == names.APPLY else {})}
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
    assert "manifest.json is missing" in archive_check.check_archive(run_dir).problems[0]


@pytest.fixture(scope="module")
def sealed(interactive: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The interactive run sealed once with the CLI, and what the CLI printed: the ledger keeps a run's first
    seal, so every test that needs the sealed run works on a copy of this one."""
    run_dir, saved = interactive
    own_run = Path(shutil.copytree(run_dir, tmp_path_factory.mktemp("sealed") / run_dir.name))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["seal", str(own_run), "--notebooks", str(saved), "--operator", "alice"]) == 0
    return own_run, printed.getvalue().splitlines()


def _own_copy(folder: Path, tmp_path: Path, name: str = "mine") -> Path:
    return Path(shutil.copytree(folder, tmp_path / name / folder.name))


def test_a_sealed_interactive_run_passes_check_archive_with_the_ledger(
    sealed: tuple[Path, list[str]], deployment: LocalDeployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, out = sealed
    sha = archive.sha256_file(run_dir / "manifest.json")
    assert out[-1] == f"Manifest sha256: {sha}"
    run_dir = _own_copy(run_dir, tmp_path)

    for step in names.FORWARD:
        for name in (f"{step}.ipynb", f"{step}.html", f"{step}.report.html"):
            assert (run_dir / step / name).is_file(), name
    manifest = archive.read_manifest(run_dir)
    assert manifest is not None and manifest.operator == "alice" and manifest.deployment_url == deployment.url
    assert manifest.steps == dict.fromkeys(names.FORWARD, "passed")
    index = (run_dir / "index.html").read_text(encoding="utf-8")
    assert all(f'href="{step}/{step}.report.html"' in index for step in names.FORWARD)

    assert cli.main(["check-archive", str(run_dir), "--url", deployment.url]) == 0
    assert "deployment's ledger" in capsys.readouterr().out
    this_run = json.loads((run_dir / "run.json").read_text())["run_id"]
    with deployment.transport() as transport:
        seal = next(r for r in read_ledger(transport, M001.id) if r["runId"] == this_run and r["step"] == names.SEAL)
    assert seal["evidence"]["manifest.json"] == sha

    # Edited afterwards and resealed without the ledger: caught.
    results = run_dir / names.VERIFY / "results.json"
    results.write_text(results.read_text().replace('"passed"', '"passed" '))
    archive.write_manifest(run_dir, archive.RunFacts(manifest.deployment_url, "alice", manifest.started_at, manifest.finished_at,
                                                     manifest.steps))
    assert cli.main(["check-archive", str(run_dir), "--url", deployment.url]) == 1
    assert "altered: 04_verify/results.json" in capsys.readouterr().out


def test_sealing_an_unchanged_sealed_folder_again_writes_nothing_and_says_so(
    sealed: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _own_copy(sealed[0], tmp_path)
    before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")}
    assert cli.main(["seal", str(run_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"Already sealed: {run_dir} is unchanged since its seal") and "Nothing was written" in out[0]
    assert out[-1] == f"Manifest sha256: {archive.sha256_file(run_dir / 'manifest.json')}"
    assert {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")} == before


def _forge(folder: Path) -> None:
    """What a forger does to a copy: one more reference created in apply's results, and verify's record of
    apply's results hash made to agree."""
    path = folder / names.APPLY / "results.json"
    results = json.loads(path.read_text())
    results["summary"]["references_created"] += 1
    archive.write_json_atomic(path, results)
    verify = folder / names.VERIFY / "results.json"
    recorded = json.loads(verify.read_text())
    recorded["inputs"]["apply_results_sha256"] = archive.sha256_file(path)
    archive.write_json_atomic(verify, recorded)


def test_a_forged_copy_cannot_be_resealed_and_never_spoils_the_original(
    sealed: tuple[Path, list[str]], deployment: LocalDeployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = sealed[0]
    forged = _own_copy(original, tmp_path, "forger")
    _forge(forged)
    manifest_before = (forged / "manifest.json").read_bytes()

    assert cli.main(["seal", str(forged), "--url", deployment.url]) == 2
    refused = capsys.readouterr().err
    assert "is sealed in the deployment's ledger already" in refused and "no step of it ran since" in refused
    assert "altered: 03_apply/results.json" in refused and "altered: 04_verify/results.json" in refused
    assert "Nothing was written" in refused and (forged / "manifest.json").read_bytes() == manifest_before

    # The forger reseals the copy with the project's own manifest writer, then asks the CLI again: refused too.
    manifest = archive.read_manifest(forged)
    assert manifest is not None
    archive.write_manifest(forged, archive.RunFacts(manifest.deployment_url, manifest.operator, manifest.started_at,
                                                    manifest.finished_at, manifest.steps))
    assert cli.main(["seal", str(forged), "--url", deployment.url]) == 2
    assert "altered: manifest.json" in capsys.readouterr().err

    assert cli.main(["check-archive", str(forged), "--url", deployment.url]) == 1
    out = capsys.readouterr().out
    assert "altered: 03_apply/results.json (the deployment's ledger holds sha256" in out and "from step 03_apply" in out
    figure = json.loads((forged / names.APPLY / "results.json").read_text())["summary"]["references_created"]
    assert f"step 03_apply: figure references_created is {figure:,} in the folder, {figure - 1:,} in its ledger row" in out
    assert cli.main(["check-archive", str(original), "--url", deployment.url]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {original} matches")


def _new_run(folder: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the unsealed interactive folder that is a run of its own (no ledger rows yet)."""
    run_dir = _own_copy(folder, tmp_path, name)
    archive.write_json_atomic(run_dir / "run.json", {**json.loads((run_dir / "run.json").read_text()),
                                                      "run_id": f"20261125T120000Z-{os.urandom(6).hex()}"})
    return run_dir


def test_a_failed_step_is_sealed_with_its_page_and_listed_in_the_index(
    copy: tuple[Path, Path], deployment: LocalDeployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import nbformat

    run_dir, saved = copy
    run_dir = _new_run(run_dir, tmp_path, "failed")
    shutil.rmtree(run_dir / names.VERIFY)
    (saved / "04_verify.ipynb").unlink()
    (run_dir / names.APPLY / "results.json").unlink()  # 03 raised before its last cell recorded anything
    notebook = nbformat.read(saved / "03_apply.ipynb", as_version=4)
    last = [cell for cell in notebook.cells if cell.cell_type == "code"][-1]
    last.outputs = [nbformat.v4.new_output("error", ename="LeaseLost", evalue="the lease ran out\n  fix: Start a new run folder.",
                                           traceback=["LeaseLost: the lease ran out"])]
    nbformat.write(notebook, saved / "03_apply.ipynb")

    assert cli.main(["seal", str(run_dir), "--notebooks", str(saved), "--url", deployment.url]) == 0
    capsys.readouterr()
    assert archive.read_manifest(run_dir).steps[names.APPLY] == "failed"  # type: ignore[union-attr]
    index = (run_dir / "index.html").read_text(encoding="utf-8")
    assert 'href="03_apply/03_apply.report.html"' in index and "LeaseLost" in index
    page = (run_dir / names.APPLY / "03_apply.report.html").read_text(encoding="utf-8")
    assert '<div class="runbook-failure">' in page and "Start a new run folder." in page
    with deployment.transport() as transport:
        rows = archive.run_rows(read_ledger(transport, M001.id), archive.read_run_id(run_dir))
    assert [(r["step"], r["status"]) for r in rows] == [(names.APPLY, "failed"), (names.SEAL, "sealed")]
    assert rows[0]["evidence"] == {"03_apply/03_apply.ipynb": archive.sha256_file(run_dir / names.APPLY / "03_apply.ipynb")}
    assert cli.main(["check-archive", str(run_dir), "--url", deployment.url]) == 0, capsys.readouterr().out


def test_a_seal_made_while_the_deployment_was_down_is_recorded_later(
    copy: tuple[Path, Path], deployment: LocalDeployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, saved = copy
    run_dir = _new_run(run_dir, tmp_path, "offline")
    down = "http://127.0.0.1:9"  # nothing listens there
    assert cli.main(["seal", str(run_dir), "--notebooks", str(saved), "--url", down]) == 1
    out = capsys.readouterr().out.splitlines()
    sha = archive.sha256_file(run_dir / "manifest.json")
    assert f"runbook seal {run_dir} --url URL" in out[-2] and "Sealed locally only" in out[-2]
    assert out[-1].startswith(f"Manifest sha256: {sha} (NOT recorded in the deployment's ledger: the deployment did not answer")
    assert "ledger: the deployment has no record of run" in "\n".join(archive_check.check_archive(run_dir, deployment.transport()).problems)

    assert cli.main(["seal", str(run_dir), "--url", deployment.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"Recorded: {run_dir} is unchanged since it was sealed") and out[-1] == f"Manifest sha256: {sha}"
    assert cli.main(["check-archive", str(run_dir), "--url", deployment.url]) == 0, capsys.readouterr().out


def test_the_template_notebooks_are_refused(copy: tuple[Path, Path]) -> None:
    run_dir, _ = copy
    with pytest.raises(PreconditionFailed, match="holds no outputs") as refused:
        sealing.seal(run_dir, notebooks_dir=NOTEBOOKS)
    assert "File > Save" in refused.value.hint
    assert not (run_dir / "manifest.json").exists()


def test_a_notebook_saved_before_its_step_finished_is_refused(copy: tuple[Path, Path]) -> None:
    run_dir, saved = copy
    results = run_dir / names.APPLY / "results.json"
    os.utime(saved / "03_apply.ipynb", (results.stat().st_mtime - 60,) * 2)
    with pytest.raises(PreconditionFailed, match="saved before its step recorded its results"):
        sealing.seal(run_dir, notebooks_dir=saved)


def test_notebooks_of_another_run_folder_are_refused(copy: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, saved = copy
    other = Path(shutil.copytree(run_dir, tmp_path / "runs" / "2026-11-26-bob"))
    with pytest.raises(PreconditionFailed, match="ran with run_dir=.*2026-11-25-alice"):
        sealing.seal(other, notebooks_dir=saved)


def test_pages_of_an_untimed_notebook_take_who_and_when_from_the_ledger(copy: tuple[Path, Path], deployment: LocalDeployment) -> None:
    """JupyterLab records no cell timing by default: the step's ledger row says who ran it and when."""
    import nbformat

    from helpers.connection.calls import record_run

    run_dir, saved = copy
    archive.write_json_atomic(run_dir / "run.json", {"run_id": "20261125T120000Z-c0ffee000001", "migration": M001.id})  # a run of its own
    with deployment.transport() as transport:
        record_run(transport, M001.id, "20261125T120000Z-c0ffee000001", step=names.BACKUP, status="passed",
                   operator="carol", startedAt=1_795_600_000_000, finishedAt=1_795_600_042_000)
        notebook = nbformat.read(saved / "01_backup_snapshot.ipynb", as_version=4)
        notebook.metadata.pop("papermill")
        for cell in notebook.cells:
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
        nbformat.write(notebook, saved / "01_backup_snapshot.ipynb")
        sealing.seal(run_dir, notebooks_dir=saved, transport=transport)
    page = (run_dir / names.BACKUP / "01_backup_snapshot.html").read_text(encoding="utf-8")
    assert "operator:</b> carol" in page
    assert "started:</b> 2026-11-25T09:46:40+00:00" in page and "finished:</b> 2026-11-25T09:47:22+00:00" in page
    assert archive.read_manifest(run_dir).operator == "carol"


def test_notebooks_prepared_in_the_run_folder_are_sealed_in_place(
    copy: tuple[Path, Path], deployment: LocalDeployment, tmp_path: Path
) -> None:
    """`runbook new-run` puts each step's notebook at <run>/<step>/<step>.ipynb with run_dir relative to it."""
    import nbformat

    run_dir, saved = copy
    run_dir = _new_run(run_dir, tmp_path, "in-place")
    for step in names.FORWARD:
        notebook = nbformat.read(saved / f"{step}.ipynb", as_version=4)
        for cell in notebook.cells:
            if "injected-parameters" in cell.metadata.get("tags", []):
                cell.source = "\n".join('run_dir = ".."' if line.startswith("run_dir") else line for line in cell.source.splitlines())
        nbformat.write(notebook, run_dir / step / f"{step}.ipynb")
    sealed = sealing.seal(run_dir, convex_url=deployment.url)
    assert sealed.not_recorded is None and sealed.action == "sealed"
    assert archive.read_manifest(run_dir).steps == dict.fromkeys(names.FORWARD, "passed")  # type: ignore[union-attr]
    assert all((run_dir / step / f"{step}.report.html").is_file() for step in names.FORWARD)
