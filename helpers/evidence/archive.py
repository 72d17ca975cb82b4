"""The run folder: each step's results file, the manifest that seals the folder, and the checks auditors run.

A run folder is evidence. Every file in it is listed in manifest.json with its sha256, and the steps' results
files name the hashes of what they consumed (plan, backup, apply results), so `check_archive` can prove both
that nothing changed after the run and that apply executed the plan and backup of this same folder.

Whoever can write the folder can also reseal it, so the folder alone proves only its own consistency. The
deployment's ledger (``migrationRuns``) anchors it: each step's row records the sha256 of the files the step
read and wrote, and the seal row the manifest's sha256 and every file it lists. ``check_archive(run_dir,
transport)`` compares the folder with those rows and names each file that differs.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, Field

from helpers.connection.errors import PreconditionFailed, RunbookError
from helpers.paths import CHECKOUT_ROOT, NOTEBOOKS_DIR, installed_version
from helpers.evidence.run_folder import LOCK_FILE, RUN_FILE, migration_id, operator_of, run_id
from helpers.steps import names

MANIFEST_FILE = "manifest.json"
RESULTS_FILE = "results.json"
CHUNK = 1 << 20
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
#: Distributions whose versions decide how a run behaved; recorded in every manifest.
RECORDED_DISTRIBUTIONS = (
    "convex-asset-runbook", "papermill", "nbformat", "nbconvert", "nbclient", "ipykernel", "pandas", "convex",
    "httpx", "pydantic", "orjson", "tenacity", "matplotlib", "ipywidgets", "tqdm",
)


class SecretLeaked(RunbookError):
    hint = (
        "Do not archive or share this run folder: delete it, rotate the deploy key in the Convex dashboard, "
        "and find the output or parameter that printed it."
    )


def sha256_file(path: Path) -> str:
    """Streams the file, so multi-gigabyte snapshots hash in constant memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """A reader (or a kill) never sees half a file: write a sibling temp file, fsync it, then rename over."""
    path = Path(path)
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; evidence is read like every other file of the folder
        with os.fdopen(fd, "w", encoding="utf-8") as sink:
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with suppress(OSError):  # cleaning up must not hide why the write failed
            Path(tmp_name).unlink(missing_ok=True)
        raise


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StepResults(BaseModel):
    """What a step notebook hands to the next step: its verdict and the hashes it consumed and produced."""

    step: str
    status: Literal["passed", "failed", "refused"]
    summary: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    #: When the step's cells began (Step.open) and how long they ran until its results: an interactive step's
    #: notebook records no timing of its own.
    started_at: str | None = None
    finished_at: str = Field(default_factory=_now)
    duration_s: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def require_passed(self) -> None:
        """Later steps call this so they never build on a step that failed or refused."""
        if not self.passed:
            raise PreconditionFailed(
                f"step {self.step} did not pass in this run folder (status: {self.status}).",
                hint=f"Fix what this run folder's {self.step}/{self.step}.ipynb reported and run it again there first.",
            )


def step_dir(run_dir: Path, step: str) -> Path:
    return Path(run_dir) / step


def write_step_results(run_dir: Path, step: str, results: StepResults) -> Path:
    out = step_dir(run_dir, step)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    write_json_atomic(path, results)
    return path


def record_step(
    transport: Any,
    run_dir: Path,
    results: StepResults,
    *,
    operator: str | None = None,
    started_at: datetime | None = None,
) -> Path:
    """Writes a step's results.json and anchors it in the deployment's ledger (``migrationRuns``): the row of
    this run and step records the step's verdict, its figures and the sha256 of every file it read and wrote
    (backup ZIP, plan, checkpoint, its results), so the folder can later be compared with the deployment
    (``runbook check-archive DIR --url URL``). The deployment keeps that row as it is: the step run again gets
    a row of its own."""
    from helpers.connection.calls import read_ledger, record_run  # the ledger's calls; archive stays usable without a deployment

    path = write_step_results(run_dir, results.step, results)
    this_run, migration = run_id(run_dir), migration_id(run_dir)
    earlier = [r for r in run_rows(read_ledger(transport, migration), this_run) if r.get("step") == results.step]
    # An attempt still open (apply records its row when it begins) is completed, keeping its start and counts.
    open_row = earlier[-1] if earlier and not earlier[-1].get("evidence") else {}
    record_run(
        transport, migration, this_run, step=results.step, status=results.status,
        operator=operator or _operator(),
        startedAt=_step_started_ms(started_at, open_row), finishedAt=_ms(datetime.now(UTC)),
        counts={**(open_row.get("counts") or {}), **ledger_figures(results.summary)},
        evidence=step_evidence(run_dir, results),
    )
    return path


