"""The checks an auditor runs on a run folder: every file against its manifest, the hash chain between the steps, and
with the deployment each step's results against its own ledger row and the folder against the run's first seal; and
the search for a secret in every byte of the folder.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from helpers.connection.calls import read_ledger
from helpers.evidence.archive import (
    CHUNK,
    MANIFEST_FILE,
    RESULTS_FILE,
    Manifest,
    SecretLeaked,
    StepResults,
    file_entry,
    iter_files,
    ledger_figures,
    load_json,
    read_run_id,
    run_rows,
    sha256_file,
    step_dir,
)
from helpers.evidence.checkpoint_file import checkpoint_path
from helpers.evidence.run_folder import RUN_FILE, migration_id
from helpers.steps import names


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
    problems = [*file_problems(run_dir), *_chain_problems(run_dir)]
    if transport is None:
        return ArchiveCheck(problems)

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
    sha = hash_of(run_dir / MANIFEST_FILE)
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
        problems += [f"not in the deployment's ledger: {name}" for name in iter_files(run_dir) if name not in evidence]
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


def file_problems(run_dir: Path) -> list[str]:
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
        elif (actual := file_entry(file)) != entry:
            problems.append(f"altered: {name} (manifest sha256 {entry.sha256}, found {actual.sha256})")
    problems += [f"not in the manifest: {name}" for name in iter_files(run_dir) if name not in manifest.files]
    return problems


def _json_field(path: Path, key: str) -> str | None:
    return load_json(path).get(key) if path.exists() else None


def hash_of(path: Path) -> str | None:
    return sha256_file(path) if path.exists() else None


#: Hash names that results files use, and where the value they must hold comes from.
CHAIN_SOURCES: dict[str, tuple[str, Callable[[Path], str | None]]] = {
    "plan_sha256": ("plan/plan.json", lambda d: _json_field(d / "plan" / "plan.json", "plan_sha256")),
    "backup_sha256": ("backup/backup.json", lambda d: _json_field(d / "backup" / "backup.json", "sha256")),
    "apply_results_sha256": ("03_apply/results.json", lambda d: hash_of(d / names.APPLY / RESULTS_FILE)),
    "checkpoint_sha256": ("apply's checkpoint", lambda d: hash_of(checkpoint_path(d / "apply"))),
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
        record = load_json(run_dir / record_name)
        name = file_of(record)
        if not name or hash_of(run_dir / name) != record.get(key):
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
    yield from iter_files(run_dir)
    if (run_dir / MANIFEST_FILE).is_file():
        yield MANIFEST_FILE


def assert_no_secret(run_dir: Path, secret: str) -> None:
    """Run before archiving: evidence that holds the deploy key would hand it to every reader of the archive."""
    leaked = find_secret(run_dir, secret)
    if leaked:
        raise SecretLeaked(f"The secret appears in {len(leaked)} file(s) of {run_dir}: {', '.join(leaked)}")
