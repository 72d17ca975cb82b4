"""Deterministic, realistic legacy data for the local deployment, the tests and the benchmarks.

Production data is messy, so the sample is too: besides ordinary sessions and scenes (mostly completed),
every bad-input class the rules know appears at a few percent, and at least once in the first documents,
so even a small sample exercises every problem code. Legacy `v.any()` fields of a few scenes hold the Convex
values plain JSON loses (int64, bytes, NaN, ±Inf, -0.0); every string is valid Unicode, as Convex (UTF-8)
requires. Documents are generated one at a time (a 200k-scene sample never sits in memory) and are valid for
convex/schema.ts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Protocol

from pydantic import BaseModel

from helpers.connection.values import Int64
from helpers.migrations.m001_s3_asset_tracking.fields import (
    SCENE_ASSET_SOURCES,
    SESSION_ASSET_SOURCES,
)
from helpers.migrations.m001_s3_asset_tracking.s3_urls import content_type_for_key

BUCKET_URL = "https://tutor-assets.s3.us-east-1.amazonaws.com"
CDN_URL = "https://cdn.tutor-app.example.com"
SCENES_PER_SESSION = 10
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DEFECT_RATE = 0.06
ALREADY_MIGRATED_RATE = 0.03
PARTLY_MIGRATED_RATE = 0.02

SESSION_STATUSES = {"completed": 78, "failed": 6, "combining": 5, "generating": 6, "pending": 5}
SCENE_STATUSES = {"completed": 82, "failed": 5, "uploading": 3, "rendering": 4, "generating": 3, "pending": 3}
TOPICS = (
    "Python loops", "Recursion", "Binary search", "Linked lists", "SQL joins", "Big-O notation", "Hash maps",
    "Closures in JavaScript", "TypeScript generics", "Sorting algorithms", "Graph traversal", "Unit testing",
)
RENDER_ERRORS = (
    "Render worker timed out after 600 s",
    "manim exited with status 1: NameError: name 'Circle' is not defined",
    "Upload to S3 failed: RequestTimeout",
    "ffmpeg exited with status 1: Invalid data found when processing input",
)
SESSION_ERRORS = ("Combining failed: ffmpeg exited with status 1", "Scene generation failed for 2 scenes", "LLM quota exceeded")


class Transport(Protocol):
    def function(self, path: str, args: dict[str, Any], *, idempotent: bool = True, writes_documents: bool = False) -> Any: ...


class LoadSummary(BaseModel):
    sessions: int
    scenes: int
    missing_session_id: str


# -- sessions ---------------------------------------------------------------------------------------------

#: Session defects forced on the first sessions (then drawn at DEFECT_RATE): name -> the problem code it causes.
SESSION_DEFECTS: dict[str, str] = {
    "unknown_status": "unknown_status",
    "presigned_url": "presigned_url",
    "zeroed_totals": "new_field_conflict",  # what the original script wrote: assetCount 0, totalAssetSize 0
    "key_without_url": "key_without_url",
    "timestamp_string": "timestamp_string",
}
#: A session whose combined video is already tracked (consistent with the legacy fields): the rest is filled in.
SESSION_VARIANTS = ("partly_migrated",)


def iter_sessions(n_sessions: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Legacy videoSessions documents (without _id/_creationTime), one at a time."""
    rng = random.Random(f"sessions:{seed}")
    forced = [*SESSION_DEFECTS, *SESSION_VARIANTS]
    for index in range(n_sessions):
        kind = forced[index] if index < len(forced) else _maybe(rng, DEFECT_RATE, forced)
        status = "completed" if kind and kind != "unknown_status" else _weighted(rng, SESSION_STATUSES)
        updated_at = START_MS + index * 3_600_000 + rng.randrange(3_600_000)
        doc: dict[str, Any] = {
            "title": f"{rng.choice(TOPICS)}: lesson {index + 1}",
            "userId": f"user_{rng.randrange(1, 5000):05d}",
            "status": status,
            "updatedAt": updated_at,
        }
        folder = f"sessions/{rng.getrandbits(40):010x}"
        if status == "completed":
            _put(doc, SESSION_ASSET_SOURCES["combinedVideoAsset"], f"{folder}/combined.mp4")
            if rng.random() < 0.8:
                _put(doc, SESSION_ASSET_SOURCES["combinedSubtitleAsset"], f"{folder}/combined.vtt")
            if rng.random() < 0.6:
                _put(doc, SESSION_ASSET_SOURCES["manifestAsset"], f"{folder}/manifest.m3u8")
        elif status == "failed" and rng.random() < 0.9:
            doc["errorMessage"] = rng.choice(SESSION_ERRORS)
        if kind:
            _spoil_session(doc, kind, rng, folder)
        yield doc


