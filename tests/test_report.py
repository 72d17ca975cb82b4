"""What an auditor reads: step pages headed by who and when, a report without code, a failed step's page that
starts with what failed and what to do, the CLI naming the failing section, and the run's index.html."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from helpers import archive, cli, report, runner
from helpers.runner import StepFailed

from helpers.local_deployment import LocalDeployment

from .test_cli import RECORD, _notebook

CHECK_INPUT = """\
from helpers.errors import PreconditionFailed
raise PreconditionFailed("the input holds 3 rows without an id", hint="Give every row an id, then run the step again.")"""


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory, shared_deployment: LocalDeployment) -> tuple[Path, StepFailed]:
    """One run: step 01 passes with a summary, step 02 fails in its section "2. Check the input"."""
    notebooks = tmp_path_factory.mktemp("notebooks")
    _notebook(notebooks, "01_backup_snapshot", RECORD, summary={"documents": 1234, "zip_file": "snapshot_1.zip"})
    source = _notebook(notebooks, "02_dry_run", "x = 1")
    nb = nbformat.read(source, as_version=4)
    nb.cells += [nbformat.v4.new_markdown_cell("## 2. Check the input\n\nEvery row needs an id."), nbformat.v4.new_code_cell(CHECK_INPUT)]
    nbformat.write(nb, source)
    with pytest.raises(StepFailed) as failed:
        runner.run_migration(shared_deployment.url, dry_run=True, runs_dir=tmp_path_factory.mktemp("runs"), notebooks_dir=notebooks,
                             operator="alice")
    return failed.value.notebook_path.parent.parent, failed.value


def test_the_cli_names_the_failing_section_and_its_fix_once(failed_run: tuple[Path, StepFailed]) -> None:
    _, failure = failed_run
    message = str(failure)
    assert message.startswith(
        "step 02_dry_run failed in section “2. Check the input” (cell 5): PreconditionFailed: the input holds 3 rows without an id\n"
        "  fix: Give every row an id, then run the step again. Then run the step again in this run folder"
    )
    assert message.count("fix:") == 1 and "02_dry_run.report.html" in message


def test_a_failed_step_page_starts_with_what_failed_and_what_to_do(failed_run: tuple[Path, StepFailed]) -> None:
    run_dir, _ = failed_run
    for page in ("02_dry_run.html", "02_dry_run.report.html"):
        text = (run_dir / "02_dry_run" / page).read_text(encoding="utf-8")
        box = text.index('<div class="runbook-failure">')
        assert box < text.index("Traceback") and box < text.index("Every row needs an id")
        assert "in section “2. Check the input”, cell In [5]" in text[box:box + 400]
        assert "What to do:</b> Give every row an id, then run the step again." in text


def test_each_step_page_says_who_and_when_and_has_a_title(failed_run: tuple[Path, StepFailed], shared_deployment: LocalDeployment) -> None:
    run_dir, _ = failed_run
    run_id = archive.read_run_id(run_dir)
    html = (run_dir / "01_backup_snapshot" / "01_backup_snapshot.html").read_text(encoding="utf-8")
    assert f"<title>01_backup_snapshot · run {run_id} · alice</title>" in html
    header = html[html.index('<div class="runbook-header">'):]
    header = header[:header.index("</div>")]
    for label in ("operator:</b> alice", f"run id:</b> {run_id}", "started:</b> 20", "finished:</b> 20", "runbook commit:</b> ",
                  f"deployment:</b> {shared_deployment.url}"):
        assert label in header


def test_the_report_page_has_no_code_cells(failed_run: tuple[Path, StepFailed]) -> None:
    run_dir, _ = failed_run
    full = (run_dir / "01_backup_snapshot" / "01_backup_snapshot.html").read_text(encoding="utf-8")
    short = (run_dir / "01_backup_snapshot" / "01_backup_snapshot.report.html").read_text(encoding="utf-8")
    code = "archive.write_step_results(Path(run_dir), STEP"
    assert code in html_text(full) and code not in html_text(short)
    assert '<div class="runbook-header">' in short


def html_text(page: str, between_tags: str = "") -> str:
    """The page's text as a reader sees it (syntax highlighting splits code into spans; table cells need a space)."""
    import html

    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", between_tags, page)))


