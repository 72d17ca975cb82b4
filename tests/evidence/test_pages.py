"""What an auditor reads: step pages headed by who and when, a report without code, a failed step's page that
starts with what failed and what to do, the CLI naming the failing section, and the run's index.html."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from helpers import cli, runner
from helpers.devtools.local_deployment import LocalDeployment
from helpers.evidence import archive, archive_check, compression
from helpers.evidence import pages as report
from helpers.evidence.checkpoint_file import CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE
from helpers.evidence.run_folder import bind_migration
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.runner import StepFailed
from helpers.steps import names
from tests.test_cli import RECORD, _notebook

CHECK_INPUT = """\
from helpers.connection.errors import PreconditionFailed
raise PreconditionFailed("the input holds 3 rows without an id", hint="Give every row an id, then run the step again.")"""


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory, shared_deployment: LocalDeployment) -> tuple[Path, StepFailed]:
    """One run: step 01 passes with a summary, step 02 fails in its section "2. Check the input"."""
    notebooks = tmp_path_factory.mktemp("notebooks")
    _notebook(notebooks, names.BACKUP, RECORD, summary={"documents": 1234, "zip_file": "snapshot_1.zip"})
    source = _notebook(notebooks, names.DRY_RUN, "x = 1")
    nb = nbformat.read(source, as_version=4)
    nb.cells += [nbformat.v4.new_markdown_cell("## 2. Check the input\n\nEvery row needs an id."), nbformat.v4.new_code_cell(CHECK_INPUT)]
    nbformat.write(nb, source)
    with pytest.raises(StepFailed) as failed:
        runner.run_migration(shared_deployment.url, dry_run=True, runs_dir=tmp_path_factory.mktemp("runs"), notebooks_dir=notebooks,
                             operator="alice")
    return failed.value.notebook_path.parent.parent, failed.value


def test_the_cli_names_the_failing_section_and_its_fix_once(failed_run: tuple[Path, StepFailed], shared_deployment: LocalDeployment) -> None:
    URL = shared_deployment.url
    _, failure = failed_run
    message = str(failure)
    assert message.startswith(
        "step 02_dry_run failed in section “2. Check the input”, cell In [5]: PreconditionFailed: the input holds 3 rows without an id\n"
        "  fix: Give every row an id, then run the step again. Then resume the run with "
        f"`runbook run --url {URL} --run-dir {failure.notebook_path.parent.parent.resolve()} --steps 02_dry_run`"
    )
    assert message.count("fix:") == 1 and "02_dry_run.report.html" in message


def test_a_failed_step_page_starts_with_what_failed_and_what_to_do(failed_run: tuple[Path, StepFailed], shared_deployment: LocalDeployment) -> None:
    URL = shared_deployment.url
    run_dir, failure = failed_run
    for page in ("02_dry_run.html", "02_dry_run.report.html"):
        text = (run_dir / names.DRY_RUN / page).read_text(encoding="utf-8")
        box = text.index('<div class="runbook-failure">')
        assert box < text.index("Every row needs an id")
        # The cell's own output is the error's cause and fix (a RunbookError is one screen), not a traceback.
        assert text.rindex("the input holds 3 rows without an id") > text.index("Every row needs an id")
        assert "Traceback" not in text
        assert "in section “2. Check the input”, cell In [5]" in text[box:box + 400]
        assert "What to do:</b> Give every row an id, then run the step again." in text
        # the command the CLI prints, word for word
        assert f"<pre>runbook run --url {URL} --run-dir {run_dir.resolve()} --steps 02_dry_run</pre>" in text[box:]
        assert f"`runbook run --url {URL} --run-dir {run_dir.resolve()} --steps 02_dry_run`" in str(failure)


def test_each_step_page_says_who_and_when_and_has_a_title(failed_run: tuple[Path, StepFailed], shared_deployment: LocalDeployment) -> None:
    run_dir, _ = failed_run
    run_id = archive.read_run_id(run_dir)
    html = (run_dir / names.BACKUP / "01_backup_snapshot.html").read_text(encoding="utf-8")
    assert f"<title>01_backup_snapshot · run {run_id} · alice</title>" in html
    header = html[html.index('<div class="runbook-header">'):]
    header = header[:header.index("</div>")]
    for label in ("operator:</b> alice", f"run id:</b> {run_id}", "started:</b> 20", "finished:</b> 20", "runbook commit:</b> ",
                  f"deployment:</b> {shared_deployment.url}"):
        assert label in header


def test_the_report_page_has_no_code_cells(failed_run: tuple[Path, StepFailed]) -> None:
    run_dir, _ = failed_run
    full = (run_dir / names.BACKUP / "01_backup_snapshot.html").read_text(encoding="utf-8")
    short = (run_dir / names.BACKUP / "01_backup_snapshot.report.html").read_text(encoding="utf-8")
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
    assert names.BACKUP in text and "passed" in text and "documents: 1,234" in text
    assert "steps: 1 of 2 passed (01_backup_snapshot passed in " in text and ", 02_dry_run failed in " in text
    assert "in section “2. Check the input”, cell In [5]: the input holds 3 rows without an id" in text
    for link in ("01_backup_snapshot/01_backup_snapshot.report.html", "01_backup_snapshot/01_backup_snapshot.html",
                 "02_dry_run/02_dry_run.report.html"):
        assert f'href="{link}"' in page and (run_dir / link).is_file()
    results_sha = archive.sha256_file(run_dir / names.BACKUP / "results.json")
    assert results_sha in text
    assert f"runbook check-archive {run_dir.resolve()} --url {shared_deployment.url}" in text
    assert "<script" not in page


def test_the_failed_run_is_sealed_and_tells_its_manifest_hash(failed_run: tuple[Path, StepFailed], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, failure = failed_run
    assert failure.manifest_sha256 == archive.sha256_file(run_dir / "manifest.json")
    assert archive_check.check_archive(run_dir).ok


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
    _notebook(notebooks, names.BACKUP, RECORD)
    source = _notebook(notebooks, names.DRY_RUN)
    nb = nbformat.read(source, as_version=4)
    nb.cells += [nbformat.v4.new_markdown_cell("## 1. Plan"), nbformat.v4.new_code_cell("import tenacity\nraise RuntimeError('plan failed')")]
    nbformat.write(nb, source)
    run_migration = runner.run_migration
    monkeypatch.setattr(cli, "run_migration", lambda *a, **k: run_migration(*a, **k, notebooks_dir=notebooks))
    runs = tmp_path / "runs"

    assert cli.main(["run", "--url", shared_deployment.url, "--dry-run", "--runs-dir", str(runs)]) == 1

    captured = capsys.readouterr()
    assert captured.err.startswith("error: step 02_dry_run failed in section “1. Plan”, cell In [4]: RuntimeError: plan failed")
    assert "import tenacity" not in captured.err
    run_dir = next(runs.iterdir())
    assert captured.out.splitlines()[-1] == f"Manifest sha256: {archive.sha256_file(run_dir / 'manifest.json')}"


class _Loads(HTMLParser):
    """What a browser would fetch to render a page: script, style, image and frame sources."""

    FETCHED = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src", "embed": "src", "object": "data"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = self.FETCHED.get(tag)
        self.urls += [value or "" for name, value in attrs if name == wanted]


def test_every_page_of_a_sealed_folder_loads_nothing_from_the_network(failed_run: tuple[Path, StepFailed]) -> None:
    run_dir, _ = failed_run
    pages = sorted(run_dir.rglob("*.html"))
    assert len(pages) == 5  # index.html and two pages for each of the two steps
    for page in pages:
        text = page.read_text(encoding="utf-8")
        parser = _Loads()
        parser.feed(text)
        remote = [url for url in parser.urls if re.match(r"(https?:)?//", url)]
        assert remote == [], (page, remote)
        assert not re.search(r"""import\(\s*["']https?:""", text), page  # nor a module a script would import


def _results(run_dir: Path, step: str, status: str, summary: dict) -> None:
    archive.write_step_results(run_dir, step, archive.StepResults(step=step, status=status, summary=summary))  # type: ignore[arg-type]


def test_the_verdicts_lead_with_what_passed_failed_migrated_and_was_blocked(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "plan").mkdir(parents=True)
    bind_migration(run_dir, M001.id)
    archive.write_json_atomic(run_dir / "plan" / "plan.json", {"problems": [
        {"code": "duplicate_s3_key", "count": 2, "severity": "blocking"}, {"code": "empty_string", "count": 4, "severity": "flagged"},
        {"code": "wrong_type", "count": 3, "severity": "blocking"}]})
    _results(run_dir, names.APPLY, "passed", {"migrated": {"scenes": 66, "videoSessions": 5}, "lease_ms": 120000,
                                            "outcomes": {"scenes": {"applied": 60, "conflict": 6}, "videoSessions": {"applied": 5}}})
    _results(run_dir, names.VERIFY, "failed", {"checks": [{"name": "session_totals", "passed": True},
                                                         {"name": "tracking_complete", "passed": False}]})
    verdicts = report.run_verdicts(run_dir, {names.DRY_RUN: "passed", names.APPLY: "passed", names.VERIFY: "failed", names.ROLLBACK: "not run"},
                                  M001)
    assert [(v.label, v.text, v.ok) for v in verdicts] == [
        ("steps", "2 of 3 passed (02_dry_run passed, 03_apply passed, 04_verify failed)", False),
        ("verify", "1 of 2 checks passed; failed: tracking_complete", False),
        ("migrated", "scenes 66, sessions 5", None),
        ("blocked documents (not migrated), per problem", "5 (duplicate_s3_key 2, wrong_type 3)", None),
        ("apply outcomes", "65 applied, 6 conflict", False),
    ]
    assert report.step_finding(run_dir, names.APPLY) == (
        "outcomes: scenes: 60 applied, 6 conflict; videoSessions: 5 applied; references created: 0")
    assert "lease" not in report.step_finding(run_dir, names.APPLY)


@pytest.mark.parametrize("name", [CHECKPOINT_FILE, UNCOMPRESSED_CHECKPOINT_FILE])
def test_a_failed_apply_page_says_how_much_was_applied_and_how_to_resume(tmp_path: Path, name: str) -> None:
    URL = "http://127.0.0.1:3210"  # only written into the page: nothing is called
    run_dir = tmp_path / "run"
    (run_dir / "apply").mkdir(parents=True)
    (run_dir / names.APPLY).mkdir()
    checkpoint = run_dir / "apply" / name
    entries = (b'{"start":0,"end":2,"results":[{"id":"a","table":"scenes","outcome":"applied"},{"id":"b","table":"scenes","outcome":"error"}]}\n',
               b'{"start":2,"end":3,"results":[{"id":"c","table":"scenes","outcome":"applied"}]}\n',
               b'{"start":3,"end":4,"results":[{"id":"d","table":"scenes","outcome":"applied"}]}\n')
    stored = b"".join(compression.encode_record(checkpoint, entry) for entry in entries)
    checkpoint.write_bytes(stored[:-7])  # the last entry torn
    archive.write_json_atomic(run_dir / names.APPLY / "parameters.json", {"convex_url": URL, "run_dir": str(run_dir), "confirm": True,
                                                                       "batch_size": 50})
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("apply()", execution_count=3)
    cell.outputs = [nbformat.v4.new_output("error", ename="LeaseLost", evalue="lost the lease", traceback=[])]
    notebook.cells = [nbformat.v4.new_markdown_cell("## 3. Apply"), cell]
    nbformat.write(notebook, run_dir / names.APPLY / "03_apply.ipynb")
    context = report.PageContext(run_id="r", operator="alice", commit="c", deployment=URL, planned=(names.APPLY, names.VERIFY))
    report.render_step(run_dir / names.APPLY / "03_apply.ipynb", context)
    text = (run_dir / names.APPLY / "03_apply.report.html").read_text(encoding="utf-8")
    box = text[text.index('<div class="runbook-failure">'):]
    assert "in section “3. Apply”, cell In [3]: <b>LeaseLost</b>" in box
    assert "Applied before it stopped</b> (apply's checkpoint): 2 applied, 1 error." in box
    assert (f"<pre>runbook run --url {URL} --run-dir {run_dir.resolve()} --steps 03_apply,04_verify "
            "-p 03_apply.batch_size=50 --confirm</pre>") in box
    assert checkpoint.read_bytes() == stored[:-7]  # read, never trimmed
