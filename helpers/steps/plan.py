"""The dry-run: stream the backup snapshot (or the live tables) page by page, let the run folder's migration
plan every document, write the plan apply will execute.

Memory stays bounded by the page size: plan lines go straight to disk, and what the migration must know
across documents lives in a scratch SQLite file (helpers/steps/scratch.py) it is handed, looked up a page at a time.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from helpers.connection import jsonio
from helpers.connection.calls import iter_pages
from helpers.connection.errors import PreconditionFailed
from helpers.connection.transport import ConvexTransport, redact_url
from helpers.evidence import compression
from helpers.evidence.archive import sha256_file, write_json_atomic
from helpers.evidence.run_folder import locked_step, require_migration
from helpers.migrations import get
from helpers.notebook_ui.progress import progress
from helpers.steps import names, parallel
from helpers.steps.backup import BackupSummary, iter_backup_documents, require_backup
from helpers.steps.migration import Migration, PlanInputs, PlanLine
from helpers.steps.parallel import Ranged, RangeResults, default_workers
from helpers.steps.plan_tally import PlanPage, PlanTally, ProblemCount, ProblemRows, UntrackedAssets
from helpers.steps.scratch import Scratch, ScratchTable, batched, few_collections, prefetch

PLAN_DIR = "plan"
PLAN_FILE = "plan.jsonl.zst"
#: The plan file of run folders written before the plan was compressed: still read (its summary names it).
UNCOMPRESSED_PLAN_FILE = "plan.jsonl"
PLAN_SUMMARY_FILE = "plan.json"
PROBLEMS_FILE = "problems.csv"


class PlanSummary(BaseModel):
    #: Required: a file that names no migration is refused, never judged as the first one's.
    migration_id: str
    plan_file: str
    plan_sha256: str
    documents: int
    created_at: str
    deployment_url: str
    backup_sha256: str | None
    parameters: dict[str, Any]
    actions: dict[str, dict[str, int]]
    by_status: dict[str, dict[str, dict[str, int]]]
    references_by_type: dict[str, int]
    problems: list[ProblemCount]
    #: Per table (only tables that have some): see UntrackedAssets.
    untracked_assets: list[UntrackedAssets] = Field(default_factory=list)

    @property
    def migration(self) -> Migration:

        return get(self.migration_id)

    @property
    def changes(self) -> int:
        changing = self.migration.changing_actions
        return sum(n for table in self.actions.values() for action, n in table.items() if action in changing)

    @property
    def references(self) -> int:
        return sum(self.references_by_type.values())


def plan_dir(run_dir: Path) -> Path:
    return Path(run_dir) / PLAN_DIR


PlanSource = Literal["snapshot", "live"]


@locked_step(names.DRY_RUN)
def build_plan(
    transport: ConvexTransport,
    run_dir: Path,
    migration: Migration,
    *,
    page_size: int = 4000,
    bucket_base_url: str | None = None,
    show_progress: bool = True,
    source: PlanSource = "snapshot",
    workers: int | None = None,
) -> PlanSummary:
    """Plans every document (changing nothing) and writes plan/plan.jsonl.zst, plan/plan.json and the CSV tables.

    `source="snapshot"` (the default) plans from this run folder's backup ZIP: one consistent instant, no
    second read of production. `source="live"` reads the deployment's tables page by page instead (the next
    page is fetched while this one is planned). Either way apply's per-document preconditions catch what
    changed since. Each source is read once; per-document state lives in a scratch SQLite file.

    `workers` (default: this machine's cores) processes share the migration's per-page work over ranges of the
    snapshot (helpers.steps.parallel); the plan's bytes are the same for any number of them."""
    require_migration(run_dir, migration)
    workers = default_workers() if workers is None else workers
    out = plan_dir(run_dir)
    _refuse_to_plan(out, workers, source)
    if migration.require is not None:
        migration.require(transport)
    snapshot = _snapshot(run_dir) if source == "snapshot" else None
    out.mkdir(parents=True, exist_ok=True)
    backup = _backup_record(run_dir)
    sources = _Sources(transport, snapshot, {table: int(n) for table, n in backup.get("counts", {}).items()}, page_size, workers, show_progress)
    tally = PlanTally(migration.changing_actions)
    plan_path, problems_path = out / PLAN_FILE, out / PROBLEMS_FILE
    plan_partial, problems_partial = out / "plan.partial.jsonl.zst", problems_path.with_suffix(".partial")
    options = {"bucket_base_url": bucket_base_url}
    # Fewer GC passes only from the snapshot: with the HTTP client in the loop its reference cycles hold page bodies
    # until a collection (helpers.steps.scratch.few_collections).
    gc_passes = few_collections() if snapshot is not None else nullcontext()
    # The plan is compressed in a thread of libzstd's own, so writing the workers' pages costs this process little.
    plan_sink = compression.open_write(plan_partial, threads=1)
    with gc_passes, Scratch() as scratch, plan_sink as sink, problems_partial.open("w", newline="", encoding="utf-8") as details:
        problem_rows = ProblemRows(details)
        problem_rows.header()
        inputs = PlanInputs(
            sources.pages, scratch, options, page_size, partial(sources.map_pages, scratch.path("ranges")),
            partial(sources.map_stored, scratch.path("ranges")), partial(sources.map_results, scratch.path("ranges")),
        )
        for line in migration.planner(inputs):
            if isinstance(line, PlanPage):  # a worker's page: written and counted whole
                sink.write(line.raw)
                details.write(line.problem_rows)
                tally.merge(line.tally)
                continue
            encoded = line if isinstance(line, PlanLine) else migration.encode(line)
            tally.add(encoded)
            sink.write(encoded.raw)
            problem_rows.add(encoded)
    plan_partial.replace(plan_path)
    problems_partial.replace(problems_path)

    summary = PlanSummary(
        migration_id=migration.id,
        plan_file=f"{PLAN_DIR}/{PLAN_FILE}",
        plan_sha256=sha256_file(plan_path),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        deployment_url=redact_url(transport.url),
        backup_sha256=backup.get("sha256"),
        parameters={"page_size": page_size, "bucket_base_url": bucket_base_url, "source": source},
        **tally.summary_fields(),
    )
    write_json_atomic(out / PLAN_SUMMARY_FILE, summary.model_dump(mode="json"))
    return summary


def _refuse_to_plan(out: Path, workers: int, source: str) -> None:
    """Refuses arguments out of range, and a folder that already holds a plan (apply executes exactly that one)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if source not in ("snapshot", "live"):
        raise ValueError(f"source must be 'snapshot' or 'live', not {source!r}")
    if (out / PLAN_SUMMARY_FILE).exists():
        raise PreconditionFailed(
            f"{out / PLAN_SUMMARY_FILE} already exists: a run folder holds one plan.",
            hint="Start a new run folder to plan again (apply executes exactly the plan its run folder holds).",
        )


@dataclass(frozen=True)
class _Sources:
    """Where a planner reads (`PlanInputs.pages`, `.map_pages`, `.map_stored`, `.map_results`): the backup snapshot, or
    the live tables when it is None."""

    transport: ConvexTransport
    snapshot: BackupSummary | None
    totals: dict[str, int]
    page_size: int
    workers: int
    show_progress: bool

    def pages(self, table: str, desc: str) -> Iterator[list[dict[str, Any]]]:
        stream = (
            batched(iter_backup_documents(self.snapshot, table), self.page_size) if self.snapshot is not None
            else prefetch(iter_pages(self.transport, table, self.page_size))
        )
        return paged_progress(stream, desc=desc, total=self.totals.get(table), show=self.show_progress)

    def map_pages(self, folder: Path, table: str, desc: str, work: Callable[[list[dict[str, Any]]], Any]) -> RangeResults:
        if self.snapshot is None:  # live pages come one at a time through this process's HTTP client
            documents = (doc for page in self.pages(table, desc) for doc in page)
            return parallel.map_pages(documents, work, page_size=self.page_size, workers=1, folder=folder, name=table)
        total = self.totals.get(table, 0)
        bar = progress(desc=desc, total=self.totals.get(table), show=self.show_progress)  # the workers' pages: whole ranges
        source = Ranged(partial(iter_backup_documents, self.snapshot.zip_path, table), total)
        return _counted(bar, total, parallel.map_pages(source, work, page_size=self.page_size, workers=self.workers, folder=folder, name=table))

    def map_stored(self, folder: Path, stored: ScratchTable, desc: str, work: Callable[[list[Any]], Any]) -> RangeResults:
        """`work` over the values a planner stored in a scratch table, in workers over ranges of its rows (from either
        source: what was read once is not read again)."""
        total = len(stored)
        bar = progress(desc=desc, total=total, show=self.show_progress)
        source = Ranged(partial(_stored_values, stored), total)
        name = f"stored-{stored.label}"
        return _counted(bar, total, parallel.map_pages(source, work, page_size=self.page_size, workers=self.workers, folder=folder, name=name))

    def map_results(self, folder: Path, results: RangeResults, desc: str, work: Callable[[Any], Any]) -> RangeResults:
        """`work` over each record of earlier workers' results, in workers over the same ranges."""
        bar = progress(desc=desc, total=len(results.files), unit="range", show=self.show_progress)  # one per worker's range
        name = f"again-{results.files[0].name.split('.')[0]}" if results.files else "again"
        return _counted(bar, len(results.files), parallel.map_records(results, work, workers=self.workers, folder=folder, name=name))


def _counted(bar: Any, total: int, results: RangeResults) -> RangeResults:
    """The workers' results, once their progress bar shows them done (they report whole ranges, not pages)."""
    bar.update(total)
    bar.close()
    return results


def _stored_values(stored: ScratchTable, start: int, stop: int | None) -> Iterator[Any]:
    return (value for _, value in stored.items(start=start, stop=stop))


def read_plan(run_dir: Path) -> PlanSummary:
    """The plan of this run folder, after checking that its plan file is the file the dry-run wrote (its sha256 as
    stored: of the compressed bytes for plan.jsonl.zst, of the text for an older folder's plan.jsonl)."""
    out = plan_dir(run_dir)
    summary_path = out / PLAN_SUMMARY_FILE
    if not summary_path.exists():
        raise PreconditionFailed(
            f"No plan in {out}.", hint=f"Run step 02 in this run folder first ({Path(run_dir) / '02_dry_run' / '02_dry_run.ipynb'}): apply executes its plan."
        )
    summary = PlanSummary.model_validate_json(summary_path.read_bytes())
    path = plan_path(run_dir)
    actual = sha256_file(path) if path.exists() else "missing"
    if actual != summary.plan_sha256:
        raise PreconditionFailed(
            f"The plan file {path} does not match the dry-run's hash "
            f"(expected {summary.plan_sha256[:12]}…, found {actual[:12]}…): it was altered or replaced.",
            hint="Never edit a plan: run the dry-run again in a new run folder.",
        )
    return summary


def plan_path(run_dir: Path) -> Path:
    """The run folder's plan file: plan.jsonl.zst, or plan.jsonl in a folder written before the plan was compressed."""
    out = plan_dir(run_dir)
    return out / UNCOMPRESSED_PLAN_FILE if (out / UNCOMPRESSED_PLAN_FILE).exists() else out / PLAN_FILE


def iter_plan_lines(run_dir: Path, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Streams the plan's lines in order (those from `start` to `stop`, counted from 0; the others are skipped
    unparsed); call read_plan first to check its hash."""
    for raw in itertools.islice(compression.iter_lines(plan_path(run_dir)), start, stop):
        yield jsonio.loads(raw)


def example_pairs(run_dir: Path, migration: Migration, n: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Up to n documents per table and planned action, and per table and problem code (so a filter on any code the
    plan found has documents to show), those that change first, as (before, after) taken from the plan itself (no
    extra reads); `before` also carries the plan's `_action`, `_problems`, the `_references` (side rows) it creates
    and their label (`_side_label`)."""
    require_migration(run_dir, migration)
    side_label = migration.side_rows.label if migration.side_rows is not None else "side rows"
    seen: Counter[str] = Counter()
    pairs = []
    for line in iter_plan_lines(run_dir):
        kinds = [f'{line["table"]}/{line["action"]}', *(f'{line["table"]}/problem {p["code"]}' for p in line.get("problems", ()))]
        if all(seen[kind] >= n for kind in kinds):
            continue
        seen.update(kinds)
        before = {"_id": line["id"], "_table": line["table"], "_action": line["action"], "_problems": line.get("problems", []),
                  "_references": line.get("references", []), "_side_label": side_label, **line["expect"]}
        after = {k: v for k, v in before.items() if k not in line.get("unset", ())}
        pairs.append((before, {**after, **line["set"]}))
    changing = migration.changing_actions
    return sorted(pairs, key=lambda pair: pair[0]["_action"] not in changing)


def paged_progress(pages: Iterable[list[Any]], *, desc: str, total: int | None, show: bool) -> Iterator[list[Any]]:
    """The pages, with a progress bar counting their documents."""
    bar = progress(desc=desc, total=total, show=show)
    for page in pages:
        yield page
        bar.update(len(page))
    bar.close()


def _snapshot(run_dir: Path) -> BackupSummary:
    """The run folder's checked backup, which the default plan reads; without it, say what to do."""
    return require_backup(
        run_dir,
        "The dry-run plans from this run folder's backup snapshot",
        hint=f"run step 01 in this run folder first ({Path(run_dir) / '01_backup_snapshot' / '01_backup_snapshot.ipynb'}), or plan from the live tables with "
        "plan_source='live' (build_plan(..., source='live'))",
    )


def _backup_record(run_dir: Path) -> dict[str, Any]:
    """The run folder's backup record, if step 01 ran: its hash goes with the plan, its counts size the progress bars."""
    path = Path(run_dir) / "backup" / "backup.json"
    return jsonio.loads(path.read_bytes()) if path.exists() else {}
