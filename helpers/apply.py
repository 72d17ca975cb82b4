"""Apply: execute exactly the dry-run's plan, in guarded batches, resumable at any point.

Correctness does not rest on the checkpoint: every item is a compare-and-set that the deployment decides
from the document itself, so re-sending a batch is harmless (already_applied). The checkpoint only saves
round trips on resume and keeps the statistics of the whole run across restarts.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from . import MIGRATION_ID, jsonio
from .backup import backup_age, read_backup
from .deployment import acquire_lock, apply_batch, record_run, release_lock, renew_lock
from .errors import PreconditionFailed
from .progress import progress
from .plan import CHANGING_ACTIONS, iter_plan_lines, read_plan
from .transport import ConvexTransport, redact_url

APPLY_DIR = "apply"
CHECKPOINT_FILE = "checkpoint.jsonl"
OUTCOMES_FILE = "outcomes.csv"
LEASE_MS = 120_000
#: Convex allows 16,000 documents written and 16 MiB of arguments per function; stay well inside both.
MAX_WRITES_PER_BATCH = 8_000
MAX_ARGUMENT_BYTES = 4 * 1024 * 1024
EXAMPLES = 10


class Outcome(BaseModel):
    id: str
    table: str
    outcome: str
    message: str = ""


class ApplySummary(BaseModel):
    migration_id: str = MIGRATION_ID
    run_id: str
    status: str
    plan_sha256: str
    backup_sha256: str
    backup_age_hours: float
    backup_age_override: bool
    deployment_url: str
    operator: str
    planned_changes: int
    scenes_migrated: int
    sessions_migrated: int
    references_created: int
    already_applied: int
    conflicts: int
    errors: list[Outcome] = Field(default_factory=list)
    conflict_examples: list[Outcome] = Field(default_factory=list)
    outcomes: dict[str, dict[str, int]]
    batches_sent: int
    batches_resumed: int
    round_trips: int
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class _Batch:
    index: int
    items: list[dict[str, Any]]


def apply_dir(run_dir: Path) -> Path:
    return Path(run_dir) / APPLY_DIR


def check_preconditions(
    transport: ConvexTransport,
    run_dir: Path,
    *,
    max_backup_age_hours: float = 24.0,
    allow_stale_backup: bool = False,
) -> tuple[Any, Any, timedelta]:
    """Refuses before anything is sent: no plan or an altered plan, no verified backup of this deployment, a stale one."""
    plan = read_plan(run_dir)
    backup = read_backup(run_dir)
    if redact_url(transport.url).rstrip("/") != str(backup.deployment_url).rstrip("/"):
        raise PreconditionFailed(
            f"The backup in {run_dir} was taken from {backup.deployment_url}, not from {redact_url(transport.url)}.",
            hint="Take the backup, the dry-run and the apply against the same deployment, in one run folder.",
        )
    age = backup_age(backup)
    if age > timedelta(hours=max_backup_age_hours) and not allow_stale_backup:
        raise PreconditionFailed(
            f"The backup is {age.total_seconds() / 3600:.1f} h old; this apply accepts at most {max_backup_age_hours:g} h.",
            hint="Take a fresh backup in a new run folder, or set allow_stale_backup=True (the override is recorded).",
        )
    return plan, backup, age


def apply_plan(
    transport: ConvexTransport,
    run_dir: Path,
    *,
    confirm: bool,
    batch_size: int = 200,
    concurrency: int = 4,
    error_budget: int = 0,
    max_backup_age_hours: float = 24.0,
    allow_stale_backup: bool = False,
    operator: str | None = None,
    show_progress: bool = True,
) -> ApplySummary:
    """Executes the plan of `run_dir`; returns the statistics the migration's README promises."""
    plan, backup, age = check_preconditions(
        transport, run_dir, max_backup_age_hours=max_backup_age_hours, allow_stale_backup=allow_stale_backup
    )
    if not confirm:
        raise PreconditionFailed(
            f"Not confirmed: {plan.changes} documents of {redact_url(transport.url)} would change. Nothing was changed.",
            hint="Confirm with the button (interactive) or run with confirm=True (papermill -p confirm True).",
        )
    if batch_size < 1 or concurrency < 1:
        raise ValueError("batch_size and concurrency must be at least 1")

    run_id = Path(run_dir).resolve().name
    operator = operator or os.environ.get("RUNBOOK_OPERATOR") or getpass.getuser()
    out = apply_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _run_folder_lock(out):
        return _apply_locked(transport, run_dir, out, plan, backup, age, run_id=run_id, operator=operator,
                             batch_size=batch_size, concurrency=concurrency, error_budget=error_budget,
                             max_backup_age_hours=max_backup_age_hours, allow_stale_backup=allow_stale_backup,
                             show_progress=show_progress)


