"""The run folder: each step's results file, the manifest that seals the folder, and the checks auditors run.

A run folder is evidence. Every file in it is listed in manifest.json with its sha256, and the steps' results
files name the hashes of what they consumed (plan, backup, apply results), so `check_archive` can prove both
that nothing changed after the run and that apply executed the plan and backup of this same folder.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import platform
import secrets
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, Field

from . import MIGRATION_ID
from .errors import PreconditionFailed, RunbookError
from .run_folder import LOCK_FILE, run_id

MANIFEST_FILE = "manifest.json"
RESULTS_FILE = "results.json"
CHUNK = 1 << 20
REPO_ROOT = Path(__file__).resolve().parent.parent
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
    finished_at: str = Field(default_factory=_now)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def require_passed(self) -> None:
        """Later steps call this so they never build on a step that failed or refused."""
        if not self.passed:
            raise PreconditionFailed(
                f"step {self.step} did not pass in this run folder (status: {self.status}).",
                hint=f"Fix what notebooks/{self.step}.ipynb reported and run it again with this run_dir first.",
            )


def step_dir(run_dir: Path, step: str) -> Path:
    return Path(run_dir) / step


def write_step_results(run_dir: Path, step: str, results: StepResults) -> Path:
    out = step_dir(run_dir, step)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    write_json_atomic(path, results)
    return path


def record_step(transport: Any, run_dir: Path, results: StepResults, *, operator: str | None = None) -> Path:
    """Writes a step's results.json and anchors it in the deployment's ledger (``migrationRuns``): the row of
    this run and step records the step's verdict and the sha256 of what it read, wrote and concluded, so the
    folder can later be compared with the deployment (``runbook check-archive DIR --url URL``)."""
    from .deployment import record_run  # the ledger's calls; archive stays usable without a deployment

    path = write_step_results(run_dir, results.step, results)
    evidence = {
        **{f"inputs.{k}": str(v) for k, v in results.inputs.items() if isinstance(v, str)},
        **{f"outputs.{k}": str(v) for k, v in results.outputs.items() if isinstance(v, str)},
        f"{results.step}/{RESULTS_FILE}": sha256_file(path),
    }
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    record_run(
        transport, MIGRATION_ID, run_id(run_dir), step=results.step, status=results.status,
        operator=operator or os.environ.get("RUNBOOK_OPERATOR") or getpass.getuser(),
        startedAt=now_ms, finishedAt=now_ms, evidence=evidence,
    )
    return path


def read_step_results(run_dir: Path, step: str) -> StepResults:
    path = step_dir(run_dir, step) / RESULTS_FILE
    if not path.exists():
        raise PreconditionFailed(
            f"step {step} has not run in this run folder ({path} is missing).",
            hint=f"Run notebooks/{step}.ipynb with run_dir={Path(run_dir)} first.",
        )
    return StepResults.model_validate_json(path.read_bytes())


def new_run_dir(base: Path = Path("runs")) -> Path:
    """Named by UTC start time (sorts chronologically) plus a random suffix (two runs in one second differ)."""
    run_dir = Path(base) / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    run_dir.mkdir(parents=True)
    return run_dir


# --- manifest -----------------------------------------------------------------------------------------------


class FileEntry(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    migration_id: str = MIGRATION_ID
    run_dir: str
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
    """The commit of the runbook that ran, and whether its checkout had uncommitted changes."""
    commit = _command_output(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT)
    if not commit:
        return {"commit": "unknown", "dirty": None}
    status = _command_output(["git", "status", "--porcelain"], cwd=REPO_ROOT)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _redact(url: str) -> str:
    from .transport import redact_url  # lazy: transport is not needed to hash a folder

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
        run_dir=run_dir.resolve().name,
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


def read_manifest(run_dir: Path) -> Manifest | None:
    """The folder's manifest, or None if it was never sealed."""
    path = Path(run_dir) / MANIFEST_FILE
    return Manifest.model_validate_json(path.read_bytes()) if path.exists() else None


# --- checks -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveCheck:
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_archive(run_dir: Path) -> ArchiveCheck:
    """Every listed file present and unchanged, nothing unlisted, and each step consumed this folder's own files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return ArchiveCheck([f"{run_dir} is not a directory"])
    return ArchiveCheck([*_file_problems(run_dir), *_chain_problems(run_dir)])


def _file_problems(run_dir: Path) -> list[str]:
    path = run_dir / MANIFEST_FILE
    if not path.exists():
        return [f"{MANIFEST_FILE} is missing: the folder was never sealed, nothing can be checked against it"]
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
    "apply_results_sha256": ("03_apply/results.json", lambda d: _hash_of(d / "03_apply" / RESULTS_FILE)),
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