#: A figure the ledger can hold: a Convex field name, and an integer a float64 carries exactly.
_FIGURE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def ledger_figures(summary: Mapping[str, Any]) -> dict[str, int]:
    """A summary's top-level counts as the ledger row records them (timestamps and flags left out), so
    `check-archive --url` can name the figure a folder changed."""
    return {
        key: value for key, value in summary.items()
        if isinstance(value, int) and not isinstance(value, bool) and not key.endswith("_ts")
        and abs(value) <= 2**53 and _FIGURE_NAME.fullmatch(key)
    }


def run_rows(ledger: list[dict[str, Any]], this_run: str | None) -> list[dict[str, Any]]:
    """A run's ledger rows in the order the deployment wrote them (rows from before it stamped them first)."""
    return sorted((r for r in ledger if r.get("runId") == this_run), key=lambda r: r.get("recordedAt") or 0)


def _operator() -> str:
    return os.environ.get("RUNBOOK_OPERATOR") or getpass.getuser()


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


#: Set by the runner for the kernel of each step it starts: when the step began (ms since the epoch).
STEP_STARTED_ENV = "RUNBOOK_STEP_STARTED_MS"


def _step_started_ms(started_at: datetime | None, open_row: Mapping[str, Any]) -> int:
    """The caller's start, else the runner's, else the start the step's open row holds (apply records its own
    when it begins), else now: a step run cell by cell has no better record of when it began."""
    if started_at is not None:
        return _ms(started_at)
    if os.environ.get(STEP_STARTED_ENV, "").isdigit():
        return int(os.environ[STEP_STARTED_ENV])
    if isinstance(open_row.get("startedAt"), int | float):
        return int(open_row["startedAt"])
    return _ms(datetime.now(UTC))


def _plan_files(run_dir: Path) -> list[str]:
    record = _load_json(run_dir / "plan" / "plan.json")
    return ["plan/plan.json", str(record.get("plan_file") or "plan/plan.jsonl")]


def _backup_files(run_dir: Path) -> list[str]:
    record = _load_json(run_dir / "backup" / "backup.json")
    return ["backup/backup.json", *([f"backup/{record['zip_file']}"] if record.get("zip_file") else [])]


#: Hash names that results files use, and the files of the run folder (relative paths) they stand for.
EVIDENCE_FILES: dict[str, Callable[[Path], list[str]]] = {
    "backup_sha256": _backup_files,
    "plan_sha256": _plan_files,
    "checkpoint_sha256": lambda run_dir: ["apply/checkpoint.jsonl"],
    "apply_results_sha256": lambda run_dir: [f"03_apply/{RESULTS_FILE}"],
}


def step_evidence(run_dir: Path, results: StepResults) -> dict[str, str]:
    """Relative path → sha256 of each file the step read or wrote, as they are now, its results file included."""
    run_dir = Path(run_dir)
    names = {f"{results.step}/{RESULTS_FILE}"}
    for key in (*results.inputs, *results.outputs):
        if key in EVIDENCE_FILES:
            names.update(EVIDENCE_FILES[key](run_dir))
    return {name: sha256_file(run_dir / name) for name in sorted(names) if (run_dir / name).is_file()}


def read_step_results(run_dir: Path, step: str) -> StepResults:
    path = step_dir(run_dir, step) / RESULTS_FILE
    if not path.exists():
        raise PreconditionFailed(
            f"step {step} has not run in this run folder ({path} is missing).",
            hint=f"Run step {step} in this run folder first: {step_dir(run_dir, step) / f'{step}.ipynb'}.",
        )
    return StepResults.model_validate_json(path.read_bytes())


class RunFolderNotWritable(RunbookError):
    hint = "Choose a runs folder you can write to (--runs-dir / runs_dir=…), or fix the permissions of that path."


