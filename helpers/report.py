"""What an auditor reads without Jupyter: each step's page (full, and a report without code) headed by who ran
it and when, a failed step's page opened by what failed and what to do, and the run folder's index.html.

Plain HTML and CSS: nothing here needs JavaScript to be read. The numbers come from the folder's own files.
"""

from __future__ import annotations

import ast
import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat

from .run_folder import migration_id

INDEX_FILE = "index.html"
REPORT_SUFFIX = ".report.html"
#: How many of a step summary's figures the index shows (its results.json has them all).
MAX_FIGURES = 14
FIX_MARK = "\n  fix: "


@dataclass(frozen=True)
class PageContext:
    """Who and what a step page belongs to."""

    run_id: str
    operator: str
    commit: str
    deployment: str
    migration: str = ""
    #: Start and end from elsewhere (the ledger) for a notebook that recorded no timing (JupyterLab's default).
    started: str | None = None
    finished: str | None = None


@dataclass(frozen=True)
class Failure:
    """The first error a notebook shows: where (its `## …` section and cell) and the error's own words."""

    ename: str
    message: str
    fix: str
    section: str | None
    #: The cell's prompt as the page shows it, e.g. "In [5]".
    prompt: str


def section_of(cells: list[Any], index: int) -> str | None:
    """The nearest `## …` heading above cell `index`: how the author named that part of the step."""
    for cell in reversed(cells[:index]):
        if cell.cell_type == "markdown":
            headings = [line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")]
            if headings:
                return headings[-1]
    return None


def split_fix(text: str) -> tuple[str, str]:
    """A runbook error's text is its message, then one `fix:` line."""
    message, _, fix = text.partition(FIX_MARK)
    return message.strip(), fix.strip()


def find_failure(notebook: Any) -> Failure | None:
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                message, fix = split_fix(str(output.get("evalue", "")))
                prompt = f"In [{cell.get('execution_count') or ' '}]"
                return Failure(str(output.get("ename", "Error")), message, fix, section_of(notebook.cells, index), prompt)
    return None


def execution_times(notebook: Any) -> tuple[str | None, str | None, float | None]:
    """Start, end and duration: papermill records them; JupyterLab only when 'record timing' is on."""
    recorded = notebook.metadata.get("papermill", {})
    if recorded.get("start_time"):
        return recorded.get("start_time"), recorded.get("end_time"), recorded.get("duration")
    stamps = [
        (cell.metadata.get("execution", {}).get("iopub.execute_input"), cell.metadata.get("execution", {}).get("shell.execute_reply"))
        for cell in notebook.cells
        if cell.cell_type == "code"
    ]
    starts = [start for start, _ in stamps if start]
    ends = [end for _, end in stamps if end]
    if not starts or not ends:
        return None, None, None
    start, end = min(starts), max(ends)
    try:
        duration = (datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        duration = None
    return start, end, duration


CSS = """
body.runbook-index { font: 15px/1.45 system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #1f2328; }
.runbook-header, .runbook-failure { font: 14px/1.45 system-ui, sans-serif; border-radius: 6px; padding: .6em 1em; margin: .5em 0 1em; }
.runbook-header { background: #f6f8fa; border: 1px solid #d0d7de; }
.runbook-failure { background: #fde2e1; border: 1px solid #cf222e; }
.runbook-failure pre, .runbook-index pre { white-space: pre-wrap; margin: .3em 0; }
table.runbook { border-collapse: collapse; margin: .5em 0 1em; }
table.runbook th, table.runbook td { border: 1px solid #d0d7de; padding: .3em .6em; text-align: left; vertical-align: top; }
table.runbook th { background: #f6f8fa; }
.passed { color: #1a7f37; font-weight: 600; } .failed, .refused { color: #cf222e; font-weight: 600; }
code { font-family: ui-monospace, monospace; font-size: 92%; word-break: break-all; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _dl(rows: Mapping[str, Any]) -> str:
    return " · ".join(f"<b>{_e(k)}:</b> {_e(v)}" for k, v in rows.items())


def header_html(step: str, context: PageContext, notebook: Any, results: Mapping[str, Any] | None = None) -> str:
    start, end, duration = execution_times(notebook)
    if start is None:
        start, end = context.started, context.finished
    if start is None and results:
        start, end = results.get("started_at"), results.get("finished_at")
    if duration is None and results:
        duration = results.get("duration_s")
    rows = {
        "step": step, "operator": context.operator, "started": start or "not recorded", "finished": end or "not recorded",
        "duration": f"{duration:.1f} s" if duration is not None else "not recorded",
        "migration": context.migration or "not recorded", "run id": context.run_id, "runbook commit": context.commit,
        "deployment": context.deployment,
    }
    return f'<style>{CSS}</style><div class="runbook-header">{_dl(rows)}</div>'


def failure_html(failure: Failure) -> str:
    where = f"section “{_e(failure.section)}”, cell {failure.prompt}" if failure.section else f"cell {failure.prompt}"
    fix = f"<p><b>What to do:</b> {_e(failure.fix)}</p>" if failure.fix else ""
    return (
        f'<div class="runbook-failure"><p><b>This step failed</b> in {where}: <b>{_e(failure.ename)}</b></p>'
        f"<pre>{_e(failure.message)}</pre>{fix}<p>The full traceback is in that cell's output below.</p></div>"
    )


def render_step(notebook_path: Path, context: PageContext) -> tuple[Path, Path]:
    """`<step>.html` (every cell) and `<step>.report.html` (no code cells), each headed by who/when and, for a
    failed step, what failed and what to do. The notebook file itself is left as it ran."""
    from nbconvert import HTMLExporter

    notebook = nbformat.read(notebook_path, as_version=4)
    step = notebook_path.stem
    from .archive import RESULTS_FILE, _load_json

    top = header_html(step, context, notebook, _load_json(notebook_path.parent / RESULTS_FILE))
    failure = find_failure(notebook)
    if failure is not None:
        top += failure_html(failure)
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(top))
    notebook.metadata["title"] = f"{step} · run {context.run_id} · {context.operator}"
    full = notebook_path.with_suffix(".html")
    report = notebook_path.with_suffix(REPORT_SUFFIX)
    exporters = (
        (full, HTMLExporter(embed_images=True)),
        (report, HTMLExporter(embed_images=True, exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)),
    )
    for path, exporter in exporters:
        body, _ = exporter.from_notebook_node(notebook)
        path.write_text(body, encoding="utf-8")
    return full, report


def notebook_parameter(notebook: Any, name: str) -> Any:
    """A parameter's value as the notebook ran it: papermill's injected cell wins over the `parameters` cell."""
    value = None
    for tag in ("parameters", "injected-parameters"):
        for cell in notebook.cells:
            if cell.cell_type == "code" and tag in cell.metadata.get("tags", []):
                value = _assigned(cell.source, name, value)
    return value


def _assigned(source: str, name: str, default: Any) -> Any:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return default
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                default = ast.literal_eval(node.value)
            except ValueError:
                pass
    return default


# --- index.html ---------------------------------------------------------------------------------------------


def _figures(summary: Mapping[str, Any]) -> str:
    """A summary's counts and measures (a list counts as its length); names, times and hashes are elsewhere."""
    shown = []
    for key, value in summary.items():
        if isinstance(value, bool) or key.endswith("_ts"):
            continue
        if isinstance(value, int):
            shown.append((key, f"{value:,}"))
        elif isinstance(value, float):
            shown.append((key, f"{value:,.3g}"))
        elif isinstance(value, list):
            shown.append((key, f"{len(value):,}"))
    return "<br>".join(f"{_e(key)}: {_e(value)}" for key, value in shown[:MAX_FIGURES])


def _hashes(results: Mapping[str, Any]) -> str:
    lines = [f"{kind}.{k}: <code>{_e(v)}</code>" for kind in ("inputs", "outputs") for k, v in (results.get(kind) or {}).items()]
    return "<br>".join(lines)


def _step_row(run_dir: Path, step: str, status: str) -> str:
    from .archive import RESULTS_FILE, _load_json, sha256_file

    folder = run_dir / step
    results = _load_json(folder / RESULTS_FILE)
    duration, failure = None, None
    if (folder / f"{step}.ipynb").is_file():
        notebook = nbformat.read(folder / f"{step}.ipynb", as_version=4)
        duration, failure = execution_times(notebook)[2], find_failure(notebook)
    if duration is None:
        duration = results.get("duration_s")  # a step run in JupyterLab: its cells' time, as Step.record measured it
    links = " · ".join(
        f'<a href="{_e(f"{step}/{name}")}">{label}</a>'
        for name, label in ((f"{step}.report.html", "report"), (f"{step}.html", "full page"), (f"{step}.ipynb", "notebook"))
        if (folder / name).is_file()
    )
    results_sha = sha256_file(folder / RESULTS_FILE) if (folder / RESULTS_FILE).is_file() else "no results file"
    figures = _figures(results.get("summary") or {})
    if failure is not None:
        figures = f"<b>{_e(failure.ename)}</b>: {_e(failure.message)}" + (f"<br>What to do: {_e(failure.fix)}" if failure.fix else "")
    return (
        f'<tr><td><b>{_e(step)}</b><br>{links}</td><td class="{_e(status)}">{_e(status)}</td>'
        f"<td>{'' if duration is None else f'{duration:.1f} s'}</td><td>{figures}</td>"
        f"<td>{_hashes(results)}<br>results.json: <code>{_e(results_sha)}</code></td></tr>"
    )


def write_index(
    run_dir: Path, *, deployment_url: str, operator: str, started_at: str, finished_at: str, steps: Mapping[str, str]
) -> Path:
    """The run overview: who, when, which commit and deployment, each step with its figures and hashes, links
    to every step page, and how to check the folder again."""
    from .archive import MANIFEST_FILE, commit_label, read_run_id

    run_dir = Path(run_dir)
    run_id = read_run_id(run_dir) or "not recorded"
    about = {
        "migration": migration_id(run_dir), "operator": operator, "started": started_at, "finished": finished_at, "run id": run_id,
        "runbook commit": commit_label(), "deployment": deployment_url,
    }
    rows = "".join(_step_row(run_dir, step, status) for step, status in steps.items())
    check = f"runbook check-archive path/to/{run_dir.name} --url {deployment_url}"
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Run {_e(run_id)} · {_e(operator)} · {_e(started_at)}</title>
<style>{CSS}</style></head>
<body class="runbook-index">
<h1>Run {_e(run_id)}</h1>
<table class="runbook">{"".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in about.items())}</table>
<h2>Steps</h2>
<table class="runbook"><tr><th>step and pages</th><th>status</th><th>duration</th><th>key figures</th><th>hash chain (sha256)</th></tr>
{rows}</table>
<p>Each step names the sha256 of what it read (inputs) and wrote (outputs); the next step names the same
hashes, so a plan or backup swapped between steps shows. Each page comes in two forms: the <i>report</i>
(tables, charts, text) and the <i>full page</i> with every code cell.</p>
<h2>Checking this folder</h2>
<p><code>{MANIFEST_FILE}</code> lists every file of this folder (this page included) with its sha256. This page
cannot show the manifest's own sha256, since it is listed in it: that hash was printed at the end of the run
(for the change ticket) and recorded in the deployment's ledger. To check the folder against both:</p>
<pre>{_e(check)}</pre>
<p>Without <code>--url</code> only the folder's own consistency is checked (manifest and hash chain).</p>
</body></html>
"""
    path = run_dir / INDEX_FILE
    path.write_text(body, encoding="utf-8")
    return path
