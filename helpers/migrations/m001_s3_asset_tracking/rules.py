"""Migration 001's conversion rules: one legacy document in, one plan line out. Pure: no I/O.

Each rule carries an id (SCN-1, AST-2, ...) that is a row of the mapping table in mapping.md (beside this module), and each
problem code is a row of its problem table. Bad input gets a reason, never a guess: a value the rules cannot
convert faithfully blocks its document ("blocking"), a value they convert with a caveat is "flagged".

The hot path runs once per document of the deployment, so it stays plain: dict lookups, precompiled
regular expressions, no validation library per document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import unquote

from helpers.connection.values import equal as values_equal
from helpers.migrations.m001_s3_asset_tracking.fields import (
    ASSET_TYPES,
    NEW_FIELDS,
    SCENE_ASSET_SOURCES,
    SESSION_ASSET_SOURCES,
)
from helpers.migrations.m001_s3_asset_tracking.plan_line import (
    CHANGING_ACTIONS,
    FLAGGED,
    DocumentPlan,
    SessionTotals,
    blocked,
    problem_of,
)
from helpers.migrations.m001_s3_asset_tracking.s3_urls import (
    CONTENT_TYPES,
    SIGNED_QUERY,
    content_type_for_key,
    is_s3_object_prefix,
    parse_s3_url,
)
from helpers.migrations.m001_s3_asset_tracking.value_checks import (
    ANY_VALUE_FIELDS,
    INT64_MIN,
    MAX_STRING_LENGTH,
    UINT64_MAX,
    describe,
    empty_string,
    nested_problem,
    printable,
    recordable,
    show,
    text_problem,
    type_name,
)

ASSET_VERSION = 1
UNKNOWN_CONTENT_TYPE = "application/octet-stream"


#: SCN-5: every status the legacy scene writers used -> assetsStatus ("ready" needs a video chunk).
#: "error" is an older writer's word for failed; "queued" one for pending; a cancelled scene expects no assets.
SCENE_STATUS_MAP: dict[str, str] = {
    "pending": "pending",
    "queued": "pending",
    "generating": "pending",
    "rendering": "pending",
    "uploading": "uploading",
    "completed": "ready",
    "failed": "error",
    "error": "error",
    "cancelled": "error",
    "canceled": "error",
}
#: SES-6: every status the legacy session writers used -> what the session's own status says (its scenes decide
#: the rest: "pending" here means "as ready as its scenes", "ready" that a combined video is also needed).
SESSION_STATUS_MAP: dict[str, str] = {
    "pending": "pending",
    "queued": "pending",
    "generating": "pending",
    "combining": "pending",
    "completed": "ready",
    "failed": "error",
    "error": "error",
    "cancelled": "error",
    "canceled": "error",
}
SESSION_STATUSES = frozenset(SESSION_STATUS_MAP)
_KNOWN_STATUSES = SESSION_STATUSES.union(SCENE_STATUS_MAP)
_CANCELLED = frozenset({"cancelled", "canceled"})

MISSING_ERROR_TEXT = "Failed before migration 001; the legacy errorMessage was missing or not a text."
CANCELLED_TEXT = "Cancelled before migration 001: no assets are expected."
SCENE_WITHOUT_VIDEO_TEXT = "Legacy status is completed but no video chunk (s3ChunkKey / s3ChunkUrl) was recorded."


class _Reads(NamedTuple):
    """The legacy fields a table's rules read (errorMessage only for a failed document), and the new fields."""

    names: tuple[str, ...]
    new_fields: frozenset[str]

    @classmethod
    def of(cls, table: str, *names: str) -> _Reads:
        return cls(names, NEW_FIELDS[table])


