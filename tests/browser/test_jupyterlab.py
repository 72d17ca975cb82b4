"""The analyst's and the auditor's view in a real browser: JupyterLab driven by Playwright in Debian's chromium.

Drives the interactive flow as an analyst does: `runbook new-run` against a local deployment with sample data,
`runbook lab` on the run folder, Run All in 01-04 (clicking Confirm in 03), save, `runbook seal`; then reads the
sealed pages as an auditor does, for the passing run and for a verify that fails. It also opens the pages of a
headless run folder. Screenshots are saved under the test's tmp folder. Run with `make test-browser` (not part
of `make test`).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nbformat
import pytest

from helpers.devtools.local_deployment import LocalDeployment
from helpers.devtools.sample_data import load
from helpers.evidence.archive import read_step_results
from helpers.runner import run_migration
from helpers.steps import names
from helpers.steps.plan import iter_plan_lines

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api", reason="make test-browser installs the [browser] extra")

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCENES = 200
#: Generous upper bounds for waiting on the page (milliseconds); a pass is usually far quicker.
CELL_MS = 120_000
LAB_START_S = 90
SAVE_S = 30
#: The notebook in view (the workspace may keep other notebooks open, hidden in their tabs).
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"
#: What a sealed page must never hold: a widget's saved placeholder, a bar frozen at its start, a widget error.
WIDGET_LEFTOVERS = ("VBox(children", "HBox(children", " 0%|", "model not found", "Error displaying widget", "application/vnd.jupyter.widget-view")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def runbook(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `runbook` command as an analyst types it (this checkout's)."""
    return subprocess.run([sys.executable, "-m", "helpers.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def seeded(deploy_key: str) -> Iterator[LocalDeployment]:
    with LocalDeployment(deploy_key=deploy_key) as deployment, deployment.transport() as transport:
        load(transport, SCENES)
        yield deployment


@pytest.fixture(scope="module")
def run_folder(seeded: LocalDeployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    made = runbook("new-run", "--url", seeded.url, "--runs-dir", str(tmp_path_factory.mktemp("runs")), "--operator", "alice")
    assert made.returncode == 0, made.stderr
    *_, command, folder = made.stdout.splitlines()
    assert command == f"runbook lab {folder}"
    return Path(folder)


@pytest.fixture(scope="module")
def lab(run_folder: Path, tmp_path_factory: pytest.TempPathFactory, deploy_key: str) -> Iterator[str]:
    """`runbook lab` on the run folder, with a token; its kernels are interactive (no RUNBOOK_HEADLESS)."""
    home = tmp_path_factory.mktemp("lab")
    token = secrets.token_hex(16)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RUNBOOK_HEADLESS"}
    env.update(CONVEX_DEPLOY_KEY=deploy_key, JUPYTERLAB_SETTINGS_DIR=str(home / ".settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / ".workspaces"), PYTHONPATH=str(REPO))
    news = home / ".settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no news toast over the page, no request out
    log = (home / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "helpers.cli", "lab", str(run_folder), "--no-browser", f"--port={port}",
         f"--IdentityProvider.token={token}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + LAB_START_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{base}/api/status", params={"token": token}, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        server.terminate()
        pytest.fail(f"runbook lab did not start JupyterLab: {(home / 'lab.log').read_text()[-2000:]}")
    try:
        yield f"{base}/lab/tree/{{}}?reset&token={token}"  # reset: only that notebook open, not the last session's
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    lab_log = (home / "lab.log").read_text()
    assert "Fail to get yarn configuration" not in lab_log and "build status without nodejs" not in lab_log, (
        "JupyterLab could not run its yarn.js: is .venv/package.json missing? (runbook lab and make lab write it)"
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test-browser` installs it (apt-get install chromium)")
    with playwright.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000},
        )
        yield context
        context.close()


def open_notebook(context: object, url: str) -> object:
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector(f"{NOTEBOOK} .jp-Cell", timeout=CELL_MS)
    page.wait_for_function("() => document.querySelector('#jp-main-statusbar')?.innerText.includes('Idle')", timeout=CELL_MS)
    return page


def run_all(page: object) -> None:
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")


def wait_until_done(page: object) -> None:
    """Every code cell has an execution count (none pending [*] or never run [ ])."""
    page.wait_for_function(
        f"""() => [...document.querySelectorAll('{NOTEBOOK} .jp-CodeCell .jp-InputPrompt')]
                 .every(p => /\\[\\d+\\]/.test(p.textContent))""",
        timeout=CELL_MS,
    )


def save(page: object, path: Path) -> None:
    """File > Save, then wait until the file holds the outputs (JupyterLab saves asynchronously)."""
    before = path.stat().st_mtime
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + SAVE_S
    while time.monotonic() < deadline:
        if path.stat().st_mtime > before and all(c.get("execution_count") for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"):
            return
        time.sleep(0.3)
    pytest.fail(f"JupyterLab did not save {path}")


def assert_no_error_output(page: object) -> None:
    text = page.inner_text(NOTEBOOK)
    assert "Error displaying widget" not in text
    assert "Traceback" not in text and not page.query_selector(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] :text('Error')")


def run_step_in_lab(browser: object, lab: str, run_folder: Path, step: str, shots: Path) -> object:
    page = open_notebook(browser, lab.format(f"{step}/{step}.ipynb"))
    run_all(page)
    if step == names.APPLY:
        button = page.locator("button:has-text('Confirm apply')")
        button.wait_for(timeout=CELL_MS)
        button.scroll_into_view_if_needed()
        gate = page.inner_text(NOTEBOOK)
        plan_sha = read_step_results(run_folder, names.DRY_RUN).outputs["plan_sha256"]
        assert plan_sha in gate and "About to change" in gate
        assert not (run_folder / names.APPLY / "results.json").exists()  # Run All waits at the gate
        page.screenshot(path=str(shots / "03_apply-gate.png"))
        button.click()
    wait_until_done(page)
    page.screenshot(path=str(shots / f"{step}-lab.png"), full_page=True)
    return page


def sealed_page_text(context: object, page_file: Path, shots: Path) -> str:
    page = context.new_page()
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(shots / f"{page_file.name}.png"), full_page=True)
    text = page.inner_text("body")
    page.close()
    return text


def test_new_run_then_run_all_in_lab_then_seal(
    seeded: LocalDeployment, run_folder: Path, lab: str, browser: object, tmp_path: Path
) -> None:
    for step in names.FORWARD:
        page = run_step_in_lab(browser, lab, run_folder, step, tmp_path)
        assert_no_error_output(page)
        text = page.inner_text(NOTEBOOK)
        if step == names.DRY_RUN:  # the live browser renders, opens on a change, and filters
            picker = page.locator(".widget-dropdown:has(label:text-is('document')) select")
            assert "migrate" in picker.input_value() or "fill_missing" in picker.input_value()
            page.locator(".widget-dropdown:has(label:text-is('action')) select").select_option("problem")
            page.wait_for_function("() => [...document.querySelectorAll('.widget-output table')].some(t => t.innerText.includes('(none)'))")
        if step == names.APPLY:
            assert "Confirmed with the button" in text and "Apply passed" in text
        assert read_step_results(run_folder, step).passed
        save(page, run_folder / step / f"{step}.ipynb")
        page.close()

    sealed = runbook("seal", str(run_folder))
    assert sealed.returncode == 0, sealed.stderr
    for step in names.FORWARD:
        for page_file in (run_folder / step / f"{step}.html", run_folder / step / f"{step}.report.html"):
            text = sealed_page_text(browser, page_file, tmp_path)
            assert not [leftover for leftover in WIDGET_LEFTOVERS if leftover in text], page_file
            assert re.search(r"duration: [\d.]+ s", text), f"{page_file}: no duration"
            assert "operator: alice" in text
        notebook_text = (run_folder / step / f"{step}.ipynb").read_text()
        assert "widget-view" not in notebook_text and "VBox(children" not in notebook_text  # reopened later: no model to miss
    pages = {step: sealed_page_text(browser, run_folder / step / f"{step}.html", tmp_path) for step in names.FORWARD}
    # Every progress display left its final line: what, how many, how long.
    assert re.search(r"apply: [\d,]+/[\d,]+ doc \(100%\) in \d\d:\d\d", pages[names.APPLY])
    assert re.search(r"verify \w+: [\d,]+/[\d,]+ doc \(100%\)", pages[names.VERIFY])
    assert "from legacy field(s)" in (run_folder / names.DRY_RUN / "02_dry_run.html").read_text()  # the browser's static copy
    assert "Confirmed with the button" in pages[names.APPLY]
    index = browser.new_page()
    index.goto((run_folder / "index.html").as_uri())
    for step in names.FORWARD:
        row = index.locator(f"tr:has-text('{step}')").first.inner_text()
        assert "passed" in row and re.search(r"\d+\.\d s", row), row
    assert "alice" in index.inner_text("body")
    index.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    index.close()

    # The application deletes a migrated scene: 04 run again fails, on one screen, and its sealed page says so.
    scene = next(line["id"] for line in iter_plan_lines(run_folder) if line["table"] == "scenes" and line["action"] == "migrate")
    with seeded.transport() as transport:
        transport.function("sampleData:deleteBatch", {"ids": [scene]})
    page = run_step_in_lab(browser, lab, run_folder, names.VERIFY, tmp_path)
    text = page.inner_text(NOTEBOOK)
    assert "StepNotPassed" in text and "Verification failed" in text and "fix:" in text and "Traceback" not in text
    save(page, run_folder / names.VERIFY / "04_verify.ipynb")
    page.close()
    assert read_step_results(run_folder, names.VERIFY).status == "failed"
    assert runbook("seal", str(run_folder)).returncode in (0, 1)  # 1: the seal is not recorded, said so on stderr
    failed = sealed_page_text(browser, run_folder / names.VERIFY / "04_verify.html", tmp_path)
    assert "This step failed" in failed and "Verification failed" in failed and "Traceback" not in failed
    index = browser.new_page()
    index.goto((run_folder / "index.html").as_uri())
    assert "failed" in index.locator("tr:has-text('04_verify')").first.inner_text()
    index.close()


def test_apply_run_again_says_already_applied_and_cancel_is_one_line(
    run_folder: Path, lab: str, browser: object, tmp_path: Path
) -> None:
    if not (run_folder / names.APPLY / "results.json").exists():
        pytest.skip("needs the run of test_new_run_then_run_all_in_lab_then_seal")
    results = read_step_results(run_folder, names.APPLY)
    apply = open_notebook(browser, lab.format("03_apply/03_apply.ipynb"))
    run_all(apply)
    cancel = apply.locator("button:has-text('Cancel'):not([disabled])")
    cancel.wait_for(timeout=CELL_MS)
    assert "Already applied" in apply.inner_text(NOTEBOOK) and "About to change" not in apply.inner_text(NOTEBOOK)
    cancel.click()
    apply.wait_for_selector("text=Apply cancelled: nothing was changed.", timeout=CELL_MS)
    apply.screenshot(path=str(tmp_path / "03_apply-cancelled.png"))
    assert "Traceback" not in apply.inner_text(NOTEBOOK)
    assert read_step_results(run_folder, names.APPLY) == results  # nothing ran after the gate


@pytest.fixture(scope="module")
def archived_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole headless run (its own deployment and data), as an auditor receives it."""
    with LocalDeployment(deploy_key=os.environ["CONVEX_DEPLOY_KEY"]) as deployment:
        with deployment.transport() as transport:
            load(transport, SCENES)
        result = run_migration(deployment.url, confirm=True, runs_dir=tmp_path_factory.mktemp("runs"))
    assert result.passed
    return result.run_dir


def assert_page_renders(context: object, page_file: Path, screenshot: Path) -> object:
    page = context.new_page()
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    text = page.inner_text("body")
    assert "application/vnd.jupyter.widget" not in text and '"model_id"' not in text  # no raw widget JSON
    assert "Error displaying widget" not in text
    assert page.locator("table").count() > 0
    page.screenshot(path=str(screenshot), full_page=True)
    return page


@pytest.mark.parametrize("step", [names.BACKUP, names.DRY_RUN, names.APPLY, names.VERIFY])
def test_step_pages_render(step: str, archived_run: Path, browser: object, tmp_path: Path) -> None:
    page = assert_page_renders(browser, archived_run / step / f"{step}.html", tmp_path / f"{step}.png")
    if step == names.DRY_RUN:
        assert page.locator("img").count() > 0  # the chart
        assert "from legacy field(s)" in page.inner_text("body")  # the static before/after table
    if step == names.APPLY:
        assert "Confirmed by the parameter" in page.inner_text("body")


def test_run_overview_page_renders(archived_run: Path, browser: object, tmp_path: Path) -> None:
    index = archived_run / "index.html"
    if not index.exists():
        pytest.skip("the run folder has no index.html yet (the run overview page of issue 13 is being built)")
    page = assert_page_renders(browser, index, tmp_path / "index.png")
    for step in (names.BACKUP, names.DRY_RUN, names.APPLY, names.VERIFY):
        assert step in page.inner_text("body")
    page.locator("a[href*='02_dry_run']").first.click()
    page.wait_for_load_state("load")
    assert page.locator("table").count() > 0