@contextmanager
def writing(run_dir: Path) -> Iterator[None]:
    """An OS error while writing the run folder becomes one line naming the path, not a traceback."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or run_dir
        raise RunFolderNotWritable(f"Cannot write the run folder at {where}: {exc.strerror or exc}.") from exc


def new_run_dir(base: Path = Path("runs")) -> Path:
    """Named by UTC start time (sorts chronologically) plus a random suffix (two runs in one second differ)."""
    run_dir = Path(base) / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    with writing(run_dir):
        run_dir.mkdir(parents=True)
    return run_dir


# --- manifest -----------------------------------------------------------------------------------------------


class FileEntry(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    #: Required: a file that names no migration is refused, never judged as the first one's.
    migration_id: str
    run_dir: str
    run_id: str | None = None
    deployment_url: str
    operator: str
    started_at: str
    finished_at: str
    steps: dict[str, str]
    runbook: dict[str, Any]
    versions: dict[str, str]
    files: dict[str, FileEntry]


def _iter_files(run_dir: Path) -> Iterator[str]:
    """Every file of the folder as a relative POSIX path, the manifest itself excepted."""
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir).as_posix()
        if path.is_file() and relative not in (MANIFEST_FILE, LOCK_FILE):
            yield relative


def _entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), size=path.stat().st_size)


def _timestamp(value: datetime | str) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else value


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in RECORDED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    node = _command_output(["node", "--version"])
    if node is not None:
        versions["node"] = node
    return versions


def _command_output(argv: list[str], cwd: Path | None = None) -> str | None:
    """stdout of a command, or None when it is missing or fails: versions are recorded when they can be."""
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _runbook_revision() -> dict[str, Any]:
    """The commit of the runbook that ran and whether its checkout had uncommitted changes; an installed runbook
    (no checkout: git would answer for whatever repository the environment lies in) records its version."""
    if CHECKOUT_ROOT is None:
        return {"commit": "unknown", "dirty": None, "installed_version": installed_version()}
    commit = _command_output(["git", "rev-parse", "HEAD"], cwd=CHECKOUT_ROOT)
    if not commit:
        return {"commit": "unknown", "dirty": None}
    status = _command_output(["git", "status", "--porcelain"], cwd=CHECKOUT_ROOT)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def commit_label() -> str:
    """The runbook's commit as a page shows it, saying when the checkout had uncommitted changes."""
    revision = _runbook_revision()
    if "installed_version" in revision:
        return f"installed package {revision['installed_version']} (no checkout)"
    return f"{revision['commit']}{' (with uncommitted changes)' if revision.get('dirty') else ''}"


def _redact(url: str) -> str:
    from helpers.connection.transport import redact_url  # lazy: transport is not needed to hash a folder

    return redact_url(url)


def write_manifest(
    run_dir: Path,
    *,
    deployment_url: str,
    operator: str,
    started_at: datetime | str,
    finished_at: datetime | str,
    steps: Mapping[str, str],
) -> Path:
    """Seals the run folder: written last, it lists every file with its hash, and what ran, where and by whom."""
    run_dir = Path(run_dir)
    manifest = Manifest(
        migration_id=migration_id(run_dir),
        run_dir=run_dir.resolve().name,
        run_id=read_run_id(run_dir),
        deployment_url=_redact(deployment_url),
        operator=operator,
        started_at=_timestamp(started_at),
        finished_at=_timestamp(finished_at),
        steps=dict(steps),
        runbook=_runbook_revision(),
        versions=_versions(),
        files={name: _entry(run_dir / name) for name in _iter_files(run_dir)},
    )
    path = run_dir / MANIFEST_FILE
    write_json_atomic(path, manifest)
    return path


def read_run_id(run_dir: Path) -> str | None:
    """The folder's run id without drawing one (a check must not write the folder it checks)."""
    return _load_json(Path(run_dir) / RUN_FILE).get("run_id")


def read_manifest(run_dir: Path) -> Manifest | None:
    """The folder's manifest, or None if it was never sealed."""
    path = Path(run_dir) / MANIFEST_FILE
    return Manifest.model_validate_json(path.read_bytes()) if path.exists() else None