_SCENE_LEGACY_READS = (
    "sessionId", "status", *(f for pair in SCENE_ASSET_SOURCES.values() for f in pair), "s3ChunkSize", "checksum", "updatedAt",
)
_SESSION_LEGACY_READS = ("status", *(f for pair in SESSION_ASSET_SOURCES.values() for f in pair), "updatedAt")
_SCENE_READS = _Reads.of("scenes", *_SCENE_LEGACY_READS)
_SCENE_READS_FAILED = _Reads.of("scenes", *_SCENE_LEGACY_READS, "errorMessage")
_SESSION_READS = _Reads.of("videoSessions", *_SESSION_LEGACY_READS)
_SESSION_READS_FAILED = _Reads.of("videoSessions", *_SESSION_LEGACY_READS, "errorMessage")
_ABSENT: Any = object()
_INVALID: Any = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True)
class RulesContext:
    """What the rules know beyond one document: the bucket's base URL (optional), which sessions exist, and
    which (document id, asset type) already have an assetReferences row (of any origin)."""

    bucket_base_url: str | None = None
    session_exists: Callable[[str], bool] = lambda _id: True
    is_tracked: Callable[[str, str], bool] = lambda _id, _asset_type: False


# -- public helpers ------------------------------------------------------------------------------------


def scene_assets_status(legacy_status: str, has_video: bool, legacy_error: str | None) -> tuple[str, str | None]:
    """SCN-5, SCN-6: (assetsStatus, assetsErrorMessage) of a scene; the message is set only for "error"."""
    status = SCENE_STATUS_MAP[legacy_status]
    if status == "error":
        return status, legacy_error or (CANCELLED_TEXT if legacy_status in _CANCELLED else MISSING_ERROR_TEXT)
    if status == "ready" and not has_video:
        return "error", SCENE_WITHOUT_VIDEO_TEXT
    return status, None


def session_assets_status(
    legacy_status: str, legacy_error: str | None, totals: SessionTotals, has_combined_video: bool
) -> tuple[str, str | None]:
    """SES-6, SES-7: a session is as ready as its scenes (and, once completed, its combined video)."""
    if SESSION_STATUS_MAP[legacy_status] == "error":
        return "error", legacy_error or (CANCELLED_TEXT if legacy_status in _CANCELLED else MISSING_ERROR_TEXT)
    if totals.errors:
        return "error", f"{totals.errors} scene{'s' if totals.errors > 1 else ''} in error"
    all_ready = totals.ready == totals.scenes and (totals.scenes > 0 or has_combined_video)
    if all_ready and (legacy_status != "completed" or has_combined_video):
        return "ready", None
    if totals.uploading:
        return "uploading", None
    return "pending", None


def canonical_status(status: Any, known: dict[str, str]) -> str | None:
    """SCN-5, SES-6: the mapped status a legacy value names, exactly or after trimming and lower-casing it
    ("Completed", " failed": a status_variant); None when it names none."""
    if type(status) is not str:
        return None
    if status in known:
        return status
    folded = status.strip().lower()
    return folded if folded in known else None


def asset_keys(plan: DocumentPlan) -> list[str]:
    """The S3 keys the scene will hold after apply (existing and planned), each once."""
    keys = list(plan.current.get("keys", ()))
    if plan.action in CHANGING_ACTIONS:
        keys.extend(plan.set[f]["s3Key"] for f in SCENE_ASSET_SOURCES if f in plan.set)
    return list(dict.fromkeys(keys))


# -- planning ------------------------------------------------------------------------------------------


