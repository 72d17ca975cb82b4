"""The seed's original migration algorithm, client side: the reference the runbook is measured against.

Benchmark only, never a way to migrate. It does what the seed's `add_s3_asset_tracking.py` did:

1. read every scene in one query (`naive:listScenes`, an unpaginated `.collect()`), and every session;
2. per scene: one `naive:updateScene` mutation with its new fields, then one `naive:createAssetReference`
   mutation per legacy asset (videoAsset from s3ChunkKey/s3ChunkUrl, sourceCode, thumbnail, subtitle);
3. per session: its own assets and references the same way, and one `naive:updateSession` with
   `assetCount: 0, totalAssetSize: 0` (the original bug: totals never computed from the scenes).

No preconditions, no idempotency, no batching, no backup. A document it cannot convert or send (wrong types,
a text orjson cannot encode, a schema refusal) is counted as skipped and the loop goes on, as the seed did
with its `errors` list. It calls through the same ConvexTransport as the runbook, so round trips are counted
the same way (one HTTP request per call).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from helpers.connection.transport import ConvexTransport
from helpers.migrations.m001_s3_asset_tracking.fields import (
    ASSET_TYPES,
    SCENE_ASSET_SOURCES,
    SESSION_ASSET_SOURCES,
)

MIGRATION_ID = "001_s3_asset_tracking"
RUN_ID = "naive-baseline"
CONTENT_TYPES = {
    "mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime", "py": "text/x-python", "js": "text/javascript",
    "png": "image/png", "jpg": "image/jpeg", "vtt": "text/vtt", "srt": "application/x-subrip",
    "m3u8": "application/vnd.apple.mpegurl", "json": "application/json",
}
STATUS_MAP = {"completed": "ready", "failed": "error", "uploading": "uploading"}


@dataclass
class NaiveResult:
    scenes: int = 0
    sessions: int = 0
    scenes_updated: int = 0
    sessions_updated: int = 0
    references_created: int = 0
    skipped: int = 0
    read_round_trips: int = 0
    read_seconds: float = 0.0
    round_trips: int = 0
    seconds: float = 0.0
    every: int = 1  # 1: every document written; k: every k-th scene and session only (a sample)
    written_scenes: int = 0  # documents the write loop went through (all of them unless sampled)
    written_sessions: int = 0

    @property
    def write_round_trips(self) -> int:
        return self.round_trips - self.read_round_trips

    @property
    def write_seconds(self) -> float:
        return self.seconds - self.read_seconds

    @property
    def sample_factor(self) -> float:
        """All documents / the documents the write loop went through (1.0 for a full run)."""
        visited = self.written_scenes + self.written_sessions
        return (self.scenes + self.sessions) / visited if visited else 1.0

    @property
    def extrapolated_seconds(self) -> float:
        """The whole run's wall time: the read as measured, the writes scaled from the sample to every document
        (each write is one round trip of constant cost, so the write loop's time is linear in the documents)."""
        return self.read_seconds + self.write_seconds * self.sample_factor

    @property
    def extrapolated_round_trips(self) -> int:
        return self.read_round_trips + round(self.write_round_trips * self.sample_factor)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "write_round_trips": self.write_round_trips, "write_seconds": self.write_seconds}


