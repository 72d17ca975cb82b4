"""Backup: Convex's own snapshot export, taken as `npx convex export` takes it, checked, and recorded.

Check the project's functions are deployed → request (`POST /api/export/request/zip?includeStorage=false`) →
follow `_system/cli/exports:getLatest` until the export is `completed`, `failed` or `canceled` → download
`GET /api/export/zip/<snapshot ts>`. The ZIP is one consistent instant of every table, restorable with
`npx convex import`. It is written as `*.partial`, checked (sha256, size, CRC, layout, every line is UTF-8
text in Convex's export format), and only then renamed and recorded in `backup/backup.json`; a failed
attempt leaves no file that looks like a valid backup, so the step can simply run again.
"""

from __future__ import annotations

import hashlib
import itertools
import time
import zipfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, PrivateAttr

from helpers.connection import values
from helpers.connection.calls import COUNT_SIDE_ROWS, READ_PAGE, iter_pages
from helpers.connection.errors import (
    ExportCanceled,
    ExportFailed,
    ExportInProgress,
    PreconditionFailed,
    RunbookError,
    TransientFailure,
)
from helpers.connection.transport import ConvexTransport, redact_url
from helpers.evidence.archive import sha256_file, write_json_atomic
from helpers.evidence.run_folder import locked_step, require_migration
from helpers.notebook_ui.progress import progress
from helpers.steps import names
from helpers.steps.migration import Migration

BACKUP_DIR = "backup"
BACKUP_RECORD = "backup.json"
GET_LATEST = "_system/cli/exports:getLatest"


class BackupIncomplete(RunbookError):
    hint = "Nothing usable was kept. Run the backup notebook again in this run folder (or a new one)."


class BackupSummary(BaseModel):
    zip_file: str
    sha256: str
    size_bytes: int
    snapshot_ts: int
    snapshot_time: str
    counts: dict[str, int]
    deployment_url: str
    taken_at: str
    _run_dir: Path = PrivateAttr(default=Path("."))

    @property
    def zip_path(self) -> Path:
        return self._run_dir / BACKUP_DIR / self.zip_file


def backup_dir(run_dir: Path) -> Path:
    return Path(run_dir) / BACKUP_DIR


