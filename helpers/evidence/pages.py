"""What an auditor reads without Jupyter: each step's page (full, and a report without code) headed by who ran
it and when, a failed step's page opened by what failed and what to do, and the run folder's index.html.

Plain HTML and CSS: nothing here needs JavaScript to be read. The numbers come from the folder's own files.
"""

from __future__ import annotations

import ast
import html
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
from jinja2 import DictLoader
from nbconvert import HTMLExporter

from helpers.connection.transport import redact_url
from helpers.evidence.archive import (
    MANIFEST_FILE,
    RESULTS_FILE,
    RunFacts,
    commit_label,
    load_json,
    read_run_id,
    sha256_file,
    timestamp,
)
from helpers.evidence.checkpoint_file import checkpoint_path, iter_entries
from helpers.evidence.run_folder import migration_of
from helpers.steps import names

if TYPE_CHECKING:  # the declaration's type only: evidence sits below the steps
    from helpers.steps.migration import Migration

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
    #: The steps the run was to run: a failed step's page names the command that runs it and those after it.
    planned: tuple[str, ...] = ()


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
            headings: list[str] = [line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")]
            if headings:
                return headings[-1]
    return None


def where(section: str | None, prompt: str) -> str:
    """Where a step failed, worded the same on its page and by the CLI: the author's section and the prompt."""
    return f"section “{section}”, cell {prompt}" if section else f"cell {prompt}"


def resume_command(run_dir: Path, step: str, url: str, planned: tuple[str, ...] = ()) -> str:
    """The command that runs a failed step again in its run folder, with the steps planned after it and the
    parameters it was given (its parameters.json), confirmed when it changes the deployment."""

    run_dir = Path(run_dir).resolve()
    order = list(planned) if step in planned else list(names.FORWARD) if step in names.FORWARD else [step]
    steps = order[order.index(step):]
    given = {k: v for k, v in load_json(run_dir / step / "parameters.json").items() if k not in RUNNER_PARAMETERS}
    options = [f"-p {shlex.quote(f'{step}.{name}={value}')}" for name, value in sorted(given.items())]
    if names.APPLY in steps or given.get("execute") is True and names.ROLLBACK in steps:
        options.append("--confirm")
    return " ".join(["runbook run --url", shlex.quote(url), "--run-dir", shlex.quote(str(run_dir)), "--steps", ",".join(steps), *options])


#: Parameters the runner gives every step itself (and apply's confirmation): not the operator's to repeat.
RUNNER_PARAMETERS = frozenset({"convex_url", "run_dir", "migration", "confirm"})


def applied_so_far(run_dir: Path) -> dict[str, int]:
    """The deployment's answers apply recorded in its checkpoint, by outcome (applied, already_applied, conflict,
    error): how much a failed apply changed. Read-only (apply itself trims a torn last entry when it resumes)."""

    counts: dict[str, int] = {}
    for entry, _ in iter_entries(checkpoint_path(Path(run_dir) / "apply")):
        for result in entry.get("results", ()):
            counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    return counts


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


def failure_html(failure: Failure | None, resume: str, applied: dict[str, int] | None) -> str:
    """The box a page of a step that did not pass opens with: where and why it failed, what to do, how much
    apply had changed, and the command that resumes the run."""
    if failure is None:
        what = "<p><b>This step recorded no results</b>: its last cell did not run, so it did not pass.</p>"
    else:
        fix = f"<p><b>What to do:</b> {_e(failure.fix)}</p>" if failure.fix else ""
        what = (f"<p><b>This step failed</b> in {_e(where(failure.section, failure.prompt))}: <b>{_e(failure.ename)}</b></p>"
                f"<pre>{_e(failure.message)}</pre>{fix}")
    if applied is not None:
        done = ", ".join(f"{n:,} {outcome.replace('_', ' ')}" for outcome, n in sorted(applied.items())) or "nothing"
        what += f"<p><b>Applied before it stopped</b> (apply's checkpoint): {_e(done)}.</p>"
    traceback = "<p>The full traceback is in that cell's output below.</p>" if failure is not None else ""
    return f'<div class="runbook-failure">{what}<p><b>To resume:</b></p><pre>{_e(resume)}</pre>{traceback}</div>'


#: nbconvert's lab template with every script it loads from a CDN (require.js, MathJax, Mermaid, the widget
#: manager) left out: a page is evidence and must read the same offline, years later. Its CSS is inline.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def _exporter(**options: Any) -> Any:
    return HTMLExporter(  # type: ignore[no-untyped-call]  # nbconvert's HTMLExporter (traitlets) has no annotated __init__
        extra_loaders=[DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})], template_file="offline.html.j2", embed_images=True, **options
    )


