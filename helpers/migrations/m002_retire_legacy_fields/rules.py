"""Migration 002's pure rules: which legacy asset fields a document can lose without losing information.

A legacy field is *carried* when the asset field migration 001 built from it holds the same value (Convex
equality) in the attribute 001 copied it to: the key in `s3Key`, the URL in `s3Url`, the video chunk's
`s3ChunkSize` in `size` and its `checksum` in `checksum`. A value 001 normalised (a URL whose query string or
`http://` it dropped, a key or URL it trimmed) or left out (an invalid size or checksum) is not carried: removing
it would lose exactly that difference. The planner and verify's `legacy_values_recoverable` both ask
`not_carried`, so what the plan retires and what verify accepts are decided by one rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

from helpers.connection.values import equal as values_equal
from helpers.migrations.m001_s3_asset_tracking.fields import ASSET_SOURCES

RETIRE = "retire"
BLOCKED = "blocked"
NOTHING_TO_RETIRE = "nothing_to_retire"
ACTIONS = (RETIRE, BLOCKED, NOTHING_TO_RETIRE)
BLOCKING = "blocking"

#: The field 001 sets on every document it migrated (SCN-5, SES-6): without it 001 never ran on the document.
MIGRATED_MARKER = "assetsStatus"
#: The field legacy writers move on every write, and the asset attribute 001 took it into (AST-3).
UPDATED_AT, UPLOADED_AT = "updatedAt", "uploadedAt"
#: The video chunk's legacy fields beyond its key/URL pair, and the videoAsset attribute 001 copied each to
#: (AST-4, AST-5).
VIDEO_EXTRAS = {"s3ChunkSize": "size", "checksum": "checksum"}


def _carriers(table: str) -> dict[str, tuple[str, str]]:
    carried: dict[str, tuple[str, str]] = {}
    for asset_field, (key_field, url_field) in ASSET_SOURCES[table].items():
        carried[key_field] = (asset_field, "s3Key")
        carried[url_field] = (asset_field, "s3Url")
        if asset_field == "videoAsset":
            carried.update((legacy, (asset_field, attribute)) for legacy, attribute in VIDEO_EXTRAS.items())
    return carried


#: Per table: legacy field -> (the asset field that carries it, the attribute holding its value).
CARRIED_BY: dict[str, dict[str, tuple[str, str]]] = {table: _carriers(table) for table in ASSET_SOURCES}
#: Per table: the legacy fields 002 may remove (its owned fields).
RETIRED_FIELDS: dict[str, frozenset[str]] = {table: frozenset(carried) for table, carried in CARRIED_BY.items()}


def is_carried(value: Any, asset: Any, attribute: str) -> bool:
    """The value is held, exactly, by the asset's attribute."""
    return type(asset) is dict and attribute in asset and values_equal(value, asset[attribute])