@locked_step(names.BACKUP)
def take_backup(
    transport: ConvexTransport,
    run_dir: Path,
    migration: Migration,
    *,
    poll_seconds: float = 1.0,
    timeout_seconds: float = 3600.0,
    show_progress: bool = True,
) -> BackupSummary:
    require_migration(run_dir, migration)
    out = backup_dir(run_dir)
    if (out / BACKUP_RECORD).exists():
        raise PreconditionFailed(
            f"{out / BACKUP_RECORD} already exists: this run folder holds a backup.",
            hint="A run folder keeps the one backup its plan was made against: start a new run folder for a new backup.",
        )
    _check_functions_deployed(transport, migration)  # before the export: a missing deploy found later would strand this folder
    if migration.require is not None:
        migration.require(transport)  # e.g. its predecessor not applied: no point in a snapshot
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob("*.partial"):
        leftover.unlink()  # an earlier attempt that never completed

    _request_export(transport)
    export = _wait_for_export(transport, poll_seconds, timeout_seconds, show_progress)
    snapshot_ts = int(export["start_ts"])
    zip_name = f"snapshot_{snapshot_ts}.zip"
    partial = out / f"{zip_name}.partial"
    try:
        sha256, size = _download(transport, snapshot_ts, partial, show_progress)
        counts = check_snapshot(partial, migration.tables)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out / zip_name)

    summary = BackupSummary(
        zip_file=zip_name,
        sha256=sha256,
        size_bytes=size,
        snapshot_ts=snapshot_ts,
        snapshot_time=datetime.fromtimestamp(snapshot_ts / 1e9, UTC).isoformat(timespec="milliseconds"),
        counts=counts,
        deployment_url=redact_url(transport.url),
        taken_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    summary._run_dir = Path(run_dir)
    write_json_atomic(out / BACKUP_RECORD, summary.model_dump(mode="json"))
    return summary


def _check_functions_deployed(transport: ConvexTransport, migration: Migration) -> None:
    """Raises FunctionsNotDeployed (or DeployKeyRejected) now, while the run folder holds nothing yet: both reads
    the steps after it need (apply's statistics are confirmed by counting the side rows, after its writes)."""

    transport.function(READ_PAGE, {"table": migration.tables[0], "cursor": None, "numItems": 1})
    if migration.side_rows is not None:
        args = {"sideRows": migration.side_rows.protocol(), "migrationId": "", "runId": "", "cursor": None, "numItems": 1}
        transport.function(COUNT_SIDE_ROWS, args)


def _request_export(transport: ConvexTransport) -> None:
    """Requests an export; if the answer to our request was lost and the retry meets our own export running
    (`ExportInProgress`), that export is followed. An export that was already running before we asked is not ours."""
    before = _latest_export_id(transport)
    try:
        transport.post("/api/export/request/zip", params={"includeStorage": "false"})
    except ExportInProgress:
        if _latest_export_id(transport) == before:
            raise
        print("snapshot export: the request's answer was lost; following the export it started", flush=True)


def _latest_export_id(transport: ConvexTransport) -> str | None:
    export = transport.query(GET_LATEST, {})
    return export.get("_id") if isinstance(export, dict) else None


def _wait_for_export(transport: ConvexTransport, poll_seconds: float, timeout_seconds: float, show_progress: bool) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_seconds
    last_state = None
    while True:
        export = transport.query(GET_LATEST, {})
        state = export.get("state") if isinstance(export, dict) else None
        if state != last_state and show_progress:
            print(f"snapshot export: {state}", flush=True)
            last_state = state
        if state == "completed":
            assert isinstance(export, dict)  # the state was read from it
            return export
        if state == "failed":
            raise ExportFailed("The deployment reported the snapshot export as failed.")
        if state == "canceled":
            raise ExportCanceled("The snapshot export was canceled on the deployment before it completed.")
        if time.monotonic() > deadline:
            raise BackupIncomplete(
                f"The snapshot export was still {state!r} after {timeout_seconds:.0f} s; it continues on the server.",
                hint="Wait for it (dashboard > Settings > Snapshot export) and run the backup again, or raise timeout_minutes.",
            )
        time.sleep(poll_seconds)


def _download(transport: ConvexTransport, snapshot_ts: int, target: Path, show_progress: bool) -> tuple[str, int]:
    digest = hashlib.sha256()
    received = 0
    try:
        with transport.stream(f"/api/export/zip/{snapshot_ts}") as response, target.open("wb") as sink:
            expected = int(response.headers.get("content-length", "-1"))
            bar = progress(desc="download", total=expected if expected >= 0 else None, unit="B", unit_scale=True, show=show_progress)
            for chunk in response.iter_bytes(1 << 20):
                sink.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            bar.close()
    except TransientFailure as error:
        raise BackupIncomplete(f"The snapshot download was cut short after {received:,} bytes: {error.message}") from error
    if expected >= 0 and received != expected:
        raise BackupIncomplete(f"The snapshot download was cut short: {received:,} of {expected:,} bytes arrived.")
    return digest.hexdigest(), received


def check_snapshot(path: Path, required_tables: Iterable[str] = ()) -> dict[str, int]:
    """Documents per table, after checking Convex's export layout, every CRC, and that every line is UTF-8 text
    that decodes as Convex's export format."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise BackupIncomplete(f"{path.name} is not a readable ZIP: {error}") from error
    with archive:
        names = set(archive.namelist())
        for required in ("README.md", "_tables/documents.jsonl", *(f"{t}/documents.jsonl" for t in required_tables)):
            if required not in names:
                raise BackupIncomplete(f"{path.name} lacks {required}: not a Convex snapshot export of this deployment.")
        tables = [values.loads(line)["name"] for line in archive.read("_tables/documents.jsonl").splitlines() if line.strip()]
        counts: dict[str, int] = {}
        for table in tables:
            counts[table] = 0
            try:
                with archive.open(f"{table}/documents.jsonl") as source:
                    for number, line in enumerate(source, 1):
                        doc = _parse_checked(line, f"{path.name}: {table}/documents.jsonl line {number}")
                        if not isinstance(doc, dict) or "_id" not in doc or "_creationTime" not in doc:
                            raise BackupIncomplete(f"{path.name}: {table}/documents.jsonl line {number} is not a document.")
                        counts[table] += 1
            except (zipfile.BadZipFile, ValueError, EOFError) as error:  # CRC mismatch, truncated entry, bad JSON
                raise BackupIncomplete(f"{path.name}: {table}/documents.jsonl is damaged: {error}") from error
    return counts


def read_backup(run_dir: Path) -> BackupSummary:
    """This run folder's backup, after checking that the ZIP is the file the backup step verified."""
    record = backup_dir(run_dir) / BACKUP_RECORD
    if not record.exists():
        raise PreconditionFailed(
            f"No backup in {backup_dir(run_dir)}.",
            hint=f"Run step 01 in this run folder first: {Path(run_dir) / '01_backup_snapshot' / '01_backup_snapshot.ipynb'}.",
        )
    summary = BackupSummary.model_validate_json(record.read_bytes())
    summary._run_dir = Path(run_dir)
    actual = sha256_file(summary.zip_path) if summary.zip_path.exists() else "missing"
    if actual != summary.sha256:
        raise PreconditionFailed(
            f"The backup {summary.zip_path} does not match its recorded sha256 (found {actual[:12]}…): altered or missing.",
            hint="Take a new backup in a new run folder.",
        )
    return summary


def require_backup(run_dir: Path, needed_for: str, hint: str) -> BackupSummary:
    """`read_backup`, refused with the reason a step needs the backup (`needed_for`) and what to do (`hint`)."""
    try:
        return read_backup(run_dir)
    except PreconditionFailed as missing:
        raise PreconditionFailed(f"{needed_for}, and it is not usable: {missing.args[0]}", hint=hint) from None


def backup_age(summary: BackupSummary) -> timedelta:
    return datetime.now(UTC) - datetime.fromisoformat(summary.snapshot_time)


def iter_backup_documents(backup: BackupSummary | Path, table: str, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Streams one table of the snapshot ZIP (a BackupSummary or a ZIP path), one document at a time: those from
    `start` to `stop` (counted from 0; a worker process reads its range, the lines before it skipped unparsed)."""
    path = backup.zip_path if isinstance(backup, BackupSummary) else Path(backup)
    with zipfile.ZipFile(path) as archive:
        if f"{table}/documents.jsonl" not in archive.namelist():
            return
        with archive.open(f"{table}/documents.jsonl") as source:
            for line in itertools.islice(source, start, stop):
                yield _parse(line)


def _parse(line: bytes) -> Any:
    return values.loads_export(line)


def _parse_checked(line: bytes, where: str) -> Any:
    try:
        return _parse(line)
    except ValueError as error:  # orjson refuses bytes that are not UTF-8 and escaped lone surrogates alike
        if "surrogate" in str(error) or "UTF-8" in str(error):
            raise BackupIncomplete(f"{where} is not valid UTF-8 text: {error}.") from error
        raise BackupIncomplete(f"{where} is not Convex export JSON: {error}") from error


def live_counts(transport: ConvexTransport, tables: list[str], page_size: int = 4000) -> dict[str, int]:
    """Documents per table now (a full paged read): shown beside the snapshot's counts."""

    return {table: sum(len(page) for page in iter_pages(transport, table, page_size)) for table in tables}