def test_the_index_names_who_when_commit_deployment_and_each_step(failed_run: tuple[Path, StepFailed], shared_deployment: LocalDeployment) -> None:
    run_dir, _ = failed_run
    page = (run_dir / "index.html").read_text(encoding="utf-8")
    text = html_text(page, " ")
    manifest = archive.read_manifest(run_dir)
    assert manifest is not None and "index.html" in manifest.files  # covered by the manifest, so it cannot hold its hash
    for fact in ("operator alice", f"started {manifest.started_at}", f"finished {manifest.finished_at}",
                 f"runbook commit {manifest.runbook['commit']}", f"deployment {shared_deployment.url}", f"run id {manifest.run_id}"):
        assert fact in text
    assert "01_backup_snapshot" in text and "passed" in text and "documents: 1,234" in text
    assert "PreconditionFailed : the input holds 3 rows without an id" in text and "failed" in text
    for link in ("01_backup_snapshot/01_backup_snapshot.report.html", "01_backup_snapshot/01_backup_snapshot.html",
                 "02_dry_run/02_dry_run.report.html"):
        assert f'href="{link}"' in page and (run_dir / link).is_file()
    results_sha = archive.sha256_file(run_dir / "01_backup_snapshot" / "results.json")
    assert results_sha in text
    assert f"runbook check-archive path/to/{run_dir.name} --url {shared_deployment.url}" in text
    assert "<script" not in page


def test_the_failed_run_is_sealed_and_tells_its_manifest_hash(failed_run: tuple[Path, StepFailed], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, failure = failed_run
    assert failure.manifest_sha256 == archive.sha256_file(run_dir / "manifest.json")
    assert archive.check_archive(run_dir).ok


def test_section_of_takes_the_nearest_level_two_heading() -> None:
    cells = [
        nbformat.v4.new_markdown_cell("# Title\n## 1. First"),
        nbformat.v4.new_code_cell("a = 1"),
        nbformat.v4.new_markdown_cell("Text only"),
        nbformat.v4.new_code_cell("b = 2"),
        nbformat.v4.new_markdown_cell("## 2. Second\n### detail"),
        nbformat.v4.new_code_cell("c = 3"),
    ]
    assert [report.section_of(cells, i) for i in (0, 1, 3, 5)] == [None, "1. First", "1. First", "2. Second"]


def test_the_fix_is_split_from_the_message() -> None:
    assert report.split_fix("It broke.\n  fix: Do this.") == ("It broke.", "Do this.")
    assert report.split_fix("It broke.") == ("It broke.", "")


def test_cli_run_prints_the_failing_section_and_the_manifest_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shared_deployment: LocalDeployment
) -> None:
    notebooks = tmp_path / "notebooks"
    _notebook(notebooks, "01_backup_snapshot", RECORD)
    source = _notebook(notebooks, "02_dry_run")
    nb = nbformat.read(source, as_version=4)
    nb.cells += [nbformat.v4.new_markdown_cell("## 1. Plan"), nbformat.v4.new_code_cell("import tenacity\nraise RuntimeError('plan failed')")]
    nbformat.write(nb, source)
    run_migration = runner.run_migration
    monkeypatch.setattr(cli, "run_migration", lambda *a, **k: run_migration(*a, **k, notebooks_dir=notebooks))
    runs = tmp_path / "runs"

    assert cli.main(["run", "--url", shared_deployment.url, "--dry-run", "--runs-dir", str(runs)]) == 1

    captured = capsys.readouterr()
    assert captured.err.startswith("error: step 02_dry_run failed in section “1. Plan” (cell 4): RuntimeError: plan failed")
    assert "import tenacity" not in captured.err
    run_dir = next(runs.iterdir())
    assert captured.out.splitlines()[-1] == f"Manifest sha256: {archive.sha256_file(run_dir / 'manifest.json')}"