@contextmanager
def _run_folder_lock(out: Path) -> Iterator[None]:
    """One apply per run folder on this machine. The run id is the folder's name, so a resumed apply may take
    the deployment's lock again at once; this local lock (freed by the kernel when a process dies) stops two
    live processes from sharing it."""
    with (out / "apply.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreconditionFailed(
                f"Another apply is running in {out.parent} right now.",
                hint="Wait for it to finish; a second apply of the same plan would only report already_applied.",
            ) from None
        yield


def _apply_locked(transport: ConvexTransport, run_dir: Path, out: Path, plan: Any, backup: Any, age: timedelta, *,
                  run_id: str, operator: str, batch_size: int, concurrency: int, error_budget: int,
                  max_backup_age_hours: float, allow_stale_backup: bool, show_progress: bool) -> ApplySummary:
    checkpoint_path = out / CHECKPOINT_FILE
    done, tally, complete = _read_checkpoint(checkpoint_path)
    if complete:
        # A finished apply run again: keep its checkpoint as evidence and send the whole plan once more, so
        # the deployment itself confirms every change (already_applied) instead of the checkpoint.
        checkpoint_path.replace(_next_free(out, "checkpoint", ".jsonl"))
        done, tally = set(), {}
    round_trips_before = transport.round_trips
    started = time.monotonic()
    started_ms = int(time.time() * 1000)

    lock = acquire_lock(transport, MIGRATION_ID, run_id, operator, LEASE_MS)
    if not lock["acquired"]:
        holder = lock["holder"]
        raise PreconditionFailed(
            f"Another apply holds the migration lock: run {holder['runId']} by {holder['operator']}, "
            f"lease until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(holder['expiresAt'] / 1000))}.",
            hint="Wait for it to finish (or for its lease to expire if it was killed), then run apply again.",
        )
    record_run(transport, MIGRATION_ID, run_id, step="03_apply", status="running", operator=operator, startedAt=started_ms)
    sent = 0
    status = "failed"
    try:
        bar = progress(desc="apply", total=plan.changes, initial=sum(sum(c.values()) for c in tally.values()), show=show_progress)
        last_renew = time.monotonic()
        with checkpoint_path.open("ab") as checkpoint, ThreadPoolExecutor(max_workers=concurrency) as pool:
            in_flight: dict[Future[list[dict[str, Any]]], _Batch] = {}
            batches = (b for b in _batches(run_dir, batch_size) if b.index not in done)
            exhausted = False
            while True:
                over_budget = _error_count(tally) > error_budget
                while not exhausted and not over_budget and len(in_flight) < concurrency:
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                        break
                    in_flight[pool.submit(apply_batch, transport, MIGRATION_ID, run_id, batch.items)] = batch
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    batch = in_flight.pop(future)
                    results = future.result()
                    tables = {item["id"]: item["table"] for item in batch.items}
                    entries = [{**r, "table": tables[r["id"]]} for r in results]
                    checkpoint.write(jsonio.dumps({"batch": batch.index, "results": entries}) + b"\n")
                    checkpoint.flush()
                    os.fsync(checkpoint.fileno())
                    _count(tally, entries)
                    sent += 1
                    bar.update(len(entries))
                if time.monotonic() - last_renew > LEASE_MS / 3000:
                    renew_lock(transport, MIGRATION_ID, run_id, LEASE_MS)
                    last_renew = time.monotonic()
            if exhausted:
                checkpoint.write(jsonio.dumps({"complete": True}) + b"\n")
        bar.close()
        errors_total = _error_count(tally)
        status = "passed" if errors_total <= error_budget and exhausted else "failed"
    finally:
        summary = _summary(
            run_id=run_id,
            status=status,
            plan=plan,
            backup=backup,
            age=age,
            override=allow_stale_backup and age > timedelta(hours=max_backup_age_hours),
            url=transport.url,
            operator=operator,
            tally=tally,
            checkpoint_path=checkpoint_path,
            sent=sent,
            resumed=len(done),
            round_trips=transport.round_trips - round_trips_before,
            duration=time.monotonic() - started,
        )
        _write_outcomes(checkpoint_path, out / OUTCOMES_FILE)
        record_run(
            transport,
            MIGRATION_ID,
            run_id,
            step="03_apply",
            status=status,
            operator=operator,
            startedAt=started_ms,
            finishedAt=int(time.time() * 1000),
            counts=_ledger_counts(summary),
        )
        release_lock(transport, MIGRATION_ID, run_id)
    return summary


def _batches(run_dir: Path, batch_size: int) -> Iterator[_Batch]:
    """Deterministic batches of the plan's changes: the same plan and batch size give the same batch indices."""
    items: list[dict[str, Any]] = []
    writes = size = 0
    index = 0
    for line in iter_plan_lines(run_dir):
        if line["action"] not in CHANGING_ACTIONS:
            continue
        item = _item(line)
        item_writes = 1 + len(item["insertReferences"]) + len(item["deleteReferences"])
        item_size = len(jsonio.dumps(item))
        if items and (len(items) >= batch_size or writes + item_writes > MAX_WRITES_PER_BATCH or size + item_size > MAX_ARGUMENT_BYTES):
            yield _Batch(index, items)
            index += 1
            items, writes, size = [], 0, 0
        items.append(item)
        writes += item_writes
        size += item_size
    if items:
        yield _Batch(index, items)