def _spoil_session(doc: dict[str, Any], kind: str, rng: random.Random, folder: str) -> None:
    if kind == "unknown_status":
        doc["status"] = rng.choice(("archived", "deleted", "on hold"))
    elif kind == "presigned_url":
        doc["combinedVideoUrl"] += _presigned_query(rng)
    elif kind == "zeroed_totals":
        doc.update(assetCount=0, totalAssetSize=0, assetsStatus="pending")
    elif kind == "key_without_url":
        doc["manifestKey"] = f"{folder}/manifest.m3u8"
        doc.pop("manifestUrl", None)
    elif kind == "timestamp_string":
        doc["updatedAt"] = _iso(doc["updatedAt"])
    elif kind == "partly_migrated":
        doc["combinedVideoAsset"] = _asset(doc, SESSION_ASSET_SOURCES["combinedVideoAsset"], with_size=False)


# -- scenes -----------------------------------------------------------------------------------------------


#: Scene defects forced on the first scenes (then drawn at DEFECT_RATE): name -> the problem code it causes.
#: Each spoils a completed scene that has all four assets.
SCENE_DEFECTS: dict[str, str] = {
    "key_without_url": "key_without_url",
    "url_only": "key_derived",
    "cdn_url_only": "url_not_s3",
    "key_url_mismatch": "key_url_mismatch",
    "presigned_url": "presigned_url",
    "null_key": "wrong_type",
    "error_object": "wrong_type",
    "empty_strings": "empty_string",
    "unknown_status": "unknown_status",
    "s3_uri": "url_not_http",
    "plain_http": "url_plain_http",
    "status_variant": "status_variant",
    "missing_session": "missing_session",
    "duplicate_key": "duplicate_s3_key",
    "oversized_key": "oversized_value",
    "nested_error": "too_deeply_nested",
    "conflicting_asset": "new_field_conflict",
    "completed_without_video": "completed_without_video",
    "unknown_extension": "unknown_content_type",
    "timestamp_string": "timestamp_string",
    "null_timestamp": "invalid_timestamp",
    "size_as_text": "invalid_size",
    "checksum_as_number": "invalid_checksum",
}
#: Scenes that new code (or an earlier attempt) already wrote new fields to, consistent with the legacy ones;
#: and scenes whose legacy `errorMessage` (typed `v.any()`) holds values only a lossless reader keeps.
SCENE_VARIANTS = ("already_migrated", "partly_migrated", "special_values", "int64_error")

#: What an old render worker left in errorMessage: every Convex value plain JSON cannot carry exactly.
SPECIAL_ERROR_VALUES: dict[str, Any] = {
    "exitCode": Int64(137),
    "attempts": Int64(2**60),
    "coreDump": b"\x7fELF\x00\xff",
    "cpuSeconds": math.nan,
    "memoryLimit": math.inf,
    "minFree": -math.inf,
    "offset": -0.0,
    "ratio": 0.5,
}

#: The problem codes a generated dataset shows when planned (n_scenes >= 200, with a missing session id).
BAD_INPUT_CLASSES: tuple[str, ...] = tuple(dict.fromkeys([*SCENE_DEFECTS.values(), *SESSION_DEFECTS.values()]))


