"""Apply: execute exactly the dry-run's plan, in guarded batches, resumable at any point.

Correctness does not rest on the checkpoint: every item is a compare-and-set that the deployment decides
from the document itself, so re-sending a batch is harmless (already_applied). The checkpoint only saves
round trips on resume. The statistics are not what one process happened to hear either: they are derived
from the deployment's last word on every planned document (in its target state or not) and confirmed by
counting the side rows (helpers.steps.migration.SideRows) that carry this run's id, so kills, resumes, dropped responses and re-runs
all report the same figures.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from collections import Counter
from collections.abc import Container, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from helpers.connection import jsonio
from helpers.connection.calls import (
    Chain,
    acquire_lock,
    apply_batch,
    count_side_rows,
    iter_side_row_owners,
    read_ledger,
    record_run,
    release_lock,
    renew_lock,
)
from helpers.connection.errors import (
    ChainBroken,
    LeaseLost,
    LockHeld,
    NewRunFolderNeeded,
    PreconditionFailed,
    RunbookError,
    StatisticsUnconfirmed,
    StepNotPassed,
)
from helpers.connection.transport import ConvexTransport, redact_url
from helpers.evidence import checkpoint_file
from helpers.evidence.checkpoint_file import CHECKPOINT_FILE as CHECKPOINT_FILE  # re-exported: the step names its file
from helpers.evidence.checkpoint_file import COMPLETE, iter_entries
from helpers.evidence.run_folder import locked_step, operator_for, require_migration
from helpers.evidence.run_folder import run_id as folder_run_id
from helpers.notebook_ui.progress import progress
from helpers.steps import names
from helpers.steps.backup import backup_age, read_backup
from helpers.steps.chain import executed_rollback, for_apply, refusal, refused_batch
from helpers.steps.migration import Migration
from helpers.steps.plan import PlanSummary, iter_plan_lines, read_plan
from helpers.steps.scratch import Scratch

APPLY_DIR = "apply"
OUTCOMES_FILE = "outcomes.csv"
LEASE_MS = 120_000
#: Convex allows 16,000 documents written and 16 MiB of arguments per function, and 1 s of execution.
CONVEX_MAX_WRITES = 16_000
CONVEX_MAX_ARGUMENT_BYTES = 16 * 1024 * 1024
CONVEX_MAX_EXECUTION_S = 1.0
#: Batches stay well inside the write and argument limits whatever their size.
MAX_WRITES_PER_BATCH = CONVEX_MAX_WRITES // 2
MAX_ARGUMENT_BYTES = CONVEX_MAX_ARGUMENT_BYTES // 4
EXAMPLES = 10
IN_TARGET = ("applied", "already_applied")


class Outcome(BaseModel):
    id: str
    table: str
    outcome: str
    message: str = ""


class ApplySummary(BaseModel):
    """What apply reports. The migrated/created figures count what this run did in total, across every
    resume and re-run of it, as the deployment holds it; `recheck` says this call only re-confirmed them."""

    #: Required: a file that names no migration is refused, never judged as the first one's.
    migration_id: str
    run_id: str
    status: str
    #: True when the plan had already been applied completely by this run folder and this call, re-sending it so
    #: the deployment confirms every change, wrote nothing: the figures stay those of the run that applied it.
    recheck: bool = False
    plan_sha256: str
    backup_sha256: str
    backup_age_hours: float
    backup_age_override: bool
    deployment_url: str
    operator: str
    planned_changes: int
    #: Per table: planned documents now in their target state because this run changed them (not someone else).
    migrated: dict[str, int]
    #: Side rows in the deployment that carry this run's id (0 for a migration that creates none), per group.
    references_created: int
    references_by_group: dict[str, int] = Field(default_factory=dict)
    #: Planned documents found in their target state that this run did not write (someone else did).
    already_applied: int
    conflicts: int
    errors: list[Outcome] = Field(default_factory=list)
    conflict_examples: list[Outcome] = Field(default_factory=list)
    #: Per table: documents migrated by this run ("applied"), already applied by others, conflicts, errors.
    outcomes: dict[str, dict[str, int]]
    #: Per table: the deployment's answers recorded in the checkpoint, across resumes (a batch re-sent after a
    #: kill or a dropped response answers already_applied for what an earlier attempt of this run wrote).
    answers: dict[str, dict[str, int]] = Field(default_factory=dict)
    #: The references counted in the deployment equal those the plan gives the documents counted migrated (after
    #: attributing documents someone else brought to their target state to them). An apply that sent its whole
    #: plan without confirming them has status "unconfirmed", never "passed".
    statistics_confirmed: bool = False
    batches_sent: int
    batches_resumed: int
    batch_sizes: dict[str, int] = Field(default_factory=dict)
    lease_ms: int = LEASE_MS
    round_trips: int
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class _Batch:
    #: Plan line numbers (0-based) of the batch's first item and one past its last item.
    start: int
    end: int
    items: list[dict[str, Any]]
    writes: int
    argument_bytes: int
    #: The plan line number of each item.
    numbers: list[int]


@dataclass
class BatchSizer:
    """Adaptive batch size, after get-convex/migrations: a batch that hits a Convex limit is halved (and the
    size that failed is remembered as a ceiling); a batch that used at most half of every limit lets the
    size grow toward the configured one, in proportion to the room left, but never back to a failed size."""

    configured: int
    size: int = 0
    failed_at: int | None = None
    target_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.configured < 1:
            raise ValueError("batch_size must be at least 1")
        self.size = self.size or self.configured

    def after_limit(self, tried: int) -> None:
        self.size = max(1, min(self.size, tried // 2))
        self.failed_at = tried if self.failed_at is None else min(self.failed_at, tried)

    def after_success(self, sent: int, used_ratio: float) -> None:
        if sent < self.size or used_ratio > self.target_ratio:
            return  # a short batch (the plan's end) or a busy call says nothing about room to grow
        room = self.size * self.target_ratio / used_ratio if used_ratio > 0 else self.size + 1
        grown = max(self.size + 1, int(min(room, self.configured)))
        if self.failed_at is not None and grown >= self.failed_at:
            grown = max(self.size, min((self.size + self.failed_at) // 2, self.failed_at - 1))
        self.size = max(1, min(grown, self.configured))


def used_ratio(writes: int, argument_bytes: int, seconds: float) -> float:
    """The share of Convex's per-call limits one batch used, by its tightest limit (wall time stands in for
    execution time: it includes the network, so it errs on the side of smaller batches)."""
    return max(writes / CONVEX_MAX_WRITES, argument_bytes / CONVEX_MAX_ARGUMENT_BYTES, seconds / CONVEX_MAX_EXECUTION_S)


class DeploymentLease:
    """The deployment lock's lease, renewed in the background every lease/3, also while batches are in flight.
    `ensure()` is called before anything is sent: it fails once a renewal was refused, and renews first when
    the last confirmed renewal may have run out (a paused process must not send on an expired lease)."""

    def __init__(self, transport: ConvexTransport, run_id: str, lease_ms: int, granted_at: float) -> None:
        self.transport = transport
        self.run_id = run_id
        self.lease_s = lease_ms / 1000
        self.lease_ms = lease_ms
        self.valid_until = granted_at + self.lease_s
        self.lost: LeaseLost | None = None
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_periodically, name="lease-renewal", daemon=True)

    def __enter__(self) -> DeploymentLease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def ensure(self) -> None:
        if self.lost is None and time.monotonic() > self.valid_until - self.lease_s / 3:
            self.renew()
        if self.lost is not None:
            raise self.lost

    def renew(self) -> None:
        with self._guard:
            if self.lost is not None:
                return
            asked_at = time.monotonic()
            answer = renew_lock(self.transport, self.run_id, self.lease_ms)
            if answer.get("renewed"):
                self.valid_until = asked_at + self.lease_s
            else:
                self.lost = LeaseLost(
                    f"lease lost: run {self.run_id} no longer holds the migration lock (its lease of "
                    f"{self.lease_s:g} s ran out and another run took it); apply stopped and sent nothing more."
                )

    def _renew_periodically(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except RunbookError:
                pass  # a failed renewal is retried; ensure() renews before sending once the lease may be gone
            if self.lost is not None:
                return


def take_migration_lock(
    transport: ConvexTransport, migration_id: str, run_id: str, operator: str, lease_ms: int, chain: Chain
) -> float:
    """Takes the deployment's one lock for this run (apply and rollback of any migration alike: each changes
    documents), in the same transaction as the chain check, or refuses naming the holder (its run, operator and
    migration) or what breaks the chain. Returns when it was asked for, the start of the lease's clock."""
    asked_at = time.monotonic()
    lock = acquire_lock(transport, migration_id, run_id, operator, lease_ms, chain)
    if lock["acquired"]:
        return asked_at
    if "chain" in lock:
        raise refusal(lock["chain"], migration_id, "Nothing was sent.")
    holder = lock["holder"]
    raise LockHeld(
        f"Another run holds the deployment lock: run {holder['runId']} by {holder['operator']}, writing migration "
        f"{holder['migrationId']}, lease until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(holder['expiresAt'] / 1000))}. "
        "One run writes to a deployment at a time. Nothing was sent."
    )


