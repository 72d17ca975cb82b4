"""A simulated Convex deployment of any size, for the scale benchmark (issue: ten million documents).

    CONVEX_DEPLOY_KEY=... python benchmarks/simulated_deployment.py --scenes 1000000 [--port 0] [--seed 7]

The local deployment (convex-test) keeps every document in memory and scans whole tables per query, so it
cannot hold a production-sized table. This server speaks the same HTTP calls the runbook makes —
`migration:readPage`, `migration:applyBatch`, `migration:countSideRows`, the `migrationRuns:*` lock and ledger calls and the snapshot
export (`POST /api/export/request/zip`, `_system/cli/exports:getLatest`, `GET /api/export/zip/<ts>`) — but
generates the legacy documents on the fly from the sample-data generator (deterministic: the same seed gives
the same documents) and keeps only what apply writes, in SQLite on disk. So its own memory stays small at
10M scenes and the runbook's footprint can be measured alone.

What it does not simulate: apply's preconditions are not compared with the generated document (nobody else
writes here, so a document not yet written is in its planned "before" state); no per-function limits; no
faults. It prints one JSON line `{"event": "ready", "url": ...}` when it listens (on 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import signal
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from helpers.connection import values
from helpers.devtools.sample_data import (
    SCENES_PER_SESSION,
    START_MS,
    iter_scenes,
    iter_sessions,
)

TABLES = ("videoSessions", "scenes", "assetReferences", "migrationRuns")
GENERATED = ("videoSessions", "scenes")
EXPORT_README = "# Welcome to your Convex snapshot export!\n\nA simulated deployment's snapshot (benchmarks only).\n"


def document_id(table: str, index: int) -> str:
    """Ids shaped like the local deployment's: a zero-padded sequence and the table name."""
    return f"{index:019d}{table}"


