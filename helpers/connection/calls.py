"""The migration's calls to its Convex functions (convex/migration.ts, convex/migrationRuns.ts).

Reads are streamed page by page; a batch write that exceeds a Convex limit is split, and a batch that
fails as a whole is bisected until the failing document is isolated and reported as an ``error`` result,
so one bad document never blocks the others and never goes unreported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from helpers.connection.errors import (
    ArgumentValidationError,
    ChainBroken,
    FunctionFailed,
    FunctionTerminated,
    LeaseLost,
    LimitExceeded,
    SchemaNotDeployed,
)
from helpers.connection.transport import ConvexTransport

READ_PAGE = "migration:readPage"
#: applyBatch's refusals of a run that does not hold the deployment lock (convex/migration.ts).
LOCK_HELD_BY_OTHER = "the migration lock is held by run"
LOCK_NOT_HELD = "the deployment lock is not held by run"
#: The `code` of applyBatch's ConvexError when the migration chain no longer allows a guarded batch.
CHAIN_BROKEN = "chain_broken"
#: A migration chain the deployment checks before a write: the migrations that must be in effect (`inEffect`) and
#: those that must not (`notInEffect`) (convex/migrationRuns.ts `chainProblem`).
Chain = dict[str, list[str]]
#: A chain that requires nothing (a lock taken by hand, or a write outside the runbook's steps).
NO_CHAIN: Chain = {"inEffect": [], "notInEffect": []}
APPLY_BATCH = "migration:applyBatch"
COUNT_SIDE_ROWS = "migration:countSideRows"
MIN_PAGE_SIZE = 16
#: Calls of a one-document batch that Convex stopped at its time or memory limit before it counts as that
#: document's error: a busy deployment, not the document, is the likely cause.
SINGLE_DOCUMENT_ATTEMPTS = 5


@dataclass(frozen=True)
class SideRows:
    """Rows a migration creates beside the documents it changes, at most one per document and kind (say, one row
    per file a document names, in a table that tracks files). The core names none of their tables or fields; it reads
    them here. `migration:applyBatch` inserts a plan line's `references` into `table` in the document's own
    transaction, filling `owner` with the document's id, `created_at` with the time and the object `stamp` with
    the migration and run ids; it deletes only rows stamped with its migration. Verify checks every row of this
    migration copies the document field it tracks (`mirrored`), one row per kind, each on an existing document;
    rollback *strip* deletes them; apply confirms its statistics by counting them per `group`."""

    table: str
    #: How output names them: "<label> to create: 12".
    label: str
    #: The field holding the id of the document a row belongs to.
    owner: str
    #: The field telling a document's rows apart; `index` is the table's index over (owner, kind).
    kind: str
    index: str
    #: The field the statistics count them by (one value per table: `groups`).
    group: str
    #: The object field applyBatch stamps with `migrationId` and `runId`; the field it sets to the insertion time.
    stamp: str
    created_at: str
    #: Per table: document field -> the kind of the row that tracks it.
    sources: Mapping[str, Mapping[str, str]]
    #: Per table: the value of `group` its rows carry.
    groups: Mapping[str, str]
    #: The fields a row copies from the document field it tracks (verify checks they agree).
    mirrored: tuple[str, ...]

    def protocol(self) -> dict[str, str]:
        """The `sideRows` argument of applyBatch and countSideRows: where the rows live and which fields are whose."""
        return {"table": self.table, "owner": self.owner, "kind": self.kind, "index": self.index, "group": self.group,
                "stamp": self.stamp, "createdAt": self.created_at}

    def stamped(self, row: Mapping[str, Any], migration_id: str, run_id: str | None = None) -> bool:
        """The row was created by this migration (and by this run, when given)."""
        stamp = row.get(self.stamp) or {}
        return bool(stamp.get("migrationId") == migration_id and (run_id is None or stamp.get("runId") == run_id))

def iter_pages(transport: ConvexTransport, table: str, page_size: int) -> Iterator[list[dict[str, Any]]]:
    """Every page of a table in creation order; a page too large for Convex's read limits is halved."""
    for result in _paginated(transport, READ_PAGE, {"table": table}, page_size):
        if result["page"]:
            yield result["page"]


