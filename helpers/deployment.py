"""The migration's calls to its Convex functions (convex/migration.ts, convex/migrationRuns.ts).

Reads are streamed page by page; a batch write that exceeds a Convex limit is split, and a batch that
fails as a whole is bisected until the failing document is isolated and reported as an ``error`` result,
so one bad document never blocks the others and never goes unreported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from .errors import ArgumentValidationError, FunctionFailed, FunctionTerminated, LeaseLost, LimitExceeded, SchemaNotDeployed
from .transport import ConvexTransport

READ_PAGE = "migration:readPage"
#: The table applyBatch inserts asset references into (and deletes its own from): part of the function's protocol.
REFERENCE_TABLE = "assetReferences"
#: applyBatch's refusal of a run that does not hold the migration lock (convex/migration.ts).
LOCK_HELD_BY_OTHER = "the migration lock is held by run"
APPLY_BATCH = "migration:applyBatch"
COUNT_RUN_REFERENCES = "migration:countRunReferences"
MIN_PAGE_SIZE = 16
#: Calls of a one-document batch that Convex stopped at its time or memory limit before it counts as that
#: document's error: a busy deployment, not the document, is the likely cause.
SINGLE_DOCUMENT_ATTEMPTS = 5


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
    on_limit: Callable[[int], None] | None = None,
    before_call: Callable[[], None] | None = None,
    written_fields: Collection[str] = (),
) -> list[dict[str, Any]]:
    """One result per item, in order. Limits split the batch; a whole-batch failure is bisected to its cause.
    `on_limit(size)` hears of every batch split for a Convex limit; `before_call()` runs before every call
    (and may raise to stop the batch, e.g. when apply's lease is lost). A one-document batch that Convex stops
    at its time or memory limit is sent again with backoff (SINGLE_DOCUMENT_ATTEMPTS) before it is that
    document's error. A schema refusal naming one of `written_fields` (the fields the migration writes) is
    raised: the deployment lacks the migration's schema."""
    if not items:
        return []

    def call() -> list[dict[str, Any]]:
        if before_call is not None:
            before_call()
        response = transport.function(
            APPLY_BATCH, {"migrationId": migration_id, "runId": run_id, "items": list(items)}, writes_documents=True,
            retry_terminated=False,
        )
        return list(response["results"])

    try:
        if len(items) > 1:
            return call()
        return Retrying(
            retry=retry_if_exception_type(FunctionTerminated), stop=stop_after_attempt(SINGLE_DOCUMENT_ATTEMPTS),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1), reraise=True,
        )(call)
    except (LimitExceeded, FunctionFailed, ArgumentValidationError, SchemaNotDeployed) as error:
        if LOCK_HELD_BY_OTHER in str(error):
            raise LeaseLost(f"lease lost: the deployment refused run {run_id}'s batch: {_server_message(str(error))}") from error
        if isinstance(error, LimitExceeded) and on_limit is not None and len(items) > 1:
            on_limit(len(items))
        if len(items) > 1:
            middle = len(items) // 2
            hooks = {"on_limit": on_limit, "before_call": before_call, "written_fields": written_fields}
            return apply_batch(transport, migration_id, run_id, items[:middle], **hooks) + apply_batch(
                transport, migration_id, run_id, items[middle:], **hooks
            )
        if isinstance(error, SchemaNotDeployed) and _field_refused(str(error), [*written_fields, REFERENCE_TABLE]):
            raise  # every document would fail alike: the deployment lacks the migration's schema
        return [{"id": items[0]["id"], "outcome": "error", "message": _server_message(str(error))}]


#: References are small: half of Convex's 32,000 documents read per call, one stream of few round trips.
REFERENCE_PAGE = 16_000


def _run_references(transport: ConvexTransport, migration_id: str, run_id: str) -> Iterator[dict[str, Any]]:
    for reference in iter_documents(transport, REFERENCE_TABLE, REFERENCE_PAGE):
        metadata = reference.get("metadata") or {}
        if metadata.get("migrationId") == migration_id and metadata.get("runId") == run_id:
            yield reference


def count_run_references(transport: ConvexTransport, migration_id: str, run_id: str) -> Counter[str]:
    """The asset references this run created, per entity type, as the deployment counts them (only the counts
    travel: a page of references is counted where it is read)."""
    counts: Counter[str] = Counter()
    args = {"migrationId": migration_id, "runId": run_id}
    for result in _paginated(transport, COUNT_RUN_REFERENCES, args, REFERENCE_PAGE):
        counts.update({entity_type: int(n) for entity_type, n in result["counts"].items()})
    return counts


def iter_run_reference_entities(transport: ConvexTransport, migration_id: str, run_id: str) -> Iterator[str]:
    """The documents holding a reference of this run (one id per reference, streamed): only needed when the
    counts do not confirm each other."""
    return (reference["entityId"] for reference in _run_references(transport, migration_id, run_id))


def acquire_lock(transport: ConvexTransport, migration_id: str, run_id: str, operator: str, lease_ms: int) -> dict[str, Any]:
    return transport.function(
        "migrationRuns:acquireLock", {"migrationId": migration_id, "runId": run_id, "operator": operator, "leaseMs": lease_ms}
    )


def renew_lock(transport: ConvexTransport, migration_id: str, run_id: str, lease_ms: int) -> dict[str, Any]:
    return transport.function("migrationRuns:renewLock", {"migrationId": migration_id, "runId": run_id, "leaseMs": lease_ms})


def release_lock(transport: ConvexTransport, migration_id: str, run_id: str) -> dict[str, Any]:
    return transport.function("migrationRuns:releaseLock", {"migrationId": migration_id, "runId": run_id})


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
