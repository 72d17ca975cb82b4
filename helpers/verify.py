"""Verify: after apply, prove the deployment holds what the plan promised and nothing else changed.

Three sources meet per document: the backup (the state before), the plan (the promise) and the live
document (the state after), joined into one `Joined` record in one streaming pass. Every check is a small
pure function over such records (or over one asset and its references, or one session and its scenes'
totals) returning a `Verdict`, so each can be called alone in a unit test with hand-built documents.

A document whose legacy fields another writer changed after the backup (legacy writers always move
`updatedAt`) is never blamed on the migration: it is listed as "changed by the application since the
migration", with the advice to re-plan it. Verify fails only for what the migration did wrong.

Memory stays bounded by the page size: the per-document digests, references and session totals live in a
scratch SQLite file (helpers/scratch.py) and each page of live documents looks its own up. Asset values are
checked against the legacy fields directly, not by running the conversion rules again, so a bug in the rules
cannot hide itself. Live documents neither the backup nor the plan knows were created after the snapshot: they
are listed apart (not a failure), with the advice to run again in a new run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel

from . import MIGRATION_ID
from .backup import iter_backup_documents, read_backup
from .deployment import iter_pages
from .fields import ASSET_SOURCES, ASSET_TYPES, MIGRATED_TABLES, NEW_FIELDS, legacy_part, new_part
from .plan import CHANGING_ACTIONS, iter_plan_lines, paged_progress, read_plan, reference_key
from .rules import SCENE_STATUS_MAP, SESSION_STATUS_MAP, canonical_status, parse_s3_url
from .run_folder import locked_step
from .scratch import Scratch, batched, prefetch
from .transport import ConvexTransport
from .values import digest, equal

EXAMPLES = 5
RE_PLAN_ADVICE = (
    "These documents were changed by the application after the backup (their legacy fields and updatedAt moved): "
    "the migration did not do this. To bring them up to date, run a new dry-run in a new run folder (backup, "
    "dry-run, apply, verify): it plans them from their current state."
)
NEW_DOCUMENTS_ADVICE = (
    "These documents were created after the backup snapshot this run planned from, so the migration did not see "
    "them and they are not migrated. To migrate them, run again in a new run folder (backup, dry-run, apply, "
    "verify): its snapshot includes them."
)
_ENTITY_TYPES = {"scenes": "scene", "videoSessions": "session"}
_REFERENCE_ASSET_FIELDS = ("s3Key", "s3Url", "contentType", "size", "checksum", "uploadedAt")


class Verdict(Enum):
    PASS = "pass"
    FAIL = "fail"
    APPLICATION = "application"  # differs, because the application changed the document since the backup


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


class ChangedByApplication(BaseModel):
    """Documents the application changed since the migration: not a failure, but no longer what the plan saw."""

    count: int = 0
    examples: list[str] = []
    advice: str = RE_PLAN_ADVICE


class CreatedAfterSnapshot(BaseModel):
    """Live documents neither the backup nor the plan knows: created after the snapshot. Not a failure (the
    migration never saw them), but not migrated either."""

    count: int = 0
    examples: list[str] = []
    advice: str = NEW_DOCUMENTS_ADVICE


class VerifyReport(BaseModel):
    migration_id: str = MIGRATION_ID
    plan_sha256: str
    backup_sha256: str
    checks: list[Check]
    changed_by_others: list[str]  # up to 100 ids of changed_by_application, for older readers
    changed_by_application: ChangedByApplication = ChangedByApplication()
    created_after_snapshot: CreatedAfterSnapshot = CreatedAfterSnapshot()

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


# -- the joined record ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Before:
    """A backed-up document as digests: its legacy part, its new part without the fields the plan sets, and
    its updatedAt."""

    legacy: bytes
    kept_new: bytes
    updated_at: bytes

    @classmethod
    def of(cls, table: str, doc: dict[str, Any], set_fields: Iterable[str] = ()) -> Before:
        kept = {k: v for k, v in new_part(table, doc).items() if k not in set(set_fields)}
        return cls(digest(legacy_part(table, doc)), digest(kept), digest(doc.get("updatedAt")))


@dataclass(frozen=True, slots=True)
class Planned:
    """A plan line as verify needs it: the action, the fields it sets with a digest of their values."""

    action: str
    set_fields: tuple[str, ...]
    set_digest: bytes

    @classmethod
    def of(cls, line: dict[str, Any]) -> Planned:
        return cls(line["action"], tuple(sorted(line["set"])), digest(line["set"]))

    @property
    def changes(self) -> bool:
        return self.action in CHANGING_ACTIONS

    @property
    def migratable(self) -> bool:
        return self.action != "problem"


@dataclass(slots=True)
class Joined:
    """One document as the backup, the plan and the deployment know it (each may be missing)."""

    table: str
    before: Before | None
    plan: Planned | None
    live: dict[str, Any] | None

    @property
    def changed_by_application(self) -> bool:
        """Its legacy fields differ from the backup and its updatedAt moved: a legacy writer changed it."""
        if self.before is None or self.live is None:
            return False
        return (
            digest(legacy_part(self.table, self.live)) != self.before.legacy
            and digest(self.live.get("updatedAt")) != self.before.updated_at
        )

    @property
    def in_planned_state(self) -> bool:
        plan, live = self.plan, self.live
        if plan is None or live is None or not all(f in live for f in plan.set_fields):
            return False
        return digest({f: live[f] for f in plan.set_fields}) == plan.set_digest


def _verdict(ok: bool, doc: Joined) -> Verdict:
    if ok:
        return Verdict.PASS
    return Verdict.APPLICATION if doc.changed_by_application else Verdict.FAIL


# -- document checks (pure) ------------------------------------------------------------------------------


def check_planned_fields_written(doc: Joined) -> Verdict | None:
    """A document the plan changes holds exactly the values of the plan's `set` (Convex deep equality)."""
    if doc.plan is None or not doc.plan.changes or doc.live is None:
        return None
    return _verdict(doc.in_planned_state, doc)