#: A Convex object holds at most 1,024 fields: a folder with more files is anchored by its manifest's hash alone.
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
    from helpers.connection.calls import record_run

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
            startedAt=_ms(_parse_time(manifest.started_at) or now), finishedAt=_ms(now), evidence=evidence,
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
    from helpers.connection.calls import read_ledger, record_run

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
        now = _ms(datetime.now(UTC))
        record_run(transport, migration_id(run_dir), run_id(run_dir), step=step, status=status, operator=operator,
                   startedAt=int(open_row.get("startedAt") or now), finishedAt=now, evidence=evidence)


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def seal_folder(
    run_dir: Path,
    *,
    deployment_url: str,
    operator: str,
    started_at: datetime | str,
    finished_at: datetime | str,
    steps: Mapping[str, str],
    transport: Any = None,
) -> Sealed:
    """index.html first (the manifest lists it, so it cannot show the manifest's own hash), then the manifest,
    then, when a transport is given, the steps that ran without recording themselves and the manifest's sha256
    in the deployment's ledger."""
    from helpers.evidence.pages import write_index

    run_dir = Path(run_dir)
    with writing(run_dir):
        write_index(run_dir, deployment_url=_redact(deployment_url), operator=operator, started_at=_timestamp(started_at),
                    finished_at=_timestamp(finished_at), steps=steps)
        path = write_manifest(run_dir, deployment_url=deployment_url, operator=operator, started_at=started_at,
                              finished_at=finished_at, steps=steps)
    sha = sha256_file(path)
    if transport is None:
        return Sealed(path, sha, "no deployment was given")
    try:
        record_unrecorded_steps(transport, run_dir, steps, operator)
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
    from helpers.notebook_ui.display import static_outputs
    from helpers.connection.errors import DeploymentUnreachable, TransientFailure
    from helpers.evidence.pages import PageContext, execution_times, find_failure, notebook_parameter, render_step
    from helpers.connection.transport import ConvexTransport

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
    from helpers.connection.calls import read_ledger

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
    operator = operator or operator_of(run_dir) or next((str(latest[s]["operator"]) for s in sources if latest.get(s, {}).get("operator")), None) or _operator()
    context = PageContext(run_id=this_run, operator=operator, deployment=_redact(url), commit=commit_label(), migration=migration)
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
    started_at = earlier.started_at if earlier else min(filter(None, starts), default=_now())
    sealed = seal_folder(run_dir, deployment_url=url, operator=operator, started_at=started_at, finished_at=datetime.now(UTC),
                         steps={**(earlier.steps if earlier else {}), **statuses}, transport=None if offline else transport)
    if offline:
        return replace(sealed, not_recorded=f"the deployment did not answer ({offline})")
    return sealed


def _seal_as_it_is(run_dir: Path, rows: list[dict[str, Any]], transport: Any) -> Sealed | None:
    """What the ledger allows before anything is written: None to seal the folder (anew); a Sealed when the
    folder is unchanged since its manifest and the ledger holds it or is given it now; SealRefused when the
    ledger holds a seal of this run, the folder differs from it and no step was recorded since."""
    seals = [r for r in rows if r.get("step") == names.SEAL]
    path = run_dir / MANIFEST_FILE
    unchanged = path.is_file() and not _file_problems(run_dir)
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
               for name, sha in listed.items() if _hash_of(run_dir / name) != sha]
    if len(listed) > 1:
        differs += [f"not in the seal: {name}" for name in _iter_files(run_dir) if name not in listed]
    return differs


def _iso(ms: Any) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if isinstance(ms, int | float) else None


def _saved_notebook(run_dir: Path, step: str, notebooks_dir: Path | None) -> tuple[Path, Any] | None:
    """The notebook of a step as it ran in this folder, None when the step never ran there (no results, and no
    notebook with outputs), refused when it cannot be the notebook that ran."""
    import nbformat

    from helpers.evidence.pages import notebook_parameter
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