def plan_scene(doc: dict[str, Any], ctx: RulesContext) -> DocumentPlan:
    """The scene rules SCN-1 to SCN-10, with the asset (AST-*) and general (GEN-*) rules."""
    status: Any = doc.get("status")  # legacy data: any JSON value
    canonical = canonical_status(status, SCENE_STATUS_MAP)
    failed = canonical is not None and SCENE_STATUS_MAP[canonical] == "error"
    reads = _SCENE_READS_FAILED if failed else _SCENE_READS
    expect, expect_absent, problems, had_new = _read(doc, reads)
    raw_session = doc.get("sessionId")
    session_id = raw_session if type(raw_session) is str and (raw_session.isascii() or recordable(raw_session)) else None
    current = _current(doc) if had_new else {}
    if problems:
        return _unrecordable_plan("scenes", doc, session_id, problems, current)

    # SCN-9: the scene's session must exist.
    if session_id is None or not ctx.session_exists(session_id):
        problems.append(problem_of(
            "missing_session", "sessionId",
            f"sessionId {show(raw_session)} names no videoSessions document: attach the scene to its session "
            "(or delete the orphan) and plan again.",
        ))
    if canonical is None:
        problems.append(_unknown_status(status, SCENE_STATUS_MAP))
    elif canonical != status:
        problems.append(_status_variant(status, canonical))

    produced = _assets(doc, SCENE_ASSET_SOURCES, ctx, problems)  # SCN-1, SCN-2, SCN-3, SCN-4

    if canonical is not None:
        has_video = "videoAsset" in produced or "videoAsset" in doc
        legacy_error = _legacy_error(doc, problems) if failed else None
        assets_status, message = scene_assets_status(canonical, has_video, legacy_error)
        if canonical == "completed" and not has_video and not blocked(problems):  # a blocked chunk is reported already
            problems.append(problem_of(
                "completed_without_video", "s3ChunkKey",
                "status is completed but the scene has no video chunk (s3ChunkKey / s3ChunkUrl): assetsStatus is "
                "set to error. Re-render the scene or confirm it never had a video.",
            ))
        produced["assetsStatus"] = assets_status  # SCN-5
        if message is not None:
            produced["assetsErrorMessage"] = message  # SCN-6
        produced["assetVersion"] = ASSET_VERSION  # SCN-7
        produced["previousAssetVersions"] = []  # SCN-8

    return _finish("scenes", doc, _Draft(expect, expect_absent, produced, problems, had_new), session_id, current, ctx)


def plan_session(doc: dict[str, Any], totals: SessionTotals, ctx: RulesContext) -> DocumentPlan:
    """The session rules SES-1 to SES-8 (with AST-*, GEN-*), given its scenes' totals after apply."""
    status: Any = doc.get("status")  # legacy data: any JSON value
    canonical = canonical_status(status, SESSION_STATUS_MAP)
    failed = canonical is not None and SESSION_STATUS_MAP[canonical] == "error"
    reads = _SESSION_READS_FAILED if failed else _SESSION_READS
    expect, expect_absent, problems, had_new = _read(doc, reads)
    if problems:
        return _unrecordable_plan("videoSessions", doc, None, problems, {})

    if canonical is None:
        problems.append(_unknown_status(status, SESSION_STATUS_MAP))
    elif canonical != status:
        problems.append(_status_variant(status, canonical))

    produced = _assets(doc, SESSION_ASSET_SOURCES, ctx, problems)  # SES-1, SES-2, SES-3

    candidates = [produced.get(f) or doc.get(f) for f in SESSION_ASSET_SOURCES]
    own = [asset for asset in candidates if type(asset) is dict]
    produced["assetCount"] = len(own) + totals.assets  # SES-4
    produced["totalAssetSize"] = sum(a.get("size", 0) for a in own) + totals.known_size  # SES-5
    if canonical is not None:
        has_combined_video = "combinedVideoAsset" in produced or type(doc.get("combinedVideoAsset")) is dict
        legacy_error = _legacy_error(doc, problems) if failed else None
        assets_status, message = session_assets_status(canonical, legacy_error, totals, has_combined_video)
        if canonical == "completed" and not has_combined_video and not blocked(problems):
            problems.append(problem_of(
                "completed_without_video", "combinedVideoKey",
                "status is completed but the session has no combined video (combinedVideoKey / combinedVideoUrl): "
                "check whether combining really finished.",
            ))
        produced["assetsStatus"] = assets_status  # SES-6
        if message is not None:
            produced["assetsErrorMessage"] = message  # SES-7

    return _finish("videoSessions", doc, _Draft(expect, expect_absent, produced, problems, had_new), None, {}, ctx)