def check_nothing_outside_plan_changed(doc: Joined) -> Verdict | None:
    """The new fields the plan does not set are as the backup had them (present or absent, same values)."""
    if doc.before is None or doc.live is None:
        return None
    set_fields = set(doc.plan.set_fields) if doc.plan is not None else set()  # empty unless the plan changes it
    kept = {k: v for k, v in new_part(doc.table, doc.live).items() if k not in set_fields}
    return _verdict(digest(kept) == doc.before.kept_new, doc)


def check_legacy_fields_unchanged(doc: Joined) -> Verdict | None:
    """Every legacy field (system fields included) equals the backup, unless a legacy writer moved updatedAt."""
    if doc.before is None or doc.live is None:
        return None
    return _verdict(digest(legacy_part(doc.table, doc.live)) == doc.before.legacy, doc)


def check_document_still_exists(doc: Joined) -> Verdict | None:
    """A document of the backup still exists."""
    if doc.before is None:
        return None
    return Verdict.FAIL if doc.live is None else Verdict.PASS


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
        legacy_size = size if type(size) in (int, float) and size >= 0 else None
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
    """The same address over https (a plain http S3 URL is stored so, docs/mapping.md url_plain_http)."""
    return "https://" + url[7:] if url[:7].lower() == "http://" else url


def check_assets_equal_legacy(doc: Joined) -> Verdict | None:
    """Each asset of a migratable document (set by the plan or already there) agrees with its legacy source."""
    if doc.plan is None or not doc.plan.migratable or doc.live is None:
        return None
    live = doc.live
    held = [f for f in ASSET_SOURCES[doc.table] if f in live]
    if not held:
        return None
    return _verdict(all(asset_disagreement(doc.table, f, live[f], live) is None for f in held), doc)