# --- checks -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveCheck:
    problems: list[str] = field(default_factory=list)
    #: True when the folder was compared with the deployment's ledger, not only with itself.
    anchored: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def check_archive(run_dir: Path, transport: Any = None) -> ArchiveCheck:
    """Every listed file present and unchanged, nothing unlisted, and each step consumed this folder's own files.

    With a transport, also compares the folder with the deployment's ledger rows of its run: each step's
    results with that step's own row (status, figures, the sha256 of what it read and wrote), and every file
    with the seal. A folder edited and resealed, or a manifest edited alone, is caught there, naming the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return ArchiveCheck([f"{run_dir} is not a directory"], anchored=transport is not None)
    problems = [*_file_problems(run_dir), *_chain_problems(run_dir)]
    if transport is None:
        return ArchiveCheck(problems)
    from helpers.connection.calls import read_ledger

    return ArchiveCheck([*problems, *_ledger_problems(run_dir, read_ledger(transport, migration_id(run_dir)))], anchored=True)


def trusted_seals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's seals the ledger vouches for: its first, and each later one that follows a step recorded after
    the seal before it (the run continued). A seal written over an unchanged run (which the deployment
    refuses today) is left out: the first seal of a state counts, not the latest."""
    trusted, stepped = [], True
    for row in rows:
        if row.get("step") != names.SEAL:
            stepped = True
        elif stepped:
            trusted.append(row)
            stepped = False
    return trusted


def _ledger_problems(run_dir: Path, ledger: list[dict[str, Any]]) -> list[str]:
    """The folder against the seal its manifest is (else the run's last trusted seal), and each step's results
    against that step's last row before that seal: a forger's copy sealed later never changes what the
    original is compared with."""
    this_run = read_run_id(run_dir)
    if this_run is None:
        return [f"ledger: {RUN_FILE} is missing or unreadable, so this run cannot be looked up in the deployment's ledger"]
    rows = run_rows(ledger, this_run)
    if not rows:
        return [f"ledger: the deployment has no record of run {this_run} (run against another deployment, or {RUN_FILE} changed)"]
    seals = trusted_seals(rows)
    sha = _hash_of(run_dir / MANIFEST_FILE)
    seal = next((s for s in seals if (s.get("evidence") or {}).get(MANIFEST_FILE) == sha), seals[-1] if seals else None)
    steps = rows[: rows.index(seal)] if seal is not None else rows
    latest = {row.get("step"): row for row in steps if row.get("step") != names.SEAL}
    problems: list[str] = []
    reported: set[str] = set()
    for step, row in latest.items():
        problems += _step_row_problems(run_dir, str(step), row, reported)
    if seal is None:
        return [*problems, f"ledger: run {this_run} was never sealed in the deployment's ledger: nothing vouches for {MANIFEST_FILE}"]
    evidence = seal.get("evidence") or {}
    problems += _evidence_problems(run_dir, evidence, "the seal", reported)
    if len(evidence) > 1:
        problems += [f"not in the deployment's ledger: {name}" for name in _iter_files(run_dir) if name not in evidence]
    return problems


def _step_row_problems(run_dir: Path, step: str, row: Mapping[str, Any], reported: set[str]) -> list[str]:
    """A step's results against its own ledger row: status, figures, and every file it read and wrote."""
    problems = []
    path = step_dir(run_dir, step) / RESULTS_FILE
    if path.is_file():
        try:
            results = StepResults.model_validate_json(path.read_bytes())
        except ValueError:
            results = None  # the hash chain check names an unreadable results file
        if results is not None:
            if results.status != row.get("status"):
                problems.append(f"step {step}: status {results.status} in the folder, {row.get('status')} in its ledger row")
            recorded = row.get("counts") or {}
            problems += [
                f"step {step}: figure {key} is {value:,} in the folder, {int(recorded[key]):,} in its ledger row"
                for key, value in ledger_figures(results.summary).items() if key in recorded and recorded[key] != value
            ]
    return [*problems, *_evidence_problems(run_dir, row.get("evidence") or {}, f"step {step}", reported)]


def _evidence_problems(run_dir: Path, evidence: Mapping[str, str], who: str, reported: set[str]) -> list[str]:
    """Each file a ledger row names must hash as the row says (each file named once, by the first row)."""
    problems = []
    for name, sha in sorted(evidence.items()):
        if name in reported:
            continue
        file = run_dir / name
        if not file.is_file():
            problems.append(f"missing: {name} (recorded by {who} in the deployment's ledger)")
        elif (actual := sha256_file(file)) != sha:
            problems.append(f"altered: {name} (the deployment's ledger holds sha256 {sha} from {who}, found {actual})")
        else:
            continue
        reported.add(name)
    return problems


