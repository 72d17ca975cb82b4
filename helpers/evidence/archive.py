"""The run folder's records: each step's results file and its ledger row, and the manifest that seals the folder.

A run folder is evidence. Every file in it is listed in manifest.json with its sha256, and the steps' results
files name the hashes of what they consumed (plan, backup, apply results), so `helpers.evidence.archive_check`
can prove both that nothing changed after the run and that apply executed the plan and backup of this same folder.

Whoever can write the folder can also reseal it, so the folder alone proves only its own consistency. The
deployment's ledger (``migrationRuns``) anchors it: each step's row records the sha256 of the files the step
read and wrote, and the seal row the manifest's sha256 and every file it lists. Sealing a run
(``helpers.sealing``) writes the pages and the manifest and records the seal.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import platform
import re
import secrets
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from helpers.connection.calls import read_ledger, record_run
from helpers.connection.errors import PreconditionFailed, RunbookError
from helpers.connection.transport import redact_url
from helpers.evidence.checkpoint_file import checkpoint_path
from helpers.evidence.run_folder import LOCK_FILE, RUN_FILE, migration_id, run_id
from helpers.paths import CHECKOUT_ROOT, installed_version

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


def now_iso() -> str:
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
    finished_at: str = Field(default_factory=now_iso)
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

    path = write_step_results(run_dir, results.step, results)
    this_run, migration = run_id(run_dir), migration_id(run_dir)
    earlier = [r for r in run_rows(read_ledger(transport, migration), this_run) if r.get("step") == results.step]
    # An attempt still open (apply records its row when it begins) is completed, keeping its start and counts.
    open_row = earlier[-1] if earlier and not earlier[-1].get("evidence") else {}
    record_run(
        transport, migration, this_run, step=results.step, status=results.status,
        operator=operator or default_operator(),
        startedAt=_step_started_ms(started_at, open_row), finishedAt=epoch_ms(datetime.now(UTC)),
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


def default_operator() -> str:
    return os.environ.get("RUNBOOK_OPERATOR") or getpass.getuser()


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


#: Set by the runner for the kernel of each step it starts: when the step began (ms since the epoch).
STEP_STARTED_ENV = "RUNBOOK_STEP_STARTED_MS"


def _step_started_ms(started_at: datetime | None, open_row: Mapping[str, Any]) -> int:
    """The caller's start, else the runner's, else the start the step's open row holds (apply records its own
    when it begins), else now: a step run cell by cell has no better record of when it began."""
    if started_at is not None:
        return epoch_ms(started_at)
    if os.environ.get(STEP_STARTED_ENV, "").isdigit():
        return int(os.environ[STEP_STARTED_ENV])
    if isinstance(open_row.get("startedAt"), int | float):
        return int(open_row["startedAt"])
    return epoch_ms(datetime.now(UTC))


def _plan_files(run_dir: Path) -> list[str]:
    record = load_json(run_dir / "plan" / "plan.json")
    return ["plan/plan.json", str(record.get("plan_file") or "plan/plan.jsonl")]


def _backup_files(run_dir: Path) -> list[str]:
    record = load_json(run_dir / "backup" / "backup.json")
    return ["backup/backup.json", *([f"backup/{record['zip_file']}"] if record.get("zip_file") else [])]


#: Hash names that results files use, and the files of the run folder (relative paths) they stand for.
EVIDENCE_FILES: dict[str, Callable[[Path], list[str]]] = {
    "backup_sha256": _backup_files,
    "plan_sha256": _plan_files,
    "checkpoint_sha256": lambda run_dir: [f"apply/{checkpoint_path(run_dir / 'apply').name}"],
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


def iter_files(run_dir: Path) -> Iterator[str]:
    """Every file of the folder as a relative POSIX path, the manifest itself excepted."""
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir).as_posix()
        if path.is_file() and relative not in (MANIFEST_FILE, LOCK_FILE):
            yield relative


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), size=path.stat().st_size)


def timestamp(value: datetime | str) -> str:
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


@dataclass(frozen=True)
class RunFacts:
    """What ran, where, by whom and when: the facts the manifest and index.html both state, gathered once so the
    two pages of a seal cannot tell different stories."""

    deployment_url: str
    operator: str
    started_at: datetime | str
    finished_at: datetime | str
    #: Every step's status in this run (a step that did not run: "not run").
    steps: Mapping[str, str]


def write_manifest(run_dir: Path, facts: RunFacts) -> Path:
    """Seals the run folder: written last, it lists every file with its hash, and what ran, where and by whom."""
    run_dir = Path(run_dir)
    manifest = Manifest(
        migration_id=migration_id(run_dir),
        run_dir=run_dir.resolve().name,
        run_id=read_run_id(run_dir),
        deployment_url=redact_url(facts.deployment_url),
        operator=facts.operator,
        started_at=timestamp(facts.started_at),
        finished_at=timestamp(facts.finished_at),
        steps=dict(facts.steps),
        runbook=_runbook_revision(),
        versions=_versions(),
        files={name: file_entry(run_dir / name) for name in iter_files(run_dir)},
    )
    path = run_dir / MANIFEST_FILE
    write_json_atomic(path, manifest)
    return path


def read_run_id(run_dir: Path) -> str | None:
    """The folder's run id without drawing one (a check must not write the folder it checks)."""
    return load_json(Path(run_dir) / RUN_FILE).get("run_id")


def read_manifest(run_dir: Path) -> Manifest | None:
    """The folder's manifest, or None if it was never sealed."""
    path = Path(run_dir) / MANIFEST_FILE
    return Manifest.model_validate_json(path.read_bytes()) if path.exists() else None


# --- checks -------------------------------------------------------------------------------------------------


def load_json(path: Path) -> dict[str, Any]:
    """A record file's fields; an unreadable one has none, so every check that needs it reports a problem."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- the deployment's history -------------------------------------------------------------------------------