def _item(line: dict[str, Any]) -> dict[str, Any]:
    """A plan line as the guarded change `migration:applyBatch` executes."""
    return {
        "table": line["table"],
        "id": line["id"],
        "expect": line["expect"],
        "expectAbsent": line["expectAbsent"],
        "set": line["set"],
        "unset": [],
        "insertReferences": line["references"],
        "deleteReferences": [],
    }


def _read_checkpoint(path: Path) -> tuple[set[int], dict[str, Counter[str]], bool]:
    """Batches already answered by the deployment, their counts, and whether that run finished.
    A torn last line (a kill mid-write) is ignored: its batch is simply sent again."""
    done: set[int] = set()
    tally: dict[str, Counter[str]] = {}
    complete = False
    if not path.exists():
        return done, tally, complete
    with path.open("rb") as source:
        for raw in source:
            try:
                entry = jsonio.loads(raw)
            except ValueError:
                break
            if entry.get("complete"):
                complete = True
                continue
            done.add(entry["batch"])
            _count(tally, entry["results"])
    return done, tally, complete


def _next_free(folder: Path, stem: str, suffix: str) -> Path:
    n = 1
    while (folder / f"{stem}.{n}{suffix}").exists():
        n += 1
    return folder / f"{stem}.{n}{suffix}"


def _count(tally: dict[str, Counter[str]], entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        tally.setdefault(entry["table"], Counter())[entry["outcome"]] += 1
        tally.setdefault("_references", Counter())["created"] += len(entry.get("referenceIds", ()))


def _error_count(tally: dict[str, Counter[str]]) -> int:
    return sum(c["error"] for table, c in tally.items() if not table.startswith("_"))


def _iter_outcomes(checkpoint_path: Path, wanted: set[str]) -> Iterator[Outcome]:
    if not checkpoint_path.exists():
        return
    with checkpoint_path.open("rb") as source:
        for raw in source:
            try:
                entry = jsonio.loads(raw)
            except ValueError:
                return
            for r in entry.get("results", ()):
                if r["outcome"] in wanted:
                    yield Outcome(id=r["id"], table=r["table"], outcome=r["outcome"], message=r.get("message", ""))


def _write_outcomes(checkpoint_path: Path, csv_path: Path) -> None:
    """Every document apply did not migrate (conflicts and errors), with the deployment's reason."""
    import csv

    with csv_path.open("w", newline="", encoding="utf-8") as sink:
        writer = csv.writer(sink)
        writer.writerow(["table", "id", "outcome", "message"])
        for o in _iter_outcomes(checkpoint_path, {"conflict", "error"}):
            writer.writerow([o.table, o.id, o.outcome, o.message])


def _summary(*, run_id, status, plan, backup, age, override, url, operator, tally, checkpoint_path, sent, resumed, round_trips, duration) -> ApplySummary:  # noqa: ANN001
    def outcome(table: str, name: str) -> int:
        return tally.get(table, Counter())[name]

    tables = {table: dict(c) for table, c in tally.items() if not table.startswith("_")}
    return ApplySummary(
        run_id=run_id,
        status=status,
        plan_sha256=plan.plan_sha256,
        backup_sha256=backup.sha256,
        backup_age_hours=round(age.total_seconds() / 3600, 3),
        backup_age_override=override,
        deployment_url=redact_url(url),
        operator=operator,
        planned_changes=plan.changes,
        scenes_migrated=outcome("scenes", "applied"),
        sessions_migrated=outcome("videoSessions", "applied"),
        references_created=tally.get("_references", Counter())["created"],
        already_applied=sum(c.get("already_applied", 0) for c in tables.values()),
        conflicts=sum(c.get("conflict", 0) for c in tables.values()),
        errors=list(_iter_outcomes(checkpoint_path, {"error"})),
        conflict_examples=[o for _, o in zip(range(EXAMPLES), _iter_outcomes(checkpoint_path, {"conflict"}))],
        outcomes=tables,
        batches_sent=sent,
        batches_resumed=resumed,
        round_trips=round_trips,
        duration_s=round(duration, 3),
    )


def _ledger_counts(summary: ApplySummary) -> dict[str, int]:
    return {
        "scenesMigrated": summary.scenes_migrated,
        "sessionsMigrated": summary.sessions_migrated,
        "referencesCreated": summary.references_created,
        "alreadyApplied": summary.already_applied,
        "conflicts": summary.conflicts,
        "errors": len(summary.errors),
    }
