"""A hand-written corpus of bad legacy scenes for the fault suite: one document per problem class of the
dry-run, plus oversized values and deeply nested values (no lone surrogates: Convex, UTF-8, refuses them).
Each entry names the problem code the dry-run must report for it."""

from __future__ import annotations

from typing import Any

BUCKET = "https://tutor-assets.s3.us-east-1.amazonaws.com"


def _scene(session_id: str, index: int, **fields: Any) -> dict[str, Any]:
    key = f"corpus/scene-{index}/chunk.mp4"
    doc = {
        "sessionId": session_id, "sceneIndex": index, "title": f"corpus {index}", "status": "completed",
        "s3ChunkKey": key, "s3ChunkUrl": f"{BUCKET}/{key}", "updatedAt": 1_700_000_000_000 + index,
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not ...}


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"code": "E_RENDER"}
    for level in range(depth):
        value = {"level": level, "cause": value}
    return value


def bad_documents(session_id: str, missing_session_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(problem code, severity, scene document) for every class."""
    k = "corpus/scene-{}/chunk.mp4".format
    return [
        ("key_without_url", "blocking", _scene(session_id, 0, s3ChunkUrl=...)),
        ("key_derived", "flagged", _scene(session_id, 1, s3ChunkKey=...)),
        ("url_not_s3", "blocking", _scene(session_id, 2, s3ChunkKey=..., s3ChunkUrl="https://cdn.example.com/video/2.mp4")),
        ("key_url_mismatch", "blocking", _scene(session_id, 3, s3ChunkUrl=f"{BUCKET}/{k(99)}")),
        ("presigned_url", "flagged", _scene(session_id, 4, s3ChunkUrl=f"{BUCKET}/{k(4)}?X-Amz-Signature=abc&X-Amz-Credential=x")),
        ("wrong_type", "blocking", _scene(session_id, 5, s3ChunkKey=None)),
        ("empty_string", "flagged", _scene(session_id, 6, thumbnailKey="   ", thumbnailUrl="")),
        ("unknown_status", "blocking", _scene(session_id, 7, status="exploded")),
        ("missing_session", "blocking", _scene(missing_session_id, 8)),
        ("duplicate_s3_key", "blocking", _scene(session_id, 9, s3ChunkKey=k(10), s3ChunkUrl=f"{BUCKET}/{k(10)}")),
        ("duplicate_s3_key", "blocking", _scene(session_id, 10)),
        ("new_field_conflict", "blocking", _scene(session_id, 11, videoAsset={
            "s3Key": "someone/else.mp4", "s3Url": f"{BUCKET}/someone/else.mp4", "contentType": "video/mp4", "uploadedAt": 1.0})),
        ("oversized_value", "blocking", _scene(session_id, 12, s3ChunkKey="k" * 5000, s3ChunkUrl=f"{BUCKET}/{'k' * 5000}")),
        ("too_deeply_nested", "blocking", _scene(session_id, 13, status="failed", errorMessage=_nested(30))),
        ("wrong_type", "flagged", _scene(session_id, 15, status="failed", errorMessage={"code": 500})),
        ("invalid_size", "flagged", _scene(session_id, 16, s3ChunkSize="12 MB")),
        ("invalid_checksum", "flagged", _scene(session_id, 17, checksum=12345)),
        ("timestamp_string", "flagged", _scene(session_id, 18, updatedAt="2025-03-01T10:00:00Z")),
        ("completed_without_video", "flagged", _scene(session_id, 19, s3ChunkKey=..., s3ChunkUrl=...)),
        ("unknown_content_type", "flagged", _scene(session_id, 20, sourceCodeKey="corpus/scene-20/source.xyz",
                                                   sourceCodeUrl=f"{BUCKET}/corpus/scene-20/source.xyz")),
    ]