@dataclass(frozen=True, slots=True)
class _Draft:
    """One document's plan as its table's rules drafted it, before GEN-1 and GEN-2 decide what is set: the
    precondition read (present fields, absent ones), the new fields the rules computed, the problems found, and
    whether the document already held new fields."""

    expect: dict[str, Any]
    expect_absent: list[str]
    produced: dict[str, Any]
    problems: list[dict[str, str]]
    had_new: bool


def _finish(
    table: str, doc: dict[str, Any], draft: _Draft, session_id: str | None, current: dict[str, Any], ctx: RulesContext
) -> DocumentPlan:
    """GEN-1: keep what is already there, fill what is missing, refuse what differs; GEN-2: the action."""
    expect, expect_absent, problems = draft.expect, draft.expect_absent, draft.problems
    to_set = draft.produced
    if draft.had_new:
        to_set = {}
        for name, value in draft.produced.items():
            existing = doc.get(name, _ABSENT)
            if existing is _ABSENT:
                to_set[name] = value
            elif not values_equal(existing, value):
                problems.append(problem_of(
                    "new_field_conflict", name,
                    f"{name} already holds {show(existing)} but migration 001 computes {show(value)}; it is never "
                    "overwritten. Find out who wrote it, correct or remove the field by hand, then plan again.",
                ))
    status = doc.get("status")
    doc_id, legacy_status = doc["_id"], status if type(status) is str and status in _KNOWN_STATUSES else printable(status)
    if problems and blocked(problems):
        return DocumentPlan(table, doc_id, "problem", session_id, legacy_status, expect, expect_absent, {}, [], problems, current)
    entity_type, sources = ("scene", SCENE_ASSET_SOURCES) if table == "scenes" else ("session", SESSION_ASSET_SOURCES)
    references = [  # SCN-10, SES-8: every asset the document will hold (set now, or there before) and not yet tracked
        # applyBatch adds entityId, createdAt and the run's ids to `metadata` (helpers.steps.migration.SideRows).
        dict(asset, entityType=entity_type, assetType=ASSET_TYPES[name], version=ASSET_VERSION,
             metadata={"migratedFromLegacy": True, "legacyField": key_field})
        for name, (key_field, _) in sources.items()
        if type(asset := to_set.get(name, doc.get(name))) is dict and not ctx.is_tracked(doc_id, ASSET_TYPES[name])
    ]
    action = "fill_missing" if to_set and draft.had_new else "migrate" if to_set else "track_existing" if references else "no_change"
    expect_absent.extend(to_set)
    return DocumentPlan(table, doc_id, action, session_id, legacy_status, expect, expect_absent, to_set, references, problems, current)


def untracked_assets(table: str, doc: dict[str, Any], ctx: RulesContext) -> list[str]:
    """The asset types of the asset fields the document already holds that no reference tracks yet."""
    sources = SCENE_ASSET_SOURCES if table == "scenes" else SESSION_ASSET_SOURCES
    return [ASSET_TYPES[name] for name in sources if type(doc.get(name)) is dict and not ctx.is_tracked(doc["_id"], ASSET_TYPES[name])]


def _unrecordable_plan(
    table: str, doc: dict[str, Any], session_id: str | None, problems: list[dict[str, str]], current: dict[str, Any]
) -> DocumentPlan:
    """GEN-4: a value the plan cannot carry blocks the document; its line then holds no precondition at all."""
    return DocumentPlan(table, doc["_id"], "problem", session_id, printable(doc.get("status")), {}, [], {}, [], problems, current)


# -- GEN-3, GEN-4: reading the fields the rules use -----------------------------------------------------


