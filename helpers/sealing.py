"""Sealing a run: each step's notebook as it ran, its pages, the run's index and manifest, and the seal recorded in the
deployment's ledger. It sits beside the runner (which seals every run it makes) because it renders the pages
(helpers.evidence.pages) and reads the notebooks' static views (helpers.notebook_ui.display); what it writes is the
evidence of helpers.evidence, and `runbook seal` seals a run made interactively.

The ledger is append-only per run: the same seal again is a no-op, another manifest is refused unless a step of the
run was recorded since (the run went on), so a folder edited and sealed again never re-anchors itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import nbformat

#: A Convex object holds at most 1,024 fields: a folder with more files is anchored by its manifest's hash alone.
from helpers.connection.calls import read_ledger, record_run
from helpers.connection.errors import (
    DeploymentUnreachable,
    PreconditionFailed,
    RunbookError,
    TransientFailure,
)
from helpers.connection.transport import ConvexTransport, redact_url
from helpers.evidence.archive import (
    MANIFEST_FILE,
    RESULTS_FILE,
    RunFacts,
    commit_label,
    default_operator,
    epoch_ms,
    iter_files,
    now_iso,
    read_manifest,
    read_run_id,
    read_step_results,
    run_rows,
    sha256_file,
    step_dir,
    write_manifest,
    writing,
)
from helpers.evidence.archive_check import file_problems, hash_of, trusted_seals
from helpers.evidence.pages import (
    PageContext,
    execution_times,
    find_failure,
    notebook_parameter,
    render_step,
    write_index,
)
from helpers.evidence.run_folder import migration_id, operator_of, run_id
from helpers.notebook_ui.display import static_outputs
from helpers.paths import NOTEBOOKS_DIR
from helpers.steps import names

MAX_SEALED_FILES = 1000


#: How convex/migrationRuns.ts `record` words its refusal of a second seal with another manifest.
SEAL_REFUSED = "the run is sealed already"


#: Statuses of a step that ran without recording its results (the runner's "failed", a notebook stopped early).
UNRECORDED_STATUSES = frozenset({"failed", "not recorded"})


#: Tries of each call `runbook seal` makes: a deployment that does not answer soon is sealed against later.
SEAL_ATTEMPTS = 3


@dataclass(frozen=True)
class Sealed:
    """A sealed run folder: its manifest, the manifest's sha256 (the line for the change ticket), whether
    the deployment's ledger holds it (``not_recorded`` says why not), and what sealing did: ``sealed`` (pages,
    index and manifest written), ``recorded`` (a folder sealed earlier and unchanged since, recorded in the
    ledger now), ``unchanged`` (the ledger holds this very seal already: nothing was done)."""

    manifest: Path
    sha256: str
    not_recorded: str | None = None
    action: Literal["sealed", "recorded", "unchanged"] = "sealed"


class SealRefused(PreconditionFailed):
    hint = (
        "The deployment's ledger keeps a run's seal for good. Restore the folder from its archive (`runbook "
        "check-archive DIR --url URL` names each file that differs); a step run again in the folder "
        "(`runbook run --run-dir DIR --steps …`) records a row of its own, after which the run is sealed anew."
    )


def record_seal(transport: Any, run_dir: Path) -> str:
    """Records the manifest's sha256 and every file it lists in a ``seal`` row of this run. The deployment
    refuses another manifest for a run it holds a seal of, unless a step of the run was recorded since."""

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise PreconditionFailed(f"{run_dir} has no {MANIFEST_FILE} to record.", hint="Seal the folder first.")
    sha = sha256_file(run_dir / MANIFEST_FILE)
    evidence = {MANIFEST_FILE: sha}
    if len(manifest.files) < MAX_SEALED_FILES:
        evidence.update({name: entry.sha256 for name, entry in manifest.files.items()})
    now = datetime.now(UTC)
    try:
        record_run(
            transport, migration_id(run_dir), run_id(run_dir), step=names.SEAL, status="sealed", operator=manifest.operator,
            startedAt=epoch_ms(parse_time(manifest.started_at) or now), finishedAt=epoch_ms(now), evidence=evidence,
        )
    except RunbookError as exc:
        if SEAL_REFUSED in str(exc):
            raise SealRefused(f"The deployment refused the seal of {run_dir}: {SEAL_REFUSED} and nothing ran since.") from exc
        raise
    return sha


def record_unrecorded_steps(transport: Any, run_dir: Path, steps: Mapping[str, str], operator: str) -> None:
    """A step that ran but recorded no results (it failed before its last cell) gets a ledger row too: its
    status and the sha256 of its notebook as it ran. The run's record then shows it, and the seal that lists
    its page follows a step the deployment saw (it accepts a new seal only then)."""

    run_dir = Path(run_dir)
    rows = None
    for step, status in steps.items():
        notebook = step_dir(run_dir, step) / f"{step}.ipynb"
        if status not in UNRECORDED_STATUSES or (step_dir(run_dir, step) / RESULTS_FILE).is_file() or not notebook.is_file():
            continue
        if rows is None:
            rows = run_rows(read_ledger(transport, migration_id(run_dir)), run_id(run_dir))
        evidence = {f"{step}/{step}.ipynb": sha256_file(notebook)}
        earlier = [r for r in rows if r.get("step") == step]
        if earlier and earlier[-1].get("evidence") == evidence:
            continue  # recorded by an earlier seal of this same attempt
        open_row = earlier[-1] if earlier and not earlier[-1].get("evidence") else {}
        now = epoch_ms(datetime.now(UTC))
        record_run(transport, migration_id(run_dir), run_id(run_dir), step=step, status=status, operator=operator,
                   startedAt=int(open_row.get("startedAt") or now), finishedAt=now, evidence=evidence)


def parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def seal_folder(run_dir: Path, facts: RunFacts, *, transport: Any = None) -> Sealed:
    """index.html first (the manifest lists it, so it cannot show the manifest's own hash), then the manifest,
    then, when a transport is given, the steps that ran without recording themselves and the manifest's sha256
    in the deployment's ledger."""

    run_dir = Path(run_dir)
    with writing(run_dir):
        write_index(run_dir, facts)
        path = write_manifest(run_dir, facts)
    sha = sha256_file(path)
    if transport is None:
        return Sealed(path, sha, "no deployment was given")
    try:
        record_unrecorded_steps(transport, run_dir, facts.steps, facts.operator)
        record_seal(transport, run_dir)
    except RunbookError as exc:
        return Sealed(path, sha, str(exc).split("\n", 1)[0])
    return Sealed(path, sha)


def seal(
    run_dir: Path,
    *,
    convex_url: str | None = None,
    notebooks_dir: Path | None = None,
    operator: str | None = None,
    transport: Any = None,
) -> Sealed:
    """Seals a run made cell by cell in JupyterLab as `runbook run` seals its own: each step's notebook as it
    ran (saved by the analyst) in its step folder and rendered (full page and report), index.html, the
    manifest, and the manifest's sha256 in the deployment's ledger. A step that ran and failed, or stopped
    before recording its results, is sealed too: its page opens with what went wrong.

    The ledger keeps what it holds. A folder unchanged since its seal is not sealed again (``unchanged``, or
    ``recorded`` when the seal was made while the deployment did not answer); a folder that changed since
    its recorded seal, with no step recorded since, is refused before anything is written (SealRefused names
    each file that differs). When the deployment does not answer, the folder is sealed locally and says so:
    `runbook seal DIR --url URL` records it later.

    `notebooks_dir` holds the saved notebooks (default: each step folder's own notebook, else notebooks/);
    `convex_url` defaults to the URL the notebooks ran against."""

    run_dir = Path(run_dir)
    sources, unfit = {}, None
    for step in (*names.FORWARD, names.ROLLBACK):
        try:
            if found := _saved_notebook(run_dir, step, notebooks_dir):
                sources[step] = found
        except PreconditionFailed as exc:
            unfit = unfit or exc
    earlier = read_manifest(run_dir)
    if unfit is not None and earlier is None:
        raise unfit  # a folder sealed before is first compared with its seal: that refusal says more
    if not sources and unfit is None:
        raise PreconditionFailed(
            f"No step has run in {run_dir}: there is nothing to seal.",
            hint="Run the step notebooks in this run folder first (Run All, then save each), then seal.",
        )
    url = convex_url or next(filter(None, (notebook_parameter(nb, "convex_url") for _, nb in sources.values())), None)
    url = url or (earlier.deployment_url if earlier else None)
    if not url:
        raise PreconditionFailed("The notebooks do not say which deployment they ran against.", hint="Pass --url URL / convex_url=….")
    if transport is None:  # a missing key or a bad URL is refused before anything is written
        with ConvexTransport(url, max_attempts=SEAL_ATTEMPTS) as own:
            return seal(run_dir, convex_url=url, notebooks_dir=notebooks_dir, operator=operator, transport=own)

    this_run, migration = run_id(run_dir), migration_id(run_dir)
    offline = None
    try:
        rows = run_rows(read_ledger(transport, migration), this_run)
    except (DeploymentUnreachable, TransientFailure) as exc:
        rows, offline = [], str(exc).split("\n", 1)[0]
    if offline is None:
        done = _seal_as_it_is(run_dir, rows, transport)
        if done is not None:
            return done
    if unfit is not None:
        raise unfit
    latest = {r.get("step"): r for r in rows}  # who ran each step and when, as its last row recorded it
    ledger_operator = next((str(latest[s]["operator"]) for s in sources if latest.get(s, {}).get("operator")), None)
    operator = operator or operator_of(run_dir) or ledger_operator or default_operator()
    context = PageContext(run_id=this_run, operator=operator, deployment=redact_url(url), commit=commit_label(), migration=migration)
    starts, statuses = [], {}
    with writing(run_dir):
        for step, (source, notebook) in sources.items():
            target = step_dir(run_dir, step) / f"{step}.ipynb"
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
            static_outputs(target)  # a widget's view cannot be shown without its kernel: keep its static copy
            recorded = (step_dir(run_dir, step) / RESULTS_FILE).is_file()
            statuses[step] = read_step_results(run_dir, step).status if recorded else "failed" if find_failure(notebook) else "not recorded"
            row = latest.get(step, {})
            render_step(target, replace(
                context, operator=str(row.get("operator") or operator),
                started=_iso(row.get("startedAt")), finished=_iso(row.get("finishedAt")),
            ))
            starts.append(execution_times(notebook)[0] or _iso(row.get("startedAt")))
    started_at = earlier.started_at if earlier else min(filter(None, starts), default=now_iso())
    facts = RunFacts(deployment_url=url, operator=operator, started_at=started_at, finished_at=datetime.now(UTC),
                     steps={**(earlier.steps if earlier else {}), **statuses})
    sealed = seal_folder(run_dir, facts, transport=None if offline else transport)
    if offline:
        return replace(sealed, not_recorded=f"the deployment did not answer ({offline})")
    return sealed


def _seal_as_it_is(run_dir: Path, rows: list[dict[str, Any]], transport: Any) -> Sealed | None:
    """What the ledger allows before anything is written: None to seal the folder (anew); a Sealed when the
    folder is unchanged since its manifest and the ledger holds it or is given it now; SealRefused when the
    ledger holds a seal of this run, the folder differs from it and no step was recorded since."""
    seals = [r for r in rows if r.get("step") == names.SEAL]
    path = run_dir / MANIFEST_FILE
    unchanged = path.is_file() and not file_problems(run_dir)
    sha = sha256_file(path) if path.is_file() else None
    if unchanged and sha in {(seal.get("evidence") or {}).get(MANIFEST_FILE) for seal in trusted_seals(rows)}:
        return Sealed(path, str(sha), action="unchanged")  # as one of the run's seals left it (a copy may have gone on)
    continued = not seals or any(r.get("step") != names.SEAL for r in rows[rows.index(seals[-1]) + 1:])
    manifest = read_manifest(run_dir) if unchanged else None
    if manifest is not None and continued:
        record_unrecorded_steps(transport, run_dir, manifest.steps, manifest.operator)
        record_seal(transport, run_dir)
        return Sealed(path, str(sha), action="recorded")
    if continued:
        return None
    differs = _seal_differences(run_dir, seals[-1].get("evidence") or {})
    raise SealRefused(
        f"Run {read_run_id(run_dir)} is sealed in the deployment's ledger already (manifest sha256 "
        f"{(seals[-1].get('evidence') or {}).get(MANIFEST_FILE)}) and no step of it ran since, but {run_dir} differs "
        f"from that seal: {'; '.join(differs[:10])}{f' and {len(differs) - 10} more' if len(differs) > 10 else ''}. Nothing was written."
    )


def _seal_differences(run_dir: Path, evidence: Mapping[str, str]) -> list[str]:
    """Each file of the folder that is not as a seal row lists it (a seal of the manifest alone names that)."""
    listed = dict(sorted(evidence.items(), key=lambda item: item[0] != MANIFEST_FILE))  # the manifest first
    differs = [f"missing: {name}" if not (run_dir / name).is_file() else f"altered: {name}"
               for name, sha in listed.items() if hash_of(run_dir / name) != sha]
    if len(listed) > 1:
        differs += [f"not in the seal: {name}" for name in iter_files(run_dir) if name not in listed]
    return differs


def _iso(ms: Any) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if isinstance(ms, int | float) else None


def _saved_notebook(run_dir: Path, step: str, notebooks_dir: Path | None) -> tuple[Path, Any] | None:
    """The notebook of a step as it ran in this folder, None when the step never ran there (no results, and no
    notebook with outputs), refused when it cannot be the notebook that ran."""

    own = step_dir(run_dir, step) / f"{step}.ipynb"
    recorded = (step_dir(run_dir, step) / RESULTS_FILE).is_file()
    source = Path(notebooks_dir) / f"{step}.ipynb" if notebooks_dir else own if own.is_file() else NOTEBOOKS_DIR / f"{step}.ipynb"
    if not source.is_file():
        if not recorded:
            return None
        raise PreconditionFailed(f"Step {step} ran in {run_dir} but {source} does not exist.", hint="Name the folder of the saved notebooks with --notebooks.")
    notebook = nbformat.read(source, as_version=4)
    ran = any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    ran_in = notebook_parameter(notebook, "run_dir")
    # A relative run_dir is relative to where the notebook's kernel ran: JupyterLab starts it in the notebook's folder.
    here = ran_in is not None and (source.parent / str(ran_in)).resolve().name == run_dir.resolve().name
    if not recorded and not (ran and here):
        return None  # a template, or a notebook prepared for this folder that nobody ran
    if not ran:
        raise PreconditionFailed(
            f"{source} holds no outputs, so it is not the notebook as it ran.",
            hint="Save the notebook in JupyterLab (File > Save) after running it, then seal again.",
        )
    if not here:
        raise PreconditionFailed(f"{source} ran with run_dir={ran_in!r}, not in {run_dir}.", hint="Seal the run folder that notebook ran in.")
    if recorded and source.stat().st_mtime < (step_dir(run_dir, step) / RESULTS_FILE).stat().st_mtime:
        raise PreconditionFailed(
            f"{source} was saved before its step recorded its results: its last cells' outputs are not in it.",
            hint="Save the notebook in JupyterLab (File > Save) now, then seal again, naming the folder it is saved in "
                 "with --notebooks if that is not where this seal took it from.",
        )
    return source, notebook