def apply_dir(run_dir: Path) -> Path:
    return Path(run_dir) / APPLY_DIR


@dataclass(frozen=True)
class ApplySettings:
    """How apply sends the plan (the tuning knobs, apart from what it sends and to whom); refused when one that
    counts is below 1, before anything is read or sent."""

    batch_size: int = 200
    concurrency: int = 4
    #: Documents that may end in an error before apply stops (counted in this call).
    error_budget: int = 0
    lease_ms: int = LEASE_MS
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.concurrency < 1 or self.lease_ms < 1:
            raise ValueError("batch_size, concurrency and lease_ms must be at least 1")


def check_preconditions(
    transport: ConvexTransport,
    run_dir: Path,
    migration: Migration,
    *,
    max_backup_age_hours: float = 24.0,
    allow_stale_backup: bool = False,
) -> tuple[PlanSummary, Any, timedelta]:
    """Refuses before anything is sent: a folder that runs another migration, no plan or an altered plan, no
    verified backup of this deployment, a stale one, a deployment the migration is not ready for (its `require`,
    e.g. its predecessor not applied)."""
    require_migration(run_dir, migration)
    plan = read_plan(run_dir)
    if migration.require is not None:
        migration.require(transport)
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


def check_no_apply_since_backup(ledger: list[dict[str, Any]], run_id: str, snapshot_ts_ns: int, snapshot_time: str) -> None:
    """Refuses when another run's apply (or executed rollback: a preview changes nothing) ran after this run's
    snapshot: the documents it changed are not what this run's plan expects, so this plan is stale (its
    compare-and-set would turn them into conflicts)."""
    for row in ledger:
        if not (row.get("step") == names.APPLY or executed_rollback(row)) or row["runId"] == run_id:
            continue
        last_ms = max(row["startedAt"], row.get("finishedAt") or 0)
        if last_ms * 1_000_000 > snapshot_ts_ns:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last_ms / 1000))
            did = "applied" if row["step"] == names.APPLY else "rolled back"
            raise NewRunFolderNeeded(
                f"Run {row['runId']} by {row['operator']} {did} this migration at {when}, after this run's backup "
                f"({snapshot_time}): this run's plan no longer describes the deployment. Nothing was sent."
            )