def _content_type(key: str) -> str:
    return CONTENT_TYPES.get(key.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def _assets(doc: dict[str, Any], sources: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """The seed's conversion: a key and a URL that are both non-empty texts become an asset, nothing is checked."""
    updated = doc.get("updatedAt")
    uploaded_at = updated if isinstance(updated, (int, float)) and not isinstance(updated, bool) else doc["_creationTime"]
    assets = {}
    for asset_field, (key_field, url_field) in sources.items():
        key, url = doc.get(key_field), doc.get(url_field)
        if not (isinstance(key, str) and key and isinstance(url, str) and url):
            continue
        asset: dict[str, Any] = {"s3Key": key, "s3Url": url, "contentType": _content_type(key)}
        if asset_field == "videoAsset":
            size = doc.get("s3ChunkSize")
            if isinstance(size, (int, float)) and not isinstance(size, bool):
                asset["size"] = size
            checksum = doc.get("checksum")
            if isinstance(checksum, str):
                asset["checksum"] = checksum
        asset["uploadedAt"] = uploaded_at
        assets[asset_field] = asset
    return assets


def _reference(entity_id: str, entity_type: str, asset_field: str, asset: dict[str, Any], legacy_field: str) -> dict[str, Any]:
    return {
        "entityId": entity_id,
        "entityType": entity_type,
        "assetType": ASSET_TYPES[asset_field],
        **asset,
        "version": 1,
        "createdAt": int(time.time() * 1000),
        "metadata": {"migratedFromLegacy": True, "migrationId": MIGRATION_ID, "runId": RUN_ID, "legacyField": legacy_field},
    }


def _call(transport: ConvexTransport, path: str, args: dict[str, Any], result: NaiveResult) -> bool:
    """One mutation; any failure (encoding, validation, schema) skips the document instead of stopping."""
    try:
        transport.function(path, args, idempotent=False)
    except Exception:  # noqa: BLE001 - the seed logged and went on
        result.skipped += 1
        return False
    return True


def run_naive(transport: ConvexTransport, every: int = 1) -> NaiveResult:
    """The whole seed algorithm against `transport`'s deployment (which must serve benchmarks/convex/naive.ts).

    `every=k` reads everything but writes only every k-th scene and session (a uniform sample of the same data),
    for `extrapolated_seconds` when the full write loop would take too long (through added latency)."""
    result = NaiveResult(every=every)
    trips_before = transport.round_trips
    started = time.perf_counter()

    scenes = transport.function("naive:listScenes", {})
    sessions = transport.function("naive:listSessions", {})
    result.scenes, result.sessions = len(scenes), len(sessions)
    result.read_round_trips = transport.round_trips - trips_before
    result.read_seconds = time.perf_counter() - started

    for doc in scenes[::every]:
        result.written_scenes += 1
        try:
            assets = _assets(doc, SCENE_ASSET_SOURCES)
        except Exception:  # noqa: BLE001
            result.skipped += 1
            continue
        status = doc.get("status")
        fields: dict[str, Any] = {**assets, "assetsStatus": STATUS_MAP.get(status, "pending") if isinstance(status, str) else "pending"}
        if status == "failed" and isinstance(doc.get("errorMessage"), str):
            fields["assetsErrorMessage"] = doc["errorMessage"]
        fields.update(assetVersion=1, previousAssetVersions=[])
        if not _call(transport, "naive:updateScene", {"id": doc["_id"], "fields": fields}, result):
            continue
        result.scenes_updated += 1
        for asset_field, asset in assets.items():
            reference = _reference(doc["_id"], "scene", asset_field, asset, SCENE_ASSET_SOURCES[asset_field][0])
            if _call(transport, "naive:createAssetReference", reference, result):
                result.references_created += 1

    for doc in sessions[::every]:
        result.written_sessions += 1
        try:
            assets = _assets(doc, SESSION_ASSET_SOURCES)
        except Exception:  # noqa: BLE001
            result.skipped += 1
            continue
        status = doc.get("status")
        fields = {
            **assets,
            "totalAssetSize": 0,  # the original bug: never summed from the session's scenes
            "assetCount": 0,
            "assetsStatus": STATUS_MAP.get(status, "pending") if isinstance(status, str) else "pending",
        }
        if status == "failed" and isinstance(doc.get("errorMessage"), str):
            fields["assetsErrorMessage"] = doc["errorMessage"]
        if not _call(transport, "naive:updateSession", {"id": doc["_id"], "fields": fields}, result):
            continue
        result.sessions_updated += 1
        for asset_field, asset in assets.items():
            reference = _reference(doc["_id"], "session", asset_field, asset, SESSION_ASSET_SOURCES[asset_field][0])
            if _call(transport, "naive:createAssetReference", reference, result):
                result.references_created += 1

    result.round_trips = transport.round_trips - trips_before
    result.seconds = time.perf_counter() - started
    return result