def _read(doc: dict[str, Any], reads: _Reads) -> tuple[dict[str, Any], list[str], list[dict[str, str]], bool]:
    """The precondition (present read fields, absent ones), any value the plan cannot carry faithfully, and
    whether the document already holds new fields (which the rules then read too)."""
    expect: dict[str, Any] = {}
    absent: list[str] = []
    problems: list[dict[str, str]] = []
    get = doc.get
    for name in reads.names:
        value = get(name, _ABSENT)
        if value is _ABSENT:
            absent.append(name)
            continue
        expect[name] = value
        if type(value) is str:
            if len(value) > MAX_STRING_LENGTH or not value.isascii():
                problem = text_problem(name, value)
                if problem is not None:
                    problems.append(problem)
        elif (type(value) is not int or not INT64_MIN <= value <= UINT64_MAX) and value is not None:
            problem = nested_problem(name, value, 1, name in ANY_VALUE_FIELDS)
            if problem is not None:
                problems.append(problem)
    had_new = not reads.new_fields.isdisjoint(doc)
    if had_new:
        for name in sorted(reads.new_fields.intersection(doc)):
            value = expect[name] = doc[name]
            problem = nested_problem(name, value, 1)
            if problem is not None:
                problems.append(problem)
    return expect, absent, problems, had_new


def _current(doc: dict[str, Any]) -> dict[str, Any]:
    """What the scene already holds in new fields, for its session's totals and the duplicate-key check."""
    assets = [doc[f] for f in SCENE_ASSET_SOURCES if type(doc.get(f)) is dict]
    status = doc.get("assetsStatus")
    if not assets and status is None:
        return {}
    keys = [a["s3Key"] for a in assets if type(a.get("s3Key")) is str and recordable(a["s3Key"])]
    size = sum(a.get("size", 0) for a in assets if type(a.get("size", 0)) in (int, float))
    return {"assets": len(assets), "size": size, "keys": keys, "assetsStatus": status if type(status) is str else None}


# -- AST-1: a key and a URL into one object address ----------------------------------------------------


def _resolve_pair(
    doc: dict[str, Any], key_field: str, url_field: str, ctx: RulesContext, problems: list[dict[str, str]]
) -> tuple[str, str] | None:
    """(s3Key, s3Url) of one legacy key/URL pair, None when there is no asset or it cannot be trusted."""
    key = _text(doc, key_field, problems)
    url = _text(doc, url_field, problems)
    if key is _INVALID or url is _INVALID:
        return None
    if url is not None:
        base, _, query = url.partition("?")
        scheme = base.partition("://")[0].lower() if "://" in base else ""
        if scheme not in ("http", "https"):
            problems.append(problem_of(
                "url_not_http", url_field,
                f"{url_field} ({show(base)}) is not a web address (scheme {scheme or 'missing'!r}), but s3Url promises "
                f"the object's https S3 URL: write the https URL into {url_field}, then plan again.",
            ))
            return None
        if query and SIGNED_QUERY.search(query):
            problems.append(problem_of(
                "presigned_url", url_field,
                f"{url_field} is a pre-signed URL: its query string (signature) is removed and the asset stores the "
                "plain object URL. Make sure readers get signed links from the key, not from s3Url.",
            ))
        parsed = parse_s3_url(url)
        under_base = _key_under_base(base, ctx)
        if parsed is None and under_base is None:
            host = base.partition("://")[2].partition("/")[0]
            problems.append(problem_of(
                "url_not_s3", url_field,
                f"{url_field} ({show(base)}) is not an S3 object URL (host {show(host)} is not an S3 endpoint, e.g. a "
                f"CDN), but s3Url promises one: write the object's S3 URL into {url_field}, or plan with bucket_base_url "
                "set to this host's base if it serves the bucket.",
            ))
            return None
        if parsed is not None and under_base is None and scheme == "http":
            base = "https" + base[len(scheme):]
            problems.append(problem_of(
                "url_plain_http", url_field,
                f"{url_field} is a plain http:// S3 URL: the asset stores the same address over https ({show(base)}).",
            ))
        derived = parsed.key if parsed is not None else under_base
        if key is None:
            key = derived
            problems.append(problem_of(
                "key_derived", key_field,
                f"{key_field} was missing; the key {show(key)} was taken from {url_field}. Check it names the object.",
            ))
        elif derived != key:
            problems.append(problem_of(
                "key_url_mismatch", key_field,
                f"{key_field} ({show(key)}) and {url_field} ({show(base)}) name different objects: decide which one "
                "is right, correct the legacy data, then plan again.",
            ))
            return None
        return key, base
    if key is None:
        return None
    if ctx.bucket_base_url:
        problems.append(problem_of(
            "url_derived", url_field,
            f"{url_field} was missing; derived from bucket_base_url and {key_field}. Check the base URL serves this object.",
        ))
        return key, f"{ctx.bucket_base_url.rstrip('/')}/{key}"
    problems.append(problem_of(
        "key_without_url", key_field,
        f"{key_field} is set but {url_field} is missing, so the asset's URL is unknown: plan again with "
        f"bucket_base_url (the bucket's public base URL) or fill {url_field} in the legacy data.",
    ))
    return None