def expected_assets_status(table: str, doc: dict[str, Any]) -> set[str] | None:
    """The assetsStatus values the legacy status allows (docs/mapping.md SCN-5, SES-6), None when unknown.

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
    return _verdict(allowed is None or doc.live["assetsStatus"] in allowed, doc)


@dataclass(frozen=True)
class DocumentCheck:
    name: str
    description: str
    run: Callable[[Joined], Verdict | None]


DOCUMENT_CHECKS: tuple[DocumentCheck, ...] = (
    DocumentCheck(
        "planned_fields_written",
        "every document the plan changes holds exactly the values of the plan's `set` (deep Convex equality)",
        check_planned_fields_written,
    ),
    DocumentCheck(
        "assets_equal_legacy",
        "each asset of a migratable document equals its legacy source on the same document: s3Key = key field, "
        "s3Url = URL field without query string, s3Url names s3Key, video size = s3ChunkSize, video checksum = "
        "checksum, contentType set",
        check_assets_equal_legacy,
    ),
    DocumentCheck(
        "assets_status_matches_legacy",
        "each migratable document's assetsStatus is what its legacy status maps to (docs/mapping.md SCN-5, SES-6)",
        check_assets_status_matches_legacy,
    ),
    DocumentCheck(
        "legacy_fields_unchanged",
        "every legacy field (system fields included) equals the backup",
        check_legacy_fields_unchanged,
    ),
    DocumentCheck(
        "nothing_outside_plan_changed",
        "the new fields the plan does not set equal the backup's (none added, changed or removed), and the plan sets "
        "only new fields",
        check_nothing_outside_plan_changed,
    ),
    DocumentCheck(
        "no_backup_document_missing",
        "every scene and session of the backup still exists",
        check_document_still_exists,
    ),
)


def check_plan_writes_only_new_fields(line: dict[str, Any]) -> Verdict:
    """A plan line sets only new fields of its table (part of nothing_outside_plan_changed)."""
    return Verdict.PASS if all(f in NEW_FIELDS[line["table"]] for f in line["set"]) else Verdict.FAIL


# -- session totals (pure) ---------------------------------------------------------------------------------


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
    size_ok = type(size) in (int, float) and abs(size - (asset_size(own) + scenes.size)) < 1e-6
    if count_ok and size_ok:
        return Verdict.PASS
    return Verdict.APPLICATION if scenes.excused or session.changed_by_application else Verdict.FAIL


# -- references (pure) ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reference:
    """An assetReferences row as verify needs it."""

    ours: bool  # created by this migration
    tracks: bytes  # digest of the asset it describes, with its entity type

    @classmethod
    def of(cls, row: dict[str, Any]) -> Reference:
        return cls(row["metadata"]["migrationId"] == MIGRATION_ID, reference_digest(row, row["entityType"]))


def reference_digest(asset: dict[str, Any], entity_type: Any) -> bytes:
    """What a reference must agree on with the asset it tracks: entity type and the asset's own fields."""
    return digest([entity_type, {k: asset[k] for k in _REFERENCE_ASSET_FIELDS if k in asset}])


def check_references_match_asset(doc: Joined, asset: dict[str, Any], refs: list[Reference]) -> Verdict | None:
    """Every reference of this migration for one asset type of a document describes the asset it holds
    (entityType, s3Key, s3Url, contentType, size, checksum, uploadedAt)."""
    ours = [r for r in refs if r.ours]
    if not ours:
        return None
    expected = reference_digest(asset, _ENTITY_TYPES[doc.table])
    return _verdict(all(r.tracks == expected for r in ours), doc)


def check_no_duplicate_references(refs: list[Reference]) -> Verdict | None:
    """An entity has at most one reference per asset type."""
    if not refs:
        return None
    return Verdict.PASS if len(refs) == 1 else Verdict.FAIL


def check_asset_tracked(doc: Joined, refs: list[Reference]) -> Verdict | None:
    """An asset a migratable document holds has an assetReferences row of its type (tracking is complete)."""
    if doc.plan is None or not doc.plan.migratable or doc.live is None:
        return None
    return _verdict(bool(refs), doc)


def check_reference_has_asset(document_changed_by_application: bool, refs: list[Reference]) -> Verdict | None:
    """A reference of this migration on an existing document that holds no asset of its type: it points at the
    wrong document (excused when the application changed that document since the backup)."""
    if not any(r.ours for r in refs):
        return None
    return Verdict.APPLICATION if document_changed_by_application else Verdict.FAIL


def check_reference_points_at_document(entity_exists: bool, refs: list[Reference]) -> Verdict | None:
    """A reference of this migration points at an existing scene or session."""
    if not any(r.ours for r in refs):
        return None
    return Verdict.PASS if entity_exists else Verdict.FAIL


REFERENCE_CHECKS: dict[str, str] = {
    "references_match_assets": "each reference of this migration equals the asset its document holds under that asset "
    "type (entityType, s3Key, s3Url, contentType, size, checksum, uploadedAt); none names an asset its document lacks",
    "no_duplicate_references": "no document has two references (of any origin) of one asset type",
    "references_point_at_documents": "every reference of this migration points at an existing scene or session",
    "tracking_complete": "every asset a migratable document holds (set by the plan or there before) has its "
    "assetReferences row",
}
SESSION_CHECK = (
    "session_totals",
    "each session's assetCount = its own assets + its scenes' assets, totalAssetSize = the sum of their known sizes",
)


# -- the streaming pass ------------------------------------------------------------------------------------


@dataclass
class _Tally:
    """Counts and a few example ids for one check."""

    name: str
    description: str
    checked: int = 0
    failed: int = 0
    explained: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, verdict: Verdict | None, doc_id: str, detail: str = "") -> None:
        if verdict is None:
            return
        self.checked += 1
        if verdict is Verdict.FAIL:
            self.failed += 1
            if len(self.examples) < EXAMPLES:
                self.examples.append(f"{doc_id} ({detail})" if detail else doc_id)
        elif verdict is Verdict.APPLICATION:
            self.explained += 1

    def result(self) -> Check:
        note = "explained: changed by the application since the migration (re-plan it)" if self.explained else ""
        return Check(
            name=self.name, description=self.description, passed=self.failed == 0, checked=self.checked,
            failed=self.failed, explained=self.explained, examples=self.examples, note=note,
        )