@locked_step(names.APPLY)
def apply_plan(
    transport: ConvexTransport,
    run_dir: Path,
    migration: Migration,
    *,
    confirm: bool,
    settings: ApplySettings = ApplySettings(),
    max_backup_age_hours: float = 24.0,
    allow_stale_backup: bool = False,
) -> ApplySummary:
    """Executes the plan of `run_dir`; returns the statistics the migration's README promises. `settings`: how
    it sends (batch size, concurrency, error budget, lease, progress); the backup's age limit and its override
    are preconditions (check_preconditions), checked before anything is sent. The operator is the folder's
    (operator_for: `runbook new-run --operator`, else RUNBOOK_OPERATOR, else the user)."""
    plan, backup, age = check_preconditions(
        transport, run_dir, migration, max_backup_age_hours=max_backup_age_hours, allow_stale_backup=allow_stale_backup
    )
    if not confirm:
        raise PreconditionFailed(
            f"Not confirmed: {plan.changes} documents of {redact_url(transport.url)} would change. Nothing was changed.",
            hint="Confirm with the button (interactive) or run with confirm=True (papermill -p confirm True).",
        )
    out = apply_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _Apply(
        transport, Path(run_dir), out, migration, plan, backup, age,
        run_id=folder_run_id(run_dir),
        operator=operator_for(run_dir),
        settings=settings,
        override=allow_stale_backup and age > timedelta(hours=max_backup_age_hours),
    ).run()