def _read_notebook(path: Path) -> Any:
    """The notebook at `path` as nbformat's version-4 NotebookNode."""
    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]  # nbformat's read is not annotated


def render_step(notebook_path: Path, context: PageContext) -> tuple[Path, Path]:
    """`<step>.html` (every cell) and `<step>.report.html` (no code cells), each headed by who/when and, for a
    failed step, what failed and what to do. The notebook file itself is left as it ran."""

    notebook = _read_notebook(notebook_path)
    step = notebook_path.stem

    top = header_html(step, context, notebook, load_json(notebook_path.parent / RESULTS_FILE))
    failure = find_failure(notebook)
    results = notebook_path.parent / "results.json"
    if failure is not None or not results.is_file():
        run_dir = notebook_path.parent.parent
        top += failure_html(failure, resume_command(run_dir, step, context.deployment, context.planned),
                            applied_so_far(run_dir) if step == names.APPLY else None)
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(top))  # type: ignore[no-untyped-call]  # not annotated in nbformat
    notebook.metadata["title"] = f"{step} · run {context.run_id} · {context.operator}"
    full = notebook_path.with_suffix(".html")
    report = notebook_path.with_suffix(REPORT_SUFFIX)
    exporters = (
        (full, _exporter()),
        (report, _exporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)),
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


# --- verdicts: index.html and the CLI summary --------------------------------------------------------------


def _words(key: str) -> str:
    return key.replace("_", " ")


def _counted(counts: Mapping[str, Any]) -> str:
    """`{"applied": 66, "already_applied": 0}` → "66 applied, 0 already applied"."""
    return ", ".join(f"{n:,} {_words(k)}" for k, n in counts.items() if isinstance(n, int))


def _figures(summary: Mapping[str, Any]) -> str:
    """A summary's counts, in words (a list counts as its length): what a step without a verdict of its own shows."""
    shown = []
    for key, value in summary.items():
        if isinstance(value, bool) or key.endswith(("_ts", "_ms", "_sha256")):
            continue
        if isinstance(value, int):
            shown.append(f"{_words(key)}: {value:,}")
        elif isinstance(value, list):
            shown.append(f"{_words(key)}: {len(value):,}")
    return "; ".join(shown[:MAX_FIGURES])


def step_duration(run_dir: Path, step: str) -> float | None:
    path = Path(run_dir) / step / f"{step}.ipynb"
    return execution_times(_read_notebook(path))[2] if path.is_file() else None


def _summary(run_dir: Path, step: str) -> dict[str, Any]:

    summary = load_json(Path(run_dir) / step / RESULTS_FILE).get("summary")
    return summary if isinstance(summary, dict) else {}


def checks_verdict(run_dir: Path) -> tuple[str, bool] | None:
    """"11 of 11 checks passed", or which failed, from verify's results."""
    checks = [c for c in _summary(run_dir, names.VERIFY).get("checks") or [] if isinstance(c, dict)]
    if not checks:
        return None
    failed = [str(c.get("name")) for c in checks if not c.get("passed")]
    text = f"{len(checks) - len(failed)} of {len(checks)} checks passed"
    return (f"{text}; failed: {', '.join(failed)}" if failed else text), not failed