def _file_problems(run_dir: Path) -> list[str]:
    path = run_dir / MANIFEST_FILE
    if not path.exists():
        return [f"{MANIFEST_FILE} is missing: the folder was never sealed, nothing can be checked against it "
                "(a run made in JupyterLab is sealed with `runbook seal DIR`)"]
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValueError as exc:
        return [f"{MANIFEST_FILE} is unreadable: {exc}"]
    problems = []
    for name, entry in manifest.files.items():
        file = run_dir / name
        if not file.is_file():
            problems.append(f"missing: {name}")
        elif (actual := _entry(file)) != entry:
            problems.append(f"altered: {name} (manifest sha256 {entry.sha256}, found {actual.sha256})")
    problems += [f"not in the manifest: {name}" for name in _iter_files(run_dir) if name not in manifest.files]
    return problems


def _load_json(path: Path) -> dict[str, Any]:
    """A record file's fields; an unreadable one has none, so every check that needs it reports a problem."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _json_field(path: Path, key: str) -> str | None:
    return _load_json(path).get(key) if path.exists() else None


def _hash_of(path: Path) -> str | None:
    return sha256_file(path) if path.exists() else None


#: Hash names that results files use, and where the value they must hold comes from.
CHAIN_SOURCES: dict[str, tuple[str, Callable[[Path], str | None]]] = {
    "plan_sha256": ("plan/plan.json", lambda d: _json_field(d / "plan" / "plan.json", "plan_sha256")),
    "backup_sha256": ("backup/backup.json", lambda d: _json_field(d / "backup" / "backup.json", "sha256")),
    "apply_results_sha256": ("03_apply/results.json", lambda d: _hash_of(d / names.APPLY / RESULTS_FILE)),
    "checkpoint_sha256": ("apply/checkpoint.jsonl", lambda d: _hash_of(d / "apply" / "checkpoint.jsonl")),
}


#: Records that vouch for a file by its hash: record, hash field, and the file it names (relative to the run folder).
HASHED_RECORDS: tuple[tuple[str, str, Callable[[dict[str, Any]], str | None]], ...] = (
    ("plan/plan.json", "plan_sha256", lambda record: record.get("plan_file")),
    ("backup/backup.json", "sha256", lambda record: record.get("zip_file") and f"backup/{record['zip_file']}"),
)


def _chain_problems(run_dir: Path) -> list[str]:
    """Each hash a record or a step recorded must equal the hash of the file of this folder it names."""
    problems = []
    for record_name, key, file_of in HASHED_RECORDS:
        if not (run_dir / record_name).exists():
            continue
        record = _load_json(run_dir / record_name)
        name = file_of(record)
        if not name or _hash_of(run_dir / name) != record.get(key):
            problems.append(f"chain: {name or 'the file'} does not hash to the {key} recorded in {record_name}")
    for results_path in sorted(run_dir.glob(f"*/{RESULTS_FILE}")):
        step = results_path.parent.name
        try:
            results = StepResults.model_validate_json(results_path.read_bytes())
        except ValueError as exc:
            problems.append(f"chain: {step}/{RESULTS_FILE} is unreadable: {exc}")
            continue
        for kind, recorded in (("inputs", results.inputs), ("outputs", results.outputs)):
            for key, value in recorded.items():
                if key not in CHAIN_SOURCES:
                    continue
                source, expected_of = CHAIN_SOURCES[key]
                expected = expected_of(run_dir)
                if value != expected:
                    found = "is missing" if expected is None else f"holds {expected}"
                    problems.append(f"chain: {step} {kind}.{key} is {value} but {source} {found}")
    return problems


def _encoded_forms(secret: str) -> set[bytes]:
    """The secret as it may appear in a file: raw, JSON-escaped, URL-encoded, or inside base64 at any alignment."""
    raw = secret.encode()
    forms = {raw, json.dumps(secret)[1:-1].encode(), quote(secret, safe="").encode(), quote_plus(secret).encode()}
    for offset in range(3):
        # Base64 of the secret inside a longer payload depends on where it starts modulo 3; the characters that
        # also encode neighbouring bytes are dropped so the fragment matches wherever the secret sits.
        encoded = base64.b64encode(b"\0" * offset + raw)
        start = (4 * offset + 2) // 3
        end = 4 * (offset + len(raw)) // 3
        for fragment in (encoded[start:end], base64.urlsafe_b64encode(b"\0" * offset + raw)[start:end]):
            if len(fragment) >= 8:
                forms.add(fragment)
    return {form for form in forms if form}


def _contains_any(path: Path, needles: set[bytes]) -> bool:
    """Chunked scan with an overlap of the longest needle, so a match across a chunk boundary is found."""
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            window = tail + chunk
            if any(n in window for n in needles):
                return True
            tail = window[-overlap:] if overlap else b""
    return False


def find_secret(run_dir: Path, secret: str) -> list[str]:
    """Files of the run folder (relative paths) that contain the secret in any common encoding."""
    if not secret:
        raise ValueError("the secret to look for is empty")
    run_dir = Path(run_dir)
    needles = _encoded_forms(secret)
    return [name for name in _iter_all_files(run_dir) if _contains_any(run_dir / name, needles)]


def _iter_all_files(run_dir: Path) -> Iterator[str]:
    yield from _iter_files(run_dir)
    if (run_dir / MANIFEST_FILE).is_file():
        yield MANIFEST_FILE


def assert_no_secret(run_dir: Path, secret: str) -> None:
    """Run before archiving: evidence that holds the deploy key would hand it to every reader of the archive."""
    leaked = find_secret(run_dir, secret)
    if leaked:
        raise SecretLeaked(f"The secret appears in {len(leaked)} file(s) of {run_dir}: {', '.join(leaked)}")


# --- the deployment's history -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One run as the deployment's ledger holds it: each step's last status, and the manifest it was sealed with."""

    run_id: str
    operator: str
    started_ms: int
    steps: dict[str, str]
    #: sha256 of the manifest of the run's last trusted seal; None when the run was never sealed.
    sealed: str | None