def raise_unless_passed(summary: ApplySummary, run_dir: Path, error_budget: int) -> None:
    """The error that says why apply did not pass and what to do next (notebook 03's last cell)."""
    if summary.passed:
        return
    if summary.status == "unconfirmed":
        raise StatisticsUnconfirmed(
            f"Apply sent its whole plan, but the deployment holds {summary.references_created:,} side rows of this run, "
            f"not those of the {sum(summary.migrated.values()):,} documents counted migrated: the statistics are not "
            "confirmed (did the deployment restart and lose writes?). It did not pass.",
            hint=f"Resume in this run folder: runbook run --url {summary.deployment_url} --run-dir {run_dir} "
            "--steps 03_apply,04_verify --confirm (it sends the plan again; the deployment confirms every document).",
        )
    raise StepNotPassed(
        f"Apply did not pass: {len(summary.errors)} documents ended in an error (budget {error_budget}), or the plan "
        "was not sent to its end. See the tables above and apply/outcomes.csv.",
        hint="Correct what the errors name, then run apply again in this run folder: it sends again every document "
        "that did not apply.",
    )


@dataclass
class _Apply:
    transport: ConvexTransport
    run_dir: Path
    out: Path
    migration: Migration
    plan: PlanSummary
    backup: Any
    age: timedelta
    run_id: str
    operator: str
    settings: ApplySettings
    override: bool
    sent: int = 0
    written: int = 0
    #: Documents that ended in an error in this call: what the error budget counts (a resume sends earlier
    #: attempts' errors again, so they are not held against it).
    attempt_errors: int = 0
    sizes: Counter[int] = field(default_factory=Counter)

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_file.checkpoint_path(self.out)

    @property
    def chain(self) -> Chain:
        """What the chain requires of the deployment: asked when the lock is taken and by every batch."""
        return for_apply(self.migration)

    @property
    def _written_fields(self) -> frozenset[str]:
        return frozenset().union(*self.migration.owned_fields.values())

    def run(self) -> ApplySummary:
        checkpoint = read_checkpoint(self.checkpoint_path)
        applied_before = checkpoint.complete or checkpoint_file.has_kept(self.out)
        round_trips_before = self.transport.round_trips
        started = time.monotonic()
        started_ms = int(time.time() * 1000)

        migration_id, settings = self.migration.id, self.settings
        asked_at = take_migration_lock(self.transport, migration_id, self.run_id, self.operator, settings.lease_ms, self.chain)
        try:
            check_no_apply_since_backup(
                read_ledger(self.transport, migration_id), self.run_id, self.backup.snapshot_ts, self.backup.snapshot_time
            )
        except BaseException:
            release_lock(self.transport, self.run_id)  # refused before anything was sent or recorded
            raise
        if checkpoint.complete:
            # A finished apply run again: keep its checkpoint as evidence and send the whole plan once more, so
            # the deployment itself confirms every change; the figures, derived from the deployment, stay.
            self.checkpoint_path.replace(checkpoint_file.kept_path(self.checkpoint_path))
            checkpoint = Checkpoint()
        status = "failed"
        failure: BaseException | None = None
        try:
            record_run(self.transport, migration_id, self.run_id, step=names.APPLY, status="running",
                       operator=self.operator, startedAt=started_ms)
            with DeploymentLease(self.transport, self.run_id, settings.lease_ms, asked_at) as lease:
                exhausted = self._send_plan(checkpoint, lease)
            status = "passed" if exhausted and self.attempt_errors <= settings.error_budget else "failed"
        except BaseException as error:
            failure = error
            raise
        finally:
            # Only a call that wrote nothing is a re-check (a deployment that lost documents has them written again).
            recheck = applied_before and not self.written
            summary = self._summary(
                status=status, recheck=recheck, checkpoint=checkpoint, count_references=failure is None,
                round_trips=self.transport.round_trips - round_trips_before, duration=time.monotonic() - started,
            )
            if summary.status == "passed" and not summary.statistics_confirmed:
                summary.status = status = "unconfirmed"  # the deployment does not hold what the figures say
            unwritten: OSError | None = None
            try:
                _write_outcomes(self.checkpoint_path, self.out / OUTCOMES_FILE, checkpoint)
            except OSError as error:  # e.g. the disk is full: the ledger row below must still be closed
                if failure is not None:
                    failure.add_note(f"apply/outcomes.csv could not be written either: {error}")
                else:
                    unwritten = error
                    summary.status = status = "failed"
            # A re-check leaves the apply's finish time: other runs' stale-plan check reads it.
            finished_ms = None if recheck else int(time.time() * 1000)
            try:
                record_run(
                    self.transport, migration_id, self.run_id, step=names.APPLY, status=status, operator=self.operator,
                    startedAt=started_ms, finishedAt=finished_ms, counts=ledger_counts(self.migration, summary),
                    details=jsonio.dumps({"recheck": recheck, "statistics_confirmed": summary.statistics_confirmed}).decode(),
                )
                release_lock(self.transport, self.run_id)
            except RunbookError:
                if failure is None:
                    raise  # otherwise the deployment's failure is already on its way to the operator
        if unwritten is not None:
            raise unwritten
        return summary

    def _send_plan(self, checkpoint: Checkpoint, lease: DeploymentLease) -> bool:
        """Sends every batch not in the checkpoint; True when the plan was sent to its end."""
        settings = self.settings
        sizer = BatchSizer(settings.batch_size)
        batches = _PlanBatches(self.run_dir, checkpoint.done, checkpoint.retry_lines, self.migration)
        bar = progress(desc="apply", total=self.plan.changes, initial=checkpoint.answered, show=settings.show_progress)
        stopped: LeaseLost | None = None
        exhausted = False
        path = self.checkpoint_path  # a folder's plain checkpoint is continued as such, else a compressed one begins
        with path.open("ab") as sink, ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
            in_flight: dict[Future[tuple[list[dict[str, Any]], list[int], int, float]], _Batch] = {}
            while True:
                while stopped is None and not exhausted and self.attempt_errors <= settings.error_budget and len(in_flight) < settings.concurrency:
                    try:
                        lease.ensure()
                    except LeaseLost as lost:
                        stopped = lost
                        break
                    batch = batches.next(sizer.size)
                    if batch is None:
                        exhausted = True
                        break
                    in_flight[pool.submit(self._send, batch, lease)] = batch
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    batch = in_flight.pop(future)
                    try:
                        results, limits, calls, seconds = future.result()
                    except LeaseLost as lost:
                        stopped = stopped or lost
                        continue
                    for tried in limits:
                        sizer.after_limit(tried)
                    if not limits:
                        sizer.after_success(len(batch.items), used_ratio(batch.writes, batch.argument_bytes, seconds))
                    tables = {item["id"]: (item["table"], len(item["insertReferences"])) for item in batch.items}
                    entries = [{**r, "table": tables[r["id"]][0], "refs": tables[r["id"]][1]} for r in results]
                    numbers = {item["id"]: number for item, number in zip(batch.items, batch.numbers, strict=False)}
                    # The plan lines of documents that ended in an error: a resume sends them again.
                    retry = {e["id"]: numbers[e["id"]] for e in entries if e["outcome"] == "error"}
                    line = {"start": batch.start, "end": batch.end, "size": len(batch.items), "calls": calls,
                            "limit_hits": len(limits), "results": entries, **({"retry": retry} if retry else {})}
                    checkpoint_file.append(sink, path, line)
                    checkpoint.add(entries, retry)
                    self.attempt_errors += len(retry)
                    self.written += sum(1 for e in entries if e["outcome"] == "applied")
                    self.sent += 1
                    self.sizes[len(batch.items)] += 1
                    bar.update(len(entries))
            if exhausted and stopped is None:
                checkpoint_file.append(sink, path, COMPLETE)
        bar.close()
        if stopped is not None:
            raise stopped
        return exhausted

    def _send(self, batch: _Batch, lease: DeploymentLease) -> tuple[list[dict[str, Any]], list[int], int, float]:
        """One batch (split by the deployment helper when it hits a limit), with the limits it hit and its calls."""
        limits: list[int] = []
        calls = 0

        def before_call() -> None:
            nonlocal calls
            lease.ensure()
            calls += 1

        began = time.monotonic()
        try:
            results = apply_batch(
                self.transport, self.migration.id, self.run_id, batch.items, guard=self.chain, on_limit=limits.append,
                before_call=before_call, written_fields=self._written_fields, side_rows=self.migration.side_rows,
            )
        except ChainBroken as broken:
            raise refused_batch(broken, self.migration.id, self.run_id) from broken
        return results, limits, calls, time.monotonic() - began

    def _summary(self, *, status: str, recheck: bool, checkpoint: Checkpoint, count_references: bool,
                 round_trips: int, duration: float) -> ApplySummary:
        by_type: Counter[str] | None = None
        side = self.migration.side_rows
        if count_references:  # a migration that creates no side rows has none to count
            by_type = count_side_rows(self.transport, side, self.migration.id, self.run_id) if side is not None else Counter()
        figures = checkpoint.figures()
        confirmed = by_type is not None and sum(by_type.values()) == figures.planned_references
        if by_type is not None and not confirmed and side is not None:
            # Some document reached its target state without this run's side rows: attribute each one.
            with Scratch() as scratch:  # one id per document: kept on disk, not in memory
                ours = scratch.table("ours")
                ours.load((owner, None) for owner in iter_side_row_owners(self.transport, side, self.migration.id, self.run_id))
                figures = read_checkpoint(self.checkpoint_path, ours=ours).figures()
            # Confirmed only if the figures as now attributed agree with the count (a run that lost some of its
            # references, a restarted deployment that dropped writes, still disagrees: never "passed").
            confirmed = sum(by_type.values()) == figures.planned_references
        tables = {table: dict(c) for table, c in figures.outcomes.items()}
        return ApplySummary(
            migration_id=self.migration.id,
            run_id=self.run_id,
            status=status,
            recheck=recheck,
            plan_sha256=self.plan.plan_sha256,
            backup_sha256=self.backup.sha256,
            backup_age_hours=round(self.age.total_seconds() / 3600, 3),
            backup_age_override=self.override,
            deployment_url=redact_url(self.transport.url),
            operator=self.operator,
            planned_changes=self.plan.changes,
            migrated={table: tables.get(table, {}).get("applied", 0) for table in self.migration.tables},
            references_created=sum(by_type.values()) if by_type is not None else figures.planned_references,
            references_by_group=dict(by_type or {}),
            already_applied=sum(c.get("already_applied", 0) for c in tables.values()),
            conflicts=sum(c.get("conflict", 0) for c in tables.values()),
            errors=list(_final_errors(self.checkpoint_path, checkpoint)),
            conflict_examples=[o for _, o in zip(range(EXAMPLES), _iter_outcomes(self.checkpoint_path, {"conflict"}), strict=False)],
            outcomes=tables,
            answers={table: dict(c) for table, c in checkpoint.answers.items()},
            statistics_confirmed=confirmed,
            batches_sent=self.sent,
            batches_resumed=checkpoint.lines_read,
            batch_sizes={str(size): n for size, n in sorted(self.sizes.items())},
            lease_ms=self.settings.lease_ms,
            round_trips=round_trips,
            duration_s=round(duration, 3),
        )