def blocked_verdict(run_dir: Path) -> str | None:
    """Documents the dry run blocked, per problem (they are not migrated), from the plan's record."""

    problems = load_json(Path(run_dir) / "plan" / "plan.json").get("problems")
    if not isinstance(problems, list):
        return None
    blocking = {p.get("code"): p.get("count", 0) for p in problems if isinstance(p, dict) and p.get("severity") == "blocking"}
    if not blocking:
        return "none"
    return f"{sum(blocking.values()):,} ({', '.join(f'{code} {n:,}' for code, n in blocking.items())})"


def step_finding(run_dir: Path, step: str) -> str:
    """What a step found or did, in a line an auditor reads (its results.json has every figure)."""
    summary = _summary(run_dir, step)
    if step == names.BACKUP and isinstance(summary.get("counts"), dict):
        counts = summary["counts"]
        return f"{sum(counts.values()):,} documents backed up ({', '.join(f'{t} {n:,}' for t, n in counts.items())})"
    if step == names.DRY_RUN and isinstance(summary.get("actions"), dict):
        actions = "; ".join(f"{table}: {_counted(by_action)}" for table, by_action in summary["actions"].items())
        return f"planned: {actions}; blocked documents: {blocked_verdict(run_dir) or 'not recorded'}"
    if step == names.APPLY and isinstance(summary.get("outcomes"), dict):
        outcomes = "; ".join(f"{table}: {_counted(by)}" for table, by in summary["outcomes"].items())
        again = " (a re-check: the figures are those of the first apply)" if summary.get("recheck") else ""
        return f"outcomes: {outcomes or 'none'}; references created: {summary.get('references_created', 0):,}{again}"
    if step == names.VERIFY and (verdict := checks_verdict(run_dir)) is not None:
        return verdict[0]
    return _figures(summary)


@dataclass(frozen=True)
class Verdict:
    label: str
    text: str
    #: False when the verdict is a failure (the index shows it in red), None when it is neither.
    ok: bool | None = None


def run_verdicts(run_dir: Path, steps: Mapping[str, str], migration: Migration) -> list[Verdict]:
    """What the run came to, read from its folder: index.html opens with these and the CLI prints them;
    `migration` (the folder's) names the tables."""

    run_dir = Path(run_dir)
    ran = {step: status for step, status in steps.items() if status != "not run"}
    failed = [f"{step} {status}" for step, status in ran.items() if status != "passed"]
    durations = [(step, status, step_duration(run_dir, step)) for step, status in ran.items()]
    timed = ", ".join(f"{step} {status}" + ("" if d is None else f" in {d:.1f} s") for step, status, d in durations)
    verdicts = [Verdict("steps", f"{len(ran) - len(failed)} of {len(ran)} passed" + (f" ({timed})" if timed else ""), not failed)]
    if (checks := checks_verdict(run_dir)) is not None:
        verdicts.append(Verdict("verify", *checks))
    migrated = _summary(run_dir, names.APPLY).get("migrated")
    if isinstance(migrated, dict):
        label = migration.label
        verdicts.append(Verdict("migrated", ", ".join(f"{label(table)} {n:,}" for table, n in migrated.items())))
    if (blocked := blocked_verdict(run_dir)) is not None:
        verdicts.append(Verdict("blocked documents (not migrated), per problem", blocked))
    outcomes = _summary(run_dir, names.APPLY).get("outcomes")
    if isinstance(outcomes, dict):
        totals: dict[str, int] = {}
        for by_outcome in outcomes.values():
            for outcome, n in by_outcome.items():
                totals[outcome] = totals.get(outcome, 0) + n
        verdicts.append(Verdict("apply outcomes", _counted(totals) or "none", not (totals.get("error") or totals.get("conflict"))))
    return verdicts


