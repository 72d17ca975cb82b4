"""Verify: after apply, prove the deployment holds what the plan promised and nothing else changed.

Three streams meet here: the backup (the state before), the plan (the promise), and the live tables (the
state after). Each is read once; what is kept per document is a few digests, so memory grows by bytes per
document, not by documents. Asset values are checked against the legacy fields directly, not by running
the conversion rules again, so a bug in the rules cannot hide itself.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import MIGRATION_ID
from .backup import iter_backup_documents, read_backup
from .deployment import iter_documents
from .fields import ASSET_SOURCES, MIGRATED_TABLES, NEW_FIELDS, legacy_part, new_part
from .progress import progress
from .plan import CHANGING_ACTIONS, iter_plan_lines, read_plan
from .run_folder import locked_step
from .transport import ConvexTransport
from .values import digest

EXAMPLES = 5


class Check(BaseModel):
    name: str
    description: str
    passed: bool
    checked: int
    failed: int
    explained: int = 0
    examples: list[str] = []
    note: str = ""

    @property
    def result(self) -> str:
        return "pass" if self.passed else "FAIL"


class VerifyReport(BaseModel):
    migration_id: str = MIGRATION_ID
    plan_sha256: str
    backup_sha256: str
    checks: list[Check]
    changed_by_others: list[str]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class _Tracker:
    """Counts and a few example ids for one check."""

    name: str
    description: str
    checked: int = 0
    failed: int = 0
    explained: int = 0
    examples: list[str] = field(default_factory=list)
    note: str = ""

    def ok(self) -> None:
        self.checked += 1

    def fail(self, doc_id: str) -> None:
        self.checked += 1
        self.failed += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(doc_id)

    def explain(self) -> None:
        self.checked += 1
        self.explained += 1

    def result(self) -> Check:
        return Check(
            name=self.name, description=self.description, passed=self.failed == 0, checked=self.checked,
            failed=self.failed, explained=self.explained, examples=self.examples, note=self.note,
        )


@dataclass(slots=True)
class _Planned:
    table: str
    action: str
    set_digest: bytes
    set_fields: tuple[str, ...]
    references: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Before:
    legacy: bytes
    new: bytes
    updated_at: bytes


@locked_step("04_verify")
def verify(transport: ConvexTransport, run_dir: Path, *, page_size: int = 4000, show_progress: bool = True) -> VerifyReport:
    plan_summary = read_plan(run_dir)
    backup = read_backup(run_dir)

    c_new = _Tracker("new_fields_present", "every planned document holds exactly the new fields the plan set")
    c_assets = _Tracker("assets_equal_legacy", "each asset's key, URL and checksum equal its legacy source fields")
    c_refs = _Tracker("references_match_plan", "asset references match the plan one to one")
    c_dup = _Tracker("no_duplicate_references", "no entity has two references of one asset type from this migration")
    c_dangling = _Tracker("references_point_at_documents", "every reference of this migration points at an existing document")
    c_totals = _Tracker("session_totals", "session assetCount / totalAssetSize equal a recomputation from its scenes and its own assets")
    c_legacy = _Tracker("legacy_fields_unchanged", "legacy fields equal the backup for every document (others' writes reported, not blamed)")
    c_missing = _Tracker("no_backup_document_missing", "every document of the backup still exists")
    c_outside = _Tracker("nothing_outside_plan_changed", "documents the plan left alone have the new fields the backup had; the plan writes only new fields")

    # The promise: what the plan set per document, and the references it planned.
    planned: dict[str, _Planned] = {}
    for line in iter_plan_lines(run_dir):
        table = line["table"]
        set_fields = tuple(sorted(line["set"]))
        if any(f not in NEW_FIELDS[table] for f in set_fields):
            c_outside.fail(line["id"])
        refs = tuple(sorted((r["assetType"], r["s3Key"]) for r in line.get("references", ())))
        planned[line["id"]] = _Planned(table, line["action"], digest(line["set"]), set_fields, refs)

    # The state before: digests of each backed-up document's legacy and new parts.
    before: dict[str, _Before] = {}
    for table in MIGRATED_TABLES:
        for doc in iter_backup_documents(backup, table):
            before[doc["_id"]] = _Before(
                digest(legacy_part(table, doc)), digest(new_part(table, doc)), digest(doc.get("updatedAt"))
            )

    # The state after, one live document at a time.
    migrated: set[str] = set()
    conflicted: set[str] = set()
    live_ids: set[str] = set()
    session_scene_totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    sessions_with_changed_scenes: set[str] = set()
    session_docs: dict[str, tuple[int | None, float | None, int, float]] = {}
    changed_by_others: list[str] = []

    for table in ("scenes", "videoSessions"):
        for doc in progress(iter_documents(transport, table, page_size), desc=f"verify {table}", total=backup.counts.get(table), show=show_progress):
            doc_id = doc["_id"]
            live_ids.add(doc_id)
            prior = before.pop(doc_id, None)
            plan = planned.get(doc_id)
            legacy_changed = prior is not None and digest(legacy_part(table, doc)) != prior.legacy
            if legacy_changed:
                if digest(doc.get("updatedAt")) != prior.updated_at:
                    c_legacy.explain()
                    changed_by_others.append(doc_id)
                else:
                    c_legacy.fail(doc_id)
            elif prior is not None:
                c_legacy.ok()

            if plan is not None and plan.action in CHANGING_ACTIONS:
                now_set = digest({f: doc.get(f) for f in plan.set_fields if f in doc})
                if now_set == plan.set_digest and all(f in doc for f in plan.set_fields):
                    c_new.ok()
                    migrated.add(doc_id)
                elif legacy_changed or (prior is not None and digest(new_part(table, doc)) != prior.new):
                    c_new.explain()
                    conflicted.add(doc_id)
                else:
                    c_new.fail(doc_id)
            elif prior is not None:
                if digest(new_part(table, doc)) == prior.new:
                    c_outside.ok()
                elif legacy_changed:
                    c_outside.explain()
                else:
                    c_outside.fail(doc_id)

            if doc_id in migrated:
                for asset_field, (key_field, url_field) in ASSET_SOURCES[table].items():
                    if asset_field in doc:
                        if _asset_matches_legacy(doc[asset_field], doc.get(key_field), doc.get(url_field)):
                            c_assets.ok()
                        else:
                            c_assets.fail(doc_id)

            assets = [doc[f] for f in ASSET_SOURCES[table] if isinstance(doc.get(f), dict)]
            if table == "scenes":
                session = str(doc.get("sessionId"))
                totals = session_scene_totals[session]
                totals[0] += len(assets)
                totals[1] += sum(a.get("size", 0) for a in assets)
                if doc_id in conflicted or (doc_id in planned and doc_id not in migrated and planned[doc_id].action in CHANGING_ACTIONS):
                    sessions_with_changed_scenes.add(session)
            elif doc_id in migrated:
                own_size = sum(a.get("size", 0) for a in assets)
                session_docs[doc_id] = (doc.get("assetCount"), doc.get("totalAssetSize"), len(assets), own_size)

    for doc_id, (count, size, own_count, own_size) in session_docs.items():
        scenes_count, scenes_size = session_scene_totals.get(doc_id, [0, 0.0])
        if count == own_count + scenes_count and _same_number(size, own_size + scenes_size):
            c_totals.ok()
        elif doc_id in sessions_with_changed_scenes:
            c_totals.explain()
        else:
            c_totals.fail(doc_id)
    c_totals.note = "explained: a scene of the session changed after the plan (its total is the plan's)"

    for doc_id in before:
        c_missing.fail(doc_id)
    c_missing.checked = backup.counts.get("scenes", 0) + backup.counts.get("videoSessions", 0)

    _check_references(transport, page_size, planned, migrated, live_ids, c_refs, c_dup, c_dangling, show_progress)

    c_legacy.note = "explained: updatedAt moved since the backup, so another writer changed the document"
    c_new.note = "explained: changed by someone else between plan and apply (apply reported a conflict)"
    checks = [c.result() for c in (c_new, c_assets, c_refs, c_dup, c_dangling, c_totals, c_legacy, c_missing, c_outside)]
    return VerifyReport(
        plan_sha256=plan_summary.plan_sha256,
        backup_sha256=backup.sha256,
        checks=checks,
        changed_by_others=changed_by_others[:100],
    )


def _check_references(
    transport: ConvexTransport,
    page_size: int,
    planned: dict[str, _Planned],
    migrated: set[str],
    live_ids: set[str],
    c_refs: _Tracker,
    c_dup: _Tracker,
    c_dangling: _Tracker,
    show_progress: bool,
) -> None:
    found: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for ref in progress(iter_documents(transport, "assetReferences", page_size), desc="verify assetReferences", show=show_progress):
        if ref.get("metadata", {}).get("migrationId") != MIGRATION_ID:
            continue
        entity = ref["entityId"]
        found[entity][(ref["assetType"], ref["s3Key"])] += 1
        if entity in live_ids:
            c_dangling.ok()
        else:
            c_dangling.fail(ref["_id"])
    for entity, refs in found.items():
        by_type = Counter(asset_type for asset_type, _ in refs.elements())
        if any(n > 1 for n in by_type.values()):
            c_dup.fail(entity)
        else:
            c_dup.ok()
    for doc_id in migrated:
        expected = Counter(planned[doc_id].references)
        if found.pop(doc_id, Counter()) == expected:
            c_refs.ok()
        else:
            c_refs.fail(doc_id)
    for entity in found:  # references of this migration for documents it did not migrate
        c_refs.fail(entity)


def _asset_matches_legacy(asset: dict[str, Any], legacy_key: Any, legacy_url: Any) -> bool:
    """The asset's key and URL are the legacy ones (a pre-signed URL's query string removed); a missing side was derived."""
    key_ok = not isinstance(legacy_key, str) or not legacy_key.strip() or asset.get("s3Key") == legacy_key.strip()
    url_ok = not isinstance(legacy_url, str) or not legacy_url.strip() or asset.get("s3Url") == legacy_url.strip().split("?", 1)[0]
    type_ok = isinstance(asset.get("contentType"), str) and bool(asset.get("contentType"))
    return key_ok and url_ok and type_ok


def _same_number(a: Any, b: float) -> bool:
    return isinstance(a, (int, float)) and abs(a - b) < 1e-6
