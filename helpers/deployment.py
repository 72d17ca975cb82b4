"""The migration's calls to its Convex functions (convex/migration.ts, convex/migrationRuns.ts).

Reads are streamed page by page; a batch write that exceeds a Convex limit is split, and a batch that
fails as a whole is bisected until the failing document is isolated and reported as an ``error`` result,
so one bad document never blocks the others and never goes unreported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .errors import ArgumentValidationError, FunctionFailed, LimitExceeded, SchemaNotDeployed
from .transport import ConvexTransport

READ_PAGE = "migration:readPage"
APPLY_BATCH = "migration:applyBatch"
MIN_PAGE_SIZE = 16


def iter_pages(transport: ConvexTransport, table: str, page_size: int) -> Iterator[list[dict[str, Any]]]:
    """Every page of a table in creation order; a page too large for Convex's read limits is halved."""
    cursor: str | None = None
    size = page_size
    while True:
        try:
            result = transport.function(READ_PAGE, {"table": table, "cursor": cursor, "numItems": size})
        except LimitExceeded:
            if size <= MIN_PAGE_SIZE:
                raise
            size = max(MIN_PAGE_SIZE, size // 2)
            continue
        page = result["page"]
        if page:
            yield page
        if result["isDone"]:
            return
        cursor = result["continueCursor"]


def iter_documents(transport: ConvexTransport, table: str, page_size: int = 4000) -> Iterator[dict[str, Any]]:
    for page in iter_pages(transport, table, page_size):
        yield from page


def apply_batch(transport: ConvexTransport, migration_id: str, run_id: str, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per item, in order. Limits split the batch; a whole-batch failure is bisected to its cause."""
    if not items:
        return []
    try:
        response = transport.function(APPLY_BATCH, {"migrationId": migration_id, "runId": run_id, "items": list(items)})
        return list(response["results"])
    except (LimitExceeded, FunctionFailed, ArgumentValidationError, SchemaNotDeployed) as error:
        if len(items) > 1:
            middle = len(items) // 2
            return apply_batch(transport, migration_id, run_id, items[:middle]) + apply_batch(
                transport, migration_id, run_id, items[middle:]
            )
        if isinstance(error, SchemaNotDeployed) and _new_field_refused(str(error)):
            raise  # every document would fail alike: the deployment lacks the migration's schema
        return [{"id": items[0]["id"], "outcome": "error", "message": _server_message(str(error))}]


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


_NEW_FIELD_NAMES = (
    "videoAsset", "sourceCodeAsset", "thumbnailAsset", "subtitleAsset", "assetsStatus", "assetsErrorMessage",
    "assetVersion", "previousAssetVersions", "combinedVideoAsset", "combinedSubtitleAsset", "manifestAsset",
    "totalAssetSize", "assetCount", "assetReferences",
)


def _new_field_refused(message: str) -> bool:
    """The schema does not know a field the migration adds (Convex: "extra field", convex-test: "Unexpected field")."""
    return any(f"extra field `{name}`" in message or f"Unexpected field `{name}`" in message for name in _NEW_FIELD_NAMES)


def _server_message(message: str) -> str:
    """The server's own words, without the request id preamble and the fix hint our exceptions append."""
    return message.split("\n  fix: ", 1)[0].split("Server Error\n", 1)[-1].strip()