def _text(doc: dict[str, Any], name: str, problems: list[dict[str, str]]) -> Any:
    """A key or URL field as stripped text; None when absent or blank, _INVALID when not a text at all."""
    value = doc.get(name, _ABSENT)
    if value is _ABSENT:
        return None
    if type(value) is str:
        text = value.strip()
        if text:
            return text
        problems.append(empty_string(name))
        return None
    problems.append(problem_of(
        "wrong_type", name, f"{name} holds {type_name(value)} where a text is expected: correct or remove it in the "
        "legacy data, then plan again.",
    ))
    return _INVALID


def _key_under_base(base: str, ctx: RulesContext) -> str | None:
    if not ctx.bucket_base_url:
        return None
    prefix = ctx.bucket_base_url.rstrip("/") + "/"
    key = unquote(base[len(prefix):]) if base.startswith(prefix) else ""
    return key or None


# -- AST-2 to AST-5: the rest of an asset --------------------------------------------------------------


def _assets(
    doc: dict[str, Any], sources: dict[str, tuple[str, str]], ctx: RulesContext, problems: list[dict[str, str]]
) -> dict[str, Any]:
    """The new asset fields the legacy pairs yield; only the scene's video chunk has a size and a checksum."""
    assets: dict[str, Any] = {}
    get = doc.get
    uploaded_at: Any = _ABSENT
    for asset_field, (key_field, url_field) in sources.items():
        key, url = get(key_field), get(url_field)
        if key is None and url is None and key_field not in doc and url_field not in doc:
            continue
        # The usual case needs none of AST-1's repairs: a key and the plain S3 URL of that very key.
        if not (
            type(key) is str and type(url) is str and (key := key.strip()) and (url := url.strip()).endswith(key)
            and "?" not in key and "#" not in key and "%" not in key and is_s3_object_prefix(url[: -len(key)])
        ):
            pair = _resolve_pair(doc, key_field, url_field, ctx, problems)
            if pair is None:
                continue
            key, url = pair
        if uploaded_at is _ABSENT:
            uploaded_at = _uploaded_at(doc, problems)  # AST-3
        dot = key.rfind(".")  # AST-2, inlined for the usual lower-case extension
        content_type = CONTENT_TYPES.get(key[dot + 1 :]) if dot > 0 and key[dot - 1] != "/" else None
        if content_type is None and (content_type := content_type_for_key(key)) is None:
            content_type = UNKNOWN_CONTENT_TYPE
            problems.append(problem_of(
                "unknown_content_type", key_field,
                f"{key_field} {show(key)} has no known file extension: contentType is set to {UNKNOWN_CONTENT_TYPE}. "
                "Correct it later if the object has a real type.",
            ))
        if asset_field == "videoAsset":
            asset: dict[str, Any] = {"s3Key": key, "s3Url": url, "contentType": content_type}
            size = get("s3ChunkSize", _ABSENT)  # AST-4
            if type(size) is int and size >= 0:
                asset["size"] = size
            elif size is not _ABSENT and (size := _size(size, problems)) is not None:
                asset["size"] = size
            checksum = get("checksum", _ABSENT)  # AST-5
            if checksum is not _ABSENT and (checksum := _checksum(checksum, problems)) is not None:
                asset["checksum"] = checksum
            asset["uploadedAt"] = uploaded_at
            assets[asset_field] = asset
        else:
            assets[asset_field] = {"s3Key": key, "s3Url": url, "contentType": content_type, "uploadedAt": uploaded_at}
    return assets