class _Scenes:
    """Scene documents and their defects; remembers the last ordinary video chunk for a duplicate to copy."""

    def __init__(self, rng: random.Random, missing_session_id: str | None) -> None:
        self.rng = rng
        self.missing_session_id = missing_session_id
        self.last_video: dict[str, Any] = {}

    def scene(self, session_id: str, scene_index: int, updated_at: int, status: str | None = None, full: bool = False) -> dict[str, Any]:
        rng = self.rng
        status = status or _weighted(rng, SCENE_STATUSES)
        doc: dict[str, Any] = {
            "sessionId": session_id,
            "sceneIndex": scene_index,
            "title": f"Scene {scene_index + 1}: {rng.choice(TOPICS)}",
            "status": status,
            "updatedAt": updated_at,
        }
        folder = f"sessions/{session_id}/scene-{scene_index}"
        odds = {"sourceCodeAsset": 1.0, "thumbnailAsset": 1.0, "subtitleAsset": 1.0} if full else {
            "completed": {"sourceCodeAsset": 0.95, "thumbnailAsset": 0.85, "subtitleAsset": 0.7},
            "uploading": {"sourceCodeAsset": 1.0, "thumbnailAsset": 0.5},
            "rendering": {"sourceCodeAsset": 0.8},
            "failed": {"sourceCodeAsset": 0.5},
        }.get(status, {})
        if status == "completed":
            _put(doc, SCENE_ASSET_SOURCES["videoAsset"], f"{folder}/chunk.mp4")
            doc["s3ChunkSize"] = rng.randrange(200_000, 40_000_000)
            doc["checksum"] = f"{rng.getrandbits(128):032x}"
        files = {"sourceCodeAsset": "source.py", "thumbnailAsset": "thumbnail.png", "subtitleAsset": "subtitles.vtt"}
        for asset_field, name in files.items():
            if rng.random() < odds.get(asset_field, 0.0):
                _put(doc, SCENE_ASSET_SOURCES[asset_field], f"{folder}/{name}")
        if status == "failed":
            roll = rng.random()
            if roll < 0.85:
                doc["errorMessage"] = rng.choice(RENDER_ERRORS)
            elif roll < 0.95:
                doc["errorMessage"] = {"name": "RenderError", "exitCode": 137, "stderr": "Killed"}
        return doc

    def ordinary(self, session_id: str, scene_index: int, updated_at: int, status: str | None = None) -> dict[str, Any]:
        doc = self.scene(session_id, scene_index, updated_at, status)
        if "s3ChunkKey" in doc:
            self.last_video = {f: doc[f] for f in ("s3ChunkKey", "s3ChunkUrl", "s3ChunkSize", "checksum")}
        return doc

    def spoiled(self, kind: str, session_id: str, scene_index: int, updated_at: int) -> dict[str, Any]:
        doc = self.scene(session_id, scene_index, updated_at, status="completed", full=True)
        getattr(self, f"_{kind}")(doc)
        return doc

    # Defects (SCENE_DEFECTS) and variants (SCENE_VARIANTS), one method each.

    def _key_without_url(self, doc: dict[str, Any]) -> None:
        del doc["s3ChunkUrl"]

    def _url_only(self, doc: dict[str, Any]) -> None:
        del doc["s3ChunkKey"]

    def _cdn_url_only(self, doc: dict[str, Any]) -> None:
        doc["sourceCodeUrl"] = f"{CDN_URL}/{doc.pop('sourceCodeKey')}"

    def _key_url_mismatch(self, doc: dict[str, Any]) -> None:
        doc["thumbnailUrl"] = doc["thumbnailUrl"].replace("thumbnail.png", "thumbnail-old.png")

    def _presigned_url(self, doc: dict[str, Any]) -> None:
        doc["s3ChunkUrl"] += _presigned_query(self.rng)

    def _null_key(self, doc: dict[str, Any]) -> None:
        doc["subtitleKey"] = None

    def _error_object(self, doc: dict[str, Any]) -> None:
        doc.update(status="failed", errorMessage={"name": "RenderError", "exitCode": 137, "stderr": "Killed"})

    def _empty_strings(self, doc: dict[str, Any]) -> None:
        doc.update(thumbnailKey="", thumbnailUrl="   ")

    def _unknown_status(self, doc: dict[str, Any]) -> None:
        doc["status"] = self.rng.choice(("archived", "deleted", "paused"))

    def _s3_uri(self, doc: dict[str, Any]) -> None:
        doc["thumbnailUrl"] = "s3://tutor-assets/" + doc["thumbnailKey"]

    def _plain_http(self, doc: dict[str, Any]) -> None:
        doc["subtitleUrl"] = doc["subtitleUrl"].replace("https://", "http://", 1)

    def _status_variant(self, doc: dict[str, Any]) -> None:
        doc["status"] = "Completed"

    def _missing_session(self, doc: dict[str, Any]) -> None:
        doc["sessionId"] = self.missing_session_id

    def _duplicate_key(self, doc: dict[str, Any]) -> None:
        doc.update(self.last_video)

    def _oversized_key(self, doc: dict[str, Any]) -> None:
        key = doc["sourceCodeKey"].replace("source.py", "x" * 2100 + ".py")
        doc.update(sourceCodeKey=key, sourceCodeUrl=f"{BUCKET_URL}/{key}")

    def _nested_error(self, doc: dict[str, Any]) -> None:
        error: dict[str, Any] = {"message": "Killed"}
        for depth in range(10):
            error = {"name": "RenderError", "level": depth, "cause": error}
        doc.update(status="failed", errorMessage=error)

    def _conflicting_asset(self, doc: dict[str, Any]) -> None:
        key = doc["s3ChunkKey"].replace("chunk.mp4", "chunk-v2.mp4")
        doc["videoAsset"] = {"s3Key": key, "s3Url": f"{BUCKET_URL}/{key}", "contentType": "video/mp4", "uploadedAt": doc["updatedAt"] + 1}

    def _completed_without_video(self, doc: dict[str, Any]) -> None:
        for name in ("s3ChunkKey", "s3ChunkUrl", "s3ChunkSize", "checksum"):
            del doc[name]

    def _unknown_extension(self, doc: dict[str, Any]) -> None:
        for name in ("s3ChunkKey", "s3ChunkUrl"):
            doc[name] = doc[name].replace("chunk.mp4", "chunk.mkv")

    def _timestamp_string(self, doc: dict[str, Any]) -> None:
        doc["updatedAt"] = _iso(doc["updatedAt"])

    def _null_timestamp(self, doc: dict[str, Any]) -> None:
        doc["updatedAt"] = None

    def _size_as_text(self, doc: dict[str, Any]) -> None:
        doc["s3ChunkSize"] = str(doc["s3ChunkSize"])

    def _checksum_as_number(self, doc: dict[str, Any]) -> None:
        doc["checksum"] = self.rng.getrandbits(31)

    def _already_migrated(self, doc: dict[str, Any]) -> None:
        for asset_field, pair in SCENE_ASSET_SOURCES.items():
            doc[asset_field] = _asset(doc, pair, with_size=asset_field == "videoAsset")
        doc.update(assetsStatus="ready", assetVersion=1, previousAssetVersions=[])

    def _partly_migrated(self, doc: dict[str, Any]) -> None:
        doc["videoAsset"] = _asset(doc, SCENE_ASSET_SOURCES["videoAsset"], with_size=True)

    def _special_values(self, doc: dict[str, Any]) -> None:
        doc["errorMessage"] = dict(SPECIAL_ERROR_VALUES)  # left over from a failed render; not read when completed

    def _int64_error(self, doc: dict[str, Any]) -> None:
        doc.update(status="failed", errorMessage=Int64(137))