def convex_wire(value: Any) -> Any:
    """A sample value as Convex's wire format holds it, in one walk: every number is a float64 (`v.number()`; the
    sample's ints become floats, so the wire and the export print them as Convex does, `5.0`), and a float JSON
    cannot write (NaN, ±Inf, -0.0) is `{"$float": base64}`. Documents are kept in this form, so answering a page
    is one `orjson.dumps`."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        number = float(value)
        return number if -math.inf < number < math.inf and (number != 0 or math.copysign(1.0, number) > 0) else values.to_wire(number)
    if isinstance(value, dict):
        return {k: convex_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [convex_wire(v) for v in value]
    return values.to_wire(value)


def int64_wire(value: int) -> dict[str, str]:
    return {"$integer": base64.b64encode(struct.pack("<q", value)).decode()}


class GeneratedTables:
    """The legacy tables, regenerated on demand in creation order. A reader that continues where the last page
    ended (the usual case: a full scan) costs nothing extra; any other cursor restarts the generator."""

    def __init__(self, n_scenes: int, seed: int) -> None:
        self.n_scenes = n_scenes
        self.n_sessions = -(-n_scenes // SCENES_PER_SESSION)
        self.seed = seed
        self.session_ids = [document_id("videoSessions", i) for i in range(self.n_sessions)]
        self.missing_session_id = document_id("videoSessions", self.n_sessions)  # never generated: dangling
        self._cursors: dict[str, tuple[int, Iterator[dict[str, Any]]]] = {}
        self._locks = {table: threading.Lock() for table in GENERATED}

    def count(self, table: str) -> int:
        return self.n_sessions if table == "videoSessions" else self.n_scenes

    def _fresh(self, table: str) -> Iterator[dict[str, Any]]:
        if table == "videoSessions":
            source = iter_sessions(self.n_sessions, self.seed)
            offset = 0
        else:
            source = iter_scenes(self.session_ids, self.n_scenes, self.seed, self.missing_session_id)
            offset = self.n_sessions + 1
        for index, doc in enumerate(source):
            yield {
                "_id": document_id(table, index + (0 if table == "videoSessions" else offset)),
                "_creationTime": float(START_MS + offset + index),
                **convex_wire(doc),
            }

    def page(self, table: str, start: int, size: int) -> list[dict[str, Any]]:
        with self._locks[table]:
            position, source = self._cursors.get(table, (-1, iter(())))
            if position != start:
                position, source = 0, self._fresh(table)
                for _ in range(start):
                    next(source)
                position = start
            docs = []
            for _ in range(min(size, self.count(table) - start)):
                docs.append(next(source))
            self._cursors[table] = (start + len(docs), source)
            return docs


class Writes:
    """What apply wrote: per document its `set`/`unset`, and the inserted references, in SQLite on disk."""

    def __init__(self, folder: Path) -> None:
        self.db = sqlite3.connect(folder / "writes.sqlite3", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE patches (id TEXT PRIMARY KEY, body BLOB NOT NULL)")
        self.db.execute("CREATE TABLE refs (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        self.lock = threading.Lock()

    def patches(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        with self.lock:
            for start in range(0, len(ids), 900):
                chunk = ids[start:start + 900]
                marks = ",".join("?" * len(chunk))
                for doc_id, body in self.db.execute(f"SELECT id, body FROM patches WHERE id IN ({marks})", chunk):
                    found[doc_id] = orjson.loads(body)
        return found

    def apply(self, migration_id: str, run_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        with self.lock:
            self.db.execute("BEGIN")
            for item in items:
                target = orjson.dumps({"set": convex_wire(item["set"]), "unset": sorted(item["unset"])}, option=orjson.OPT_SORT_KEYS)
                row = self.db.execute("SELECT body FROM patches WHERE id = ?", (item["id"],)).fetchone()
                if row is not None and row[0] == target:
                    results.append({"id": item["id"], "outcome": "already_applied"})
                    continue
                self.db.execute("INSERT OR REPLACE INTO patches VALUES (?, ?)", (item["id"], target))
                created = time.time() * 1000
                reference_ids = []
                for ref in item["insertReferences"]:  # 001's side rows, stamped as applyBatch does
                    metadata = {**ref.get("metadata", {}), "migrationId": migration_id, "runId": run_id}
                    body = {**ref, "entityId": item["id"], "createdAt": created, "metadata": metadata}
                    seq = self.db.execute("INSERT INTO refs (body) VALUES (?)", (orjson.dumps(convex_wire(body)),)).lastrowid
                    reference_ids.append(document_id("assetReferences", seq))
                results.append({"id": item["id"], "outcome": "applied", **({"referenceIds": reference_ids} if reference_ids else {})})
            self.db.execute("COMMIT")
        return results

    def references(self, after: int, size: int) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT seq, body FROM refs WHERE seq > ? ORDER BY seq LIMIT ?", (after, size)).fetchall()
        return [{"_id": document_id("assetReferences", seq), "_creationTime": float(START_MS + seq), **orjson.loads(body)} for seq, body in rows]


class Simulation:
    def __init__(self, n_scenes: int, seed: int, folder: Path, deploy_key: str) -> None:
        self.tables = GeneratedTables(n_scenes, seed)
        self.writes = Writes(folder)
        self.folder = folder
        self.deploy_key = deploy_key
        self.ledger: list[dict[str, Any]] = []
        self.lock_row: dict[str, Any] | None = None
        self.export: dict[str, Any] | None = None
        self.state_lock = threading.Lock()

    # -- functions ----------------------------------------------------------------------------------------

    def call(self, path: str, args: dict[str, Any]) -> Any:
        handler = FUNCTIONS.get(path)
        if handler is None:
            raise LookupError(f"Could not find function for '{path}'. Did you forget to run `npx convex dev`?")
        return handler(self, args)

    def read_page(self, args: dict[str, Any]) -> dict[str, Any]:
        table, size = args["table"], int(args["numItems"])
        start = int(args["cursor"] or 0)
        if table in GENERATED:
            docs = self.tables.page(table, start, size)
            patches = self.writes.patches([d["_id"] for d in docs])
            for doc in docs:
                patch = patches.get(doc["_id"])
                if patch:
                    doc.update(patch["set"])
                    for field in patch["unset"]:
                        doc.pop(field, None)
            done = start + len(docs) >= self.tables.count(table)
            return {"page": docs, "isDone": done, "continueCursor": str(start + len(docs))}
        if table == "assetReferences":
            docs = self.writes.references(start, size)
            last = int(docs[-1]["_id"][:19]) if docs else start
            return {"page": docs, "isDone": len(docs) < size, "continueCursor": str(last)}
        rows = self.ledger[start:start + size] if table == "migrationRuns" else []
        return {"page": rows, "isDone": start + len(rows) >= len(self.ledger), "continueCursor": str(start + len(rows))}

    def count_side_rows(self, args: dict[str, Any]) -> dict[str, Any]:
        result = self.read_page({"table": "assetReferences", "cursor": args["cursor"], "numItems": args["numItems"]})
        counts: dict[str, float] = {}
        for ref in result.pop("page"):
            if ref["metadata"]["migrationId"] == args["migrationId"] and ref["metadata"]["runId"] == args["runId"]:
                counts[ref["entityType"]] = counts.get(ref["entityType"], 0.0) + 1.0  # a JavaScript number
        return {**result, "counts": counts}

    def apply_batch(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"results": self.writes.apply(args["migrationId"], args["runId"], args["items"])}

    def acquire_lock(self, args: dict[str, Any]) -> dict[str, Any]:
        with self.state_lock:
            now = time.time() * 1000
            row = self.lock_row
            if row is None or row["runId"] == args["runId"] or row["leaseExpiresAt"] <= now:
                self.lock_row = {"runId": args["runId"], "operator": args["operator"], "leaseExpiresAt": now + args["leaseMs"]}
                return {"acquired": True, "expiresAt": self.lock_row["leaseExpiresAt"]}
            return {"acquired": False, "holder": {"runId": row["runId"], "operator": row["operator"], "expiresAt": row["leaseExpiresAt"]}}

    def renew_lock(self, args: dict[str, Any]) -> dict[str, Any]:
        with self.state_lock:
            if self.lock_row is None or self.lock_row["runId"] != args["runId"]:
                return {"renewed": False}
            self.lock_row["leaseExpiresAt"] = time.time() * 1000 + args["leaseMs"]
            return {"renewed": True, "expiresAt": self.lock_row["leaseExpiresAt"]}

    def release_lock(self, args: dict[str, Any]) -> dict[str, Any]:
        with self.state_lock:
            if self.lock_row is None or self.lock_row["runId"] != args["runId"]:
                return {"released": False}
            self.lock_row = None
            return {"released": True}

    def record(self, args: dict[str, Any]) -> None:
        with self.state_lock:
            args = convex_wire(args)  # kept as the wire holds it: read pages and the export print it as is
            for row in self.ledger:
                if row["runId"] == args["runId"] and row["step"] == args["step"]:
                    row.update(args)
                    return None
            self.ledger.append({"_id": document_id("migrationRuns", len(self.ledger)), "kind": "run", **args})
        return None

    def read_ledger(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [row for row in self.ledger if row["migrationId"] == args["migrationId"]]

    def latest_export(self, _: dict[str, Any]) -> Any:
        if self.export is None:
            return None
        return {k: (int64_wire(v) if k in ("start_ts", "complete_ts") else v) for k, v in self.export.items() if k != "path"}

    # -- snapshot export ----------------------------------------------------------------------------------

    def request_export(self) -> None:
        with self.state_lock:
            if self.export is not None and self.export["state"] in ("requested", "in_progress"):
                raise PermissionError("There is already an export requested or in progress.")
            start_ts = time.time_ns()
            self.export = {"_id": f"export{start_ts}", "_creationTime": time.time() * 1000, "state": "in_progress",
                           "format": {"format": "zip", "include_storage": False}, "requestor": "snapshotExport",
                           "start_ts": start_ts}
        threading.Thread(target=self._write_export, args=(self.export,), daemon=True).start()

    def _write_export(self, record: dict[str, Any]) -> None:
        try:
            self._write_zip(record)
        except Exception as error:  # noqa: BLE001 - reported through the export's state, as Convex does
            print(f"export failed: {error!r}", file=sys.stderr, flush=True)
            record["state"] = "failed"

    def _write_zip(self, record: dict[str, Any]) -> None:
        path = self.folder / f"snapshot_{record['start_ts']}.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            archive.writestr("README.md", EXPORT_README)
            archive.writestr("_tables/documents.jsonl", "".join(
                json.dumps({"name": name, "id": 10001 + i}) + "\n" for i, name in enumerate(TABLES)))
            for table in TABLES:
                with archive.open(f"{table}/documents.jsonl", "w", force_zip64=True) as sink:
                    for doc in self._export_documents(table):
                        sink.write(orjson.dumps(doc) + b"\n")
                archive.writestr(f"{table}/generated_schema.jsonl", '"uniform"\n')
        record.update(path=str(path), complete_ts=time.time_ns(), zip_object_key=path.name, state="completed")

    def _export_documents(self, table: str) -> Iterator[dict[str, Any]]:
        if table in GENERATED:
            fresh = self.tables._fresh(table)  # its own generator: the export must not move the readers' cursors
            yield from fresh
        elif table == "migrationRuns":
            yield from self.ledger

    def export_file(self, snapshot_id: str) -> Path | None:
        record = self.export
        if record is None or record.get("state") != "completed" or str(record["start_ts"]) != snapshot_id:
            return None
        return Path(record["path"])


#: Functions whose answers are already `convex_wire` values (documents are kept so): answered without another walk.
WIRE_READY = frozenset({"migration:readPage"})
FUNCTIONS = {
    "migration:readPage": Simulation.read_page,
    "migration:applyBatch": Simulation.apply_batch,
    "migration:countSideRows": Simulation.count_side_rows,
    "migrationRuns:acquireLock": Simulation.acquire_lock,
    "migrationRuns:renewLock": Simulation.renew_lock,
    "migrationRuns:releaseLock": Simulation.release_lock,
    "migrationRuns:record": Simulation.record,
    "migrationRuns:ledger": Simulation.read_ledger,
    "_system/cli/exports:getLatest": Simulation.latest_export,
}


def make_handler(sim: Simulation) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: without this, each call waits ~40 ms

        def log_message(self, *_: Any) -> None:  # quiet: the benchmark prints its own figures
            return

        def _send(self, status: int, body: Any) -> None:
            payload = orjson.dumps(body)  # wire-ready: convex_wire
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _admin(self) -> bool:
            if self.headers.get("authorization", "") == f"Convex {sim.deploy_key}":
                return True
            self._send(401, {"code": "BadAdminKey", "message": "The provided admin key was invalid for this instance"})
            return False

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if not self._admin():
                return
            if self.path.startswith("/api/export/request/zip"):
                try:
                    sim.request_export()
                except PermissionError as error:
                    return self._send(400, {"code": "ExportInProgress", "message": str(error)})
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                return None
            request = orjson.loads(body)
            try:
                path = request["path"].replace(".js", "")
                value = sim.call(path, request.get("args") or {})
            except LookupError as error:
                return self._send(200, {"status": "error", "errorMessage": str(error)})
            except Exception as error:  # noqa: BLE001 - answered as Convex answers an internal error
                print(f"internal error: {error!r}", file=sys.stderr, flush=True)
                return self._send(500, {"code": "InternalServerError", "message": "Your request couldn't be completed."})
            return self._send(200, {"status": "success", "value": value if path in WIRE_READY else convex_wire(value)})

        def do_GET(self) -> None:  # noqa: N802
            if not self._admin():
                return
            path = sim.export_file(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/api/export/zip/") else None
            if path is None:
                return self._send(404, {"code": "ExportNotFound", "message": f"No export at {self.path}"})
            self.send_response(200)
            self.send_header("content-type", "application/zip")
            self.send_header("content-length", str(path.stat().st_size))
            self.end_headers()
            with path.open("rb") as source:
                while chunk := source.read(1 << 20):
                    self.wfile.write(chunk)

    return Handler


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    deploy_key = os.environ.get("CONVEX_DEPLOY_KEY")
    if not deploy_key:
        print("CONVEX_DEPLOY_KEY must be set (the admin key this simulated deployment accepts)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # stop as on Ctrl-C, so the temporary folder is removed
    with tempfile.TemporaryDirectory(prefix="simulated-deployment-") as folder:
        sim = Simulation(args.scenes, args.seed, Path(folder), deploy_key)
        server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(sim))
        server.daemon_threads = True
        print(json.dumps({"event": "ready", "url": f"http://127.0.0.1:{server.server_address[1]}"}), flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