def _size(value: Any, problems: list[dict[str, str]]) -> int | float | None:
    if (type(value) is int or type(value) is float) and value >= 0:
        return value
    problems.append(problem_of(
        "invalid_size", "s3ChunkSize",
        f"s3ChunkSize holds {describe(value)} instead of a non-negative number: videoAsset.size is left out "
        "(unknown). Record the real size later if it matters.",
    ))
    return None


def _checksum(value: Any, problems: list[dict[str, str]]) -> str | None:
    if type(value) is str:
        if value.strip():
            return value
        problems.append(empty_string("checksum"))
        return None
    problems.append(problem_of(
        "invalid_checksum", "checksum",
        f"checksum holds {type_name(value)} instead of a text: videoAsset.checksum is left out. Recompute it from "
        "the object if it is needed.",
    ))
    return None


def _uploaded_at(doc: dict[str, Any], problems: list[dict[str, str]]) -> int | float:
    """AST-3: when the legacy writer last touched the assets, else when the document was created."""
    value = doc.get("updatedAt", _ABSENT)
    if type(value) is int or type(value) is float:
        return value
    if value is _ABSENT:
        return doc["_creationTime"]
    text = value.strip() if type(value) is str else ""
    parsed = _iso_to_ms(text) if text else None
    if parsed is not None:
        problems.append(problem_of(
            "timestamp_string", "updatedAt",
            "updatedAt is an ISO date text (an old writer's format): converted to milliseconds for uploadedAt.",
        ))
        return parsed
    if type(value) is str and not text:
        problems.append(empty_string("updatedAt"))
    else:
        problems.append(problem_of(
            "invalid_timestamp", "updatedAt",
            f"updatedAt holds {describe(value)}, neither a number nor an ISO date: uploadedAt uses _creationTime.",
        ))
    return doc["_creationTime"]


def _iso_to_ms(text: str) -> int | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return (moment - _EPOCH) // _MILLISECOND
    except OverflowError:
        return None


def _legacy_error(doc: dict[str, Any], problems: list[dict[str, str]]) -> str | None:
    """SCN-6, SES-7: the legacy error text of a failed document, None when there is none to copy."""
    value = doc.get("errorMessage", _ABSENT)
    if value is _ABSENT:
        return None
    if type(value) is str:
        if value.strip():
            return value
        problems.append(empty_string("errorMessage"))
        return None
    problems.append(problem_of(
        "wrong_type", "errorMessage",
        f"errorMessage holds {type_name(value)} instead of a text: assetsErrorMessage gets a fixed text; the "
        "original stays in errorMessage for whoever investigates the failure.",
        FLAGGED,
    ))
    return None


# -- problems ---------------------------------------------------------------------------------------------


def _unknown_status(status: Any, known: Any) -> dict[str, str]:
    return problem_of(
        "unknown_status", "status",
        f"status {show(status)} is not one of {', '.join(sorted(known))}: correct it in the legacy data (or extend "
        "the status mapping in helpers/migrations/m001_s3_asset_tracking: mapping.md and rules.py), then plan again.",
    )


def _status_variant(status: str, canonical: str) -> dict[str, str]:
    return problem_of(
        "status_variant", "status",
        f"status {show(status)} is read as {canonical!r} (case and spaces ignored); the legacy value is left as it is.",
    )