def iter_scenes(
    session_ids: Sequence[str], n_scenes: int, seed: int = 7, missing_session_id: str | None = None
) -> Iterator[dict[str, Any]]:
    """Legacy scenes (without _id/_creationTime) spread evenly over `session_ids`, one at a time.

    The first scene is an ordinary completed one (a duplicate needs a key to copy), then each defect and
    variant once; after that they are drawn at a few percent. Without `missing_session_id` there are no
    missing-session scenes."""
    if n_scenes and not session_ids:
        raise ValueError("scenes need at least one session id")
    rng = random.Random(f"scenes:{seed}")
    factory = _Scenes(rng, missing_session_id)
    defects = [kind for kind in SCENE_DEFECTS if kind != "missing_session" or missing_session_id is not None]
    forced = [None, *defects, *SCENE_VARIANTS]
    owner, scene_index = None, 0
    for index in range(n_scenes):
        session_id = session_ids[index * len(session_ids) // n_scenes]
        scene_index = scene_index + 1 if session_id == owner else 0
        owner = session_id
        updated_at = START_MS + index * 60_000 + rng.randrange(60_000)
        if index < len(forced):
            kind = forced[index]
        else:
            roll = rng.random()
            kind = (
                rng.choice(defects) if roll < DEFECT_RATE
                else "already_migrated" if roll < DEFECT_RATE + ALREADY_MIGRATED_RATE
                else "partly_migrated" if roll < DEFECT_RATE + ALREADY_MIGRATED_RATE + PARTLY_MIGRATED_RATE
                else None
            )
        if kind is None:
            yield factory.ordinary(session_id, scene_index, updated_at, status="completed" if index == 0 else None)
        else:
            yield factory.spoiled(kind, session_id, scene_index, updated_at)


def load(transport: Transport, n_scenes: int, *, seed: int = 7, batch_size: int = 500) -> LoadSummary:
    """Inserts a sample into a deployment through sampleData:insertBatch, in batches; returns the counts.

    A dangling session id (inserted, then deleted) makes the missing-session scenes point at a real id."""
    n_sessions = -(-n_scenes // SCENES_PER_SESSION)
    session_ids: list[str] = []
    for batch in _batches(iter_sessions(n_sessions, seed), batch_size):
        session_ids += _insert(transport, "videoSessions", batch)
    [deleted_id] = _insert(transport, "videoSessions", [{"title": "deleted before the sample", "status": "pending"}])
    transport.function("sampleData:deleteBatch", {"ids": [deleted_id]})
    scenes = 0
    for batch in _batches(iter_scenes(session_ids, n_scenes, seed, deleted_id), batch_size):
        scenes += len(_insert(transport, "scenes", batch))
    return LoadSummary(sessions=len(session_ids), scenes=scenes, missing_session_id=deleted_id)


# -- helpers ----------------------------------------------------------------------------------------------


def _insert(transport: Transport, table: str, documents: list[dict[str, Any]]) -> list[str]:
    # An insert repeated after a lost response would insert twice: retried only if it never reached the server.
    return list(transport.function("sampleData:insertBatch", {"table": table, "documents": documents}, idempotent=False, writes_documents=True)["ids"])


def _batches(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _put(doc: dict[str, Any], pair: tuple[str, str], key: str) -> None:
    key_field, url_field = pair
    doc[key_field] = key
    doc[url_field] = f"{BUCKET_URL}/{key}"


def _asset(doc: dict[str, Any], pair: tuple[str, str], *, with_size: bool) -> dict[str, Any]:
    """The asset migration 001 derives from a clean legacy pair: what an earlier run would have written."""
    key = doc[pair[0]]
    asset: dict[str, Any] = {"s3Key": key, "s3Url": doc[pair[1]], "contentType": content_type_for_key(key)}
    if with_size:
        asset.update(size=doc["s3ChunkSize"], checksum=doc["checksum"])
    asset["uploadedAt"] = doc["updatedAt"]
    return asset


def _presigned_query(rng: random.Random) -> str:
    """The query string of a pre-signed GET URL (fake credential, random signature)."""
    return (
        "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLEEXAMPLE00%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
        f"&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={rng.getrandbits(256):064x}"
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _maybe(rng: random.Random, rate: float, choices: list[str]) -> str | None:
    return rng.choice(choices) if rng.random() < rate else None
