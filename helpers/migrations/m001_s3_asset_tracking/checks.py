"""Migration 001's own verify checks: each asset agrees with its legacy source, assetsStatus with the legacy
status, and each session's totals with its scenes (a cross-document check, its running totals in scratch).

Asset values are checked against the legacy fields directly, not by running the conversion rules again, so a
bug in the rules cannot hide itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from helpers.connection.values import equal
from helpers.migrations.m001_s3_asset_tracking.fields import ASSET_SOURCES
from helpers.migrations.m001_s3_asset_tracking.rules import (
    SCENE_STATUS_MAP,
    SESSION_STATUS_MAP,
    canonical_status,
)
from helpers.migrations.m001_s3_asset_tracking.s3_urls import parse_s3_url
from helpers.steps.migration import DocumentCheck, Joined, Verdict, verdict


def asset_disagreement(table: str, asset_field: str, asset: Any, doc: dict[str, Any]) -> str | None:
    """What of an asset differs from its legacy source fields on the same document, None when nothing does.

    Compares: s3Key with the trimmed key field (when it holds a text), s3Url with the trimmed URL field without
    its query string, http upgraded to https (when it holds a text), s3Url naming s3Key, a non-empty contentType, and for the scene's video chunk the size
    with a non-negative numeric s3ChunkSize (else no size) and the checksum with a non-blank text checksum
    (else no checksum). A missing legacy key or URL was derived, so it is not compared."""
    if type(asset) is not dict:
        return "not an asset object"
    key_field, url_field = ASSET_SOURCES[table][asset_field]
    key, url = doc.get(key_field), doc.get(url_field)
    if type(key) is str and key.strip() and asset.get("s3Key") != key.strip():
        return "key"
    if type(url) is str and url.strip():
        legacy_url = url.strip().partition("?")[0]
        if asset.get("s3Url") not in (legacy_url, _over_https(legacy_url)):
            return "URL"
    if not _url_names_key(asset):
        return "key (its URL names another)"
    if type(asset.get("contentType")) is not str or not asset["contentType"]:
        return "contentType"
    if asset_field == "videoAsset":
        size = doc.get("s3ChunkSize")
        legacy_size = size if (type(size) is int or type(size) is float) and size >= 0 else None
        if (legacy_size is None) != ("size" not in asset) or (legacy_size is not None and not equal(asset["size"], legacy_size)):
            return "size"
        checksum = doc.get("checksum")
        legacy_checksum = checksum if type(checksum) is str and checksum.strip() else None
        if asset.get("checksum") != legacy_checksum:
            return "checksum"
    return None


def _url_names_key(asset: dict[str, Any]) -> bool:
    """The asset's s3Url is the address of its s3Key (an S3 URL's key, or a URL under a base ending in the key)."""
    url, key = asset.get("s3Url"), asset.get("s3Key")
    if type(url) is not str or type(key) is not str:
        return False
    parsed = parse_s3_url(url)
    if parsed is not None:
        return parsed.key == key
    return url.endswith("/" + key) or unquote(url).endswith("/" + key)


def _over_https(url: str) -> str:
    """The same address over https (a plain http S3 URL is stored so, mapping.md url_plain_http)."""
    return "https://" + url[7:] if url[:7].lower() == "http://" else url


def check_assets_equal_legacy(doc: Joined) -> Verdict | None:
    """Each asset of a migratable document (set by the plan or already there) agrees with its legacy source."""
    if doc.plan is None or not doc.plan.migratable or doc.live is None:
        return None
    live = doc.live
    held = [f for f in ASSET_SOURCES[doc.table] if f in live]
    if not held:
        return None
    return verdict(all(asset_disagreement(doc.table, f, live[f], live) is None for f in held), doc)


def expected_assets_status(table: str, doc: dict[str, Any]) -> set[str] | None:
    """The assetsStatus values the legacy status allows (mapping.md SCN-5, SES-6), None when unknown.

    A scene's status decides it (completed needs a video asset to be ready). A session's also depends on its
    scenes, so only what its own status decides is pinned: failed is error; completed without a combined video
    is never ready."""
    status = doc.get("status")
    if table == "scenes":
        canonical = canonical_status(status, SCENE_STATUS_MAP)
        if canonical is None:
            return None
        mapped = SCENE_STATUS_MAP[canonical]
        if mapped == "ready" and "videoAsset" not in doc:
            return {"error"}
        return {mapped}
    canonical = canonical_status(status, SESSION_STATUS_MAP)
    if canonical is None:
        return None
    mapped = SESSION_STATUS_MAP[canonical]
    if mapped == "error":
        return {"error"}
    allowed = {"pending", "uploading", "ready", "error"}
    if mapped == "ready" and "combinedVideoAsset" not in doc:
        allowed.discard("ready")
    return allowed


def check_assets_status_matches_legacy(doc: Joined) -> Verdict | None:
    """A migratable document's assetsStatus is one its legacy status maps to (stale when a writer moved on)."""
    if doc.plan is None or not doc.plan.migratable or doc.live is None or "assetsStatus" not in doc.live:
        return None
    allowed = expected_assets_status(doc.table, doc.live)
    return verdict(allowed is None or doc.live["assetsStatus"] in allowed, doc)


