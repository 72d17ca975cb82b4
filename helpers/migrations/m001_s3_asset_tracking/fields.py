"""The migration's field catalogue, mirroring convex/schema.ts (fields.md beside it has one line per field).

Everything on a document that is not a new field (system fields included) is legacy and is never written.
"""

from __future__ import annotations

SCENE_ASSET_SOURCES: dict[str, tuple[str, str]] = {
    "videoAsset": ("s3ChunkKey", "s3ChunkUrl"),
    "sourceCodeAsset": ("sourceCodeKey", "sourceCodeUrl"),
    "thumbnailAsset": ("thumbnailKey", "thumbnailUrl"),
    "subtitleAsset": ("subtitleKey", "subtitleUrl"),
}
SESSION_ASSET_SOURCES: dict[str, tuple[str, str]] = {
    "combinedVideoAsset": ("combinedVideoKey", "combinedVideoUrl"),
    "combinedSubtitleAsset": ("combinedSubtitleKey", "combinedSubtitleUrl"),
    "manifestAsset": ("manifestKey", "manifestUrl"),
}
ASSET_SOURCES: dict[str, dict[str, tuple[str, str]]] = {
    "scenes": SCENE_ASSET_SOURCES,
    "videoSessions": SESSION_ASSET_SOURCES,
}
#: Legacy fields an asset is built from beyond its key/URL pair: the video chunk's size and checksum (AST-4, AST-5).
ASSET_EXTRA_SOURCES: dict[str, tuple[str, ...]] = {"videoAsset": ("s3ChunkSize", "checksum")}
ASSET_TYPES: dict[str, str] = {
    "videoAsset": "video_chunk",
    "sourceCodeAsset": "source_code",
    "thumbnailAsset": "thumbnail",
    "subtitleAsset": "subtitle",
    "combinedVideoAsset": "combined_video",
    "combinedSubtitleAsset": "combined_subtitle",
    "manifestAsset": "manifest",
}
NEW_FIELDS: dict[str, frozenset[str]] = {
    "scenes": frozenset(
        [*SCENE_ASSET_SOURCES, "assetsStatus", "assetsErrorMessage", "assetVersion", "previousAssetVersions"]
    ),
    "videoSessions": frozenset(
        [*SESSION_ASSET_SOURCES, "totalAssetSize", "assetCount", "assetsStatus", "assetsErrorMessage"]
    ),
}
#: The fields of an asset object (convex/assets.ts `s3AssetFields`), which its asset reference copies.
ASSET_OBJECT_FIELDS = ("s3Key", "s3Url", "contentType", "size", "checksum", "uploadedAt")
#: The entityType of each table's asset references.
ENTITY_TYPES = {"scenes": "scene", "videoSessions": "session"}
MIGRATED_TABLES = ("scenes", "videoSessions")
ALL_TABLES = ("videoSessions", "scenes", "assetReferences", "migrationRuns")


def legacy_part(table: str, doc: dict) -> dict:
    """The fields old code owns (system fields included): what the migration must leave exactly as it was."""
    new = NEW_FIELDS[table]
    return {k: v for k, v in doc.items() if k not in new}


def new_part(table: str, doc: dict) -> dict:
    new = NEW_FIELDS[table]
    return {k: v for k, v in doc.items() if k in new}