@dataclass(frozen=True)
class MigrationState:
    """A migration of the registry on one deployment: pending, applied, rolled back or apply failed, with the
    run that decided it and every run of it."""

    migration_id: str
    state: Literal["pending", "applied", "rolled back", "apply failed"]
    decided_by: RunRecord | None
    runs: list[RunRecord]


def _changed_documents(row: Mapping[str, Any]) -> bool:
    """An apply, or a rollback that changed documents: an executed rollback's row names its mode (a preview's
    row, written by its results, names none)."""

    return row.get("step") == names.APPLY or row.get("step") == names.ROLLBACK and str(row.get("details") or "").startswith("mode=")


def deployment_status(transport: Any) -> list[MigrationState]:
    """What the deployment's ledger holds, per migration of the registry (as Flyway's `info`): its state here
    and its runs, oldest first. Only reads (one ledger query per migration)."""
    from helpers.connection.calls import read_ledger
    from helpers.migrations import all_migrations

    states = []
    for migration in all_migrations():
        ledger = read_ledger(transport, migration.id)
        runs = {}
        for this_run in dict.fromkeys(str(r.get("runId")) for r in ledger):
            rows = run_rows(ledger, this_run)
            seals = trusted_seals(rows)
            runs[this_run] = RunRecord(
                run_id=this_run, operator=str(rows[0].get("operator")), started_ms=int(min(r.get("startedAt") or 0 for r in rows)),
                steps={str(r["step"]): str(r.get("status")) for r in rows if r.get("step") != names.SEAL},
                sealed=(seals[-1].get("evidence") or {}).get(MANIFEST_FILE) if seals else None,
            )
        changes = sorted(filter(_changed_documents, ledger), key=lambda r: r.get("startedAt") or 0)
        last = changes[-1] if changes else None
        state: Literal["pending", "applied", "rolled back", "apply failed"] = "pending"
        if last is not None and last.get("step") == names.APPLY:
            state = "applied" if last.get("status") == "passed" else "apply failed"
        elif last is not None:
            state = "rolled back"
        ordered = sorted(runs.values(), key=lambda run: run.started_ms)
        states.append(MigrationState(migration.id, state, runs.get(str(last.get("runId"))) if last else None, ordered))
    return states