@dataclass(slots=True)
class SceneTotals:
    """What a session's scenes hold after apply: assets, their known sizes, and whether any scene is excused."""

    assets: int = 0
    size: float = 0
    excused: bool = False


def held_assets(table: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc[f] for f in ASSET_SOURCES[table] if type(doc.get(f)) is dict]


def asset_size(assets: list[dict[str, Any]]) -> float:
    return sum(a["size"] for a in assets if type(a.get("size")) in (int, float))


def check_session_totals(session: Joined, scenes: SceneTotals) -> Verdict | None:
    """A session whose totals the plan set holds assetCount = its own assets + its scenes' assets, and
    totalAssetSize = the sum of their known sizes (excused when one of its scenes was changed by the application)."""
    live, plan = session.live, session.plan
    if live is None or plan is None or "assetCount" not in plan.set_fields:  # the plan sets both or neither
        return None
    own = held_assets("videoSessions", live)
    count_ok = equal(live.get("assetCount"), len(own) + scenes.assets)
    size = live.get("totalAssetSize")
    size_ok = (type(size) is int or type(size) is float) and abs(size - (asset_size(own) + scenes.size)) < 1e-6
    if count_ok and size_ok:
        return Verdict.PASS
    return Verdict.APPLICATION if scenes.excused or session.changed_by_application else Verdict.FAIL


def asset_detail(doc: Joined) -> str:
    """For a failed asset check, which asset and what of it differs (the example then says it)."""
    live = doc.live or {}
    return ", ".join(
        f"{f}: {what}" for f in ASSET_SOURCES[doc.table] if f in live
        if (what := asset_disagreement(doc.table, f, live[f], live)) is not None
    )


CHECKS: tuple[DocumentCheck, ...] = (
    DocumentCheck(
        "assets_equal_legacy",
        "each asset of a migratable document equals its legacy source on the same document: s3Key = key field, "
        "s3Url = URL field without query string, s3Url names s3Key, video size = s3ChunkSize, video checksum = "
        "checksum, contentType set",
        check_assets_equal_legacy,
        asset_detail,
    ),
    DocumentCheck(
        "assets_status_matches_legacy",
        "each migratable document's assetsStatus is what its legacy status maps to (mapping.md SCN-5, SES-6)",
        check_assets_status_matches_legacy,
    ),
)


class SessionTotalsCheck:
    """session_totals across documents: the scenes' running totals per session live in a scratch table, filled
    while scenes stream past and read when their session's page comes (scenes come first)."""

    name = "session_totals"
    description = (
        "each session's assetCount = its own assets + its scenes' assets, totalAssetSize = the sum of their known sizes"
    )

    def __init__(self, scratch: Any) -> None:
        self.totals = scratch.table("scene_totals")  # session id -> (assets, size, excused) of its live scenes

    def page(self, table: str, page: Sequence[Joined]) -> Iterator[tuple[str, Verdict | None]]:
        if table == "scenes":
            running = {k: SceneTotals(*v) for k, v in self.totals.get(str(d.live.get("sessionId")) for d in page if d.live).items()}
            for doc in page:
                if doc.live is None:
                    continue
                scene = running.setdefault(str(doc.live.get("sessionId")), SceneTotals())
                assets = held_assets(table, doc.live)
                scene.assets += len(assets)
                scene.size += asset_size(assets)
                scene.excused |= doc.changed_by_application
            self.totals.put((k, (t.assets, t.size, t.excused)) for k, t in running.items())
        elif table == "videoSessions":
            found = {k: SceneTotals(*v) for k, v in self.totals.pop(d.live["_id"] for d in page if d.live).items()}
            for doc in page:
                if doc.live is not None:
                    yield doc.live["_id"], check_session_totals(doc, found.get(doc.live["_id"], SceneTotals()))


def cross_checks(scratch: Any) -> Sequence[SessionTotalsCheck]:
    return (SessionTotalsCheck(scratch),)