@dataclass
class Outcome:
    """What the checks found: one Check per check, and the documents the application changed since the backup."""

    checks: list[Check]
    changed_by_application: list[str]
    changed_count: int
    created_after_snapshot: list[str] = field(default_factory=list)
    created_count: int = 0


@locked_step("04_verify")
def verify(transport: ConvexTransport, run_dir: Path, *, page_size: int = 4000, show_progress: bool = True) -> VerifyReport:
    plan_summary = read_plan(run_dir)
    backup = read_backup(run_dir)

    def live(table: str) -> Iterable[dict[str, Any]]:
        pages = paged_progress(prefetch(iter_pages(transport, table, page_size)), desc=f"verify {table}",
                               total=backup.counts.get(table), show=show_progress)
        return (document for page in pages for document in page)

    outcome = run_checks(iter_plan_lines(run_dir), lambda table: iter_backup_documents(backup, table), live, page_size=page_size)
    return report(outcome, plan_summary.plan_sha256, backup.sha256)


def report(outcome: Outcome, plan_sha256: str, backup_sha256: str) -> VerifyReport:
    """The report of what the checks found, for the plan and backup they checked against."""
    return VerifyReport(
        plan_sha256=plan_sha256,
        backup_sha256=backup_sha256,
        checks=outcome.checks,
        changed_by_others=outcome.changed_by_application,
        changed_by_application=ChangedByApplication(count=outcome.changed_count, examples=outcome.changed_by_application[:EXAMPLES]),
        created_after_snapshot=CreatedAfterSnapshot(count=outcome.created_count, examples=outcome.created_after_snapshot[:EXAMPLES]),
    )