def check_command(run_dir: Path, deployment_url: str) -> str:
    """The command that checks this folder against its manifest, its hash chain and the deployment's ledger."""
    return f"runbook check-archive {shlex.quote(str(Path(run_dir).resolve()))} --url {shlex.quote(deployment_url)}"


def _hashes(results: Mapping[str, Any]) -> str:
    lines = [f"{kind}.{k}: <code>{_e(v)}</code>" for kind in ("inputs", "outputs") for k, v in (results.get(kind) or {}).items()]
    return "<br>".join(lines)


def _step_row(run_dir: Path, step: str, status: str) -> str:

    folder = run_dir / step
    results = load_json(folder / RESULTS_FILE)
    duration, failure = None, None
    if (folder / f"{step}.ipynb").is_file():
        notebook = _read_notebook(folder / f"{step}.ipynb")
        duration, failure = execution_times(notebook)[2], find_failure(notebook)
    if duration is None:
        duration = results.get("duration_s")  # a step run in JupyterLab: its cells' time, as Step.record measured it
    links = " · ".join(
        f'<a href="{_e(f"{step}/{name}")}">{label}</a>'
        for name, label in ((f"{step}.report.html", "report"), (f"{step}.html", "full page"), (f"{step}.ipynb", "notebook"))
        if (folder / name).is_file()
    )
    results_sha = sha256_file(folder / RESULTS_FILE) if (folder / RESULTS_FILE).is_file() else "no results file"
    found = _e(step_finding(run_dir, step))
    if failure is not None:
        found = f"<b>{_e(failure.ename)}</b> in {_e(where(failure.section, failure.prompt))}: {_e(failure.message)}" + (
            f"<br>What to do: {_e(failure.fix)}" if failure.fix else "")
    elif not results:
        found = "recorded no results (its last cell did not run)"
    return (
        f'<tr><td><b>{_e(step)}</b><br>{links}</td><td class="{_e(status)}">{_e(status)}</td>'
        f"<td>{'' if duration is None else f'{duration:.1f} s'}</td><td>{found}</td>"
        f"<td>{_hashes(results)}<br>results.json: <code>{_e(results_sha)}</code></td></tr>"
    )


def write_index(run_dir: Path, facts: RunFacts) -> Path:
    """The run overview: its verdicts first (as the CLI prints them), then who, when, which commit and
    deployment, each step that ran (a failed one too) with what it found and its hashes, links to every step
    page, and the command that checks the folder again."""

    run_dir = Path(run_dir)
    run_id = read_run_id(run_dir) or "not recorded"
    migration = migration_of(run_dir)  # a sealed folder names its migration in run.json, nowhere else
    deployment_url, operator, steps = redact_url(facts.deployment_url), facts.operator, facts.steps
    started_at, finished_at = timestamp(facts.started_at), timestamp(facts.finished_at)
    about = {
        "migration": migration.id, "operator": operator, "started": started_at, "finished": finished_at, "run id": run_id,
        "runbook commit": commit_label(), "deployment": deployment_url,
    }
    rows = "".join(_step_row(run_dir, step, status) for step, status in steps.items() if status != "not run")
    verdicts = "".join(
        f'<li><b>{_e(v.label)}:</b> <span class="{"" if v.ok is not False else "failed"}">{_e(v.text)}</span></li>'
        for v in run_verdicts(run_dir, steps, migration)
    )
    check = check_command(run_dir, deployment_url)
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Run {_e(run_id)} · {_e(operator)} · {_e(started_at)}</title>
<style>{CSS}</style></head>
<body class="runbook-index">
<h1>Run {_e(run_id)}</h1>
<ul class="runbook-verdicts">{verdicts}</ul>
<table class="runbook">{"".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in about.items())}</table>
<h2>Steps</h2>
<table class="runbook"><tr><th>step and pages</th><th>status</th><th>duration</th><th>what it found</th><th>hash chain (sha256)</th></tr>
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