def _paginated(transport: ConvexTransport, function: str, args: dict[str, Any], page_size: int) -> Iterator[dict[str, Any]]:
    """Each answer of a paginated query (`cursor`/`numItems` in, `isDone`/`continueCursor` out) to the end."""
    cursor: str | None = None
    size = page_size
    while True:
        try:
            result = transport.function(function, {**args, "cursor": cursor, "numItems": size})
        except LimitExceeded:
            if size <= MIN_PAGE_SIZE:
                raise
            size = max(MIN_PAGE_SIZE, size // 2)
            continue
        yield result
        if result["isDone"]:
            return
        cursor = result["continueCursor"]


def iter_documents(transport: ConvexTransport, table: str, page_size: int = 4000) -> Iterator[dict[str, Any]]:
    for page in iter_pages(transport, table, page_size):
        yield from page


def apply_batch(
    transport: ConvexTransport,
    migration_id: str,
    run_id: str,
    items: Sequence[dict[str, Any]],
    *,
    guard: Chain | None = None,
    on_limit: Callable[[int], None] | None = None,
    before_call: Callable[[], None] | None = None,
    written_fields: Collection[str] = (),
    side_rows: SideRows | None = None,
) -> list[dict[str, Any]]:
    """One result per item, in order. Limits split the batch; a whole-batch failure is bisected to its cause.
    `guard`, the chain the run took the lock with (apply and rollback always give it): the deployment writes only
    while the run holds the lock and the chain holds, checked in the batch's own transaction; else this raises
    (LeaseLost, or PreconditionFailed naming what broke the chain) and nothing of the batch was written.
    `on_limit(size)` hears of every batch split for a Convex limit; `before_call()` runs before every call
    (and may raise to stop the batch, e.g. when apply's lease is lost). A one-document batch that Convex stops
    at its time or memory limit is sent again with backoff (SINGLE_DOCUMENT_ATTEMPTS) before it is that
    document's error. A schema refusal naming one of `written_fields` (the fields the migration writes) or the
    side rows' table is raised: the deployment lacks the migration's schema. `side_rows`: where the items'
    `insertReferences`/`deleteReferences` live."""
    if not items:
        return []

    def call() -> list[dict[str, Any]]:
        if before_call is not None:
            before_call()
        args: dict[str, Any] = {"migrationId": migration_id, "runId": run_id, "items": list(items)}
        if side_rows is not None:
            args["sideRows"] = side_rows.protocol()
        if guard is not None:
            args["guard"] = guard
        response = transport.function(APPLY_BATCH, args, writes_documents=True, retry_terminated=False)
        return list(response["results"])

    try:
        if len(items) > 1:
            return call()
        return Retrying(
            retry=retry_if_exception_type(FunctionTerminated), stop=stop_after_attempt(SINGLE_DOCUMENT_ATTEMPTS),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1), reraise=True,
        )(call)
    except (LimitExceeded, FunctionFailed, ArgumentValidationError, SchemaNotDeployed) as error:
        data = getattr(error, "data", None)
        if isinstance(data, dict) and data.get("code") == CHAIN_BROKEN:
            raise ChainBroken(
                f"The deployment refused run {run_id}'s batch: the migration chain no longer allows it "
                f"({data['problem'].get('reason')}, migration {data['problem'].get('migrationId')}); nothing of it was written.",
                data["problem"],
            ) from error
        if LOCK_HELD_BY_OTHER in str(error) or LOCK_NOT_HELD in str(error):
            raise LeaseLost(f"lease lost: the deployment refused run {run_id}'s batch: {_server_message(str(error))}") from error
        if isinstance(error, LimitExceeded) and on_limit is not None and len(items) > 1:
            on_limit(len(items))
        if len(items) > 1:
            middle = len(items) // 2

            def half(part: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
                return apply_batch(
                    transport, migration_id, run_id, part,
                    guard=guard, on_limit=on_limit, before_call=before_call, written_fields=written_fields, side_rows=side_rows,
                )

            return half(items[:middle]) + half(items[middle:])
        side_table = [side_rows.table] if side_rows is not None else []
        if isinstance(error, SchemaNotDeployed) and _field_refused(str(error), [*written_fields, *side_table]):
            raise  # every document would fail alike: the deployment lacks the migration's schema
        return [{"id": items[0]["id"], "outcome": "error", "message": _server_message(str(error))}]


#: Side rows are small: half of Convex's 32,000 documents read per call, one stream of few round trips.
SIDE_ROW_PAGE = 16_000


def count_side_rows(transport: ConvexTransport, side_rows: SideRows, migration_id: str, run_id: str) -> Counter[str]:
    """The side rows this run created, per value of their `group` field, as the deployment counts them (only
    the counts travel: a page of rows is counted where it is read)."""
    counts: Counter[str] = Counter()
    args = {"sideRows": side_rows.protocol(), "migrationId": migration_id, "runId": run_id}
    for result in _paginated(transport, COUNT_SIDE_ROWS, args, SIDE_ROW_PAGE):
        counts.update({group: int(n) for group, n in result["counts"].items()})
    return counts


def iter_side_row_owners(transport: ConvexTransport, side_rows: SideRows, migration_id: str, run_id: str) -> Iterator[str]:
    """The documents holding a side row of this run (one id per row, streamed): only needed when the counts
    do not confirm each other."""
    for row in iter_documents(transport, side_rows.table, SIDE_ROW_PAGE):
        if side_rows.stamped(row, migration_id, run_id):
            yield row[side_rows.owner]


def acquire_lock(
    transport: ConvexTransport, migration_id: str, run_id: str, operator: str, lease_ms: int, chain: Chain = NO_CHAIN
) -> dict[str, Any]:
    """The deployment's one lock for a run writing for `migration_id`, taken only if `chain` holds, in one
    transaction: `{acquired: true, expiresAt}`, or `{acquired: false, holder: {runId, operator, migrationId,
    expiresAt}}`, or `{acquired: false, chain: <the problem>}`."""
    result: dict[str, Any] = transport.function(
        "migrationRuns:acquireLock",
        {"migrationId": migration_id, "runId": run_id, "operator": operator, "leaseMs": lease_ms, "chain": chain},
    )
    return result


def renew_lock(transport: ConvexTransport, run_id: str, lease_ms: int) -> dict[str, Any]:
    result: dict[str, Any] = transport.function("migrationRuns:renewLock", {"runId": run_id, "leaseMs": lease_ms})
    return result


def release_lock(transport: ConvexTransport, run_id: str) -> dict[str, Any]:
    result: dict[str, Any] = transport.function("migrationRuns:releaseLock", {"runId": run_id})
    return result


def chain_problem(transport: ConvexTransport, chain: Chain) -> dict[str, Any] | None:
    """Why the deployment's ledger does not allow a write under `chain` now (its `ChainProblem`), or None."""
    problem: dict[str, Any] | None = transport.function("migrationRuns:chainState", {"chain": chain})["problem"]
    return problem


def record_run(transport: ConvexTransport, migration_id: str, run_id: str, **fields: Any) -> None:
    """Upserts the ledger row of one step of a run (step, status, operator, startedAt, finishedAt, counts)."""
    args = {"migrationId": migration_id, "runId": run_id, **{k: v for k, v in fields.items() if v is not None}}
    if "counts" in args:
        args["counts"] = {k: float(v) for k, v in args["counts"].items()}
    transport.function("migrationRuns:record", args)


def read_ledger(transport: ConvexTransport, migration_id: str) -> list[dict[str, Any]]:
    """Every ledger row of a migration (``kind: "run"``, one per run and step), oldest first."""
    return list(transport.function("migrationRuns:ledger", {"migrationId": migration_id}))


def _field_refused(message: str, names: Iterable[str]) -> bool:
    """The schema does not know one of these fields (Convex: "extra field", convex-test: "Unexpected field")."""
    return any(f"extra field `{name}`" in message or f"Unexpected field `{name}`" in message for name in names)


def _server_message(message: str) -> str:
    """The server's own words, without the request id preamble and the fix hint our exceptions append."""
    return message.split("\n  fix: ", 1)[0].split("Server Error\n", 1)[-1].strip()