def run_checks(
    plan_lines: Iterable[dict[str, Any]],
    backup: Callable[[str], Iterable[dict[str, Any]]],
    live: Callable[[str], Iterable[dict[str, Any]]],
    *,
    page_size: int = 4000,
) -> Outcome:
    """Every check over the three sources, each read once: the plan's lines, then `backup(table)` and `live(table)`
    for scenes and videoSessions (and `live("assetReferences")`). Pure: the caller decides where they come from.

    The join keeps its per-document state (the plan's promise and the backup's digests, the references, the
    sessions' running totals) in a scratch SQLite file: each source streams past in pages of `page_size`, and
    each live page looks up its documents in one query per kind, so memory is bounded by the page."""
    tallies = {c.name: _Tally(c.name, c.description) for c in DOCUMENT_CHECKS}
    tallies.update({name: _Tally(name, text) for name, text in REFERENCE_CHECKS.items()})
    tallies[SESSION_CHECK[0]] = _Tally(*SESSION_CHECK)
    changed = _Listed()
    created = _Listed()

    with Scratch() as scratch:
        # The promise, per document.
        planned = scratch.table("planned")
        for lines in batched(plan_lines, page_size):
            for line in lines:
                tallies["nothing_outside_plan_changed"].add(check_plan_writes_only_new_fields(line), line["id"])
            planned.put((line["id"], _as_tuple(Planned.of(line))) for line in lines)

        # The state before, per document, as digests.
        before = scratch.table("before")
        for table in MIGRATED_TABLES:
            for page in batched(backup(table), page_size):
                set_fields = {doc_id: plan[1] for doc_id, plan in planned.get(doc["_id"] for doc in page).items()}
                before.put((doc["_id"], _as_tuple(Before.of(table, doc, set_fields.get(doc["_id"], ())))) for doc in page)

        # Every reference, by (entity, asset type), with its entity: references left over point at no live document.
        references = scratch.table("references", multi=True)
        for rows in batched(live("assetReferences"), page_size):
            references.put(
                (reference_key(row["entityId"], row["assetType"]), (row["entityId"], row["assetType"], *_as_tuple(Reference.of(row))))
                for row in rows
            )

        scene_totals = scratch.table("scene_totals")  # session id -> SceneTotals of its live scenes
        live_docs = scratch.table("live_docs")  # id -> changed by the application (for references left over)
        for table in ("scenes", "videoSessions"):
            for page in batched(live(table), page_size):
                ids = [document["_id"] for document in page]
                befores = {doc_id: Before(*fields) for doc_id, fields in before.pop(ids).items()}
                plans = {doc_id: Planned(*fields) for doc_id, fields in planned.pop(ids).items()}
                refs_by_key = references.pop(reference_key(i, ASSET_TYPES[f]) for i in ids for f in ASSET_SOURCES[table])
                if table == "scenes":
                    totals = scene_totals.get(str(document.get("sessionId")) for document in page)
                else:
                    totals = scene_totals.pop(ids)
                flags = []
                for document in page:
                    doc_id = document["_id"]
                    doc = Joined(table, befores.get(doc_id), plans.get(doc_id), document)
                    by_app = doc.changed_by_application
                    flags.append((doc_id, by_app))
                    if by_app:
                        changed.add(doc_id)
                    if doc.before is None and doc.plan is None:
                        created.add(doc_id)
                    for check in DOCUMENT_CHECKS:
                        verdict = check.run(doc)
                        tallies[check.name].add(verdict, doc_id, _detail(check, verdict, table, document))
                    for asset_field in ASSET_SOURCES[table]:
                        asset_type = ASSET_TYPES[asset_field]
                        refs = [Reference(*ref) for _, _, *ref in refs_by_key.get(reference_key(doc_id, asset_type), [])]
                        asset = document.get(asset_field)
                        if type(asset) is dict:
                            tallies["references_match_assets"].add(check_references_match_asset(doc, asset, refs), doc_id, asset_type)
                            tallies["tracking_complete"].add(check_asset_tracked(doc, refs), doc_id, asset_type)
                        else:
                            tallies["references_match_assets"].add(check_reference_has_asset(by_app, refs), doc_id, asset_type)
                        tallies["no_duplicate_references"].add(check_no_duplicate_references(refs), doc_id, asset_type)
                        tallies["references_point_at_documents"].add(check_reference_points_at_document(True, refs), doc_id)
                    if table == "scenes":
                        running = totals.setdefault(str(document.get("sessionId")), SceneTotals())
                        assets = held_assets(table, document)
                        running.assets += len(assets)
                        running.size += asset_size(assets)
                        running.excused |= by_app
                    else:
                        tallies["session_totals"].add(check_session_totals(doc, totals.get(doc_id, SceneTotals())), doc_id)
                live_docs.put(flags)
                if table == "scenes":
                    scene_totals.put(totals.items())

        # References whose document no longer exists (or never did), one entity and asset type at a time.
        for group in batched(references.groups(), page_size):
            live_flags = live_docs.get(rows[0][0] for _, rows in group)
            for _, rows in group:
                entity_id, asset_type = rows[0][0], rows[0][1]
                refs = [Reference(*ref) for _, _, *ref in rows]
                tallies["no_duplicate_references"].add(check_no_duplicate_references(refs), entity_id, asset_type)
                tallies["references_point_at_documents"].add(check_reference_points_at_document(entity_id in live_flags, refs), entity_id)
                if entity_id in live_flags:  # an asset type its table does not have
                    tallies["references_match_assets"].add(check_reference_has_asset(live_flags[entity_id], refs), entity_id, asset_type)
        for doc_id, prior in before.items():  # backed-up documents no longer live
            tallies["no_backup_document_missing"].add(check_document_still_exists(Joined("scenes", Before(*prior), None, None)), doc_id)

    order = [c.name for c in DOCUMENT_CHECKS] + [SESSION_CHECK[0], *REFERENCE_CHECKS]
    return Outcome([tallies[name].result() for name in order], changed.ids, changed.count, created.ids, created.count)


def _as_tuple(record: Before | Planned | Reference) -> tuple[Any, ...]:
    """A slotted record's fields as a plain tuple, which the scratch tables store several times faster than the
    record itself (pickling a dataclass looks its fields up every time)."""
    return tuple(getattr(record, name) for name in record.__slots__)


@dataclass
class _Listed:
    """A count of documents, and the first hundred ids."""

    count: int = 0
    ids: list[str] = field(default_factory=list)

    def add(self, doc_id: str) -> None:
        self.count += 1
        if len(self.ids) < 100:
            self.ids.append(doc_id)


def _detail(check: DocumentCheck, verdict: Verdict | None, table: str, document: dict[str, Any]) -> str:
    """For a failed asset check, which asset and what of it differs (the example then says it)."""
    if check.run is not check_assets_equal_legacy or verdict is not Verdict.FAIL:
        return ""
    return ", ".join(
        f"{f}: {what}" for f in ASSET_SOURCES[table] if f in document
        if (what := asset_disagreement(table, f, document[f], document)) is not None
    )