class _PlanBatches:
    """The plan's changes in plan order, cut into batches of the size asked for each time, skipping the plan
    lines a checkpoint already holds final answers for (ranges of plan line numbers, so sizes may change freely;
    a line whose last answer was an error, in `retry`, is sent again)."""

    def __init__(self, run_dir: Path, done: list[tuple[int, int]], retry: Container[int], migration: Migration) -> None:
        self._lines = self._pending(run_dir, done, retry, migration)
        self._held: tuple[int, dict[str, Any]] | None = None

    @staticmethod
    def _pending(
        run_dir: Path, done: list[tuple[int, int]], retry: Container[int], migration: Migration
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        ranges = iter(done)
        current = next(ranges, None)
        for number, line in enumerate(iter_plan_lines(run_dir)):
            while current is not None and number >= current[1]:
                current = next(ranges, None)
            if current is not None and current[0] <= number and number not in retry:
                continue
            if migration.changes(line):
                yield number, _item(line)

    def next(self, size: int) -> _Batch | None:
        items: list[dict[str, Any]] = []
        numbers: list[int] = []
        start = end = 0
        writes = argument_bytes = 0
        while len(items) < size:
            entry = self._held or next(self._lines, None)
            self._held = None
            if entry is None:
                break
            number, item = entry
            item_writes = 1 + len(item["insertReferences"]) + len(item["deleteReferences"])
            item_bytes = len(jsonio.dumps(item))
            if items and (writes + item_writes > MAX_WRITES_PER_BATCH or argument_bytes + item_bytes > MAX_ARGUMENT_BYTES):
                self._held = entry
                break
            if not items:
                start = number
            items.append(item)
            numbers.append(number)
            end = number + 1
            writes += item_writes
            argument_bytes += item_bytes
        return _Batch(start, end, items, writes, argument_bytes, numbers) if items else None


def _item(line: dict[str, Any]) -> dict[str, Any]:
    """A plan line as the guarded change `migration:applyBatch` executes."""
    return {
        "table": line["table"],
        "id": line["id"],
        "expect": line["expect"],
        "expectAbsent": line["expectAbsent"],
        "set": line["set"],
        "unset": line.get("unset", []),
        "insertReferences": line["references"],
        "deleteReferences": [],
    }


@dataclass
class Figures:
    outcomes: dict[str, Counter[str]]
    planned_references: int


@dataclass
class Checkpoint:
    """What a checkpoint file holds, in bounded memory: the plan line ranges answered (merged), the
    deployment's answers per table, and the derived figures. `ours`, when given, names the documents that
    hold references of this run: an already_applied document with planned references outside it was put in
    its target state by someone else. A document answered with an error keeps its plan line in `pending_errors`
    until a later answer replaces it: the figures count each document's last answer only."""

    ours: Container[str] | None = None
    done: list[tuple[int, int]] = field(default_factory=list)
    #: Document id -> plan line number, for the documents whose last answer was an error (sent again on resume).
    pending_errors: dict[str, int] = field(default_factory=dict)
    answers: dict[str, Counter[str]] = field(default_factory=dict)
    derived: dict[str, Counter[str]] = field(default_factory=dict)
    planned_references: int = 0
    complete: bool = False
    lines_read: int = 0

    @property
    def answered(self) -> int:
        return sum(sum(c.values()) for c in self.answers.values())

    @property
    def retry_lines(self) -> set[int]:
        return set(self.pending_errors.values())

    def add_range(self, start: int, end: int) -> None:
        self.done.append((start, end))
        self.done.sort()
        merged: list[tuple[int, int]] = []
        for low, high in self.done:
            if merged and low <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        self.done = merged

    def add(self, entries: list[dict[str, Any]], retry: dict[str, int] | None = None) -> None:
        """Answers of one batch; `retry` maps the documents answered with an error to their plan lines."""
        for entry in entries:
            if self.pending_errors.pop(entry["id"], None) is not None:  # an earlier error, answered again now
                for counts in (self.answers[entry["table"]], self.derived[entry["table"]]):
                    counts.subtract(("error",))
                    if not counts["error"]:
                        del counts["error"]
            outcome = entry["outcome"]
            self.answers.setdefault(entry["table"], Counter())[outcome] += 1
            if outcome in IN_TARGET:
                refs = entry.get("refs", 0)
                if outcome == "already_applied" and self.ours is not None and refs and entry["id"] not in self.ours:
                    derived = "already_applied"
                else:
                    derived = "applied"  # in its target state, which it was not at plan time: this run did it
                    self.planned_references += refs
            else:
                derived = outcome
            self.derived.setdefault(entry["table"], Counter())[derived] += 1
        self.pending_errors.update(retry or {})

    def figures(self) -> Figures:
        return Figures(self.derived, self.planned_references)


def read_checkpoint(path: Path, ours: Container[str] | None = None) -> Checkpoint:
    """The checkpoint's contents. A torn or unreadable entry (a kill mid-write: a frame or line cut short) and
    everything after it is cut off the file, so appending continues after the last whole entry and its batches
    are simply sent again."""
    checkpoint = Checkpoint(ours=ours)
    if not path.exists():
        return checkpoint
    good_until = 0
    for entry, end in iter_entries(path):
        good_until = end
        if entry.get("complete"):
            checkpoint.complete = True
            continue
        checkpoint.lines_read += 1
        checkpoint.add_range(entry["start"], entry["end"])
        checkpoint.add(entry["results"], entry.get("retry"))
    if good_until < path.stat().st_size:
        with path.open("r+b") as sink:
            sink.truncate(good_until)
            sink.flush()
            os.fsync(sink.fileno())
    return checkpoint


def _iter_outcomes(checkpoint_path: Path, wanted: set[str]) -> Iterator[Outcome]:
    for entry, _ in iter_entries(checkpoint_path):
        for r in entry.get("results", ()):
            if r["outcome"] in wanted:
                yield Outcome(id=r["id"], table=r["table"], outcome=r["outcome"], message=r.get("message", ""))


def _final_errors(checkpoint_path: Path, checkpoint: Checkpoint) -> Iterator[Outcome]:
    """The documents whose last answer is an error, each once, with its last message (an error a resume then
    applied is no longer one)."""
    last: dict[str, Outcome] = {}
    for outcome in _iter_outcomes(checkpoint_path, {"error"}):
        if outcome.id in checkpoint.pending_errors:
            last[outcome.id] = outcome
    return iter(last.values())


def _write_outcomes(checkpoint_path: Path, csv_path: Path, checkpoint: Checkpoint) -> None:
    """Every document apply did not migrate (conflicts and errors), with the deployment's reason."""

    with csv_path.open("w", newline="", encoding="utf-8") as sink:
        writer = csv.writer(sink)
        writer.writerow(["table", "id", "outcome", "message"])
        for o in _iter_outcomes(checkpoint_path, {"conflict"}):
            writer.writerow([o.table, o.id, o.outcome, o.message])
        for o in _final_errors(checkpoint_path, checkpoint):
            writer.writerow([o.table, o.id, o.outcome, o.message])


def ledger_counts(migration: Migration, summary: ApplySummary) -> dict[str, int]:
    """Apply's figures as its ledger row holds them: `<label>Migrated` per table (e.g. sessionsMigrated)."""
    return {
        **{f"{migration.label(table)}Migrated": n for table, n in summary.migrated.items()},
        "referencesCreated": summary.references_created,
        "alreadyApplied": summary.already_applied,
        "conflicts": summary.conflicts,
        "errors": len(summary.errors),
    }