def not_carried(table: str, legacy: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per asset field of `doc`, the fields of `legacy` (field -> value) it does not carry; empty when all are."""
    missing: dict[str, list[str]] = {}
    for name, value in legacy.items():
        asset_field, attribute = CARRIED_BY[table][name]
        if not is_carried(value, doc.get(asset_field), attribute):
            missing.setdefault(asset_field, []).append(name)
    return missing


def plan_document(table: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """One plan line: retire every present legacy asset field when all are carried, else block with the reasons.

    Retire's precondition (`expect`) holds the legacy values it removes and the asset fields that carry them, so
    a writer that changes either between the dry-run and apply makes apply report a conflict."""
    carried_by = CARRIED_BY[table]
    legacy = {name: doc[name] for name in carried_by if name in doc}
    if not legacy:
        return _line(table, doc, NOTHING_TO_RETIRE)
    if MIGRATED_MARKER not in doc:
        return _line(table, doc, BLOCKED, problems=[_problem(
            "not_migrated", MIGRATED_MARKER,
            f"{_names(legacy)} {_are(legacy)} set but the document has no {MIGRATED_MARKER}: migration 001 never "
            "migrated it (it was blocked there, or it was written after 001 ran). Run migration 001 again, then plan again.",
        )])
    missing = not_carried(table, legacy, doc)
    if missing:
        return _line(table, doc, BLOCKED, problems=_problems(table, doc, missing))
    carriers = dict.fromkeys(carried_by[name][0] for name in legacy)
    expect = {**legacy, **{asset: doc[asset] for asset in carriers}}
    return _line(table, doc, RETIRE, expect=expect, unset=list(legacy))


def legacy_changed_after(doc: Mapping[str, Any], asset: Mapping[str, Any]) -> bool:
    """The document's updatedAt is later than the asset's uploadedAt, which 001 took from updatedAt (AST-3): a
    writer moved the document after 001 built the asset. Only numbers compare (every current writer writes one)."""
    updated, uploaded = doc.get(UPDATED_AT), asset.get(UPLOADED_AT)
    return _is_number(updated) and _is_number(uploaded) and updated > uploaded


def legacy_status(doc: Mapping[str, Any]) -> str | None:
    """The document's legacy status for the dry-run's per-status tables (None when it is not a plain text)."""
    status = doc.get("status")
    return status if type(status) is str and len(status) <= 100 and _utf8(status) else None


def _line(
    table: str, doc: Mapping[str, Any], action: str, *, expect: dict[str, Any] | None = None,
    unset: list[str] | None = None, problems: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "table": table, "id": doc["_id"], "action": action, "legacyStatus": legacy_status(doc),
        "expect": expect or {}, "expectAbsent": [], "set": {}, "unset": unset or [], "references": [],
        "problems": problems or [],
    }


def _problems(table: str, doc: Mapping[str, Any], missing: Mapping[str, list[str]]) -> list[dict[str, str]]:
    """One problem per reason (so the dry-run counts documents per reason); its field names the asset fields at
    fault, its message what each does not carry."""
    assets: dict[str, list[str]] = {}
    clauses: dict[str, list[str]] = {}
    for asset_field, names in missing.items():
        asset = doc.get(asset_field)
        if type(asset) is not dict:
            reason, clause = "not_migrated", f"{_names(names)} {_are(names)} set but {asset_field} is absent"
        else:
            attributes = ", ".join(f"{asset_field}.{CARRIED_BY[table][name][1]}" for name in names)
            clause = f"{_names(names)} {_differ(names)} from {attributes}"
            reason = "asset_disagrees_with_legacy"
            if legacy_changed_after(doc, asset):
                reason, clause = "legacy_changed_since_migration", f"{clause} and {UPDATED_AT} is later than {asset_field}.{UPLOADED_AT}"
        assets.setdefault(reason, []).append(asset_field)
        clauses.setdefault(reason, []).append(clause)
    return [_problem(reason, ", ".join(assets[reason]), "; ".join(clauses[reason]) + _CONSEQUENCE[reason]) for reason in assets]


_CONSEQUENCE = {
    "not_migrated": (
        ": migration 001 built no asset from it (the value was blank or invalid, 001 was blocked on it, or a legacy "
        "writer set it after 001 ran). Run migration 001 again (it fills a missing asset), or clear a meaningless "
        "legacy value by hand, then plan again."
    ),
    "legacy_changed_since_migration": (
        ": a legacy writer changed the document after migration 001 built the asset. Stop every legacy writer first; "
        "then bring the asset up to date (remove it and run migration 001 again) and plan again."
    ),
    "asset_disagrees_with_legacy": (
        ": removing the legacy value would lose what the asset does not hold (a pre-signed URL's query string, an "
        "http:// scheme, surrounding spaces, or a size or checksum 001 left out as invalid; or the asset was "
        "rewritten since). Decide which is right, correct the legacy field or the asset, then plan again."
    ),
}


def _problem(code: str, field_name: str, message: str) -> dict[str, str]:
    return {"code": code, "severity": BLOCKING, "field": field_name, "message": message}


def _names(names: Mapping[str, Any] | list[str]) -> str:
    return " and ".join(", ".join(list(names)).rsplit(", ", 1))


def _are(names: Mapping[str, Any] | list[str]) -> str:
    return "is" if len(names) == 1 else "are"


def _differ(names: list[str]) -> str:
    return "differs" if len(names) == 1 else "differ"


def _is_number(value: Any) -> TypeGuard[int | float]:
    return type(value) is int or type(value) is float


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
